"""The cgroup v1 backend (legacy and hybrid hosts).

A container's cgroup is one directory ``<mount>/<parent>/<name>`` in each of
the hierarchies Vortex uses: memory, pids, cpu, cpuacct and freezer.  The
mount points come from ``/proc/self/mountinfo`` rather than from guessed
paths, because distributions differ: ``cpu`` and ``cpuacct`` are often
co-mounted as ``/sys/fs/cgroup/cpu,cpuacct`` (one directory serves both), and
on some hosts they are separate mounts.

v1 has no ``CLONE_INTO_CGROUP``, so the runtime attaches the container init
by PID (:meth:`V1Cgroup.attach`) before it lets the init exec.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from vortex.cgroups._common import (
    CFS_PERIOD_US,
    DEFAULT_PARENT,
    DEFAULT_ROOT,
    DEFAULT_TIMEOUT,
    attach_pid,
    cfs_quota_us,
    check_limits,
    check_name,
    find_v1_hierarchies,
    make_dir,
    normalize_parent,
    parse_flat_keyed,
    parse_int,
    read_file,
    read_optional,
    read_procs,
    rmdir_tree,
    sigkill_all,
    subtree_pids,
    wait_until,
    write_file,
)
from vortex.cgroups.base import Cgroup, CgroupBackend, CgroupStats, Limits
from vortex.errors import CgroupError, MissingControllerError

CONTROLLERS: tuple[str, ...] = ("memory", "pids", "cpu", "cpuacct", "freezer")
"""The v1 hierarchies a container cgroup lives in (those that are mounted)."""

FREEZE_TIMEOUT = 1.0
"""How long kill() waits for FROZEN.  A task in uninterruptible sleep can keep the
freezer in FREEZING; we then send the signals anyway rather than hang."""


class V1Cgroup(Cgroup):
    """One container's directories in the v1 hierarchies."""

    def __init__(self, name: str, dirs: Mapping[str, str], *, timeout: float) -> None:
        """``dirs`` maps each controller to the container's directory in its hierarchy."""
        self.name = name
        self._dirs = dict(dirs)
        self._timeout = timeout

    @property
    def paths(self) -> list[str]:
        """The distinct directories (co-mounted controllers share one), in controller order."""
        return list(dict.fromkeys(self._dirs.values()))

    def path(self, controller: str) -> str | None:
        """The directory of ``controller``'s hierarchy, or None if it is not mounted."""
        return self._dirs.get(controller)

    def _file(self, controller: str, filename: str) -> str | None:
        directory = self._dirs.get(controller)
        return None if directory is None else os.path.join(directory, filename)

    def _require(self, controller: str, what: str, value: object) -> str:
        directory = self._dirs.get(controller)
        if directory is None:
            raise MissingControllerError(
                f"cannot apply the {what} limit {value}: the cgroup v1 '{controller}' "
                f"controller is not mounted; mount it or run without the {what} limit"
            )
        return directory

    def apply(self, limits: Limits) -> None:
        """Write the limits; fields that are None are left as they are (unlimited when new).

        Every needed controller is checked before the first write, so a
        missing one does not leave the cgroup half-configured.
        """
        check_limits(limits)
        memory_dir = pids_dir = cpu_dir = None
        if limits.memory is not None:
            memory_dir = self._require("memory", "memory", limits.memory)
        if limits.pids is not None:
            pids_dir = self._require("pids", "pids", limits.pids)
        if limits.cpus is not None:
            cpu_dir = self._require("cpu", "cpus", limits.cpus)

        if memory_dir is not None and limits.memory is not None:
            self._apply_memory(memory_dir, limits.memory)
        if pids_dir is not None and limits.pids is not None:
            write_file(os.path.join(pids_dir, "pids.max"), str(limits.pids))
        if cpu_dir is not None and limits.cpus is not None:
            # Period first: the quota is interpreted relative to it.
            write_file(os.path.join(cpu_dir, "cpu.cfs_period_us"), str(CFS_PERIOD_US))
            write_file(
                os.path.join(cpu_dir, "cpu.cfs_quota_us"),
                str(cfs_quota_us(limits.cpus)),
                "the cpus limit may exceed the parent cgroup's quota",
            )

    def _apply_memory(self, directory: str, limit: int) -> None:
        """Set memory.limit_in_bytes, and memory.memsw.limit_in_bytes to the same value.

        memsw (memory + swap) is set too so that swapping cannot take the
        container beyond its limit.  The kernel insists memsw >= limit at all
        times (EINVAL otherwise), so when the limit grows, memsw is raised
        first, and when it shrinks, the plain limit is lowered first.  memsw
        exists only with swap accounting enabled; without it there is nothing
        to do.
        """
        limit_file = os.path.join(directory, "memory.limit_in_bytes")
        memsw_file = os.path.join(directory, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw_file)
        hint = "the limit may be below what the container already uses; use a larger limit"
        current = parse_int(read_file(limit_file))
        if has_memsw and (current is None or limit > current):
            write_file(memsw_file, str(limit), hint)
            write_file(limit_file, str(limit), hint)
        else:
            write_file(limit_file, str(limit), hint)
            if has_memsw:
                write_file(memsw_file, str(limit), hint)

    def attach(self, pid: int) -> None:
        """Write ``pid`` to cgroup.procs in every hierarchy (the whole thread group moves)."""
        for directory in self.paths:
            attach_pid(os.path.join(directory, "cgroup.procs"), pid)

    def clone_fd(self) -> int | None:
        """None: CLONE_INTO_CGROUP only works with cgroup v2."""
        return None

    def procs(self) -> list[int]:
        """PIDs in any of the hierarchies (normally the same set in all of them)."""
        pids: set[int] = set()
        for directory in self.paths:
            pids.update(read_procs(os.path.join(directory, "cgroup.procs")))
        return sorted(pids)

    def stats(self) -> CgroupStats:
        """Read the counters; a counter whose controller is not mounted is None."""

        def number(controller: str, filename: str) -> int | None:
            path = self._file(controller, filename)
            text = None if path is None else read_optional(path)
            return None if text is None else parse_int(text)

        cpu_ns = number("cpuacct", "cpuacct.usage")
        oom_path = self._file("memory", "memory.oom_control")
        oom_text = None if oom_path is None else read_optional(oom_path)
        oom_kills = 0 if oom_text is None else parse_flat_keyed(oom_text).get("oom_kill", 0)
        return CgroupStats(
            memory_peak=number("memory", "memory.max_usage_in_bytes"),
            memory_current=number("memory", "memory.usage_in_bytes"),
            cpu_time=None if cpu_ns is None else cpu_ns / 1e9,
            pids_current=number("pids", "pids.current"),
            oom_kills=oom_kills,
        )

    def _set_frozen(self, frozen: bool) -> bool:
        """Freeze or thaw via the freezer hierarchy; False when there is no usable freezer."""
        state_file = self._file("freezer", "freezer.state")
        if state_file is None or not os.path.exists(state_file):
            return False
        state = "FROZEN" if frozen else "THAWED"
        write_file(state_file, state)
        if frozen:
            wait_until(lambda: (read_optional(state_file) or "").strip() == state, FREEZE_TIMEOUT)
        return True

    def kill(self) -> None:
        """SIGKILL every process, until the cgroup is empty (CgroupError after the timeout).

        Without freezing, a process could fork between our reading cgroup.procs
        and the signal reaching it, and the child would survive this round.  A
        frozen task cannot fork; the signal stays pending and takes effect when
        the cgroup is thawed.  Killed processes leave cgroup.procs when they
        exit, before their parent reaps them, so unreaped zombies do not keep
        this waiting.
        """

        def empty() -> bool:
            return not self._subtree_pids()

        if empty():
            return
        deadline = time.monotonic() + self._timeout
        while True:
            frozen = self._set_frozen(True)
            try:
                sigkill_all(self._subtree_pids())
            finally:
                if frozen:
                    self._set_frozen(False)
            if wait_until(empty, 0.1):
                return
            if time.monotonic() >= deadline:
                raise CgroupError(
                    f"cannot kill the processes of cgroup {self.name}: pids "
                    f"{sorted(self._subtree_pids())} are still there after {self._timeout:g}s; "
                    "they may be stuck in the kernel (state D)"
                )

    def _subtree_pids(self) -> set[int]:
        """PIDs in the cgroup and in any child cgroups created below it (nested runtimes)."""
        pids: set[int] = set()
        for directory in self.paths:
            pids.update(subtree_pids(directory))
        return pids

    def remove(self) -> None:
        """Kill leftovers and rmdir the directories in every hierarchy; missing ones are fine."""
        if not any(os.path.isdir(d) for d in self.paths):
            return
        self.kill()
        for directory in self.paths:
            rmdir_tree(directory, self._timeout)


class V1Backend(CgroupBackend):
    """Container cgroups under ``<mount>/<parent>`` of each v1 hierarchy."""

    version = 1

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        parent: str = DEFAULT_PARENT,
        *,
        hierarchies: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Use the hierarchies mounted under ``root``, or those given in ``hierarchies``.

        ``hierarchies`` maps controller names to mount points (what
        :func:`find_v1_hierarchies` returns); pass a subset to run without a
        controller.  Controllers Vortex does not use are ignored.
        """
        self.root = root
        self.parent = normalize_parent(parent)
        found = find_v1_hierarchies(root) if hierarchies is None else hierarchies
        self.hierarchies: dict[str, str] = {c: found[c] for c in CONTROLLERS if c in found}
        self.timeout = timeout
        if not self.hierarchies:
            raise CgroupError(
                f"no cgroup v1 hierarchy of {', '.join(CONTROLLERS)} is mounted under {root}; "
                "mount at least the memory controller"
            )

    def parent_paths(self) -> list[str]:
        """The distinct parent directories, one per mounted hierarchy."""
        return list(dict.fromkeys(os.path.join(m, self.parent) for m in self.hierarchies.values()))

    def _dirs(self, name: str) -> dict[str, str]:
        return {c: os.path.join(m, self.parent, name) for c, m in self.hierarchies.items()}

    def create(self, name: str) -> V1Cgroup:
        """Create ``name`` in every hierarchy (and the parents on demand).

        If it already exists anywhere, the directories made by this call are
        removed again and CgroupError is raised.
        """
        check_name(name)
        cgroup = V1Cgroup(name, self._dirs(name), timeout=self.timeout)
        made: list[str] = []
        try:
            for directory in cgroup.paths:
                make_dir(os.path.dirname(directory))
                try:
                    os.mkdir(directory)
                except FileExistsError:
                    raise CgroupError(
                        f"cgroup {name} already exists ({directory}); "
                        "remove the stale container or choose another name"
                    ) from None
                except OSError as e:
                    raise CgroupError(
                        f"cannot create cgroup {directory}: {e.strerror}; "
                        "check that Vortex runs as root"
                    ) from None
                made.append(directory)
        except CgroupError:
            for directory in reversed(made):
                rmdir_tree(directory, self.timeout)
            raise
        return cgroup

    def open(self, name: str) -> V1Cgroup:
        """Open ``name``; it must exist in at least one hierarchy (a half-removed one is fine)."""
        check_name(name)
        cgroup = V1Cgroup(name, self._dirs(name), timeout=self.timeout)
        if not any(os.path.isdir(d) for d in cgroup.paths):
            raise CgroupError(
                f"cgroup {name} does not exist under {', '.join(self.parent_paths())}"
            )
        return cgroup

    def names(self) -> list[str]:
        """Names of the cgroups under the parent in any hierarchy."""
        names: set[str] = set()
        for parent in self.parent_paths():
            try:
                names.update(e.name for e in os.scandir(parent) if e.is_dir(follow_symlinks=False))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise CgroupError(f"cannot list {parent}: {e.strerror}") from None
        return sorted(names)
