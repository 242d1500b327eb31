"""``vortex status``: a client of the supervisor's control socket (see clients.py)."""

from vortex.supervise.clients import status_configure as configure_parser
from vortex.supervise.clients import status_main as main

__all__ = ["configure_parser", "main"]
