"""Build a minimal root filesystem from the host's static busybox, offline.

The tree is the FHS skeleton, ``/bin/busybox``, one relative symlink per applet
(``busybox --list-full``), and the handful of ``/etc`` files that a shell and
the usual tools expect.  The binary must be statically linked: a dynamically
linked one would need the host's loader and libc inside the container.

Every write goes through directory file descriptors opened with
``O_NOFOLLOW``, and files are replaced by rename.  With ``--force`` the tree is
built over existing content, which may hold symlinks (``etc -> /etc``): a path
walk by name would then write into the host, as root.  Building twice gives
the same tree, so ``--force`` doubles as "repair/refresh".
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from vortex.errors import RootfsError
from vortex.rootfs import Destination

__all__ = ["DEFAULT_BUSYBOX", "build_busybox_rootfs", "check_static_elf", "list_applets"]

DEFAULT_BUSYBOX = Path("/bin/busybox")
"""Where Debian's ``busybox-static`` package installs the binary."""

_INSTALL_HINT = "install it with `apt-get install busybox-static` or pass --busybox PATH"

# (path, mode).  Parents come before children.  proc and sys are 0555 like on
# any distribution (only mounts go there); tmp and var/tmp are world-writable
# and sticky; root's home is private.
_DIRECTORIES: tuple[tuple[str, int], ...] = (
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("home", 0o755),
    ("var", 0o755),
    ("var/tmp", 0o1777),
    ("run", 0o755),
)

# The directories applet links may go to; busybox also lists "linuxrc" at the
# top level, which only makes sense in an initramfs.
_APPLET_DIRS = frozenset({"bin", "sbin", "usr/bin", "usr/sbin"})

_HOSTNAME = "vortex"

# (path, mode, content).  passwd points at shadow ("x") with locked passwords:
# a container is entered with `vortex exec`, never by password.
_ETC_FILES: tuple[tuple[str, int, str], ...] = (
    (
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    ("etc/shadow", 0o600, "root:*::0:::::\nnobody:*::0:::::\n"),
    ("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n"),
    ("etc/hostname", 0o644, f"{_HOSTNAME}\n"),
    (
        "etc/hosts",
        0o644,
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ),
    (
        "etc/profile",
        0o644,
        "# Written by `vortex rootfs busybox`; read by login shells (sh -l).\n"
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"
        "export PS1='\\u@\\h:\\w\\$ '\n"
        "umask 022\n",
    ),
)

_T = TypeVar("_T")

_PT_INTERP = 3
_PN_XNUM = 0xFFFF


def build_busybox_rootfs(dest: Path, *, busybox: Path | None = None, force: bool = False) -> None:
    """Build a busybox root filesystem in ``dest`` (absent or empty, or any dir with ``force``).

    Raises :class:`RootfsError` when busybox is missing, not static or not
    runnable, when ``dest`` is unusable, or when writing fails; a ``dest``
    that did not exist (or was empty) is then left as it was.
    """
    binary = _find_busybox(busybox)
    check_static_elf(binary)
    applets = list_applets(binary)
    target = Destination.check(dest, force=force)
    with target.populate() as root, _Tree(root) as tree:
        tree.chmod_root(0o755)
        for path, mode in _DIRECTORIES:
            tree.directory(path, mode)
        tree.copy_file("bin/busybox", binary, 0o755)
        for applet in applets:
            tree.symlink(applet, _link_to_busybox(applet))
        for path, mode, content in _ETC_FILES:
            tree.write_file(path, content.encode(), mode)


def _find_busybox(busybox: Path | None) -> Path:
    if busybox is not None:
        if not busybox.exists():
            raise RootfsError(f"busybox binary {busybox} does not exist; {_INSTALL_HINT}")
        return busybox
    if DEFAULT_BUSYBOX.exists():
        return DEFAULT_BUSYBOX
    found = shutil.which("busybox")
    if found is None:
        raise RootfsError(f"busybox not found at {DEFAULT_BUSYBOX} nor on $PATH; {_INSTALL_HINT}")
    return Path(found)


def check_static_elf(path: Path) -> None:
    """Raise :class:`RootfsError` unless ``path`` is an ELF file without PT_INTERP.

    PT_INTERP names the dynamic loader; an executable without it (static, or
    static-pie) runs with no file of the host, which is what a root filesystem
    made of this one binary needs.
    """
    try:
        with path.open("rb") as f:
            header = f.read(64)
            if len(header) < 52 or header[:4] != b"\x7fELF":
                raise RootfsError(f"{path} is not an ELF executable; {_INSTALL_HINT}")
            elf_class, data = header[4], header[5]
            if elf_class not in (1, 2) or data not in (1, 2):
                raise RootfsError(f"{path} is a malformed ELF file; {_INSTALL_HINT}")
            endian = "<" if data == 1 else ">"
            if elf_class == 2:
                (phoff,) = struct.unpack_from(endian + "Q", header, 0x20)
                phentsize, phnum = struct.unpack_from(endian + "HH", header, 0x36)
            else:
                (phoff,) = struct.unpack_from(endian + "I", header, 0x1C)
                phentsize, phnum = struct.unpack_from(endian + "HH", header, 0x2A)
            if phnum == _PN_XNUM or phentsize < 4:
                raise RootfsError(
                    f"{path} has a program header table this check cannot read; {_INSTALL_HINT}"
                )
            for index in range(phnum):
                f.seek(phoff + index * phentsize)
                entry = f.read(phentsize)
                if len(entry) < phentsize:
                    raise RootfsError(f"{path} is a truncated ELF file; {_INSTALL_HINT}")
                (p_type,) = struct.unpack_from(endian + "I", entry, 0)
                if p_type == _PT_INTERP:
                    interpreter = _read_interp(f, entry, endian, elf_class)
                    raise RootfsError(
                        f"{path} is dynamically linked (it needs {interpreter}), but a root "
                        f"filesystem needs a statically linked busybox; {_INSTALL_HINT}"
                    )
    except OSError as err:
        raise RootfsError(f"cannot read busybox binary {path}: {err.strerror}") from err


def _read_interp(f: BinaryIO, entry: bytes, endian: str, elf_class: int) -> str:
    """The loader path of a PT_INTERP entry, for the error message only."""
    if elf_class == 2:
        offset, _vaddr, _paddr, size = struct.unpack_from(endian + "QQQQ", entry, 8)
    else:
        offset, _vaddr, _paddr, size = struct.unpack_from(endian + "IIII", entry, 4)
    try:
        f.seek(offset)
        raw = f.read(min(size, 4096))
    except OSError:
        return "a dynamic loader"
    return raw.rstrip(b"\0").decode(errors="replace") or "a dynamic loader"


def list_applets(busybox: Path) -> list[str]:
    """The applet paths of ``busybox --list-full`` that belong in bin/sbin dirs, sorted."""
    import subprocess

    try:
        result = subprocess.run(
            [str(busybox), "--list-full"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise RootfsError(
            f"cannot run {busybox} --list-full: {err}; is it a busybox built for this "
            f"machine? {_INSTALL_HINT}"
        ) from err
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip().splitlines()
        detail = stderr[-1] if stderr else f"exit status {result.returncode}"
        raise RootfsError(
            f"{busybox} --list-full failed ({detail}); is {busybox} busybox? {_INSTALL_HINT}"
        )
    applets = set()
    for raw in result.stdout.decode(errors="replace").splitlines():
        path = raw.strip()
        parent, _, name = path.rpartition("/")
        # Only plain names in the known directories: this output is about to
        # become paths under DEST, so nothing like "../x" may get through.
        if parent in _APPLET_DIRS and name not in ("", ".", "..") and path != "bin/busybox":
            applets.add(path)
    if not applets:
        raise RootfsError(f"{busybox} --list-full listed no applets; is {busybox} busybox?")
    return sorted(applets)


def _link_to_busybox(applet: str) -> str:
    """The link target for ``applet``: relative, so that it resolves to this
    tree's busybox both inside the container and when inspected from the host."""
    parent = applet.rpartition("/")[0]
    if parent == "bin":
        return "busybox"
    return "../" * (parent.count("/") + 1) + "bin/busybox"


class _Tree:
    """Writes below a root directory fd without ever following a symlink.

    Directory fds are cached per relative path and closed on exit.
    """

    _DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

    def __init__(self, root: Path) -> None:
        self._root_path = root
        self._fds: dict[str, int] = {}

    def __enter__(self) -> _Tree:
        try:
            self._fds[""] = os.open(self._root_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise RootfsError(f"cannot open {self._root_path}: {err.strerror}") from err
        return self

    def __exit__(self, *exc_info: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def chmod_root(self, mode: int) -> None:
        # A root directory made by mkdir or by the user (say 0700) would lock
        # every non-root user of the container out of the whole tree.
        self._call(os.fchmod, "", self._fds[""], mode)

    def directory(self, relpath: str, mode: int | None = None) -> int:
        """The fd of ``relpath`` (created if missing); ``mode`` is applied if given."""
        fd = self._fds.get(relpath)
        if fd is None:
            parent, _, name = relpath.rpartition("/")
            parent_fd = self.directory(parent)
            with contextlib.suppress(FileExistsError):
                self._call(os.mkdir, relpath, name, 0o755, dir_fd=parent_fd)
            try:
                fd = os.open(name, self._DIR_FLAGS, dir_fd=parent_fd)
            except OSError as err:
                raise self._not_a_directory(parent_fd, name, relpath, err) from err
            self._fds[relpath] = fd
        if mode is not None:
            # mkdir's mode is filtered by the umask, and an existing directory
            # (--force) may have any mode: set it explicitly.
            self._call(os.fchmod, relpath, fd, mode)
        return fd

    def _not_a_directory(
        self, parent_fd: int, name: str, relpath: str, err: OSError
    ) -> RootfsError:
        # open(O_DIRECTORY | O_NOFOLLOW) fails with ENOTDIR on a symlink, the
        # same as on a file, so look at what is there to say which it is.
        if err.errno in (errno.ENOTDIR, errno.ELOOP):
            try:
                is_link = stat.S_ISLNK(
                    os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
                )
            except OSError:
                is_link = False
            if is_link:
                return RootfsError(
                    f"{self._show(relpath)} is a symlink; refusing to write through it "
                    f"(it may point into the host); remove it or build into a new directory"
                )
            return RootfsError(
                f"{self._show(relpath)} exists and is not a directory; remove it or "
                f"build into a new directory"
            )
        return RootfsError(f"cannot open {self._show(relpath)}: {err.strerror}")

    def write_file(self, relpath: str, data: bytes, mode: int) -> None:
        parent_fd, name = self._parent(relpath)
        tmp = self._create_temp(parent_fd, name, relpath)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            self._replace(parent_fd, tmp, name, relpath)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent_fd)
            raise

    def copy_file(self, relpath: str, source: Path, mode: int) -> None:
        parent_fd, name = self._parent(relpath)
        tmp = self._create_temp(parent_fd, name, relpath)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                os.fchmod(out.fileno(), mode)
                shutil.copyfileobj(src, out, 1 << 20)
            self._replace(parent_fd, tmp, name, relpath)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent_fd)
            raise RootfsError(
                f"cannot copy {source} to {self._show(relpath)}: {err.strerror}"
            ) from err
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent_fd)
            raise

    def symlink(self, relpath: str, target: str) -> None:
        parent_fd, name = self._parent(relpath)
        with contextlib.suppress(OSError):
            if os.readlink(name, dir_fd=parent_fd) == target:
                return  # already right: a rebuild leaves it alone
        tmp = f".{name}.vortex-tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=parent_fd)
        self._call(os.symlink, relpath, target, tmp, dir_fd=parent_fd)
        try:
            self._replace(parent_fd, tmp, name, relpath)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent_fd)
            raise

    def _parent(self, relpath: str) -> tuple[int, str]:
        parent, _, name = relpath.rpartition("/")
        return self.directory(parent), name

    def _create_temp(self, parent_fd: int, name: str, relpath: str) -> str:
        # A fixed name rather than a random one: a leftover of an interrupted
        # build is then simply reused instead of accumulating.
        tmp = f".{name}.vortex-tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=parent_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = self._call(os.open, relpath, tmp, flags, 0o600, dir_fd=parent_fd)
        os.close(fd)
        return tmp

    def _replace(self, parent_fd: int, tmp: str, name: str, relpath: str) -> None:
        # rename() replaces a file or symlink atomically and never follows a
        # symlink at the destination; it fails on a directory, which is right.
        try:
            os.replace(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except IsADirectoryError as err:
            raise RootfsError(
                f"{self._show(relpath)} is a directory; remove it or build into a new directory"
            ) from err
        except OSError as err:
            raise RootfsError(f"cannot write {self._show(relpath)}: {err.strerror}") from err

    def _call(self, func: Callable[..., _T], relpath: str, *args: Any, **kwargs: Any) -> _T:
        """``func(*args, **kwargs)`` with an OSError turned into a RootfsError naming the path.

        FileExistsError passes through: callers use it to tell "already there".
        """
        try:
            return func(*args, **kwargs)
        except FileExistsError:
            raise
        except OSError as err:
            raise RootfsError(f"cannot write {self._show(relpath)}: {err.strerror}") from err

    def _show(self, relpath: str) -> str:
        return str(self._root_path / relpath) if relpath else str(self._root_path)
