"""The ``vortex run`` side of the daemon: hand the run over, relay signals, wait.

Imported on every cold ``vortex run``, before argparse, so it uses the C
modules ``_socket`` and ``_signal`` directly: their Python wrappers (``socket``,
``signal``) build enums at import and cost several milliseconds here. ``_socket``
itself (~0.6 ms) is imported only once the socket's file is known to exist: a
machine without a daemon never pays for it.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; signal's C half
import os
import sys

from vortex.daemon.protocol import EXIT, FALLBACK, MAX_PACKET, RUN, SIG, decode, encode, socket_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import _socket

FORWARDED_SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)
"""What ``vortex run`` forwards in-process as well (SIGWINCH only matters with a
terminal, which the daemon leaves to the in-process path)."""


def run_through_daemon(argv: list[str]) -> int | None:
    """Run ``vortex`` ``argv`` (a ``run`` command line) through the daemon.

    Returns the exit status, or None when no daemon serves this run: none is
    listening, the caller is not root (the socket is root's), help was asked
    for, or the daemon answered FALLBACK.  The caller then runs it in-process.
    """
    path = socket_path()
    if path is None or os.geteuid() != 0 or "-h" in argv or "--help" in argv:
        return None
    try:
        os.stat(path)
    except OSError:
        return None  # no daemon: nothing to connect to (connect would fail the same way)
    import _socket  # here: only a machine with a daemon's socket pays for it

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None  # no daemon (or a stale socket): nothing was started
        return _hand_over(sock, argv, path)
    finally:
        sock.close()


def _hand_over(sock: _socket.socket, argv: list[str], path: str) -> int | None:
    import _socket  # loaded already, by run_through_daemon

    request = encode(RUN, os.getcwd(), *argv)
    if len(request) > MAX_PACKET:
        return None  # a command line this long is run in-process
    streams, opened = _standard_streams()
    try:
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in streams)
        sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    except OSError:
        return None  # nothing reached the daemon: nothing was started
    finally:
        for fd in opened:
            os.close(fd)  # the daemon holds its own copies now

    def forward(signum: int, _frame: object) -> None:
        try:  # noqa: SIM105 (contextlib is one import more on the cold path)
            sock.send(encode(SIG, signum))
        except OSError:
            pass  # the daemon is gone: the recv below reports it

    previous = {signum: _signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        reply = sock.recv(MAX_PACKET)  # retried after each forwarded signal (PEP 475)
    except OSError:
        reply = b""  # reset by a daemon that died: reported below like a close
    finally:
        for signum, handler in previous.items():
            _signal.signal(signum, handler)
    if not reply:
        print(
            f"vortex: the daemon at {path} closed the connection before the container "
            "exited (its containers die with it); see the daemon's log",
            file=sys.stderr,
        )
        return 125
    kind, fields = decode(reply)
    if kind == FALLBACK:
        return None
    if kind != EXIT or not fields or not fields[0].isdigit():
        print(f"vortex: the daemon at {path} sent a malformed reply", file=sys.stderr)
        return 125
    if len(fields) > 1 and fields[1]:
        print(f"vortex: {fields[1]}", file=sys.stderr)
    return int(fields[0])


def _standard_streams() -> tuple[list[int], list[int]]:
    """fds 0, 1, 2 as they are; /dev/null for any that is closed (as in-process)."""
    streams, opened = [], []
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            fd = os.open(os.devnull, flags | os.O_CLOEXEC)
            opened.append(fd)
        streams.append(fd)
    return streams, opened
