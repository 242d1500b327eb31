"""Setup operations: the plan a container init carries out before ``pivot_root``.

``vortex_pre_pivot`` hooks run in the Runtime, before the clone, and *return*
operations from this module instead of performing them (the bubblewrap/youki
model): no plugin code runs in the privileged child, and a plan is plain data
that can be inspected and tested without root.  The init applies them in
order, after the root filesystem is bind-mounted and the core mounts (/proc,
/dev, /sys) are in place, with every container path relative to the new root.
"""

from __future__ import annotations

from vortex.records import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterable


@record
class BindMount:
    """Bind ``source`` (a host path) onto ``target`` (a path inside the container)."""

    source: str
    target: str
    readonly: bool = False
    recursive: bool = True


@record
class MountFilesystem:
    """Mount a fresh filesystem, e.g. ``MountFilesystem("tmpfs", "/tmp", "size=64m")``."""

    fstype: str
    target: str
    options: str | None = None
    flags: int = 0


@record
class WriteFile:
    """Create or replace a file inside the container (e.g. /etc/hosts)."""

    path: str
    content: bytes
    mode: int = 0o644


@record
class MakeDirectory:
    path: str
    mode: int = 0o755


@record
class Symlink:
    target: str
    path: str


@record
class LoopbackUp:
    """Bring ``lo`` up in the container's network namespace (one ioctl, no netlink)."""


SetupOp = BindMount | MountFilesystem | WriteFile | MakeDirectory | Symlink | LoopbackUp
"""Every operation a ``vortex_pre_pivot`` hook may return."""


def brings_loopback_up(plan_ops: Iterable[SetupOp]) -> bool:
    """Whether a plan brings ``lo`` up (the net plugin's does)."""
    return any(isinstance(op, LoopbackUp) for op in plan_ops)
