"""``vortex run`` end to end: real namespaces, mounts and cgroups (v1 on this host)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import VORTEX, container_cgroups, run_vortex, zombie_children
from vortex import _linux


def sh(
    rootfs: Path, script: str, *options: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return run_vortex("run", *options, str(rootfs), "/bin/sh", "-c", script, input=input)


def test_command_is_pid_1_and_sees_only_its_processes(rootfs: Path) -> None:
    proc = sh(rootfs, "echo $$; ps -o pid,comm > /tmp/ps; tail -n +2 /tmp/ps; rm /tmp/ps")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().split("\n")
    assert lines[0] == "1"
    pids = [line.split()[0] for line in lines[1:] if line.strip()]
    assert pids[0] == "1"
    assert len(pids) == 2, f"only sh and ps must be visible: {lines}"
    assert os.getpid() > 2  # the host's PIDs are different: we are in a new PID namespace


def test_hostname_default_is_short_id_and_option_sets_it(rootfs: Path) -> None:
    default = sh(rootfs, "hostname")
    assert default.returncode == 0
    assert len(default.stdout.strip()) == 12
    assert default.stdout.strip() != os.uname().nodename.encode()
    named = sh(rootfs, "hostname", "--hostname", "box1")
    assert named.stdout == b"box1\n"


def test_own_network_namespace_with_only_lo_up(rootfs: Path) -> None:
    proc = sh(rootfs, "ls /sys/class/net; cat /sys/class/net/lo/operstate; ip -o link")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    names = out.split("\n")[0].split()
    assert names == ["lo"], out
    assert "UP" in out.split("\n", 2)[2]  # `ip -o link` flags of lo


def test_host_mounts_invisible_and_old_root_gone(rootfs: Path) -> None:
    proc = sh(rootfs, "cat /proc/self/mountinfo; echo ---; ls -a /")
    assert proc.returncode == 0, proc.stderr
    mountinfo, listing = proc.stdout.decode().split("---\n")
    # The masked and read-only paths of docs/security.md are mounts of their own.
    from vortex.security.policy import MASKED_PATHS, READONLY_PATHS

    hardening = set(MASKED_PATHS) | set(READONLY_PATHS)
    hardening |= {f"/dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty")}
    mount_points = [
        line.split()[4] for line in mountinfo.splitlines() if line.split()[4] not in hardening
    ]
    assert sorted(mount_points) == sorted(
        ["/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"]
    ), mount_points
    # The root is the rootfs and nothing else: no trace of the host's root or the old root.
    assert set(listing.split()) == {".", "..", *(p.name for p in rootfs.iterdir())}


def test_proc_sys_and_dev_are_restricted(rootfs: Path) -> None:
    proc = sh(
        rootfs,
        "grep -E ' /proc | /sys | /dev ' /proc/self/mountinfo; ls /dev; "
        "touch /sys/x 2>/dev/null && echo sys-writable; echo ok > /dev/null && echo null-ok",
    )
    out = proc.stdout.decode()
    assert "sys-writable" not in out
    assert "null-ok" in out
    proc_line = next(line for line in out.splitlines() if " /proc " in line)
    assert "nosuid" in proc_line and "nodev" in proc_line and "noexec" in proc_line
    sys_line = next(line for line in out.splitlines() if " /sys " in line)
    assert " ro," in sys_line
    devs = set(out.split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd"} <= devs
    assert "sda" not in devs and "vda" not in devs and "kmsg" not in devs


def test_exit_status_is_passed_through(rootfs: Path) -> None:
    assert sh(rootfs, "exit 0").returncode == 0
    assert sh(rootfs, "exit 3").returncode == 3
    assert sh(rootfs, "exit 200").returncode == 200


def test_killed_by_signal_gives_128_plus_n(rootfs: Path) -> None:
    # PID 1 of a PID namespace only receives signals it installed a handler for,
    # except SIGKILL/SIGSTOP from an ancestor namespace: so SIGKILL from the host.
    proc = subprocess.Popen(
        [*VORTEX, "run", str(rootfs), "/bin/sh", "-c", "echo ready; exec sleep 999"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    _wait_for_line(proc, b"ready")
    sleeper = _find_process(b"sleep\x00999")
    assert sleeper is not None
    os.kill(sleeper, signal.SIGKILL)
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGKILL
    assert b"OOM" not in err


def test_env_workdir_user(rootfs: Path) -> None:
    proc = sh(
        rootfs,
        "id -u; id -g; pwd; env | sort",
        "-e",
        "FOO=bar baz",
        "-w",
        "/tmp",
        "-u",
        "1000:2000",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[:3] == ["1000", "2000", "/tmp"]
    env = dict(line.split("=", 1) for line in lines[3:])
    assert env["FOO"] == "bar baz"
    # The host's environment does not leak in.
    assert "HOME" not in env or env["HOME"] != os.environ.get("HOME")
    assert not {"USER", "SSH_AUTH_SOCK", "PYTHONPATH", "VIRTUAL_ENV"} & set(env)


def test_stdin_pipes_through(rootfs: Path) -> None:
    proc = run_vortex("run", str(rootfs), "/bin/cat", input=b"hi\nthere\n")
    assert proc.returncode == 0
    assert proc.stdout == b"hi\nthere\n"
    big = os.urandom(1 << 20)
    proc = run_vortex("run", str(rootfs), "/bin/cat", input=big)
    assert proc.stdout == big


def test_stdout_and_stderr_are_separate(rootfs: Path) -> None:
    proc = sh(rootfs, "echo out; echo err >&2")
    assert proc.stdout == b"out\n"
    assert proc.stderr == b"err\n"


def test_memory_limit_oom_kill_is_reported(rootfs: Path) -> None:
    # 200 MB into a shell variable, under a 32 MB limit.
    proc = sh(
        rootfs, "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived", "--memory", "32M"
    )
    assert proc.returncode == 137
    assert b"survived" not in proc.stdout
    assert b"OOM-killed" in proc.stderr


def test_memory_limit_default_is_100m(rootfs: Path) -> None:
    proc = sh(rootfs, "x=$(head -c 150000000 /dev/zero | tr '\\0' a); echo survived")
    assert proc.returncode == 137 and b"OOM-killed" in proc.stderr
    proc = sh(
        rootfs, "x=$(head -c 150000000 /dev/zero | tr '\\0' a); echo survived", "--memory", "none"
    )
    assert proc.returncode == 0 and proc.stdout == b"survived\n"


def test_pids_limit_contains_a_fork_bomb(rootfs: Path) -> None:
    # The forking happens in a child shell (ash gives up at the first failed fork);
    # counting uses only builtins, since no fork is possible once the limit is hit.
    script = (
        "sh -c 'i=0; while [ $i -lt 50 ]; do sleep 10 & i=$((i+1)); done' 2>/dev/null; "
        "set -- /proc/[0-9]*; echo $#"
    )
    proc = sh(rootfs, script, "--pids", "10")
    assert proc.returncode == 0, proc.stderr
    assert 2 <= int(proc.stdout) <= 10
    unlimited = sh(rootfs, script)
    assert int(unlimited.stdout) == 51  # the outer shell and 50 sleeps


def test_cpu_limit_is_written(rootfs: Path) -> None:
    # The quota is checked at the cgroup level in tests/test_cgroups_*; here: accepted and runs.
    proc = sh(rootfs, "cat /proc/self/cgroup | grep cpu", "--cpus", "0.5")
    assert proc.returncode == 0, proc.stderr


def test_cgroup_namespace_hides_the_host_hierarchy(rootfs: Path) -> None:
    # The container's cgroup is the root of its cgroup namespace: '/' everywhere,
    # where the host would show /vortex/<id> (see test_runtime for the host side).
    proc = sh(rootfs, "cat /proc/1/cgroup")
    assert proc.returncode == 0
    for line in proc.stdout.decode().splitlines():
        assert line.endswith(":/"), line


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["/nonexistent-rootfs", "/bin/true"], 125, b"does not exist"),
        (["--memory", "12x", "{rootfs}", "/bin/true"], 125, b"--memory '12x' is not a size"),
        (["--memory=-5M", "{rootfs}", "/bin/true"], 125, b"--memory '-5M' is not a size"),
        (["--cpus", "fast", "{rootfs}", "/bin/true"], 125, b"--cpus 'fast' is not a number"),
        (["--cpus=-1", "{rootfs}", "/bin/true"], 125, b"--cpus '-1' must be a positive number"),
        (["--pids", "0", "{rootfs}", "/bin/true"], 125, b"--pids '0' must be at least 1"),
        (["--pids", "lots", "{rootfs}", "/bin/true"], 125, b"--pids 'lots' is not a whole number"),
        (["--user", "bob", "{rootfs}", "/bin/true"], 125, b"--user 'bob' must be numeric"),
        (["--env", "NOEQUALS", "{rootfs}", "/bin/true"], 125, b"has no '='"),
        (["--workdir", "relative", "{rootfs}", "/bin/true"], 125, b"must be an absolute path"),
        (["--hostname", "bad_host!", "{rootfs}", "/bin/true"], 125, b"--hostname"),
        (["--no-plugin", "nosuch", "{rootfs}", "/bin/true"], 125, b"unknown plugin 'nosuch'"),
        (["{rootfs}"], 125, b"no command given"),
        (["{rootfs}", "/bin/nope"], 127, b"exec /bin/nope: no such file or directory"),
        (["{rootfs}", "nope"], 127, b"exec nope: no such file or directory"),
        (["{rootfs}", "/etc/passwd"], 126, b"exec /etc/passwd: permission denied"),
        (["--workdir", "/nonexistent", "{rootfs}", "/bin/true"], 125, b"workdir /nonexistent"),
    ],
)
def test_bad_input_one_line_error_distinct_status_nothing_left(
    rootfs: Path, args: list[str], status: int, message: bytes
) -> None:
    before = container_cgroups()  # through a daemon (tests/test_daemon.py): not its spare's
    proc = run_vortex("run", *[a.format(rootfs=rootfs) for a in args])
    assert proc.returncode == status, proc.stderr
    assert message in proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vortex: "), lines
    assert container_cgroups() == before


def test_rootfs_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    proc = run_vortex("run", str(file), "/bin/true")
    assert proc.returncode == 125
    assert b"is not a directory" in proc.stderr


# A non-root caller is no longer refused: it runs rootless (tests/test_rootless.py).


def _wait_for_line(proc: subprocess.Popen[bytes], expected: bytes, timeout: float = 10) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if expected in line:
            return
    raise AssertionError(f"never saw {expected!r}, last line {line!r}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_to_vortex_are_forwarded(rootfs: Path, sig: int) -> None:
    name = signal.Signals(sig).name[3:]
    script = f"trap 'echo got; exit 42' {name}; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(
        [*VORTEX, "run", str(rootfs), "/bin/sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_for_line(proc, b"ready")
        proc.send_signal(sig)
        out, _err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert b"got" in out
    assert proc.returncode == 42


def test_containers_die_with_a_sigkilled_runtime(rootfs: Path) -> None:
    # Orphans (the helper, the container init) are re-parented to the nearest
    # subreaper: make that us, so that we can reap them (this machine's PID 1 does not).
    _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
    try:
        _sigkill_runtime_and_check(rootfs)
    finally:
        _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 0)


def _sigkill_runtime_and_check(rootfs: Path) -> None:
    proc = subprocess.Popen(
        [*VORTEX, "run", str(rootfs), "/bin/sh", "-c", "echo ready; exec sleep 1000"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_for_line(proc, b"ready")
        sleeper = _find_process(b"sleep\x001000")
        assert sleeper is not None
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(sleeper):
        time.sleep(0.05)
    assert not _alive(sleeper), "the container outlived its runtime"
    _reap_orphans()
    # The stale cgroup is removed by the next runtime that starts.
    assert sh(rootfs, "true").returncode == 0


def _find_process(cmdline: bytes, timeout: float = 5) -> int | None:
    """The PID of the process with this command line (polled: it may still be exec'ing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if f.read().rstrip(b"\0") == cmdline:
                            return int(entry)
                except OSError:
                    pass
        time.sleep(0.02)
    return None


def _reap_orphans() -> None:
    deadline = time.monotonic() + 5
    while zombie_children() and time.monotonic() < deadline:
        for pid in zombie_children():
            os.waitpid(pid, 0)
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_lifecycle_events_as_json_lines(rootfs: Path) -> None:
    import json

    proc = run_vortex(
        "--log-level",
        "info",
        "--log-format",
        "json",
        "run",
        "--name",
        "ev",
        str(rootfs),
        "/bin/sh",
        "-c",
        "exit 4",
    )
    assert proc.returncode == 4
    events = [json.loads(line) for line in proc.stderr.decode().splitlines()]
    assert [e["event"] for e in events] == [
        "container.created",
        "container.started",
        "container.exited",
    ]
    assert all(e["name"] == "ev" and e["level"] == "info" and "timestamp" in e for e in events)
    exited = events[-1]
    assert exited["exit_code"] == 4 and exited["oom_killed"] is False
    assert exited["wall_time"] > 0 and exited["memory_peak"] > 0


def test_default_log_level_is_quiet(rootfs: Path) -> None:
    proc = sh(rootfs, "true")
    assert proc.returncode == 0 and proc.stderr == b""


def test_bad_log_level(rootfs: Path) -> None:
    proc = run_vortex("--log-level", "loud", "run", str(rootfs), "/bin/true")
    assert proc.returncode == 125
    assert proc.stderr.decode().strip() == (
        "vortex: log level 'loud' is unknown: use one of debug, info, warning, error, critical"
    )


def test_closed_standard_fds_become_dev_null(rootfs: Path) -> None:
    # Run by something that closed stdin and stdout: the container gets /dev/null
    # there (not whatever vortex opened next), and its stderr still works.
    # ($(...): busybox runs readlink inside the shell, whose fd 1 ">&2" would move.)
    script = 'echo "$(readlink /proc/1/fd/0) $(readlink /proc/1/fd/1)" >&2; cat; echo done >&2'
    command = " ".join([*VORTEX, "run", str(rootfs), "/bin/sh", "-c", repr(script)])
    proc = subprocess.run(
        ["/bin/sh", "-c", f"exec <&- >&-; exec {command}"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"/dev/null /dev/null\ndone\n"


def test_the_process_ends_with_the_collector_frozen_and_atexit_handlers_run(
    rootfs: Path,
) -> None:
    # main() freezes the garbage collector's objects before the interpreter's
    # finalization (docs/performance.md, twelfth session); what finalization
    # promises still happens: a handler registered with atexit (as a plugin or
    # an embedding program may) runs, and sees the frozen objects.
    program = (
        "import atexit, gc, sys\n"
        "from vortex.cli import main\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 1000, flush=True))\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program, "run", str(rootfs), "/bin/sh", "-c", "echo out; exit 3"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == b"out\nfrozen True\n"
