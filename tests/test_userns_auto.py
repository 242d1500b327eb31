"""``--userns auto``: a block of 65536 host ids of its own per running container.

The CLI cases run ``vortex`` in a private mount namespace where a temporary file
is bound over /etc/subuid and /etc/subgid, so the pool is known (two blocks
from POOL_FIRST) and the host's files are never touched.  Allocations go to
the default state directory, /run/vortex/userns, like any ``vortex run``'s;
``no_leaks`` checks that none is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VORTEX, Spawn, reachable_tmpdir, userns_allocations
from vortex.errors import IdMappingError
from vortex.state import StateDir
from vortex.userns import BLOCK_SIZE

POOL_FIRST = 400000
"""Far from 100000, the default pool other tests (and users) may be drawing from."""
ALLOCATIONS = Path("/run/vortex/userns")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)"),
]


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A busybox rootfs the containers' unprivileged ids can reach, and the pool files."""
    from vortex.rootfs.busybox import build_busybox_rootfs

    with reachable_tmpdir("vortex-userns-auto-") as path:
        build_busybox_rootfs(path / "rootfs")
        for name, count in (("two-blocks", 2 * BLOCK_SIZE), ("tiny", 1000)):
            (path / name).write_text(f"someone:100000:65536\nvortex:{POOL_FIRST}:{count}\n")
        yield path


needs_subid_files = pytest.mark.skipif(
    not (os.path.isfile("/etc/subuid") and os.path.isfile("/etc/subgid")),
    reason="needs /etc/subuid and /etc/subgid to bind a test pool over",
)

# In a private mount namespace, the pool file is bound over both subid files.
_WITH_POOL = 'mount --bind "$1" /etc/subuid && mount --bind "$1" /etc/subgid && shift && exec "$@"'


def with_pool(pool: Path, *command: str) -> list[str]:
    """``command`` run with ``pool`` as /etc/subuid and /etc/subgid.  unshare and sh
    exec, so the process started is ``command`` itself (the Runtime)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", _WITH_POOL, "sh",
            str(pool), *command]  # fmt: skip


def vortex_with_pool(pool: Path, *args: str) -> list[str]:
    return with_pool(pool, *VORTEX, *args)


def run_with_pool(pool: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        vortex_with_pool(pool, *args), capture_output=True, timeout=60, check=False
    )


def start_sleeper(spawn: Spawn, base: Path, marker: int) -> tuple[subprocess.Popen[bytes], int]:
    """A ``--userns auto`` container running ``sleep MARKER``; its host PID."""
    proc = spawn(
        vortex_with_pool(base / "two-blocks", "run", "--userns", "auto", str(base / "rootfs"),
                         "/bin/sleep", str(marker)),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    return proc, find_pid(proc, f"/bin/sleep\0{marker}\0".encode())


def find_pid(proc: subprocess.Popen[bytes], cmdline: bytes) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if Path(f"/proc/{entry}/cmdline").read_bytes() == cmdline:
                        return int(entry)
                except OSError:
                    continue
        if proc.poll() is not None:
            raise AssertionError(f"vortex exited early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"no process {cmdline!r}")


def host_range(pid: int, name: str = "uid_map") -> tuple[int, int]:
    (line,) = Path(f"/proc/{pid}/{name}").read_text().splitlines()
    inside, outside, count = map(int, line.split())
    assert inside == 0
    return outside, count


def pool_allocations() -> dict[str, tuple[int, int]]:
    """Our pool's allocations (other tests may hold blocks of other pools meanwhile)."""
    found = {}
    for name in userns_allocations():
        try:
            data = json.loads((ALLOCATIONS / name).read_text())
        except OSError:
            continue
        if POOL_FIRST <= data["uid"][0] < POOL_FIRST + 2 * BLOCK_SIZE:
            found[name] = (data["uid"][0], data["uid"][1])
    return found


def stop(proc: subprocess.Popen[bytes], pid: int) -> None:
    """SIGKILL the container's PID 1 from the host; its Runtime then exits 137."""
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == 137


@needs_subid_files
def test_running_containers_get_disjoint_blocks_which_exit_frees(base: Path, spawn: Spawn) -> None:
    first, first_pid = start_sleeper(spawn, base, 7700001)
    second, second_pid = start_sleeper(spawn, base, 7700002)
    # Read from the host: each container has a block of its own, uids and gids alike.
    ranges = {host_range(first_pid), host_range(second_pid)}
    assert ranges == {(POOL_FIRST, BLOCK_SIZE), (POOL_FIRST + BLOCK_SIZE, BLOCK_SIZE)}
    assert host_range(first_pid, "gid_map") == host_range(first_pid)
    assert host_range(second_pid, "gid_map") == host_range(second_pid)
    assert sorted(pool_allocations().values()) == sorted(ranges)

    # The pool is exhausted: one line, exit 125, no record and no block left behind.
    records = set(os.listdir("/run/vortex/containers"))
    third = run_with_pool(base / "two-blocks", "run", "--userns", "auto", str(base / "rootfs"),
                          "/bin/true")  # fmt: skip
    assert third.returncode == 125
    (line,) = third.stderr.decode().splitlines()
    assert "no free block of 65536 ids in the pool of ids 400000-531071" in line
    assert "2 of 2 in use" in line and "/etc/subuid" in line
    assert set(os.listdir("/run/vortex/containers")) <= records
    assert len(pool_allocations()) == 2

    # When the first exits its block is free again: the next container gets it.
    stop(first, first_pid)
    freed = host_range(second_pid) != (POOL_FIRST, BLOCK_SIZE)
    fourth = run_with_pool(base / "two-blocks", "run", "--userns", "auto", str(base / "rootfs"),
                           "/bin/cat", "/proc/self/uid_map")  # fmt: skip
    assert fourth.returncode == 0, fourth.stderr
    expected = POOL_FIRST if freed else POOL_FIRST + BLOCK_SIZE
    assert fourth.stdout.split() == [b"0", str(expected).encode(), b"65536"]
    stop(second, second_pid)
    assert pool_allocations() == {}


_LIBRARY_RUNTIME = """
import sys
from pathlib import Path
import anyio
import vortex
async def main() -> None:
    async with vortex.Runtime(state_dir=sys.argv[1], entry_points=False) as runtime:
        await runtime.run(vortex.ContainerSpec(
            rootfs=Path(sys.argv[2]), command=["/bin/sleep", sys.argv[3]],
            security=vortex.SecurityOptions(userns="auto"),
        ))
anyio.run(main)
"""


@needs_subid_files
def test_a_killed_runtimes_block_is_swept_by_the_next(
    base: Path, spawn: Spawn, tmp_path: Path
) -> None:
    # A state directory of its own: any Runtime started meanwhile on this machine
    # would sweep the dead one's block from /run/vortex before we could look.
    marker = "7700003"
    command = with_pool(base / "two-blocks", sys.executable, "-c", _LIBRARY_RUNTIME,
                        str(tmp_path), str(base / "rootfs"), marker)  # fmt: skip
    proc = spawn(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    pid = find_pid(proc, f"/bin/sleep\0{marker}\0".encode())
    state = StateDir(tmp_path)
    (allocation,) = state.userns.allocations()
    assert allocation.uid == (POOL_FIRST, BLOCK_SIZE) == host_range(pid)
    proc.send_signal(signal.SIGKILL)  # the Runtime, not the container
    proc.communicate(timeout=30)
    # The container dies with it (parent-death signal, kept across the switch to the
    # namespace's root), so its ids are free; only the record of them is left.
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}"), "the container outlived its Runtime"
    assert state.userns.allocations() == [allocation]
    # The next Runtime sweeps it, with the container's state record and cgroup.
    # The next Runtime sweeps it, with the container's state record and cgroup (and,
    # on v1, the security plugin sweeps the devices cgroup when it prepares a container).
    after = with_pool(base / "two-blocks", sys.executable, "-c", _LIBRARY_RUNTIME,
                      str(tmp_path), str(base / "rootfs"), "0")  # fmt: skip
    subprocess.run(after, check=True, timeout=60)
    assert state.userns.allocations() == []
    assert state.records() == []


@needs_subid_files
def test_a_pool_smaller_than_a_block_is_one_clear_line(base: Path) -> None:
    proc = run_with_pool(base / "tiny", "run", "--userns", "auto", str(base / "rootfs"), "true")
    assert proc.returncode == 125
    (line,) = proc.stderr.decode().splitlines()
    assert "holds 1000 ids, fewer than one block of 65536" in line
    assert "vortex:1000000000:6553600" in line
    assert pool_allocations() == {}


def test_an_explicit_range_is_shared_and_not_allocated(base: Path) -> None:
    command = [*VORTEX, "run", "--userns", f"{POOL_FIRST}:{BLOCK_SIZE}", str(base / "rootfs"),
               "/bin/cat", "/proc/self/uid_map"]  # fmt: skip
    for _ in range(2):
        proc = subprocess.run(command, capture_output=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [b"0", str(POOL_FIRST).encode(), b"65536"]
    assert pool_allocations() == {}


# ------------------------------------------------------------------ the allocator

_ALLOCATOR = """
import sys
from vortex.errors import IdMappingError
from vortex.state import StateDir
state_dir, container_id, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.stdin.readline()  # "go": every process starts allocating at the same moment
try:
    (uid, _), (gid, _) = StateDir(state_dir).userns.allocate(
        container_id, [(first, count)], [(first, count)], pool="the test pool"
    )
except IdMappingError as exc:
    print("error", exc, flush=True)
else:
    print(uid, gid, flush=True)
sys.stdin.readline()  # hold the block (this process is its owner) until told
"""


def test_concurrent_allocators_never_collide(tmp_path: Path, spawn: Spawn) -> None:
    blocks = 6
    command = [sys.executable, "-c", _ALLOCATOR, str(tmp_path)]
    pool = [str(POOL_FIRST), str(blocks * BLOCK_SIZE)]
    procs = [
        spawn([*command, f"c{i}", *pool], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for i in range(blocks + 2)
    ]
    time.sleep(0.5)  # let every interpreter start and wait for "go"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    answers = []
    for proc in procs:
        assert proc.stdout is not None
        answers.append(proc.stdout.readline().decode().split())
    granted = [a for a in answers if a[0] != "error"]
    refused = [" ".join(a) for a in answers if a[0] == "error"]
    assert len(granted) == blocks
    assert sorted(int(uid) for uid, _gid in granted) == [
        POOL_FIRST + k * BLOCK_SIZE for k in range(blocks)
    ]
    assert all(uid == gid for uid, gid in granted), "block k of uids goes with block k of gids"
    assert len(refused) == 2
    assert all("6 of 6 in use by running containers" in line for line in refused)
    # The owners die without releasing anything: the next allocator sweeps their blocks.
    for proc in procs:
        proc.communicate(b"done\n", timeout=30)
    state = StateDir(tmp_path)
    assert len(state.userns.allocations()) == blocks
    block = state.userns.allocate("next", [(POOL_FIRST, BLOCK_SIZE)], [(POOL_FIRST, BLOCK_SIZE)],
                                  pool="the test pool")  # fmt: skip
    assert block == ((POOL_FIRST, BLOCK_SIZE), (POOL_FIRST, BLOCK_SIZE))
    assert [a.container_id for a in state.userns.allocations()] == ["next"]
    state.forget("next")  # forgetting a container frees its block
    assert state.userns.allocations() == []


def test_allocations_respect_other_pools_and_sweeping(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    pool = [(POOL_FIRST, 3 * BLOCK_SIZE)]
    # A block recorded from another pool (the subid files changed) that overlaps ours.
    state.userns.allocate("old", [(POOL_FIRST + 100, BLOCK_SIZE)], [(0, BLOCK_SIZE)], pool="old")
    first = state.userns.allocate("a", pool, pool, pool="p")
    assert first[0] == (POOL_FIRST + 2 * BLOCK_SIZE, BLOCK_SIZE)  # blocks 0 and 1 overlap "old"
    with pytest.raises(IdMappingError, match="2 of 2 in use") as info:
        state.userns.allocate("b", pool, [(POOL_FIRST, 2 * BLOCK_SIZE)], pool="p")
    assert "\n" not in str(info.value)
    # A dead owner's block (a record written by a process long gone) is swept.
    dead = tmp_path / "userns" / "dead.json"
    dead.write_text(json.dumps({"container_id": "dead", "owner_pid": 2**22 + 1,
                                "owner_start_time": 1, "uid": [1, 1], "gid": [1, 1]}))  # fmt: skip
    assert state.sweep_stale(lambda record: None) == ["dead"]
    assert sorted(a.container_id for a in state.userns.allocations()) == ["a", "old"]
    for container_id in ("a", "old"):
        state.forget(container_id)
    assert not any((tmp_path / "userns").glob("*.json"))
