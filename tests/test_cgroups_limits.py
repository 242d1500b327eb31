"""The full limit set: mapping to v2/v1 files (pure), flags, and v1 on this host.

The v2 side of the same limits runs in the VM (tests/test_cgroup2_runtime.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

import vortex
from tests.conftest import OOM_CHILD, check_kill_all_returns_without_waiting, run_vortex
from vortex.cgroups import CgroupError, Limits, MissingControllerError
from vortex.cgroups._common import (
    check_limits,
    cpu_weight_from_shares,
    find_v1_hierarchies,
    io_weight_from_blkio,
    v1_writes,
    v2_writes,
)
from vortex.cgroups.base import DeviceLimit
from vortex.cgroups.options import (
    device_limit,
    parse_cgroup_conf,
    parse_device_rate,
    parse_hugetlb,
    parse_memory_swap,
)
from vortex.cgroups.v1 import V1Backend
from vortex.errors import SpecError
from vortex.spec import ContainerSpec, Resources, Stdio

MiB = 1 << 20
HIERARCHIES = find_v1_hierarchies()
V1_HOST = (
    os.geteuid() == 0
    and not os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    and "memory" in HIERARCHIES
)
needs_v1 = pytest.mark.skipif(not V1_HOST, reason="needs root on a cgroup v1 or hybrid host")


def a_block_device() -> str | None:
    """A block device node whose device the kernel has (for io/blkio throttles)."""
    for name in sorted(os.listdir("/dev")):
        path = os.path.join("/dev", name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and os.path.exists(
            f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        ):
            return path
    return None


# --------------------------------------------------------------------- pure mapping


def test_shares_and_blkio_weight_map_as_runc_does() -> None:
    assert [cpu_weight_from_shares(s) for s in (2, 1024, 262144)] == [1, 39, 10000]
    assert [io_weight_from_blkio(w) for w in (10, 500, 1000)] == [1, 4950, 10000]


FULL = Limits(
    memory=64 * MiB,
    memory_high=48 * MiB,
    memory_swap=96 * MiB,
    memory_reservation=16 * MiB,
    pids=20,
    cpus=0.5,
    cpu_shares=512,
    cpuset_cpus="0-1",
    cpuset_mems="0",
    blkio_weight=500,
    device_read_bps=(DeviceLimit(8, 0, 1 * MiB),),
    device_write_iops=(DeviceLimit(8, 0, 100),),
    hugetlb=(("2MB", 4 * MiB),),
    unified={"memory.min": "8M"},
)


def test_v2_files_for_every_limit() -> None:
    written = [(w.controller, w.candidates, w.optional) for w in v2_writes(FULL)]
    assert written == [
        ("memory", (("memory.max", str(64 * MiB)),), False),
        ("memory", (("memory.oom.group", "1"),), True),
        ("memory", (("memory.swap.max", str(32 * MiB)),), False),
        ("memory", (("memory.high", str(48 * MiB)),), False),
        ("memory", (("memory.low", str(16 * MiB)),), False),
        ("pids", (("pids.max", "20"),), False),
        ("cpu", (("cpu.max", "50000 100000"),), False),
        ("cpu", (("cpu.weight", "20"),), False),
        ("cpuset", (("cpuset.cpus", "0-1"),), False),
        ("cpuset", (("cpuset.mems", "0"),), False),
        ("io", (("io.bfq.weight", "default 500"), ("io.weight", "default 4950")), False),
        ("io", (("io.max", f"8:0 rbps={MiB} wiops=100"),), False),
        ("hugetlb", (("hugetlb.2MB.max", str(4 * MiB)),), False),
        ("memory", (("memory.min", "8M"),), False),
    ]
    # Without --memory-swap: no swap at all (where swap accounting exists).
    plain = [(w.candidates, w.optional) for w in v2_writes(Limits(memory=MiB))]
    assert ((("memory.swap.max", "0"),), True) in plain
    unlimited = v2_writes(Limits(memory=MiB, memory_swap=-1))
    assert (("memory.swap.max", "max"),) in [w.candidates for w in unlimited]


def test_v1_files_and_what_v1_cannot_do() -> None:
    v1 = Limits(**{**FULL.__dict__, "memory_high": None, "unified": {}})
    written = [(w.controller, w.candidates) for w in v1_writes(v1)]
    assert written == [
        ("memory", (("memory.soft_limit_in_bytes", str(16 * MiB)),)),
        ("pids", (("pids.max", "20"),)),
        ("cpu", (("cpu.cfs_period_us", "100000"),)),
        ("cpu", (("cpu.cfs_quota_us", "50000"),)),
        ("cpu", (("cpu.shares", "512"),)),
        ("cpuset", (("cpuset.cpus", "0-1"),)),
        ("cpuset", (("cpuset.mems", "0"),)),
        ("blkio", (("blkio.bfq.weight", "500"), ("blkio.weight", "500"))),
        ("blkio", (("blkio.throttle.read_bps_device", f"8:0 {MiB}"),)),
        ("blkio", (("blkio.throttle.write_iops_device", "8:0 100"),)),
        ("hugetlb", (("hugetlb.2MB.limit_in_bytes", str(4 * MiB)),)),
    ]
    with pytest.raises(MissingControllerError, match=r"--memory-high .* cgroup v2"):
        v1_writes(Limits(memory_high=MiB))
    with pytest.raises(MissingControllerError, match=r"--cgroup-conf.* memory\.min"):
        v1_writes(Limits(unified={"memory.min": "1"}))


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(memory_swap=MiB), "--memory-swap needs --memory"),
        (Limits(memory=2 * MiB, memory_swap=MiB), "at least --memory"),
        (Limits(cpu_shares=1), "--cpu-shares 1"),
        (Limits(blkio_weight=5000), "--blkio-weight 5000"),
        (Limits(memory_high=0), "--memory-high"),
        (Limits(unified={"../etc": "1"}), "unified key"),
        (Limits(hugetlb=(("2MB", 0),)), "--hugetlb"),
    ],
)
def test_invalid_limits(limits: Limits, message: str) -> None:
    with pytest.raises(CgroupError, match=message):
        check_limits(limits)


def test_flag_parsing(tmp_path: Path) -> None:
    assert parse_hugetlb("2MB:64M") == ("2MB", 64 * MiB)
    assert parse_cgroup_conf(["memory.min=1G", "io.max:8:0 rbps=1"]) == {
        "memory.min": "1G",
        "io.max": "8:0 rbps=1",
    }
    assert parse_memory_swap("-1") == -1 and parse_memory_swap("1g") == 1 << 30
    for bad in ("2M:1G", "2MB", "2MB:lots"):
        with pytest.raises(SpecError, match="--hugetlb"):
            parse_hugetlb(bad)
    with pytest.raises(SpecError, match="--cgroup-conf"):
        parse_cgroup_conf(["novalue"])
    with pytest.raises(SpecError, match="not a block device"):
        device_limit("/dev/null", 1, option="--device-read-bps")
    with pytest.raises(SpecError, match="No such file"):
        parse_device_rate(str(tmp_path / "nope") + ":1M", option="--device-read-bps", iops=False)
    with pytest.raises(SpecError, match="DEVICE:RATE"):
        parse_device_rate("1M", option="--device-read-bps", iops=False)
    device = a_block_device()
    if device is not None:
        st = os.stat(device)
        limit = parse_device_rate(f"{device}:2M", option="--device-read-bps", iops=False)
        assert limit == DeviceLimit(os.major(st.st_rdev), os.minor(st.st_rdev), 2 * MiB)
        with pytest.raises(SpecError, match="positive whole number"):
            parse_device_rate(f"{device}:1.5", option="--device-read-iops", iops=True)


# --------------------------------------------------------------------- v1 on this host


@pytest.fixture
def backend(v1_backend: V1Backend) -> V1Backend:
    return v1_backend


def read(path: str | None, filename: str) -> str:
    assert path is not None
    with open(os.path.join(path, filename)) as f:
        return f.read().strip()


@needs_v1
def test_v1_full_set_on_demand_hierarchies(backend: V1Backend) -> None:
    if "cpuset" not in backend.hierarchies or "blkio" not in backend.hierarchies:
        pytest.skip("needs the v1 cpuset and blkio hierarchies")
    device = a_block_device()
    assert device is not None
    st = os.stat(device)
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    cgroup = backend.create("full")
    assert cgroup.path("cpuset") not in cgroup.paths  # joined only when a limit needs it
    cgroup.apply(
        Limits(
            memory=64 * MiB,
            memory_swap=128 * MiB,
            memory_reservation=16 * MiB,
            cpu_shares=512,
            cpuset_cpus="0",
            cpuset_mems="0",
            device_read_bps=(DeviceLimit(major, minor, MiB),),
        )
    )
    assert read(cgroup.path("memory"), "memory.limit_in_bytes") == str(64 * MiB)
    if os.path.exists(os.path.join(cgroup.path("memory") or "", "memory.memsw.limit_in_bytes")):
        assert read(cgroup.path("memory"), "memory.memsw.limit_in_bytes") == str(128 * MiB)
    assert read(cgroup.path("memory"), "memory.soft_limit_in_bytes") == str(16 * MiB)
    assert read(cgroup.path("cpu"), "cpu.shares") == "512"
    assert read(cgroup.path("cpuset"), "cpuset.cpus") == "0"
    assert f"{major}:{minor} {MiB}" in read(cgroup.path("blkio"), "blkio.throttle.read_bps_device")
    assert cgroup.path("cpuset") in cgroup.paths and cgroup.path("blkio") in cgroup.paths
    # A task can join: the cpuset parents got cpus and mems copied down.
    proc = subprocess.Popen(["sleep", "30"])
    try:
        cgroup.attach(proc.pid)
        assert proc.pid in cgroup.procs()
    finally:
        proc.kill()
        proc.wait()
    cgroup.remove()
    assert not any(os.path.exists(p) for p in (cgroup.path("cpuset"), cgroup.path("blkio")))


@needs_v1
def test_v1_missing_controller_names_controller_and_flag(backend: V1Backend) -> None:
    cgroup = backend.create("miss")
    if "hugetlb" not in backend.hierarchies:  # this host: hugetlb is bound to cgroup2
        with pytest.raises(MissingControllerError, match=r"'hugetlb' controller.*--hugetlb"):
            cgroup.apply(Limits(memory=64 * MiB, hugetlb=(("2MB", 4 * MiB),)))
        # Checked before anything was written.
        assert int(read(cgroup.path("memory"), "memory.limit_in_bytes")) > 64 * MiB
    partial = V1Backend(
        parent=backend.parent,
        hierarchies={c: m for c, m in backend.hierarchies.items() if c != "cpuset"},
    )
    with pytest.raises(MissingControllerError, match=r"'cpuset' controller.*--cpuset-cpus"):
        partial.open("miss").apply(Limits(cpuset_cpus="0"))


@needs_v1
def test_v1_freeze_and_thaw(backend: V1Backend) -> None:
    cgroup = backend.create("freeze")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        cgroup.attach(proc.pid)
        cgroup.freeze()
        assert cgroup.frozen()
        with open(f"/proc/{proc.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] in ("D", "S")  # frozen looks asleep
        cgroup.thaw()
        assert not cgroup.frozen()
        cgroup.freeze()
        cgroup.kill()  # kill works on a frozen cgroup
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@needs_v1
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--hugetlb", "2MB:4M"], "'hugetlb' controller"),
        (["--memory-high", "4M"], "--memory-high"),
        (["--cgroup-conf", "memory.min=4M"], "--cgroup-conf"),
        (["--cpu-shares", "1"], "--cpu-shares '1' is out of range"),
        (["--device-read-bps", "/dev/null:1M"], "not a block device"),
    ],
)
def test_cli_limit_errors_are_one_line_125(rootfs: Path, flags: list[str], message: str) -> None:
    if "hugetlb" in HIERARCHIES and flags[0] == "--hugetlb":
        pytest.skip("this host has the v1 hugetlb controller")
    # (Nothing left behind: the autouse no_leaks fixture checks.)
    proc = run_vortex("run", *flags, str(rootfs), "/bin/true")
    assert proc.returncode == 125, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vortex: ") and message in lines[0], lines


def spec(rootfs: Path, script: str, **kwargs: object) -> ContainerSpec:
    kwargs.setdefault("stdout", Stdio.CAPTURE)
    kwargs.setdefault("stderr", Stdio.CAPTURE)
    kwargs.setdefault("stdin", Stdio.NULL)
    return ContainerSpec(rootfs=rootfs, command=["/bin/sh", "-c", script], **kwargs)  # type: ignore[arg-type]


@needs_v1
@pytest.mark.anyio
async def test_v1_runtime_stats_pause_resume_and_throttling(rootfs: Path) -> None:
    import anyio

    async with vortex.Runtime() as rt:
        container = await rt.start(
            spec(rootfs, "echo ready; while :; do echo tick; sleep 0.05; done", stdout=Stdio.STREAM)
        )
        assert container.stdout is not None
        assert (await container.stdout.receive()).startswith(b"ready\n")
        stats = container.stats()
        assert stats.memory_current is not None and stats.memory_current > 0
        assert stats.memory_stat.get("rss", -1) >= 0
        await container.pause()
        assert container.state == "paused"
        with anyio.move_on_after(0.2):
            while True:
                await container.stdout.receive()
        got = b""
        with anyio.move_on_after(0.5):
            got += await container.stdout.receive()
        assert got == b""
        await container.resume()
        with anyio.fail_after(10):
            assert b"tick" in await container.stdout.receive()
        await container.stdout.aclose()
        await container.pause()
        container.kill_all()
        result = await container.wait()
        assert result.signal == signal.SIGKILL
        with pytest.raises(vortex.errors.ContainerStateError):
            container.stats()

        busy = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"
        throttled = await rt.run(spec(rootfs, busy, resources=Resources(cpus=0.1)))
    assert throttled.exit_code == 0
    assert throttled.cpu_throttled_periods is not None and throttled.cpu_throttled_periods >= 1
    assert throttled.cpu_throttled_time is not None and throttled.cpu_throttled_time > 0


# A child shell hogs memory and is OOM-killed; PID 1 (small) survives and reports.
# memory.oom.group is switched off (it would take PID 1 down with the child).
CHILD_OOM_THEN_WAIT = OOM_CHILD + "read wait_for_the_test; echo done"


@needs_v1
@pytest.mark.anyio
async def test_v1_oom_of_a_child_is_notified_while_pid1_runs(rootfs: Path) -> None:
    import anyio

    async with vortex.Runtime() as rt:
        container = await rt.start(
            spec(
                rootfs,
                CHILD_OOM_THEN_WAIT,
                resources=Resources(memory=32 * MiB),
                stdin=Stdio.STREAM,
                stdout=Stdio.STREAM,
            )
        )
        assert container.stdout is not None and container.stdin is not None
        with anyio.fail_after(60):
            async with contextlib.aclosing(container.oom_events()) as events:
                count = await anext(events)
        assert count >= 1 and container.oom_kills == count
        assert container.result is None  # PID 1 still runs
        with anyio.fail_after(60):
            assert (await container.stdout.receive()).startswith(b"child=137")
        await container.stdin.send(b"go\n")
        await container.stdin.aclose()
        result = await container.wait()
        await container.stdout.aclose()
    assert result.exit_code == 0 and not result.oom_killed and result.oom_kills >= 1


def test_parent_resolution(tmp_path: Path) -> None:
    from vortex.cgroups.v2 import resolve_parent

    proc = tmp_path / "cgroup"
    (tmp_path / "user.slice" / "session-1.scope").mkdir(parents=True)
    for own, expected in (
        ("0::/\n", "vortex"),
        ("0::/user.slice/session-1.scope\n", "vortex"),  # not delegated: left alone
        ("0::/system.slice/x.service/vortex-runtime\n", "system.slice/x.service/containers"),
        ("12:memory:/x\n0::/\n", "vortex"),
    ):
        proc.write_text(own)
        assert resolve_parent(str(tmp_path), "auto", str(proc)) == expected, own
    assert resolve_parent(str(tmp_path), "my/parent", str(proc)) == "my/parent"


@needs_v1
@pytest.mark.anyio
async def test_v1_kill_all_does_not_wait_on_the_event_loop(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await check_kill_all_returns_without_waiting(rootfs, monkeypatch)
