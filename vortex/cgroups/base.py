"""The interface every cgroup backend implements.

The runtime only talks to :class:`CgroupBackend` and :class:`Cgroup`; which
hierarchy sits underneath (v1 controllers, or the v2 unified tree) is decided
once by :func:`vortex.cgroups.detect`.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping

from vortex.records import field, record


@record
class DeviceLimit:
    """An I/O throttle on one block device (``--device-read-bps`` and friends)."""

    major: int
    minor: int
    rate: int
    """Bytes per second (``*_bps``) or operations per second (``*_iops``)."""


@record
class Limits:
    """Resource limits of one container; ``None`` (or empty) means "no limit".

    docs/cgroups.md maps every field to its v2 and v1 files and CLI flag.
    """

    memory: int | None = None
    """Hard memory limit in bytes (v2 ``memory.max``, v1 ``memory.limit_in_bytes``)."""
    pids: int | None = None
    """Maximum number of tasks (``pids.max``)."""
    cpus: float | None = None
    """CPU bandwidth in CPUs, e.g. 0.5 (v2 ``cpu.max``, v1 CFS quota/period)."""
    memory_high: int | None = None
    """Throttling threshold in bytes (v2 ``memory.high``; no v1 equivalent)."""
    memory_swap: int | None = None
    """docker's ``--memory-swap``: memory *plus* swap in bytes, -1 for unlimited swap.
    None with ``memory`` set means no swap at all (v2 ``memory.swap.max`` 0)."""
    memory_reservation: int | None = None
    """Soft guarantee in bytes (v2 ``memory.low``, v1 ``memory.soft_limit_in_bytes``)."""
    cpu_shares: int | None = None
    """Relative CPU weight, 2..262144 (v1 ``cpu.shares``; v2 ``cpu.weight`` mapped as runc)."""
    cpuset_cpus: str | None = None
    """CPUs allowed, e.g. ``0-1,3`` (``cpuset.cpus``)."""
    cpuset_mems: str | None = None
    """Memory nodes allowed (``cpuset.mems``)."""
    blkio_weight: int | None = None
    """Relative I/O weight, 10..1000 (v1 ``blkio.weight``; v2 ``io.bfq.weight``/``io.weight``)."""
    device_read_bps: tuple[DeviceLimit, ...] = ()
    device_write_bps: tuple[DeviceLimit, ...] = ()
    device_read_iops: tuple[DeviceLimit, ...] = ()
    device_write_iops: tuple[DeviceLimit, ...] = ()
    hugetlb: tuple[tuple[str, int], ...] = ()
    """(page size as the kernel names it, e.g. ``2MB``, limit in bytes) pairs."""
    unified: Mapping[str, str] = field(default_factory=dict)
    """Raw cgroup v2 files and values (``{"memory.min": "1073741824"}``), written last; v2 only."""


@record
class CgroupStats:
    """Counters read from a container's cgroup; ``None`` where unavailable."""

    memory_peak: int | None = None
    """Highest memory use in bytes (``memory.peak`` / ``memory.max_usage_in_bytes``)."""
    memory_current: int | None = None
    cpu_time: float | None = None
    """CPU time in seconds used by every process of the cgroup."""
    pids_current: int | None = None
    oom_kills: int = 0
    """Processes killed by the OOM killer inside this cgroup (``oom_kill``, not ``oom``)."""
    pids_peak: int | None = None
    """Highest number of tasks (v2 ``pids.peak``, Linux 6.1+; v1 has none)."""
    cpu_user_time: float | None = None
    cpu_system_time: float | None = None
    cpu_throttled_periods: int | None = None
    """CFS periods in which the cgroup was throttled (``nr_throttled``)."""
    cpu_throttled_time: float | None = None
    """Seconds the cgroup spent throttled (``throttled_usec`` / ``throttled_time``)."""
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    """Bytes read/written on block devices (v2 ``io.stat``, v1 ``blkio.throttle.*``)."""
    memory_stat: Mapping[str, int] = field(default_factory=dict)
    """The raw ``memory.stat`` counters (anon, file, ...)."""


class Cgroup(abc.ABC):
    """One container's cgroup (in every hierarchy the backend uses)."""

    name: str

    @abc.abstractmethod
    def apply(self, limits: Limits) -> None:
        """Write the limits; MissingControllerError names a missing controller."""

    @abc.abstractmethod
    def attach(self, pid: int, *, skip: Collection[str] = ()) -> None:
        """Move ``pid`` into this cgroup (every hierarchy), but for the directories
        whose ``cgroup.procs`` is in ``skip`` (it is in those already)."""

    @abc.abstractmethod
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` file of every directory a process of this cgroup is
        in: one per v1 hierarchy in use, one on v2."""

    @abc.abstractmethod
    def clone_fd(self) -> int | None:
        """An O_PATH directory fd for ``clone3(CLONE_INTO_CGROUP)``, or None (v1).

        The caller owns the fd and closes it.
        """

    @abc.abstractmethod
    def procs(self) -> list[int]:
        """PIDs currently in the cgroup."""

    @abc.abstractmethod
    def stats(self, *, result_only: bool = False) -> CgroupStats:
        """Read the counters.  With ``result_only``, only those a
        :class:`~vortex.result.RunResult` carries: not the current memory and
        pids (zero once the container is gone), the user/system split or the raw
        memory.stat, whose files a container's exit would otherwise read too."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL every process in the cgroup and wait until it is empty."""

    @abc.abstractmethod
    def send_kill(self) -> None:
        """SIGKILL every process in the cgroup, without waiting for them to exit.

        For callers on an event loop (:meth:`vortex.Container.kill_all`): the exits
        are awaited through the init's pidfd, and :meth:`kill` after the reap makes
        sure nothing is left.  A paused cgroup is thawed so that the signal acts.
        """

    @abc.abstractmethod
    def freeze(self) -> None:
        """Stop every process (v2 ``cgroup.freeze``, v1 freezer) and wait until frozen."""

    @abc.abstractmethod
    def thaw(self) -> None:
        """Let frozen processes run again."""

    @abc.abstractmethod
    def frozen(self) -> bool:
        """True while the cgroup is frozen."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Kill what is left and remove the directories; idempotent."""


class CgroupBackend(abc.ABC):
    """Creates and finds container cgroups under Vortex's parent cgroup."""

    parent: str
    """The parent cgroup, relative to the hierarchy's root (e.g. ``vortex``)."""

    version: int

    @abc.abstractmethod
    def create(self, name: str) -> Cgroup:
        """Create the cgroup ``name`` under the parent; CgroupError if it exists."""

    @abc.abstractmethod
    def open(self, name: str) -> Cgroup:
        """Open an existing cgroup (for clean-up of stale ones)."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Names of every cgroup under the parent."""
