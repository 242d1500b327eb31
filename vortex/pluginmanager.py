"""Finding, registering and calling plugins.

Built-in plugins (``vortex.plugins.*``) are registered exactly like
third-party ones, which arrive through the entry-point group ``vortex``.
Any of them can be disabled by name.  Lifecycle hooks are called one
implementation at a time (instead of through pluggy's multicall) so that
async implementations are awaited in order and a failure names its plugin.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Iterable
from typing import Any

import pluggy

from vortex import hookspecs
from vortex.errors import PluginError

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


def entry_point_names() -> set[str]:
    if not _may_have_entry_points():
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
    disabled = set(disabled)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if disabled:
        known = set(BUILTIN_PLUGINS) | (entry_point_names() if entry_points else set())
        unknown = sorted(disabled - known)
        if unknown:
            raise PluginError(
                f"unknown plugin {unknown[0]!r}: known plugins are {', '.join(sorted(known))}"
            )
    for name in disabled:
        pm.set_blocked(name)
    for name, module_name in BUILTIN_PLUGINS.items():
        if name not in disabled:
            pm.register(importlib.import_module(module_name), name=name)
    if entry_points and _may_have_entry_points():
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


def _implementations(pm: pluggy.PluginManager, hook_name: str) -> list[pluggy.HookImpl]:
    # get_hookimpls() is in reverse call order (pluggy calls the last one first).
    return list(reversed(getattr(pm.hook, hook_name).get_hookimpls()))


def call_sync(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[Any]:
    """Call a synchronous hook; results of every implementation that returned one."""
    results = []
    for impl in _implementations(pm, hook_name):
        try:
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc}") from exc
        if inspect.isawaitable(result):
            raise PluginError(f"plugin {impl.plugin_name!r}: {hook_name} must not be async")
        if result is not None:
            results.append(result)
    return results


async def call_async(
    pm: pluggy.PluginManager, hook_name: str, *, keep_going: bool = False, **kwargs: Any
) -> list[PluginError]:
    """Call a lifecycle hook whose implementations may be async, in order.

    With ``keep_going`` every implementation runs and the failures are
    returned; otherwise the first failure is raised as a PluginError.
    """
    failures = []
    for impl in _implementations(pm, hook_name):
        try:
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            failures.append(_failed(impl, hook_name, exc, keep_going))
    return failures


def call_blocking(
    pm: pluggy.PluginManager, hook_name: str, *, keep_going: bool = False, **kwargs: Any
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
            if inspect.isawaitable(result):
                _run_to_completion(result)
        except Exception as exc:
            failures.append(_failed(impl, hook_name, exc, keep_going))
    return failures


def _run_to_completion(awaitable: Any) -> None:
    import anyio

    async def finish() -> None:
        await awaitable

    anyio.run(finish)


def _failed(impl: pluggy.HookImpl, hook_name: str, exc: Exception, keep_going: bool) -> PluginError:
    """The PluginError for ``exc``: raised, unless ``keep_going`` (then returned)."""
    error = PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc}")
    error.__cause__ = exc
    if not keep_going:
        raise error from exc
    return error
