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
from collections.abc import Collection, Mapping

from vortex.cgroups._common import (
    DEFAULT_PARENT,
    DEFAULT_ROOT,
    DEFAULT_TIMEOUT,
    attach_pid,
    check_limits,
    check_name,
    find_v1_hierarchies,
    make_dir,
    missing_file_message,
    normalize_parent,
    parse_flat_keyed,
    parse_int,
    read_file,
    read_optional,
    read_procs,
    rmdir_tree,
    sigkill_all,
    subtree_pids,
    v1_writes,
    wait_until,
    write_file,
)
from vortex.cgroups.base import Cgroup, CgroupBackend, CgroupStats, Limits
from vortex.errors import CgroupError, MissingControllerError
from vortex.records import replace

CONTROLLERS: tuple[str, ...] = ("memory", "pids", "cpu", "cpuacct", "freezer")
"""The v1 hierarchies every container cgroup lives in (those that are mounted)."""
ON_DEMAND: tuple[str, ...] = ("cpuset", "blkio", "hugetlb")
"""Hierarchies a container joins only when a limit needs them (created by apply())."""

FREEZE_TIMEOUT = 1.0
"""How long kill() waits for FROZEN.  A task in uninterruptible sleep can keep the
freezer in FREEZING; we then send the signals anyway rather than hang."""


def parse_blkio_bytes(text: str) -> tuple[int, int]:
    """Total (read, write) bytes from v1 ``blkio.throttle.io_service_bytes_recursive``."""
    read = written = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2].isdigit():
            if fields[1] == "Read":
                read += int(fields[2])
            elif fields[1] == "Write":
                written += int(fields[2])
    return read, written


class V1Cgroup(Cgroup):
    """One container's directories in the v1 hierarchies."""

    def __init__(
        self,
        name: str,
        dirs: Mapping[str, str],
        *,
        timeout: float,
        mounts: Mapping[str, str] | None = None,
    ) -> None:
        """``dirs`` maps each controller to the container's directory in its hierarchy,
        ``mounts`` to the hierarchy's mount point (default: two levels up)."""
        self.name = name
        self._dirs = dict(dirs)
        self._mounts = dict(mounts or {})
        self._timeout = timeout
        self._joined: set[str] | None = None
        """The on-demand controllers whose directory exists (None: not looked yet)."""

    @property
    def paths(self) -> list[str]:
        """The distinct directories (co-mounted controllers share one), in controller order.

        On-demand hierarchies (cpuset, blkio, hugetlb) count once apply() made them.
        """
        if self._joined is None:
            # Looked up once, then kept up to date by _join: paths is asked several
            # times per container (attach, kill, stats, remove).
            self._joined = {
                c for c in ON_DEMAND if c in self._dirs and os.path.isdir(self._dirs[c])
            }
        joined = self._joined
        return list(
            dict.fromkeys(d for c, d in self._dirs.items() if c not in ON_DEMAND or c in joined)
        )

    @property
    def mounts(self) -> Mapping[str, str]:
        """Controller → mount point of every v1 hierarchy the backend found."""
        return self._mounts

    def path(self, controller: str) -> str | None:
        """The directory of ``controller``'s hierarchy, or None if it is not mounted."""
        return self._dirs.get(controller)

    def _file(self, controller: str, filename: str) -> str | None:
        directory = self._dirs.get(controller)
        return None if directory is None else os.path.join(directory, filename)

    def apply(self, limits: Limits) -> None:
        """Write the limits; fields that are None are left as they are (unlimited when new).

        Every needed controller is checked before the first write, so a
        missing one does not leave the cgroup half-configured.  Must run
        before attach(): the on-demand hierarchies are joined here.
        """
        check_limits(limits)
        writes = v1_writes(limits)
        memory_dir = None
        if limits.memory is not None:
            memory_dir = self._require("memory", f"--memory {limits.memory}")
        for write in writes:
            assert write.controller is not None
            self._require(write.controller, write.flag)
        for controller in dict.fromkeys(w.controller for w in writes):
            if controller in ON_DEMAND:
                self._join(controller)

        if memory_dir is not None and limits.memory is not None:
            self._apply_memory(memory_dir, limits.memory, limits.memory_swap)
        for write in writes:
            assert write.controller is not None
            directory = self._dirs[write.controller]
            target = next(
                ((f, v) for f, v in write.candidates if os.path.exists(os.path.join(directory, f))),
                None,
            )
            if target is None:
                raise CgroupError(missing_file_message(write, directory))
            write_file(
                os.path.join(directory, target[0]), target[1], f"the kernel rejected {write.flag}"
            )

    def _require(self, controller: str, flag: str) -> str:
        directory = self._dirs.get(controller)
        if directory is None:
            raise MissingControllerError(
                f"cannot apply {flag}: the cgroup v1 '{controller}' controller is not "
                f"mounted; mount it or run without {flag.split()[0]}"
            )
        return directory

    def _join(self, controller: str) -> None:
        """Create the directory in an on-demand hierarchy (and its parents).

        A new v1 cpuset starts with empty cpuset.cpus and cpuset.mems, and a
        task cannot join it until both are set; each new level copies them
        from its parent, as cgroup.clone_children would.
        """
        directory = self._dirs[controller]
        self._joined = None  # looked up again at the next paths
        if os.path.isdir(directory):
            return
        mount = self._mounts.get(controller) or os.path.dirname(os.path.dirname(directory))
        relative = os.path.relpath(directory, mount)
        level = mount
        for component in relative.split("/"):
            parent, level = level, os.path.join(level, component)
            if not os.path.isdir(level):
                make_dir(level)
            if controller == "cpuset":
                for filename in ("cpuset.cpus", "cpuset.mems"):
                    if not read_file(os.path.join(level, filename)).strip():
                        value = read_file(os.path.join(parent, filename)).strip()
                        write_file(os.path.join(level, filename), value)

    def _apply_memory(self, directory: str, limit: int, memory_swap: int | None) -> None:
        """Set memory.limit_in_bytes, and memory.memsw.limit_in_bytes (memory + swap).

        memsw defaults to the limit itself, so that swapping cannot take the
        container beyond it; ``memory_swap`` (docker's --memory-swap) sets it,
        -1 meaning unlimited.  The kernel insists memsw >= limit at all times
        (EINVAL otherwise), so memsw is written first when it is at least the
        current limit, else the limit is lowered first.  memsw exists only
        with swap accounting enabled; without it only an explicit
        --memory-swap is an error.
        """
        limit_file = os.path.join(directory, "memory.limit_in_bytes")
        memsw_file = os.path.join(directory, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw_file)
        if memory_swap is not None and not has_memsw:
            raise MissingControllerError(
                f"cannot apply --memory-swap {memory_swap}: {directory} has no "
                "memory.memsw.limit_in_bytes (swap accounting is off: boot with "
                "swapaccount=1) ; run without --memory-swap"
            )
        memsw = limit if memory_swap is None else memory_swap
        hint = "the limit may be below what the container already uses; use a larger limit"
        current = parse_int(read_file(limit_file))
        if has_memsw and (memsw == -1 or current is None or memsw >= current):
            write_file(memsw_file, str(memsw), hint)
            write_file(limit_file, str(limit), hint)
        else:
            write_file(limit_file, str(limit), hint)
            if has_memsw:
                write_file(memsw_file, str(memsw), hint)

    def attach(self, pid: int, *, skip: Collection[str] = ()) -> None:
        """Write ``pid`` to cgroup.procs in every hierarchy but those in ``skip`` (the
        whole thread group moves)."""
        for procs_file in self.procs_files():
            if procs_file not in skip:
                attach_pid(procs_file, pid)

    def procs_files(self) -> list[str]:
        return [os.path.join(directory, "cgroup.procs") for directory in self.paths]

    def clone_fd(self) -> int | None:
        """None: CLONE_INTO_CGROUP only works with cgroup v2."""
        return None

    def procs(self) -> list[int]:
        """PIDs in any of the hierarchies (normally the same set in all of them)."""
        pids: set[int] = set()
        for directory in self.paths:
            pids.update(read_procs(os.path.join(directory, "cgroup.procs")))
        return sorted(pids)

    def stats(self, *, result_only: bool = False) -> CgroupStats:
        """Read the counters; a counter whose controller is not mounted is None."""

        def number(controller: str, filename: str) -> int | None:
            path = self._file(controller, filename)
            text = None if path is None else read_optional(path)
            return None if text is None else parse_int(text)

        def keyed(controller: str, filename: str) -> dict[str, int]:
            path = self._file(controller, filename)
            text = None if path is None else read_optional(path)
            return {} if text is None else parse_flat_keyed(text)

        cpu_ns = number("cpuacct", "cpuacct.usage")
        cpu_stat = keyed("cpu", "cpu.stat")
        throttled_ns = cpu_stat.get("throttled_time")
        io = self._file("blkio", "blkio.throttle.io_service_bytes_recursive")
        io_text = None if io is None else read_optional(io)
        io_totals = None if io_text is None else parse_blkio_bytes(io_text)
        stats = CgroupStats(
            memory_peak=number("memory", "memory.max_usage_in_bytes"),
            cpu_time=None if cpu_ns is None else cpu_ns / 1e9,
            oom_kills=keyed("memory", "memory.oom_control").get("oom_kill", 0),
            cpu_throttled_periods=cpu_stat.get("nr_throttled"),
            cpu_throttled_time=None if throttled_ns is None else throttled_ns / 1e9,
            io_read_bytes=None if io_totals is None else io_totals[0],
            io_write_bytes=None if io_totals is None else io_totals[1],
        )
        if result_only:
            return stats
        ticks = keyed("cpuacct", "cpuacct.stat")  # in USER_HZ
        hz = os.sysconf("SC_CLK_TCK")
        return replace(
            stats,
            memory_current=number("memory", "memory.usage_in_bytes"),
            pids_current=number("pids", "pids.current"),
            cpu_user_time=ticks["user"] / hz if "user" in ticks else None,
            cpu_system_time=ticks["system"] / hz if "system" in ticks else None,
            memory_stat=keyed("memory", "memory.stat"),
        )

    def freeze(self) -> None:
        """FROZEN in the freezer hierarchy; CgroupError without one."""
        if not self._set_frozen(True):
            raise MissingControllerError(
                f"cannot pause {self.name}: the cgroup v1 'freezer' controller is not mounted"
            )
        if not self.frozen():
            raise CgroupError(f"cgroup {self.name} did not freeze within {FREEZE_TIMEOUT:g}s")

    def thaw(self) -> None:
        """THAWED in the freezer hierarchy."""
        if not self._set_frozen(False):
            raise MissingControllerError(
                f"cannot resume {self.name}: the cgroup v1 'freezer' controller is not mounted"
            )

    def frozen(self) -> bool:
        """freezer.state is FROZEN."""
        path = self._file("freezer", "freezer.state")
        text = None if path is None else read_optional(path)
        return text is not None and text.strip() == "FROZEN"

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

    def send_kill(self) -> None:
        """One SIGKILL per PID, then thaw: a task frozen by the v1 freezer sleeps
        through SIGKILL until it is thawed.  Without the freeze of :meth:`kill`, a
        process forked meanwhile may survive this round; the container's PID
        namespace dies with its init anyway, and :meth:`kill` after the reap
        catches anything else."""
        sigkill_all(self._subtree_pids())
        self._set_frozen(False)

    def _subtree_pids(self) -> set[int]:
        """PIDs in the cgroup and in any child cgroups created below it (nested runtimes)."""
        pids: set[int] = set()
        for directory in self.paths:
            pids.update(subtree_pids(directory))
        return pids

    def remove(self) -> None:
        """Kill leftovers and rmdir the directories in every hierarchy; missing ones are fine."""
        # First one rmdir per hierarchy: after a container's exit its cgroup is already
        # empty (its PID namespace died with its init: lifecycle.collect_result), and
        # listing every hierarchy's processes and child cgroups would cost ~0.2 ms of
        # each exit.  The kernel refuses to remove a cgroup that holds a process or a
        # child cgroup (EBUSY): only then kill and remove the subtree.
        busy = False
        for directory in self.paths:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                continue
            except OSError:
                busy = True
        if not busy:
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
        self.mounts: dict[str, str] = dict(found)
        """Every v1 hierarchy found, Vortex's or not (the security plugin places
        containers in the devices one): read once, not on every start."""
        self.hierarchies: dict[str, str] = {
            c: found[c] for c in CONTROLLERS + ON_DEMAND if c in found
        }
        self.timeout = timeout
        if not any(c in self.hierarchies for c in CONTROLLERS):
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
        cgroup = V1Cgroup(name, self._dirs(name), timeout=self.timeout, mounts=self.mounts)
        made: list[str] = []
        try:
            for directory in cgroup.paths:
                try:
                    try:
                        os.mkdir(directory)
                    except FileNotFoundError:  # the parents first (only the first time)
                        make_dir(os.path.dirname(directory))
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
        cgroup = V1Cgroup(name, self._dirs(name), timeout=self.timeout, mounts=self.mounts)
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
