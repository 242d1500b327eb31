"""Finding, registering and calling plugins.

Built-in plugins (``vortex.plugins.*``) are registered exactly like
third-party ones, which arrive through the entry-point group ``vortex``.
Any of them can be disabled by name.  Lifecycle hooks are called one
implementation at a time (instead of through pluggy's multicall) so that
async implementations are awaited in order and a failure names its plugin.

pluggy validates and orders plugins.  With only the built-ins there is
nothing to validate (tests/test_plugins.py registers them with pluggy) and
their order is known: :class:`BuiltinPlugins` is that order as a table,
which spares a cold ``vortex run`` importing pluggy with its ``inspect`` and
``typing`` (~13 ms, as much as the container itself).  Everything else goes
through pluggy: the Runtime, and ``vortex run`` as soon as a third-party
plugin may be installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Iterable

from vortex import _import_module
from vortex.errors import PluginError
from vortex.hookimpl_marker import IMPL_ATTRIBUTE

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TypeAlias

    import pluggy

    Plugins: TypeAlias = "pluggy.PluginManager | BuiltinPlugins"
    """What the lifecycle calls hooks through: pluggy's manager, or the built-ins' table."""

BUILTIN_PLUGINS = {
    "limits": "vortex.plugins.limits",
    "net": "vortex.plugins.net",
    "logging": "vortex.plugins.logging",
    "security": "vortex.plugins.security",
}
ENTRY_POINT_GROUP = "vortex"


_STANDARD_FINDERS = ("PathFinder",)
"""Meta-path finders whose distributions :func:`_may_have_entry_points` knows how to see."""


def _may_have_entry_points(group: str = ENTRY_POINT_GROUP) -> bool:
    """False only when no installed distribution can declare an entry point in ``group``.

    ``importlib.metadata`` costs ~10 ms to import (it pulls in the email
    parser, zipfile, csv) and reads every distribution's metadata: a fifth
    of a cold ``vortex run`` on a machine with no third-party plugin, which
    is the common case.  This answers "is there any?" by listing the
    ``*.dist-info``/``*.egg-info`` directories on ``sys.path`` and looking for
    a ``[group]`` section in their ``entry_points.txt``.  It never answers a
    wrong False for what it understands; for anything else (a zip or egg on
    ``sys.path``, a meta-path finder that provides distributions of its own)
    it answers True, and the caller asks ``importlib.metadata`` as before.
    """
    for finder in sys.meta_path:
        if hasattr(finder, "find_distributions") and (
            getattr(finder, "__name__", type(finder).__name__) not in _STANDARD_FINDERS
        ):
            return True
    for entry in sys.path:
        path = entry or "."
        if path.endswith(".egg") or os.path.isfile(path):
            return True
        try:
            children = os.listdir(path)
        except OSError:
            continue  # absent (python311.zip usually is) or unreadable: no distributions
        for child in children:
            if not child.lower().endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(path, child, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except (FileNotFoundError, NotADirectoryError):
                continue
            except (OSError, UnicodeDecodeError):
                return True
            if any(_is_section(line.strip(), group) for line in text.splitlines()):
                return True
    return False


def _is_section(line: str, group: str) -> bool:
    # As importlib.metadata reads entry_points.txt: "[ name ]" is section "name".
    return line.startswith("[") and line.endswith("]") and line[1:-1].strip() == group


def entry_point_names(may_have: bool | None = None) -> set[str]:
    """The names in the ``vortex`` entry-point group; ``may_have`` is the answer of
    :func:`_may_have_entry_points` when the caller already has it."""
    if not (_may_have_entry_points() if may_have is None else may_have):
        return set()
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugins(
    disabled: Iterable[str] = (),
    *,
    extra: Iterable[object] = (),
    entry_points: bool = True,
) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, the entry-point plugins and ``extra``.

    :param disabled: names of plugins to leave out; an unknown name is an error.
    :param extra: plugin objects (modules, instances) to register as well.
    :param entry_points: load third-party plugins from the ``vortex`` group.
    """
    return _load_with_pluggy(disabled, extra, entry_points and _may_have_entry_points())


def _load_with_pluggy(
    disabled: Iterable[str], extra: Iterable[object], scan_entry_points: bool
) -> pluggy.PluginManager:
    """:func:`load_plugins`, told whether entry points may exist (the scan of every
    installed distribution costs ~2 ms: done once per load)."""
    import pluggy

    from vortex import hookspecs

    disabled = set(disabled)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    _check_known(disabled, entry_point_names(scan_entry_points) if disabled else set())
    for name in disabled:
        pm.set_blocked(name)
    for name, module_name in BUILTIN_PLUGINS.items():
        if name not in disabled:
            pm.register(_import_module(module_name), name=name)
    if scan_entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:
            raise PluginError(f"loading plugins from entry points failed: {exc}") from exc
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from exc
    return pm


def load_plugins_for_one_run(
    disabled: Iterable[str] = (),
    *,
    extra: Iterable[object] = (),
    entry_points: bool = True,
) -> Plugins:
    """:func:`load_plugins` for a process that runs one container (``vortex run``).

    The built-ins' table when nothing but built-ins can be loaded (no ``extra``,
    and no installed distribution declares a ``vortex`` entry point), pluggy
    otherwise.  The table calls the same functions in the same order.
    """
    extra = list(extra)
    scan_entry_points = entry_points and _may_have_entry_points()
    if extra or scan_entry_points:
        return _load_with_pluggy(disabled, extra, scan_entry_points)
    disabled = set(disabled)
    _check_known(disabled, set())
    return BuiltinPlugins(name for name in BUILTIN_PLUGINS if name not in disabled)


def _check_known(disabled: set[str], entry_point_plugins: set[str]) -> None:
    if not disabled:
        return
    known = set(BUILTIN_PLUGINS) | entry_point_plugins
    unknown = sorted(disabled - known)
    if unknown:
        raise PluginError(
            f"unknown plugin {unknown[0]!r}: known plugins are {', '.join(sorted(known))}"
        )


class Implementation:
    """One plugin's implementation of one hook: what pluggy's ``HookImpl`` tells us."""

    __slots__ = ("argnames", "function", "plugin_name", "tryfirst", "trylast", "wrapper")

    def __init__(self, plugin_name: str, function: Callable[..., Any], options: dict[str, Any]):
        self.plugin_name = plugin_name
        self.function = function
        self.argnames = _positional_parameters(function)
        self.tryfirst: bool = options["tryfirst"]
        self.trylast: bool = options["trylast"]
        self.wrapper: bool = options["wrapper"] or options["hookwrapper"]


class BuiltinPlugins:
    """The built-in plugins' hook implementations, in pluggy's call order, without pluggy.

    Registering a plugin, pluggy takes its marked functions in ``dir()`` order
    and inserts each into its hook's list (``HookCaller._add_hookimpl``):
    ``trylast`` ones at the front, ``tryfirst`` ones at the back, the others
    just before the ``tryfirst`` ones; wrappers in a section of their own
    after all of those.  It calls the list from the back.  This does the same.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        registered: dict[str, list[Implementation]] = {}
        for name in self.names:
            module = _import_module(BUILTIN_PLUGINS[name])
            for attribute in dir(module):
                function = getattr(module, attribute)
                options = getattr(function, IMPL_ATTRIBUTE, None)
                if callable(function) and isinstance(options, dict):
                    chain = registered.setdefault(options["specname"] or attribute, [])
                    _insert(chain, Implementation(name, function, options))
        self._calls = {hook: impls[::-1] for hook, impls in registered.items()}

    def implementations(self, hook_name: str) -> Sequence[Implementation]:
        """The implementations of ``hook_name`` in call order."""
        return self._calls.get(hook_name, ())


def _insert(chain: list[Implementation], impl: Implementation) -> None:
    """Add ``impl`` to ``chain`` (kept in reverse call order) where pluggy would."""
    split = next((i for i, other in enumerate(chain) if other.wrapper), len(chain))
    start, end = (split, len(chain)) if impl.wrapper else (0, split)
    if impl.trylast:
        chain.insert(start, impl)
    elif impl.tryfirst:
        chain.insert(end, impl)
    else:
        i = end - 1
        while i >= start and chain[i].tryfirst:
            i -= 1
        chain.insert(i + 1, impl)


def _positional_parameters(function: Callable[..., Any]) -> tuple[str, ...]:
    """The parameters pluggy passes a plain function: positional ones without a default."""
    code = function.__code__
    names = code.co_varnames[: code.co_argcount]
    return names[: len(names) - len(function.__defaults__ or ())]


def _implementations(plugins: Plugins, hook_name: str) -> Sequence[Any]:
    if isinstance(plugins, BuiltinPlugins):
        return plugins.implementations(hook_name)
    # get_hookimpls() is in reverse call order (pluggy calls the last one first).
    return list(reversed(getattr(plugins.hook, hook_name).get_hookimpls()))


def call_sync(pm: Plugins, hook_name: str, **kwargs: Any) -> list[Any]:
    """Call a synchronous hook; results of every implementation that returned one."""
    results = []
    for impl in _implementations(pm, hook_name):
        try:
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc}") from exc
        if isinstance(result, Awaitable):
            raise PluginError(f"plugin {impl.plugin_name!r}: {hook_name} must not be async")
        if result is not None:
            results.append(result)
    return results


async def call_async(
    pm: Plugins, hook_name: str, *, keep_going: bool = False, **kwargs: Any
) -> list[PluginError]:
    """Call a lifecycle hook whose implementations may be async, in order.

    With ``keep_going`` every implementation runs and the failures are
    returned; otherwise the first failure is raised as a PluginError.
    """
    failures = []
    for impl in _implementations(pm, hook_name):
        try:
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            if isinstance(result, Awaitable):
                await result
        except Exception as exc:
            failures.append(_failed(impl, hook_name, exc, keep_going))
    return failures


def call_blocking(
    pm: Plugins, hook_name: str, *, keep_going: bool = False, **kwargs: Any
) -> list[PluginError]:
    """:func:`call_async` for a caller without an event loop (vortex.direct).

    An async implementation is run to completion on an event loop of its own,
    started for that call: the cost of importing the event loop is only paid
    when a loaded plugin needs it.
    """
    failures = []
    for impl in _implementations(pm, hook_name):
        try:
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            if isinstance(result, Awaitable):
                _run_to_completion(result)
        except Exception as exc:
            failures.append(_failed(impl, hook_name, exc, keep_going))
    return failures


def _run_to_completion(awaitable: Any) -> None:
    import anyio

    async def finish() -> None:
        await awaitable

    anyio.run(finish)


def _failed(impl: Any, hook_name: str, exc: Exception, keep_going: bool) -> PluginError:
    """The PluginError for ``exc``: raised, unless ``keep_going`` (then returned)."""
    error = PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc}")
    error.__cause__ = exc
    if not keep_going:
        raise error from exc
    return error
