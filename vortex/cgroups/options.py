"""The cgroup flags of ``vortex run`` beyond --memory/--pids/--cpus, and their parsing.

``add_arguments`` registers them on the ``run`` parser and
``resources_from_args`` turns them into keyword arguments of
:class:`vortex.spec.Resources`.  The parse functions are also the library's
helpers (``device_limit("/dev/sda", 1 << 20)``).  docs/cgroups.md lists every
flag with its v2 and v1 files.  Stdlib only: this is on the CLI's cold path.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from collections.abc import Sequence

from vortex.cgroups.base import DeviceLimit
from vortex.errors import SpecError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

# As text, compiled by re.match on first use (see vortex/spec.py); the OCI loader
# checks the same fields with the same patterns.
CPU_LIST_PATTERN = r"^\d+(-\d+)?(,\d+(-\d+)?)*$"
PAGE_SIZE_PATTERN = r"^\d+[KMG]B$"
UNIFIED_KEY_PATTERN = r"^[a-z0-9_]+\.[a-z0-9_.]+$"

DEVICE_FLAGS = ("device_read_bps", "device_write_bps", "device_read_iops", "device_write_iops")


def _size(text: str, option: str) -> int:
    from vortex.spec import parse_size

    return parse_size(text, option=option)


def device_limit(path: str, rate: int, *, option: str = "device limit") -> DeviceLimit:
    """A DeviceLimit on the block device at ``path`` (its major:minor); SpecError if none."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SpecError(f"{option} {path}: {e.strerror}: use an existing block device") from None
    if not stat.S_ISBLK(st.st_mode):
        raise SpecError(f"{option} {path} is not a block device: use e.g. /dev/sda")
    if rate <= 0:
        raise SpecError(f"{option} {path}: the rate must be positive")
    return DeviceLimit(os.major(st.st_rdev), os.minor(st.st_rdev), rate)


def parse_device_rate(text: str, *, option: str, iops: bool) -> DeviceLimit:
    """``PATH:RATE`` (docker): RATE is a size per second (``10M``) or, for iops, a count."""
    path, sep, rate_text = text.rpartition(":")
    if not sep or not path:
        raise SpecError(
            f"{option} {text!r} must be DEVICE:RATE, for example /dev/sda:"
            + ("1000" if iops else "10M")
        )
    if iops:
        if not rate_text.isdigit() or int(rate_text) <= 0:
            raise SpecError(f"{option} {text!r}: the rate must be a positive whole number")
        rate = int(rate_text)
    else:
        rate = _size(rate_text, option)
    return device_limit(path, rate, option=option)


def parse_hugetlb(text: str) -> tuple[str, int]:
    """``PAGESIZE:LIMIT`` such as ``2MB:64M`` (the page size as in hugetlb.2MB.max)."""
    size, sep, limit = text.partition(":")
    if not sep or not re.match(PAGE_SIZE_PATTERN, size):
        raise SpecError(f"--hugetlb {text!r} must be PAGESIZE:LIMIT, for example 2MB:64M or 1GB:2G")
    return size, _size(limit, "--hugetlb")


def parse_cgroup_conf(items: Sequence[str]) -> dict[str, str]:
    """``--cgroup-conf KEY=VALUE`` (or podman's ``KEY:VALUE``): raw cgroup v2 files."""
    unified: dict[str, str] = {}
    for item in items:
        cut = min((i for i in (item.find("="), item.find(":")) if i >= 0), default=-1)
        key, value = (item[:cut], item[cut + 1 :]) if cut >= 0 else (item, "")
        if cut < 0 or not re.match(UNIFIED_KEY_PATTERN, key):
            raise SpecError(
                f"--cgroup-conf {item!r} must be FILE=VALUE with a cgroup v2 file name, "
                "for example memory.min=64M"
            )
        unified[key] = value
    return unified


def parse_memory_swap(text: str) -> int:
    """``--memory-swap``: memory plus swap, or -1/unlimited for unlimited swap."""
    if text.strip().lower() in ("-1", "unlimited", "max"):
        return -1
    return _size(text, "--memory-swap")


def _int_in(text: str, option: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SpecError(f"{option} {text!r} is not a whole number: use {low}..{high}") from None
    if not low <= value <= high:
        raise SpecError(f"{option} {text!r} is out of range: use {low}..{high}")
    return value


def _cpu_list(text: str, option: str) -> str:
    if not re.match(CPU_LIST_PATTERN, text):
        raise SpecError(f"{option} {text!r} is not a list: use for example 0-2,4")
    return text


def add_arguments(run: argparse.ArgumentParser) -> None:
    """Register the cgroup flags on the ``vortex run`` parser."""
    group = run.add_argument_group("cgroup limits (docs/cgroups.md)")
    group.add_argument("--memory-high", metavar="SIZE", help="throttle above this (v2)")
    group.add_argument(
        "--memory-swap", metavar="SIZE", help="memory plus swap (docker), -1 for unlimited swap"
    )
    group.add_argument("--memory-reservation", metavar="SIZE", help="soft memory guarantee")
    group.add_argument("--cpu-shares", metavar="N", help="relative CPU weight, 2..262144")
    group.add_argument("--cpuset-cpus", metavar="LIST", help="CPUs allowed, e.g. 0-1")
    group.add_argument("--cpuset-mems", metavar="LIST", help="memory nodes allowed")
    group.add_argument("--blkio-weight", metavar="N", help="relative I/O weight, 10..1000")
    for flag in DEVICE_FLAGS:
        iops = flag.endswith("iops")
        group.add_argument(
            "--" + flag.replace("_", "-"),
            action="append",
            default=[],
            metavar="DEV:RATE",
            help=f"limit {'I/O operations' if iops else 'bytes'} per second on a device",
        )
    group.add_argument(
        "--hugetlb", action="append", default=[], metavar="SIZE:LIMIT", help="e.g. 2MB:64M"
    )
    group.add_argument(
        "--cgroup-conf",
        action="append",
        default=[],
        metavar="FILE=VALUE",
        help="write a cgroup v2 file, e.g. memory.min=64M",
    )
    group.add_argument(
        "--cgroup-parent", metavar="PATH", help="create the container cgroup below PATH"
    )


def resources_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :class:`vortex.spec.Resources` from the flags that were given."""
    out: dict[str, Any] = {}
    if args.memory_high is not None:
        out["memory_high"] = _size(args.memory_high, "--memory-high")
    if args.memory_swap is not None:
        out["memory_swap"] = parse_memory_swap(args.memory_swap)
    if args.memory_reservation is not None:
        out["memory_reservation"] = _size(args.memory_reservation, "--memory-reservation")
    if args.cpu_shares is not None:
        out["cpu_shares"] = _int_in(args.cpu_shares, "--cpu-shares", 2, 262144)
    if args.cpuset_cpus is not None:
        out["cpuset_cpus"] = _cpu_list(args.cpuset_cpus, "--cpuset-cpus")
    if args.cpuset_mems is not None:
        out["cpuset_mems"] = _cpu_list(args.cpuset_mems, "--cpuset-mems")
    if args.blkio_weight is not None:
        out["blkio_weight"] = _int_in(args.blkio_weight, "--blkio-weight", 10, 1000)
    for flag in DEVICE_FLAGS:
        values = getattr(args, flag)
        if values:
            option = "--" + flag.replace("_", "-")
            out[flag] = tuple(
                parse_device_rate(v, option=option, iops=flag.endswith("iops")) for v in values
            )
    if args.hugetlb:
        out["hugetlb"] = tuple(parse_hugetlb(v) for v in args.hugetlb)
    if args.cgroup_conf:
        out["unified"] = parse_cgroup_conf(args.cgroup_conf)
    return out
