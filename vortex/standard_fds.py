"""Stdin, stdout and stderr that are closed get /dev/null (as OpenSSH and most
daemons do).

Otherwise the next file Vortex opens takes the number of the closed one, and a
container told to inherit it would read from the fork helper's socket or one
of our pipes.  Called by the CLI first thing, and by :class:`vortex.Runtime`
and :func:`vortex.direct.run` before they open anything.  (What a program opened
before, its event loop's own descriptors for one, is its own business: a
program that may start with them closed should do the same first.)  Only
``os``: it runs on every cold start.
"""

from __future__ import annotations

import os


def open_standard_fds() -> None:
    """Open /dev/null on each of 0, 1 and 2 that is closed; leave the others alone."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            # The lowest free number: this one, since the lower ones are open.
            os.open(os.devnull, os.O_RDWR)
