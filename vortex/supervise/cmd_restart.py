"""``vortex restart``: a client of the supervisor's control socket (see clients.py)."""

from vortex.supervise.clients import name_configure as configure_parser
from vortex.supervise.clients import restart_main as main

__all__ = ["configure_parser", "main"]
