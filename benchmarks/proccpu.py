"""CPU time of a long-lived process, its reaped children and its live ones.

``getrusage(RUSAGE_CHILDREN)`` counts a child only once it is reaped; a fork
helper or a daemon lives for the whole benchmark, so its share is read here
from /proc (clock ticks: averaged over many containers, not per container).
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    # Fields after the command name, which may itself contain spaces and ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def live_children_cpu(pid: int | str = "self") -> float:
    """CPU seconds (user + system) of ``pid``'s live, unreaped children."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                fields = _stat_fields(child)
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def process_cpu(pid: int | str = "self") -> float:
    """CPU seconds of ``pid`` itself, of the children it reaped, and of its live ones."""
    fields = _stat_fields(pid)
    own = sum(int(f) for f in fields[11:15]) / _TICK  # utime, stime, cutime, cstime
    return own + live_children_cpu(pid)
