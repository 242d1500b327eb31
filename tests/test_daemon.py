"""``vortex daemon``: ``vortex run`` served by a warm Runtime, and what falls back.

A daemon is started for this module and every ``vortex run`` of its tests is
pointed at it.  Besides its own tests, the module re-runs a set of
tests/test_cli_run.py's tests unchanged against the daemon (imported below):
a run served by the daemon must be indistinguishable from an in-process one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    VORTEX,
    children_of,
    container_cgroups,
    fork_helper_of,
    imported_modules,
    is_fresh_helper,
    leak_check,
    run_vortex,
    spare_cgroups,
    vortex_cgroups,
)
from tests.test_cli_run import (  # noqa: F401  (collected again, now through the daemon)
    test_bad_input_one_line_error_distinct_status_nothing_left,
    test_containers_die_with_a_sigkilled_runtime,
    test_env_workdir_user,
    test_exit_status_is_passed_through,
    test_hostname_default_is_short_id_and_option_sets_it,
    test_killed_by_signal_gives_128_plus_n,
    test_memory_limit_oom_kill_is_reported,
    test_rootfs_that_is_a_file,
    test_signals_to_vortex_are_forwarded,
    test_stdin_pipes_through,
    test_stdout_and_stderr_are_separate,
)


class Daemon:
    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*VORTEX, "--log-level", "info", "daemon", "--socket", str(self.socket_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while not self.events("daemon.listening"):
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "the daemon never listened"
            time.sleep(0.05)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            with_event = json.loads(line) if line.startswith("{") else {}
            if with_event.get("event") == name:
                found.append(with_event)
        return found


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    where = tmp_path_factory.mktemp("daemon")
    started = Daemon(where / "daemon.sock", where / "daemon.log")
    cgroups_before = vortex_cgroups()
    started.start()
    saved = os.environ["VORTEX_DAEMON_SOCKET"]
    os.environ["VORTEX_DAEMON_SOCKET"] = str(started.socket_path)
    try:
        yield started
    finally:
        os.environ["VORTEX_DAEMON_SOCKET"] = saved
        assert started.stop() == 0, started.log_path.read_text()
        assert not started.socket_path.exists(), "the daemon left its socket behind"
        # Its last spare's cgroup too is gone with it.
        assert vortex_cgroups() == cgroups_before


@pytest.fixture(autouse=True)
def no_leaks(daemon: Daemon) -> Iterator[None]:
    """conftest's check, but for the cgroup of the daemon's waiting spare: a new one
    after every run, cloned once that run's container exited (vortex/spare.py)."""
    assert daemon.proc is not None
    with leak_check(lambda: spare_cgroups(daemon.proc.pid), settle=5.0):  # type: ignore[union-attr]
        yield


@pytest.fixture(autouse=True)
def _through_daemon(daemon: Daemon) -> None:
    """Every test of this module (the imported ones too) runs with the daemon up."""


def test_runs_are_served_by_the_daemon(daemon: Daemon, rootfs: Path) -> None:
    served = len(daemon.events("daemon.served"))
    proc = run_vortex("run", str(rootfs), "/bin/sh", "-c", "echo out; echo err >&2; exit 7")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, b"out\n", b"err\n")
    assert len(daemon.events("daemon.served")) == served + 1


def test_the_installed_command_reaches_the_daemon_on_the_interpreter_alone(
    daemon: Daemon, rootfs: Path
) -> None:
    """The ``vortex`` that pip installed is contrib/bin/vortex, not the launcher pip
    writes for an entry point (which imports ``re``, ~6 ms of a ~20 ms served run):
    between the interpreter's own start and the daemon's answer, no ``re``, no
    ``argparse``, no ``enum``."""
    script = Path(sysconfig.get_paths()["scripts"]) / "vortex"
    assert "import re" not in script.read_text(), f"{script} is not contrib/bin/vortex"
    served = len(daemon.events("daemon.served"))
    added = imported_modules(str(script), "run", str(rootfs), "/bin/true") - imported_modules(
        "-c", "pass"
    )
    assert len(daemon.events("daemon.served")) == served + 1
    assert "vortex.daemon.client" in added
    assert not {"re", "argparse", "enum"} & added, sorted(added)


def test_the_daemons_helper_is_fresh_and_a_spare_waits_between_clients(
    daemon: Daemon, rootfs: Path
) -> None:
    """The daemon's Runtime has fresh_helper on; after a client's run the next spare
    waits for the next client (and, idle, takes its init's copy-on-write faults
    ahead, as every Runtime's: tests/test_spare.py)."""
    for _ in range(2):
        time.sleep(0.3)  # a client after a pause: the next spare is cloned at the exit
        assert run_vortex("run", str(rootfs), "/bin/true").returncode == 0
    assert daemon.proc is not None
    deadline = time.monotonic() + 20
    while not (spares := children_of(daemon.proc.pid, "vortex-spare")):
        assert time.monotonic() < deadline, "the daemon cloned no spare"
        time.sleep(0.02)
    assert len(spares) == 1, spares
    # Its fork helper is a fresh interpreter (Runtime(fresh_helper=True)).
    assert is_fresh_helper(fork_helper_of(daemon.proc.pid))


def test_relative_rootfs_is_the_clients(daemon: Daemon, rootfs: Path) -> None:
    served = len(daemon.events("daemon.served"))
    proc = run_vortex("run", rootfs.name, "/bin/echo", "relative", cwd=rootfs.parent)
    assert (proc.returncode, proc.stdout) == (0, b"relative\n"), proc.stderr
    assert len(daemon.events("daemon.served")) == served + 1


def test_exec_failure_comes_back_as_one_line(daemon: Daemon, rootfs: Path) -> None:
    served = len(daemon.events("daemon.served"))
    proc = run_vortex("run", str(rootfs), "/bin/nope")
    assert proc.returncode == 127
    assert proc.stderr == b"vortex: exec /bin/nope: no such file or directory\n"
    # The start failed inside the daemon: not a fallback, not "served" either.
    assert len(daemon.events("daemon.served")) == served


def test_a_request_sent_after_a_pause_is_waited_for(daemon: Daemon, rootfs: Path) -> None:
    """The daemon reads a request at once when it is there (vortex run sends it
    right after connecting) and waits for it otherwise."""
    from vortex.daemon.protocol import EXIT, RUN, decode, encode

    served = len(daemon.events("daemon.served"))
    read, write = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
        client.connect(str(daemon.socket_path))
        time.sleep(0.3)  # the daemon has accepted and found nothing to read yet
        request = encode(RUN, "/", "run", str(rootfs), "/bin/sh", "-c", "echo late; exit 3")
        with open(os.devnull, "rb") as stdin:
            socket.send_fds(client, [request], [stdin.fileno(), write, 2])
        os.close(write)
        client.settimeout(30)
        kind, fields = decode(client.recv(4096))
    with os.fdopen(read, "rb") as output:
        assert output.read() == b"late\n"
    assert (kind, fields[0]) == (EXIT, "3")
    assert len(daemon.events("daemon.served")) == served + 1


@pytest.mark.parametrize(
    "options",
    [["--no-plugin", "net"], ["--cgroup-parent", "vortex-daemon-test"], ["--tty"]],
    ids=["no-plugin", "cgroup-parent", "tty"],
)
def test_what_needs_its_own_runtime_falls_back(
    daemon: Daemon, rootfs: Path, options: list[str]
) -> None:
    fallbacks = len(daemon.events("daemon.fallback"))
    proc = run_vortex("run", *options, str(rootfs), "/bin/sh", "-c", "exit 5")
    assert proc.returncode == 5, proc.stderr
    assert len(daemon.events("daemon.fallback")) == fallbacks + 1


def test_a_bad_spec_falls_back_for_the_in_process_message(daemon: Daemon, rootfs: Path) -> None:
    fallbacks = len(daemon.events("daemon.fallback"))
    proc = run_vortex("run", "no-such-rootfs", "/bin/true", cwd=rootfs.parent)
    assert proc.returncode == 125
    assert b"rootfs 'no-such-rootfs' does not exist" in proc.stderr  # the client's own path
    assert len(daemon.events("daemon.fallback")) == fallbacks + 1


def test_client_killed_takes_its_container_along(daemon: Daemon, rootfs: Path) -> None:
    before = container_cgroups()
    proc = subprocess.Popen(
        [*VORTEX, "run", str(rootfs), "/bin/sh", "-c", "echo ready; exec sleep 1000"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.kill()
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while container_cgroups() != before:
        assert time.monotonic() < deadline, "the container outlived its killed client"
        time.sleep(0.05)


def test_daemon_stopping_ends_its_clients_runs(
    rootfs: Path, tmp_path: Path, daemon: Daemon
) -> None:
    # A second daemon of our own, stopped under a running client.
    own = Daemon(tmp_path / "own.sock", tmp_path / "own.log")
    own.start()
    env = dict(os.environ, VORTEX_DAEMON_SOCKET=str(own.socket_path))
    before = container_cgroups()
    proc = subprocess.Popen(
        [*VORTEX, "run", str(rootfs), "/bin/sh", "-c", "echo ready; exec sleep 1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert own.stop() == 0
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 125
    assert b"closed the connection before the container exited" in err
    assert container_cgroups() == before
    assert not own.socket_path.exists()


def test_no_daemon_listening_runs_in_process(rootfs: Path, tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    for path, env_value in ((tmp_path / "absent.sock", None), (stale, None), (None, "off")):
        if path == stale:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.bind(str(stale))  # a socket file nobody listens on: a killed daemon's
        value = env_value if env_value is not None else str(path)
        proc = run_vortex(
            "run", str(rootfs), "/bin/sh", "-c", "exit 4",
            env=dict(os.environ, VORTEX_DAEMON_SOCKET=value),
        )  # fmt: skip
        assert proc.returncode == 4, proc.stderr


def test_second_daemon_on_the_same_socket_is_refused(daemon: Daemon) -> None:
    proc = run_vortex("daemon", "--socket", str(daemon.socket_path), timeout=30)
    assert proc.returncode == 125
    assert proc.stderr.decode().splitlines() == [
        f"vortex: another vortex daemon is listening on {daemon.socket_path}: stop it first"
    ]
    assert daemon.socket_path.exists()  # the running daemon's socket is untouched


def test_socket_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    proc = run_vortex("daemon", "--socket", str(path), timeout=30)
    assert proc.returncode == 125
    assert proc.stderr.decode().splitlines() == [
        f"vortex: --socket {str(path)!r} exists and is not a socket: remove it or pick another path"
    ]
    assert path.read_text() == "x"


def test_socket_is_for_root_only(daemon: Daemon) -> None:
    assert daemon.socket_path.stat().st_mode & 0o777 == 0o600


def test_a_command_line_too_long_for_one_packet_runs_in_process(
    daemon: Daemon, rootfs: Path
) -> None:
    served = len(daemon.events("daemon.served"))
    # 300 KB: more than one SOCK_SEQPACKET message may carry (one argument may not
    # exceed 128 KiB, so three).
    long_arguments = ["x" * 100_000] * 3
    proc = run_vortex("run", str(rootfs), "/bin/sh", "-c", "exit 6", "sh", *long_arguments)
    assert proc.returncode == 6, proc.stderr
    assert len(daemon.events("daemon.served")) == served


def _activated_daemon(listener: socket.socket, log_path: Path) -> subprocess.Popen[bytes]:
    """``vortex daemon`` started the way systemd starts a socket-activated service:
    the listening socket as fd 3, LISTEN_FDS=1 and LISTEN_PID = its own pid (a
    small Python shim sets them up, then execs the daemon in the same process)."""
    daemon = [*VORTEX, "--log-level", "info", "daemon", "--socket", "/nonexistent/unused.sock"]
    shim = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.argv[2], sys.argv[2:])\n"
    )
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", shim, str(listener.fileno()), *daemon],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=[listener.fileno()],
        )


def test_socket_activation_serves_and_leaves_the_socket_to_systemd(
    rootfs: Path, tmp_path: Path, daemon: Daemon
) -> None:
    path = tmp_path / "activated.sock"
    log_path = tmp_path / "activated.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        listener.bind(str(path))
        listener.listen(8)
        proc = _activated_daemon(listener, log_path)
        try:
            # The socket listens before the daemon is up, as with systemd: the
            # client's connection waits in the backlog until the daemon accepts it.
            result = run_vortex(
                "run", str(rootfs), "/bin/sh", "-c", "exit 9",
                env=dict(os.environ, VORTEX_DAEMON_SOCKET=str(path)),
            )  # fmt: skip
            assert result.returncode == 9, result.stderr
            assert '"daemon.served"' in log_path.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log_path.read_text()
        assert path.exists(), "the daemon removed a socket that systemd owns"


def test_socket_activation_with_the_wrong_socket_is_one_line(tmp_path: Path) -> None:
    log_path = tmp_path / "activated.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(tmp_path / "stream.sock"))
        listener.listen(8)
        proc = _activated_daemon(listener, log_path)
        assert proc.wait(timeout=30) == 125
    lines = log_path.read_text().splitlines()
    assert lines == [
        "vortex: socket activation passed a socket that is not a unix SOCK_SEQPACKET one: "
        "use ListenSequentialPacket= in the socket unit"
    ]


def test_relative_seccomp_profile_is_the_clients(
    daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    (tmp_path / "allow.json").write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    served = len(daemon.events("daemon.served"))
    proc = run_vortex(
        "run", "--seccomp", "allow.json", str(rootfs), "/bin/sh", "-c", "exit 3", cwd=tmp_path
    )
    assert proc.returncode == 3, proc.stderr
    assert len(daemon.events("daemon.served")) == served + 1
