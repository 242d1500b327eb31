"""Rootless mode: ``vortex run`` as an unprivileged user (docs/security.md, "Rootless").

The test process is root; each case runs the CLI as uid 1000 with ``setpriv``.  The
test interpreter lives under /root, which other users cannot traverse, so every run
happens in a private mount namespace where the interpreter's prefix is bind-mounted
on a world-searchable directory (nothing is copied and no permission on the host
changes; the host's mount table is untouched, which ``no_leaks`` checks).  The
busybox rootfs is built in a world-readable temporary directory.

The subordinate-id cases bind a temporary file over /etc/subuid and /etc/subgid
in that same private mount namespace: the host's files are never edited.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vortex.rootless import LIMITS_UNAVAILABLE, NO_CGROUP_WARNING

UID = GID = 1000
REPO = Path(__file__).resolve().parent.parent


def _userns_available() -> bool:
    for path in (
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/user/max_user_namespaces",
    ):
        try:
            if Path(path).read_text().strip() == "0":
                return False
        except OSError:
            pass
    return True


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the test switches to uid 1000 with setpriv"),
    pytest.mark.skipif(
        shutil.which("setpriv") is None or shutil.which("unshare") is None,
        reason="needs setpriv and unshare (util-linux)",
    ),
    pytest.mark.skipif(
        not _userns_available(), reason="the kernel refuses unprivileged user namespaces"
    ),
]


@dataclass
class Env:
    base: Path
    rootfs: Path
    prefix_mount: Path
    runtime_dir: Path


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    from vortex.rootfs.busybox import build_busybox_rootfs

    base = Path(tempfile.mkdtemp(prefix="vortex-rootless-"))
    try:
        base.chmod(0o755)
        rootfs = base / "busybox"
        build_busybox_rootfs(rootfs)
        prefix_mount = base / "python"
        prefix_mount.mkdir(mode=0o755)
        runtime_dir = base / "xdg"
        runtime_dir.mkdir(mode=0o700)
        os.chown(runtime_dir, UID, GID)
        yield Env(base, rootfs, prefix_mount, runtime_dir)
    finally:
        shutil.rmtree(base)


# Inside a private mount namespace: bind the interpreter's prefix, then drop to the user.
_SCRIPT = (
    'mount --bind "$1" "$2" && shift 2 && exec setpriv --reuid={uid} --regid={gid} '
    '--clear-groups "$@"'
)
# The same, with a file of subordinate ids bound over /etc/subuid and /etc/subgid first.
_SUBIDS_SCRIPT = 'mount --bind "$1" /etc/subuid && mount --bind "$1" /etc/subgid && shift && '


def vortex_as_user(
    env: Env,
    *args: str,
    python_args: tuple[str, ...] = ("-m", "vortex"),
    subids: Path | None = None,
) -> subprocess.Popen[bytes]:
    prefix = Path(sys.base_prefix)
    exe = env.prefix_mount / Path(sys.executable).relative_to(prefix)
    child_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        # The binary's rpath points under /root: without this the dynamic loader
        # would fall back to the system's libpython.
        "LD_LIBRARY_PATH": str(env.prefix_mount / "lib"),
        "PYTHONPATH": str(REPO),
        "XDG_RUNTIME_DIR": str(env.runtime_dir),
        "HOME": "/nonexistent",
    }
    command = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        (_SUBIDS_SCRIPT if subids else "") + _SCRIPT.format(uid=UID, gid=GID),
        "sh",
        *([str(subids)] if subids else []),
        str(prefix),
        str(env.prefix_mount),
        str(exe),
        *python_args,
        *args,
    ]
    return subprocess.Popen(
        command,
        cwd="/",
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_as_user(
    env: Env, *args: str, timeout: float = 60, subids: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    proc = vortex_as_user(env, *args, subids=subids)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _errors(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    """stderr without the expected warning about the missing cgroup."""
    return [line for line in proc.stderr.decode().splitlines() if line != NO_CGROUP_WARNING]


def _state_records(env: Env) -> list[str]:
    """Container records and ``--userns auto`` blocks left in the user's state directory."""
    found = []
    for sub, pattern in (("containers", "*"), ("userns", "*.json")):
        directory = env.runtime_dir / "vortex" / sub
        found += sorted(p.name for p in directory.glob(pattern)) if directory.is_dir() else []
    return found


def test_container_root_is_the_caller_with_its_own_namespaces(env: Env) -> None:
    script = (
        "id -u; id -g; echo $$; hostname; cat /proc/self/uid_map; "
        "ip link show lo; test -r /proc/self/status && echo proc-ok; "
        "echo x > /dev/null && head -c 4 /dev/zero | wc -c; ls /dev/pts"
    )
    proc = run_as_user(env, "run", "--hostname", "rl-box", str(env.rootfs), "/bin/sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "0"  # root inside
    assert lines[1] == "0"
    assert lines[2] == "1"  # PID 1
    assert lines[3] == "rl-box"
    assert lines[4].split() == ["0", str(UID), "1"]
    assert "UP" in lines[5]
    assert "proc-ok" in lines
    assert "4" in lines
    # The single warning line about the dropped default memory limit.
    assert proc.stderr.decode().splitlines() == [NO_CGROUP_WARNING]
    assert _state_records(env) == []


def test_outside_the_process_runs_as_the_callers_uid(env: Env) -> None:
    marker = "987654"
    proc = vortex_as_user(env, "run", str(env.rootfs), "/bin/sh", "-c", f"sleep {marker}")
    try:
        deadline = time.monotonic() + 20
        uids: list[str] = []
        while not uids and time.monotonic() < deadline:
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                    status = Path(f"/proc/{entry}/status").read_text()
                except OSError:
                    continue
                if cmdline == f"sleep\0{marker}\0".encode():
                    uids = next(
                        line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")
                    )
            time.sleep(0.05)
        assert uids == [str(UID)] * 4
        assert len(_state_records(env)) == 1  # recorded while it runs
    finally:
        proc.kill()  # the CLI; its Runtime dies, and so does the container (PDEATHSIG/pidns)
        proc.communicate()
    # The next run sweeps whatever the killed Runtime left.
    assert run_as_user(env, "run", str(env.rootfs), "/bin/true").returncode == 0
    assert _state_records(env) == []


@pytest.mark.parametrize(
    ("command", "status"), [(["/bin/true"], 0), (["/bin/sh", "-c", "exit 7"], 7), (["/nope"], 127)]
)
def test_exit_status_is_passed_through(env: Env, command: list[str], status: int) -> None:
    proc = run_as_user(env, "run", str(env.rootfs), *command)
    assert proc.returncode == status, proc.stderr


def test_explicit_limit_is_one_clear_error(env: Env) -> None:
    for flag in (["--memory", "64m"], ["--pids", "10"]):
        proc = run_as_user(env, "run", *flag, str(env.rootfs), "/bin/true")
        assert proc.returncode == 125
        err = proc.stderr.decode()
        assert err.count("\n") == 1, err
        assert LIMITS_UNAVAILABLE.format(uid=UID) in err
    assert _state_records(env) == []


def test_other_users_and_userns_ranges_are_refused(env: Env) -> None:
    # Without subordinate ids (the host's /etc/subuid has none for uid 1000).
    proc = run_as_user(env, "run", "--user", "5:5", str(env.rootfs), "/bin/true")
    assert proc.returncode == 125
    assert b"rootless container maps only uid and gid 0" in proc.stderr
    proc = run_as_user(env, "run", "--userns", "auto", str(env.rootfs), "/bin/true")
    assert proc.returncode == 125
    assert b"--userns auto needs subordinate ids" in proc.stderr
    assert len(_errors(proc)) == 1, proc.stderr
    proc = run_as_user(env, "run", "--userns", "300000:10", str(env.rootfs), "/bin/true")
    assert proc.returncode == 125
    assert b"use --userns auto" in proc.stderr
    assert _state_records(env) == []


def test_kernel_refusal_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from vortex import rootless
    from vortex.errors import PermissionDeniedError

    for sysctl in ("unprivileged_userns_clone", "max_user_namespaces"):
        monkeypatch.setattr(rootless, "_read_int", lambda path, s=sysctl: 0 if s in path else None)
        with pytest.raises(PermissionDeniedError, match=sysctl) as info:
            rootless.check_user_namespaces()
        assert "\n" not in str(info.value)
    monkeypatch.setattr(rootless, "_read_int", lambda path: None)
    rootless.check_user_namespaces()


_RUNTIME_CODE = """
import anyio, vortex, vortex.errors
from pathlib import Path
async def main():
    async with vortex.Runtime() as rt:
        print("cgroups:", rt.cgroups, "state:", rt.state.path)
        spec = vortex.ContainerSpec(rootfs=Path(ROOTFS), command=["/bin/sh", "-c", "exit 5"])
        try:
            await rt.run(spec)  # the default 100M memory limit cannot be applied
        except vortex.errors.PluginError as exc:
            print("refused:", type(exc.__cause__).__name__)
        spec = vortex.ContainerSpec(
            rootfs=Path(ROOTFS),
            command=["/bin/sh", "-c", "exit 5"],
            resources=vortex.Resources(memory=None),
        )
        container = await rt.start(spec)
        result = await container.wait()
        r = result
        print("status:", r.status, "oom:", r.oom_killed, "peak:", r.memory_peak, r.cpu_time)
anyio.run(main)
"""


def test_library_runtime_runs_rootless_without_a_cgroup(env: Env) -> None:
    code = _RUNTIME_CODE.replace("ROOTFS", repr(str(env.rootfs)))
    proc = vortex_as_user(env, python_args=("-c", code))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines[0] == f"cgroups: None state: {env.runtime_dir}/vortex/containers"
    assert lines[1] == "refused: MissingControllerError"
    assert lines[2] == "status: 5 oom: False peak: None None"
    assert _state_records(env) == []


# ------------------------------------------------------------- subordinate ids

SUB_FIRST = 200000
"""The subordinate range the tests give uid 1000 (in a private mount namespace)."""


def _user_name() -> str | None:
    try:
        return pwd.getpwuid(UID).pw_name
    except KeyError:
        return None


needs_subids = pytest.mark.skipif(
    shutil.which("newuidmap") is None
    or shutil.which("newgidmap") is None
    or _user_name() is None
    or not (os.path.isfile("/etc/subuid") and os.path.isfile("/etc/subgid")),
    reason="needs newuidmap/newgidmap (package uidmap), a passwd entry for uid 1000 and "
    "/etc/subuid, /etc/subgid to bind over",
)


def subid_file(env: Env, text: str) -> Path:
    """A subuid(5)/subgid(5) file the user can read, bound over both by vortex_as_user."""
    path = env.base / f"subids-{abs(hash(text))}"
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture
def probe_names(env: Env) -> Iterator[list[str]]:
    """Names of files the test creates in the rootfs's /tmp; removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        (env.rootfs / "tmp" / name).unlink(missing_ok=True)


_CHOWN_SCRIPT = (
    "cat /proc/self/uid_map /proc/self/gid_map; touch /tmp/{name}; "
    "chown 1000:1000 /tmp/{name} && echo chown-ok; "
    "su -s /bin/sh -c 'id -u; id -g; touch /tmp/{name}.su' app && echo su-ok"
)


@needs_subids
@pytest.mark.parametrize("owner", ["name", "uid"])
def test_subordinate_ids_map_the_whole_range(env: Env, probe_names: list[str], owner: str) -> None:
    name = f"vx-subid-{os.getpid()}-{owner}"
    probe_names += [name, f"{name}.su"]
    entry = _user_name() if owner == "name" else str(UID)
    subids = subid_file(env, f"someone:500000:65536\n{entry}:{SUB_FIRST}:65536\n")
    passwd = env.rootfs / "etc" / "passwd"
    original = passwd.read_text()
    passwd.write_text(original + "app:x:1000:1000::/tmp:/bin/sh\n")
    try:
        proc = run_as_user(
            env, "run", str(env.rootfs), "/bin/sh", "-c", _CHOWN_SCRIPT.format(name=name),
            subids=subids,
        )  # fmt: skip
    finally:
        passwd.write_text(original)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.decode().splitlines()]
    mapping = [["0", str(UID), "1"], ["1", str(SUB_FIRST), "65536"]]
    assert lines[0:2] == mapping  # uid_map: container root = the caller, 1.. = the range
    assert lines[2:4] == [["0", str(GID), "1"], ["1", str(SUB_FIRST), "65536"]]
    assert ["chown-ok"] in lines
    # Container uid/gid 1000 is subordinate id SUB_FIRST + 999 on the host.
    st = (env.rootfs / "tmp" / name).stat()
    assert (st.st_uid, st.st_gid) == (SUB_FIRST + 999, SUB_FIRST + 999)
    # su (setgroups, setgid, setuid) to a mapped id works, and is that id on the host.
    assert lines[-3:] == [["1000"], ["1000"], ["su-ok"]]
    st = (env.rootfs / "tmp" / f"{name}.su").stat()
    assert (st.st_uid, st.st_gid) == (SUB_FIRST + 999, SUB_FIRST + 999)
    # No "no cgroup" warning aside, nothing on stderr: the helpers ran quietly.
    assert proc.stderr.decode().splitlines() == [NO_CGROUP_WARNING]
    assert _state_records(env) == []


@needs_subids
def test_without_subordinate_ids_the_same_chown_fails(env: Env, probe_names: list[str]) -> None:
    """The check above can fail: with only the caller mapped, uid 1000 does not exist."""
    name = f"vx-nosubid-{os.getpid()}"
    probe_names += [name, f"{name}.su"]
    subids = subid_file(env, "someone:500000:65536\n")  # nothing for uid 1000
    proc = run_as_user(
        env, "run", str(env.rootfs), "/bin/sh", "-c", _CHOWN_SCRIPT.format(name=name),
        subids=subids,
    )  # fmt: skip
    lines = [line.split() for line in proc.stdout.decode().splitlines()]
    assert lines[0:2] == [["0", str(UID), "1"], ["0", str(GID), "1"]]
    assert ["chown-ok"] not in lines and ["su-ok"] not in lines
    assert b"Invalid argument" in proc.stderr  # chown to an unmapped id: EINVAL
    assert (env.rootfs / "tmp" / name).stat().st_uid == UID
    assert not (env.rootfs / "tmp" / f"{name}.su").exists()


@needs_subids
def test_user_flag_takes_mapped_ids(env: Env) -> None:
    subids = subid_file(env, f"{_user_name()}:{SUB_FIRST}:65536\n")
    script = "id -u; id -g; cat /proc/self/status | grep -E '^(Uid|Gid):'"
    proc = run_as_user(
        env, "run", "--user", "1000:1000", str(env.rootfs), "/bin/sh", "-c", script,
        subids=subids,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split()[:2] == ["1000", "1000"]
    proc = run_as_user(env, "run", "--user", "70000", str(env.rootfs), "/bin/true", subids=subids)
    assert proc.returncode == 125
    assert b"not mapped in the rootless user namespace" in proc.stderr


@needs_subids
def test_a_range_newuidmap_refuses_is_one_clear_line(env: Env) -> None:
    # Our own uid inside the subordinate range: the kernel refuses overlapping maps.
    subids = subid_file(env, f"{_user_name()}:{UID}:10\n")
    proc = run_as_user(env, "run", str(env.rootfs), "/bin/true", subids=subids)
    assert proc.returncode == 125
    (err,) = _errors(proc)
    assert "newuidmap refused uids 0-0 -> 1000-1000, 1-10 -> 1000-1009" in err
    assert "/etc/subuid" in err
    assert _state_records(env) == []


@needs_subids
def test_rootless_userns_auto_takes_a_block_of_the_subordinate_ids(env: Env) -> None:
    subids = subid_file(env, f"{_user_name()}:{SUB_FIRST}:131072\n")
    script = "cat /proc/self/uid_map /proc/self/gid_map; id -u"
    proc = run_as_user(
        env, "run", "--userns", "auto", str(env.rootfs), "/bin/sh", "-c", script, subids=subids
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.decode().splitlines()]
    # The caller itself is not mapped: container root is a subordinate id of its own.
    assert lines == [["0", str(SUB_FIRST), "65536"], ["0", str(SUB_FIRST), "65536"], ["0"]]
    assert _state_records(env) == []
    # A range smaller than a block: one clear line.
    small = subid_file(env, f"{_user_name()}:{SUB_FIRST}:1000\n")
    proc = run_as_user(env, "run", "--userns", "auto", str(env.rootfs), "/bin/true", subids=small)
    assert proc.returncode == 125
    (err,) = _errors(proc)
    assert "holds 1000 ids, fewer than one block of 65536" in err
    assert _state_records(env) == []


@needs_subids
def test_rootless_userns_auto_blocks_are_disjoint(env: Env) -> None:
    subids = subid_file(env, f"{_user_name()}:{SUB_FIRST}:131072\n")
    first = vortex_as_user(
        env, "run", "--userns", "auto", str(env.rootfs), "/bin/sh", "-c",
        "cat /proc/self/uid_map; exec sleep 60", subids=subids,
    )  # fmt: skip
    try:
        assert first.stdout is not None
        assert first.stdout.readline().split() == [b"0", str(SUB_FIRST).encode(), b"65536"]
        second = run_as_user(
            env, "run", "--userns", "auto", str(env.rootfs), "/bin/cat", "/proc/self/uid_map",
            subids=subids,
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        assert second.stdout.split() == [b"0", str(SUB_FIRST + 65536).encode(), b"65536"]
    finally:
        first.kill()
        first.communicate()
    # The killed Runtime's block is swept by the next one.
    assert run_as_user(env, "run", str(env.rootfs), "/bin/true", subids=subids).returncode == 0
    assert _state_records(env) == []
