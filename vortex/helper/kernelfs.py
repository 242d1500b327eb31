"""The kernel filesystems of every container: /proc, /sys, and a /dev of its own.

One table (:data:`KERNEL_FILESYSTEMS`) says what each container gets, the
same as runc and crun give it.  The init mounts them in one of two ways:

* :func:`mount_in_place`: with mount(2), on the paths in its root filesystem,
  once it knows that root filesystem (every init can);
* :meth:`Premounts.make` then :meth:`Premounts.attach`: a spare init
  (vortex/spare.py) that is idle creates them *detached* while it waits for
  its container (the new mount API, Linux 5.2: ``fsopen``/``fsmount``, and
  ``open_tree`` for the host's nodes bound into /dev), and only moves them
  onto the root filesystem once its request is there.  Why: creating the six
  superblocks and filling /dev is ~0.3 ms of CPU on a start's critical path
  that a waiting spare does beforehand (~0.7 ms less per start measured, with
  the signal reset it also does ahead).  Each filesystem belongs to the
  namespaces of the process that creates it (proc to its PID namespace,
  sysfs to its network namespace, mqueue to its IPC namespace): the spare is
  already in the container's namespaces, so the result is the same as
  mounting them later.

A spare premounts the default variant, restricted devices (a ``nodev`` /dev
holding bind mounts of the host's nodes).  A container without them
(``--privileged``) or with a user namespace needs another /dev: its init
closes the premounts and mounts in place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable

from vortex import _linux as L

# Device nodes of a minimal /dev, as runc and crun create them: (name, major, minor).
DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
_DEV_SYMLINKS = (
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("/proc/kcore", "core"),
    ("pts/ptmx", "ptmx"),
)
_DEV_DIRECTORIES = ("pts", "shm", "mqueue")

_SIZE = "65536k"


class KernelFsError(Exception):
    """A node could not be made; the message says which and why (the init reports it)."""


KERNEL_FILESYSTEMS: tuple[tuple[str, str, str, int, dict[str, str | None]], ...] = (
    # (path in the root filesystem, fstype, source, mount flags, options)
    ("proc", "proc", "proc", L.MS_NOSUID | L.MS_NOEXEC | L.MS_NODEV, {}),
    ("sys", "sysfs", "sysfs", L.MS_RDONLY | L.MS_NOSUID | L.MS_NOEXEC | L.MS_NODEV, {}),
    ("dev", "tmpfs", "tmpfs", L.MS_NOSUID | L.MS_STRICTATIME, {"mode": "755", "size": _SIZE}),
    (
        "dev/pts",
        "devpts",
        "devpts",
        L.MS_NOSUID | L.MS_NOEXEC,
        {"newinstance": None, "ptmxmode": "0666", "mode": "0620", "gid": "5"},
    ),
    (
        "dev/shm",
        "tmpfs",
        "shm",
        L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC,
        {"mode": "1777", "size": _SIZE},
    ),
    ("dev/mqueue", "mqueue", "mqueue", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, {}),
)


def _mount_point(rootfs: str, path: str, ensure_dir: Callable[[str], None]) -> str:
    """Where a table entry goes under ``rootfs``, made if missing; /dev's own
    mount points are made when /dev is filled."""
    target = os.path.join(rootfs, path)
    if "/" not in path:
        ensure_dir(target)
    return target


def _variant(
    flags: int, options: dict[str, str | None], path: str, *, nodev: bool, rootless: bool
) -> tuple[int, dict[str, str | None]]:
    """A table entry's flags and options for this container."""
    if path == "dev" and nodev:
        # Restricted devices: a node created in /dev by the container cannot be opened.
        flags |= L.MS_NODEV
    if path == "dev/pts" and rootless:
        # Rootless, gid 5 (tty) is not mapped in the user namespace: no gid option.
        options = {key: value for key, value in options.items() if key != "gid"}
    return flags, options


def _data(options: dict[str, str | None]) -> str | None:
    """mount(2)'s comma-separated form of ``options``."""
    if not options:
        return None
    return ",".join(key if value is None else f"{key}={value}" for key, value in options.items())


def _populate_dev(dev_fd: int, make_node: Callable[[str, int, int], None]) -> None:
    """Fill a fresh /dev (by its directory fd): nodes, mount points, symlinks."""
    old_umask = os.umask(0)
    try:
        for name, major, minor in DEVICES:
            make_node(name, major, minor)
        for sub in _DEV_DIRECTORIES:
            os.mkdir(sub, 0o755, dir_fd=dev_fd)
    finally:
        os.umask(old_umask)
    for target, name in _DEV_SYMLINKS:
        os.symlink(target, name, dir_fd=dev_fd)


def _mknod_at(dev_fd: int) -> Callable[[str, int, int], None]:
    def make_node(name: str, major: int, minor: int) -> None:
        try:
            os.mknod(name, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=dev_fd)
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise KernelFsError(f"mknod /dev/{name}: {reason}") from None

    return make_node


def _host_nodes(dev_fd: int, bind: Callable[[str], None]) -> Callable[[str, int, int], None]:
    """Nodes as bind mounts of the host's: an empty file, then ``bind(name)`` mounts
    /dev/name on it (now, or later for a detached /dev).  A node the host lacks is
    made with mknod."""
    make_node = _mknod_at(dev_fd)

    def bind_or_make(name: str, major: int, minor: int) -> None:
        if not _is_host_device(f"/dev/{name}", major, minor):
            make_node(name, major, minor)
            return
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=dev_fd))
        bind(name)

    return bind_or_make


def _is_host_device(path: str, major: int, minor: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(major, minor)


def mount_in_place(
    rootfs: str,
    ensure_dir: Callable[[str], None],
    mount: Callable[[str | None, str, str | None, int, str | None], None],
    *,
    nodev: bool = False,
    bind_devices: bool = False,
    rootless: bool = False,
) -> None:
    """Mount the table's filesystems on their paths under ``rootfs`` with mount(2).

    With ``nodev`` (restricted devices: nodes in /dev cannot be opened) or
    ``bind_devices`` (a user namespace, where mknod is refused) the device
    nodes are bind mounts of the host's."""
    for path, fstype, source, flags, options in KERNEL_FILESYSTEMS:
        target = _mount_point(rootfs, path, ensure_dir)
        flags, options = _variant(flags, options, path, nodev=nodev, rootless=rootless)
        mount(source, target, fstype, flags, _data(options))
        if path == "dev":
            dev_fd = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if nodev or bind_devices:

                    def bind_now(name: str, dev: str = target) -> None:
                        mount(f"/dev/{name}", os.path.join(dev, name), None, L.MS_BIND, None)

                    _populate_dev(dev_fd, _host_nodes(dev_fd, bind_now))
                else:
                    _populate_dev(dev_fd, _mknod_at(dev_fd))
            finally:
                os.close(dev_fd)


class Premounts:
    """The table's filesystems, created detached by a waiting spare, and the host's
    device nodes to bind into its /dev; owns their fds."""

    def __init__(self, nodev: bool) -> None:
        self.nodev = nodev
        """Made for restricted devices (the default): a /dev mounted nodev."""
        self._mounts: list[int] = []
        self._node_binds: list[tuple[str, int]] = []

    def attach(self, rootfs: str, ensure_dir: Callable[[str], None]) -> bool:
        """Move each onto its path under ``rootfs`` (in table order: /dev before its
        mount points).  The fds are closed afterwards, attached or not.

        False when the kernel refuses the first move outright (a seccomp profile
        around the Runtime that allows ``fsopen`` but not ``move_mount``):
        nothing is attached then, and the init mounts in place instead."""
        try:
            for (path, *_rest), fd in zip(KERNEL_FILESYSTEMS, self._mounts, strict=True):
                target = _mount_point(rootfs, path, ensure_dir)
                try:
                    L.attach_mount(fd, target)
                except OSError as exc:
                    if path == "proc" and exc.errno in (errno.ENOSYS, errno.EPERM):
                        return False
                    raise
            for name, fd in self._node_binds:
                L.attach_mount(fd, os.path.join(rootfs, "dev", name))
        finally:
            self.close()
        return True

    def close(self) -> None:
        """Unused (the container needs another variant): the detached mounts go with
        their fds."""
        fds = self._mounts + [fd for _name, fd in self._node_binds]
        self._mounts, self._node_binds = [], []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    @classmethod
    def make(cls, *, nodev: bool) -> Premounts | None:
        """Create the table's filesystems detached, for a container with or without
        restricted devices; None when this kernel refuses (nothing is left behind)."""
        made = cls(nodev)

        def bind_later(name: str) -> None:
            made._node_binds.append((name, L.clone_mount(f"/dev/{name}")))

        try:
            for path, fstype, source, flags, options in KERNEL_FILESYSTEMS:
                flags, options = _variant(flags, options, path, nodev=nodev, rootless=False)
                fd = L.mount_detached(fstype, flags, {"source": source, **options})
                made._mounts.append(fd)
                if path == "dev":
                    _populate_dev(fd, _host_nodes(fd, bind_later) if nodev else _mknod_at(fd))
        except (OSError, KernelFsError):
            made.close()
            return None
        return made
