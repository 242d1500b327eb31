"""Pure parts of vortex.cgroups (no root needed), plus v2 on a hybrid host's cgroup2.

The parsers get the pseudo-files' text as the kernel writes it; detection is
tried on fake roots; the last tests use the controller-less cgroup2 that a
hybrid host mounts at /sys/fs/cgroup/unified, which exercises the v2 backend's
placement, kill and MissingControllerError paths on the host itself.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vortex.cgroups import CgroupError, Limits, MissingControllerError, detect
from vortex.cgroups._common import (
    Mount,
    cfs_quota_us,
    check_limits,
    check_name,
    cpu_max_value,
    normalize_parent,
    parse_controllers,
    parse_flat_keyed,
    parse_int,
    parse_mountinfo,
    parse_pids,
    parse_populated,
    v1_hierarchies,
)
from vortex.cgroups.v1 import V1Backend, V1Cgroup
from vortex.cgroups.v2 import V2Backend

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

# systemd-style: optional fields, co-mounted cpu,cpuacct, net_cls,net_prio,
# and a bind mount of a memory subtree elsewhere.
SYSTEMD_MOUNTINFO = """\
25 18 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/net_cls,net_prio rw shared:12 - cgroup cgroup rw,net_cls,net_prio
30 25 0:27 /docker/abc /sys/fs/cgroup/memory rw shared:13 master:2 - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/memory2 rw shared:14 - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw shared:15 - cgroup cgroup rw,pids
33 18 0:28 / /mnt/elsewhere/pids rw shared:16 - cgroup cgroup rw,pids
"""


def test_parse_flat_keyed() -> None:
    events = "low 0\nhigh 0\nmax 94\noom 1\noom_kill 1\noom_group_kill 0\n"
    assert parse_flat_keyed(events)["oom_kill"] == 1
    cpu_stat = "usage_usec 733054\nuser_usec 1\nsystem_usec 2\nnr_throttled 36\n"
    assert parse_flat_keyed(cpu_stat)["usage_usec"] == 733054
    # Odd lines are skipped, the rest still parses.
    assert parse_flat_keyed("a 1\nb two\nc\n\nd 4 5\ne -3\n") == {"a": 1, "e": -3}
    oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    assert parse_flat_keyed(oom_control)["oom_kill"] == 3


def test_parse_single_values() -> None:
    assert parse_int("123\n") == 123
    assert parse_int("max\n") is None
    assert parse_int("") is None
    assert parse_pids("12\n345\n") == [12, 345]
    assert parse_pids("") == []
    assert parse_controllers("cpuset cpu io memory pids\n") == {
        "cpuset",
        "cpu",
        "io",
        "memory",
        "pids",
    }
    assert parse_controllers("\n") == frozenset()
    assert parse_populated("populated 1\nfrozen 0\n")
    assert not parse_populated("populated 0\nfrozen 0\n")


def test_cpu_values() -> None:
    assert cfs_quota_us(0.5) == 50_000
    assert cfs_quota_us(1.5) == 150_000
    assert cpu_max_value(0.1) == "10000 100000"
    assert cpu_max_value(2) == "200000 100000"


def test_parse_mountinfo_handles_optional_fields_and_escapes() -> None:
    mounts = parse_mountinfo(SYSTEMD_MOUNTINFO + "garbage line\n")
    assert len(mounts) == 7
    assert mounts[3] == Mount(
        root="/docker/abc",
        mount_point="/sys/fs/cgroup/memory",
        fstype="cgroup",
        super_options=frozenset({"rw", "memory"}),
    )
    escaped = parse_mountinfo("1 2 0:3 / /mnt/with\\040space rw - cgroup2 none rw\n")
    assert escaped[0].mount_point == "/mnt/with space"


def test_v1_hierarchies_of_a_hybrid_host() -> None:
    found = v1_hierarchies(parse_mountinfo(HYBRID_MOUNTINFO), "/sys/fs/cgroup")
    assert found == {
        "cpu": "/sys/fs/cgroup/cpu",
        "cpuacct": "/sys/fs/cgroup/cpuacct",
        "freezer": "/sys/fs/cgroup/freezer",
        "memory": "/sys/fs/cgroup/memory",
        "pids": "/sys/fs/cgroup/pids",
    }  # name=systemd and the cgroup2 mount are not controllers


def test_v1_hierarchies_comounted_and_bind_mounts() -> None:
    found = v1_hierarchies(parse_mountinfo(SYSTEMD_MOUNTINFO), "/sys/fs/cgroup")
    assert found["cpu"] == found["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert found["net_cls"] == found["net_prio"]
    assert found["memory"] == "/sys/fs/cgroup/memory2"  # the hierarchy's top wins
    assert found["pids"] == "/sys/fs/cgroup/pids"  # the mount outside the root is ignored
    assert v1_hierarchies(parse_mountinfo(SYSTEMD_MOUNTINFO), "/nowhere") == {}


def test_comounted_controllers_share_one_directory() -> None:
    cgroup = V1Cgroup(
        "c",
        {"memory": "/m/vortex/c", "cpu": "/cc/vortex/c", "cpuacct": "/cc/vortex/c"},
        timeout=1,
    )
    assert cgroup.paths == ["/m/vortex/c", "/cc/vortex/c"]
    assert cgroup.path("cpuacct") == "/cc/vortex/c"
    assert cgroup.path("pids") is None
    assert cgroup.clone_fd() is None


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x\0y", "n" * 256])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(CgroupError, match="invalid cgroup name"):
        check_name(name)


def test_parent_paths() -> None:
    assert normalize_parent("vortex") == "vortex"
    assert normalize_parent("/a/b/") == "a/b"
    for bad in ("", "/", "a/../b", "a//b"):
        with pytest.raises(CgroupError, match="invalid cgroup parent"):
            normalize_parent(bad)


def test_limit_validation() -> None:
    check_limits(Limits())
    check_limits(Limits(memory=1, pids=1, cpus=0.01))
    for bad, what in (
        (Limits(memory=0), "memory"),
        (Limits(memory=True), "memory"),
        (Limits(pids=0), "pids"),
        (Limits(cpus=0.004), "cpus"),
        (Limits(cpus=-1), "cpus"),
        (Limits(cpus=float("nan")), "cpus"),
        (Limits(cpus=float("inf")), "cpus"),
    ):
        with pytest.raises(CgroupError, match=f"invalid {what} limit"):
            check_limits(bad)


def test_detect_on_fake_roots(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="no usable cgroup hierarchy"):
        detect(str(tmp_path))
    (tmp_path / "cgroup.controllers").write_text("memory pids cpu\n")
    backend = detect(str(tmp_path), "x/y")
    assert isinstance(backend, V2Backend)
    assert backend.parent_path == str(tmp_path / "x" / "y")
    assert list(tmp_path.iterdir()) == [tmp_path / "cgroup.controllers"]  # nothing created


def test_v1_backend_needs_a_hierarchy(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="no cgroup v1 hierarchy"):
        V1Backend(str(tmp_path))
    with pytest.raises(CgroupError, match="no cgroup v1 hierarchy"):
        V1Backend(hierarchies={"name=systemd": "/sys/fs/cgroup/systemd"})


# ---------------------------------------------------------------------------
# v2 on the controller-less cgroup2 of a hybrid host (this dev machine).

UNIFIED = "/sys/fs/cgroup/unified"


def _unified_is_cgroup2() -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1:3] == [UNIFIED, "cgroup2"] for line in f)


@pytest.fixture
def unified() -> Iterator[V2Backend]:
    if os.geteuid() != 0 or not _unified_is_cgroup2():
        pytest.skip(f"needs root and a cgroup2 mount at {UNIFIED} (hybrid host)")
    backend = V2Backend(UNIFIED, f"vortex-test-{secrets.token_hex(4)}")
    yield backend
    for name in backend.names():
        backend.open(name).remove()
    if os.path.isdir(backend.parent_path):
        os.rmdir(backend.parent_path)


def test_v2_without_controllers(unified: V2Backend) -> None:
    """Placement, kill and remove need no controller; limits do, and say which."""
    with open(os.path.join(UNIFIED, "cgroup.controllers")) as f:
        available = parse_controllers(f.read())
    cgroup = unified.create("bare")
    missing = {"memory", "pids", "cpu"} - available
    assert missing, "this hybrid cgroup2 unexpectedly has the controllers"
    limits = Limits(memory=1 << 26, pids=5, cpus=1.0)
    with pytest.raises(MissingControllerError, match=r"cgroup v2 '(memory|pids|cpu)' controller"):
        cgroup.apply(limits)

    proc = subprocess.Popen(["sleep", "30"])
    try:
        cgroup.attach(proc.pid)
        assert cgroup.procs() == [proc.pid]
        assert cgroup.populated()
        cgroup.kill()
        assert proc.wait(timeout=10) == -9
        assert not cgroup.populated()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    cgroup.remove()
    cgroup.remove()
    assert not os.path.exists(cgroup.path)
