"""Per-container log files in the CRI format, with a size cap and rotation.

Each line is ``<RFC 3339 nano UTC> <stream> <P|F> <text>``, the format the
kubelet writes (``F``: a full line, ``P``: a partial line cut at
:data:`MAX_LINE` bytes or at EOF without a newline).  When a file would grow
past ``max_size`` it is rotated: ``NAME.log`` → ``NAME.log.1`` → ... and the
oldest beyond ``max_files`` is deleted.

Writes are small appends to a local file done inside the event loop; reading
the container's pipes is non-blocking (``Stdio.STREAM``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vortex.supervise.config import LogSettings

MAX_LINE = 16 * 1024


def cri_timestamp(now: float | None = None) -> str:
    now = time.time() if now is None else now
    seconds = int(now)
    nanos = int((now - seconds) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def parse_cri_line(line: str) -> tuple[str, str, str, str] | None:
    """``(timestamp, stream, tag, text)`` of one CRI log line, or None."""
    parts = line.rstrip("\n").split(" ", 3)
    if len(parts) < 3:
        return None
    if len(parts) == 3:
        parts.append("")
    return parts[0], parts[1], parts[2], parts[3]


class LogFile:
    """The log of one container; survives its restarts."""

    def __init__(self, directory: Path, name: str, settings: LogSettings) -> None:
        self.path = directory / f"{name}.log"
        self.name = name
        self.settings = settings
        self._fd: int | None = None
        self._size = 0
        self.listeners: set[Callable[[str], None]] = set()
        """Called with every line written (for ``vortex logs -f``)."""

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def write(self, stream: str, text: bytes, partial: bool = False) -> None:
        decoded = text.decode("utf-8", errors="replace")
        line = f"{cri_timestamp()} {stream} {'P' if partial else 'F'} {decoded}\n"
        data = line.encode()
        if self._size and self._size + len(data) > self.settings.max_size:
            self.rotate()
        fd = self._open()
        os.write(fd, data)
        self._size += len(data)
        if self.settings.echo:
            with contextlib.suppress(OSError, ValueError):
                out = sys.stdout if stream == "stdout" else sys.stderr
                out.write(f"{self.name} | {decoded}\n")
                out.flush()
        for listener in list(self.listeners):
            listener(line)

    def rotate(self) -> None:
        self.close()
        keep = self.settings.max_files
        for index in range(keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if index == keep - 1:
                with contextlib.suppress(FileNotFoundError):
                    older.unlink()
            newer = self.path.with_name(
                self.path.name if index == 1 else f"{self.path.name}.{index - 1}"
            )
            with contextlib.suppress(FileNotFoundError):
                os.replace(newer, older)
        if keep == 1:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._size = 0

    def files(self) -> list[Path]:
        """Existing files, oldest first."""
        rotated = [
            self.path.with_name(f"{self.path.name}.{i}")
            for i in range(self.settings.max_files - 1, 0, -1)
        ]
        return [p for p in [*rotated, self.path] if p.exists()]

    def tail(self, count: int | None) -> list[str]:
        """The last ``count`` lines (all with None) across the rotated files."""
        lines: list[str] = []
        for file in self.files():
            with contextlib.suppress(OSError):
                lines.extend(file.read_text(encoding="utf-8", errors="replace").splitlines(True))
        if count is not None:
            lines = lines[-count:] if count > 0 else []
        return lines

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LineSplitter:
    """Turns chunks read from a pipe into CRI lines on a :class:`LogFile`."""

    def __init__(self, log: LogFile, stream: str) -> None:
        self.log = log
        self.stream = stream
        self._buffer = b""

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            while len(line) > MAX_LINE:
                self.log.write(self.stream, line[:MAX_LINE], partial=True)
                line = line[MAX_LINE:]
            self.log.write(self.stream, line)
        while len(self._buffer) > MAX_LINE:
            self.log.write(self.stream, self._buffer[:MAX_LINE], partial=True)
            self._buffer = self._buffer[MAX_LINE:]

    def flush(self) -> None:
        if self._buffer:
            self.log.write(self.stream, self._buffer, partial=True)
            self._buffer = b""
