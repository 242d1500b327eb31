"""The wire format between ``vortex run`` and ``vortex daemon``.

One SOCK_SEQPACKET connection per container, one message per packet, fields
separated by NUL bytes (no argument can contain one: the kernel's argv cannot).
The client's first packet carries its stdin, stdout and stderr as SCM_RIGHTS.

client → daemon::

    RUN \\0 cwd \\0 argv[0] \\0 argv[1] ...     (argv without the program name)
    SIG \\0 signal number                      (a signal the client received)

daemon → client::

    EXIT \\0 status \\0 message               (message: "" or one line for stderr)
    FALLBACK \\0 reason                       (not served: run in-process)

This module imports only ``os``: the client's cold start counts every import.
"""

from __future__ import annotations

import os

SOCKET_ENV = "VORTEX_DAEMON_SOCKET"
"""Overrides the socket path; ``off`` (or empty) means never use a daemon."""

DEFAULT_SOCKET = "/run/vortex/daemon.sock"
MAX_PACKET = 256 * 1024
"""Upper bound of one packet: the whole command line of ``vortex run``."""

RUN, SIG, EXIT, FALLBACK = b"RUN", b"SIG", b"EXIT", b"FALLBACK"


def socket_path() -> str | None:
    """Where the daemon listens, or None when the environment turns it off."""
    value = os.environ.get(SOCKET_ENV, DEFAULT_SOCKET)
    return None if value in ("", "off") else value


def encode(kind: bytes, *fields: str | int) -> bytes:
    return b"\0".join([kind, *(os.fsencode(str(f)) for f in fields)])


def decode(packet: bytes) -> tuple[bytes, list[str]]:
    """``(kind, fields)``; fields are decoded as the file system decodes names."""
    kind, *fields = packet.split(b"\0")
    return kind, [os.fsdecode(f) for f in fields]
