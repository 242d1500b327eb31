"""The exception hierarchy of Vortex.

Every error Vortex raises on purpose is a :class:`VortexError`.  The CLI turns
them into one-line messages and exit statuses at the edge; library users catch
them by class.  The exit statuses follow docker/podman: 125 for an error of the
runtime itself, 126 when the command cannot be executed, 127 when it is not
found.
"""

from __future__ import annotations

EXIT_RUNTIME_ERROR = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class VortexError(Exception):
    """Base class of every error Vortex raises deliberately."""

    exit_status: int = EXIT_RUNTIME_ERROR


class SpecError(VortexError, ValueError):
    """A container specification or command-line value is invalid."""


class OciConfigError(SpecError):
    """An OCI bundle's config.json is invalid or asks for what Vortex cannot honour.

    The message starts with ``config.json: <JSON path>:`` so the user knows
    which field to fix.
    """


class PermissionDeniedError(VortexError):
    """Vortex lacks a privilege it needs (usually: not run as root)."""


class PluginError(VortexError):
    """A plugin is unknown, failed to load, or raised inside a hook."""


class CgroupError(VortexError):
    """A cgroup could not be created, configured, read or removed."""


class MissingControllerError(CgroupError):
    """A requested limit needs a cgroup controller that is not available."""


class ContainerStateError(VortexError):
    """The operation does not fit the container's state (pausing an exited one)."""


class HelperError(VortexError):
    """The fork helper died or answered with an error."""


class ContainerSetupError(VortexError):
    """The container init failed before it could execute the command."""


class ExecError(ContainerSetupError):
    """``execve`` of the container's command failed (ENOENT, EACCES, ...)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class RootfsError(VortexError):
    """Building, downloading or verifying a root filesystem failed."""


class StateError(VortexError):
    """The state directory is unusable or holds an entry that is corrupt."""


class IdMappingError(VortexError):
    """A user namespace cannot get its ids: the ``--userns auto`` pool is exhausted,
    or newuidmap/newgidmap refused the caller's subordinate ranges."""


class DaemonError(VortexError):
    """``vortex daemon`` cannot listen, or a client's request is malformed or refused."""
