"""The cgroup v1 backend against the real v1 hierarchies of this host.

Skipped unless we are root on a v1 or hybrid host.  Every test works under
its own parent (``vortex-test-<random>``); the ``backend`` fixture removes it
and checks that nothing is left in any hierarchy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import Spawn, attached_worker
from vortex.cgroups import CgroupError, Limits, MissingControllerError, detect
from vortex.cgroups._common import find_v1_hierarchies, parse_flat_keyed, write_each, write_file
from vortex.cgroups.v1 import CONTROLLERS, ON_DEMAND, V1Backend, V1Cgroup

MiB = 1 << 20

HIERARCHIES = find_v1_hierarchies()
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    or "memory" not in HIERARCHIES,
    reason="needs root on a cgroup v1 or hybrid host",
)

# A child that waits for a byte on stdin before it starts, so the test can
# attach it to the cgroup first: only what it does after attaching counts.
HOG = (
    "import sys\nsys.stdin.read(1)\nchunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 20))\n"
)


@pytest.fixture
def backend(v1_backend: V1Backend) -> V1Backend:
    return v1_backend


def read(cgroup: V1Cgroup, controller: str, filename: str) -> str:
    path = cgroup.path(controller)
    assert path is not None
    with open(os.path.join(path, filename)) as f:
        return f.read().strip()


def cgroup_lines(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controller: path}; co-mounted controllers appear on one line."""
    result: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                result[controller] = path
    return result


def test_detect_returns_v1() -> None:
    backend = detect()
    assert isinstance(backend, V1Backend)
    assert backend.version == 1
    assert backend.parent == "vortex"
    # Whatever is mounted here, the paths are the ones mountinfo lists.
    assert backend.hierarchies == {
        c: HIERARCHIES[c] for c in CONTROLLERS + ON_DEMAND if c in HIERARCHIES
    }


def test_create_apply_attach(backend: V1Backend, spawn: Spawn) -> None:
    cgroup = backend.create("c1")
    assert backend.names() == ["c1"]
    for path in cgroup.paths:
        assert os.path.isdir(path)
    cgroup.apply(Limits(memory=64 * MiB, pids=20, cpus=0.5))

    assert read(cgroup, "memory", "memory.limit_in_bytes") == str(64 * MiB)
    memsw = cgroup.path("memory")
    assert memsw is not None
    if os.path.exists(os.path.join(memsw, "memory.memsw.limit_in_bytes")):
        assert read(cgroup, "memory", "memory.memsw.limit_in_bytes") == str(64 * MiB)
    assert read(cgroup, "pids", "pids.max") == "20"
    assert read(cgroup, "cpu", "cpu.cfs_period_us") == "100000"
    assert read(cgroup, "cpu", "cpu.cfs_quota_us") == "50000"

    proc = spawn(["sleep", "30"])
    cgroup.attach(proc.pid)
    assert cgroup.procs() == [proc.pid]
    placement = cgroup_lines(proc.pid)
    for controller in backend.hierarchies:
        if controller in CONTROLLERS:  # not the on-demand ones no limit asked for
            assert placement[controller] == f"/{backend.parent}/c1", controller


def test_create_twice_fails_and_keeps_the_first(backend: V1Backend) -> None:
    first = backend.create("dup")
    with pytest.raises(CgroupError, match="already exists"):
        backend.create("dup")
    assert all(os.path.isdir(p) for p in first.paths)
    with pytest.raises(CgroupError, match="invalid cgroup name"):
        backend.create("../escape")


def test_memory_limit_can_grow_and_shrink(backend: V1Backend) -> None:
    """memsw must stay >= limit at every step: the writes are ordered for that."""
    cgroup = backend.create("mem")
    for limit in (64 * MiB, 128 * MiB, 32 * MiB, 256 * MiB):
        cgroup.apply(Limits(memory=limit))
        assert read(cgroup, "memory", "memory.limit_in_bytes") == str(limit)


def test_memory_hog_is_oom_killed(backend: V1Backend, spawn: Spawn) -> None:
    cgroup = backend.create("oom")
    cgroup.apply(Limits(memory=32 * MiB))
    assert cgroup.stats().oom_kills == 0
    hog = spawn([sys.executable, "-c", HOG], stdin=subprocess.PIPE)
    cgroup.attach(hog.pid)
    assert hog.stdin is not None
    hog.stdin.write(b"g")
    hog.stdin.close()
    assert hog.wait(timeout=60) == -9
    stats = cgroup.stats()
    assert stats.oom_kills >= 1
    assert stats.memory_peak is not None and 16 * MiB < stats.memory_peak <= 32 * MiB


def test_pids_limit_stops_forks(backend: V1Backend, spawn: Spawn) -> None:
    cgroup = backend.create("pids")
    cgroup.apply(Limits(pids=3))
    shell = spawn(
        ["sh", "-c", "read go; for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; wait"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    cgroup.attach(shell.pid)
    assert shell.stdin is not None and shell.stderr is not None
    shell.stdin.write(b"go\n")
    shell.stdin.close()
    pids_dir = cgroup.path("pids")
    assert pids_dir is not None
    # The kernel counts each refused fork in pids.events "max".
    deadline = time.monotonic() + 10
    while parse_flat_keyed(read(cgroup, "pids", "pids.events")).get("max", 0) == 0:
        assert time.monotonic() < deadline, "no fork was refused"
        time.sleep(0.01)
    current = cgroup.stats().pids_current
    assert current is not None and current <= 3
    cgroup.kill()
    shell.wait(timeout=10)
    assert b"fork" in shell.stderr.read().lower()


def test_cpu_quota_throttles(backend: V1Backend, spawn: Spawn) -> None:
    cgroup = backend.create("cpu")
    cgroup.apply(Limits(cpus=0.1))
    assert read(cgroup, "cpu", "cpu.cfs_quota_us") == "10000"
    busy = spawn(
        [sys.executable, "-c", "import sys, time\nsys.stdin.read(1)\nt = time.monotonic()\n"
         "while time.monotonic() - t < 0.5: pass\n"],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    cgroup.attach(busy.pid)
    assert busy.stdin is not None
    busy.stdin.write(b"g")
    busy.stdin.close()
    assert busy.wait(timeout=30) == 0
    cpu_stat = parse_flat_keyed(read(cgroup, "cpu", "cpu.stat"))
    assert cpu_stat["nr_throttled"] > 0
    cpu_time = cgroup.stats().cpu_time
    # At most the quota (10 ms) in each period the kernel counted, with slack for
    # one period's runtime slice.  Counted in the kernel's periods, not in wall
    # time: on a loaded VM the period timer was seen to fire ~3x per 100 ms of
    # CLOCK_MONOTONIC (16 periods in 0.51 s), which let 0.5 s of busy loop use
    # 0.3 s of CPU within the quota.
    assert cpu_time is not None and 0.01 < cpu_time <= (cpu_stat["nr_periods"] + 2) * 0.010


def test_stats_are_plausible(backend: V1Backend, spawn: Spawn) -> None:
    cgroup = backend.create("stats")
    stats = cgroup.stats()
    assert (stats.memory_current, stats.pids_current, stats.cpu_time, stats.oom_kills) == (
        0,
        0,
        0.0,
        0,
    )
    attached_worker(spawn, cgroup, hold=30)
    stats = cgroup.stats()
    assert stats.memory_current is not None and stats.memory_current >= 20 * MiB
    assert stats.memory_peak is not None and stats.memory_peak >= stats.memory_current
    assert stats.cpu_time is not None and 0.15 <= stats.cpu_time < 5
    assert stats.pids_current == 1
    assert stats.oom_kills == 0
    assert stats.cpu_user_time is not None and "cache" in stats.memory_stat
    # What a RunResult carries, from fewer files: the same peak, no current usage.
    result = cgroup.stats(result_only=True)
    assert result.memory_peak is not None and result.memory_peak >= stats.memory_peak
    assert result.cpu_time is not None and result.cpu_time >= stats.cpu_time
    assert (result.memory_current, result.pids_current, result.cpu_user_time) == (None,) * 3
    assert result.memory_stat == {}


def test_kill_empties_the_cgroup(backend: V1Backend, spawn: Spawn) -> None:
    cgroup = backend.create("kill")
    cgroup.kill()  # empty: nothing to do
    shell = spawn(
        ["sh", "-c", "read go; sleep 30 & sleep 30 & sleep 30 & wait"], stdin=subprocess.PIPE
    )
    cgroup.attach(shell.pid)
    assert shell.stdin is not None
    shell.stdin.write(b"go\n")
    shell.stdin.close()
    deadline = time.monotonic() + 10
    while len(cgroup.procs()) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    cgroup.kill()
    assert cgroup.procs() == []
    assert shell.wait(timeout=10) == -9


def test_kill_catches_a_forking_loop(backend: V1Backend, spawn: Spawn) -> None:
    """The freezer stops new forks while the signals go out."""
    cgroup = backend.create("forker")
    loop = spawn(["sh", "-c", "while :; do sleep 30 & sh -c 'sleep 30 &'; done"])
    cgroup.attach(loop.pid)
    time.sleep(0.3)
    assert len(cgroup.procs()) > 3
    cgroup.kill()
    assert cgroup.procs() == []
    loop.wait(timeout=10)


def test_remove_leaves_nothing_and_is_idempotent(backend: V1Backend, spawn: Spawn) -> None:
    cgroup = backend.create("rm")
    cgroup.apply(Limits(memory=64 * MiB, pids=10))
    proc = spawn(["sleep", "30"])
    cgroup.attach(proc.pid)
    # A nested cgroup (as a runtime inside the container would make) holding a process.
    nested = spawn(["sleep", "30"])
    for path in cgroup.paths:
        os.mkdir(os.path.join(path, "inner"))
        with open(os.path.join(path, "inner", "cgroup.procs"), "w") as f:
            f.write(str(nested.pid))
    cgroup.remove()
    assert not any(os.path.exists(p) for p in cgroup.paths)
    assert proc.wait(timeout=10) == -9
    assert nested.wait(timeout=10) == -9
    cgroup.remove()
    assert backend.names() == []
    with pytest.raises(CgroupError, match="does not exist"):
        backend.open("rm")


def test_remove_kills_a_process_left_in_one_hierarchy(backend: V1Backend, spawn: Spawn) -> None:
    """The other hierarchies' directories are removed at once; the busy one is not
    skipped: its process is killed and its directory removed."""
    cgroup = backend.create("onlymem")
    memory = cgroup.path("memory")
    assert memory is not None and len(cgroup.paths) > 1
    proc = spawn(["sleep", "30"])
    with open(os.path.join(memory, "cgroup.procs"), "w") as f:
        f.write(str(proc.pid))
    cgroup.remove()
    assert proc.wait(timeout=10) == -9
    assert not any(os.path.exists(p) for p in cgroup.paths)


def test_open_and_names(backend: V1Backend) -> None:
    assert backend.names() == []
    backend.create("b")
    backend.create("a")
    assert backend.names() == ["a", "b"]
    opened = backend.open("a")
    mounts = dict.fromkeys(m for c, m in backend.hierarchies.items() if c in CONTROLLERS)
    assert opened.paths == [os.path.join(m, backend.parent, "a") for m in mounts]


def test_missing_controller(backend: V1Backend) -> None:
    """A backend without the pids hierarchy: real directories, no pids controller."""
    without_pids = {c: m for c, m in backend.hierarchies.items() if c != "pids"}
    partial = V1Backend(parent=backend.parent, hierarchies=without_pids)
    cgroup = partial.create("nopids")
    assert cgroup.path("pids") is None
    with pytest.raises(MissingControllerError, match="'pids' controller") as info:
        cgroup.apply(Limits(memory=64 * MiB, pids=5))
    assert "5" in str(info.value)
    # Nothing was written before the check failed.
    assert int(read(cgroup, "memory", "memory.limit_in_bytes")) > 64 * MiB
    cgroup.apply(Limits(memory=64 * MiB, cpus=1.5))
    assert read(cgroup, "memory", "memory.limit_in_bytes") == str(64 * MiB)
    assert read(cgroup, "cpu", "cpu.cfs_quota_us") == "150000"
    pids_mount = backend.hierarchies.get("pids")
    if pids_mount is not None:
        assert not os.path.exists(os.path.join(pids_mount, backend.parent, "nopids"))


def test_invalid_limits_are_rejected_before_writing(backend: V1Backend) -> None:
    cgroup = backend.create("bad")
    with pytest.raises(CgroupError, match="cpus"):
        cgroup.apply(Limits(cpus=0.001))
    with pytest.raises(CgroupError, match="memory"):
        cgroup.apply(Limits(memory=0))
    with pytest.raises(CgroupError, match="pids"):
        cgroup.apply(Limits(pids=-1))
    with pytest.raises(CgroupError, match="pid 0"):
        cgroup.attach(0)


def test_an_on_demand_hierarchy_counts_once_joined(backend: V1Backend) -> None:
    """V1Cgroup.paths looks the on-demand directories up once and follows _join."""
    if "cpuset" not in HIERARCHIES:
        pytest.skip("no v1 cpuset hierarchy")
    cgroup = backend.create("ondemand")
    cpuset = cgroup.path("cpuset")
    assert cpuset is not None
    assert cpuset not in cgroup.paths and not os.path.exists(cpuset)
    cgroup.apply(Limits(cpuset_cpus="0"))
    assert cpuset in cgroup.paths and read(cgroup, "cpuset", "cpuset.cpus") == "0"
    cgroup.remove()
    assert not os.path.exists(cpuset)


def test_devices_rules_are_written_one_per_write() -> None:
    """write_each: one open file, one write(2) per rule (devices.allow takes one at a
    time); a rule the kernel rejects is named, the ones before it are in."""
    if "devices" not in HIERARCHIES:
        pytest.skip("no v1 devices hierarchy")
    devices = os.path.join(HIERARCHIES["devices"], f"vortex-test-rules-{os.getpid()}")
    os.mkdir(devices)
    try:
        write_file(os.path.join(devices, "devices.deny"), "a")
        allow = os.path.join(devices, "devices.allow")
        write_each(allow, ["c 1:3 rwm", "c 1:5 rwm"])
        with pytest.raises(CgroupError, match=r"cannot write 'nonsense' to .*devices\.allow"):
            write_each(allow, ["c 1:7 rwm", "nonsense", "c 1:8 rwm"])
        with open(os.path.join(devices, "devices.list")) as f:
            assert f.read().splitlines() == ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm"]
    finally:
        os.rmdir(devices)
