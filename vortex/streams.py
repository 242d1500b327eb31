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


class FdReceiveStream(anyio.abc.ByteReceiveStream):
    """Reads from an fd it owns; a pty master's EIO (slave closed) counts as EOF."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    raise anyio.EndOfStream from None
                raise
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._fd)
            os.close(self._fd)


class FdSendStream(anyio.abc.ByteSendStream):
    """Writes to an fd it owns."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except BrokenPipeError:
                raise anyio.BrokenResourceError from None
            view = view[written:]

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._fd)
            os.close(self._fd)


async def read_all(stream: anyio.abc.ByteReceiveStream) -> bytes:
    chunks: list[bytes] = []
    try:
        while True:
            chunks.append(await stream.receive())
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        pass
    return b"".join(chunks)
