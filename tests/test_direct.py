"""vortex.direct: one container without an event loop, the path of ``vortex run``.

What ``vortex run`` does through it (namespaces, limits, security, exit
statuses, signal forwarding) is tested in test_cli_run.py; here: what is
particular to running without the Runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import VORTEX, check_oom_logged_while_running, imported_modules, run_python
from vortex import direct, pluginmanager
from vortex.container import Container
from vortex.errors import ExecError, PluginError, SpecError
from vortex.hookspecs import hookimpl
from vortex.result import RunResult
from vortex.spec import ContainerSpec, Stdio

REPO = Path(__file__).resolve().parents[1]

FRESH_PROCESS_RUN = """
import json, sys
from vortex import direct, pluginmanager
from vortex.spec import ContainerSpec, Stdio

def no_helper(*args):
    raise AssertionError("a single-threaded process must clone the init itself")

direct._clone_through_helper = no_helper
spec = ContainerSpec(rootfs=sys.argv[1], command=["/bin/sh", "-c", sys.argv[2]], stdout=Stdio.NULL)
result = direct.run(spec)
print(json.dumps({
    "exit_code": result.exit_code,
    "cpu_time": result.cpu_time,
    "memory_peak": result.memory_peak,
    "wall_time": result.wall_time,
    "imported": sorted(m for m in ("asyncio", "anyio", "trio") if m in sys.modules),
}))
"""


def test_runs_in_a_fresh_process_without_event_loop_or_helper(rootfs: Path) -> None:
    script = "head -c 30000000 /dev/zero | md5sum; exit 7"
    proc = run_python(FRESH_PROCESS_RUN, str(rootfs), script)
    outcome = json.loads(proc.stdout)
    assert outcome["exit_code"] == 7
    assert outcome["cpu_time"] > 0 and outcome["memory_peak"] > 0 and outcome["wall_time"] > 0
    assert outcome["imported"] == []


class Recorder:
    """A plugin that records the lifecycle hooks it sees, one of them async."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.result: RunResult | None = None
        self.init_cgroup = ""

    @hookimpl
    def vortex_prepare(self) -> None:
        self.calls.append("prepare")

    @hookimpl
    async def vortex_post_cgroup(self, container: Container) -> None:
        import anyio

        await anyio.lowlevel.checkpoint()  # really needs an event loop
        self.init_cgroup = await anyio.Path(f"/proc/{container.pid}/cgroup").read_text()
        self.calls.append("post_cgroup")

    @hookimpl
    def vortex_post_start(self) -> None:
        self.calls.append("post_start")

    @hookimpl
    def vortex_on_exit(self, result: RunResult) -> None:
        self.calls.append("on_exit")
        self.result = result


def spec_for(rootfs: Path, *command: str, **fields: object) -> ContainerSpec:
    return ContainerSpec(rootfs=rootfs, command=list(command), stdout=Stdio.NULL, **fields)  # type: ignore[arg-type]


def test_hooks_run_in_order_and_an_async_one_gets_its_own_loop(rootfs: Path) -> None:
    recorder = Recorder()
    result = direct.run(spec_for(rootfs, "/bin/true"), plugins=[recorder])
    assert recorder.calls == ["prepare", "post_cgroup", "post_start", "on_exit"]
    assert recorder.result == result and result.exit_code == 0
    # post_cgroup ran while the init was already in the container's cgroup.
    assert result.container_id in recorder.init_cgroup


def test_exec_failure_is_raised_after_clean_up(rootfs: Path) -> None:
    recorder = Recorder()
    with pytest.raises(ExecError) as raised:
        direct.run(spec_for(rootfs, "/no/such/command"), plugins=[recorder])
    assert raised.value.exit_status == 127
    assert recorder.calls == ["prepare", "post_cgroup", "on_exit"]
    assert recorder.result is not None and "/no/such/command" in (recorder.result.error or "")


class FailingPostCgroup:
    @hookimpl
    def vortex_post_cgroup(self) -> None:
        raise RuntimeError("no veth today")


def test_a_failing_post_cgroup_hook_aborts_the_waiting_init(rootfs: Path) -> None:
    recorder = Recorder()
    with pytest.raises(PluginError, match="no veth today"):
        direct.run(spec_for(rootfs, "/bin/true"), plugins=[FailingPostCgroup(), recorder])
    assert recorder.result is not None and recorder.result.exit_code != 0
    assert "no veth today" in (recorder.result.error or "")


class LoopbackWatcher:
    """A post_cgroup hook that waits, from the host, until ``lo`` is up in the init's
    network namespace: the init cannot pass its sync pipe before the hook returns."""

    def __init__(self) -> None:
        self.flags = ""

    @hookimpl
    def vortex_post_cgroup(self, container: Container) -> None:
        show = ["nsenter", f"--net=/proc/{container.pid}/ns/net", "ip", "-o", "link", "show", "lo"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.flags = subprocess.run(show, capture_output=True, text=True).stdout
            if ",UP" in self.flags:
                return
            time.sleep(0.01)


def test_a_fresh_init_brings_lo_up_while_the_post_cgroup_hooks_run(rootfs: Path) -> None:
    # vortex/helper/init.py, _run: a fresh init works ahead; the net plugin's plan
    # brings lo up.
    watcher = LoopbackWatcher()
    result = direct.run(spec_for(rootfs, "/bin/sh", "-c", "exit 4"), plugins=[watcher])
    assert ",UP" in watcher.flags, watcher.flags
    assert result.exit_code == 4


class ThreadStarter:
    """A plugin that keeps a thread running while the container starts."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.release.wait)

    @hookimpl
    def vortex_prepare(self) -> None:
        self.thread.start()

    @hookimpl
    def vortex_on_exit(self) -> None:
        self.release.set()
        self.thread.join()


def test_with_another_thread_the_init_is_cloned_by_a_helper(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    through_helper = []
    clone_through_helper = direct._clone_through_helper

    def spy(*args: object) -> tuple[int, int]:
        through_helper.append(True)
        return clone_through_helper(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(direct, "_clone_through_helper", spy)
    result = direct.run(spec_for(rootfs, "/bin/sh", "-c", "exit 5"), plugins=[ThreadStarter()])
    assert through_helper == [True]
    assert result.exit_code == 5


def test_runs_from_another_thread_too(rootfs: Path) -> None:
    """No signal handlers there (Python allows them in the main thread only), and
    the process is threaded, so the init is cloned by a helper."""
    outcome: list[RunResult | BaseException] = []

    def worker() -> None:
        try:
            outcome.append(direct.run(spec_for(rootfs, "/bin/sh", "-c", "exit 9")))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert isinstance(outcome[0], RunResult) and outcome[0].exit_code == 9, outcome


@pytest.mark.parametrize(
    "fields",
    [
        {"tty": True, "stdout": Stdio.STREAM},
        {"stdout": Stdio.CAPTURE},
        {"stdin": b"data"},
        {"stderr": Stdio.STREAM},
    ],
)
def test_specs_that_need_relays_are_refused(rootfs: Path, fields: dict[str, object]) -> None:
    spec = ContainerSpec(rootfs=rootfs, command=["/bin/true"], **fields)  # type: ignore[arg-type]
    assert not direct.supports(spec)
    with pytest.raises(SpecError, match=r"vortex\.Runtime"):
        direct.run(spec)


def test_a_terminal_on_the_inherited_streams_is_supported(rootfs: Path) -> None:
    # (It is relayed between the pty and this process's stdin/stdout: test_tty.py.)
    assert direct.supports(ContainerSpec(rootfs=rootfs, command=["/bin/sh"], tty=True))


TERMINAL_ONLY = {"termios", "tty", "_socket"}
"""Standard-library modules only a terminal needs (or a daemon's socket, which the
tests below point at a path where none listens): a plain cold ``vortex run``
imports none of them."""


@pytest.mark.parametrize("tty", [[], ["--tty"]], ids=["plain", "terminal"])
def test_cli_run_imports_no_event_loop(rootfs: Path, tty: list[str], tmp_path: Path) -> None:
    """Target 1 of the performance issue: nothing heavy before the container runs."""
    imported = imported_modules(
        *VORTEX[1:], "run", *tty, str(rootfs), "/bin/true",
        env={**os.environ, "VORTEX_DAEMON_SOCKET": str(tmp_path / "no-daemon.sock")},
    )  # fmt: skip
    assert "vortex.direct" in imported
    heavy = {
        "asyncio",
        "anyio._backends._asyncio",
        "trio",
        "pyroute2",
        "structlog",
        "vortex.runtime",
        # Value classes are records (vortex/records.py), not dataclasses: generating
        # dataclasses' methods cost ~20 ms of this start.
        "dataclasses",
    }
    # pathlib, typing and math too, but this machine's site hooks import them
    # before Vortex starts: the clean interpreter of the next test checks those.
    if not tty:
        heavy |= TERMINAL_ONLY
    if not pluginmanager._may_have_entry_points():
        # Only built-in plugins: called from their table, without pluggy (~13 ms).
        heavy |= {"pluggy", "inspect"}
    assert not heavy & imported, sorted(heavy & imported)


WITHOUT_SITE_RUN = """
import sys
from vortex.cli import run_cli
rootfs, avoided, *options = sys.argv[1:]
status = run_cli(["run", *options, rootfs, "/bin/true"])
print(" ".join(m for m in sorted(avoided.split(",")) if m in sys.modules))
sys.exit(status)
"""

WITHOUT_SITE_AVOIDED = {
    # argparse's help formatter would import shutil (with bz2, lzma and zlib) unless
    # given a width (cli.help_width).
    "shutil",
    "bz2",
    "lzma",
    "dataclasses",
    # ~4 ms with urllib.parse and ipaddress: the rootfs and the state files are
    # plain strings and os.path (ContainerSpec.rootfs takes a str or a pathlib.Path).
    "pathlib",
    # ~3.7 ms: annotations only, under TYPE_CHECKING (vortex/records.py keeps
    # dataclass_transform for type checkers without importing typing).
    "typing",
    # ~0.8 ms: the security plugin keeps plain weak references.
    "weakref",
    # ~0.5 ms with warnings: modules are imported with __import__ (vortex._import_module).
    "importlib",
}


@pytest.mark.parametrize("tty", [[], ["--tty"]], ids=["plain", "terminal"])
def test_cli_run_without_site_imports_no_avoidable_modules(
    rootfs: Path, tty: list[str], tmp_path: Path
) -> None:
    """This machine's site hooks import shutil, pathlib, typing and math themselves:
    a clean interpreter (``-S``, the package and its dependencies on PYTHONPATH)
    shows what Vortex imports (docs/performance.md)."""
    # math: socket imports it (through selectors), which a terminal needs.
    avoided = WITHOUT_SITE_AVOIDED | (set() if tty else {*TERMINAL_ONLY, "math"})
    if not pluginmanager._may_have_entry_points():
        avoided |= {"pluggy", "inspect"}  # built-ins only: their table, no pluggy
    purelib = sysconfig.get_paths()["purelib"]
    done = subprocess.run(
        [sys.executable, "-S", "-c", WITHOUT_SITE_RUN, str(rootfs), ",".join(avoided), *tty],
        stdin=subprocess.DEVNULL,
        env={
            "PYTHONPATH": f"{REPO}:{purelib}",
            "PATH": os.environ["PATH"],
            "VORTEX_DAEMON_SOCKET": str(tmp_path / "no-daemon.sock"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def help_lines(columns: int) -> list[str]:
    done = subprocess.run(
        [*VORTEX, "run", "--help"],
        env={**os.environ, "COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Group titles are never wrapped; usage and option lines are indented or "usage:".
    return [line for line in done.stdout.splitlines() if line.startswith((" ", "usage:"))]


def test_help_follows_the_terminal_width() -> None:
    narrow, wide = help_lines(50), help_lines(160)
    assert len(narrow) > len(wide) > 20
    assert max(map(len, narrow)) <= 50 < max(map(len, wide)), narrow


V1_MEMORY = Path("/sys/fs/cgroup/memory/cgroup.procs")


def test_cli_logs_oom_kills_while_the_container_runs(rootfs: Path) -> None:
    """The direct path polls the OOM watch beside the pidfd (v1: one task killed)."""
    check_oom_logged_while_running(rootfs)


CLOSED_STDIN = """
import os, sys
from vortex import direct, pluginmanager
from vortex.spec import ContainerSpec

os.close(0)  # the caller runs without stdin: our first pipe gets number 0
spec = ContainerSpec(rootfs=sys.argv[1], command=["/bin/readlink", "/proc/self/fd/0"])
sys.exit(direct.run(spec).exit_code)
"""


def test_a_closed_stdin_is_dev_null_not_our_pipe(rootfs: Path) -> None:
    assert run_python(CLOSED_STDIN, str(rootfs)).stdout == "/dev/null\n"
