"""The cgroup v2 device filter (vortex/security/bpf_devices.py) against the real kernel.

The hybrid host has an empty cgroup2 mount at /sys/fs/cgroup/unified, and a
device program attaches to any cgroup2 directory, controllers or not: so the
generator and the loader are tested here, on the host, with a cgroup of our
own.  A child process joins that cgroup and, in a private mount namespace,
mknods nodes on a tmpfs *without* nodev, then opens them.  The kernel refuses
a device the filter denies with EPERM (nodev would give EACCES), and the same
child without a program shows the check can fail.  The container-level tests
run in the v2 VM: tests/test_cgroup2_devices.py.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import run_python
from vortex.errors import CgroupError, SpecError
from vortex.security import bpf_devices
from vortex.security.devices import ALLOWED_DEVICES, DeviceRule, parse_rule

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="bpf(2) and mknod need root")

# The child: private mount namespace, a tmpfs without nodev, the nodes to open
# created *before* joining the cgroup (so that rule sets without "m" can still be
# tested on open), then the cgroup, then every operation; prints errno per op.
CHILD = r"""
import json, os, stat, sys
from vortex import _linux as L

cgroup, mountpoint, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
L.unshare(L.CLONE_NEWNS)
L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
L.mount("tmpfs", mountpoint, "tmpfs", 0, "size=64k,mode=700")
kinds = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}
for name, kind, major, minor in plan["nodes"]:
    os.mknod(os.path.join(mountpoint, name), 0o600 | kinds[kind], os.makedev(major, minor))
if cgroup:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write("0")
modes = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}
results = []
for op in plan["ops"]:
    try:
        if op[0] == "mknod":
            _, name, kind, major, minor = op
            os.mknod(os.path.join(mountpoint, name), 0o600 | kinds[kind], os.makedev(major, minor))
        else:
            _, name, mode = op
            flags = modes[mode] | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            os.close(os.open(os.path.join(mountpoint, name), flags))
        results.append(0)
    except OSError as exc:
        results.append(exc.errno)
print(json.dumps(results))
"""

# Devices whose open() by root never fails with EPERM in the driver itself, so
# that EPERM can only come from the filter: null, zero, kmsg, tty (ENXIO without a
# controlling terminal), a pts number, loop0, and a block device with char numbers.
DEVICES: tuple[tuple[str, int, int], ...] = (
    ("c", 1, 3),
    ("c", 1, 5),
    ("c", 1, 11),
    ("c", 5, 0),
    ("c", 136, 7),
    ("b", 7, 0),
    ("b", 1, 3),
)
ACCESSES = ("r", "w", "rw")


def cgroup2_mount() -> str | None:
    """A cgroup2 mount point: the hybrid host's /sys/fs/cgroup/unified, or a pure v2 root."""
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    return None


@pytest.fixture
def cgroup_dir() -> Iterator[str]:
    """An empty cgroup2 directory of this test; removed afterwards (with its programs)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 mount on this host")
    path = os.path.join(mount, f"vortex-bpftest-{secrets.token_hex(4)}")
    os.mkdir(path)
    try:
        yield path
    finally:
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(path)
                break
            except OSError as exc:
                # The child was reaped, but its cgroup membership is dropped lazily.
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def run_child(cgroup: str, mountpoint: Path, plan: dict[str, object]) -> list[int]:
    mountpoint.mkdir(exist_ok=True)
    proc = run_python(CHILD, cgroup, str(mountpoint), json.dumps(plan))
    result: list[int] = json.loads(proc.stdout)
    return result


def node_name(kind: str, major: int, minor: int) -> str:
    return f"{kind}{major}_{minor}"


def matrix_plan() -> tuple[dict[str, object], list[tuple[str, int, int, str]]]:
    """Every device of DEVICES opened with every access, then a fresh mknod of each."""
    nodes = [(node_name(*d), *d) for d in DEVICES]
    cases = [(*d, access) for d in DEVICES for access in ACCESSES]
    ops: list[list[object]] = [["open", node_name(k, ma, mi), a] for k, ma, mi, a in cases]
    ops += [["mknod", "m" + node_name(*d), *d] for d in DEVICES]
    cases += [(*d, "m") for d in DEVICES]
    return {"nodes": nodes, "ops": ops}, cases


def v1_semantics(rules: Sequence[str], kind: str, major: int, minor: int, access: str) -> bool:
    """What the v1 devices controller allows: rules with equal type and numbers are
    merged, then one rule must cover the whole access.  Written independently of
    the generator, as the reference it is checked against."""
    merged: dict[tuple[str, str, str], set[str]] = {}
    for rule in rules:
        fields = rule.split()
        if fields[0] == "a":
            return True
        merged.setdefault((fields[0], *fields[1].split(":")), set()).update(fields[2])  # type: ignore[arg-type]
    for (k, ma, mi), allowed in merged.items():
        if k != kind or ma not in ("*", str(major)) or mi not in ("*", str(minor)):
            continue
        if set(access) <= allowed:
            return True
    return False


# --------------------------------------------------------------------- unit: no root


def test_rules_parse_as_the_v1_kernel_reads_them() -> None:
    assert parse_rule("c 136:* rwm") == DeviceRule("c", 136, None, "rwm")
    assert parse_rule("b *:* m") == DeviceRule("b", None, None, "m")
    assert parse_rule("c 1:3 wr") == DeviceRule("c", 1, 3, "rw")
    assert parse_rule("a") == parse_rule("a *:* rwm") == DeviceRule("a", None, None, "rwm")
    assert [str(parse_rule(r)) for r in ALLOWED_DEVICES] == list(ALLOWED_DEVICES)
    for bad in ("x 1:3 r", "c 1:3", "c 1 r", "c 1:3 rx", "c 1:3 rr", "c 4096:0 r", "a 1:3 r", ""):
        with pytest.raises(SpecError):
            parse_rule(bad)
    with pytest.raises(SpecError):
        parse_rule("c 1:\u00b2 r")  # a digit to str.isdigit, not to int()


def test_program_shape() -> None:
    program = bpf_devices.instructions(ALLOWED_DEVICES)
    encoded = bpf_devices.compile_rules(ALLOWED_DEVICES)
    assert len(encoded) == 8 * len(program)
    # Ends with "r0 = 0; exit": whatever no rule allows is denied.
    assert program[-2:] == [bpf_devices.Insn(0xB7, 0, imm=0), bpf_devices.Insn(0x95)]
    # Every jump lands on the first instruction of a later block (or the final deny).
    starts = {i + 1 for i, insn in enumerate(program) if insn.code == 0x95}
    for i, insn in enumerate(program):
        if insn.code & 0x07 == 0x05 and insn.code != 0x95:
            assert i + 1 + insn.off in starts, (i, insn)
    # "a" allows everything: two instructions.
    assert bpf_devices.instructions(["c 1:3 r", "a"]) == [
        bpf_devices.Insn(0xB7, 0, imm=1),
        bpf_devices.Insn(0x95),
    ]
    # "r0 = 1" encodes as code, dst|src<<4, off, imm in native byte order.
    assert bpf_devices.Insn(0xB7, 0, imm=1).encode() == (
        b"\xb7\x00\x00\x00\x01\x00\x00\x00"
        if sys.byteorder == "little"
        else b"\xb7\x00\x00\x00\x00\x00\x00\x01"
    )
    assert bpf_devices.Insn(0x61, 2, 1, 4).encode()[:4] == (
        b"\x61\x12\x04\x00" if sys.byteorder == "little" else b"\x61\x21\x00\x04"
    )


def test_rules_with_equal_numbers_merge() -> None:
    assert bpf_devices.merge(["c 1:3 r", "c 1:3 w", "c 1:* m"]) == [
        DeviceRule("c", 1, 3, "rw"),
        DeviceRule("c", 1, None, "m"),
    ]


# --------------------------------------------------------------------- the kernel


@needs_root
def test_the_filter_refuses_a_mknod_device_that_opens_without_it(
    cgroup_dir: str, tmp_path: Path
) -> None:
    nodes = [("null", "c", 1, 3), ("kmsg", "c", 1, 11)]
    ops = [["open", "null", "rw"], ["open", "kmsg", "w"], ["mknod", "kmsg2", "c", 1, 11]]
    has_loop = os.path.exists("/dev/loop0") and stat.S_ISBLK(os.stat("/dev/loop0").st_mode)
    if has_loop:
        nodes.append(("loop", "b", 7, 0))
        ops.append(["open", "loop", "r"])
    plan = {"nodes": nodes, "ops": ops}

    # No program: every open succeeds, so the check below can fail.
    assert run_child(cgroup_dir, tmp_path / "mnt", plan) == [0] * len(ops)

    program = bpf_devices.install(cgroup_dir)
    attached = bpf_devices.attached_programs(cgroup_dir)
    assert [(p.id, p.name, p.type) for p in attached] == [(program, "vortex_devices", 15)]
    # /dev/null opens; kmsg (and the loop device) cannot; mknod itself is allowed ("m").
    expected = [0, errno.EPERM, 0] + ([errno.EPERM] if has_loop else [])
    assert run_child(cgroup_dir, tmp_path / "mnt", plan) == expected


@pytest.mark.parametrize(
    "rules",
    [
        ALLOWED_DEVICES,
        ("c 1:* r",),
        ("c 1:* r", "c 1:3 w"),  # rw on 1:3 needs one rule with both: refused
        ("c 1:3 r", "c 1:3 w"),  # merged into one rule: rw allowed
        ("b *:* rwm", "c *:5 rw"),
        ("c 5:0 m", "b 7:0 w", "c 136:* rw"),
        ("a",),
        (),
    ],
    ids=lambda rules: "|".join(rules) or "nothing",
)
@needs_root
def test_kernel_decisions_follow_v1_semantics(
    rules: tuple[str, ...], cgroup_dir: str, tmp_path: Path
) -> None:
    plan, cases = matrix_plan()
    bpf_devices.install(cgroup_dir, rules)
    results = run_child(cgroup_dir, tmp_path / "mnt", plan)
    seen = {case: result != errno.EPERM for case, result in zip(cases, results, strict=True)}
    expected = {case: v1_semantics(rules, *case) for case in cases}
    wrong = {case: seen[case] for case in cases if seen[case] != expected[case]}
    assert not wrong, f"allowed (True) / refused (False) against v1 semantics: {wrong}"


@needs_root
def test_without_a_program_nothing_is_refused(cgroup_dir: str, tmp_path: Path) -> None:
    """The matrix above would be vacuous if a driver itself answered EPERM."""
    plan, cases = matrix_plan()
    results = run_child(cgroup_dir, tmp_path / "mnt", plan)
    refused = [case for case, result in zip(cases, results, strict=True) if result == errno.EPERM]
    assert not refused


@needs_root
def test_the_program_goes_away_with_the_cgroup(tmp_path: Path) -> None:
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 mount on this host")
    path = os.path.join(mount, f"vortex-bpftest-{secrets.token_hex(4)}")
    os.mkdir(path)
    try:
        program = bpf_devices.install(path)
        assert bpf_devices.program_info(program) is not None
    finally:
        os.rmdir(path)
    # The cgroup's programs are released asynchronously (a kernel work item).
    deadline = time.monotonic() + 10
    while bpf_devices.program_info(program) is not None:
        assert time.monotonic() < deadline, f"program {program} outlived its cgroup"
        time.sleep(0.02)


@needs_root
def test_a_verifier_rejection_is_a_clear_error() -> None:
    exit_without_r0 = bpf_devices.Insn(0x95).encode()
    with pytest.raises(CgroupError, match=r"verifier rejected .*R0 !read_ok"):
        bpf_devices.load(exit_without_r0)


def test_an_unprivileged_load_names_the_capability() -> None:
    code = (
        "import os\n"
        "from vortex.security import bpf_devices\n"
        "from vortex.errors import CgroupError\n"
        "if os.geteuid() == 0:\n"
        "    os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        "    bpf_devices.load(bpf_devices.compile_rules())\n"
        "except CgroupError as e:\n"
        "    print(e)\n"
    )
    proc = run_python(code)
    assert "operation not permitted" in proc.stdout and "CAP_SYS_ADMIN" in proc.stdout


@needs_root
def test_install_into_a_missing_cgroup_is_a_cgroup_error(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="cannot open cgroup"):
        bpf_devices.install(str(tmp_path / "nope"))
