"""The cgroup v2 (unified hierarchy) backend.

A container's cgroup is ``<root>/<parent>/<name>``.  In v2 a controller is
usable in a cgroup only if every ancestor has it enabled in its
``cgroup.subtree_control``, so :meth:`V2Backend.create` delegates memory,
pids and cpu from the root down to the parent.  The container cgroup itself
never enables controllers for children: processes live in it, and the "no
internal processes" rule forbids both at once.

The runtime should start the container init with ``clone3(CLONE_INTO_CGROUP)``
using :meth:`V2Cgroup.clone_fd`, after :meth:`V2Cgroup.apply`: the init is
then limited from its first instruction.
"""

from __future__ import annotations

import os
import time

from vortex.cgroups._common import (
    DEFAULT_PARENT,
    DEFAULT_ROOT,
    DEFAULT_TIMEOUT,
    attach_pid,
    check_limits,
    check_name,
    cpu_max_value,
    make_dir,
    normalize_parent,
    parse_controllers,
    parse_flat_keyed,
    parse_int,
    parse_populated,
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

CONTROLLERS: tuple[str, ...] = ("memory", "pids", "cpu")
"""The controllers Vortex enables for its container cgroups (when available)."""


class V2Cgroup(Cgroup):
    """One container's directory in the unified hierarchy."""

    def __init__(
        self,
        name: str,
        path: str,
        *,
        timeout: float,
        enable_errors: dict[str, str] | None = None,
    ) -> None:
        """``enable_errors`` explains controllers that create() failed to delegate."""
        self.name = name
        self.path = path
        self._timeout = timeout
        self._enable_errors = dict(enable_errors or {})

    def _file(self, filename: str) -> str:
        return os.path.join(self.path, filename)

    def controllers(self) -> frozenset[str]:
        """The controllers usable in this cgroup (``cgroup.controllers``)."""
        return parse_controllers(read_file(self._file("cgroup.controllers")))

    def apply(self, limits: Limits) -> None:
        """Write the limits; fields that are None are left as they are (unlimited when new).

        Every needed controller is checked before the first write, so a
        missing one does not leave the cgroup half-configured.
        """
        check_limits(limits)
        available = self.controllers()
        wanted = (
            ("memory", "memory", limits.memory),
            ("pids", "pids", limits.pids),
            ("cpu", "cpus", limits.cpus),
        )
        for controller, what, value in wanted:
            if value is not None and controller not in available:
                why = self._enable_errors.get(controller)
                raise MissingControllerError(
                    f"cannot apply the {what} limit {value}: the cgroup v2 '{controller}' "
                    f"controller is not available in {self.path} "
                    + (f"({why}); " if why else "(not in cgroup.controllers); ")
                    + f"enable it in the parent's cgroup.subtree_control or run without "
                    f"the {what} limit"
                )

        if limits.memory is not None:
            hint = "the limit may be below what the container already uses; use a larger limit"
            write_file(self._file("memory.max"), str(limits.memory), hint)
            # docker's --memory without --memory-swap allows as much swap again
            # (swap = limit).  Vortex deliberately allows no swap beyond the
            # limit: a memory limit means "this much memory", and swapping the
            # excess out would only turn an OOM kill into a slow thrash.  The
            # file is absent without swap accounting; then there is no swap to
            # bound.
            swap_max = self._file("memory.swap.max")
            if os.path.exists(swap_max):
                write_file(swap_max, "0")
            # On OOM, kill the whole container, not one arbitrary process of it:
            # a half-killed container is harder to reason about than a dead one.
            oom_group = self._file("memory.oom.group")
            if os.path.exists(oom_group):
                write_file(oom_group, "1")
        if limits.pids is not None:
            write_file(self._file("pids.max"), str(limits.pids))
        if limits.cpus is not None:
            write_file(
                self._file("cpu.max"),
                cpu_max_value(limits.cpus),
                "the cpus limit may exceed the parent cgroup's cpu.max",
            )

    def attach(self, pid: int) -> None:
        """Write ``pid`` to cgroup.procs (prefer clone_fd() and CLONE_INTO_CGROUP)."""
        attach_pid(self._file("cgroup.procs"), pid)

    def clone_fd(self) -> int:
        """An O_PATH fd of the directory for ``clone3(CLONE_INTO_CGROUP)``; the caller closes it."""
        try:
            return os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise CgroupError(
                f"cannot open cgroup {self.path}: {e.strerror}; create the cgroup first"
            ) from None

    def procs(self) -> list[int]:
        """PIDs in this cgroup (not in child cgroups)."""
        return read_procs(self._file("cgroup.procs"))

    def populated(self) -> bool:
        """True while a process lives in this cgroup or below it; False once it is gone."""
        text = read_optional(self._file("cgroup.events"))
        return text is not None and parse_populated(text)

    def stats(self) -> CgroupStats:
        """Read the counters; a counter whose file is missing is None."""

        def text(filename: str) -> str | None:
            return read_optional(self._file(filename))

        def number(filename: str) -> int | None:
            value = text(filename)
            return None if value is None else parse_int(value)

        cpu_stat = text("cpu.stat")
        usage_usec = None if cpu_stat is None else parse_flat_keyed(cpu_stat).get("usage_usec")
        events = text("memory.events")
        return CgroupStats(
            memory_peak=number("memory.peak"),
            memory_current=number("memory.current"),
            cpu_time=None if usage_usec is None else usage_usec / 1e6,
            pids_current=number("pids.current"),
            # oom_kill counts processes the OOM killer actually killed; "oom" only
            # counts the times the limit was hit, which may end without a kill.
            oom_kills=0 if events is None else parse_flat_keyed(events).get("oom_kill", 0),
        )

    def kill(self) -> None:
        """SIGKILL everything in the cgroup and below, and wait until it is empty.

        cgroup.kill (Linux 5.14) kills the whole subtree atomically, including
        processes forked while it runs.  Without it, each PID gets SIGKILL in
        rounds until the cgroup is empty.  The wait uses cgroup.events'
        ``populated``, which drops when the last task exits (before it is reaped).
        """
        if not os.path.isdir(self.path) or not self.populated():
            return
        kill_file = self._file("cgroup.kill")
        if os.path.exists(kill_file):
            write_file(kill_file, "1")
            if wait_until(lambda: not self.populated(), self._timeout):
                return
        else:
            deadline = time.monotonic() + self._timeout
            while time.monotonic() < deadline:
                sigkill_all(subtree_pids(self.path))
                if wait_until(lambda: not self.populated(), 0.1):
                    return
        raise CgroupError(
            f"cannot kill the processes of cgroup {self.path}: still populated after "
            f"{self._timeout:g}s (pids {sorted(subtree_pids(self.path))}); they may be stuck "
            "in the kernel (state D)"
        )

    def remove(self) -> None:
        """Kill leftovers and rmdir the cgroup (and any child cgroups); a missing one is fine."""
        if not os.path.isdir(self.path):
            return
        self.kill()
        rmdir_tree(self.path, self._timeout)


class V2Backend(CgroupBackend):
    """Container cgroups under ``<root>/<parent>`` of a cgroup2 mount."""

    version = 2

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        parent: str = DEFAULT_PARENT,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Nothing is touched on disk until create()."""
        self.root = root
        self.parent = normalize_parent(parent)
        self.parent_path = os.path.join(root, self.parent)
        self.timeout = timeout

    def _delegate(self) -> dict[str, str]:
        """Enable CONTROLLERS in subtree_control from the root down to the parent.

        Only controllers listed in a level's cgroup.controllers are enabled: a
        missing one is not an error here (apply() reports it if a limit needs
        it).  Returns why an available controller could not be enabled, e.g.
        EBUSY when a level holds processes (the "no internal processes" rule).
        """
        errors: dict[str, str] = {}
        level = self.root
        levels = [level]
        for component in self.parent.split("/"):
            level = os.path.join(level, component)
            levels.append(level)
        for level in levels:
            available = parse_controllers(read_file(os.path.join(level, "cgroup.controllers")))
            control = os.path.join(level, "cgroup.subtree_control")
            enabled = parse_controllers(read_file(control))
            for controller in CONTROLLERS:
                if controller not in available or controller in enabled:
                    continue
                # One write per controller, so one failure does not block the others.
                try:
                    write_file(control, f"+{controller}")
                except CgroupError as e:
                    errors.setdefault(controller, str(e))
        return errors

    def create(self, name: str) -> V2Cgroup:
        """Create ``name`` under the parent, delegating the controllers first."""
        check_name(name)
        make_dir(self.parent_path)
        errors = self._delegate()
        path = os.path.join(self.parent_path, name)
        try:
            os.mkdir(path)
        except FileExistsError:
            raise CgroupError(
                f"cgroup {name} already exists ({path}); "
                "remove the stale container or choose another name"
            ) from None
        except OSError as e:
            raise CgroupError(
                f"cannot create cgroup {path}: {e.strerror}; check that Vortex runs as root"
            ) from None
        return V2Cgroup(name, path, timeout=self.timeout, enable_errors=errors)

    def open(self, name: str) -> V2Cgroup:
        """Open the existing cgroup ``name``."""
        check_name(name)
        path = os.path.join(self.parent_path, name)
        if not os.path.isdir(path):
            raise CgroupError(f"cgroup {name} does not exist ({path})")
        return V2Cgroup(name, path, timeout=self.timeout)

    def names(self) -> list[str]:
        """Names of the cgroups under the parent."""
        try:
            entries = list(os.scandir(self.parent_path))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise CgroupError(f"cannot list {self.parent_path}: {e.strerror}") from None
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
