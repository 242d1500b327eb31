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
from dataclasses import dataclass, field
from typing import Any

from vortex.errors import SpecError
from vortex.security import capabilities
from vortex.security.options import RLIMITS

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


@dataclass
class SecurityPolicy:
    """Mutable: ``vortex_security`` hooks edit it in place."""

    capabilities: set[str] | None = None
    """Bounding, effective and permitted set; ``None`` keeps the Runtime's own."""
    inheritable: set[str] = field(default_factory=set)
    """Kept empty by default (CVE-2022-24769: no capability rides an execve)."""
    ambient: set[str] = field(default_factory=set)
    no_new_privs: bool = False
    seccomp: Mapping[str, Any] | None = None
    """A docker-format profile, or ``None`` for no filter."""
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    readonly_rootfs: bool = False
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    restrict_devices: bool = False
    """Only the standard /dev nodes are usable (device cgroup on v1, nodev mounts)."""
    uid_map: tuple[tuple[int, int, int], ...] = ()
    """(inside, outside, count) lines: non-empty means a user namespace."""
    gid_map: tuple[tuple[int, int, int], ...] = ()
    rootless: bool = False
    """Run by an unprivileged user: single-id maps, setgroups denied (vortex/rootless.py)."""

    def compile(self) -> InitSecurity:
        """Check what plugins wrote, compile the seccomp profile, freeze the result."""
        from vortex.security import seccomp

        for group in (self.capabilities or set(), self.inheritable, self.ambient):
            unknown = sorted(set(group) - set(capabilities.CAPABILITIES))
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
            no_new_privs=self.no_new_privs,
            seccomp=bpf,
            masked_paths=tuple(self.masked_paths),
            readonly_paths=tuple(self.readonly_paths),
            readonly_rootfs=self.readonly_rootfs,
            rlimits=tuple(
                (RLIMITS[name], soft, hard) for name, (soft, hard) in self.rlimits.items()
            ),
            nodev_rootfs=self.restrict_devices,
            userns=bool(self.uid_map),
            rootless=self.rootless,
        )


@dataclass(frozen=True)
class InitSecurity:
    """What the container init applies (see vortex/helper/init.py for the order)."""

    capabilities: frozenset[str] | None = None
    inheritable: frozenset[str] = frozenset()
    ambient: frozenset[str] = frozenset()
    no_new_privs: bool = False
    seccomp: bytes | None = None
    """A compiled classic-BPF program (``struct sock_filter[]``)."""
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    readonly_rootfs: bool = False
    rlimits: tuple[tuple[int, int, int], ...] = ()
    """(resource.RLIMIT_*, soft, hard)."""
    nodev_rootfs: bool = False
    userns: bool = False
    """Cloned with CLONE_NEWUSER; the Runtime writes the maps before the init goes on."""
    rootless: bool = False
    """Only the caller's uid/gid are mapped: no gid=5 for devpts."""


def clamp_to_host(limit: int, soft: int, hard: int) -> tuple[int, int]:
    """Lower a *default* rlimit to what this process may set (no SYS_RESOURCE → host hard)."""
    _cur_soft, cur_hard = resource.getrlimit(limit)
    if cur_hard != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > cur_hard):
        hard = cur_hard
    if soft == resource.RLIM_INFINITY or soft > hard:
        soft = hard
    return soft, hard
