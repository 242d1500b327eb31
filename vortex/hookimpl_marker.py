"""``@vortex.hookimpl``: marks a plugin's hook implementations, without importing pluggy.

pluggy imports ``inspect`` and ``typing`` (~13 ms of a cold ``vortex run``,
as much as the container itself).  A ``vortex run`` with only the built-in
plugins does not need it (:class:`vortex.pluginmanager.BuiltinPlugins`), but
the built-ins are marked with this decorator at import, so it must not come
from pluggy.

It records the options exactly as ``pluggy.HookimplMarker("vortex")`` does:
the function gets a ``vortex_impl`` attribute holding a ``pluggy.HookimplOpts``
dict, which is what ``PluginManager.parse_hookimpl_opts`` reads.  So pluggy
registers plugins marked with either decorator alike (checked by
tests/test_plugins.py against pluggy's own marker).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol, TypeVar, overload

    F = TypeVar("F", bound=Callable[..., object])

    class Marker(Protocol):
        """What type checkers see of :data:`hookimpl`: a decorator that keeps the type."""

        @overload
        def __call__(
            self,
            function: F,
            *,
            hookwrapper: bool = ...,
            optionalhook: bool = ...,
            tryfirst: bool = ...,
            trylast: bool = ...,
            specname: str | None = ...,
            wrapper: bool = ...,
        ) -> F: ...

        @overload
        def __call__(
            self,
            function: None = ...,
            *,
            hookwrapper: bool = ...,
            optionalhook: bool = ...,
            tryfirst: bool = ...,
            trylast: bool = ...,
            specname: str | None = ...,
            wrapper: bool = ...,
        ) -> Callable[[F], F]: ...


PROJECT = "vortex"
IMPL_ATTRIBUTE = PROJECT + "_impl"
"""Where pluggy looks for a hook implementation's options: ``<project>_impl``."""


class HookimplMarker:
    """The decorator ``vortex.hookimpl``, used bare or with pluggy's options."""

    def __call__(
        self,
        function: Any = None,
        *,
        hookwrapper: bool = False,
        optionalhook: bool = False,
        tryfirst: bool = False,
        trylast: bool = False,
        specname: str | None = None,
        wrapper: bool = False,
    ) -> Any:
        """Mark ``function`` (or, without it, return a decorator that does).

        The options are pluggy's: ``tryfirst``/``trylast`` move the
        implementation to the front or the back of the call order,
        ``specname`` implements the hook of that name under another function
        name, ``optionalhook`` allows a hook no spec declares.  ``wrapper`` and
        ``hookwrapper`` are accepted for pluggy's sake but mean nothing to
        Vortex, which calls implementations one at a time.
        """
        options = {
            "wrapper": wrapper,
            "hookwrapper": hookwrapper,
            "optionalhook": optionalhook,
            "tryfirst": tryfirst,
            "trylast": trylast,
            "specname": specname,
        }

        def mark(target: Any) -> Any:
            setattr(target, IMPL_ATTRIBUTE, options)
            return target

        return mark if function is None else mark(function)


hookimpl: Marker = HookimplMarker()
"""Mark a function (or method) of a plugin as a hook implementation."""
