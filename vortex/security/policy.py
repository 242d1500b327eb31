"""The security policy of one container, and what the init receives of it.

:class:`SecurityPolicy` is what ``vortex_security`` hooks adjust, in the
Runtime.  A fresh one is *unconfined* (the kernel's defaults for a root
process); the built-in ``security`` plugin fills in Vortex's defaults from
the spec, and any plugin may tighten or relax it afterwards.

:meth:`SecurityPolicy.compile` turns it into :class:`InitSecurity`, plain
picklable data for the container init: capability names, rlimit numbers,
paths, and the seccomp filter already compiled to BPF.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping

from vortex.errors import SpecError
from vortex.records import field, record
from vortex.security import capabilities
from vortex.security.options import RLIMITS

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
"""Hidden from the container: a /dev/null bind over files, an empty read-only tmpfs over dirs."""

READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
"""Visible, but remounted read-only (kernel tunables, the sysrq trigger)."""

DEFAULT_NOFILE = (1024, 524288)
"""The default ``nofile`` rlimit (systemd's and containerd's), lowered to the host's hard limit."""


@record(frozen=False)
class SecurityPolicy:
    """Mutable: ``vortex_security`` hooks edit it in place."""

    capabilities: set[str] | None = None
    """Bounding, effective and permitted set; ``None`` keeps the Runtime's own."""
    inheritable: set[str] = field(default_factory=set)
    """Kept empty by default (CVE-2022-24769: no capability rides an execve)."""
    ambient: set[str] = field(default_factory=set)
    bounding: set[str] | None = None
    """The bounding set, when it differs from ``capabilities`` (an OCI config); ``None``:
    the same set."""
    effective: set[str] | None = None
    """The effective set, when it differs from ``capabilities`` (an OCI config); ``None``:
    the same set."""
    no_new_privs: bool = False
    seccomp: Mapping[str, Any] | None = None
    """A docker-format profile, or ``None`` for no filter."""
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    readonly_rootfs: bool = False
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    oom_score_adj: int | None = None
    """The command's /proc/self/oom_score_adj; ``None`` inherits the Runtime's."""
    umask: int | None = None
    """The command's umask; ``None`` inherits the Runtime's."""
    groups: tuple[int, ...] = ()
    """Supplementary groups of the command (OCI ``additionalGids``); never the caller's."""
    restrict_devices: bool = False
    """Only the standard /dev nodes are usable: devices cgroup on v1, eBPF filter on v2,
    nodev mounts on both."""
    uid_map: tuple[tuple[int, int, int], ...] = ()
    """(inside, outside, count) lines: non-empty means a user namespace."""
    gid_map: tuple[tuple[int, int, int], ...] = ()
    rootless: bool = False
    """Run by an unprivileged user (vortex/rootless.py): the maps are the caller's own
    uid/gid (setgroups denied), or written by newuidmap/newgidmap from /etc/subuid
    and /etc/subgid."""

    def compile(self) -> InitSecurity:
        """Check what plugins wrote, compile the seccomp profile, freeze the result."""
        from vortex.security import seccomp

        named = (self.capabilities, self.bounding, self.effective, self.inheritable, self.ambient)
        for group in named:
            unknown = sorted(set(group or ()) - set(capabilities.CAPABILITIES))
            if unknown:
                raise SpecError(
                    f"security policy: unknown capability {unknown[0]!r} "
                    "(use kernel names without CAP_, e.g. NET_ADMIN)"
                )
        unknown_limits = sorted(set(self.rlimits) - set(RLIMITS))
        if unknown_limits:
            raise SpecError(f"security policy: unknown rlimit {unknown_limits[0]!r}")
        for path in (*self.masked_paths, *self.readonly_paths):
            if not path.startswith("/"):
                raise SpecError(f"security policy: {path!r} is not an absolute path")
        caps = frozenset(self.capabilities) if self.capabilities is not None else None
        bpf = None
        if self.seccomp is not None:
            effective = caps if caps is not None else capabilities.known_capabilities()
            bpf = seccomp.compile_profile(self.seccomp, effective)
        return InitSecurity(
            capabilities=caps,
            inheritable=frozenset(self.inheritable),
            ambient=frozenset(self.ambient),
            bounding=frozenset(self.bounding) if self.bounding is not None else None,
            effective=frozenset(self.effective) if self.effective is not None else None,
            no_new_privs=self.no_new_privs,
            seccomp=bpf,
            masked_paths=tuple(self.masked_paths),
            readonly_paths=tuple(self.readonly_paths),
            readonly_rootfs=self.readonly_rootfs,
            rlimits=tuple(
                (RLIMITS[name], soft, hard) for name, (soft, hard) in self.rlimits.items()
            ),
            oom_score_adj=self.oom_score_adj,
            umask=self.umask,
            groups=tuple(self.groups),
            nodev_rootfs=self.restrict_devices,
            userns=bool(self.uid_map),
            # With subordinate gids newgidmap allows setgroups and gid 5 (tty) is
            # mapped: the init then behaves as under root.
            rootless=self.rootless and not maps_inside(self.gid_map, 5),
        )


@record
class InitSecurity:
    """What the container init applies (see vortex/helper/init.py for the order)."""

    capabilities: frozenset[str] | None = None
    inheritable: frozenset[str] = frozenset()
    ambient: frozenset[str] = frozenset()
    bounding: frozenset[str] | None = None
    """``None``: the same as ``capabilities``."""
    effective: frozenset[str] | None = None
    """``None``: the same as ``capabilities`` (the permitted set)."""
    no_new_privs: bool = False
    seccomp: bytes | None = None
    """A compiled classic-BPF program (``struct sock_filter[]``)."""
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    readonly_rootfs: bool = False
    rlimits: tuple[tuple[int, int, int], ...] = ()
    """(resource.RLIMIT_*, soft, hard)."""
    oom_score_adj: int | None = None
    umask: int | None = None
    groups: tuple[int, ...] = ()
    nodev_rootfs: bool = False
    userns: bool = False
    """Cloned with CLONE_NEWUSER; the Runtime writes the maps before the init goes on."""
    rootless: bool = False
    """Rootless with gid 5 unmapped (only the caller's gid): setgroups is denied and
    devpts gets no gid=5."""


def maps_inside(id_map: tuple[tuple[int, int, int], ...], inside: int) -> bool:
    """Whether ``inside`` is one of the ids an ``(inside, outside, count)`` map covers."""
    return any(first <= inside < first + count for first, _outside, count in id_map)


def clamp_to_host(limit: int, soft: int, hard: int) -> tuple[int, int]:
    """Lower a *default* rlimit to what this process may set (no SYS_RESOURCE → host hard)."""
    _cur_soft, cur_hard = resource.getrlimit(limit)
    if cur_hard != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > cur_hard):
        hard = cur_hard
    if soft == resource.RLIM_INFINITY or soft > hard:
        soft = hard
    return soft, hard
