"""anyio byte streams over raw file descriptors (pipes, pty masters).

anyio has no public stream type for a plain fd, and wrapping pipes in
``anyio.open_process`` objects does not fit processes we did not spawn with it.
These are small: non-blocking I/O plus ``anyio.wait_readable``/``wait_writable``.
"""

from __future__ import annotations

import errno
import os

import anyio
import anyio.abc


class _OwnedFd:
    """An fd that one stream owns, and closes exactly once.

    While a task waits for the fd, :meth:`close` only wakes it, and that task
    closes the fd as its wait ends.  Why: anyio's asyncio backend ends a wait by
    unregistering whatever wait is registered under the fd's *number*; an fd
    closed by another task right away could be reused (a new pipe) and waited
    for before the woken task runs on, and that new wait would lose its
    registration and never wake (vortex/runtime.py's _OomWatcher has the case
    that was seen).
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.closed = False
        self._waiting = False

    async def wait(self, readable: bool) -> None:
        self._waiting = True
        try:
            if readable:
                await anyio.wait_readable(self.fd)
            else:
                await anyio.wait_writable(self.fd)
        finally:
            self._waiting = False
            if self.closed:
                os.close(self.fd)  # close() left it to us

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._waiting:
            anyio.notify_closing(self.fd)  # the waiting task closes it
        else:
            os.close(self.fd)


class FdReceiveStream(anyio.abc.ByteReceiveStream):
    """Reads from an fd it owns; a pty master's EIO (slave closed) counts as EOF."""

    def __init__(self, fd: int) -> None:
        self._fd = _OwnedFd(fd)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._fd.closed:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd.fd, max_bytes)
            except BlockingIOError:
                await self._fd.wait(readable=True)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    raise anyio.EndOfStream from None
                raise
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        self._fd.close()


class FdSendStream(anyio.abc.ByteSendStream):
    """Writes to an fd it owns."""

    def __init__(self, fd: int) -> None:
        self._fd = _OwnedFd(fd)

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._fd.closed:
                raise anyio.ClosedResourceError
            try:
                written = os.write(self._fd.fd, view)
            except BlockingIOError:
                await self._fd.wait(readable=False)
                continue
            except BrokenPipeError:
                raise anyio.BrokenResourceError from None
            view = view[written:]

    async def aclose(self) -> None:
        self._fd.close()


async def read_all(stream: anyio.abc.ByteReceiveStream) -> bytes:
    chunks: list[bytes] = []
    try:
        while True:
            chunks.append(await stream.receive())
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        pass
    return b"".join(chunks)
