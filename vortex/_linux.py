"""Thin typed wrappers over the Linux system calls the stdlib lacks.

Everything here is loaded through ``ctypes.PyDLL``: it keeps the GIL held
across the foreign call.  That matters for ``clone3``: with ``CDLL`` another
thread could take the GIL during the syscall and the child would inherit a GIL
owned by a thread that does not exist in it (see research PYTHON-TECH.md §3).
The fork helper is single-threaded, but the rule costs nothing and keeps the
wrappers safe to call from anywhere.
"""

from __future__ import annotations

import ctypes
import os
import signal

_libc = ctypes.PyDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]

# clone flags (include/uapi/linux/sched.h)
CLONE_NEWTIME = 0x00000080
CLONE_PIDFD = 0x00001000
CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000

# mount flags (include/uapi/linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

SYS_CLONE3 = 435  # the same number on every architecture (the unified table)
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


class _CloneArgs(ctypes.Structure):
    # struct clone_args, CLONE_ARGS_SIZE_VER2 (88 bytes, Linux 5.7+ for .cgroup)
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def clone3(flags: int, *, cgroup_fd: int | None = None, parent: bool = False) -> tuple[int, int]:
    """Fork-like clone3 with CLONE_PIDFD.  Returns (pid, pidfd); (0, -1) in the child.

    With ``parent=True`` the child becomes a child of the caller's parent
    (CLONE_PARENT); clone3 then demands ``exit_signal == 0`` (EINVAL otherwise)
    and the child inherits the caller's own exit signal, SIGCHLD.
    """
    pidfd = ctypes.c_int(-1)
    args = _CloneArgs()
    args.flags = flags | CLONE_PIDFD | (CLONE_PARENT if parent else 0)
    args.pidfd = ctypes.addressof(pidfd)
    args.exit_signal = 0 if parent else signal.SIGCHLD
    if cgroup_fd is not None:
        args.flags |= CLONE_INTO_CGROUP
        args.cgroup = cgroup_fd
    ret = _libc.syscall(
        ctypes.c_long(SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args))
    )
    _check(ret, "clone3")
    return ret, (pidfd.value if ret else -1)


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    ret = _libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        flags,
        data.encode() if data is not None else None,
    )
    _check(ret, f"mount {fstype or source or ''} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    # os.uname(), not the platform module: the same answer without ~1.5 ms of imports.
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(0, f"pivot_root: unsupported architecture {os.uname().machine}")
    ret = _libc.syscall(ctypes.c_long(number), new_root.encode(), put_old.encode())
    _check(ret, "pivot_root")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(option, arg2, 0, 0, 0), f"prctl({option})")


def set_parent_death_signal(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_process_name(name: str) -> None:
    """The name ``ps`` shows for this process (15 bytes at most)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0), "prctl(PR_SET_NAME)")


_libc.unshare.argtypes = [ctypes.c_int]


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


# sethostname and socket here rather than through ``_socket``: loading that
# extension module costs a cold start ~0.6 ms for these two calls.
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.socket.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]

AF_INET = 2
SOCK_DGRAM = 2


def sethostname(name: str) -> None:
    encoded = os.fsencode(name)  # as socket.sethostname encodes it
    _check(_libc.sethostname(encoded, len(encoded)), "sethostname")


def socket(family: int, kind: int, protocol: int = 0) -> int:
    """A new socket's file descriptor, close-on-exec (as Python's sockets are)."""
    return _check(_libc.socket(family, kind | os.O_CLOEXEC, protocol), "socket")


def is_single_threaded() -> bool:
    """Whether this process has exactly one thread, by the kernel's count: also
    threads that ``threading`` does not know (started with ``_thread`` or in C).
    Forking is only safe then (a lock held by another thread stays held forever)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"Threads:"):
                return int(line.split()[1]) == 1
    return False


_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MADV_POPULATE_WRITE = 23  # Linux 5.14


def populate_write(address: int, length: int) -> None:
    """Fault in ``length`` bytes at ``address`` as if written: private copies of
    copy-on-write pages, now instead of at their first write."""
    _check(_libc.madvise(address, length, MADV_POPULATE_WRITE), "madvise(MADV_POPULATE_WRITE)")


# The new mount API (Linux 5.2): a filesystem is created and mounted *detached*,
# held by a file descriptor, and attached to a path later.  The numbers are the
# same on every architecture (the unified table), as clone3's.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
OPEN_TREE_CLONE = 0x1
AT_FDCWD = -100

# fsmount's attribute flags, by the mount(2) flag each stands for.
_MOUNT_ATTRIBUTES = {
    MS_RDONLY: 0x1,  # MOUNT_ATTR_RDONLY
    MS_NOSUID: 0x2,  # MOUNT_ATTR_NOSUID
    MS_NODEV: 0x4,  # MOUNT_ATTR_NODEV
    MS_NOEXEC: 0x8,  # MOUNT_ATTR_NOEXEC
    MS_STRICTATIME: 0x20,  # MOUNT_ATTR_STRICTATIME
}


def _fsconfig(fs_fd: int, command: int, key: str | None, value: str | None) -> None:
    ret = _libc.syscall(
        ctypes.c_long(SYS_FSCONFIG),
        ctypes.c_int(fs_fd),
        ctypes.c_uint(command),
        key.encode() if key is not None else None,
        value.encode() if value is not None else None,
        ctypes.c_int(0),
    )
    _check(ret, f"fsconfig {key or 'create'}")


def mount_detached(fstype: str, flags: int, options: dict[str, str | None]) -> int:
    """A new ``fstype`` filesystem, mounted nowhere yet: the mount's fd (close-on-exec).

    ``flags`` are mount(2)'s per-mount flags (MS_RDONLY, MS_NOSUID, MS_NODEV,
    MS_NOEXEC, MS_STRICTATIME); ``options`` the filesystem's, a value of None
    being a flag such as devpts' ``newinstance``."""
    fs_fd = _check(
        _libc.syscall(ctypes.c_long(SYS_FSOPEN), fstype.encode(), ctypes.c_uint(FSOPEN_CLOEXEC)),
        f"fsopen {fstype}",
    )
    try:
        for key, value in options.items():
            command = FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING
            _fsconfig(fs_fd, command, key, value)
        if flags & MS_RDONLY:
            # As mount(2) does for a new filesystem: the superblock read-only too.
            _fsconfig(fs_fd, FSCONFIG_SET_FLAG, "ro", None)
        _fsconfig(fs_fd, FSCONFIG_CMD_CREATE, None, None)
        attributes = 0
        for flag, attribute in _MOUNT_ATTRIBUTES.items():
            if flags & flag:
                attributes |= attribute
        ret = _libc.syscall(
            ctypes.c_long(SYS_FSMOUNT),
            ctypes.c_int(fs_fd),
            ctypes.c_uint(FSMOUNT_CLOEXEC),
            ctypes.c_uint(attributes),
        )
        return _check(ret, f"fsmount {fstype}")
    finally:
        os.close(fs_fd)


def attach_mount(mount_fd: int, target: str) -> None:
    """Attach a detached mount (:func:`mount_detached`) on ``target``."""
    ret = _libc.syscall(
        ctypes.c_long(SYS_MOVE_MOUNT),
        ctypes.c_int(mount_fd),
        b"",
        ctypes.c_int(AT_FDCWD),
        target.encode(),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
    )
    _check(ret, f"move_mount on {target}")


def clone_mount(path: str) -> int:
    """A detached bind mount of ``path`` (not recursive), as an fd (close-on-exec)."""
    ret = _libc.syscall(
        ctypes.c_long(SYS_OPEN_TREE),
        ctypes.c_int(AT_FDCWD),
        path.encode(),
        ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC),
    )
    return _check(ret, f"open_tree {path}")
