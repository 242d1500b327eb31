"""Relaying a container's pseudo-terminal to the caller's terminal.

``termios`` and ``tty`` are imported where a terminal is used: vortex.direct
imports this module on every cold ``vortex run``, most of which have none.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct
from collections.abc import Iterator

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import socket


def receive_master(console: socket.socket) -> int:
    """The pty master the init sent over ``console`` before its exec (closed here),
    as a descriptor of ours that children do not inherit."""
    import socket

    _msg, fds, _flags, _addr = socket.recv_fds(console, 16, 1)
    console.close()
    if not fds:
        from vortex.errors import HelperError

        raise HelperError("the container did not send its terminal")
    os.set_inheritable(fds[0], False)
    return fds[0]


def window_size(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal on ``fd``, or None if it is not one."""
    import termios

    try:
        rows, columns, _x, _y = struct.unpack(
            "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
        )
    except OSError:
        return None
    return rows, columns


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode (no echo, no line discipline, no
    signals: Ctrl-C travels as a byte to the container's terminal), restore after."""
    if not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        # EIO: the terminal went away (its emulator closed); nothing to restore.
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def relay(master: int, in_fd: int = 0, out_fd: int = 1) -> None:
    """Copy ``in_fd`` → pty master and master → ``out_fd`` until the container's
    side of the terminal closes."""
    import anyio  # here: vortex.direct imports this module and runs no event loop

    from vortex.streams import FdReceiveStream, FdSendStream

    # Own duplicates: FdReceiveStream switches them to non-blocking mode, and the
    # caller's stdin/stdout must be left blocking (they are shared with the shell).
    from_master = FdReceiveStream(os.dup(master))
    to_master = FdSendStream(os.dup(master))
    out_fd = os.dup(out_fd)
    in_fd_copy = _reopen_nonblocking_copy(in_fd)

    async def pump_input() -> None:
        if in_fd_copy is None:
            return
        source = FdReceiveStream(in_fd_copy)
        try:
            while True:
                await to_master.send(await source.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
        finally:
            await source.aclose()

    try:
        with raw_mode(in_fd):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump_input)
                try:
                    while True:
                        data = await from_master.receive()
                        # The caller's terminal: a blocking write is short and keeps order.
                        _write_all(out_fd, data)
                except (anyio.EndOfStream, OSError):
                    pass
                tg.cancel_scope.cancel()
    finally:
        await from_master.aclose()
        await to_master.aclose()
        os.close(out_fd)


def _reopen_nonblocking_copy(fd: int) -> int | None:
    """A non-blocking fd for reading ``fd`` without changing the shared file status.

    O_NONBLOCK lives on the open file description, shared with the shell that
    started us; reopening /proc/self/fd/N gives a description of our own."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class BlockingRelay:
    """:func:`relay` for a caller without an event loop (vortex.direct): the same
    copying, driven by the caller's ``poll()`` loop.

    The caller polls :meth:`poll_events` with its own fds and hands each ready one
    of ours to :meth:`handle`.  Output to ``out_fd`` is written blocking, as in
    :func:`relay`; input to the container is buffered, and not read further while
    the pty does not take it, so a container that does not read never blocks us.
    """

    def __init__(self, master: int, in_fd: int = 0, out_fd: int = 1) -> None:
        self._master = os.dup(master)
        os.set_blocking(self._master, False)  # our own description: the init closed its
        self._out = out_fd
        self._in = _reopen_nonblocking_copy(in_fd)
        self._pending = b""
        self.closed = False
        """The container's side of the terminal is closed: nothing more will come."""

    def poll_events(self) -> list[tuple[int, int]]:
        if self.closed:
            return []
        events = [(self._master, select.POLLIN | (select.POLLOUT if self._pending else 0))]
        if self._in is not None and not self._pending:
            events.append((self._in, select.POLLIN))
        return events

    def handle(self, fd: int, events: int) -> None:
        if fd == self._master:
            if events & select.POLLOUT:
                self._send_pending()
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._copy_output()
        elif fd == self._in:
            self._read_input()

    def _copy_output(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every process holding the terminal has closed it
            data = b""
        if data:
            _write_all(self._out, data)
        else:
            self.closed = True

    def _read_input(self) -> None:
        assert self._in is not None
        try:
            data = os.read(self._in, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the caller's stdin ended: stop reading it, as relay() does
            os.close(self._in)
            self._in = None
            return
        self._pending += data
        self._send_pending()

    def _send_pending(self) -> None:
        try:
            written = os.write(self._master, self._pending)
        except BlockingIOError:
            return
        except OSError:
            written = len(self._pending)  # the terminal is gone: drop the input
        self._pending = self._pending[written:]

    def close(self) -> None:
        os.close(self._master)
        if self._in is not None:
            os.close(self._in)
            self._in = None
