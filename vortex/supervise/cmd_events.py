"""``vortex events``: a client of the supervisor's control socket (see clients.py)."""

from vortex.supervise.clients import events_configure as configure_parser
from vortex.supervise.clients import events_main as main

__all__ = ["configure_parser", "main"]
