"""The Runtime's side of the fork helper."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Iterator

import anyio

from vortex import _linux as L
from vortex.cgroups import warmup
from vortex.errors import HelperError
from vortex.helper.plan import SpareRequest, SpawnRequest
from vortex.helper.server import MAX_INLINE_REQUEST, MAX_REQUEST, SPILLED_REQUEST, serve


class ForkHelper:
    """A running fork helper process and the socket to it."""

    def __init__(
        self, sock: socket.socket, pid: int, popen: subprocess.Popen[bytes] | None
    ) -> None:
        self._sock = sock
        self.pid = pid
        self._popen = popen
        self._lock = anyio.Lock()
        self._closed = False

    @classmethod
    def start(cls, *, fresh: bool = False) -> ForkHelper:
        """Start the helper: forked when this process is still single-threaded (cheap,
        about a millisecond), exec'd as ``python -m vortex.helper`` otherwise (safe from
        a threaded process, since subprocess's fork+exec runs no Python in between).

        ``fresh`` execs it in any case: ~40 ms longer to start, but a fresh interpreter
        holds half the anonymous memory of a fork of a Runtime's process (8 against
        16 MiB), so each clone copies half the page tables and each exit unmaps half:
        ~6% more containers/s back to back (docs/performance.md, eighth session)."""
        warmup.stop()  # its thread ends first: then we may fork instead of exec
        ours, theirs = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
        )
        if not fresh and L.is_single_threaded():
            pid = os.fork()
            if pid == 0:
                ours.close()
                serve(theirs)  # never returns
            theirs.close()
            return cls(ours, pid, None)
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "vortex.helper", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        return cls(ours, popen.pid, popen)

    async def spawn(self, request: SpawnRequest | SpareRequest, fds: list[int]) -> tuple[int, int]:
        """Ask for one clone; returns ``(pid, pidfd)``.  The fds are only lent."""
        with encoded(request, fds) as (payload, fds):
            async with self._lock:
                if self._closed:
                    raise HelperError("the fork helper is closed")
                self._send(payload, fds)
                await anyio.wait_readable(self._sock)
                return self._receive()

    def spawn_blocking(self, request: SpawnRequest, fds: list[int]) -> tuple[int, int]:
        """:meth:`spawn` for a caller without an event loop (one request at a time)."""
        with encoded(request, fds) as (payload, fds):
            self._send(payload, fds)
            return self._receive()

    def _send(self, payload: bytes, fds: list[int]) -> None:
        try:
            socket.send_fds(self._sock, [payload], fds)
        except OSError as exc:
            raise HelperError(f"fork helper unreachable: {exc}") from exc

    def _receive(self) -> tuple[int, int]:
        try:
            message, received, _flags, _addr = socket.recv_fds(self._sock, 4096, 1)
        except OSError as exc:
            raise HelperError(f"fork helper unreachable: {exc}") from exc
        if not message:
            for fd in received:
                os.close(fd)
            raise HelperError("the fork helper exited unexpectedly; see its output above")
        reply = pickle.loads(message)
        if reply[0] == "error":
            raise HelperError(f"clone failed: {reply[2]}")
        if len(received) != 1:
            raise HelperError("the fork helper answered without a pidfd")
        return int(reply[1]), received[0]

    def close(self) -> None:
        """Close the socket (the helper exits on EOF) and reap the helper."""
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        try:
            if self._popen is not None:
                self._popen.wait(timeout=5)
            else:
                os.waitpid(self.pid, 0)
        except (ChildProcessError, subprocess.TimeoutExpired):
            pass


@contextlib.contextmanager
def encoded(
    request: SpawnRequest | SpareRequest, fds: list[int]
) -> Iterator[tuple[bytes, list[int]]]:
    """The message and fds that carry ``request`` (to the helper, or to a spare init)."""
    payload = pickle.dumps(request)
    if len(payload) > MAX_REQUEST:
        raise HelperError(
            f"container spec too large ({len(payload)} bytes, at most {MAX_REQUEST}): "
            "shorten the command line or the environment"
        )
    if len(payload) <= MAX_INLINE_REQUEST:
        yield payload, fds
        return
    # One SOCK_SEQPACKET message must fit the socket buffer (~200 KiB by
    # default): a larger request travels in a memfd passed along first.
    spilled = os.memfd_create("vortex-spawn-request", os.MFD_CLOEXEC)
    try:
        os.write(spilled, payload)
        yield SPILLED_REQUEST, [spilled, *fds]
    finally:
        os.close(spilled)
