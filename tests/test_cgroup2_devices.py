"""The eBPF device filter of containers on a pure cgroup v2 host.

Escape attempts in the style of tests/test_security.py: a container mknods a
device node where ``nodev`` is *not* in effect and tries to open it; under the
defaults the filter refuses it (EPERM: ``nodev`` would say EACCES), and with
the restriction relaxed the same attempt succeeds, so the check can fail.
Every test is marked ``cgroup2``: tests/test_cgroup2_vm.py runs them in the v2
VM.  The generator and loader themselves are tested on the host
(tests/test_bpf_devices.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

import vortex
from tests.conftest import run_vortex
from vortex.cgroups.v2 import V2Cgroup
from vortex.ops import MountFilesystem, SetupOp
from vortex.security import SecurityPolicy, bpf_devices
from vortex.spec import ContainerSpec, Stdio

pytestmark = pytest.mark.cgroup2

TIMEOUT = 240  # seconds for one CLI run under emulation
EPERM_TEXT = "Operation not permitted"

# Nodes on a tmpfs mounted without nodev: /dev/null's numbers (allowed), kmsg
# (1:11, opens write-only for any root, not in the list) and loop0 (7:0, block).
# ``true``, not ``:``: a failed redirection of a special builtin ends the shell.
ESCAPE = (
    "exec 2>&1; "
    "mknod /run/null c 1 3 && mknod /run/kmsg c 1 11 && mknod /run/loop b 7 0 || exit 9; "
    "cat /run/null && echo null-opened; "
    "true > /run/kmsg && echo kmsg-opened; "
    "head -c 1 /run/loop > /dev/null && echo loop-opened; "
    "true"
)


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the trio runs add VM time and test nothing cgroup-specific."""
    return "asyncio"


class DevMount:
    """A plugin mounting a tmpfs at /run *without* nodev (as a careless volume plugin might)."""

    __name__ = "devmount"

    @vortex.hookimpl
    def vortex_pre_pivot(self, container: vortex.Container) -> list[SetupOp]:
        return [MountFilesystem("tmpfs", "/run", "mode=755,size=64k", 0)]


class NoDeviceRestriction:
    """The weakened configuration: a plugin turning the device restriction off."""

    __name__ = "nodevices"

    @vortex.hookimpl(trylast=True)
    def vortex_security(self, container: vortex.Container, policy: SecurityPolicy) -> None:
        policy.restrict_devices = False


class FilterSpy:
    """Records the device programs attached to the container's cgroup, while the init waits."""

    __name__ = "filterspy"

    def __init__(self) -> None:
        self.programs: list[bpf_devices.ProgramInfo] = []

    @vortex.hookimpl(trylast=True)
    def vortex_post_cgroup(self, container: vortex.Container) -> None:
        assert isinstance(container.cgroup, V2Cgroup)
        self.programs = bpf_devices.attached_programs(container.cgroup.path)


def escape_spec(rootfs: Path) -> ContainerSpec:
    return ContainerSpec(
        rootfs=rootfs,
        command=["/bin/sh", "-c", ESCAPE],
        stdout=Stdio.CAPTURE,
        stderr=Stdio.CAPTURE,
        stdin=Stdio.NULL,
    )


async def run_escape(rootfs: Path, *plugins: object) -> tuple[str, FilterSpy]:
    spy = FilterSpy()
    async with vortex.Runtime(plugins=[DevMount(), spy, *plugins]) as rt:
        result = await rt.run(escape_spec(rootfs))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout is not None
    return result.stdout.decode(), spy


@pytest.mark.anyio
async def test_a_mknod_device_cannot_be_opened_where_nodev_is_off(rootfs: Path) -> None:
    text, spy = await run_escape(rootfs)
    # Exactly one program on the container's cgroup, ours, before the command ran.
    assert [(p.name, p.type) for p in spy.programs] == [("vortex_devices", 15)]
    # The mount is not nodev: the allowed node opens.  The others are refused by the
    # filter (EPERM; nodev would have said "Permission denied").
    assert "null-opened" in text, text
    assert "kmsg-opened" not in text and "loop-opened" not in text, text
    assert text.count(EPERM_TEXT) == 2, text

    # The program was freed together with the container's cgroup.
    deadline = time.monotonic() + 10
    while bpf_devices.program_info(spy.programs[0].id) is not None:
        assert time.monotonic() < deadline, "the device program outlived the container"
        await anyio.sleep(0.05)

    # Weakened: no device restriction, no program; the same attempt gets through.
    relaxed, relaxed_spy = await run_escape(rootfs, NoDeviceRestriction())
    assert relaxed_spy.programs == []
    assert "kmsg-opened" in relaxed and EPERM_TEXT not in relaxed, relaxed


def test_cli_container_with_sys_admin_mounting_its_own_tmpfs(rootfs: Path) -> None:
    """Even a container given SYS_ADMIN (and no seccomp) that mounts a fresh tmpfs,
    nodev-free, cannot open a device it mknods there; --privileged can."""
    script = (
        "mount -t tmpfs -o size=64k tmpfs /tmp || exit 8; "
        "mknod /tmp/kmsg c 1 11 || exit 9; true > /tmp/kmsg 2>&1 && echo kmsg-opened; true"
    )
    flags = ("--cap-add", "SYS_ADMIN", "--seccomp", "unconfined")
    confined = run_vortex(
        "run", "--no-tty", *flags, str(rootfs), "/bin/sh", "-c", script, timeout=TIMEOUT
    )
    assert confined.returncode == 0, confined.stderr
    out = confined.stdout.decode() + confined.stderr.decode()
    assert "kmsg-opened" not in out and EPERM_TEXT in out, out
    privileged = run_vortex(
        "run", "--no-tty", "--privileged", str(rootfs), "/bin/sh", "-c", script, timeout=TIMEOUT
    )
    assert privileged.returncode == 0, privileged.stderr
    assert b"kmsg-opened" in privileged.stdout, privileged.stdout + privileged.stderr
