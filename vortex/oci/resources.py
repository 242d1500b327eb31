"""``linux.resources`` of config.json → :class:`vortex.spec.Resources` and the device rule.

A limit the config leaves out is no limit: the runtime-spec contract, so
Vortex's default 100M memory limit does not apply to a bundle.  A field with
no Vortex equivalent (swappiness, realtime CPU, network classes, rdma, ...)
is an error when set, never dropped.
"""

from __future__ import annotations

import re
from typing import Any

from vortex.cgroups.base import DeviceLimit
from vortex.cgroups.options import CPU_LIST_PATTERN, PAGE_SIZE_PATTERN, UNIFIED_KEY_PATTERN
from vortex.oci._fields import INT64_MAX, INT64_MIN, UINT64_MAX, Field

MIN_MEMORY = 4096 * 64
"""The smallest memory limit ContainerSpec.validate accepts (256K)."""
CFS_PERIOD = 100_000
"""The only CFS period Vortex writes (vortex/cgroups/_common.py)."""
MIN_QUOTA = 1000


def convert(field: Field | None) -> tuple[dict[str, Any], bool]:
    """Keyword arguments of Resources, and whether devices are restricted."""
    resources: dict[str, Any] = {"memory": None}
    if field is None:
        return resources, False  # no rule at all: every device, as with runc
    members = field.members(
        (
            "devices",
            "memory",
            "cpu",
            "pids",
            "blockIO",
            "hugepageLimits",
            "network",
            "rdma",
            "unified",
        )
    )
    for name in ("network", "rdma"):
        if name in members:
            raise members[name].unsupported(f"Vortex sets no {name} cgroup limits")
    if "memory" in members:
        _memory(members["memory"], resources)
    if "cpu" in members:
        _cpu(members["cpu"], resources)
    if "pids" in members:
        limit = members["pids"].require(members["pids"].members(("limit",)), "limit")
        value = limit.integer(INT64_MIN, INT64_MAX)
        resources["pids"] = value if value > 0 else None
    if "blockIO" in members:
        _block_io(members["blockIO"], resources)
    if "hugepageLimits" in members:
        pages = []
        for item in members["hugepageLimits"].items():
            fields = item.members(("pageSize", "limit"))
            size = item.require(fields, "pageSize").string()
            if not re.match(PAGE_SIZE_PATTERN, size):
                raise fields["pageSize"].error(f"{size!r} is not a page size such as 2MB or 1GB")
            pages.append((size, item.require(fields, "limit").integer(0, INT64_MAX)))
        resources["hugetlb"] = tuple(pages)
    if "unified" in members:
        table = members["unified"]
        if not isinstance(table.value, dict):
            raise table.error("must be an object of cgroup v2 file names and values")
        unified = {}
        for name, value in table.value.items():
            item = Field(value, table.member_path(name))
            if not re.match(UNIFIED_KEY_PATTERN, name):
                raise item.error("is not a cgroup v2 file name such as memory.min")
            unified[name] = item.string()
        resources["unified"] = unified
    restrict = devices_restricted(members["devices"]) if "devices" in members else False
    return resources, restrict


def _memory(field: Field, resources: dict[str, Any]) -> None:
    members = field.members(
        (
            "limit",
            "reservation",
            "swap",
            "kernel",
            "kernelTCP",
            "swappiness",
            "disableOOMKiller",
            "useHierarchy",
            "checkBeforeUpdate",
        )
    )
    for name in ("kernel", "kernelTCP"):
        if name in members:
            raise members[name].unsupported("kernel memory limits are deprecated; use limit")
    if "swappiness" in members:
        raise members["swappiness"].unsupported("Vortex does not set memory.swappiness")
    if "disableOOMKiller" in members and members["disableOOMKiller"].boolean():
        raise members["disableOOMKiller"].unsupported("the OOM killer stays on")
    for name in ("useHierarchy", "checkBeforeUpdate"):
        if name in members:
            members[name].boolean()  # hierarchy is always on; updates do not exist yet
    limit = members["limit"].integer(-1, INT64_MAX) if "limit" in members else 0
    if limit > 0:
        if limit < MIN_MEMORY:
            raise members["limit"].error(f"{limit} bytes is too small: use at least {MIN_MEMORY}")
        resources["memory"] = limit
        # Swap left out is not limited (runc): say so, as Vortex's None means "no swap".
        resources["memory_swap"] = -1
    if "swap" in members:
        swap = members["swap"].integer(-1, INT64_MAX)
        if swap > 0:
            if limit <= 0:
                raise members["swap"].error("needs memory.limit (swap is memory plus swap)")
            if swap < limit:
                raise members["swap"].error(
                    f"{swap} is less than memory.limit {limit}: it counts memory plus swap"
                )
            resources["memory_swap"] = swap
    if "reservation" in members:
        reservation = members["reservation"].integer(-1, INT64_MAX)
        if reservation > 0:
            resources["memory_reservation"] = reservation


def _cpu(field: Field, resources: dict[str, Any]) -> None:
    members = field.members(
        (
            "shares",
            "quota",
            "burst",
            "period",
            "realtimeRuntime",
            "realtimePeriod",
            "cpus",
            "mems",
            "idle",
        )
    )
    for name in ("burst", "realtimeRuntime", "realtimePeriod", "idle"):
        if name in members:
            raise members[name].unsupported(f"Vortex does not set the CPU {name}")
    if "shares" in members:
        shares = members["shares"].integer(0, UINT64_MAX)
        if shares:
            if not 2 <= shares <= 262144:
                raise members["shares"].error(f"{shares} is out of range 2..262144")
            resources["cpu_shares"] = shares
    period = CFS_PERIOD
    if "period" in members:
        period = members["period"].integer(0, UINT64_MAX) or CFS_PERIOD
        if period != CFS_PERIOD:
            raise members["period"].unsupported(
                f"Vortex's CFS period is {CFS_PERIOD} µs; scale quota to it"
            )
    if "quota" in members:
        quota = members["quota"].integer(-1, INT64_MAX)
        if quota > 0:
            if quota < MIN_QUOTA:
                raise members["quota"].error(f"{quota} µs is below the kernel's {MIN_QUOTA} µs")
            resources["cpus"] = quota / period
    for name, key in (("cpus", "cpuset_cpus"), ("mems", "cpuset_mems")):
        if name in members:
            text = members[name].string()
            if text:
                if not re.match(CPU_LIST_PATTERN, text):
                    raise members[name].error(f"{text!r} is not a list such as 0-2,4")
                resources[key] = text


def _block_io(field: Field, resources: dict[str, Any]) -> None:
    throttles = {
        "throttleReadBpsDevice": "device_read_bps",
        "throttleWriteBpsDevice": "device_write_bps",
        "throttleReadIOPSDevice": "device_read_iops",
        "throttleWriteIOPSDevice": "device_write_iops",
    }
    members = field.members(("weight", "leafWeight", "weightDevice", *throttles))
    for name in ("leafWeight", "weightDevice"):
        if name in members:
            raise members[name].unsupported("Vortex sets one blkio weight for all devices")
    if "weight" in members:
        weight = members["weight"].integer(0, 1000)
        if weight:
            if weight < 10:
                raise members["weight"].error(f"{weight} is out of range 10..1000")
            resources["blkio_weight"] = weight
    for name, key in throttles.items():
        if name not in members:
            continue
        limits = []
        for item in members[name].items():
            fields = item.members(("major", "minor", "rate"))
            rate = item.require(fields, "rate").integer(0, UINT64_MAX)
            if rate == 0:
                raise fields["rate"].error("must be positive")
            limits.append(
                DeviceLimit(
                    item.require(fields, "major").integer(0, INT64_MAX),
                    item.require(fields, "minor").integer(0, INT64_MAX),
                    rate,
                )
            )
        resources[key] = tuple(limits)


def _allowed_rules() -> list[tuple[str, int | None, int | None, str]]:
    """Vortex's fixed allow-list (vortex/security/devices.py) as (type, major, minor, access)."""
    from vortex.security.devices import ALLOWED_DEVICES

    rules = []
    for line in ALLOWED_DEVICES:
        kind, numbers, access = line.split()
        major, minor = numbers.split(":")
        rules.append(
            (
                kind,
                None if major == "*" else int(major),
                None if minor == "*" else int(minor),
                access,
            )
        )
    return rules


def devices_restricted(field: Field) -> bool:
    """``linux.resources.devices`` → True when only the standard devices may be opened.

    Vortex cannot write an arbitrary device rule list yet: it either allows every
    device, or its fixed list (runc's defaults: null, zero, full, random,
    urandom, tty, console, ptmx, pts, and mknod).  The config's rules, in order,
    must come out as one of those two; anything else is an error.  As with runc,
    the standard devices stay allowed after a deny-all.
    """
    restricted = False
    allowed = _allowed_rules()
    for rule in field.items():
        fields = rule.members(("allow", "type", "major", "minor", "access"))
        allow = rule.require(fields, "allow").boolean()
        kind = fields["type"].string() if "type" in fields else "a"
        if kind not in ("a", "c", "b"):
            raise fields["type"].error(f"{kind!r} is not a device type: use a, c or b")
        major = fields["major"].integer(-1, INT64_MAX) if "major" in fields else -1
        minor = fields["minor"].integer(-1, INT64_MAX) if "minor" in fields else -1
        access = fields["access"].string() if "access" in fields else "rwm"
        if not access or set(access) - set("rwm"):
            raise fields["access"].error(f"{access!r} must be made of r, w and m")
        everything = kind == "a" and major < 0 and minor < 0
        if everything and set(access) == set("rwm"):
            restricted = not allow
            continue
        text = f"{kind} {'*' if major < 0 else major}:{'*' if minor < 0 else minor} {access}"
        if not allow:
            if not restricted:
                raise rule.unsupported(
                    f"denying only {text}: Vortex allows every device or its fixed list "
                    "(start with a deny-all rule)"
                )
            continue  # already denied, or one of the standard devices runc allows anyway
        covered = any(
            k == kind
            and (ma is None or ma == major)
            and (mi is None or mi == minor)
            and set(access) <= set(a)
            for k, ma, mi, a in allowed
        )
        if restricted and not covered:
            raise rule.unsupported(
                f"allowing {text}: Vortex's device list is fixed (null, zero, full, random, "
                "urandom, tty, console, ptmx, pts; see docs/oci.md)"
            )
    return restricted
