"""The runtime on a pure cgroup v2 host: limits enforced, placement, stats, pause.

Every test is marked ``cgroup2``: on this hybrid host they are skipped, and
tests/test_cgroup2_vm.py runs them inside the v2 VM (about 20x slower than
native, so each test does little and the async ones run on asyncio only).
The backend-level v2 tests are in tests/test_cgroups_v2.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from pathlib import Path

import anyio
import pytest

import vortex
from tests.conftest import (
    OOM_CHILD,
    check_kill_all_returns_without_waiting,
    check_oom_logged_while_running,
    run_vortex,
    vortex_cgroups,
)
from vortex.cgroups import MissingControllerError
from vortex.cgroups.v2 import V2Cgroup
from vortex.errors import PluginError
from vortex.spec import ContainerSpec, Resources, Stdio

pytestmark = pytest.mark.cgroup2

MiB = 1 << 20
ROOT = "/sys/fs/cgroup"
TIMEOUT = 240  # seconds for one CLI run under emulation


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the trio runs add VM time and test nothing cgroup-specific."""
    return "asyncio"


def spec(rootfs: Path, script: str, **kwargs: object) -> ContainerSpec:
    kwargs.setdefault("stdout", Stdio.CAPTURE)
    kwargs.setdefault("stderr", Stdio.CAPTURE)
    kwargs.setdefault("stdin", Stdio.NULL)
    return ContainerSpec(rootfs=rootfs, command=["/bin/sh", "-c", script], **kwargs)  # type: ignore[arg-type]


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def exists(path: str) -> bool:
    return os.path.exists(path)


def controllers(path: str) -> set[str]:
    return set(read(os.path.join(path, "cgroup.subtree_control")).split())


def test_cli_memory_hog_is_oom_killed_and_reported(rootfs: Path) -> None:
    before = vortex_cgroups()
    hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"
    proc = run_vortex("run", "--memory", "32M", str(rootfs), "/bin/sh", "-c", hog, timeout=TIMEOUT)
    assert proc.returncode == 137, proc.stderr
    assert b"survived" not in proc.stdout
    # One line for the user (a JSON log line of the logging plugin may precede it).
    lines = [line for line in proc.stderr.decode().splitlines() if line.startswith("vortex: ")]
    assert len(lines) == 1 and "was OOM-killed" in lines[0], proc.stderr
    assert vortex_cgroups() == before


def test_cli_missing_controller_is_one_line_and_125(rootfs: Path) -> None:
    before = vortex_cgroups()
    proc = run_vortex(
        "run", "--cgroup-conf", "nosuch.max=1", str(rootfs), "/bin/true", timeout=TIMEOUT
    )
    assert proc.returncode == 125, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vortex: "), lines
    assert "'nosuch' controller" in lines[0] and "--cgroup-conf" in lines[0], lines
    assert vortex_cgroups() == before


@pytest.mark.anyio
async def test_fork_bomb_is_contained_and_pids_peak_reported(rootfs: Path) -> None:
    script = (
        "sh -c 'i=0; while [ $i -lt 30 ]; do sleep 10 & i=$((i+1)); done' 2>/dev/null; "
        "set -- /proc/[0-9]*; echo $#"
    )
    async with vortex.Runtime() as rt:
        result = await rt.run(spec(rootfs, script, resources=Resources(pids=8)))
    assert result.exit_code == 0, result.stderr
    assert result.stdout is not None and 2 <= int(result.stdout) <= 8
    assert result.pids_peak is not None and 2 <= result.pids_peak <= 8


@pytest.mark.anyio
async def test_cpus_limit_throttles_and_is_reported(rootfs: Path) -> None:
    busy = "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"
    async with vortex.Runtime() as rt:
        result = await rt.run(spec(rootfs, busy, resources=Resources(cpus=0.1)))
    assert result.exit_code == 0, result.stderr
    assert result.cpu_throttled_periods is not None and result.cpu_throttled_periods >= 1
    assert result.cpu_throttled_time is not None and result.cpu_throttled_time > 0
    assert result.cpu_time is not None
    # At most 10% of one CPU over the run, plus a couple of periods of slack.
    assert result.cpu_time <= 0.1 * result.wall_time + 0.2


@pytest.mark.anyio
async def test_init_is_cloned_into_its_cgroup(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLONE_INTO_CGROUP: in its cgroup before it runs, and cgroup.procs never written."""

    def no_attach(self: V2Cgroup, pid: int) -> None:
        raise AssertionError(f"the runtime wrote {pid} to cgroup.procs")

    monkeypatch.setattr(V2Cgroup, "attach", no_attach)
    seen: dict[str, str] = {}

    class Probe:
        @vortex.hookimpl
        def vortex_post_cgroup(self, container: vortex.Container) -> None:
            # The init waits on its sync pipe: not one instruction of the command yet.
            seen["cgroup"] = read(f"/proc/{container.pid}/cgroup")
            seen["id"] = container.id

    async with vortex.Runtime(plugins=[Probe()]) as rt:
        result = await rt.run(spec(rootfs, "cat /proc/1/cgroup"))
    assert seen["cgroup"] == f"0::/vortex/{seen['id']}"
    assert result.exit_code == 0 and result.stdout == b"0::/\n"  # its own cgroup namespace
    assert not exists(os.path.join(ROOT, "vortex", seen["id"]))


@pytest.mark.anyio
async def test_full_limit_set_is_written_and_controllers_enabled_on_demand(
    rootfs: Path,
) -> None:
    parent = f"vortex-t-{secrets.token_hex(3)}"
    parent_path = os.path.join(ROOT, parent)
    files: dict[str, str] = {}
    names = [
        *("memory.max", "memory.high", "memory.swap.max", "memory.low", "memory.min"),
        *("memory.oom.group", "pids.max", "cpu.max", "cpu.weight", "cpuset.cpus"),
        *("cpuset.mems", "io.weight", "hugetlb.2MB.max"),
    ]

    class Probe:
        @vortex.hookimpl
        def vortex_post_cgroup(self, container: vortex.Container) -> None:
            assert isinstance(container.cgroup, V2Cgroup)
            for name in names:
                path = os.path.join(container.cgroup.path, name)
                files[name] = read(path) if exists(path) else "-"
            files["parent"] = " ".join(sorted(controllers(parent_path)))

    resources = Resources(
        memory=64 * MiB,
        memory_high=48 * MiB,
        memory_swap=96 * MiB,
        memory_reservation=16 * MiB,
        cpus=1.5,
        cpu_shares=512,
        cpuset_cpus="0",
        cpuset_mems="0",
        blkio_weight=500,
        hugetlb=(("2MB", 4 * MiB),),
        unified={"memory.min": "8M", "pids.max": "20"},
    )
    try:
        async with vortex.Runtime(plugins=[Probe()], cgroup_parent=parent) as rt:
            plain = await rt.run(spec(rootfs, "true"))
            assert plain.exit_code == 0
            # Only the default controllers so far: nothing asked for more.
            assert controllers(parent_path) == {"memory", "pids", "cpu"}
            result = await rt.run(spec(rootfs, "true", resources=resources))
        assert result.exit_code == 0, result.stderr
    finally:
        if exists(parent_path):
            os.rmdir(parent_path)
    assert files == {
        "memory.max": str(64 * MiB),
        "memory.high": str(48 * MiB),
        "memory.swap.max": str(32 * MiB),  # docker: --memory-swap is memory plus swap
        "memory.low": str(16 * MiB),
        "memory.min": str(8 * MiB),
        "memory.oom.group": "1",
        "pids.max": "20",  # unified keys are written last
        "cpu.max": "150000 100000",
        "cpu.weight": "20",  # 1 + (512 - 2) * 9999 // 262142, as runc and crun
        "cpuset.cpus": "0",
        "cpuset.mems": "0",
        "io.weight": "default 4950",  # 1 + (500 - 10) * 9999 // 990,
        "hugetlb.2MB.max": str(4 * MiB),
        "parent": "cpu cpuset hugetlb io memory pids",
    }


@pytest.mark.anyio
async def test_limits_the_kernel_cannot_apply_are_errors(rootfs: Path) -> None:
    before = vortex_cgroups()
    # The limits plugin raises them; the runtime reports them as a PluginError of it.
    async with vortex.Runtime() as rt:
        with pytest.raises(PluginError, match="'nosuch' controller") as missing:
            await rt.run(spec(rootfs, "true", resources=Resources(unified={"nosuch.x": "1"})))
        assert isinstance(missing.value.__cause__, MissingControllerError)
        with pytest.raises(PluginError, match=r"--hugetlb 3MB:1048576: .* no hugetlb\.3MB\.max"):
            await rt.run(spec(rootfs, "true", resources=Resources(hugetlb=(("3MB", MiB),))))
    assert vortex_cgroups() == before


@pytest.mark.anyio
async def test_stats_pause_and_resume(rootfs: Path) -> None:
    script = "echo ready; while :; do echo tick; sleep 0.2; done"
    async with vortex.Runtime() as rt:
        container = await rt.start(spec(rootfs, script, stdout=Stdio.STREAM))
        assert container.stdout is not None
        assert (await container.stdout.receive()).startswith(b"ready\n")
        stats = container.stats()
        assert stats.memory_current is not None and stats.memory_current > 0
        assert stats.pids_current is not None and stats.pids_current >= 1
        assert stats.memory_stat.get("anon", -1) >= 0

        await container.pause()
        assert container.state == "paused"
        assert isinstance(container.cgroup, V2Cgroup)
        assert "frozen 1" in read(os.path.join(container.cgroup.path, "cgroup.events"))
        with anyio.move_on_after(0.5):  # drain what was written before the freeze
            while True:
                await container.stdout.receive()
        got = b""
        with anyio.move_on_after(1.5):  # nothing runs while frozen: no tick arrives
            got += await container.stdout.receive()
        assert got == b""
        await container.resume()
        assert container.state == "running"
        with anyio.fail_after(30):
            assert b"tick" in await container.stdout.receive()
        await container.stdout.aclose()
        # cgroup.kill also works on a paused container.
        await container.pause()
        container.kill_all()
        result = await container.wait()
    assert result.signal == signal.SIGKILL


def test_cli_oom_event_is_logged_while_the_container_runs(rootfs: Path) -> None:
    # memory.oom.group, which Vortex sets, would take PID 1 down with the child;
    # a unified key (written last) switches it off.
    check_oom_logged_while_running(rootfs, "--cgroup-conf", "memory.oom.group=0")


@pytest.mark.anyio
async def test_oom_events_iterator(rootfs: Path) -> None:
    resources = Resources(memory=32 * MiB, unified={"memory.oom.group": "0"})
    script = OOM_CHILD + "read wait_for_the_test"
    async with vortex.Runtime() as rt:
        container = await rt.start(
            spec(rootfs, script, resources=resources, stdin=Stdio.STREAM, stdout=Stdio.STREAM)
        )
        assert container.stdin is not None and container.stdout is not None
        with anyio.fail_after(120):
            async with contextlib.aclosing(container.oom_events()) as events:
                count = await anext(events)
        assert count >= 1 and container.oom_kills == count
        assert container.result is None  # PID 1 still runs
        await container.stdin.send(b"go\n")
        await container.stdin.aclose()
        result = await container.wait()
        await container.stdout.aclose()
    assert result.exit_code == 0 and not result.oom_killed and result.oom_kills >= 1


DELEGATED_CHILD = """
import sys, anyio, vortex
from vortex.spec import ContainerSpec, Resources, Stdio

sys.stdin.readline()  # the test has moved us into the delegated unit's cgroup

async def main() -> None:
    paths = []

    class Probe:
        @vortex.hookimpl
        def vortex_post_cgroup(self, container):
            paths.append(container.cgroup.path)

    spec = ContainerSpec(
        rootfs=sys.argv[1], command=["/bin/true"], resources=Resources(memory=64 << 20, pids=10),
        stdin=Stdio.NULL, stdout=Stdio.CAPTURE, stderr=Stdio.CAPTURE,
    )
    async with vortex.Runtime(plugins=[Probe()]) as rt:  # cgroup_parent="auto"
        result = await rt.run(spec)
    with open("/proc/self/cgroup") as f:
        print(f.read().strip(), paths[0], result.exit_code)

anyio.run(main)
"""


def test_delegated_cgroup_is_used_with_the_runtime_in_a_leaf(rootfs: Path) -> None:
    """Mimic systemd's Delegate=yes (the trusted.delegate xattr) on a unit's cgroup."""
    import subprocess
    import sys

    slice_path = os.path.join(ROOT, f"vt-{secrets.token_hex(3)}.slice")
    unit = os.path.join(slice_path, "unit.scope")
    os.makedirs(unit)
    child = None
    try:
        with open(os.path.join(slice_path, "cgroup.subtree_control"), "w") as f:
            f.write("+memory +pids +cpu")
        os.setxattr(unit, "trusted.delegate", b"1")
        child = subprocess.Popen(
            [sys.executable, "-c", DELEGATED_CHILD, str(rootfs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        with open(os.path.join(unit, "cgroup.procs"), "w") as f:
            f.write(str(child.pid))
        out, err = child.communicate(b"go\n", timeout=TIMEOUT)
        assert child.returncode == 0, err
        own, container_path, exit_code = out.decode().split()
        unit_rel = unit[len(ROOT) :]
        assert own == f"0::{unit_rel}/vortex-runtime"  # moved itself into a leaf
        assert os.path.dirname(container_path) == os.path.join(unit, "containers")
        assert exit_code == "0"
        assert read(os.path.join(unit, "cgroup.procs")) == ""  # no internal processes
        assert controllers(unit) == {"memory", "pids", "cpu"}
        containers = os.path.join(unit, "containers")
        assert not [e for e in os.scandir(containers) if e.is_dir()]  # nothing left behind
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        for leftover in ("containers", "vortex-runtime", ""):
            path = os.path.join(unit, leftover) if leftover else unit
            if os.path.isdir(path):
                os.rmdir(path)
        os.rmdir(slice_path)


@pytest.mark.anyio
async def test_kill_all_does_not_wait_on_the_event_loop(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await check_kill_all_returns_without_waiting(rootfs, monkeypatch)
