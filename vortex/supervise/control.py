"""The client side of the control socket: one JSON request, JSON-line replies.

Synchronous on purpose: the client commands are short programs with nothing
else to do, and this keeps their start-up cheap (no anyio import).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from vortex.errors import VortexError

DEFAULT_SOCKET = "/run/vortex/supervise/control.sock"


def default_socket() -> str:
    return os.environ.get("VORTEX_SUPERVISE_SOCKET", DEFAULT_SOCKET)


class NoSupervisorError(VortexError):
    """Nothing answers on the control socket."""


class ControlError(VortexError):
    """The supervisor refused a request (unknown name, ...)."""


def request(
    path: str, message: dict[str, Any], timeout: float | None = None
) -> Iterator[dict[str, Any]]:
    """Send ``message``; yield each reply line (the first has ``ok``)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoSupervisorError(
                f"no supervisor is running on {path} (start one with 'vortex supervise CONFIG')"
            ) from None
        except PermissionError:
            raise NoSupervisorError(f"permission denied on {path}: run as root") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        with sock.makefile("rb") as replies:
            first = True
            for raw in replies:
                reply = json.loads(raw)
                if first and not reply.get("ok", False):
                    raise ControlError(str(reply.get("error", "request failed")))
                first = False
                yield reply
            if first:
                raise ControlError("the supervisor closed the connection without answering")
    finally:
        sock.close()


def call(path: str, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """A request with a single reply."""
    for reply in request(path, message, timeout):
        return reply
    raise ControlError("no reply")  # pragma: no cover - request() raises first
