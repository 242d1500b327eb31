"""Helpers shared by the v1 and v2 backends.

Two kinds of code live here:

* pure functions that parse the kernel's pseudo-files or format values for
  them.  They take and return plain strings and numbers, so the unit tests
  exercise them without root and without cgroups;
* thin wrappers around the file operations on cgroupfs, which turn ``OSError``
  into :class:`~vortex.errors.CgroupError` with a message a user can act on.

Only the standard library is imported: this module is on the CLI's
cold-start path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Iterable

from vortex.cgroups.base import DeviceLimit, Limits
from vortex.errors import CgroupError
from vortex.records import record

DEFAULT_ROOT = "/sys/fs/cgroup"
DEFAULT_PARENT = "vortex"
DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for the processes of a cgroup to die, or for its rmdir to succeed."""

CFS_PERIOD_US = 100_000
"""The CFS period Vortex writes (100 ms, the kernel's and docker's default)."""
MIN_CFS_QUOTA_US = 1_000
"""The kernel rejects quotas below 1 ms (EINVAL), so ``cpus`` must be >= 0.01."""

# Every controller name cgroup v1 knows; used to tell controllers apart from
# the other words (rw, noprefix, name=..., xattr, ...) in a mount's options.
V1_KNOWN_CONTROLLERS = frozenset(
    {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    }
)


# --------------------------------------------------------------------------
# Pure parsing and formatting


def parse_flat_keyed(text: str) -> dict[str, int]:
    """Parse "key value" lines (``memory.events``, ``cpu.stat``, ``memory.oom_control``).

    Lines that are not exactly a key and an integer are skipped rather than
    rejected: the kernel adds keys over time, and one odd line must not make
    the counters we need unreadable.
    """
    result: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 2:
            continue
        try:
            result[fields[0]] = int(fields[1])
        except ValueError:
            continue
    return result


def parse_int(text: str) -> int | None:
    """Parse a single-value file such as ``pids.current``; ``max`` (no limit) is None."""
    value = text.strip()
    if value == "max":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_pids(text: str) -> list[int]:
    """Parse ``cgroup.procs``: one PID per line."""
    return [int(line) for line in text.split() if line.isdigit()]


def parse_controllers(text: str) -> frozenset[str]:
    """Parse ``cgroup.controllers`` / ``cgroup.subtree_control``: space separated names."""
    return frozenset(text.split())


def parse_populated(text: str) -> bool:
    """True when ``cgroup.events`` says the cgroup (or a descendant) still has processes."""
    return parse_flat_keyed(text).get("populated", 0) != 0


def cfs_quota_us(cpus: float, period_us: int = CFS_PERIOD_US) -> int:
    """The CFS quota in microseconds for ``cpus`` CPUs over ``period_us``."""
    return round(cpus * period_us)


def cpu_max_value(cpus: float, period_us: int = CFS_PERIOD_US) -> str:
    """The line written to v2 ``cpu.max``: "quota period"."""
    return f"{cfs_quota_us(cpus, period_us)} {period_us}"


@record
class Mount:
    """One line of ``/proc/self/mountinfo``, reduced to what cgroup discovery needs."""

    root: str
    """The path inside the filesystem that is mounted (``/`` for a hierarchy's top)."""
    mount_point: str
    fstype: str
    super_options: frozenset[str]


def _unescape(field: str) -> str:
    r"""Undo the kernel's octal escapes in mountinfo (``\040`` is a space)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        chunk = field[i + 1 : i + 4]
        if field[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse ``/proc/<pid>/mountinfo`` (proc(5)); malformed lines are skipped.

    The line has a variable number of optional fields before the ``-``
    separator, so the fields after it are found by position of the separator.
    """
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 4:
            continue
        mounts.append(
            Mount(
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fstype=fields[sep + 1],
                super_options=frozenset(fields[sep + 3].split(",")),
            )
        )
    return mounts


def _is_under(path: str, top: str) -> bool:
    path, top = os.path.normpath(path), os.path.normpath(top)
    return path == top or path.startswith(top.rstrip("/") + "/")


def v1_hierarchies(mounts: Iterable[Mount], under: str) -> dict[str, str]:
    """Map each cgroup v1 controller mounted at or below ``under`` to its mount point.

    Co-mounted controllers (``cpu,cpuacct``) map to the same mount point.  When a
    hierarchy is mounted more than once, the first mount wins, preferring one
    that shows the hierarchy's top (root ``/``) over a bind mount of a subtree.
    """
    found: dict[str, tuple[bool, str]] = {}
    for mount in mounts:
        if mount.fstype != "cgroup" or not _is_under(mount.mount_point, under):
            continue
        is_top = mount.root == "/"
        for controller in mount.super_options & V1_KNOWN_CONTROLLERS:
            previous = found.get(controller)
            if previous is None or (is_top and not previous[0]):
                found[controller] = (is_top, mount.mount_point)
    return {controller: point for controller, (_, point) in sorted(found.items())}


def find_v1_hierarchies(
    root: str = DEFAULT_ROOT, mountinfo: str = "/proc/self/mountinfo"
) -> dict[str, str]:
    """:func:`v1_hierarchies` of the running system; ``{}`` when mountinfo is unreadable."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return {}
    return v1_hierarchies(parse_mountinfo(text), root)


# --------------------------------------------------------------------------
# Validation


def _check_component(component: str, what: str) -> None:
    if (
        not component
        or component in (".", "..")
        or "/" in component
        or "\0" in component
        or len(component.encode("utf-8", "surrogateescape")) > 255
    ):
        raise CgroupError(
            f"invalid cgroup {what} {component!r}: use a non-empty name without '/', "
            "not '.' or '..', at most 255 bytes"
        )


def check_name(name: str) -> None:
    """Reject a container cgroup name that is not a single, safe path component."""
    _check_component(name, "name")


def normalize_parent(parent: str) -> str:
    """Check the parent path (``vortex`` or ``a/b``) and strip surrounding slashes."""
    stripped = parent.strip("/")
    if not stripped:
        raise CgroupError(f"invalid cgroup parent {parent!r}: use a relative path such as 'vortex'")
    for component in stripped.split("/"):
        _check_component(component, "parent component")
    return stripped


_INFINITY = float("inf")


def _is_finite(value: float) -> bool:
    """math.isfinite without importing math (~0.7 ms of a cold start): False for
    the infinities and NaN (every comparison with NaN is false)."""
    return -_INFINITY < value < _INFINITY


def check_limits(limits: Limits) -> None:
    """Reject values the kernel would refuse with a bare EINVAL, before writing anything."""
    _check_extended_limits(limits)
    if limits.memory is not None and (isinstance(limits.memory, bool) or limits.memory <= 0):
        raise CgroupError(f"invalid memory limit {limits.memory!r}: use a positive number of bytes")
    if limits.pids is not None and (isinstance(limits.pids, bool) or limits.pids <= 0):
        raise CgroupError(f"invalid pids limit {limits.pids!r}: use a positive number of tasks")
    if limits.cpus is not None and (
        not _is_finite(limits.cpus) or cfs_quota_us(limits.cpus) < MIN_CFS_QUOTA_US
    ):
        raise CgroupError(
            f"invalid cpus limit {limits.cpus!r}: use at least "
            f"{MIN_CFS_QUOTA_US / CFS_PERIOD_US:g} CPUs"
        )


# --------------------------------------------------------------------------
# File operations on cgroupfs


def _read_text(path: str) -> str:
    # os.open/os.read, not open(): a cgroup file is a few bytes to a few KiB, and
    # open()'s buffered text layer costs a stat, an ioctl and a seek per file
    # (~4 us each time: ~20 reads per container on cgroup v1).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", errors="replace")


def read_file(path: str) -> str:
    """Read a cgroup file; CgroupError if it cannot be read."""
    try:
        return _read_text(path)
    except OSError as e:
        raise CgroupError(
            f"cannot read {path}: {e.strerror}; check that the cgroup exists"
        ) from None


def read_optional(path: str) -> str | None:
    """Read a cgroup file that may not exist (older kernel, controller not enabled)."""
    try:
        return _read_text(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise CgroupError(f"cannot read {path}: {e.strerror}") from None


def write_file(path: str, value: str, hint: str = "") -> None:
    """Write ``value`` to a cgroup file in a single write(2), as the kernel expects.

    ``hint`` is appended to the error message (what to do about it); without
    one, the message suggests the usual causes.
    """
    write_each(path, (value,), hint)


def write_each(path: str, values: Iterable[str], hint: str = "") -> None:
    """Write each of ``values`` to a cgroup file with a write(2) of its own, through
    one open file (v1's ``devices.allow`` takes one rule per write)."""
    values = list(values)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(
            f"cannot open {path} to write {values[0] if len(values) == 1 else values!r}: "
            f"{e.strerror}; "
            + (hint or "check that the cgroup exists and that Vortex runs as root")
        ) from None
    try:
        for value in values:
            try:
                os.write(fd, value.encode("ascii"))
            except OSError as e:
                raise CgroupError(
                    f"cannot write {value!r} to {path}: {e.strerror}; "
                    + (hint or "the kernel rejected the value")
                ) from None
    finally:
        os.close(fd)


def attach_pid(procs_file: str, pid: int) -> None:
    """Move ``pid`` into the cgroup whose ``cgroup.procs`` is ``procs_file``."""
    if pid <= 0:
        raise CgroupError(f"invalid pid {pid}: use the PID of a running process")
    try:
        fd = os.open(procs_file, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(
            f"cannot attach pid {pid}: {procs_file}: {e.strerror}; check that the cgroup exists"
        ) from None
    try:
        os.write(fd, str(pid).encode("ascii"))
    except ProcessLookupError:
        raise CgroupError(
            f"cannot attach pid {pid} to {procs_file}: no such process (it already exited)"
        ) from None
    except OSError as e:
        raise CgroupError(f"cannot attach pid {pid} to {procs_file}: {e.strerror}") from None
    finally:
        os.close(fd)


def own_cgroups(proc_file: str = "/proc/self/cgroup") -> dict[str, str]:
    """This process's cgroup in each hierarchy: controller name (``memory``,
    ``name=systemd``; ``""`` for the cgroup v2 line ``0::``) → path below its mount."""
    cgroups: dict[str, str] = {}
    for line in (read_optional(proc_file) or "").splitlines():
        _number, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            cgroups[controller] = path.strip() or "/"
    return cgroups


def read_procs(procs_file: str) -> list[int]:
    """The PIDs in ``procs_file``; ``[]`` when the cgroup does not exist (any more)."""
    text = read_optional(procs_file)
    return [] if text is None else parse_pids(text)


def subtree_pids(directory: str) -> set[int]:
    """PIDs in the cgroup ``directory`` and every cgroup below it; empty if it is gone."""
    pids: set[int] = set(read_procs(os.path.join(directory, "cgroup.procs")))
    # os.scandir's d_type tells directories (child cgroups) from the dozens of
    # control files without a stat each; os.walk would also build their lists.
    # Checked on every container exit, once per hierarchy on v1.
    try:
        with os.scandir(directory) as entries:
            children = [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:  # gone meanwhile (as os.walk, which ignores listing errors)
        return pids
    for child in children:
        pids |= subtree_pids(child)
    return pids


def sigkill_all(pids: Iterable[int]) -> None:
    """SIGKILL each pid; a process that is already gone is fine."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def make_dir(path: str) -> None:
    """``mkdir -p`` for the parent cgroups, with a CgroupError on failure."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CgroupError(
            f"cannot create cgroup directory {path}: {e.strerror}; "
            "check that the hierarchy is mounted read-write and that Vortex runs as root"
        ) from None


def rmdir_tree(path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Remove a cgroup directory and any child cgroups below it, deepest first.

    A missing directory is not an error (removal is idempotent).  rmdir fails
    with EBUSY for a short while after the last process was killed: the tasks
    leave the cgroup only at the end of their exit path, after the signal was
    delivered.  So EBUSY is retried with a growing sleep until ``timeout``.
    """
    try:
        children = [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise CgroupError(f"cannot list {path}: {e.strerror}") from None
    for child in children:
        rmdir_tree(child, timeout)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise CgroupError(
                    f"cannot remove cgroup {path}: {e.strerror}; "
                    "processes are still inside it: kill them and retry"
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def wait_until(condition_met: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition_met`` with a growing sleep; True once it holds, False on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if condition_met():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# --------------------------------------------------------------------------
# The full limit set: validation and the files each backend writes

CPU_SHARES_MIN, CPU_SHARES_MAX = 2, 262144
BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX = 10, 1000


def cpu_weight_from_shares(shares: int) -> int:
    """v2 ``cpu.weight`` (1..10000) for v1 ``cpu.shares`` (2..262144), as runc and crun map it."""
    return 1 + ((shares - 2) * 9999) // 262142


def io_weight_from_blkio(weight: int) -> int:
    """v2 ``io.weight`` (1..10000) for v1 ``blkio.weight`` (10..1000), as runc maps it."""
    return 1 + ((weight - 10) * 9999) // 990


def _positive(value: int | None, flag: str) -> None:
    if value is not None and (isinstance(value, bool) or value <= 0):
        raise CgroupError(f"invalid {flag} {value!r}: use a positive number of bytes")


def _check_extended_limits(limits: Limits) -> None:
    _positive(limits.memory_high, "--memory-high")
    _positive(limits.memory_reservation, "--memory-reservation")
    if limits.memory_swap is not None:
        if limits.memory is None:
            raise CgroupError("--memory-swap needs --memory: it is the total of memory and swap")
        if limits.memory_swap != -1 and limits.memory_swap < limits.memory:
            raise CgroupError(
                f"invalid --memory-swap {limits.memory_swap}: it is memory plus swap, so it "
                f"must be at least --memory ({limits.memory}), or -1 for unlimited swap"
            )
    if limits.cpu_shares is not None and not (
        CPU_SHARES_MIN <= limits.cpu_shares <= CPU_SHARES_MAX
    ):
        raise CgroupError(
            f"invalid --cpu-shares {limits.cpu_shares}: use {CPU_SHARES_MIN}..{CPU_SHARES_MAX}"
        )
    if limits.blkio_weight is not None and not (
        BLKIO_WEIGHT_MIN <= limits.blkio_weight <= BLKIO_WEIGHT_MAX
    ):
        raise CgroupError(
            f"invalid --blkio-weight {limits.blkio_weight}: use "
            f"{BLKIO_WEIGHT_MIN}..{BLKIO_WEIGHT_MAX}"
        )
    for key, value in limits.unified.items():
        if "/" in key or key.startswith(".") or "." not in key or "\0" in key or "\0" in str(value):
            raise CgroupError(
                f"invalid unified key {key!r}: use a cgroup v2 file name such as memory.min"
            )
    for size, limit in limits.hugetlb:
        if "/" in size or not size or limit <= 0:
            raise CgroupError(
                f"invalid --hugetlb {size}:{limit}: use PAGESIZE:LIMIT such as 2MB:64M"
            )


@record
class Write:
    """One value a backend writes for a requested limit.

    ``candidates`` are (file, value) pairs: the first file that exists is
    written (e.g. ``io.bfq.weight`` before ``io.weight``).  When none exists the
    limit cannot be applied, and that is an error naming ``flag``, unless
    ``optional`` (a default Vortex adds on its own, such as ``memory.oom.group``).
    """

    controller: str | None
    """The controller that provides the file; None for ``cgroup.*`` core files."""
    flag: str
    """The user's request as a flag and value, for error messages."""
    candidates: tuple[tuple[str, str], ...]
    optional: bool = False


def _one(controller: str | None, flag: str, filename: str, value: object) -> Write:
    return Write(controller, flag, ((filename, str(value)),))


def _device_groups(limits: Limits) -> dict[tuple[int, int], list[tuple[str, DeviceLimit]]]:
    groups: dict[tuple[int, int], list[tuple[str, DeviceLimit]]] = {}
    for key, devices in (
        ("rbps", limits.device_read_bps),
        ("wbps", limits.device_write_bps),
        ("riops", limits.device_read_iops),
        ("wiops", limits.device_write_iops),
    ):
        for device in devices:
            groups.setdefault((device.major, device.minor), []).append((key, device))
    return groups


_DEVICE_FLAGS = {
    "rbps": ("--device-read-bps", "read_bps_device"),
    "wbps": ("--device-write-bps", "write_bps_device"),
    "riops": ("--device-read-iops", "read_iops_device"),
    "wiops": ("--device-write-iops", "write_iops_device"),
}


def v2_writes(limits: Limits) -> list[Write]:
    """The cgroup v2 files and values for ``limits``, in the order they are written."""
    writes: list[Write] = []
    if limits.memory is not None:
        writes.append(_one("memory", f"--memory {limits.memory}", "memory.max", limits.memory))
        if limits.memory_swap is None:
            # docker's --memory without --memory-swap allows as much swap again.
            # Vortex allows none: a memory limit means "this much memory", and
            # swapping the excess out would only turn an OOM kill into a slow
            # thrash.  Absent without swap accounting: then there is nothing to bound.
            writes.append(Write("memory", "--memory", (("memory.swap.max", "0"),), optional=True))
        # On OOM, kill the whole container, not one arbitrary process of it.
        writes.append(Write("memory", "--memory", (("memory.oom.group", "1"),), optional=True))
    if limits.memory_swap is not None:
        assert limits.memory is not None  # check_limits
        swap = "max" if limits.memory_swap == -1 else str(limits.memory_swap - limits.memory)
        writes.append(
            _one("memory", f"--memory-swap {limits.memory_swap}", "memory.swap.max", swap)
        )
    if limits.memory_high is not None:
        writes.append(
            _one("memory", f"--memory-high {limits.memory_high}", "memory.high", limits.memory_high)
        )
    if limits.memory_reservation is not None:
        flag = f"--memory-reservation {limits.memory_reservation}"
        writes.append(_one("memory", flag, "memory.low", limits.memory_reservation))
    if limits.pids is not None:
        writes.append(_one("pids", f"--pids {limits.pids}", "pids.max", limits.pids))
    if limits.cpus is not None:
        writes.append(_one("cpu", f"--cpus {limits.cpus:g}", "cpu.max", cpu_max_value(limits.cpus)))
    if limits.cpu_shares is not None:
        weight = cpu_weight_from_shares(limits.cpu_shares)
        writes.append(_one("cpu", f"--cpu-shares {limits.cpu_shares}", "cpu.weight", weight))
    if limits.cpuset_cpus is not None:
        flag = f"--cpuset-cpus {limits.cpuset_cpus}"
        writes.append(_one("cpuset", flag, "cpuset.cpus", limits.cpuset_cpus))
    if limits.cpuset_mems is not None:
        flag = f"--cpuset-mems {limits.cpuset_mems}"
        writes.append(_one("cpuset", flag, "cpuset.mems", limits.cpuset_mems))
    if limits.blkio_weight is not None:
        w = limits.blkio_weight
        writes.append(
            Write(
                "io",
                f"--blkio-weight {w}",
                (
                    ("io.bfq.weight", f"default {w}"),
                    ("io.weight", f"default {io_weight_from_blkio(w)}"),
                ),
            )
        )
    for (major, minor), entries in _device_groups(limits).items():
        flag = ", ".join(f"{_DEVICE_FLAGS[key][0]} {major}:{minor}:{d.rate}" for key, d in entries)
        value = f"{major}:{minor} " + " ".join(f"{key}={d.rate}" for key, d in entries)
        writes.append(_one("io", flag, "io.max", value))
    for size, limit in limits.hugetlb:
        writes.append(_one("hugetlb", f"--hugetlb {size}:{limit}", f"hugetlb.{size}.max", limit))
    for key, value in limits.unified.items():
        controller = key.split(".", 1)[0]
        writes.append(
            _one(
                None if controller == "cgroup" else controller,
                f"--cgroup-conf {key}={value}",
                key,
                value,
            )
        )
    return writes


def v1_writes(limits: Limits) -> list[Write]:
    """The cgroup v1 files for ``limits``, except memory.limit_in_bytes and memsw.

    Those two depend on each other's current values (the kernel insists that
    memsw >= limit at all times), so the v1 backend writes them itself.
    Limits without a v1 equivalent raise MissingControllerError here.
    """
    from vortex.errors import MissingControllerError

    if limits.memory_high is not None:
        raise MissingControllerError(
            f"cannot apply --memory-high {limits.memory_high}: memory.high exists only with "
            "the cgroup v2 'memory' controller, and this host uses cgroup v1; use --memory"
        )
    if limits.unified:
        keys = ", ".join(sorted(limits.unified))
        raise MissingControllerError(
            f"cannot apply the unified (--cgroup-conf) settings {keys}: they need cgroup v2, "
            "and this host uses cgroup v1"
        )
    writes: list[Write] = []
    if limits.memory_reservation is not None:
        flag = f"--memory-reservation {limits.memory_reservation}"
        writes.append(_one("memory", flag, "memory.soft_limit_in_bytes", limits.memory_reservation))
    if limits.pids is not None:
        writes.append(_one("pids", f"--pids {limits.pids}", "pids.max", limits.pids))
    if limits.cpus is not None:
        flag = f"--cpus {limits.cpus:g}"
        # Period first: the quota is interpreted relative to it.
        writes.append(_one("cpu", flag, "cpu.cfs_period_us", CFS_PERIOD_US))
        writes.append(_one("cpu", flag, "cpu.cfs_quota_us", cfs_quota_us(limits.cpus)))
    if limits.cpu_shares is not None:
        flag = f"--cpu-shares {limits.cpu_shares}"
        writes.append(_one("cpu", flag, "cpu.shares", limits.cpu_shares))
    if limits.cpuset_cpus is not None:
        flag = f"--cpuset-cpus {limits.cpuset_cpus}"
        writes.append(_one("cpuset", flag, "cpuset.cpus", limits.cpuset_cpus))
    if limits.cpuset_mems is not None:
        flag = f"--cpuset-mems {limits.cpuset_mems}"
        writes.append(_one("cpuset", flag, "cpuset.mems", limits.cpuset_mems))
    if limits.blkio_weight is not None:
        w = str(limits.blkio_weight)
        writes.append(
            Write(
                "blkio",
                f"--blkio-weight {w}",
                (("blkio.bfq.weight", w), ("blkio.weight", w)),
            )
        )
    for key, devices in (
        ("rbps", limits.device_read_bps),
        ("wbps", limits.device_write_bps),
        ("riops", limits.device_read_iops),
        ("wiops", limits.device_write_iops),
    ):
        option, suffix = _DEVICE_FLAGS[key]
        for d in devices:
            flag = f"{option} {d.major}:{d.minor}:{d.rate}"
            value = f"{d.major}:{d.minor} {d.rate}"
            writes.append(_one("blkio", flag, f"blkio.throttle.{suffix}", value))
    for size, limit in limits.hugetlb:
        flag = f"--hugetlb {size}:{limit}"
        writes.append(_one("hugetlb", flag, f"hugetlb.{size}.limit_in_bytes", limit))
    return writes


def missing_file_message(write: Write, directory: str) -> str:
    """Why a non-optional Write had no file to go to."""
    names = " nor ".join(f for f, _ in write.candidates)
    return (
        f"cannot apply {write.flag}: {directory} has no {names}; the kernel does not "
        f"support this setting here (not compiled in, or not offered for this device or "
        f"page size); run without it"
    )
