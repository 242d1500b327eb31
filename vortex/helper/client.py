"""The Runtime's side of the fork helper."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import anyio

from vortex import _linux as L
from vortex.cgroups import warmup
from vortex.errors import HelperError
from vortex.helper.plan import SpareRequest, SpawnRequest
from vortex.helper.server import (
    MAX_INLINE_REQUEST,
    MAX_REQUEST,
    READY,
    SPILLED_REQUEST,
    serve,
)


class ForkHelper:
    """The Runtime's fork helper: one process at a time, and the socket to it.

    :meth:`renew` replaces a forked helper by a fresh interpreter without
    stopping the requests: they go to the old process until the new one is ready.
    """

    def __init__(self, process: _HelperProcess) -> None:
        self._process = process
        self._lock = anyio.Lock()
        self._closed = False

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def execed(self) -> bool:
        """The helper is a fresh interpreter (:meth:`_HelperProcess.execute`), not a fork."""
        return self._process.popen is not None

    @classmethod
    def start(cls, *, fresh: bool = False) -> ForkHelper:
        """Start the helper: forked when this process is still single-threaded (cheap,
        about a millisecond), a fresh interpreter otherwise (safe from
        a threaded process, since subprocess's fork+exec runs no Python in between).

        ``fresh`` execs it in any case: ~40 ms longer to start, but a fresh interpreter
        holds half the anonymous memory of a fork of a Runtime's process (8 against
        16 MiB), so each clone copies half the page tables and each exit unmaps half:
        ~5% more containers/s back to back (docs/performance.md, eighth and tenth
        sessions).  A larger program around the Runtime widens the gap."""
        if not fresh:
            warmup.stop()  # its thread ends first: then we may fork instead of exec
            if L.is_single_threaded():
                ours, theirs = _socketpair()
                pid = os.fork()
                if pid == 0:
                    ours.close()
                    serve(theirs)  # never returns
                theirs.close()
                return cls(_HelperProcess(ours, pid, None))
        return cls(_HelperProcess.execute())

    async def spawn(self, request: SpawnRequest | SpareRequest, fds: list[int]) -> tuple[int, int]:
        """Ask for one clone; returns ``(pid, pidfd)``.  The fds are only lent."""
        with encoded(request, fds) as (payload, fds):
            async with self._lock:
                if self._closed:
                    raise HelperError("the fork helper is closed")
                process = self._process
                if not process.announced:
                    await anyio.wait_readable(process.sock)
                    process.receive_announcement()
                process.send(payload, fds)
                await anyio.wait_readable(process.sock)
                return process.receive()

    def spawn_blocking(self, request: SpawnRequest, fds: list[int]) -> tuple[int, int]:
        """:meth:`spawn` for a caller without an event loop (one request at a time)."""
        with encoded(request, fds) as (payload, fds):
            process = self._process
            if not process.announced:
                process.receive_announcement()
            process.send(payload, fds)
            return process.receive()

    async def renew(self) -> None:
        """Replace the helper by a fresh interpreter, started now and used once it is
        ready (~40 ms of CPU, in the background); the old process then exits.

        Why: a forked helper is a copy of the Runtime's whole process, and so is every
        init it clones until its ``execve``.  On failure or cancellation the new
        process is ended and the old one keeps serving."""
        fresh = _HelperProcess.execute()
        try:
            with anyio.fail_after(RENEWAL_TIMEOUT):  # TimeoutError: an OSError
                await anyio.wait_readable(fresh.sock)
            fresh.receive_announcement()
            async with self._lock:
                if self._closed:
                    raise HelperError("the fork helper is closed")
                old, self._process = self._process, fresh
        except BaseException:
            fresh.end(kill=True)
            raise
        with anyio.CancelScope(shield=True):  # it exits at once: never leave it unreaped
            await old.end_async()

    def close(self) -> None:
        """Close the socket (the helper exits on EOF) and reap the helper."""
        if self._closed:
            return
        self._closed = True
        self._process.end()


class _HelperProcess:
    """One helper process: its pid, the socket to it and, when exec'd, its Popen."""

    def __init__(
        self, sock: socket.socket, pid: int, popen: subprocess.Popen[bytes] | None
    ) -> None:
        self.sock = sock
        self.pid = pid
        self.popen = popen
        self.announced = popen is None
        """A forked helper serves at once; an exec'd one first sends READY."""

    @classmethod
    def execute(cls) -> _HelperProcess:
        """Start a fresh interpreter as the helper; it serves once it has announced
        itself.

        It runs this package's ``vortex/helper/__main__.py`` as a file, isolated
        (``-I``: no PYTHON* variables, no user site, no current directory on its
        path) and without ``site`` (``-S``: nothing it needs is there, and its
        ``.pth`` hooks cost time and memory): so it imports the same vortex as this
        process, whichever way this one found it, and nothing shadows the standard
        library."""
        ours, theirs = _socketpair()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", _HELPER_MAIN, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(ours, popen.pid, popen)

    def receive_announcement(self) -> None:
        try:
            message = self.sock.recv(len(READY))
        except OSError as exc:
            raise HelperError(f"fork helper unreachable: {exc}") from exc
        if message != READY:
            raise HelperError("the fork helper exited before it was ready; see its output above")
        self.announced = True

    def send(self, payload: bytes, fds: list[int]) -> None:
        try:
            socket.send_fds(self.sock, [payload], fds)
        except OSError as exc:
            raise HelperError(f"fork helper unreachable: {exc}") from exc

    def receive(self) -> tuple[int, int]:
        try:
            message, received, _flags, _addr = socket.recv_fds(self.sock, 4096, 1)
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

    def end(self, *, kill: bool = False) -> None:
        """Close the socket (the helper exits on EOF; ``kill`` does not wait for an
        exec'd one to get that far) and reap the process."""
        self.sock.close()
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        try:
            if self.popen is not None:
                self.popen.wait(timeout=5)
            else:
                os.waitpid(self.pid, 0)
        except (ChildProcessError, subprocess.TimeoutExpired):
            pass

    async def end_async(self) -> None:
        """:meth:`end`, without blocking the event loop while the process exits."""
        self.sock.close()
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            pidfd = None
        if pidfd is not None:
            try:
                await anyio.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        self.end()


RENEWAL_TIMEOUT = 30.0
"""Seconds a renewal waits for the new helper to announce itself (~0.04 s here)."""


def can_renew() -> bool:
    """Whether :meth:`ForkHelper.renew` may run ``sys.executable``: a Python, not an
    application that embeds one (a frozen program, uwsgi), which would start as
    itself."""
    name = os.path.basename(sys.executable)
    return name.startswith("python") and not getattr(sys, "frozen", False)


_HELPER_MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")


def _socketpair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


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
