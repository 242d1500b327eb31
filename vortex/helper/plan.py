"""The message the Runtime sends the fork helper for one container.

It crosses a process boundary (pickled over a SOCK_SEQPACKET socket, with the
file descriptors alongside as SCM_RIGHTS), so it is plain data.  The fds are
not in the plan: they travel in a fixed order, see :data:`FD_ORDER`.
"""

from __future__ import annotations

from collections.abc import Sequence

from vortex.ops import SetupOp
from vortex.records import field, record
from vortex.security.policy import InitSecurity

FD_ORDER = ("sync", "errors", "stdin", "stdout", "stderr")
"""Order of the fds sent with every request; optional ones (console, cgroup) follow."""


@record
class InitPlan:
    """What the container init does between clone and execve."""

    rootfs: str
    argv: Sequence[str]
    env: Sequence[tuple[str, str]]
    workdir: str
    uid: int
    gid: int
    hostname: str
    tty: bool
    ops: Sequence[SetupOp] = field(default_factory=tuple)
    security: InitSecurity | None = None
    """Capabilities, seccomp, masked paths, rlimits; ``None`` applies none."""


@record
class SpawnRequest:
    plan: InitPlan
    clone_flags: int
    has_console_socket: bool
    has_cgroup_fd: bool


@record
class SpareRequest:
    """Clone an init that waits for its :class:`SpawnRequest` (vortex/spare.py).

    Sent with one fd, the init's end of the socket the request will come on,
    then the cgroup's fd when ``has_cgroup_fd``."""

    clone_flags: int
    has_cgroup_fd: bool
    prefault: bool = False
    """Write ahead, while waiting, the pages its init will write: the helper's first
    inits listed them (vortex/helper/prefault.py)."""
    ahead_after: float = 0.0
    """Seconds to wait for the request before working ahead (0: at once): creating
    the kernel filesystems (vortex/helper/kernelfs.py) and, with ``prefault``,
    writing the init's pages.  A spare cloned beside a starting container waits: its work
    would compete with that start, and back to back its request comes first."""
    loopback: bool = False
    """Bring ``lo`` up while waiting: the container's plan will ask for it
    (``SpareInit.fits`` turns a spare away whose container's plan does not)."""
    join: Sequence[str] = ()
    """``cgroup.procs`` files (cgroup v1, which has no CLONE_INTO_CGROUP) the spare
    moves itself into first; it then reports on its socket (:data:`PLACED`, or
    why not) before it waits for its request."""


PLACED = b"placed"
"""What a spare sends once it has joined its cgroups (``SpareRequest.join``)."""
