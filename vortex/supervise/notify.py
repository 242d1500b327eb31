"""systemd readiness notification (the ``NOTIFY_SOCKET`` protocol, sd_notify(3)).

No dependency: one datagram on the unix socket named by ``$NOTIFY_SOCKET``
(a path, or an abstract name when it starts with ``@``).
"""

from __future__ import annotations

import os
import socket


def sd_notify(message: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``READY=1``); False when not run under a notify socket."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True
