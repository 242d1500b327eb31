"""Logging through structlog, configured lazily.

Vortex emits structured events (``container.created``, ``container.exited``,
...).  structlog costs ~50 ms to import, which would be a large share of a
cold ``vortex run``; events below the threshold are therefore dropped before
structlog is ever imported, and structlog is configured on the first event
that passes.

Output: a human-readable console rendering when the stream is a terminal,
JSON lines otherwise (or as chosen with ``format``).  The library never
configures structlog on import; :func:`configure_logging` is called by the
CLI, or by a program that wants Vortex's events.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any, Literal, TextIO

    LogFormat = Literal["auto", "console", "json"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

_threshold = LEVELS["warning"]
_format: LogFormat = "auto"
_stream: TextIO | None = None
_logger: Any = None


def configure_logging(
    level: str = "warning", format: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Set Vortex's event threshold and rendering (``format``: auto, console or json)."""
    global _threshold, _format, _stream, _logger
    if level not in LEVELS:
        from vortex.errors import SpecError

        raise SpecError(f"log level {level!r} is unknown: use one of {', '.join(LEVELS)}")
    _threshold = LEVELS[level]
    _format = format
    _stream = stream
    _logger = None  # rebuilt on the next event


def enabled(level: str) -> bool:
    return LEVELS[level] >= _threshold


def emit(level: str, event: str, **fields: Any) -> None:
    """Log ``event`` with ``fields`` if ``level`` passes the threshold."""
    if LEVELS[level] < _threshold:
        return
    getattr(_get_logger(), level)(event, **fields)


def _get_logger() -> Any:
    global _logger
    if _logger is None:
        import structlog

        stream = _stream or sys.stderr
        use_json = _format == "json" or (_format == "auto" and not stream.isatty())
        renderer: list[Any] = (
            [
                structlog.processors.ExceptionRenderer(
                    # Frame locals could hold a container's environment (secrets).
                    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
                ),
                structlog.processors.JSONRenderer(),
            ]
            if use_json
            else [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
        )
        processors: list[Any] = [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderer,
        ]
        _logger = structlog.wrap_logger(
            structlog.WriteLogger(stream),
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(_threshold),
        ).bind(logger="vortex")
    return _logger
