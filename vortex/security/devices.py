"""The device allow-list: which device nodes a container may open.

On cgroup v1 the ``devices`` controller enforces it: a container's directory
in that hierarchy gets ``a`` written to ``devices.deny`` and then the allow
rules below, the list runc and docker use (minus ``/dev/net/tun``).  A node
the container creates with ``mknod`` (CAP_MKNOD is a default capability)
then cannot be opened: ``open()`` fails with EPERM.

On cgroup v2 there is no devices file: the kernel runs an eBPF program of
type ``BPF_PROG_TYPE_CGROUP_DEVICE`` on every mknod and open of a device node
instead.  :mod:`vortex.security.bpf_devices` compiles the same list into such
a program (through :func:`parse_rule`, the structured form both back ends
share) and attaches it to the container's cgroup.  The init also mounts the
root filesystem, /dev and the volumes ``nodev`` on every host, as defence in
depth (and as the only barrier rootless, where no program can be attached).

When the cgroup backend puts containers in the devices hierarchy itself
(``container.cgroup.path("devices")``), the ``security`` plugin only writes
the rules there.  Otherwise the plugin owns a directory of its own: created
and joined in ``vortex_post_cgroup`` (the init is still waiting on its sync
pipe), removed in ``vortex_on_exit``, and swept by :func:`sweep_stale` if a
Runtime died before it could remove it.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Mapping

from vortex.cgroups._common import attach_pid, find_v1_hierarchies, write_each, write_file
from vortex.errors import CgroupError, SpecError
from vortex.records import record

ALLOWED_DEVICES: tuple[str, ...] = (
    "c *:* m",  # mknod of character devices (opening them is another matter)
    "b *:* m",  # mknod of block devices
    "c 1:3 rwm",  # /dev/null
    "c 1:5 rwm",  # /dev/zero
    "c 1:7 rwm",  # /dev/full
    "c 1:8 rwm",  # /dev/random
    "c 1:9 rwm",  # /dev/urandom
    "c 5:0 rwm",  # /dev/tty
    "c 5:1 rwm",  # /dev/console
    "c 5:2 rwm",  # /dev/ptmx
    "c 136:* rwm",  # /dev/pts/*
)


MAX_MAJOR = (1 << 12) - 1
MAX_MINOR = (1 << 20) - 1
"""The largest numbers a dev_t holds (MAJOR/MINOR of include/linux/kdev_t.h)."""


@record
class DeviceRule:
    """One allow rule of a devices list, e.g. ``c 136:* rwm``.

    ``kind`` is ``c`` (character), ``b`` (block) or ``a`` (every device, every
    number, every access: what the v1 kernel does with any rule starting with
    ``a``); ``None`` numbers are ``*``; ``access`` is a subset of ``rwm``.
    """

    kind: str
    major: int | None
    minor: int | None
    access: str

    def __str__(self) -> str:
        if self.kind == "a":
            return "a"

        def number(n: int | None) -> str:
            return "*" if n is None else str(n)

        return f"{self.kind} {number(self.major)}:{number(self.minor)} {self.access}"


def parse_rule(text: str) -> DeviceRule:
    """``TYPE MAJOR:MINOR ACCESS`` as written to v1 ``devices.allow`` (``a`` alone too).

    Raises SpecError for anything the v1 kernel would not read the same way,
    so a list means one thing on both cgroup versions.
    """
    fields = text.split()
    if fields in (["a"], ["a", "*:*", "rwm"]):
        return DeviceRule("a", None, None, "rwm")
    if len(fields) != 3 or fields[0] not in ("c", "b"):
        raise SpecError(
            f"device rule {text!r}: expected 'c|b MAJOR:MINOR ACCESS' (e.g. 'c 1:3 rwm') or 'a'"
        )
    kind, numbers, access = fields
    major_text, sep, minor_text = numbers.partition(":")
    if not sep:
        raise SpecError(f"device rule {text!r}: expected MAJOR:MINOR, got {numbers!r}")
    major = _rule_number(text, major_text, MAX_MAJOR)
    minor = _rule_number(text, minor_text, MAX_MINOR)
    if not access or set(access) - set("rwm") or len(set(access)) != len(access):
        raise SpecError(f"device rule {text!r}: access must be letters of 'rwm', got {access!r}")
    return DeviceRule(kind, major, minor, "".join(c for c in "rwm" if c in access))


def _rule_number(rule: str, text: str, limit: int) -> int | None:
    if text == "*":
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > limit:
        raise SpecError(f"device rule {rule!r}: {text!r} is not '*' or a number up to {limit}")
    return int(text)


def devices_hierarchy() -> str | None:
    """Mount point of the v1 devices hierarchy, or None (v2-only host)."""
    return find_v1_hierarchies().get("devices")


def v1_devices_dir(
    cgroup_paths: dict[str, str], hierarchies: Mapping[str, str] | None = None
) -> str | None:
    """The container's directory in the devices hierarchy, placed like its other v1 dirs.

    :param cgroup_paths: controller → directory of the container's v1 cgroup.
    :param hierarchies: controller → mount point, as the cgroup backend found them
        (saves reading /proc/self/mountinfo on every start); default: read it.
    """
    if hierarchies is None or "devices" not in hierarchies:
        hierarchies = find_v1_hierarchies()
    devices = hierarchies.get("devices")
    if devices is None:
        return None
    for controller, directory in cgroup_paths.items():
        mount = hierarchies.get(controller)
        if mount and os.path.commonpath([mount, directory]) == mount:
            return os.path.join(devices, os.path.relpath(directory, mount))
    return None


def restrict(directory: str, rules: tuple[str, ...] = ALLOWED_DEVICES) -> None:
    """Deny every device in an existing v1 devices cgroup, then allow ``rules``."""
    write_file(os.path.join(directory, "devices.deny"), "a")
    write_each(os.path.join(directory, "devices.allow"), rules)


def sweep_stale(
    cgroup_paths: dict[str, str], hierarchies: Mapping[str, str] | None = None
) -> list[str]:
    """Remove devices dirs left by a Runtime that died (kill -9) before its clean-up.

    A container's devices dir is created after its main cgroup and removed
    before it, so a devices dir whose name exists in none of the sibling
    hierarchies is stale.  Returns the directories removed.
    """
    mine = v1_devices_dir(cgroup_paths, hierarchies)
    if mine is None:
        return []
    parent = os.path.dirname(mine)
    siblings = [os.path.dirname(p) for p in cgroup_paths.values()]
    removed = []
    try:
        entries = [e.name for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    for name in entries:
        if any(os.path.isdir(os.path.join(s, name)) for s in siblings):
            continue
        try:
            os.rmdir(os.path.join(parent, name))
        except OSError:
            continue  # still has tasks, or not ours to judge: leave it
        removed.append(os.path.join(parent, name))
    return removed


def create_restricted(directory: str, rules: tuple[str, ...] = ALLOWED_DEVICES) -> None:
    """Make ``directory`` (parents too) and allow only ``rules`` in it."""
    os.makedirs(directory, exist_ok=False)
    try:
        restrict(directory, rules)
    except BaseException:
        remove(directory)
        raise


def attach(directory: str, pid: int) -> None:
    attach_pid(os.path.join(directory, "cgroup.procs"), pid)


def remove(directory: str, timeout: float = 2.0) -> None:
    """rmdir, retrying while the last tasks of the container are being reaped."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"remove {directory}: {exc.strerror}") from None
            time.sleep(0.01)
