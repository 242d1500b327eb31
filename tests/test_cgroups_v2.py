"""The cgroup v2 backend against a real unified hierarchy.

Every test is marked ``cgroup2``: tests/conftest.py skips them unless we are
root on a pure cgroup v2 host.  On hybrid hosts tests/test_cgroup2_vm.py runs
them inside the v2 VM.  Every test works under its own parent
(``vortex-test-<random>``); the ``backend`` fixture removes it and checks that
nothing is left.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Spawn, attached_worker
from vortex import _linux
from vortex.cgroups import CgroupError, Limits, MissingControllerError, detect
from vortex.cgroups._common import parse_controllers, parse_flat_keyed
from vortex.cgroups.v2 import V2Backend, V2Cgroup

pytestmark = pytest.mark.cgroup2

MiB = 1 << 20
ROOT = "/sys/fs/cgroup"

# A child that waits for a byte on stdin before it allocates, so the test can
# attach it first: everything it allocates afterwards is charged to the cgroup.
HOG = (
    "import sys\nsys.stdin.read(1)\nchunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 20))\n"
)


@pytest.fixture
def backend() -> Iterator[V2Backend]:
    """A backend with a fresh parent; afterwards neither it nor a child may remain."""
    b = V2Backend(ROOT, f"vortex-test-{secrets.token_hex(4)}", timeout=30.0)
    yield b
    for name in b.names():
        b.open(name).remove()
    if os.path.isdir(b.parent_path):
        assert not [e for e in os.scandir(b.parent_path) if e.is_dir()]
        os.rmdir(b.parent_path)
    assert not os.path.exists(b.parent_path)


def read(cgroup: V2Cgroup, filename: str) -> str:
    with open(os.path.join(cgroup.path, filename)) as f:
        return f.read().strip()


def release(proc: subprocess.Popen[bytes], data: bytes = b"go\n") -> None:
    """Let a child that waits on stdin go on (after the test attached it)."""
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_detect_returns_v2() -> None:
    backend = detect()
    assert isinstance(backend, V2Backend)
    assert backend.version == 2
    assert backend.parent_path == os.path.join(ROOT, "vortex")


def test_create_delegates_and_apply_writes_the_files(backend: V2Backend, spawn: Spawn) -> None:
    cgroup = backend.create("c1")
    assert backend.names() == ["c1"]
    assert {"memory", "pids", "cpu"} <= cgroup.controllers()
    with open(os.path.join(backend.parent_path, "cgroup.subtree_control")) as f:
        assert {"memory", "pids", "cpu"} <= parse_controllers(f.read())

    cgroup.apply(Limits(memory=64 * MiB, pids=20, cpus=0.5))
    assert read(cgroup, "memory.max") == str(64 * MiB)
    assert read(cgroup, "memory.oom.group") == "1"
    if os.path.exists(os.path.join(cgroup.path, "memory.swap.max")):
        assert read(cgroup, "memory.swap.max") == "0"
    assert read(cgroup, "pids.max") == "20"
    assert read(cgroup, "cpu.max") == "50000 100000"

    proc = spawn(["sleep", "30"])
    cgroup.attach(proc.pid)
    assert cgroup.procs() == [proc.pid]
    with open(f"/proc/{proc.pid}/cgroup") as f:
        assert f.read().strip() == f"0::/{backend.parent}/c1"


def test_create_twice_fails(backend: V2Backend) -> None:
    cgroup = backend.create("dup")
    with pytest.raises(CgroupError, match="already exists"):
        backend.create("dup")
    assert os.path.isdir(cgroup.path)


def test_memory_hog_is_oom_killed(backend: V2Backend, spawn: Spawn) -> None:
    cgroup = backend.create("oom")
    cgroup.apply(Limits(memory=32 * MiB))
    hog = spawn([sys.executable, "-c", HOG], stdin=subprocess.PIPE)
    cgroup.attach(hog.pid)
    release(hog)
    assert hog.wait(timeout=120) == -signal.SIGKILL
    events = parse_flat_keyed(read(cgroup, "memory.events"))
    assert events["oom_kill"] >= 1
    stats = cgroup.stats()
    assert stats.oom_kills == events["oom_kill"]
    assert stats.memory_peak is not None and 16 * MiB < stats.memory_peak <= 32 * MiB


def test_pids_limit_stops_forks(backend: V2Backend, spawn: Spawn) -> None:
    cgroup = backend.create("pids")
    cgroup.apply(Limits(pids=3))
    shell = spawn(
        ["sh", "-c", "read go; for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; wait"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    cgroup.attach(shell.pid)
    release(shell)
    wait_for(lambda: parse_flat_keyed(read(cgroup, "pids.events")).get("max", 0) > 0)
    current = cgroup.stats().pids_current
    assert current is not None and current <= 3
    cgroup.kill()
    shell.wait(timeout=30)
    assert shell.stderr is not None
    assert b"fork" in shell.stderr.read().lower()


def test_cpu_max_throttles(backend: V2Backend, spawn: Spawn) -> None:
    cgroup = backend.create("cpu")
    cgroup.apply(Limits(cpus=0.1))
    assert read(cgroup, "cpu.max") == "10000 100000"
    busy = spawn(["sh", "-c", "read go; while :; do :; done"], stdin=subprocess.PIPE)
    cgroup.attach(busy.pid)
    release(busy)
    started = time.monotonic()
    wait_for(lambda: parse_flat_keyed(read(cgroup, "cpu.stat")).get("nr_throttled", 0) > 2)
    elapsed = time.monotonic() - started
    cpu_time = cgroup.stats().cpu_time
    cgroup.kill()
    assert busy.wait(timeout=30) == -signal.SIGKILL
    # At most 10% of one CPU over the elapsed time, plus one period of slack.
    assert cpu_time is not None and 0 < cpu_time <= 0.1 * elapsed + 0.05


def test_clone_into_cgroup(backend: V2Backend) -> None:
    cgroup = backend.create("clone")
    cgroup.apply(Limits(pids=5))
    expected = f"0::/{backend.parent}/clone\n".encode()
    fd = cgroup.clone_fd()
    try:
        # The fork helper's own clone3 wrapper (PyDLL: the GIL stays held across it).
        pid, pidfd = _linux.clone3(0, cgroup_fd=fd)
        if pid == 0:  # the child: only syscalls, then _exit; never return into pytest
            try:
                cg_fd = os.open("/proc/self/cgroup", os.O_RDONLY)
                os._exit(0 if os.read(cg_fd, 4096) == expected else 1)
            finally:
                os._exit(2)
    finally:
        os.close(fd)
    try:
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    finally:
        os.close(pidfd)
    assert info is not None
    assert (info.si_code, info.si_status) == (os.CLD_EXITED, 0)


def test_cgroup_kill(backend: V2Backend, spawn: Spawn) -> None:
    cgroup = backend.create("kill")
    cgroup.kill()  # empty: nothing to do
    shell = spawn(
        ["sh", "-c", "read go; sleep 30 & sleep 30 & sleep 30 & wait"], stdin=subprocess.PIPE
    )
    cgroup.attach(shell.pid)
    release(shell)
    wait_for(lambda: len(cgroup.procs()) == 4)
    assert cgroup.populated()
    cgroup.kill()
    assert not cgroup.populated()
    assert cgroup.procs() == []
    assert shell.wait(timeout=30) == -signal.SIGKILL


def test_stats_are_plausible(backend: V2Backend, spawn: Spawn) -> None:
    cgroup = backend.create("stats")
    empty = cgroup.stats()
    assert (empty.pids_current, empty.oom_kills) == (0, 0)
    attached_worker(spawn, cgroup, hold=60)
    stats = cgroup.stats()
    assert stats.memory_current is not None and stats.memory_current >= 20 * MiB
    assert stats.memory_peak is not None and stats.memory_peak >= stats.memory_current
    assert stats.cpu_time is not None and stats.cpu_time >= 0.15
    assert stats.pids_current == 1
    assert stats.oom_kills == 0
    assert "anon" in stats.memory_stat
    # What a RunResult carries, from fewer files: the same peak, no current usage.
    result = cgroup.stats(result_only=True)
    assert result.memory_peak is not None and result.memory_peak >= stats.memory_peak
    assert result.cpu_time is not None and result.cpu_time >= stats.cpu_time
    assert (result.memory_current, result.pids_current, result.memory_stat) == (None, None, {})


def test_remove_leaves_nothing_and_is_idempotent(backend: V2Backend, spawn: Spawn) -> None:
    cgroup = backend.create("rm")
    cgroup.apply(Limits(memory=64 * MiB, pids=10))
    proc = spawn(["sleep", "30"])
    cgroup.attach(proc.pid)
    # A nested cgroup with a process, as a runtime inside the container would make.
    nested = spawn(["sleep", "30"])
    os.mkdir(os.path.join(cgroup.path, "inner"))
    with open(os.path.join(cgroup.path, "inner", "cgroup.procs"), "w") as f:
        f.write(str(nested.pid))
    cgroup.remove()
    assert not os.path.exists(cgroup.path)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert nested.wait(timeout=30) == -signal.SIGKILL
    cgroup.remove()
    assert backend.names() == []
    with pytest.raises(CgroupError, match="does not exist"):
        backend.open("rm")


def test_missing_controller(backend: V2Backend) -> None:
    """A controller the kernel does not offer: named with the flag, nothing written."""
    cgroup = backend.create("nosuch")
    with pytest.raises(MissingControllerError, match=r"'nosuch' controller.*--cgroup-conf"):
        cgroup.apply(Limits(memory=64 * MiB, unified={"nosuch.max": "1"}))
    assert read(cgroup, "memory.max") == "max"  # checked before anything was written


def test_controllers_are_enabled_on_demand(backend: V2Backend) -> None:
    """Take pids away from the parent: apply() delegates it again when a limit needs it."""
    cgroup = backend.create("nopids")
    control = os.path.join(backend.parent_path, "cgroup.subtree_control")
    with open(control, "w") as f:
        f.write("-pids")
    assert "pids" not in cgroup.controllers()
    cgroup.apply(Limits(memory=64 * MiB))
    assert "pids" not in cgroup.controllers()  # not needed, not enabled
    cgroup.apply(Limits(pids=5))
    assert read(cgroup, "pids.max") == "5"
    with open(control) as f:
        assert parse_controllers(f.read()) == {"memory", "pids", "cpu"}
    cgroup.apply(Limits(cpuset_cpus="0"))
    with open(control) as f:
        assert "cpuset" in parse_controllers(f.read())
    assert read(cgroup, "cpuset.cpus") == "0"


def test_freeze_and_thaw(backend: V2Backend, spawn: Spawn) -> None:
    cgroup = backend.create("freeze")
    proc = spawn(["sleep", "30"])
    cgroup.attach(proc.pid)
    cgroup.freeze()
    assert cgroup.frozen()
    assert "frozen 1" in read(cgroup, "cgroup.events")
    cgroup.thaw()
    assert not cgroup.frozen()
    cgroup.freeze()
    cgroup.kill()  # cgroup.kill works on a frozen cgroup
    assert proc.wait(timeout=30) == -signal.SIGKILL
