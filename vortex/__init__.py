"""Vortex: a Linux container runtime and supervisor in Python.

The public API::

    import vortex

    async with vortex.Runtime() as runtime:
        result = await runtime.run(vortex.ContainerSpec(rootfs=path, command=["/bin/true"]))

Names are imported lazily: ``import vortex`` stays cheap, which keeps the
CLI's cold start (it imports ``vortex.cli``, hence this package) fast.
"""

from __future__ import annotations

import sys

# typing.TYPE_CHECKING without importing typing (milliseconds of a cold start);
# mypy treats any name TYPE_CHECKING as true.
TYPE_CHECKING = False

__version__ = "0.1.0"

_EXPORTS = {
    "Runtime": "vortex.runtime",
    "Container": "vortex.container",
    "ContainerSpec": "vortex.spec",
    "Resources": "vortex.spec",
    "Stdio": "vortex.spec",
    "User": "vortex.spec",
    "SecurityOptions": "vortex.security.options",
    "RunResult": "vortex.result",
    "hookimpl": "vortex.hookimpl_marker",
    "configure_logging": "vortex.log",
    "VortexError": "vortex.errors",
}

__all__ = (*_EXPORTS, "__version__")

if TYPE_CHECKING:
    from types import ModuleType

    from vortex.container import Container as Container
    from vortex.errors import VortexError as VortexError
    from vortex.hookimpl_marker import hookimpl as hookimpl
    from vortex.log import configure_logging as configure_logging
    from vortex.result import RunResult as RunResult
    from vortex.runtime import Runtime as Runtime
    from vortex.security.options import SecurityOptions as SecurityOptions
    from vortex.spec import ContainerSpec as ContainerSpec
    from vortex.spec import Resources as Resources
    from vortex.spec import Stdio as Stdio
    from vortex.spec import User as User


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vortex' has no attribute {name!r}")
    return getattr(_import_module(module), name)


def _import_module(name: str) -> ModuleType:
    """``importlib.import_module`` without importing importlib, which (with
    warnings) is ~0.5 ms of every cold ``vortex run``, in-process or through the
    daemon.  Also used by vortex.cli and vortex.pluginmanager."""
    __import__(name)
    return sys.modules[name]
