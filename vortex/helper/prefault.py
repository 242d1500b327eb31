"""A waiting spare init copies the memory it shares with the fork helper.

Why: a cloned init shares every private page with the helper, copy-on-write.
CPython writes to each object it touches (reference counts), so the init's
Python, from its request to ``execve``, takes ~400 copy-on-write faults: taken
ahead, a start after a pause is ~0.6 ms faster (the library), a round trip
through ``vortex daemon`` 0.6-1.4 ms (docs/performance.md, eighth session).  A spare
that is idle anyway can take them all ahead: ``MADV_POPULATE_WRITE`` on every
private writable mapping makes the private copies without running any code.

The price is memory and CPU while nothing else runs: the spare then holds its
own copy of the helper's memory (~18 MiB when the helper is a fork of the
Runtime's process, ~10 MiB with ``Runtime(fresh_helper=True)``) and copying it
costs up to ~8 ms of CPU.  Back to back that CPU competes with
the containers (100 against 150 containers/s, measured), which is why the
Runtime asks for it only for a spare cloned while no container runs
(``Runtime(spare_prefault=True)``, which ``vortex daemon`` uses), and why the
spare stops as soon as its request (or end of file) arrives.  Nor for a spare
cloned into a cgroup of its own (cgroup v2): the copies would be charged to the
cgroup its container takes over, and show in that container's memory.peak.
"""

from __future__ import annotations

import contextlib
import errno
import select

from vortex import _linux as L

CHUNK = 32 * 4096
"""Bytes faulted in per call: ~70 µs of copying, so a request that arrives
meanwhile waits at most that long."""


def prefault_until_readable(fd: int) -> None:
    """Populate this process's private writable mappings, a chunk at a time, until
    ``fd`` becomes readable (or all are done, or the kernel lacks the call)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    for start, end in private_writable_ranges():
        for chunk in range(start, end, CHUNK):
            if poller.poll(0):
                return
            try:
                L.populate_write(chunk, min(CHUNK, end - chunk))
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    return  # before Linux 5.14: the faults stay where they were
                break  # unmapped meanwhile (ENOMEM) or not populatable: next mapping


def private_writable_ranges() -> list[tuple[int, int]]:
    """(start, end) of each private writable mapping of this process: anonymous
    memory, ``[heap]`` and the data segments of the interpreter and its libraries.
    Not ``[stack]``: the spare's own code has touched it already."""
    ranges = []
    with contextlib.suppress(OSError), open("/proc/self/maps", "rb") as maps:
        for line in maps:
            fields = line.split()
            if fields[1] != b"rw-p":
                continue
            if len(fields) > 5 and fields[5].startswith(b"[") and fields[5] != b"[heap]":
                continue
            start, end = fields[0].split(b"-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges
