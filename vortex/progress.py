"""Progress reporting for long byte transfers (downloads, extractions, pulls).

A :class:`Progress` is a context manager fed with :meth:`Progress.update`::

    with Progress("Downloading alpine.tar.gz", total=length) as progress:
        for chunk in chunks:
            progress.update(len(chunk))

On a terminal it redraws one line in place: a bar, bytes done of total,
percent and rate.  Elsewhere (CI logs, pipes, files) redrawing would leave a
mess of carriage returns, so it prints a plain line at every 10% instead, or
every few seconds when the total is unknown, and one summary line at the end.

It is stdlib-only and imports nothing heavy because it sits on the CLI's
cold-start path.  It is not thread-safe: one thread feeds one reporter.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TextIO

__all__ = ["Progress", "format_bytes", "format_rate"]

_REDRAW_INTERVAL = 0.1
"""Seconds between two redraws of the terminal bar: enough to look live, few
enough writes not to slow down a fast transfer."""

_BAR_MAX = 40
_BAR_PREFERRED = 20
_BAR_MIN = 10
_LABEL_MIN = 16
"""Widths in columns: a long label is cut down to _LABEL_MIN before the bar
shrinks below _BAR_PREFERRED; below _BAR_MIN the bar is left out."""

_LINE_INTERVAL = 5.0
"""Seconds between two plain lines when the total is unknown."""


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``532 B``, ``1.2 KiB``, ``3.4 MiB``."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def format_rate(bytes_per_second: float) -> str:
    """A transfer rate such as ``2.3 MiB/s``."""
    return f"{format_bytes(bytes_per_second)}/s"


class Progress:
    """Reports the progress of one transfer of ``total`` bytes (``None``: unknown).

    ``stream`` defaults to ``sys.stderr`` as it is when the reporter is made (so
    pytest's capture and redirections apply).  ``tty`` overrides the terminal
    detection; ``enabled=False`` makes every call a no-op so callers need no
    branches of their own.  ``clock`` exists for tests.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0 or None, not {total}")
        self.label = label
        self.total = total
        """Total bytes; may be set later, e.g. once a response's length is known."""
        self.done = 0
        self.enabled = enabled
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._isatty() if tty is None else tty
        self._clock = clock
        self._start = clock()
        self._last_draw = -1.0e9
        self._last_line = self._start
        self._next_tenth = 1
        self._drawn = False
        self._finished = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(ok=exc_type is None)

    @property
    def elapsed(self) -> float:
        """Seconds since the reporter was made."""
        return max(self._clock() - self._start, 0.0)

    @property
    def rate(self) -> float:
        """Average bytes per second so far (0 before any time has passed)."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n_bytes: int) -> None:
        """Count ``n_bytes`` more bytes as done and report if it is time to."""
        if n_bytes < 0:
            raise ValueError(f"n_bytes must be >= 0, not {n_bytes}")
        self.done += n_bytes
        if not self.enabled or self._finished:
            return
        if self._tty:
            now = self._clock()
            if now - self._last_draw >= _REDRAW_INTERVAL:
                self._last_draw = now
                self._draw_bar()
        elif self.total:
            tenth = min(self.done * 10 // self.total, 10)
            # One line per crossed 10% step, but only the last step of a big
            # jump: a single huge update must not print a burst of lines.  100%
            # is left to the summary line of finish().
            if tenth >= self._next_tenth and tenth < 10:
                self._next_tenth = tenth + 1
                self._line(
                    f"{tenth * 10}% ({format_bytes(self.done)} of "
                    f"{format_bytes(self.total)}, {format_rate(self.rate)})"
                )
        else:
            now = self._clock()
            if now - self._last_line >= _LINE_INTERVAL:
                self._last_line = now
                self._line(f"{format_bytes(self.done)} ({format_rate(self.rate)})")

    def finish(self, ok: bool = True) -> None:
        """End the report: a final bar or summary line (once; ``__exit__`` calls it)."""
        if self._finished:
            return
        self._finished = True
        if not self.enabled:
            return
        if self._tty:
            if ok:
                self._draw_bar()
            if self._drawn:
                # Leave the cursor on a fresh line so that what follows (an
                # error message, the shell prompt) is not drawn over the bar.
                self._write("\n")
            return
        if ok:
            self._line(
                f"done, {format_bytes(self.done)} in {self.elapsed:.1f}s ({format_rate(self.rate)})"
            )
        else:
            self._line(f"failed after {format_bytes(self.done)}")

    def _isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (AttributeError, ValueError):
            return False

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            return 80

    def _draw_bar(self) -> None:
        # Fixed-width fields, so that the bar keeps its length from frame to
        # frame instead of jittering as the numbers grow and shrink.
        rate = f"{format_rate(self.rate):>12}"
        done = f"{format_bytes(self.done):>10}"
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            stats = f" {done}/{format_bytes(self.total)} {fraction * 100:3.0f}% {rate}"
        else:
            fraction = None
            stats = f" {done} {rate}"
        # Keep one column free: writing into the last column makes some
        # terminals wrap, and the next "\r" would then redraw a line too low.
        width = self._width() - 1
        label = self.label
        bar = ""
        if fraction is not None:
            room = width - len(stats) - 3  # the bar's " [" and "]"
            bar_width = min(_BAR_MAX, room - len(label))
            if bar_width < _BAR_PREFERRED:
                # A long label gives way to the bar, down to a stump of itself.
                bar_width = min(_BAR_PREFERRED, room - min(len(label), _LABEL_MIN))
            if bar_width >= _BAR_MIN:
                filled = int(fraction * bar_width)
                bar = " [" + "#" * filled + "-" * (bar_width - filled) + "]"
        room = width - len(bar) - len(stats)
        if len(label) > room:
            # ASCII "...": stderr may not be able to encode an ellipsis.
            label = label[: room - 3] + "..." if room > 3 else ""
        # "\x1b[K" clears what a longer previous line left to the right.
        self._write(f"\r{label}{bar}{stats}\x1b[K")
        self._drawn = True

    def _line(self, text: str) -> None:
        self._write(f"{self.label}: {text}\n")

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()
