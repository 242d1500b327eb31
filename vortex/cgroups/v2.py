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
from collections.abc import Callable, Collection, Iterable

from vortex.cgroups._common import (
    DEFAULT_PARENT,
    DEFAULT_ROOT,
    DEFAULT_TIMEOUT,
    attach_pid,
    check_limits,
    check_name,
    make_dir,
    missing_file_message,
    normalize_parent,
    own_cgroups,
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
    v2_writes,
    wait_until,
    write_file,
)
from vortex.cgroups.base import Cgroup, CgroupBackend, CgroupStats, Limits
from vortex.errors import CgroupError, MissingControllerError
from vortex.records import replace

CONTROLLERS: tuple[str, ...] = ("memory", "pids", "cpu")
"""The controllers Vortex enables for every container cgroup (when available): they
give the statistics and the OOM report.  Others (cpuset, io, hugetlb, ...) are
enabled by :meth:`V2Cgroup.apply` only when a limit needs them."""


def _usec(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def parse_io_stat(text: str) -> tuple[int, int]:
    """Total (rbytes, wbytes) over every device line of v2 ``io.stat``."""
    read = written = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes" and value.isdigit():
                read += int(value)
            elif key == "wbytes" and value.isdigit():
                written += int(value)
    return read, written


class V2Cgroup(Cgroup):
    """One container's directory in the unified hierarchy."""

    def __init__(
        self,
        name: str,
        path: str,
        *,
        timeout: float,
        enable_errors: dict[str, str] | None = None,
        enable: Callable[[Iterable[str]], dict[str, str]] | None = None,
    ) -> None:
        """``enable_errors`` explains controllers that create() failed to delegate;
        ``enable`` delegates more controllers down to the parent on demand."""
        self.name = name
        self.path = path
        self._timeout = timeout
        self._enable_errors = dict(enable_errors or {})
        self._enable = enable

    def _file(self, filename: str) -> str:
        return os.path.join(self.path, filename)

    def controllers(self) -> frozenset[str]:
        """The controllers usable in this cgroup (``cgroup.controllers``)."""
        return parse_controllers(read_file(self._file("cgroup.controllers")))

    def apply(self, limits: Limits) -> None:
        """Write the limits; fields that are None are left as they are (unlimited when new).

        Controllers beyond the defaults (cpuset, io, hugetlb, or any named by a
        ``unified`` key) are enabled on the way down from the root to the
        parent only now, when a limit needs them.  Every needed controller is
        checked before the first write, so a missing one does not leave the
        cgroup half-configured.
        """
        check_limits(limits)
        writes = v2_writes(limits)
        needed = {w.controller for w in writes if w.controller is not None}
        available = self.controllers()
        if needed - available and self._enable is not None:
            self._enable_errors.update(self._enable(sorted(needed - available)))
            available = self.controllers()
        for write in writes:
            controller = write.controller
            if controller is not None and controller not in available:
                why = self._enable_errors.get(controller)
                raise MissingControllerError(
                    f"cannot apply {write.flag}: the cgroup v2 '{controller}' "
                    f"controller is not available in {self.path} "
                    + (f"({why}); " if why else "(not in cgroup.controllers); ")
                    + f"enable it in the parent's cgroup.subtree_control or run without "
                    f"{write.flag.split()[0]}"
                )
        for write in writes:
            target = next(
                ((f, v) for f, v in write.candidates if os.path.exists(self._file(f))), None
            )
            if target is None:
                if write.optional:
                    continue
                raise CgroupError(missing_file_message(write, self.path))
            hint = f"the kernel rejected {write.flag}"
            if write.controller == "memory":
                hint += "; the limit may be below what the container already uses"
            elif write.controller == "cpu":
                hint += "; it may exceed what the parent cgroup allows"
            elif write.controller == "io":
                hint += "; check that the device exists"
            write_file(self._file(target[0]), target[1], hint)

    def attach(self, pid: int, *, skip: Collection[str] = ()) -> None:
        """Write ``pid`` to cgroup.procs (prefer clone_fd() and CLONE_INTO_CGROUP)."""
        procs_file = self._file("cgroup.procs")
        if procs_file not in skip:
            attach_pid(procs_file, pid)

    def procs_files(self) -> list[str]:
        return [self._file("cgroup.procs")]

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

    def stats(self, *, result_only: bool = False) -> CgroupStats:
        """Read the counters; a counter whose file is missing is None."""

        def text(filename: str) -> str | None:
            return read_optional(self._file(filename))

        def number(filename: str) -> int | None:
            value = text(filename)
            return None if value is None else parse_int(value)

        cpu = parse_flat_keyed(text("cpu.stat") or "")
        usage_usec = cpu.get("usage_usec")
        throttled_usec = cpu.get("throttled_usec")
        events = parse_flat_keyed(text("memory.events") or "")
        io = text("io.stat")
        io_totals = None if io is None else parse_io_stat(io)
        stats = CgroupStats(
            memory_peak=number("memory.peak"),
            cpu_time=None if usage_usec is None else usage_usec / 1e6,
            # oom_kill counts processes the OOM killer actually killed; "oom" only
            # counts the times the limit was hit, which may end without a kill.
            oom_kills=events.get("oom_kill", 0),
            pids_peak=number("pids.peak"),
            cpu_user_time=_usec(cpu.get("user_usec")),
            cpu_system_time=_usec(cpu.get("system_usec")),
            cpu_throttled_periods=cpu.get("nr_throttled"),
            cpu_throttled_time=_usec(throttled_usec),
            io_read_bytes=None if io_totals is None else io_totals[0],
            io_write_bytes=None if io_totals is None else io_totals[1],
        )
        if result_only:
            return stats
        return replace(
            stats,
            memory_current=number("memory.current"),
            pids_current=number("pids.current"),
            # Reading memory.stat makes the kernel flush its per-CPU counters first.
            memory_stat=parse_flat_keyed(text("memory.stat") or ""),
        )

    def freeze(self) -> None:
        """Write 1 to cgroup.freeze and wait until cgroup.events says ``frozen 1``."""
        self._set_frozen(True)

    def thaw(self) -> None:
        """Write 0 to cgroup.freeze and wait until cgroup.events says ``frozen 0``."""
        self._set_frozen(False)

    def frozen(self) -> bool:
        """The ``frozen`` key of cgroup.events."""
        text = read_optional(self._file("cgroup.events"))
        return text is not None and parse_flat_keyed(text).get("frozen", 0) == 1

    def _set_frozen(self, frozen: bool) -> None:
        freeze_file = self._file("cgroup.freeze")
        if not os.path.exists(freeze_file):
            raise CgroupError(
                f"cannot {'freeze' if frozen else 'thaw'} {self.path}: no cgroup.freeze "
                "(Linux 5.2 or later is needed)"
            )
        write_file(freeze_file, "1" if frozen else "0")
        if not wait_until(lambda: self.frozen() == frozen, self._timeout):
            raise CgroupError(
                f"cgroup {self.path} did not become {'frozen' if frozen else 'thawed'} "
                f"within {self._timeout:g}s"
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

    def send_kill(self) -> None:
        """cgroup.kill, or one SIGKILL per PID; frozen tasks die too (v2 freezer)."""
        if not os.path.isdir(self.path):
            return
        kill_file = self._file("cgroup.kill")
        if os.path.exists(kill_file):
            write_file(kill_file, "1")
        else:
            sigkill_all(subtree_pids(self.path))

    def remove(self) -> None:
        """Kill leftovers and rmdir the cgroup (and any child cgroups); a missing one is fine."""
        if not os.path.isdir(self.path):
            return
        self.kill()
        rmdir_tree(self.path, self._timeout)


DELEGATE_LEAF = "vortex-runtime"
"""In a delegated cgroup, the leaf the runtime moves its unit's processes into."""
DELEGATE_CONTAINERS = "containers"
"""In a delegated cgroup, the parent of the container cgroups."""


def own_cgroup(proc_file: str = "/proc/self/cgroup") -> str:
    """This process's cgroup v2 path (the ``0::`` line), e.g. ``/system.slice/x.service``."""
    return own_cgroups(proc_file).get("", "/")


def is_delegated(path: str) -> bool:
    """True when systemd marked the cgroup directory as delegated (``Delegate=yes``).

    systemd sets the ``trusted.delegate`` (and for user units ``user.delegate``)
    extended attribute to "1" on the cgroup of a unit with Delegate=yes.
    """
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            continue
    return False


def resolve_parent(root: str, parent: str, proc_file: str = "/proc/self/cgroup") -> str:
    """The container parent for ``parent``; ``auto`` uses a delegated cgroup when we are in one.

    With ``auto``, a runtime that lives in a cgroup systemd delegated to it
    (``Delegate=yes``: the ``trusted.delegate`` xattr) moves its unit's
    processes into the leaf ``<own>/vortex-runtime`` (the "no internal
    processes" rule forbids enabling controllers in a cgroup that holds
    processes) and creates containers under ``<own>/containers``.  A second
    runtime in the same unit finds itself in that leaf and uses the same parent.
    Anywhere else ``auto`` means ``vortex`` below the root, and any other value
    is a path below the root.
    """
    if parent != "auto":
        return parent
    own = own_cgroup(proc_file)
    if own == "/":
        return DEFAULT_PARENT
    if os.path.basename(own) == DELEGATE_LEAF:
        delegated = os.path.dirname(own)
    elif is_delegated(os.path.join(root, own.lstrip("/"))):
        delegated = own
        _move_into_leaf(os.path.join(root, own.lstrip("/")))
    else:
        return DEFAULT_PARENT
    return f"{delegated.strip('/')}/{DELEGATE_CONTAINERS}"


def _move_into_leaf(directory: str) -> None:
    """Move every process of ``directory`` into its DELEGATE_LEAF child."""
    leaf = os.path.join(directory, DELEGATE_LEAF)
    make_dir(leaf)
    for pid in read_procs(os.path.join(directory, "cgroup.procs")):
        try:
            attach_pid(os.path.join(leaf, "cgroup.procs"), pid)
        except CgroupError:
            if os.path.exists(f"/proc/{pid}"):
                raise


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

    def _delegate(self, controllers: Iterable[str] = CONTROLLERS) -> dict[str, str]:
        """Enable ``controllers`` in subtree_control from the root down to the parent.

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
            for controller in controllers:
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
        return V2Cgroup(
            name, path, timeout=self.timeout, enable_errors=errors, enable=self._delegate
        )

    def open(self, name: str) -> V2Cgroup:
        """Open the existing cgroup ``name``."""
        check_name(name)
        path = os.path.join(self.parent_path, name)
        if not os.path.isdir(path):
            raise CgroupError(f"cgroup {name} does not exist ({path})")
        return V2Cgroup(name, path, timeout=self.timeout, enable=self._delegate)

    def names(self) -> list[str]:
        """Names of the cgroups under the parent."""
        try:
            entries = list(os.scandir(self.parent_path))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise CgroupError(f"cannot list {self.parent_path}: {e.strerror}") from None
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
