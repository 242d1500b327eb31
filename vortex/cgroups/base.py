"""The interface every cgroup backend implements.

The runtime only talks to :class:`CgroupBackend` and :class:`Cgroup`; which
hierarchy sits underneath (v1 controllers, or the v2 unified tree) is decided
once by :func:`vortex.cgroups.detect`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Resource limits of one container; ``None`` means "no limit"."""

    memory: int | None = None
    """Hard memory limit in bytes (v2 ``memory.max``, v1 ``memory.limit_in_bytes``)."""
    pids: int | None = None
    """Maximum number of tasks (``pids.max``)."""
    cpus: float | None = None
    """CPU bandwidth in CPUs, e.g. 0.5 (v2 ``cpu.max``, v1 CFS quota/period)."""


@dataclass(frozen=True)
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


class Cgroup(abc.ABC):
    """One container's cgroup (in every hierarchy the backend uses)."""

    name: str

    @abc.abstractmethod
    def apply(self, limits: Limits) -> None:
        """Write the limits; MissingControllerError names a missing controller."""

    @abc.abstractmethod
    def attach(self, pid: int) -> None:
        """Move ``pid`` into this cgroup (every hierarchy)."""

    @abc.abstractmethod
    def clone_fd(self) -> int | None:
        """An O_PATH directory fd for ``clone3(CLONE_INTO_CGROUP)``, or None (v1).

        The caller owns the fd and closes it.
        """

    @abc.abstractmethod
    def procs(self) -> list[int]:
        """PIDs currently in the cgroup."""

    @abc.abstractmethod
    def stats(self) -> CgroupStats:
        """Read the counters."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL every process in the cgroup."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Kill what is left and remove the directories; idempotent."""


class CgroupBackend(abc.ABC):
    """Creates and finds container cgroups under Vortex's parent cgroup."""

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
