"""The library: ``async with Runtime() as rt``, on asyncio and trio."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest

import vortex
from tests.conftest import open_fds, run_python, vortex_cgroups, zombie_children
from vortex.errors import ExecError, SpecError
from vortex.helper.client import can_renew
from vortex.spec import ContainerSpec, Resources, Stdio

pytestmark = pytest.mark.anyio


def spec(rootfs: Path, script: str, **kwargs: object) -> ContainerSpec:
    kwargs.setdefault("stdout", Stdio.CAPTURE)
    kwargs.setdefault("stderr", Stdio.CAPTURE)
    kwargs.setdefault("stdin", Stdio.NULL)
    return ContainerSpec(rootfs=rootfs, command=["/bin/sh", "-c", script], **kwargs)  # type: ignore[arg-type]


async def test_run_returns_a_typed_result(rootfs: Path) -> None:
    async with vortex.Runtime() as rt:
        result = await rt.run(spec(rootfs, "echo out; echo err >&2; exit 7"))
    assert result.exit_code == 7 and result.signal is None and result.status == 7
    assert result.stdout == b"out\n" and result.stderr == b"err\n"
    assert not result.oom_killed and result.error is None
    assert 0 < result.wall_time < 10
    assert result.cpu_time is not None and result.cpu_time >= 0
    assert result.memory_peak is not None and result.memory_peak > 0
    assert len(result.container_id) == 32 and result.name == result.container_id[:12]


async def test_the_command_starts_with_default_signal_dispositions(rootfs: Path) -> None:
    """execve keeps ignored signals ignored and the mask as it is: the init resets
    them, else the command would inherit CPython's ignored SIGPIPE and SIGXFSZ and
    the fork helper's ignored SIGINT.  /bin/cat is the command itself (PID 1)."""
    command = ContainerSpec(
        rootfs=rootfs,
        command=["/bin/cat", "/proc/self/status"],
        stdout=Stdio.CAPTURE,
        stdin=Stdio.NULL,
    )
    async with vortex.Runtime() as rt:
        result = await rt.run(command)
    assert result.exit_code == 0, result.stderr
    status = dict(
        line.split(":\t", 1) for line in result.stdout.decode().splitlines() if ":\t" in line
    )
    assert status["Pid"] == "1"
    assert status["SigIgn"] == "0000000000000000"
    assert status["SigBlk"] == "0000000000000000"


async def test_oom_is_reported_with_peak_memory(rootfs: Path) -> None:
    hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a)"
    async with vortex.Runtime() as rt:
        result = await rt.run(spec(rootfs, hog, resources=Resources(memory=32 * 1024 * 1024)))
    assert result.oom_killed
    assert result.signal == signal.SIGKILL and result.status == 137
    assert result.memory_peak is not None and result.memory_peak >= 30 * 1024 * 1024
    assert "OOM-killed" in result.describe()


async def test_cpu_time_is_measured(rootfs: Path) -> None:
    busy = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"
    async with vortex.Runtime() as rt:
        result = await rt.run(spec(rootfs, busy))
    assert result.exit_code == 0
    assert result.cpu_time is not None and result.cpu_time > 0.05


async def test_stdin_bytes_and_streams(rootfs: Path) -> None:
    async with vortex.Runtime() as rt:
        fed = await rt.run(spec(rootfs, "tr a-z A-Z", stdin=b"hello\n"))
        assert fed.stdout == b"HELLO\n"

        container = await rt.start(
            spec(rootfs, "read line; echo got:$line", stdin=Stdio.STREAM, stdout=Stdio.STREAM)
        )
        assert container.stdin is not None and container.stdout is not None
        await container.stdin.send(b"ping\n")
        await container.stdin.aclose()
        assert await container.stdout.receive() == b"got:ping\n"
        result = await container.wait()
        await container.stdout.aclose()
    assert result.exit_code == 0 and result.stdout is None


async def test_handle_kill_and_stop(rootfs: Path) -> None:
    async with vortex.Runtime() as rt:
        container = await rt.start(
            spec(
                rootfs,
                "trap 'exit 9' TERM; echo ready; while :; do sleep 0.05; done",
                stdout=Stdio.STREAM,
            )
        )
        assert container.state == "running" and container.pid is not None
        assert container.stdout is not None
        assert await container.stdout.receive() == b"ready\n"  # the trap is set
        await container.stdout.aclose()
        container.kill(signal.SIGTERM)
        assert (await container.wait()).exit_code == 9
        # A PID 1 without a handler ignores SIGTERM: stop() escalates to SIGKILL.
        stubborn = await rt.start(spec(rootfs, "exec sleep 100"))
        result = await stubborn.stop(grace_period=0.3)
    assert result.signal == signal.SIGKILL
    assert stubborn.state == "exited"


async def test_exec_failure_raises_with_status(rootfs: Path) -> None:
    async with vortex.Runtime() as rt:
        with pytest.raises(ExecError) as missing:
            await rt.run(ContainerSpec(rootfs=rootfs, command=["/no/such"]))
        assert missing.value.exit_status == 127
        with pytest.raises(ExecError) as denied:
            await rt.run(ContainerSpec(rootfs=rootfs, command=["/etc/passwd"]))
        assert denied.value.exit_status == 126
        with pytest.raises(SpecError):
            await rt.run(ContainerSpec(rootfs=rootfs / "missing", command=["/bin/true"]))


async def test_cancelling_run_kills_the_container(rootfs: Path) -> None:
    async with vortex.Runtime() as rt:
        with anyio.move_on_after(0.5):
            await rt.run(spec(rootfs, "exec sleep 100"))
        assert rt.containers == []


async def test_leaving_the_runtime_kills_its_containers(rootfs: Path) -> None:
    async with vortex.Runtime() as rt:
        container = await rt.start(spec(rootfs, "exec sleep 100"))
    assert container.result is not None and container.result.signal == signal.SIGKILL


async def test_concurrent_containers(rootfs: Path) -> None:
    results: list[vortex.RunResult] = []

    async def one(rt: vortex.Runtime, n: int) -> None:
        results.append(await rt.run(spec(rootfs, f"sleep 0.2; exit {n}")))

    async with vortex.Runtime() as rt, anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(one, rt, n)
    assert sorted(r.exit_code for r in results) == list(range(10))  # type: ignore[type-var]


async def test_helper_is_execed_when_threads_exist(rootfs: Path) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        async with vortex.Runtime() as rt:
            assert rt._helper is not None and rt._helper.execed
            result = await rt.run(spec(rootfs, "echo threaded"))
    finally:
        stop.set()
        thread.join()
    assert result.stdout == b"threaded\n"


FRESH_HELPER = """
import sys, anyio
from tests.conftest import is_fresh_helper, zombie_children
from vortex import ContainerSpec, Runtime, Stdio, _linux as L

async def main(rootfs):
    assert L.is_single_threaded()
    async with Runtime() as rt:
        assert not rt._helper.execed  # where it can, a Runtime forks its helper
    async with Runtime(fresh_helper=True) as rt:
        assert rt._helper.execed
        assert is_fresh_helper(rt._helper.pid)
        for word in ("first", "second"):  # the second from the spare
            spec = ContainerSpec(rootfs=rootfs, command=["echo", word], stdout=Stdio.CAPTURE)
            print((await rt.run(spec)).stdout.decode(), end="")
    assert zombie_children() == []
anyio.run(main, sys.argv[1])
"""


def test_a_fresh_helper_is_a_new_interpreter(rootfs: Path) -> None:
    """Runtime(fresh_helper=True) execs the helper also where it could fork it (a
    single-threaded process, as this fresh one), and containers (the spare
    included) start from it as from a forked one."""
    assert run_python(FRESH_HELPER, str(rootfs)).stdout == "first\nsecond\n"


HELPER_FROM_A_COPY = """
import sys
sys.path.insert(0, sys.argv[2])  # a copy of the package, found only this way
import anyio, vortex
from tests.conftest import command_line
from vortex import ContainerSpec, Runtime, Stdio

async def main(rootfs):
    assert vortex.__file__.startswith(sys.argv[2]), vortex.__file__
    async with Runtime(fresh_helper=True) as rt:
        print(command_line(rt._helper.pid)[3].decode())
        spec = ContainerSpec(rootfs=rootfs, command=["echo", "served"], stdout=Stdio.CAPTURE)
        print((await rt.run(spec)).stdout.decode(), end="")
anyio.run(main, sys.argv[1])
"""


def test_an_execd_helper_runs_the_runtimes_own_vortex(rootfs: Path, tmp_path: Path) -> None:
    """Found through sys.path, not where a plain `python -m vortex.helper` would look
    (the installed one): the helper runs that same copy, so both ends of the
    protocol are the same code."""
    source = Path(vortex.__file__).parent
    shutil.copytree(source, tmp_path / "vortex", ignore=shutil.ignore_patterns("__pycache__"))
    script, served = run_python(HELPER_FROM_A_COPY, str(rootfs), str(tmp_path)).stdout.split()
    assert script == str(tmp_path / "vortex" / "helper" / "__main__.py")
    assert served == "served"


RENEWED_HELPER = """
import sys, time, anyio
from tests.conftest import child_processes, is_fresh_helper, zombie_children
from vortex import ContainerSpec, Runtime, Stdio, _linux as L
from vortex.log import configure_logging
from vortex.runtime import RENEW_HELPER_AFTER

configure_logging("debug", "json")  # on stderr

async def main(rootfs, fresh_helper):
    assert L.is_single_threaded()
    results = []

    async def run(word):
        spec = ContainerSpec(rootfs=rootfs, command=["echo", word], stdout=Stdio.CAPTURE)
        results.append((await rt.run(spec)).stdout)

    async with Runtime(fresh_helper=fresh_helper) as rt:
        forked = rt._helper.pid
        assert not rt._helper.execed
        for n in range(RENEW_HELPER_AFTER - 1):
            await run(str(n))
        assert not rt._helper.execed and rt._helper.pid == forked
        # Containers keep starting, two at a time, while the new helper comes up
        # (without one, for ten rounds).
        deadline = time.monotonic() + 10
        pairs = 0
        while not rt._helper.execed and time.monotonic() < deadline:
            if fresh_helper is False and pairs == 10:
                break
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "a")
                tg.start_soon(run, "b")
            pairs += 1
        for word in ("after", "renewal"):  # the second from a spare of the new helper
            await run(word)
        assert all(out.strip() for out in results)
        print(2 * pairs, rt._helper.execed)
        if rt._helper.execed:
            assert is_fresh_helper(rt._helper.pid)
            assert forked not in child_processes()  # exited and reaped
        print(sorted(name for name, _ in child_processes().values()))
    assert child_processes() == {} and zombie_children() == []

anyio.run(main, sys.argv[1], {"default": None, "fork": False}[sys.argv[2]])
"""


def test_a_runtime_renews_its_forked_helper_once_it_lives_on(rootfs: Path) -> None:
    """The default: a forked helper at first, a fresh interpreter once the Runtime
    has started RENEW_HELPER_AFTER containers; those started meanwhile, and after,
    run, and the forked one is gone."""
    proc = run_python(RENEWED_HELPER, str(rootfs), "default")
    during, renewed = proc.stdout.split("\n")[0].split()
    assert renewed == "True"
    assert int(during) >= 2  # the pair that made it RENEW_HELPER_AFTER at least
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [e for e in events if e["event"] == "helper.renewed"]  # logged, at debug


def test_fresh_helper_false_keeps_the_fork(rootfs: Path) -> None:
    proc = run_python(RENEWED_HELPER, str(rootfs), "fork")
    output = proc.stdout.splitlines()
    assert output[0].split()[1] == "False"
    assert "helper.renewed" not in proc.stderr
    assert output[1] == "['vortex-helper', 'vortex-spare']"


CLOSED_WHILE_RENEWING = """
import sys, anyio
from tests.conftest import child_processes, zombie_children
from vortex import ContainerSpec, Runtime
from vortex.runtime import RENEW_HELPER_AFTER

async def main(rootfs):
    async with Runtime() as rt:
        for _ in range(RENEW_HELPER_AFTER):
            await rt.run(ContainerSpec(rootfs=rootfs, command=["true"]))
        assert rt._renewal is not None  # the new interpreter is starting (~40 ms)
    assert not rt._helper.execed
    assert child_processes() == {} and zombie_children() == []
    print("clean")

anyio.run(main, sys.argv[1])
"""


def test_a_runtime_closed_while_renewing_its_helper_leaves_no_process(rootfs: Path) -> None:
    assert run_python(CLOSED_WHILE_RENEWING, str(rootfs)).stdout == "clean\n"


async def test_200_containers_back_to_back_leave_nothing(rootfs: Path) -> None:
    fds_before = open_fds()
    cgroups_before = vortex_cgroups()
    async with vortex.Runtime() as rt:
        for n in range(200):
            result = await rt.run(
                spec(rootfs, f"exit {n % 7}", stdout=Stdio.NULL, stderr=Stdio.NULL)
            )
            assert result.exit_code == n % 7
    assert vortex_cgroups() == cgroups_before
    assert zombie_children() == []
    assert set(open_fds()) == set(fds_before)
    assert not any(os.scandir("/run/vortex/containers"))


# A non-root Runtime runs rootless: tests/test_rootless.py (library and CLI).


async def test_init_is_in_its_cgroup_before_the_command_runs(rootfs: Path) -> None:
    seen: dict[str, str] = {}

    class Probe:
        @vortex.hookimpl
        def vortex_post_cgroup(self, container: vortex.Container) -> None:
            # The init is blocked on the sync pipe here: not one instruction of the
            # user's command has run yet.
            with open(f"/proc/{container.pid}/cgroup") as f:
                seen["post_cgroup"] = f.read()
            seen["id"] = container.id

    async with vortex.Runtime(plugins=[Probe()]) as rt:
        result = await rt.run(spec(rootfs, "cat /proc/1/cgroup"))
    memory_line = next(
        line for line in seen["post_cgroup"].splitlines() if line.split(":")[1] in ("memory", "")
    )
    assert memory_line.endswith(f"/vortex/{seen['id']}"), seen["post_cgroup"]
    # Inside, the cgroup namespace makes that cgroup the root.
    assert result.stdout is not None
    assert all(line.endswith(":/") for line in result.stdout.decode().splitlines())


async def test_at_the_exit_hooks_the_containers_processes_are_all_gone(rootfs: Path) -> None:
    # The Runtime does not sweep the cgroup once the init is reaped
    # (lifecycle.collect_result): the kernel has ended the init's PID namespace,
    # background processes and their children included, before it can be reaped.
    left: list[list[int]] = []

    class AtExit:
        @vortex.hookimpl
        def vortex_on_exit(self, container: vortex.Container) -> None:
            assert container.cgroup is not None
            left.append(container.cgroup.procs())

    script = "sleep 100 & (sleep 100 & sleep 100) & sleep 0.1; exit 3"
    async with vortex.Runtime(plugins=[AtExit()]) as rt:
        result = await rt.run(spec(rootfs, script, stdout=Stdio.NULL, stderr=Stdio.NULL))
    assert result.exit_code == 3
    assert left == [[]]


def test_a_process_moved_into_a_containers_cgroup_dies_with_it(rootfs: Path) -> None:
    # From outside its PID namespace the kernel does not end it with the container:
    # the removal of the cgroup finds it there and kills it (nothing is left behind).
    outsider = subprocess.Popen(["sleep", "100"])
    cgroups_before = vortex_cgroups()

    class MoveIn:
        @vortex.hookimpl
        def vortex_post_cgroup(self, container: vortex.Container) -> None:
            assert container.cgroup is not None
            container.cgroup.attach(outsider.pid)

    async def run() -> vortex.RunResult:
        async with vortex.Runtime(plugins=[MoveIn()]) as rt:
            return await rt.run(spec(rootfs, "exit 0"))

    try:
        assert anyio.run(run).exit_code == 0
        assert outsider.wait(timeout=10) == -signal.SIGKILL
        assert vortex_cgroups() == cgroups_before
    finally:
        outsider.kill()
        outsider.wait()


async def test_written_files_are_private_to_each_container(rootfs: Path) -> None:
    from vortex.ops import WriteFile

    class Motd:
        @vortex.hookimpl
        def vortex_pre_pivot(self, container: vortex.Container) -> list[WriteFile]:
            return [
                WriteFile("/etc/motd", f"hello {container.name}\n".encode(), 0o640),
                WriteFile("/etc/hostname", container.name.encode()),
            ]

    (rootfs / "etc" / "hostname").write_text("original\n")
    outputs: dict[str, bytes | None] = {}

    async def one(rt: vortex.Runtime, name: str) -> None:
        result = await rt.run(
            spec(
                rootfs,
                "sleep 0.2; cat /etc/motd; stat -c %a /etc/motd; cat /etc/hostname",
                name=name,
            )
        )
        outputs[name] = result.stdout

    async with vortex.Runtime(plugins=[Motd()]) as rt, anyio.create_task_group() as tg:
        for name in ("one", "two"):
            tg.start_soon(one, rt, name)
    assert outputs == {"one": b"hello one\n640\none", "two": b"hello two\n640\ntwo"}
    # The rootfs itself: the existing file is untouched, the new one is only a mount point.
    assert (rootfs / "etc" / "hostname").read_text() == "original\n"
    assert (rootfs / "etc" / "motd").read_bytes() == b""
    assert not (rootfs / "dev" / ".vortex-files").exists()


async def test_failed_start_closes_the_streams_it_opened(rootfs: Path) -> None:
    fds_before = open_fds()
    async with vortex.Runtime() as rt:
        with pytest.raises(ExecError):
            await rt.start(
                ContainerSpec(
                    rootfs=rootfs,
                    command=["/no/such"],
                    stdin=Stdio.STREAM,
                    stdout=Stdio.STREAM,
                    stderr=Stdio.STREAM,
                )
            )
    assert set(open_fds()) == set(fds_before)


async def test_stdio_can_be_lent_file_descriptors(rootfs: Path, tmp_path: Path) -> None:
    # As with subprocess.Popen(stdin=fd): the container gets copies, we keep ours.
    source = tmp_path / "in"
    source.write_bytes(b"from a file\n")
    stdin = os.open(source, os.O_RDONLY)
    out_r, out_w = os.pipe()
    err_path = tmp_path / "err"
    stderr = os.open(err_path, os.O_WRONLY | os.O_CREAT)
    try:
        spec = ContainerSpec(
            rootfs=rootfs,
            command=["/bin/sh", "-c", "cat; echo oops >&2"],
            stdin=stdin,
            stdout=out_w,
            stderr=stderr,
        )
        async with vortex.Runtime() as runtime:
            result = await runtime.run(spec)
        os.close(out_w)
        out_w = -1
        assert result.exit_code == 0
        assert os.read(out_r, 100) == b"from a file\n"
        assert err_path.read_bytes() == b"oops\n"
        assert result.stdout is None and result.stderr is None
        os.fstat(stdin)  # still ours, still open
    finally:
        for fd in (stdin, out_r, out_w, stderr):
            if fd >= 0:
                os.close(fd)


@pytest.mark.parametrize("stream", ["stdin", "stdout", "stderr"])
def test_negative_stdio_descriptor_is_refused(rootfs: Path, stream: str) -> None:
    spec = ContainerSpec(rootfs=rootfs, command=["/bin/true"], **{stream: -1})  # type: ignore[arg-type]
    with pytest.raises(SpecError, match=f"{stream}=-1: a file descriptor cannot be negative"):
        spec.validate()


async def test_spec_mounts_are_applied_by_the_core(rootfs: Path) -> None:
    # The spec's own mounts (an OCI bundle's) do not depend on any plugin.
    from vortex.ops import MountFilesystem

    spec = ContainerSpec(
        rootfs=rootfs,
        command=["/bin/sh", "-c", "grep ' /mnt ' /proc/mounts"],
        mounts=(MountFilesystem("tmpfs", "/mnt", "size=1m"),),
        stdout=Stdio.CAPTURE,
    )
    async with vortex.Runtime(disabled_plugins=["security", "net", "logging"]) as runtime:
        result = await runtime.run(spec)
    assert result.exit_code == 0
    assert result.stdout is not None and b"tmpfs /mnt tmpfs" in result.stdout


async def test_a_spec_larger_than_one_helper_message_still_starts(rootfs: Path) -> None:
    # 300 KB of arguments: beyond one SOCK_SEQPACKET message to the fork helper,
    # so the request travels in a memfd (vortex/helper/server.py).
    arguments = ["x" * 100_000] * 3
    spec = ContainerSpec(
        rootfs=rootfs,
        command=["/bin/sh", "-c", 'echo "$#:${#1}"', "sh", *arguments],
        stdout=Stdio.CAPTURE,
    )
    async with vortex.Runtime() as runtime:
        result = await runtime.run(spec)
    assert result.exit_code == 0
    assert result.stdout == b"3:100000\n"


CLOSED_STDIN = """
import os, sys, anyio
from vortex import ContainerSpec, Runtime, Stdio

async def main():
    # The caller runs without stdin (closed after its event loop opened its own
    # fds): the fork helper's socket would get number 0.
    os.close(0)
    async with Runtime() as runtime:
        spec = ContainerSpec(rootfs=sys.argv[1], command=["/bin/readlink", "/proc/self/fd/0"])
        return (await runtime.run(spec)).exit_code

sys.exit(anyio.run(main))
"""


def test_a_closed_stdin_is_dev_null_not_our_socket(rootfs: Path) -> None:
    assert run_python(CLOSED_STDIN, str(rootfs)).stdout == "/dev/null\n"


def test_the_helper_is_renewed_only_by_a_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that embeds Python has itself as sys.executable: exec'ing that would
    start the program again, not a helper."""
    assert can_renew()
    monkeypatch.setattr(sys, "executable", "/usr/bin/uwsgi")
    assert not can_renew()
    monkeypatch.setattr(sys, "executable", "/opt/app/bin/python3.11")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert not can_renew()
