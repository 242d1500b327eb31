"""The state directory: one small JSON file per live container.

It records which Runtime process owns each container, so that when a Runtime
dies hard (SIGKILL, OOM, power cut of the process) the next Runtime can find
what it left: its containers died with it (parent-death signal), but their
cgroups and state files remain.  :func:`sweep_stale` removes them.  The same
files are the seed of ``vortex ps`` and the OCI ``state`` verb.

Files are written atomically (write to a temporary name, then rename), so a
reader never sees half a file.

``userns/`` beside ``containers/`` holds the ``--userns auto`` id blocks
(:mod:`vortex.userns`).  They follow the container records: :meth:`StateDir.forget`
releases a container's block and :meth:`StateDir.sweep_stale` those of dead Runtimes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable

from vortex import records
from vortex.errors import StateError
from vortex.userns import IdBlocks, entries_named

DEFAULT_STATE_DIR = "/run/vortex"


@records.record
class ContainerRecord:
    id: str
    name: str
    owner_pid: int
    owner_start_time: int
    """Start time of the owner in clock ticks since boot (/proc/PID/stat field 22):
    together with the PID it identifies the process even after PID reuse."""
    cgroup: str
    cgroup_parent: str = "vortex"
    """The parent the cgroup was created under: Runtimes may use different ones."""


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(after_name[19])  # fields 3.. follow the name; field 22 is index 19


class StateDir:
    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> None:
        self.path = os.path.join(path, "containers")
        """The directory of the container records (a str: no pathlib on the cold path)."""
        self.owner_pid = os.getpid()
        start = process_start_time(self.owner_pid)
        assert start is not None
        self.owner_start_time = start
        self.userns = IdBlocks(os.path.join(path, "userns"), self.owner_pid, start, _is_alive)
        """The ``--userns auto`` id blocks of this state directory's containers."""

    def _ensure(self) -> None:
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the state directory {self.path}: {exc.strerror}; "
                "pass another one with state_dir="
            ) from exc

    def record(self, container_id: str, name: str, cgroup: str, cgroup_parent: str) -> None:
        self._ensure()
        record = ContainerRecord(
            container_id, name, self.owner_pid, self.owner_start_time, cgroup, cgroup_parent
        )
        temporary = os.path.join(self.path, f".{container_id}.tmp")
        with open(temporary, "w") as f:
            f.write(json.dumps(records.as_dict(record)))
        os.replace(temporary, os.path.join(self.path, f"{container_id}.json"))

    def forget(self, container_id: str) -> None:
        """The container is gone: drop its record, and free its id block if it had one."""
        self.userns.release(container_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, f"{container_id}.json"))

    def records(self) -> list[ContainerRecord]:
        found = []
        for file in entries_named(self.path, suffix=".json"):
            try:
                with open(file) as f:
                    found.append(ContainerRecord(**json.loads(f.read())))
            except (OSError, ValueError, TypeError):
                continue  # unreadable or half-written by a crashed writer: not ours to judge
        return found

    def sweep_stale(self, remove_cgroup: Callable[[ContainerRecord], None]) -> list[str]:
        """Remove what dead Runtimes left behind; returns the container ids swept."""
        swept = []
        for record in self.records():
            if _is_alive(record.owner_pid, record.owner_start_time):
                continue  # its Runtime is alive (maybe it is us)
            remove_cgroup(record)
            self.forget(record.id)
            swept.append(record.id)
        for leftover in entries_named(self.path, prefix=".", suffix=".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        # Blocks whose record was already gone (a crash between the two removals).
        swept.extend(i for i in self.userns.sweep_stale() if i not in swept)
        return swept


def _is_alive(pid: int, start_time: int) -> bool:
    return process_start_time(pid) == start_time
