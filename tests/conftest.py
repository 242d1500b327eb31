"""Shared pytest configuration of the Vortex test suite."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vortex.cgroups.base import Cgroup
    from vortex.cgroups.v1 import V1Backend

CGROUP_ROOT = "/sys/fs/cgroup"


def host_is_pure_cgroup2(root: str = CGROUP_ROOT) -> bool:
    """True when ``root`` is a cgroup2 mount with memory, pids and cpu usable.

    A hybrid host (cgroup2 only at ``root/unified``) is not: its limits are
    enforced by the v1 controllers.  Those tests run in the v2 VM instead
    (tests/test_cgroup2_vm.py).
    """
    try:
        with open(os.path.join(root, "cgroup.controllers"), encoding="ascii") as f:
            controllers = set(f.read().split())
        with open("/proc/self/mounts", encoding="utf-8") as f:
            fstypes = {fields[1]: fields[2] for fields in (line.split() for line in f)}
    except OSError:
        return False
    return fstypes.get(root) == "cgroup2" and {"memory", "pids", "cpu"} <= controllers


def _skip_cgroup2_unless_pure_v2(items: list[pytest.Item]) -> None:
    """Skip the tests marked ``cgroup2`` unless we are root on a pure cgroup v2 host."""
    if os.geteuid() == 0 and host_is_pure_cgroup2():
        return
    skip = pytest.mark.skip(
        reason="needs root on a pure cgroup v2 host (tests/test_cgroup2_vm.py runs them in a VM)"
    )
    for item in items:
        if "cgroup2" in item.keywords:
            item.add_marker(skip)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collection-time adjustments; add new ones as separate helper calls."""
    _skip_cgroup2_unless_pure_v2(items)


# --------------------------------------------------------------------- runtime fixtures


VORTEX = [sys.executable, "-m", "vortex"]
"""How tests start the CLI: the same interpreter, the installed package."""

# A ``vortex daemon`` someone runs on this machine must not serve the suite's
# ``vortex run``s: tests/test_daemon.py starts its own and points them at it.
os.environ["VORTEX_DAEMON_SOCKET"] = "off"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on both anyio backends."""
    return str(request.param)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem built from the host's busybox-static."""
    from vortex.rootfs.busybox import build_busybox_rootfs

    path = tmp_path_factory.mktemp("rootfs") / "busybox"
    build_busybox_rootfs(path)
    return path


def vortex_cgroups() -> set[str]:
    """Container cgroups that exist right now, in any hierarchy."""
    found: set[str] = set()
    base = Path(CGROUP_ROOT)
    candidates = [base / "vortex"] + [p / "vortex" for p in base.iterdir() if p.is_dir()]
    for parent in candidates:
        if parent.is_dir():
            found.update(str(child) for child in parent.iterdir() if child.is_dir())
    return found


def imported_modules(*arguments: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules ``python -X importtime ARGUMENTS`` imports (the run must succeed)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *arguments],
        stdin=subprocess.DEVNULL,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if "|" in line}


def command_line(pid: int) -> list[bytes]:
    """A process's argv, as the kernel shows it."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[:-1]


def is_fresh_helper(pid: int) -> bool:
    """Whether a process is an exec'd fork helper: this tree's vortex/helper/__main__.py
    run by a Python isolated and without site (vortex/helper/client.py)."""
    import vortex.helper

    argv = command_line(pid)
    expected = os.path.join(os.path.dirname(vortex.helper.__file__), "__main__.py")
    return argv[1:4] == [b"-I", b"-S", os.fsencode(expected)]


def child_processes(parent: int | None = None) -> dict[int, tuple[str, str]]:
    """PID -> (process name, state letter) of each child of ``parent`` (default: this
    test process), zombies included."""
    parent = os.getpid() if parent is None else parent
    return all_processes(parent)


def all_processes(parent: int | None = None) -> dict[int, tuple[str, str]]:
    """PID -> (process name, state letter) of every process, or of the children of
    ``parent``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                name_part, rest = f.read().rsplit(")", 1)
        except OSError:
            continue  # exited meanwhile
        fields = rest.split()
        if parent is None or int(fields[1]) == parent:
            found[int(entry)] = (name_part.split("(", 1)[1], fields[0])
    return found


def children_of(parent: int, name: str | None = None) -> list[int]:
    """PIDs of ``parent``'s children (those called ``name``, when given)."""
    return [pid for pid, (called, _) in child_processes(parent).items() if name in (None, called)]


def fork_helper_of(parent: int) -> int:
    """The PID of ``parent``'s fork helper.  The inits it clones are ``parent``'s
    children too (CLONE_PARENT) and keep its name until they rename themselves or
    exec; unlike the helper, they live in PID namespaces of their own."""
    helpers = [pid for pid in children_of(parent, "vortex-helper") if _in_our_pid_ns(pid)]
    assert len(helpers) == 1, helpers
    return helpers[0]


def _in_our_pid_ns(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            nspids = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
    except (OSError, StopIteration):
        return False  # exited meanwhile
    return len(nspids) == 1


def zombie_children() -> list[int]:
    """PIDs of zombie processes whose parent is this test process."""
    return [pid for pid, (_name, state) in child_processes().items() if state == "Z"]


def open_fds() -> dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


def userns_allocations(state_dir: str = "/run/vortex") -> set[str]:
    """``--userns auto`` id blocks recorded in a state directory (vortex/userns.py)."""
    directory = Path(state_dir, "userns")
    return {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()


@contextlib.contextmanager
def reachable_tmpdir(prefix: str) -> Iterator[Path]:
    """A 0755 directory in /tmp, removed afterwards: unlike pytest's tmp_path (0700),
    the unprivileged host ids of a user namespace can reach what is inside."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path)


@contextlib.contextmanager
def reachable_copy(rootfs: Path, prefix: str) -> Iterator[Path]:
    """A copy of ``rootfs`` in a :func:`reachable_tmpdir`."""
    with reachable_tmpdir(prefix) as parent:
        subprocess.run(["cp", "-a", str(rootfs), str(parent / "rootfs")], check=True)
        yield parent / "rootfs"


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split(" - ")[0].split(" ", 4)[4] for line in f]


def spare_cgroups(runtime_pid: int | None = None) -> set[str]:
    """The cgroups (as :func:`vortex_cgroups` names them) of the spare inits that the
    Runtime in process ``runtime_pid`` (default: any) keeps waiting
    (vortex/spare.py), once they have moved in: that Runtime's, as long as it lives."""
    ids = set()
    if runtime_pid is None:
        spares = [pid for pid, (name, _state) in all_processes().items() if name == "vortex-spare"]
    else:
        spares = children_of(runtime_pid, "vortex-spare")
    for spare in spares:
        with contextlib.suppress(OSError), open(f"/proc/{spare}/cgroup") as f:
            ids.update(
                line.rsplit("/", 1)[1] for line in f.read().splitlines() if "/vortex/" in line
            )
    return {cgroup for cgroup in vortex_cgroups() if cgroup.rsplit("/", 1)[1] in ids}


def container_cgroups(settle: float = 5.0) -> set[str]:
    """:func:`vortex_cgroups` but for those of waiting spare inits (a live Runtime's,
    such as a daemon's, replaced after each start).  A spare's cgroup is made before
    the spare moves in: while one is empty, look again, for up to ``settle`` seconds."""
    deadline = time.monotonic() + settle
    while True:
        found = vortex_cgroups() - spare_cgroups()
        # Empty, or with a spare that moved in after spare_cgroups() looked.
        settling = [c for c in found if _processes_in(c) in ([], ["vortex-spare"])]
        if time.monotonic() > deadline or not settling:
            return found
        time.sleep(0.02)


def _processes_in(cgroup: str) -> list[str] | None:
    """The names of the processes in ``cgroup``; None once it is gone."""
    try:
        pids = Path(cgroup, "cgroup.procs").read_text().split()
    except OSError:
        return None
    names = []
    for pid in pids:
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


@contextlib.contextmanager
def leak_check(
    allowed_cgroups: Callable[[], set[str]] = set, settle: float = 0.0
) -> Iterator[None]:
    """No container cgroup, no zombie child, no new fd, no new mount, no ``--userns
    auto`` id block left allocated by the body.  ``allowed_cgroups`` names those a
    Runtime alive outside the test keeps (its spare's), which may take ``settle``
    seconds to appear."""
    cgroups_before = vortex_cgroups()
    fds_before = open_fds()
    mounts_before = _mounts()
    allocations_before = userns_allocations()
    yield
    leaked_allocations = userns_allocations() - allocations_before
    assert not leaked_allocations, f"--userns auto blocks left: {sorted(leaked_allocations)}"
    deadline = time.monotonic() + settle
    while (leaked_cgroups := vortex_cgroups() - cgroups_before - allowed_cgroups()) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert not leaked_cgroups, f"cgroups left behind: {sorted(leaked_cgroups)}"
    assert not zombie_children(), f"zombie children left: {zombie_children()}"
    leaked_fds = {fd: target for fd, target in open_fds().items() if fd not in fds_before}
    assert not leaked_fds, f"file descriptors left open: {leaked_fds}"
    assert _mounts() == mounts_before, "the host's mount table changed"


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After every test: nothing left behind (:func:`leak_check`)."""
    with leak_check():
        yield


Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Popen that kills and reaps whatever the test left running, and closes its pipes."""
    children: list[subprocess.Popen[bytes]] = []

    def start(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(*args, **kwargs)  # type: ignore[call-overload]
        children.append(proc)
        return proc

    yield start
    for proc in children:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def v1_backend() -> Iterator[V1Backend]:
    """A v1 backend with a fresh parent; afterwards no directory may remain anywhere."""
    from vortex.cgroups.v1 import V1Backend

    b = V1Backend(parent=f"vortex-test-{secrets.token_hex(4)}", timeout=10.0)
    yield b
    for name in b.names():
        b.open(name).remove()
    for parent in b.parent_paths():
        if os.path.isdir(parent):
            assert not [e for e in os.scandir(parent) if e.is_dir()], parent
            os.rmdir(parent)
    assert not any(os.path.exists(p) for p in b.parent_paths())


def attached_worker(spawn: Spawn, cgroup: Cgroup, hold: float) -> subprocess.Popen[bytes]:
    """A Python process attached to ``cgroup`` *before* it does anything, which then
    holds 20 MiB and burns 0.2 s of CPU, says ``ready`` and sleeps ``hold`` seconds:
    known numbers for the stats tests of both backends."""
    worker = spawn(
        [sys.executable, "-c", "import sys, time\nsys.stdin.read(1)\n"
         "data = bytearray(b'x') * (20 << 20)\nt = time.process_time()\n"
         "while time.process_time() - t < 0.2: pass\nprint('ready', flush=True)\n"
         f"time.sleep({hold})\n"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    cgroup.attach(worker.pid)
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write(b"g")
    worker.stdin.flush()
    assert worker.stdout.readline() == b"ready\n"
    return worker


def run_vortex(
    *args: str, input: bytes | None = None, timeout: float = 60, **kwargs: object
) -> subprocess.CompletedProcess[bytes]:
    """Run the ``vortex`` CLI as a subprocess and return its completed process."""
    return subprocess.run(
        [*VORTEX, *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c code args...`` from the checkout; it must exit 0.  For what must
    happen in a fresh process (no threads, nothing imported yet)."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    return proc


OOM_CHILD = (
    "sh -c 'echo 1000 > /proc/self/oom_score_adj; "
    'x=$(head -c 200000000 /dev/zero | tr "\\0" a)\'; echo child=$?; '
)
"""A child shell that the OOM killer kills under a 32M limit while PID 1 lives on.

It makes itself the OOM killer's first choice: without that, PID 1 (a shell
with a few pages of its own) was chosen once in a full run on a loaded host."""


def check_oom_logged_while_running(rootfs: Path, *run_options: str) -> None:
    """``vortex run`` logs ``container.oom`` when a child is OOM-killed, before the
    container exits normally (with its own status, not as OOM-killed)."""
    proc = run_vortex(
        *("--log-level", "info", "--log-format", "json", "run", "--memory", "32M", *run_options),
        *(str(rootfs), "/bin/sh", "-c", OOM_CHILD + "sleep 1; exit 3"),
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == b"child=137\n"
    # (The container's shell also reports "Killed" on the shared stderr.)
    lines = proc.stderr.decode().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "container.oom" in names, names
    assert names.index("container.oom") < names.index("container.exited")
    assert events[names.index("container.oom")]["oom_kills"] >= 1
    exited = events[names.index("container.exited")]
    assert exited["exit_code"] == 3 and exited["oom_killed"] is False


async def check_kill_all_returns_without_waiting(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Container.kill_all`` runs on the event loop: it only sends the signals and
    never waits for the kernel (the cgroup backends wait with ``wait_until``); the
    exits still come, through ``wait()``, and nothing is left behind."""
    import signal

    import anyio

    import vortex
    from vortex.cgroups import _common, v1, v2
    from vortex.spec import ContainerSpec, Stdio

    waits: list[str] = []

    def record_wait(*args: object, **kwargs: object) -> bool:
        waits.append("wait_until")
        return True

    script = "sleep 100 & sleep 100 & echo ready; wait"
    async with vortex.Runtime() as rt:
        container = await rt.start(
            ContainerSpec(rootfs=rootfs, command=["/bin/sh", "-c", script], stdout=Stdio.STREAM)
        )
        assert container.stdout is not None and container.cgroup is not None
        try:
            assert (await container.stdout.receive()).startswith(b"ready")
            assert len(container.cgroup.procs()) == 3
            with monkeypatch.context() as patched:
                for module in (_common, v1, v2):
                    patched.setattr(module, "wait_until", record_wait)
                container.kill_all()
            assert waits == []
            with anyio.fail_after(30):
                result = await container.wait()
        finally:
            await container.stdout.aclose()
    assert result.signal == signal.SIGKILL
    assert container.cgroup.procs() == []
