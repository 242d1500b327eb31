"""The spare init (vortex/spare.py): the next container's init, cloned ahead."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

import vortex
import vortex.runtime
from tests.conftest import (
    children_of,
    reachable_copy,
    run_python,
    vortex_cgroups,
)
from vortex import _linux as L
from vortex.cgroups._common import read_procs
from vortex.cgroups.v1 import V1Cgroup
from vortex.container import Container
from vortex.hookspecs import hookimpl
from vortex.log import configure_logging
from vortex.ops import LoopbackUp, SetupOp
from vortex.security.options import SecurityOptions
from vortex.security.policy import SecurityPolicy
from vortex.spare import SpareInit
from vortex.spec import ContainerSpec, Resources, Stdio, User

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

USER_NAMESPACE = "200000:65536"


def spec(rootfs: Path, *command: str, **kwargs: object) -> ContainerSpec:
    kwargs.setdefault("stdout", Stdio.CAPTURE)
    kwargs.setdefault("stdin", Stdio.NULL)
    return ContainerSpec(rootfs=rootfs, command=list(command), **kwargs)  # type: ignore[arg-type]


def stat_fields(pid: int) -> tuple[str, list[str]] | None:
    """A process's name and the /proc/PID/stat fields after it (state, parent PID,
    process group, session...); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            name_part, rest = f.read().rsplit(")", 1)
    except FileNotFoundError:
        return None
    return name_part.split("(", 1)[1], rest.split()


def process(pid: int) -> tuple[str, str, int] | None:
    """(name, state, parent PID) of a process; None once it is gone."""
    found = stat_fields(pid)
    if found is None:
        return None
    name, fields = found
    return name, fields[0], int(fields[1])


def cgroup_v2_path(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line for line in f.read().splitlines() if line.startswith("0::"))[3:]


async def test_the_next_container_takes_the_spare(rootfs: Path) -> None:
    async with vortex.Runtime() as rt:
        assert await rt.spare() is None  # nothing is cloned before the first start
        assert (await rt.run(spec(rootfs, "/bin/true"))).exit_code == 0
        spare = await rt.spare()
        assert spare is not None
        # Waiting (once it has prepared, see below), cloned with CLONE_PARENT: our
        # child, as every init is.
        deadline = time.monotonic() + 10
        while process(spare.pid) != ("vortex-spare", "S", os.getpid()):
            assert time.monotonic() < deadline, process(spare.pid)
            await anyio.sleep(0.01)
        container = await rt.start(spec(rootfs, "/bin/sh", "-c", "echo $$"))
        assert container.pid == spare.pid
        # It came with its id and cgroup (it is in that cgroup), now the container's.
        assert container.id == spare.container_id and container.cgroup is spare.cgroup
        result = await container.wait()
        assert (result.exit_code, result.stdout) == (0, b"1\n")  # PID 1 of its namespace
        # The helper cloned the next one meanwhile.
        following = await rt.spare()
        assert following is not None and following.pid != spare.pid
    assert process(following.pid) is None  # ended and reaped with the Runtime


async def check_spare_in_its_own_cgroup(rootfs: Path) -> None:
    """A waiting spare is in its cgroup (every hierarchy), with a state record; a
    container that takes it keeps both, under its own name; they go with it."""
    async with vortex.Runtime() as rt:
        await rt.run(spec(rootfs, "/bin/true"))
        spare = await rt.spare()
        assert spare is not None and spare.container_id is not None
        assert spare.cgroup is not None and spare.cgroup.procs() == [spare.pid]
        procs_files = spare.cgroup.procs_files()
        assert spare.placed_in == frozenset(procs_files)
        for procs_file in procs_files:
            assert f"/{spare.container_id}/" in procs_file
            assert read_procs(procs_file) == [spare.pid]
        assert (Path("/run/vortex/containers") / f"{spare.container_id}.json").exists()
        named = await rt.run(spec(rootfs, "/bin/true", name="named-after-spare"))
        assert named.container_id == spare.container_id and named.name == "named-after-spare"
    assert not (Path("/run/vortex/containers") / f"{spare.container_id}.json").exists()
    assert not any(Path(procs_file).parent.exists() for procs_file in procs_files)


async def test_a_spare_is_in_its_own_cgroup(rootfs: Path) -> None:
    """On the v1 host the spare moves itself into each hierarchy before it waits."""
    await check_spare_in_its_own_cgroup(rootfs)


@pytest.mark.cgroup2
async def test_spare_on_cgroup_v2_is_in_its_own_cgroup(rootfs: Path) -> None:
    """On v2 it is cloned into its cgroup (CLONE_INTO_CGROUP)."""
    await check_spare_in_its_own_cgroup(rootfs)
    async with vortex.Runtime() as rt:
        await rt.run(spec(rootfs, "/bin/true"))
        spare = await rt.spare()
        assert spare is not None
        assert cgroup_v2_path(spare.pid).endswith(f"/{spare.container_id}")


async def test_a_limit_on_a_v1_hierarchy_made_on_demand_moves_the_spare_into_it(
    rootfs: Path,
) -> None:
    """A cpuset limit creates the container's cpuset cgroup only in vortex_prepare
    (cgroup v1: after the spare moved itself in): the Runtime moves the init there
    before it runs, so the command runs on the CPUs allowed."""
    limits = Resources(memory=None, cpuset_cpus="0")
    async with vortex.Runtime() as rt:
        await rt.run(spec(rootfs, "/bin/true"))
        spare = await rt.spare()
        assert spare is not None
        result = await rt.run(
            spec(rootfs, "/bin/grep", "Cpus_allowed_list", "/proc/self/status", resources=limits)
        )
        assert result.container_id == spare.container_id
        assert result.stdout.split() == [b"Cpus_allowed_list:", b"0"]


async def test_a_spare_that_cannot_join_its_cgroup_leaves_nothing_behind(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cgroup v1: a spare that could not move itself into its cgroup (here the
    kernel refuses a cpuset without CPUs) reports why and exits.  Its clone fails:
    neither the process, nor its cgroup, nor its state record is left, the Runtime
    clones no more spares (the next would fail alike) and clones each init fresh."""
    events = io.StringIO()
    configure_logging("warning", "json", events)
    try:
        await check_unjoinable_spare_released(rootfs, monkeypatch)
    finally:
        configure_logging()
    [warning] = [json.loads(line) for line in events.getvalue().splitlines()]
    assert warning["event"] == "spare.disabled"
    reason = r"cannot move the spare init into .*/cpuset/.*: No space left on device"
    assert re.fullmatch(reason, warning["error"])


async def check_unjoinable_spare_released(rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with vortex.Runtime() as rt:
        if rt.cgroups is None or rt.cgroups.version != 1:
            pytest.skip("the spare moves itself into its cgroup only on cgroup v1")
        await rt.run(spec(rootfs, "/bin/true"))
        assert await rt.spare() is not None
        create = rt.cgroups.create
        made: list[V1Cgroup] = []

        def create_unjoinable(name: str) -> V1Cgroup:
            cgroup = create(name)
            assert isinstance(cgroup, V1Cgroup)
            made.append(cgroup)
            cgroup.apply(Resources(memory=None, cpuset_cpus="0"))  # joins cpuset
            cpuset = cgroup.path("cpuset")
            assert cpuset is not None
            Path(cpuset, "cpuset.cpus").write_text("\n")  # no CPUs: no task may join
            return cgroup

        with monkeypatch.context() as patched:
            patched.setattr(rt.cgroups, "create", create_unjoinable)
            await rt.run(spec(rootfs, "/bin/true"))  # takes the spare; the next is unjoinable
            assert await rt.spare() is None
        [unjoinable] = made
        assert children_of(os.getpid(), "vortex-spare") == []  # reaped
        assert not any(Path(f).parent.exists() for f in unjoinable.procs_files())
        assert not (Path("/run/vortex/containers") / f"{unjoinable.name}.json").exists()
        assert (await rt.run(spec(rootfs, "/bin/true"))).exit_code == 0
        assert await rt.spare() is None


async def test_after_an_idle_pause_the_next_spare_is_cloned_at_the_exit(rootfs: Path) -> None:
    """Runtime._next_spare_at_exit: a start that finds the Runtime idle (for longer
    than a clone takes) leaves the kernel to its container, and the next spare is
    cloned once that container exited; a start beside a running container has
    the next one cloned right away."""
    async with vortex.Runtime() as rt:
        first = await rt.start(spec(rootfs, "/bin/sleep", "60"))  # the helper clones it
        assert await rt.spare() is not None  # cloned right away: no spare was taken
        second = await rt.start(spec(rootfs, "/bin/sleep", "60"))  # takes it, beside first
        assert await rt.spare() is not None  # so the next one is cloned right away too
        for container in (first, second):
            container.kill(signal.SIGKILL)
            await container.wait()
        await anyio.sleep(0.5)  # idle: far longer than a clone (~2 ms)
        third = await rt.start(spec(rootfs, "/bin/sleep", "60"))
        assert await rt.spare() is None  # nothing is cloned while it runs
        third.kill(signal.SIGKILL)
        await third.wait()
        following = await rt.spare()
        assert following is not None and process(following.pid) is not None


def faults_taken(pid: int) -> int:
    """How many page faults a process has taken (minor ones: copy-on-write among
    them, and the pages ``MADV_POPULATE_WRITE`` wrote)."""
    found = stat_fields(pid)
    assert found is not None, f"process {pid} is gone"
    return int(found[1][7])


PREFAULT_MARGIN = 64
"""How many more faults a spare that wrote its init's pages ahead has taken than one
that did not, at least: 140-330 here, while two that did not differ by ~10."""


def wait_until_faulted(pid: int, count: int) -> None:
    deadline = time.monotonic() + 20
    while (taken := faults_taken(pid)) < count:
        assert time.monotonic() < deadline, f"took only {taken} of {count} faults"
        time.sleep(0.02)


def settled_faults(pid: int) -> int:
    time.sleep(0.3)  # a spare's own first steps (and any copying) are long done by then
    return faults_taken(pid)


async def _spare_after_an_idle_exit(
    rt: vortex.Runtime, rootfs: Path, **kwargs: object
) -> SpareInit:
    """Start a container (of ``kwargs``) after an idle pause, so that the next spare
    is cloned at its exit with nothing running; return that spare.  The two
    containers before it are its helper's learners (vortex/helper/prefault.py)."""
    assert (await rt.run(spec(rootfs, "/bin/true", **kwargs))).exit_code == 0
    await anyio.sleep(0.3)  # idle: far longer than a clone
    assert (await rt.run(spec(rootfs, "/bin/true", **kwargs))).exit_code == 0
    spare = await rt.spare()
    assert spare is not None
    return spare


CONTAINERS_OF = {
    "root": {},
    # Without capabilities: once it has taken the user, its own pagemap is closed to it.
    "user": {"user": User(1000, 1000), "security": SecurityOptions(cap_drop=["ALL"])},
}


@pytest.mark.parametrize("learners", CONTAINERS_OF)
async def test_an_idle_spare_takes_its_inits_faults_ahead(rootfs: Path, learners: str) -> None:
    """By default a spare cloned with no container running writes, while it waits, the
    pages its helper's first inits wrote (vortex/helper/prefault.py); with
    spare_prefault=False it shares them with the helper until its init writes them.
    Also when those inits ran containers as another user than root, without
    capabilities (they list their pages before they take the user)."""
    kwargs = CONTAINERS_OF[learners]
    async with vortex.Runtime(spare_prefault=False) as rt:
        waiting = settled_faults((await _spare_after_an_idle_exit(rt, rootfs, **kwargs)).pid)
    async with vortex.Runtime() as rt:
        spare = await _spare_after_an_idle_exit(rt, rootfs, **kwargs)
        wait_until_faulted(spare.pid, waiting + PREFAULT_MARGIN)


async def check_prefault_at_no_extra_peak(rootfs: Path) -> None:
    """The spare is in its container's cgroup, so what it copies is charged there:
    the pages its init would copy anyway, so the container's memory peak stays
    about what it is without the copying."""
    faults, peaks = [], []
    for prefault in (False, True):
        async with vortex.Runtime(spare_prefault=prefault) as rt:
            spare = await _spare_after_an_idle_exit(rt, rootfs)
            assert spare.cgroup is not None
            assert spare.placed_in == frozenset(spare.cgroup.procs_files())
            faults.append(settled_faults(spare.pid))
            result = await rt.run(spec(rootfs, "/bin/true"))  # takes it
            assert result.exit_code == 0 and result.memory_peak is not None
            peaks.append(result.memory_peak)
    assert faults[1] >= faults[0] + PREFAULT_MARGIN, faults
    assert peaks[1] < peaks[0] + (1 << 20), peaks


async def test_a_spare_prefaults_in_its_cgroup_at_no_extra_peak(rootfs: Path) -> None:
    """On the v1 host: the spare moved itself into its cgroup before it copies."""
    await check_prefault_at_no_extra_peak(rootfs)


@pytest.mark.cgroup2
async def test_on_cgroup_v2_a_spare_prefaults_in_its_cgroup_at_no_extra_peak(
    rootfs: Path,
) -> None:
    await check_prefault_at_no_extra_peak(rootfs)


async def test_a_spare_is_taken_while_it_copies(rootfs: Path) -> None:
    """A start right after the clone takes the spare in the middle of its copying
    (or before it): the container runs as from any init."""
    async with vortex.Runtime() as rt:
        pid = (await _spare_after_an_idle_exit(rt, rootfs)).pid  # just cloned: copying
        result = await rt.run(spec(rootfs, "/bin/echo", "taken"))
        assert (result.exit_code, result.stdout) == (0, b"taken\n")
        assert process(pid) is None  # it was that container's init, reaped


WRITTEN_PAGES_IN_A_CHILD = """
import ctypes, mmap, os, resource, socket, sys
from vortex.helper.prefault import WrittenPages, populate_until_readable
PAGE = mmap.PAGESIZE
region = mmap.mmap(-1, 64 * PAGE, flags=mmap.MAP_PRIVATE)
region.write(b"x" * len(region))  # present, and ours alone: until the fork
base = ctypes.addressof(ctypes.c_char.from_buffer(region))
ledger = WrittenPages()
child = os.fork()
if child == 0:
    for page in (3, 4, 5, 9, 40):
        region[page * PAGE] = ord("y")
    ledger.record(0)
    os._exit(0)
os.waitpid(child, 0)
ledger.refresh()
inside = [(a, n) for a, n in ledger.runs if base <= a < base + len(region)]
print(" ".join(f"{(a - base) // PAGE}+{n // PAGE}" for a, n in inside))
ours, theirs = socket.socketpair()
if sys.argv[1] == "request-waiting":
    ours.send(b"x")
def faults_writing(pages):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for page in pages:
        region[page * PAGE] = ord("z")
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
child = os.fork()
if child == 0:
    populate_until_readable(tuple(inside), theirs.fileno())
    faults_writing([60]), faults_writing([61])  # the interpreter's own first faults
    print(faults_writing([3, 4, 5, 9, 40]), faults_writing([10, 11, 12, 13, 14]), flush=True)
    os._exit(0)
os.waitpid(child, 0)
"""


@pytest.mark.parametrize("pending", ["nothing", "request-waiting"])
def test_the_pages_a_clone_wrote_are_written_ahead_in_the_next(pending: str) -> None:
    """WrittenPages with the kernel's own bookkeeping: a forked child writes five pages
    of a region it shares with its parent and lists what it wrote; the parent reads
    exactly those runs; a second child that populated them takes no fault writing
    them (five it did not populate take one each), unless its socket already had a
    request: then it stops before the first run."""
    listed, faults = run_python(WRITTEN_PAGES_IN_A_CHILD, pending).stdout.splitlines()
    assert listed == "3+3 9+1 40+1"
    populated, others = map(int, faults.split())
    assert others >= 5
    if pending == "nothing":
        assert populated <= 1, (populated, others)  # 1: room for one of the interpreter's
    else:
        assert populated >= 5, (populated, others)


LARGE_WRITE_IN_A_CHILD = """
import mmap, os
from vortex.helper.prefault import MAX_PAGES, WrittenPages
region = mmap.mmap(-1, (MAX_PAGES + 1024) * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
region.write(b"x" * len(region))
ledger = WrittenPages()
if os.fork() == 0:
    region.seek(0)
    region.write(b"y" * len(region))  # more pages than are ever written ahead
    ledger.record(0)
    os._exit(0)
os.wait()
ledger.refresh()
print(sum(length for _address, length in ledger.runs) // mmap.PAGESIZE, MAX_PAGES)
"""


def test_no_more_than_max_pages_are_written_ahead() -> None:
    """An init that wrote a large file's worth of pages (a plan's WriteFile) does not
    make every spare after it copy as much."""
    listed, limit = map(int, run_python(LARGE_WRITE_IN_A_CHILD).stdout.split())
    assert listed == limit


async def test_without_spares_nothing_waits(rootfs: Path) -> None:
    async with vortex.Runtime(spare_init=False) as rt:
        assert (await rt.run(spec(rootfs, "/bin/true"))).exit_code == 0
        assert await rt.spare() is None
        names = [process(pid) for pid in children_of(os.getpid())]
        assert [entry[0] for entry in names if entry] == ["vortex-helper"]


async def test_a_user_namespace_container_leaves_the_spare_waiting(rootfs: Path) -> None:
    with reachable_copy(rootfs, "vortex-spare-userns-") as reachable:
        async with vortex.Runtime() as rt:
            await rt.run(spec(reachable, "/bin/true"))
            spare = await rt.spare()
            assert spare is not None
            userns = spec(reachable, "/bin/true", security=SecurityOptions(userns=USER_NAMESPACE))
            container = await rt.start(userns)
            assert container.pid != spare.pid
            assert (await container.wait()).exit_code == 0
            assert await rt.spare() is spare
            assert process(spare.pid) == ("vortex-spare", "S", os.getpid())


class MapsIds:
    """A security hook that asks for a user namespace the spec does not mention."""

    @hookimpl(trylast=True)
    def vortex_security(self, container: Container, policy: SecurityPolicy) -> None:
        first = int(USER_NAMESPACE.split(":")[0])
        policy.uid_map = ((0, first, 65536),)
        policy.gid_map = ((0, first, 65536),)


async def test_a_spare_with_the_wrong_namespaces_is_ended(rootfs: Path) -> None:
    with reachable_copy(rootfs, "vortex-spare-hook-") as reachable:
        async with vortex.Runtime(plugins=[MapsIds()]) as rt:
            await rt.run(spec(reachable, "/bin/true"))
            spare = await rt.spare()
            assert spare is not None
            container = await rt.start(spec(reachable, "/bin/cat", "/proc/self/uid_map"))
            # The init has the user namespace the hook asked for, so not the spare's.
            assert container.pid != spare.pid
            result = await container.wait()
            assert result.exit_code == 0 and result.stdout.split()[:2] == [b"0", b"200000"]
            assert process(spare.pid) is None  # ended and reaped, not left a zombie
            following = await rt.spare()
            assert following is not None and following.pid != spare.pid


async def test_a_spare_that_died_is_replaced_by_a_clone(rootfs: Path) -> None:
    async with vortex.Runtime() as rt:
        await rt.run(spec(rootfs, "/bin/true"))
        spare = await rt.spare()
        assert spare is not None
        watch = os.pidfd_open(spare.pid)
        try:
            os.kill(spare.pid, signal.SIGKILL)
            # Until it has exited (its socket closed): then sending to it fails.
            await anyio.wait_readable(watch)
        finally:
            os.close(watch)
        container = await rt.start(spec(rootfs, "/bin/echo", "still runs"))
        assert container.pid != spare.pid
        result = await container.wait()
        assert (result.exit_code, result.stdout) == (0, b"still runs\n")
        assert process(spare.pid) is None  # reaped


SPARE_THEN_HANG = """
import sys, anyio, vortex
from vortex.spec import ContainerSpec
async def main():
    async with vortex.Runtime() as rt:
        await rt.run(ContainerSpec(rootfs=sys.argv[1], command=["/bin/true"]))
        spare = await rt.spare()
        print(spare.pid, spare.container_id, flush=True)
        await anyio.sleep(60)
anyio.run(main)
"""


def test_the_spare_dies_with_its_runtime(rootfs: Path) -> None:
    """SIGKILLed, the Runtime cannot end its spare: the parent-death signal does.
    What it left (a state record and a cgroup) the next Runtime sweeps, as for any
    container of a Runtime that died."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SPARE_THEN_HANG, str(rootfs)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        pid_field, spare_id = proc.stdout.readline().split()
        spare_pid = int(pid_field)
        assert process(spare_pid) is not None
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (state := process(spare_pid)) is not None:
            assert time.monotonic() < deadline, f"the spare outlived its Runtime: {state}"
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    record = Path("/run/vortex/containers") / f"{spare_id.decode()}.json"
    assert record.exists()
    left = {c for c in vortex_cgroups() if c.endswith("/" + spare_id.decode())}
    assert left

    async def open_a_runtime() -> None:
        async with vortex.Runtime(spare_init=False):
            pass

    anyio.run(open_a_runtime)
    assert not record.exists()
    assert not any(os.path.exists(c) for c in left)


# ------------------------------------------------------- what a spare does while it waits

IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913
_libc = ctypes.CDLL(None, use_errno=True)  # setns, which vortex itself never calls


def loopback_is_up(pid: int) -> bool:
    """Whether ``lo`` is up in the network namespace of ``pid``, asked from a thread
    that joined it (setns moves only the calling thread to another network
    namespace; the thread ends with it)."""
    answers: list[bool | BaseException] = []

    def ask() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, L.CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                asked = struct.pack("16sh", b"lo", 0)
                flags = struct.unpack("16sh", fcntl.ioctl(sock, SIOCGIFFLAGS, asked))[1]
            answers.append(bool(flags & IFF_UP))
        except BaseException as exc:  # handed to the test's thread
            answers.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join()
    if isinstance(answers[0], BaseException):
        raise answers[0]
    return answers[0]


async def wait_for_loopback(pid: int, up: bool = True) -> None:
    deadline = time.monotonic() + 10
    while loopback_is_up(pid) is not up:
        assert time.monotonic() < deadline, (
            f"lo of process {pid} never went {'up' if up else 'down'}"
        )
        await anyio.sleep(0.01)


class LoopbackWhenAsked:
    """Brings ``lo`` up only for containers with LOOPBACK=up in their environment
    (with the net plugin disabled): plans that change from one start to the next."""

    @hookimpl
    def vortex_pre_pivot(self, container: Container) -> list[SetupOp]:
        return [LoopbackUp()] if container.spec.env.get("LOOPBACK") == "up" else []


async def test_a_waiting_spare_brings_loopback_up(rootfs: Path) -> None:
    """The net plugin's plan brings lo up, so the next spare does it while it waits,
    also beside a running container; its container's lo is up."""
    async with vortex.Runtime() as rt:
        running = await rt.start(spec(rootfs, "/bin/sleep", "60"))
        spare = await rt.spare()  # cloned right away, beside it
        assert spare is not None and spare.loopback
        await wait_for_loopback(spare.pid)
        container = await rt.start(spec(rootfs, "/bin/cat", "/sys/class/net/lo/flags"))
        assert container.pid == spare.pid
        result = await container.wait()
        assert result.exit_code == 0 and int(result.stdout, 16) & IFF_UP
        running.kill(signal.SIGKILL)
        await running.wait()


async def test_a_spare_with_loopback_up_serves_only_plans_that_bring_it_up(
    rootfs: Path,
) -> None:
    """The next spare does what the last plan did.  When the next plan differs, the
    spare is ended and the container cloned fresh: no init takes lo down again."""

    def flags_of(env: dict[str, str]) -> ContainerSpec:
        return spec(rootfs, "/bin/cat", "/sys/class/net/lo/flags", env=env)

    async def start(env: dict[str, str], spare: SpareInit) -> tuple[bool, bool]:
        """(took the spare, lo up in the container)."""
        container = await rt.start(flags_of(env))
        result = await container.wait()
        assert result.exit_code == 0, result.stderr
        return container.pid == spare.pid, bool(int(result.stdout, 16) & IFF_UP)

    async def next_spare(loopback: bool) -> SpareInit:
        spare = await rt.spare()
        assert spare is not None and spare.loopback is loopback
        await wait_for_loopback(spare.pid, loopback)
        return spare

    up, down = {"LOOPBACK": "up"}, {}
    plugin = LoopbackWhenAsked()
    async with vortex.Runtime(disabled_plugins=["net"], plugins=[plugin]) as rt:
        assert (await rt.run(flags_of(up))).exit_code == 0
        spare = await next_spare(loopback=True)
        assert await start(down, spare) == (False, False)  # turned away
        assert process(spare.pid) is None  # ended and reaped
        spare = await next_spare(loopback=False)
        assert await start(down, spare) == (True, False)
        spare = await next_spare(loopback=False)
        assert await start(up, spare) == (False, True)  # turned away
        spare = await next_spare(loopback=True)
        assert await start(up, spare) == (True, True)


LOOPBACK_REFUSED = """
import sys, anyio, vortex
from pathlib import Path
from tests.test_spare import spec
from vortex.errors import ContainerSetupError
from vortex.security import seccomp

# Setting lo's flags is refused (EPERM) to this process and all it starts, spares
# included: the spare's try fails, the init tries again and reports it.
profile = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [
        {
            "names": ["ioctl"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [{"index": 1, "value": 0x8914, "op": "SCMP_CMP_EQ"}],
        }
    ],
}
seccomp.set_no_new_privs()
seccomp.load_filter(seccomp.compile_profile(profile))


async def main() -> None:
    rootfs = Path(sys.argv[1])
    async with vortex.Runtime() as rt:
        for from_a_spare in (False, True):
            spare = await rt.spare()
            assert (spare is not None and spare.loopback) is from_a_spare
            try:
                await rt.run(spec(rootfs, "/bin/true"))
            except ContainerSetupError as exc:
                print("fresh init:" if spare is None else "spare:", exc)

anyio.run(main)
"""


def test_a_spare_that_could_not_bring_loopback_up_leaves_it_to_the_init(rootfs: Path) -> None:
    """The failure is the container's, reported as a fresh init reports it."""
    output = run_python(LOOPBACK_REFUSED, str(rootfs)).stdout
    assert output.splitlines()[-2:] == [
        "fresh init: bring up lo: operation not permitted",
        "spare: bring up lo: operation not permitted",
    ]


def detached_mounts(pid: int) -> set[int]:
    """Ids of the mounts a process holds by fd that are in neither its mount namespace
    nor ours: the kernel filesystems a spare premounted (vortex/helper/kernelfs.py).
    (What it inherited, say a /dev/null on 0, is in ours.)"""
    attached = set()
    for namespace_of in (pid, os.getpid()):
        with open(f"/proc/{namespace_of}/mountinfo") as f:
            attached |= {int(line.split()[0]) for line in f}
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(FileNotFoundError):
            if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/"):
                continue  # a pipe or socket: its kernel-internal mount is in no namespace
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    held.add(int(line.split()[1]))
    return held - attached


def signal_masks(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {
            k: v.strip() for k, v in (line.split(":", 1) for line in f) if k in ("SigIgn", "SigBlk")
        }


def session(pid: int) -> int:
    found = stat_fields(pid)
    assert found is not None, f"process {pid} is gone"
    return int(found[1][3])


async def prepared_spare(rt: vortex.Runtime, rootfs: Path, wait: float = 10) -> SpareInit:
    """A spare cloned while nothing runs, once it has premounted its kernel filesystems
    (an AssertionError after ``wait`` seconds)."""
    spare = await _spare_after_an_idle_exit(rt, rootfs)
    await wait_until_premounted(spare.pid, 6, wait)
    return spare


async def wait_until_premounted(pid: int, count: int, wait: float = 10) -> None:
    """Until a spare holds ``count`` detached mounts (an AssertionError after ``wait``
    seconds)."""
    deadline = time.monotonic() + wait
    while len(detached_mounts(pid)) < count:
        assert time.monotonic() < deadline, "the spare never premounted"
        await anyio.sleep(0.01)


# The kernel filesystems as a container sees them: mount point, per-mount options,
# type, source and the filesystem's options (mountinfo without ids), then /dev.
KERNEL_FILESYSTEMS_SEEN = r"""
awk '$5 ~ /^\/(proc|sys|dev)/ { tail = $0; sub(/.* - /, "", tail); print $5, $6, tail }' \
    /proc/self/mountinfo | sort
ls -ln /dev | awk '{print $1, $3, $4, $5, $6, $NF}'
"""

# Its loopback device as a container sees it: the flags, then the addresses the
# kernel gave it when it went up.
LOOPBACK_SEEN = """
cat /sys/class/net/lo/flags
ip -o addr show dev lo
"""


async def test_a_waiting_spare_has_its_kernel_filesystems_and_signals_ready(
    rootfs: Path,
) -> None:
    """While it waits, a spare resets its signals, starts its session and creates
    /proc, /sys and /dev detached; the container that takes it gets those mounts."""
    await _premounted_filesystems_are_the_containers(rootfs)


@pytest.mark.cgroup2
async def test_on_cgroup_v2_a_spare_premounts_in_its_cgroup(rootfs: Path) -> None:
    """The same in the spare's own cgroup, on the VM's older kernel (6.1)."""
    await _premounted_filesystems_are_the_containers(rootfs)


async def _premounted_filesystems_are_the_containers(rootfs: Path) -> None:
    async with vortex.Runtime() as rt:
        spare = await prepared_spare(rt, rootfs)
        assert signal_masks(spare.pid) == {"SigIgn": "0" * 16, "SigBlk": "0" * 16}
        assert session(spare.pid) == spare.pid
        premounted = detached_mounts(spare.pid)
        # /proc, /sys, /dev, /dev/pts, /dev/shm, /dev/mqueue, and the host's six nodes
        # bound into /dev (restricted devices, the default).
        assert len(premounted) == 12
        result = await rt.run(spec(rootfs, "/bin/cat", "/proc/self/mountinfo"))
        assert result.container_id is not None
        seen = {
            line.split()[4]: int(line.split()[0])
            for line in result.stdout.decode().splitlines()
            if line.split()[4].startswith(("/proc", "/sys", "/dev"))
        }
        kernel = ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/null"]
        assert {seen[path] for path in kernel} <= premounted


async def test_a_spare_cloned_beside_a_container_works_ahead_only_after_a_while(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside a running container a spare neither premounts nor prefaults at once:
    back to back its request comes first, and the work would compete with a start.
    Once it has waited SPARE_AHEAD_AFTER without its request, it does both (a
    supervisor's spare, waiting for the next restart).  It resets its signals at
    once either way."""
    async with vortex.Runtime() as rt:
        prefaulted = settled_faults((await _spare_after_an_idle_exit(rt, rootfs)).pid)
        monkeypatch.setattr(vortex.runtime, "SPARE_AHEAD_AFTER", 3600.0)
        # The first takes that spare; found idle, its next is cloned at its exit.
        first = await rt.start(spec(rootfs, "/bin/sleep", "60"))
        second = await rt.start(spec(rootfs, "/bin/sleep", "60"))  # beside first
        waiting = await rt.spare()  # cloned right away, beside both, to wait an hour
        assert waiting is not None
        deadline = time.monotonic() + 10
        while session(waiting.pid) != waiting.pid:
            assert time.monotonic() < deadline, "the spare never prepared"
            await anyio.sleep(0.01)
        unprefaulted = settled_faults(waiting.pid)
        assert unprefaulted < prefaulted - PREFAULT_MARGIN
        assert detached_mounts(waiting.pid) == set()
        monkeypatch.undo()
        # Its container mounts in place, as a fresh init does; the next spare, cloned
        # beside the three, works ahead after the usual while.
        result = await rt.run(spec(rootfs, "/bin/ls", "/dev/pts", "/proc/self"))
        assert result.exit_code == 0 and b"ptmx" in result.stdout
        following = await rt.spare()
        assert following is not None
        # The premount first (its own faults count too), then the prefault.
        await wait_until_premounted(following.pid, 12)
        assert len(detached_mounts(following.pid)) == 12
        wait_until_faulted(following.pid, unprefaulted + PREFAULT_MARGIN)
        for container in (first, second):
            container.kill(signal.SIGKILL)
            await container.wait()


@pytest.mark.parametrize("privileged", [False, True], ids=["default", "privileged"])
async def test_a_spare_mounts_what_a_fresh_init_mounts(rootfs: Path, privileged: bool) -> None:
    """Premounted (restricted devices: nodes bound from the host) or, for a container
    of another kind, mounted in place as by a fresh init: the same filesystems.
    And the loopback device the spare brought up is the one a fresh init brings up."""
    command = spec(
        rootfs,
        "/bin/sh",
        "-c",
        KERNEL_FILESYSTEMS_SEEN + LOOPBACK_SEEN,
        security=SecurityOptions(privileged=privileged),
    )
    async with vortex.Runtime(spare_init=False) as rt:
        fresh = await rt.run(command)
    async with vortex.Runtime() as rt:
        spare = await prepared_spare(rt, rootfs)
        from_spare = await rt.start(command)
        assert from_spare.pid == spare.pid
        taken = await from_spare.wait()
    assert fresh.exit_code == taken.exit_code == 0
    assert b"/dev/pts" in fresh.stdout and b"null" in fresh.stdout
    assert b"inet 127.0.0.1/8" in fresh.stdout
    assert taken.stdout == fresh.stdout


WITHOUT_NEW_MOUNT_API = """
import sys, anyio, vortex
from pathlib import Path
from tests.test_spare import detached_mounts, prepared_spare, spec
from vortex.security import seccomp

# A kernel (or a seccomp profile around us) without (part of) the new mount API:
# the call fails with ENOSYS for this process and all it starts, spares included.
profile = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": [sys.argv[2]], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
}
seccomp.set_no_new_privs()
seccomp.load_filter(seccomp.compile_profile(profile))


async def main() -> None:
    rootfs = Path(sys.argv[1])
    async with vortex.Runtime() as rt:
        try:
            spare = await prepared_spare(rt, rootfs, wait=1)
        except AssertionError as exc:
            print("no premounts:", exc)
            spare = await rt.spare()
            assert spare is not None and not detached_mounts(spare.pid)
        result = await rt.run(spec(rootfs, "/bin/ls", "/dev", "/dev/pts", "/proc/self"))
        assert result.container_id is not None
        print(result.exit_code, result.stdout.decode().split())

anyio.run(main)
"""


@pytest.mark.parametrize("refused", ["fsopen", "open_tree", "move_mount"])
def test_without_the_new_mount_api_a_spare_mounts_in_place(rootfs: Path, refused: str) -> None:
    """Where fsopen is refused, an idle spare premounts nothing; where open_tree is
    (for the host's nodes, after the six filesystems), it closes what it made;
    where only move_mount is, its init finds out at the first move.  Its
    container mounts in place as a fresh init."""
    output = run_python(WITHOUT_NEW_MOUNT_API, str(rootfs), refused).stdout
    premounted = refused == "move_mount"
    assert ("no premounts: the spare never premounted" in output) is not premounted
    status, listing = output.splitlines()[-1].split(" ", 1)
    assert status == "0"
    for name in ("null", "ptmx", "pts", "shm", "mqueue", "status"):
        assert f"'{name}'" in listing
