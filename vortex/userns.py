"""Blocks of host ids for ``--userns auto``: a separate range per running container.

Blocks of :data:`BLOCK_SIZE` ids are cut out of a pool: as root, the
``vortex`` (else ``root``) entry of /etc/subuid and /etc/subgid, else
1000000000:67108864 (1024 blocks); rootless, the caller's own subordinate ranges.  Block *k* of
the uid pool always goes with block *k* of the gid pool.

Each allocation is a small JSON file ``STATE/userns/CONTAINER_ID.json`` that
holds the host ranges and the Runtime that owns the container (PID and start
time, like the container records of :mod:`vortex.state`).  Allocating takes an
exclusive ``flock`` on ``STATE/userns/.lock`` around "read every allocation,
pick the first free block, write ours", so two Runtimes (two ``vortex run``
processes, a supervisor and a CLI) never hand out the same block.  A block is
taken when its range overlaps any recorded range, so allocations made from
another pool (the subid files changed) are still respected.

Releasing is an unlink, without the lock: an allocator that still sees the
file only skips a block that has just become free.  Allocations whose owner
is dead are removed under the lock by the next allocator and by
:meth:`vortex.state.StateDir.sweep_stale`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence

from vortex.errors import IdMappingError, StateError
from vortex.records import record

BLOCK_SIZE = 65536
"""Ids per container: the whole POSIX range a distribution expects (0 to nobody 65534)."""

IdRange = tuple[int, int]
"""(first host id, count)."""


@record
class Allocation:
    container_id: str
    owner_pid: int
    owner_start_time: int
    uid: IdRange
    gid: IdRange


def _overlaps(a: IdRange, b: IdRange) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def _blocks(pool: Sequence[IdRange], size: int) -> list[IdRange]:
    return [(start + k * size, size) for start, count in pool for k in range(max(count, 0) // size)]


class IdBlocks:
    """The ``--userns auto`` allocations of one state directory."""

    def __init__(
        self,
        path: str,
        owner_pid: int,
        owner_start_time: int,
        alive: Callable[[int, int], bool],
    ) -> None:
        self.path = path
        self.owner_pid = owner_pid
        self.owner_start_time = owner_start_time
        self._alive = alive

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            lock = os.path.join(self.path, ".lock")
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(
                f"cannot use the id allocation directory {self.path}: {exc.strerror}"
            ) from exc
        try:
            # Holders never wait for anything while they hold it: a few file operations.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also releases the lock

    def allocations(self) -> list[Allocation]:
        found = []
        for file in entries_named(self.path, suffix=".json"):
            try:
                with open(file) as f:
                    data = json.loads(f.read())
                found.append(
                    Allocation(
                        data["container_id"],
                        data["owner_pid"],
                        data["owner_start_time"],
                        (data["uid"][0], data["uid"][1]),
                        (data["gid"][0], data["gid"][1]),
                    )
                )
            except (OSError, ValueError, TypeError, KeyError, IndexError):
                continue  # gone meanwhile (released), or not ours to judge
        return found

    def _live_allocations(self) -> tuple[list[Allocation], list[str]]:
        """Under the lock: the allocations whose Runtime lives; the others are removed."""
        live, swept = [], []
        for allocation in self.allocations():
            if self._alive(allocation.owner_pid, allocation.owner_start_time):
                live.append(allocation)
            else:
                self.release(allocation.container_id)
                swept.append(allocation.container_id)
        return live, swept

    def allocate(
        self,
        container_id: str,
        uid_pool: Sequence[IdRange],
        gid_pool: Sequence[IdRange],
        *,
        pool: str,
        remedy: str = "enlarge the pool",
        size: int = BLOCK_SIZE,
    ) -> tuple[IdRange, IdRange]:
        """Record and return the first free (uid block, gid block) of the pools.

        ``pool`` describes the pools and ``remedy`` how to enlarge them, for the
        error raised when no block is free.
        """
        uid_blocks = _blocks(uid_pool, size)
        gid_blocks = _blocks(gid_pool, size)
        candidates = list(zip(uid_blocks, gid_blocks, strict=False))
        if not candidates:
            total = min(sum(c for _s, c in uid_pool), sum(c for _s, c in gid_pool))
            raise IdMappingError(
                f"--userns auto: {pool} holds {total} ids, fewer than one block of {size}; {remedy}"
            )
        with self._locked():
            live, _swept = self._live_allocations()
            for uid_block, gid_block in candidates:
                if any(_overlaps(uid_block, a.uid) or _overlaps(gid_block, a.gid) for a in live):
                    continue
                owner = (self.owner_pid, self.owner_start_time)
                self._write(Allocation(container_id, *owner, uid_block, gid_block))
                return uid_block, gid_block
        in_use = sum(
            any(_overlaps(u, a.uid) or _overlaps(g, a.gid) for a in live) for u, g in candidates
        )
        raise IdMappingError(
            f"--userns auto: no free block of {size} ids in {pool}: {in_use} of "
            f"{len(candidates)} in use by running containers; stop one, or {remedy}"
        )

    def _write(self, allocation: Allocation) -> None:
        data = {
            "container_id": allocation.container_id,
            "owner_pid": allocation.owner_pid,
            "owner_start_time": allocation.owner_start_time,
            "uid": list(allocation.uid),
            "gid": list(allocation.gid),
        }
        temporary = os.path.join(self.path, f".{allocation.container_id}.tmp")
        try:
            with open(temporary, "w") as f:
                f.write(json.dumps(data))
            os.replace(temporary, os.path.join(self.path, f"{allocation.container_id}.json"))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise StateError(f"cannot record an id allocation in {self.path}: {exc}") from exc

    def release(self, container_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, f"{container_id}.json"))

    def sweep_stale(self) -> list[str]:
        """Remove the allocations of dead Runtimes; returns their container ids."""
        if not os.path.isdir(self.path):
            return []
        with self._locked():
            _live, swept = self._live_allocations()
            # Under the lock no write is in progress: a temporary file is a crash's.
            for leftover in entries_named(self.path, prefix=".", suffix=".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
        return swept


def entries_named(directory: str, *, suffix: str, prefix: str = "") -> list[str]:
    """The paths of the entries of ``directory`` named ``PREFIX*SUFFIX`` (as
    ``pathlib.Path.glob`` matches them: dot files included); none if it cannot be
    listed. Not pathlib: it is ~4 ms of a cold ``vortex run``."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    shortest = len(prefix) + len(suffix)
    return [
        os.path.join(directory, name)
        for name in names
        if len(name) >= shortest and name.startswith(prefix) and name.endswith(suffix)
    ]
