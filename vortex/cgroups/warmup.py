"""Pay the first cgroup migration's wait in the background (cgroup v1).

Moving a process into a cgroup takes the kernel's ``cgroup_threadgroup_rwsem``
for writing.  That lock is a percpu rwsem: when nobody took it for writing
recently, the writer first waits for an RCU grace period (its ``rcu_sync``
switches readers to the slow path), and for about one more grace period after
a writer left, the next one does not wait.  Measured on this project's test
machine: the first migration of a process costs 15-27 ms, the ones right after
it 0.2 ms.  It is the largest single cost of a cold ``vortex run`` on cgroup
v1, and runc pays it too.

cgroup v2 places the init with ``CLONE_INTO_CGROUP``, which only takes the
lock for reading.  On v1 the init has to be moved, so ``vortex run`` starts an
:class:`AttachWarmup` as soon as it knows it will run a container: a thread
moves this process into the cgroup it already is in (a migration that
changes nothing) and repeats that every few milliseconds.  The grace period
then passes while the main thread imports and parses, and when the init is
moved, the lock is still fast.  :func:`stop` ends the thread before the init
is cloned (an init is never cloned from a threaded process).

A Runtime does the same around each start (from the top of ``create`` to the
attach), and ``vortex daemon`` from the moment it accepts a client, unless a
migration happened so recently that the lock is still fast: back to back
starts pay nothing for it.

Only ``_thread``, ``os`` and ``time`` are imported: this runs before anything else.
"""

from __future__ import annotations

import _thread
import os
import time

REPEAT_EVERY = 0.003
"""Seconds between the no-op migrations: well inside one grace period (10+ ms)."""

RECENT = 0.008
"""Seconds after a migration during which the lock is surely still fast (the
grace periods measured were 10 ms and more): no warm-up is started then."""

MAX_RUN = 0.5
"""Seconds after which the thread ends on its own, when nothing stopped it (a
request that turned out not to start a container)."""

STOP_POLLS = 10000
"""Bound on the checks that the ended thread is gone (each one a sched_yield)."""

_running: AttachWarmup | None = None
_last_migration = -1.0
_UNKNOWN = ""
_procs_file: str | None = _UNKNOWN
"""This process's own v1 memory ``cgroup.procs`` (None: not v1), read once."""


class AttachWarmup:
    def __init__(self, procs_file: str) -> None:
        self._procs_file = procs_file
        self._stop = _thread.allocate_lock()
        self._stop.acquire()  # released by stop(): the thread's sleep ends at once
        self._done = _thread.allocate_lock()
        self._done.acquire()  # released by the thread when it ends
        self.migrations = 0
        self.finished = False
        self._thread_id = 0

    def _run(self) -> None:
        self._thread_id = _thread.get_native_id()
        try:
            fd = os.open(self._procs_file, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            self._done.release()
            return
        try:
            pid = str(os.getpid()).encode()
            give_up = time.monotonic() + MAX_RUN
            while time.monotonic() < give_up:
                os.write(fd, pid)
                mark_migrated()
                self.migrations += 1
                if self._stop.acquire(timeout=REPEAT_EVERY):
                    break
        except OSError:
            pass  # not allowed after all: the attach simply waits, as without us
        finally:
            os.close(fd)
            self.finished = True
            self._done.release()

    def stop(self) -> None:
        """End the thread and wait until the kernel has let it go: at most the grace
        period it may be waiting in, then the few microseconds of its exit."""
        self._stop.release()
        self._done.acquire()
        task = f"/proc/self/task/{self._thread_id}"
        for _ in range(STOP_POLLS):
            if not os.path.exists(task):
                break
            os.sched_yield()


def start() -> None:
    """Start the warm-up for this process if it runs as root on cgroup v1 and no
    migration happened in the last :data:`RECENT` seconds (else do nothing).  At
    most one runs; :func:`stop` ends it."""
    global _running, _procs_file
    if _running is not None:
        if not _running.finished:
            return
        stop()  # it gave up (MAX_RUN): collect it
    if time.monotonic() - _last_migration < RECENT:
        return
    if _procs_file == _UNKNOWN:
        _procs_file = _own_v1_memory_procs() if os.geteuid() == 0 else None
    if _procs_file is None:
        return
    _running = AttachWarmup(_procs_file)
    _thread.start_new_thread(_running._run, ())


def mark_migrated() -> None:
    """Note that a migration just happened (the lock is fast for a while)."""
    global _last_migration
    _last_migration = time.monotonic()


def stop() -> None:
    """End the warm-up, if one runs.  Call it before cloning."""
    global _running
    if _running is not None:
        warmup, _running = _running, None
        warmup.stop()


def _own_v1_memory_procs(root: str = "/sys/fs/cgroup") -> str | None:
    """``cgroup.procs`` of the v1 memory cgroup this process is in, or None (v2)."""
    from vortex.cgroups._common import own_cgroups

    path = own_cgroups().get("memory")
    if path is None:
        return None
    procs_file = f"{root}/memory{path.rstrip('/')}/cgroup.procs"
    return procs_file if os.path.exists(procs_file) else None
