"""Relaying a container's pseudo-terminal to the caller's terminal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import termios
import tty
from collections.abc import Iterator

import anyio

from vortex.streams import FdReceiveStream, FdSendStream


def window_size(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal on ``fd``, or None if it is not one."""
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
