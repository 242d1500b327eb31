"""The daemon's side: accept ``vortex run`` clients and run each on one Runtime.

Each connection is one container.  The client's command line is parsed by the
same parser and turned into a spec by the same code as in-process
(vortex/run_command.py); the container's stdio are the client's descriptors;
the signals the client relays are forwarded as ``vortex run`` forwards its
own; the exit status goes back in one packet.  A client that disconnects
before its container exited (it was killed) takes the container with it, as
PR_SET_PDEATHSIG does for an in-process run.

Anything that would make the run differ from an in-process one is answered
FALLBACK, and the client runs it itself: a command line that does not parse or
a spec that does not validate (so the error message is exactly the in-process
one, relative paths included), a terminal, ``--no-plugin``, ``--cgroup-parent``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc

from vortex import log, records
from vortex.cgroups import warmup
from vortex.daemon.protocol import EXIT, FALLBACK, MAX_PACKET, RUN, SIG, decode, encode
from vortex.errors import DaemonError, VortexError
from vortex.runtime import Runtime
from vortex.spec import ContainerSpec


class NotServed(Exception):
    """This run must happen in the client's own process (FALLBACK)."""


class RunDaemon:
    """Serves ``vortex run`` on ``listener`` (from :func:`listen`, owned by the caller)
    with ``runtime`` (already entered)."""

    def __init__(self, runtime: Runtime, listener: socket.socket) -> None:
        self.runtime = runtime
        self.listener = listener
        self.served = 0
        """Runs served so far (the daemon's log reports it on exit)."""

    async def serve(self) -> None:
        """Accept clients until cancelled; each is served in a task of its own."""
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.wait_readable(self.listener)
                try:
                    conn, _addr = self.listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                # A start follows: have the v1 attach's wait pass meanwhile, unless
                # it will take a spare, which is in its cgroup already.
                if not self.runtime.spare_coming():
                    warmup.start()
                tg.start_soon(self._serve_client, conn)

    async def _serve_client(self, conn: socket.socket) -> None:
        fds: list[int] = []
        with conn:
            try:
                _check_peer(conn)
                packet, fds = await _receive_request(conn)
                status, message = await self._run(conn, packet, fds)
                reply = encode(EXIT, status, message or "")
            except NotServed as why:
                log.emit("info", "daemon.fallback", reason=str(why))
                reply = encode(FALLBACK, str(why))
            except VortexError as exc:
                reply = encode(EXIT, exc.exit_status, str(exc))
            except OSError as exc:  # the client went away before asking anything
                log.emit("info", "daemon.client_failed", error=str(exc))
                return
            except Exception as exc:
                # A bug must cost this run, not the daemon and everyone else's.
                log.emit("error", "daemon.run_failed", error=repr(exc), exc_info=True)
                reply = encode(EXIT, 125, f"the daemon failed to run it: {exc!r}")
            finally:
                for fd in fds:
                    os.close(fd)
            with contextlib.suppress(OSError):  # a killed client reads nothing
                conn.send(reply)

    async def _run(
        self, conn: socket.socket, packet: bytes, fds: list[int]
    ) -> tuple[int, str | None]:
        from vortex.run_command import run_in_foreground

        kind, fields = decode(packet)
        if kind != RUN or not fields or len(fds) != 3:
            raise DaemonError("malformed request: expected RUN, a directory and 3 descriptors")
        cwd, argv = fields[0], fields[1:]
        spec = client_spec(cwd, argv, fds)
        self.served += 1
        status, message = await run_in_foreground(self.runtime, spec, _relayed_signals(conn))
        log.emit("info", "daemon.served", status=status)
        return status, message


async def _receive_request(conn: socket.socket) -> tuple[bytes, list[int]]:
    """The client's one request and its descriptors.  A client sends it right
    after connecting: it is usually there already, one event-loop round trip sooner."""
    while True:
        try:
            packet, fds, _flags, _addr = socket.recv_fds(
                conn, MAX_PACKET, 3, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            await anyio.wait_readable(conn)
            continue
        return packet, fds


def client_spec(cwd: str, argv: list[str], fds: list[int]) -> ContainerSpec:
    """The spec ``vortex`` ``argv`` would run in-process, with the client's stdio."""
    from vortex.run_command import spec_from_args

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            args = _run_parser().parse_args(argv)
    except SystemExit:
        raise NotServed("the command line does not parse") from None
    if args.subcommand != "run":
        raise NotServed(f"{args.subcommand!r} is not 'run'")
    if args.no_plugin or args.cgroup_parent is not None:
        raise NotServed("--no-plugin and --cgroup-parent need a Runtime of their own")
    if args.bundle is not None:
        raise NotServed("an OCI bundle is loaded (and its paths resolved) in-process")
    if args.tty or (args.tty is None and os.isatty(fds[0]) and os.isatty(fds[1])):
        raise NotServed("a terminal is relayed by the client's own process")
    args.tty = False
    try:
        spec = spec_from_args(args)
        security, profile = spec.security, spec.security.seccomp_file
        if profile is not None:
            security = records.replace(security, seccomp=os.path.join(cwd, profile))
        spec = records.replace(
            spec,
            rootfs=Path(cwd, spec.rootfs),
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            security=security,
        )
        spec.validate()
    except VortexError:
        # Checked again in-process, which words the error with the client's own
        # (relative) paths.
        raise NotServed("the spec does not validate") from None
    return spec


@functools.cache
def _run_parser() -> argparse.ArgumentParser:
    """Built once (about a millisecond and a half); parsing leaves it unchanged."""
    from vortex.cli import build_parser

    return build_parser("run")


async def _relayed_signals(conn: socket.socket) -> AsyncIterator[int]:
    """The signals the client relays; SIGKILL when it disconnects (it died)."""
    while True:
        await anyio.wait_readable(conn)
        try:
            packet = conn.recv(MAX_PACKET)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            packet = b""
        if not packet:
            yield 9  # SIGKILL: the container does not outlive its ``vortex run``
            return
        kind, fields = decode(packet)
        if kind == SIG and fields and fields[0].isdigit():
            yield int(fields[0])


SD_LISTEN_FDS_START = 3
"""The first descriptor systemd passes to a socket-activated service (sd_listen_fds(3))."""


def activated_listener(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The listening socket systemd passed (socket activation), or None.

    The sd_listen_fds(3) protocol: ``LISTEN_PID`` is our pid and ``LISTEN_FDS``
    counts the descriptors from fd 3; we take exactly one, a SOCK_SEQPACKET unix
    socket (contrib/vortex-daemon.socket).  The variables are removed so that no
    child takes them for its own.
    """
    env = os.environ if environ is None else environ
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    env.pop("LISTEN_FDNAMES", None)
    if not pid or pid != str(os.getpid()):
        return None
    if count != "1":
        raise DaemonError(
            f"socket activation passed {count or 'no'} sockets: give vortex daemon exactly one "
            "(ListenSequentialPacket=/run/vortex/daemon.sock)"
        )
    listener = socket.socket(fileno=SD_LISTEN_FDS_START)
    if listener.family != socket.AF_UNIX or listener.type != socket.SOCK_SEQPACKET:
        listener.detach()
        raise DaemonError(
            "socket activation passed a socket that is not a unix SOCK_SEQPACKET one: "
            "use ListenSequentialPacket= in the socket unit"
        )
    listener.set_inheritable(False)
    listener.setblocking(False)
    return listener


def listen(path: str) -> socket.socket:
    """A non-blocking SEQPACKET listener on ``path``, mode 0600, owned by us.

    A socket file nobody answers on (a daemon that was killed) is replaced;
    one that answers means another daemon runs: DaemonError.
    """
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise DaemonError(
                f"--socket {path!r} exists and is not a socket: remove it or pick another path"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale
        else:
            raise DaemonError(f"another vortex daemon is listening on {path}: stop it first")
        finally:
            probe.close()
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    listener = socket.socket(
        socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    )
    old_umask = os.umask(0o177)  # born 0600: no window in which others could connect
    try:
        listener.bind(path)
    except OSError as exc:
        listener.close()
        raise DaemonError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    listener.listen(128)
    return listener


def _check_peer(conn: socket.socket) -> None:
    """Only our own user (root) may start containers through us; the file mode
    says the same, this holds even if someone loosens it."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.geteuid():
        raise DaemonError(f"uid {uid} may not use this daemon: it serves uid {os.geteuid()} only")
