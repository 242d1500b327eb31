"""Plugins through a real Runtime: failures and clean-up, order, opt-in arguments.

Every test starts real containers from a busybox rootfs, so it needs root.
Third-party entry points are not loaded (``entry_points=False``): only the
built-ins and the plugin objects a test registers take part.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from tests.conftest import child_processes
from vortex.container import Container
from vortex.errors import PluginError
from vortex.hookspecs import hookimpl
from vortex.ops import SetupOp
from vortex.result import RunResult
from vortex.rootfs.busybox import build_busybox_rootfs
from vortex.runtime import Runtime
from vortex.spec import ContainerSpec, Stdio

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0, reason="starting containers needs root"),
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
IFF_UP = 0x1


@pytest.fixture(params=["asyncio", "trio"], scope="module")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A fresh busybox rootfs per test: setup operations write into the rootfs."""
    path = tmp_path / "rootfs"
    build_busybox_rootfs(path)
    return path


def spec_for(rootfs: Path, *command: str) -> ContainerSpec:
    return ContainerSpec(rootfs=rootfs, command=list(command), stdout=Stdio.CAPTURE)


class Named:
    """Base of the test plugins: pluggy names an object after its ``__name__``."""

    def __init__(self, name: str, events: list[str] | None = None) -> None:
        self.__name__ = name
        self.events: list[str] = [] if events is None else events


# --------------------------------------------------------------- leak checks


def cgroup_dirs() -> set[Path]:
    """Container cgroups under Vortex's parent, on v2 and in every v1 hierarchy."""
    found: set[Path] = set()
    for pattern in ("vortex/*", "*/vortex/*"):
        found.update(path for path in CGROUP_ROOT.glob(pattern) if path.is_dir())
    return found


async def without_spare(runtime: Runtime) -> tuple[set[str], dict[int, str]]:
    """Open fds and child processes, without those of the Runtime's spare init."""
    spare = await runtime.spare()
    fds, kids = open_fds(), children()
    if spare is not None:
        held = {f"{fd} -> " for fd in spare.fds()}
        fds = {fd for fd in fds if not any(fd.startswith(prefix) for prefix in held)}
        del kids[spare.pid]
    return fds, kids


def children() -> dict[int, str]:
    """PID -> state of every child process of this test process."""
    return {pid: state for pid, (_name, state) in child_processes().items()}


def open_fds() -> set[str]:
    """Open file descriptors of this process, each with what it points to."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the one listdir itself used is gone
            fds.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
    return fds


# --------------------------------------------------------------- failing hooks


class FailIn(Named):
    """Raises in one hook; records the container id and that on_exit ran."""

    def __init__(self, hook: str) -> None:
        super().__init__(f"fail-in-{hook}")
        self.hook = hook
        self.armed = True
        self.container_id: str | None = None
        self.exit_result: RunResult | None = None

    def _maybe_fail(self, hook: str, container: Container) -> None:
        self.container_id = container.id
        if self.armed and hook == self.hook:
            raise RuntimeError(f"boom in {hook}")

    @hookimpl
    def vortex_prepare(self, container: Container) -> None:
        self._maybe_fail("vortex_prepare", container)

    @hookimpl
    def vortex_pre_pivot(self, container: Container) -> None:
        self._maybe_fail("vortex_pre_pivot", container)

    @hookimpl
    async def vortex_post_cgroup(self, container: Container) -> None:
        await anyio.lowlevel.checkpoint()
        self._maybe_fail("vortex_post_cgroup", container)

    @hookimpl
    def vortex_post_start(self, container: Container) -> None:
        self._maybe_fail("vortex_post_start", container)

    @hookimpl
    def vortex_on_exit(self, container: Container, result: RunResult) -> None:
        self.exit_result = result
        self._maybe_fail("vortex_on_exit", container)


@pytest.mark.parametrize("hook", ["vortex_prepare", "vortex_pre_pivot", "vortex_post_cgroup"])
async def test_failing_start_hook_raises_plugin_error_and_leaves_nothing(
    rootfs: Path, hook: str
) -> None:
    plugin = FailIn(hook)
    cgroups_before = cgroup_dirs()
    async with Runtime(plugins=[plugin], entry_points=False) as runtime:
        # Warm up: whatever the Runtime opens once (and keeps) is open before we count.
        plugin.armed = False
        assert (await runtime.run(spec_for(rootfs, "/bin/true"))).exit_code == 0
        plugin.armed = True
        fds_before, children_before = await without_spare(runtime)

        with pytest.raises(PluginError) as excinfo:
            await runtime.run(spec_for(rootfs, "/bin/echo", "must not run"))

        message = str(excinfo.value)
        assert "fail-in-" + hook in message
        assert hook in message
        assert f"boom in {hook}" in message
        assert isinstance(excinfo.value.__cause__, RuntimeError)
        # vortex_on_exit ran for the failed start, with the error in the result.
        result = plugin.exit_result
        assert result is not None
        assert result.error is not None and hook in result.error
        if hook != "vortex_post_cgroup":  # no init was cloned
            assert result.exit_code is None and result.signal is None
        assert runtime.containers == []

        # The failed start used the spare and ended it; the next one (if already
        # cloned) is the Runtime's, not a leak.
        fds_after, children_after = await without_spare(runtime)
        assert fds_after == fds_before
        assert children_after == children_before  # the helper only; no zombie init
        assert all(state != "Z" for state in children().values())
    assert plugin.container_id is not None
    assert not [path for path in cgroup_dirs() if path.name == plugin.container_id]
    assert cgroup_dirs() <= cgroups_before
    assert children() == {}


@pytest.mark.parametrize("hook", ["vortex_post_start", "vortex_on_exit"])
async def test_failing_late_hook_does_not_break_the_run(rootfs: Path, hook: str) -> None:
    plugin = FailIn(hook)
    async with Runtime(plugins=[plugin], entry_points=False) as runtime:
        result = await runtime.run(spec_for(rootfs, "/bin/sh", "-c", "echo ran; exit 3"))
    assert result.exit_code == 3
    assert result.error is None
    assert result.stdout == b"ran\n"
    assert plugin.exit_result == result


# --------------------------------------------------------------- order


class SlowAsync(Named):
    """Async hooks that yield to the loop in the middle, recording start and end."""

    def __init__(self, name: str, events: list[str], delay: float) -> None:
        super().__init__(name, events)
        self.delay = delay

    async def _record(self, hook: str) -> None:
        self.events.append(f"{self.__name__} {hook} start")
        await anyio.sleep(self.delay)
        self.events.append(f"{self.__name__} {hook} end")

    @hookimpl
    async def vortex_prepare(self) -> None:
        await self._record("prepare")

    @hookimpl
    async def vortex_post_cgroup(self) -> None:
        await self._record("post_cgroup")

    @hookimpl
    async def vortex_post_start(self) -> None:
        await self._record("post_start")

    @hookimpl
    async def vortex_on_exit(self) -> None:
        await self._record("on_exit")


HOOKS = ("prepare", "post_cgroup", "post_start", "on_exit")


def in_call_order(hooks: Sequence[str]) -> list[str]:
    """What the two SlowAsync plugins of the tests below record for ``hooks`` in order."""
    expected = []
    for hook in hooks:
        for name in ("second", "first"):  # registered last, called first
            expected += [f"{name} {hook} start", f"{name} {hook} end"]
    return expected


async def test_async_hooks_are_awaited_one_after_the_other(rootfs: Path) -> None:
    events: list[str] = []
    # "second" is called first (LIFO) and is the slower one: it must still end first.
    first = SlowAsync("first", events, delay=0.0)
    second = SlowAsync("second", events, delay=0.05)
    async with Runtime(plugins=[first, second], entry_points=False) as runtime:
        await runtime.run(spec_for(rootfs, "/bin/true"))
    for hook in HOOKS:
        assert [e for e in events if f" {hook} " in e] == in_call_order([hook])
    assert events[:8] == in_call_order(["prepare", "post_cgroup"])


async def test_on_exit_waits_for_the_post_start_hooks(rootfs: Path) -> None:
    events: list[str] = []
    first = SlowAsync("first", events, delay=0.0)
    second = SlowAsync("second", events, delay=0.05)
    async with Runtime(plugins=[first, second], entry_points=False) as runtime:
        await runtime.run(spec_for(rootfs, "/bin/true"))
    assert events == in_call_order(HOOKS)


class SeesTheCommand(Named):
    def __init__(self) -> None:
        super().__init__("sees-the-command")
        self.cmdline: bytes | None = None

    @hookimpl
    def vortex_post_start(self, container: Container) -> None:
        try:
            self.cmdline = Path(f"/proc/{container.pid}/cmdline").read_bytes()
        except OSError:
            self.cmdline = b""  # reaped already


async def test_post_start_runs_while_the_command_runs(rootfs: Path) -> None:
    plugin = SeesTheCommand()
    async with Runtime(plugins=[plugin], entry_points=False) as runtime:
        await runtime.run(spec_for(rootfs, "/bin/sleep", "0.3"))
    assert plugin.cmdline == b"/bin/sleep\x000.3\x00"


class GatesTheCommand(Named):
    """An async post_cgroup hook whose work the command sees: it was awaited first."""

    def __init__(self, rootfs: Path) -> None:
        super().__init__("gate")
        self.rootfs = rootfs

    @hookimpl
    async def vortex_post_cgroup(self, container: Container) -> None:
        await anyio.sleep(0.1)
        (self.rootfs / "gate").write_text(f"opened for {container.pid}\n")


async def test_async_post_cgroup_completes_before_the_command_starts(rootfs: Path) -> None:
    async with Runtime(plugins=[GatesTheCommand(rootfs)], entry_points=False) as runtime:
        result = await runtime.run(spec_for(rootfs, "/bin/cat", "/gate"))
    assert result.exit_code == 0
    assert result.stdout is not None and result.stdout.startswith(b"opened for ")


class Ordered(Named):
    @hookimpl
    def vortex_prepare(self) -> None:
        self.events.append(self.__name__)


class OrderedFirst(Named):
    @hookimpl(tryfirst=True)
    def vortex_prepare(self) -> None:
        self.events.append(self.__name__)


class OrderedLast(Named):
    @hookimpl(trylast=True)
    def vortex_prepare(self) -> None:
        self.events.append(self.__name__)


async def test_tryfirst_trylast_and_registration_order(rootfs: Path) -> None:
    events: list[str] = []
    plugins = [
        OrderedLast("last-1", events),
        Ordered("plain-1", events),
        OrderedFirst("first-1", events),
        Ordered("plain-2", events),
        OrderedFirst("first-2", events),
        OrderedLast("last-2", events),
    ]
    async with Runtime(plugins=plugins, entry_points=False) as runtime:
        await runtime.run(spec_for(rootfs, "/bin/true"))
    # tryfirst ones, then plain ones, each group most recently registered first; then
    # trylast ones in registration order (pluggy inserts each new trylast at the end).
    assert events == ["first-2", "first-1", "plain-2", "plain-1", "last-1", "last-2"]


# --------------------------------------------------------------- arguments


class Subsets(Named):
    """Implementations that accept fewer parameters than their hook offers."""

    def __init__(self) -> None:
        super().__init__("subsets")
        self.results: list[RunResult] = []
        self.bare_calls = 0

    @hookimpl
    def vortex_pre_pivot(self) -> Sequence[SetupOp]:
        self.bare_calls += 1
        return []

    @hookimpl
    def vortex_on_exit(self, result: RunResult) -> None:
        self.results.append(result)


async def test_an_implementation_may_accept_a_subset_of_the_arguments(rootfs: Path) -> None:
    plugin = Subsets()
    async with Runtime(plugins=[plugin], entry_points=False) as runtime:
        result = await runtime.run(spec_for(rootfs, "/bin/sh", "-c", "exit 7"))
    assert plugin.bare_calls == 1
    assert plugin.results == [result]
    assert result.exit_code == 7


# --------------------------------------------------------------- disabling


async def test_disabling_an_unknown_plugin_lists_the_known_ones() -> None:
    with pytest.raises(PluginError) as excinfo:
        async with Runtime(disabled_plugins=["no-such-plugin"], entry_points=False):
            pass  # pragma: no cover - the Runtime must not start
    message = str(excinfo.value)
    assert "'no-such-plugin'" in message
    assert "limits, logging, net" in message


def test_cli_no_plugin_with_an_unknown_name_fails_with_the_known_ones(rootfs: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vortex.cli", "run", "--no-plugin", "nope", str(rootfs), "true"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 125, proc.stderr
    assert "unknown plugin 'nope'" in proc.stderr
    assert "limits" in proc.stderr and "logging" in proc.stderr and "net" in proc.stderr


async def loopback_flags(rootfs: Path, disabled: list[str]) -> int:
    async with Runtime(disabled_plugins=disabled, entry_points=False) as runtime:
        result = await runtime.run(spec_for(rootfs, "/bin/cat", "/sys/class/net/lo/flags"))
    assert result.exit_code == 0 and result.stdout is not None
    return int(result.stdout.decode(), 16)


async def test_the_net_plugin_brings_loopback_up(rootfs: Path) -> None:
    assert await loopback_flags(rootfs, []) & IFF_UP


async def test_disabling_net_leaves_loopback_down(rootfs: Path) -> None:
    assert not await loopback_flags(rootfs, ["net"]) & IFF_UP
