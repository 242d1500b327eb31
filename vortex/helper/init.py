"""The container init: what a freshly cloned child does before ``execve``.

This code runs in a fork of the single-threaded fork helper, inside the new
namespaces, as PID 1 of the container.  It must never return into the
helper's loop: every path ends in ``execve`` or ``os._exit``.  Failures are
reported to the Runtime over the close-on-exec error pipe (an exec that
succeeds closes the pipe, which the Runtime reads as "started").

Order matters and is the contract with the Runtime:

1. parent-death signal, so the container dies with the Runtime;
2. freshly cloned (not a spare): /proc, /sys and /dev created detached, and
   ``lo`` up if the plan says so, while the Runtime places us in our cgroup;
3. block on the sync pipe until the Runtime has placed us in our cgroup and
   run ``post_cgroup`` hooks (EOF instead of a byte means "abort");
4. mounts: private propagation, rootfs bind, /proc, /sys (read-only), /dev,
   then the plan's operations (pre_pivot hooks);
5. ``pivot_root``, old root detached; hostname; terminal; user; workdir;
6. ``execve``.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; signal's C half
import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Callable, Sequence

from vortex import _linux as L
from vortex import ops
from vortex.errors import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_RUNTIME_ERROR,
    ContainerSetupError,
    ExecError,
)
from vortex.helper import kernelfs
from vortex.helper.plan import InitPlan
from vortex.security import apply as security
from vortex.security.policy import InitSecurity

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_TIOCSCTTY = 0x540E
_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431


class InitFailure(Exception):
    """A step failed; ``exit_status`` follows the 125/126/127 convention."""

    def __init__(self, message: str, exit_status: int = EXIT_RUNTIME_ERROR) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def encode_failure(kind: str, exit_status: int, message: str) -> bytes:
    """The error pipe's one message: ``kind NUL status NUL message``."""
    return f"{kind}\0{exit_status}\0{message}".encode(errors="replace")


def decode_failure(data: bytes) -> tuple[str, int, str]:
    kind, status, message = data.decode(errors="replace").split("\0", 2)
    return kind, int(status), message


def raise_reported_failure(report: bytes) -> None:
    """What the error pipe said once it closed: nothing (the exec succeeded), or the
    failure as an ExecError (126/127) or a ContainerSetupError."""
    if report:
        kind, status, message = decode_failure(report)
        if kind == "exec":
            raise ExecError(message, status)
        raise ContainerSetupError(message)


def run_init(
    plan: InitPlan,
    fds: dict[str, int],
    *,
    prepared: bool = False,
    premounts: kernelfs.Premounts | None = None,
    loopback_up: bool = False,
    last_as_root: Callable[[], None] | None = None,
) -> None:
    """Entry point in the cloned child.  Never returns.

    A spare init passes ``prepared`` (it ran :func:`prepare_process` while it
    waited), the kernel filesystems it premounted, if it did, and
    ``loopback_up`` when it brought ``lo`` up (then the plan's LoopbackUp has
    nothing left to do).  ``last_as_root`` runs just before the init takes the
    container's user and capabilities (a spare that learns which pages its init
    wrote passes it: vortex/helper/prefault.py); its OSError is ignored."""
    error_fd = fds["errors"]
    try:
        _run(plan, fds, prepared, premounts, loopback_up, last_as_root)
    except InitFailure as failure:
        kind = "exec" if failure.exit_status in (EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE) else "setup"
        _report(error_fd, encode_failure(kind, failure.exit_status, str(failure)))
        os._exit(failure.exit_status)
    except BaseException as exc:
        _report(error_fd, encode_failure("setup", EXIT_RUNTIME_ERROR, f"container init: {exc}"))
        os._exit(EXIT_RUNTIME_ERROR)
    os._exit(EXIT_RUNTIME_ERROR)  # _run only returns by exec


def _report(fd: int, message: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, message)


def prepare_process() -> None:
    """What every init does before anything of its container: a spare does it while
    it waits (it is PID 1 of its PID namespace by then, so default dispositions
    do not let a signal from outside, say a Ctrl-C, end it; SIGKILL still does)."""
    L.set_parent_death_signal(_signal.SIGKILL)
    # execve keeps ignored signals ignored: CPython ignores SIGPIPE and SIGXFSZ, the
    # helper SIGINT.  The command must start with every disposition at its default.
    # Through signal's C half: its Python wrapper turns every number and handler
    # into an enum member and back, ~0.25 ms of CPU for the 62 signals of every init.
    for sig in _signal.valid_signals():
        if sig not in (_signal.SIGKILL, _signal.SIGSTOP):
            with contextlib.suppress(OSError, ValueError):
                _signal.signal(sig, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, set())
    # A new session: the container never shares the caller's terminal process group,
    # so a Ctrl-C on that terminal reaches it once, through the Runtime's forwarding.
    os.setsid()


def _run(
    plan: InitPlan,
    fds: dict[str, int],
    prepared: bool,
    premounts: kernelfs.Premounts | None,
    loopback_up: bool,
    last_as_root: Callable[[], None] | None,
) -> None:
    if not prepared:
        prepare_process()
    # fds received over SCM_RIGHTS arrive without close-on-exec; the error pipe must
    # close at exec, or the Runtime would only learn "exec succeeded" at exit.
    os.set_inheritable(fds["errors"], False)
    sec = plan.security if plan.security is not None else InitSecurity()
    variant = premount_variant(sec)
    if premounts is not None and premounts.nodev != variant:
        premounts.close()  # a spare's, made for the common /dev, not this container's
        premounts = None
    if not prepared:
        # Freshly cloned: until the sync byte comes, the Runtime attaches us to our
        # cgroup and runs the post_cgroup hooks (1-2 ms of a cold `vortex run`), on
        # the other core if there is one.  Meanwhile do the work that depends on
        # neither, as a spare does while it waits.  Not in a spare that got its
        # request: back to back that comes ~0.6 ms before the sync byte, too short
        # a time; premounting then only cost CPU (measured).
        if variant is not None:
            premounts = kernelfs.Premounts.make(nodev=variant)
        if ops.brings_loopback_up(plan.ops):
            loopback_up = try_loopback_up()

    if os.read(fds["sync"], 1) != b"\x01":
        # The Runtime went away or aborted the start (a post_cgroup hook failed).
        os._exit(EXIT_RUNTIME_ERROR)
    os.close(fds["sync"])
    if sec.userns:
        # The Runtime has written our uid/gid maps: become the namespace's root, so
        # that what we create is owned by a mapped (unprivileged) host id.
        _step(security.become_namespace_root, "become root of the user namespace")
    # Now that the Runtime has placed us in our cgroup, make it the root of a new
    # cgroup namespace (at clone time we were still in the Runtime's cgroup on v1).
    _step(lambda: L.unshare(L.CLONE_NEWCGROUP), "unshare cgroup namespace")

    rootfs = os.path.realpath(plan.rootfs)
    _setup_mounts(
        rootfs,
        plan.ops,
        premounts,
        nodev=sec.nodev_rootfs,
        bind_devices=sec.userns,
        rootless=sec.rootless,
        loopback_up=loopback_up,
    )
    _step(lambda: os.chdir(rootfs), "chdir to rootfs")
    # new_root == put_old: the old root ends up stacked under "/" and is detached right
    # away, so no directory for it has to exist (or be removed) in the rootfs.
    _step(lambda: L.pivot_root(".", "."), "pivot_root")
    _step(lambda: L.umount2(".", L.MNT_DETACH), "detach old root")
    os.chdir("/")
    # Masked and read-only paths, then the root itself (see vortex/security/apply.py).
    _step(lambda: security.mask_and_protect(sec), "masked and read-only paths")
    _step(lambda: security.remount_root(sec), "remount the root filesystem")
    _step(lambda: L.sethostname(plan.hostname), f"sethostname {plan.hostname}")

    _setup_stdio(plan, fds)
    if last_as_root is not None:
        with contextlib.suppress(OSError):
            last_as_root()
    security.confine(plan.uid, plan.gid, sec, _step)
    try:
        os.chdir(plan.workdir)
    except OSError as exc:
        raise InitFailure(f"workdir {plan.workdir}: {_strerror(exc)}") from None
    _close_other_fds(fds["errors"])
    # no_new_privs and the seccomp filter: the last steps before execve.
    _step(lambda: security.lock_down(sec), "no_new_privs and seccomp")
    _exec(plan.argv, dict(plan.env))


def premount_variant(sec: InitSecurity) -> bool | None:
    """The kernel filesystems that may be made ahead for a container (detached,
    helper/kernelfs.py): ``nodev`` for restricted devices, or not; None when its
    init must mount them in place: with a user namespace (its /dev is another
    variant, set up once the Runtime has written our id maps), or rootless."""
    return None if sec.userns or sec.rootless else sec.nodev_rootfs


def try_loopback_up() -> bool:
    """Bring ``lo`` up ahead of the plan; whether it is.  A failure here fails
    nothing: the plan's LoopbackUp tries again and reports it as it would have."""
    try:
        bring_loopback_up()
    except InitFailure:
        return False
    return True


def _step(action: Callable[[], object], what: str) -> None:
    try:
        action()
    except OSError as exc:
        raise InitFailure(f"{what}: {_strerror(exc)}") from None


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def _inside(rootfs: str, path: str) -> str:
    """Host path of a container path, resolving symlinks *within* the rootfs.

    Plans come from the Runtime, but the rootfs is the user's: a symlink in it
    (say /etc -> /host/etc) must not make a bind or a write land outside it.
    """
    current = rootfs
    parts = [p for p in path.split("/") if p not in ("", ".")]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = os.path.dirname(current) if current != rootfs else rootfs
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise InitFailure(f"{path}: too many levels of symbolic links")
            link = os.readlink(candidate)
            if link.startswith("/"):
                current = rootfs
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        current = candidate
    return current


def _ensure_dir(path: str, mode: int = 0o755) -> None:
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as exc:
        raise InitFailure(f"create mount point {path}: {_strerror(exc)}") from None


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    try:
        L.mount(source, target, fstype, flags, data)
    except OSError as exc:
        raise InitFailure(
            str(exc).lower()
            if not exc.errno
            else f"mount {fstype or source} on {target}: {_strerror(exc)}"
        ) from None


def _setup_mounts(
    rootfs: str,
    plan_ops: Sequence[ops.SetupOp],
    premounts: kernelfs.Premounts | None,
    *,
    nodev: bool = False,
    bind_devices: bool = False,
    rootless: bool = False,
    loopback_up: bool = False,
) -> None:
    # Nothing we mount may propagate back to the host's mount namespace.
    _mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
    # pivot_root needs the new root to be a mount point.
    _mount(rootfs, rootfs, None, L.MS_BIND | L.MS_REC)

    # /proc, /sys, /dev (vortex/helper/kernelfs.py).
    attached = False
    if premounts is not None:
        try:
            attached = premounts.attach(rootfs, _ensure_dir)
        except OSError as exc:
            raise InitFailure(f"mount /proc, /sys and /dev: {_strerror(exc)}") from None
    if not attached:
        try:
            kernelfs.mount_in_place(
                rootfs,
                _ensure_dir,
                _mount,
                nodev=nodev,
                bind_devices=bind_devices,
                rootless=rootless,
            )
        except kernelfs.KernelFsError as exc:
            raise InitFailure(str(exc)) from None

    for op in plan_ops:
        _apply(rootfs, op, nodev=nodev, loopback_up=loopback_up)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(os.path.join(rootfs, _STAGING))


def _apply(rootfs: str, op: ops.SetupOp, *, nodev: bool = False, loopback_up: bool = False) -> None:
    match op:
        case ops.BindMount(source=source, target=target, readonly=readonly, recursive=recursive):
            path = _inside(rootfs, target)
            if os.path.isdir(source):
                _ensure_dir(path)
            elif not os.path.exists(path):
                _ensure_dir(os.path.dirname(path))
                with open(path, "a"):
                    pass
            flags = L.MS_BIND | (L.MS_REC if recursive else 0)
            _mount(source, path, None, flags)
            if readonly or nodev:
                # Restricted devices: a node mknod'ed on a volume must not open either.
                extra = (L.MS_RDONLY if readonly else 0) | (L.MS_NODEV if nodev else 0)
                keep = security.mount_flags(path)
                _mount(None, path, None, flags | L.MS_REMOUNT | keep | extra)
        case ops.MountFilesystem(fstype=fstype, target=target, options=options, flags=flags):
            path = _inside(rootfs, target)
            _ensure_dir(path)
            _mount(fstype, path, fstype, flags, options)
        case ops.WriteFile(path=path, content=content, mode=mode):
            _write_private_file(rootfs, path, content, mode)
        case ops.MakeDirectory(path=path, mode=mode):
            _ensure_dir(_inside(rootfs, path), mode)
        case ops.Symlink(target=target, path=path):
            try:
                os.symlink(target, _inside(rootfs, path))
            except FileExistsError:
                pass
            except OSError as exc:
                raise InitFailure(f"symlink {path}: {_strerror(exc)}") from None
        case ops.LoopbackUp():
            if not loopback_up:  # a spare init may have done it while it waited
                bring_loopback_up()
        case _:
            raise InitFailure(f"unknown setup operation {op!r}")


_STAGING = "dev/.vortex-files"
"""Where WriteFile contents are staged: inside the container's own /dev tmpfs."""


def _write_private_file(rootfs: str, path: str, content: bytes, mode: int) -> None:
    """Make ``path`` show ``content`` to this container only.

    The rootfs directory may be shared by many containers (or read-only), so the
    content is written to a file on the container's private /dev tmpfs and bind
    mounted over the target; the staging name is unlinked at once (the mount
    keeps the inode).  Only a missing target leaves a trace in the rootfs: an
    empty file to mount on, as every runtime creates mount points.
    """
    target = _inside(rootfs, path)
    staging_dir = os.path.join(rootfs, _STAGING)
    try:
        os.makedirs(staging_dir, mode=0o700, exist_ok=True)
        staged = os.path.join(staging_dir, str(len(os.listdir(staging_dir))))
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, content)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        if os.path.isdir(target):
            raise InitFailure(f"write {path}: is a directory")
        if not os.path.lexists(target):
            _ensure_dir(os.path.dirname(target))
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    except OSError as exc:
        raise InitFailure(f"write {path}: {_strerror(exc)}") from None
    _mount(staged, target, None, L.MS_BIND)
    os.unlink(staged)


def bring_loopback_up() -> None:
    """Set IFF_UP on this network namespace's ``lo`` (the kernel then gives it
    127.0.0.1 and ::1)."""
    try:
        sock = L.socket(L.AF_INET, L.SOCK_DGRAM)
        try:
            request = struct.pack("16sh", b"lo", 0)
            flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))
        finally:
            os.close(sock)
    except OSError as exc:
        raise InitFailure(f"bring up lo: {_strerror(exc)}") from None


def _setup_stdio(plan: InitPlan, fds: dict[str, int]) -> None:
    if plan.tty:
        # A terminal of the container's own devpts instance, as runc does: the master
        # goes back to the Runtime over the console socket, the slave becomes our
        # controlling terminal and stdio.
        try:
            master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
            number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, struct.pack("I", 0)))[0]
            slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
            fcntl.ioctl(slave, _TIOCSCTTY, 0)
            import socket

            with socket.socket(fileno=fds["console"]) as console:
                socket.send_fds(console, [b"pty"], [master])
            os.close(master)
        except OSError as exc:
            raise InitFailure(f"allocate a terminal: {_strerror(exc)}") from None
        sources = [slave, slave, slave]
    else:
        sources = [fds["stdin"], fds["stdout"], fds["stderr"]]
    # A source may already sit on 0-2 (a direct clone passes the caller's own
    # descriptors, close-on-exec ones too): copy them above 2 first, so that no
    # dup2 overwrites a source still needed and every target is a fresh dup2.
    # dup2 clears FD_CLOEXEC on the new descriptor, which is what exec needs;
    # the copies are closed with the other descriptors.
    copies = [fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, 3) for source in sources]
    for target, source in enumerate(copies):
        os.dup2(source, target)


def _close_other_fds(keep: int) -> None:
    # Only 0, 1, 2 reach the command; the error pipe closes itself at exec.
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 20)


def _exec(argv: Sequence[str], env: dict[str, str]) -> None:
    program = argv[0]
    if "/" in program:
        candidates = [program]
    else:
        search = env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        candidates = [os.path.join(d or ".", program) for d in search.split(":")]
    denied: OSError | None = None
    for path in candidates:
        try:
            os.execve(path, list(argv), env)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            if exc.errno in (errno.EACCES, errno.ENOEXEC, errno.EPERM, errno.EISDIR):
                denied = exc
                continue
            raise InitFailure(f"exec {program}: {_strerror(exc)}", EXIT_NOT_EXECUTABLE) from None
    if denied is not None:
        raise InitFailure(f"exec {program}: {_strerror(denied)}", EXIT_NOT_EXECUTABLE)
    raise InitFailure(f"exec {program}: no such file or directory", EXIT_NOT_FOUND)
