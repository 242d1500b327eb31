"""Linux capabilities: names, the default set, and the calls the init makes.

The names are the kernel's (``include/uapi/linux/capability.h``) without the
``CAP_`` prefix.  Users may write either form, in any case.  The functions at
the bottom are the mechanism the container init uses; they only call the
kernel (through libc's ``capget``/``capset`` and ``prctl``), never import
plugin code, and are safe in the single-threaded cloned child.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from vortex.errors import SpecError

CAPABILITIES: dict[str, int] = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "IPC_LOCK": 14,
    "IPC_OWNER": 15,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_CHROOT": 18,
    "SYS_PTRACE": 19,
    "SYS_PACCT": 20,
    "SYS_ADMIN": 21,
    "SYS_BOOT": 22,
    "SYS_NICE": 23,
    "SYS_RESOURCE": 24,
    "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26,
    "MKNOD": 27,
    "LEASE": 28,
    "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30,
    "SETFCAP": 31,
    "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33,
    "SYSLOG": 34,
    "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37,
    "PERFMON": 38,
    "BPF": 39,
    "CHECKPOINT_RESTORE": 40,
}

DEFAULT_CAPABILITIES: frozenset[str] = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    }
)
"""The 14 capabilities docker and podman give a container by default."""

ALL = "ALL"


def normalize(name: str, *, option: str = "--cap-add") -> str:
    """``cap_sys_admin``, ``SYS_ADMIN`` → ``SYS_ADMIN``; ``all`` → ``ALL``."""
    upper = name.strip().upper()
    if upper.startswith("CAP_"):
        upper = upper[4:]
    if upper == ALL or upper in CAPABILITIES:
        return upper
    raise SpecError(
        f"{option} {name!r} is not a capability: use a name such as NET_ADMIN or SYS_PTRACE "
        "(see capabilities(7)), or ALL"
    )


def known_capabilities() -> frozenset[str]:
    """Every capability this kernel knows (up to /proc/sys/kernel/cap_last_cap)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = max(CAPABILITIES.values())
    return frozenset(name for name, number in CAPABILITIES.items() if number <= last)


def resolve(
    base: Iterable[str], add: Iterable[str] = (), drop: Iterable[str] = ()
) -> frozenset[str]:
    """docker's rule: start from ``base``, add ``add``, then remove ``drop`` (ALL allowed)."""
    result = set(base)
    added = {normalize(c) for c in add}
    dropped = {normalize(c, option="--cap-drop") for c in drop}
    if ALL in added:
        result |= known_capabilities()
    result |= added - {ALL}
    if ALL in dropped:
        # docker: --cap-drop ALL --cap-add X keeps exactly X
        result = added - {ALL} if ALL not in added else set()
    result -= dropped - {ALL}
    return frozenset(result)


def to_mask(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[name]
    return mask


def from_mask(mask: int) -> frozenset[str]:
    return frozenset(name for name, number in CAPABILITIES.items() if mask >> number & 1)


# --------------------------------------------------------------------- mechanism

_libc = ctypes.PyDLL(None, use_errno=True)
_NUMBERS = sorted(CAPABILITIES.values())
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc.capget.argtypes = [ctypes.POINTER(_Header), ctypes.POINTER(_Data)]
_libc.capset.argtypes = [ctypes.POINTER(_Header), ctypes.POINTER(_Data)]
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    ret: int = _libc.prctl(option, arg2, arg3, 0, 0)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def get_sets() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) masks of the calling thread."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc.capget(ctypes.byref(header), data) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capget: {os.strerror(err)}")
    sets = []
    for attr in ("effective", "permitted", "inheritable"):
        sets.append(getattr(data[0], attr) | getattr(data[1], attr) << 32)
    return sets[0], sets[1], sets[2]


def set_sets(effective: int, permitted: int, inheritable: int) -> None:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for index in (0, 1):
        shift = 32 * index
        data[index].effective = effective >> shift & 0xFFFFFFFF
        data[index].permitted = permitted >> shift & 0xFFFFFFFF
        data[index].inheritable = inheritable >> shift & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(header), data) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def drop_bounding(keep: frozenset[str]) -> None:
    """Remove every capability not in ``keep`` from the bounding set (needs SETPCAP)."""
    keep_mask = to_mask(keep)
    for number in _NUMBERS:
        if keep_mask >> number & 1:
            continue
        # Dropping one already gone succeeds: no PR_CAPBSET_READ first (one call
        # instead of two for each of the ~27 dropped, in every init).
        try:
            _prctl(PR_CAPBSET_DROP, number)
        except OSError as exc:
            if exc.errno == 22:  # EINVAL: the kernel does not know this capability
                continue
            if exc.errno == 1 and _prctl(PR_CAPBSET_READ, number) == 0:
                continue  # EPERM without SETPCAP, but it is not in the set anyway
            raise


def set_keep_caps(keep: bool) -> None:
    _prctl(PR_SET_KEEPCAPS, int(keep))


def set_ambient(names: frozenset[str]) -> None:
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as exc:
        if exc.errno == 22 and not names:  # kernel without ambient capabilities (< 4.3)
            return
        raise
    for name in sorted(names):
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAPABILITIES[name])
