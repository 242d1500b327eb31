"""``vortex supervise`` end to end: real containers under a real supervisor process,
driven only through its control socket, the client CLI and signals."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import VORTEX
from supervise_harness import TRAPPING, Events, busybox_config, supervise

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) [PF] .*$")


def test_ps_logs_events_status_and_graceful_stop(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        f"""
[container.web]
command = {TRAPPING}
memory = "64M"

[container.job]
command = ["/bin/sh", "-c", "echo out-line; echo err-line >&2; exit 4"]
restart = "no"
""",
    )
    with supervise(config) as sup:
        containers = sup.wait_until(
            lambda c: c["web"]["state"] == "running" and c["job"]["state"] == "failed"
        )
        assert containers["job"]["last_exit"]["status"] == 4
        table = sup.cli("ps")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.decode().splitlines()
        assert lines[0].split() == [
            "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "EXIT", "MEMORY", "HEALTH"
        ]  # fmt: skip
        web_row = next(line.split() for line in lines if line.startswith("web"))
        assert web_row[1] == "running" and int(web_row[2]) == containers["web"]["pid"]
        job_row = next(line.split() for line in lines if line.startswith("job"))
        assert job_row[1] == "failed" and job_row[5] == "4"
        as_json = json.loads(sup.cli("ps", "--format", "json").stdout)
        assert {c["name"] for c in as_json} == {"web", "job"}
        assert as_json[0]["memory"] is None or as_json[0]["memory"] > 0
        logs = sup.cli("logs", "job")
        assert logs.stdout == b"out-line\n" and logs.stderr == b"err-line\n"
        raw = sup.cli("logs", "--raw", "job").stdout.decode().splitlines()
        assert len(raw) == 2 and all(CRI_LINE.match(line) for line in raw), raw
        assert sup.cli("logs", "-n", "1", "job").stdout == b""  # the last line went to stderr
        status = json.loads(sup.cli("status", "--format", "json", "--metrics").stdout)
        assert status["containers"] == 2 and status["states"] == {"running": 1, "failed": 1}
        assert status["metrics"]["web"]["running"] == 1
        with Events(sup.socket) as events:
            started = time.monotonic()
            sup.signal(signal.SIGTERM)
            seen = events.until(lambda e: e["event"] == "supervisor_stopped")
        assert sup.wait() == 0
        assert time.monotonic() - started < 5  # the trap made it quick: no SIGKILL timeout
        kinds = [(e["event"], e["name"]) for e in seen]
        assert kinds.index(("stopping", "web")) < kinds.index(("exited", "web"))
        assert not Path(sup.socket).exists()


def test_restart_on_failure_with_exponential_backoff(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        """
[container.flaky]
# Each run lasts 0.8 s: our event subscription (made after the supervisor is up)
# sees the first exit.  reset_after is the default 10 s, so the delay still grows.
command = ["/bin/sh", "-c", "sleep 0.8; exit 3"]
restart = "on-failure"
max_restarts = 3
backoff = { initial = 0.2, multiplier = 2, max = 0.5 }
""",
    )
    with supervise(config) as sup, Events(sup.socket) as events:
        seen = events.until(lambda e: e["event"] == "gave_up", timeout=9)
        containers = sup.wait_until(lambda c: c["flaky"]["state"] == "failed")
    assert containers["flaky"]["restarts"] == 3
    assert containers["flaky"]["last_exit"]["status"] == 3
    delays = [e["delay"] for e in seen if e["event"] == "backoff"]
    assert delays == [0.2, 0.4, 0.5]  # doubled, then capped
    starts = [e["time"] for e in seen if e["event"] == "started"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    for gap, delay in zip(gaps[-2:], delays[-2:], strict=True):
        assert gap >= delay
    # Causal order for every run: started, exited, (backoff, restarting).
    per_run = [e["event"] for e in seen if e["name"] == "flaky"]
    for i, kind in enumerate(per_run):
        if kind == "exited" and i > 0:
            assert per_run[i - 1] == "started"


def test_backoff_resets_after_a_healthy_run_and_policies(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        """
[container.steady]
command = ["/bin/sh", "-c", "sleep 0.6; exit 0"]
restart = "always"
backoff = { initial = 0.1, multiplier = 10, max = 5, reset_after = 0.5 }

[container.quick]
command = ["/bin/sh", "-c", "exit 0"]
restart = "always"
backoff = { initial = 0.1, multiplier = 3, max = 5, reset_after = 30 }

[container.once]
command = ["/bin/true"]
restart = "on-failure"
""",
    )
    with supervise(config) as sup, Events(sup.socket) as events:
        seen = events.until(
            lambda e: (
                e["event"] == "backoff"
                and e["name"] == "steady"
                and sum(x["event"] == "backoff" and x["name"] == "steady" for x in events.seen) >= 3
            )
        )
        containers = sup.ps()
    steady = [e["delay"] for e in seen if e["event"] == "backoff" and e["name"] == "steady"]
    assert steady == [0.1] * len(steady)  # every run lasted longer than reset_after
    quick = [e["delay"] for e in seen if e["event"] == "backoff" and e["name"] == "quick"]
    # exit 0 restarts too with 'always', and the delay grows x3 up to the cap (the
    # first backoffs may predate our subscription: compare from where we joined).
    expected = [0.1, 0.3, 0.9, 2.7, 5.0]
    assert len(quick) >= 2
    start = expected.index(quick[0])
    assert quick == expected[start : start + len(quick)]
    assert containers["once"]["state"] == "exited" and containers["once"]["restarts"] == 0


def test_dependency_order_start_and_reverse_stop(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        f"""
[container.front]
command = {TRAPPING}
depends_on = ["api"]

[container.api]
command = {TRAPPING}
depends_on = ["db"]

[container.db]
command = {TRAPPING}
""",
    )
    with supervise(config) as sup, Events(sup.socket) as events:
        sup.wait_until(lambda c: all(x["state"] == "running" for x in c.values()))
        sup.signal(signal.SIGTERM)
        seen = events.until(lambda e: e["event"] == "supervisor_stopped")
        assert sup.wait() == 0
    kinds = [(e["event"], e["name"]) for e in seen]
    exits = [name for kind, name in kinds if kind == "exited"]
    assert exits == ["front", "api", "db"]  # dependents first
    # each one is asked to stop only once the ones depending on it have exited
    assert kinds.index(("exited", "front")) < kinds.index(("stopping", "api"))
    assert kinds.index(("exited", "api")) < kinds.index(("stopping", "db"))


def test_start_order_follows_dependencies(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        f"""
[container.front]
command = {TRAPPING}
depends_on = ["api"]

[container.api]
command = {TRAPPING}
depends_on = ["db"]

[container.db]
command = ["/bin/sh", "-c", "sleep 0.5; trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
stop_timeout = 1  # a SIGTERM during the first sleep is ignored (PID 1 without a trap yet)
""",
    )
    with supervise(config) as sup:
        containers = sup.wait_until(lambda c: all(x["state"] == "running" for x in c.values()))
        order = sorted(containers, key=lambda n: containers[n]["started_at"])
        assert order == ["db", "api", "front"]


def test_stop_timeout_escalates_to_sigkill_and_stop_start_restart(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        """
[container.stubborn]
command = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
stop_timeout = 1
restart = "always"
""",
    )
    with supervise(config) as sup:
        first = sup.wait_until(lambda c: c["stubborn"]["state"] == "running")["stubborn"]
        started = time.monotonic()
        stopped = sup.cli("stop", "stubborn")
        took = time.monotonic() - started
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout == b"stubborn: stopped\n"
        assert 1 <= took < 5
        after = sup.ps()["stubborn"]
        assert after["state"] == "stopped" and after["last_exit"]["signal"] == "SIGKILL"
        time.sleep(0.3)
        assert sup.ps()["stubborn"]["state"] == "stopped"  # 'always' does not override a stop
        assert sup.cli("start", "stubborn").stdout == b"stubborn: running\n"
        second = sup.ps()["stubborn"]
        assert second["pid"] != first["pid"]
        restarted = sup.cli("restart", "stubborn")
        assert restarted.returncode == 0 and sup.ps()["stubborn"]["pid"] != second["pid"]
        missing = sup.cli("stop", "nope")
        assert missing.returncode == 125
        assert missing.stderr.decode().strip() == "vortex: no container named 'nope'"


def test_sighup_applies_only_the_difference(rootfs: Path) -> None:
    body = f"""
[container.same]
command = {TRAPPING}

[container.changed]
command = {TRAPPING}

[container.removed]
command = {TRAPPING}
"""
    with supervise(busybox_config(rootfs, body)) as sup:
        before = sup.wait_until(lambda c: all(x["state"] == "running" for x in c.values()))
        sup.config.write_text(
            busybox_config(
                rootfs,
                f"""
[container.same]
command = {TRAPPING}

[container.changed]
command = {TRAPPING}
env = {{ VERSION = "2" }}

[container.added]
command = {TRAPPING}
""",
            )
        )
        with Events(sup.socket) as events:
            sup.signal(signal.SIGHUP)
            seen = events.until(lambda e: e["event"] == "reloaded")
        reloading = next(e for e in seen if e["event"] == "reloading")
        assert (reloading["added"], reloading["removed"], reloading["changed"]) == (
            ["added"],
            ["removed"],
            ["changed"],
        )
        after = sup.wait_until(
            lambda c: (
                set(c) == {"same", "changed", "added"}
                and all(x["state"] == "running" for x in c.values())
            )
        )
        assert after["same"]["pid"] == before["same"]["pid"]
        assert after["same"]["started_at"] == before["same"]["started_at"]
        assert after["changed"]["pid"] != before["changed"]["pid"]
        # A broken file on SIGHUP changes nothing.
        sup.config.write_text("[container.x\n")
        with Events(sup.socket) as events:
            sup.signal(signal.SIGHUP)
            failed = events.until(lambda e: e["event"] == "reload_failed")[-1]
        assert "TOML syntax error" in failed["problems"][0]
        assert sup.ps()["same"]["pid"] == before["same"]["pid"]


def test_log_rotation_and_logs_follow(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        """
[container.chatty]
command = ["/bin/sh", "-c", "for i in $(seq 0 199); do echo line-$i; done; sleep 100"]
logs = { max_size = 2048, max_files = 3 }
stop_timeout = 0.5

[container.ticker]
command = ["/bin/sh", "-c", "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.1; done"]
logs = { echo = true }
stop_timeout = 0.5
""",
    )
    with supervise(config) as sup:
        logs = sup.dir / "state" / "logs"
        deadline = time.monotonic() + 8
        chatty = logs / "chatty.log"
        while not chatty.exists() or b"line-199" not in chatty.read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        files = sorted(p.name for p in logs.iterdir() if p.name.startswith("chatty"))
        assert files == ["chatty.log", "chatty.log.1", "chatty.log.2"]
        for name in files:
            data = (logs / name).read_text()
            assert len(data) <= 2048
            assert all(CRI_LINE.match(line) for line in data.splitlines())
        tail = sup.cli("logs", "-n", "3", "chatty").stdout
        assert tail == b"line-197\nline-198\nline-199\n"
        # Everything kept is contiguous and ends with the newest line.
        kept = [int(x.split("-")[1]) for x in sup.cli("logs", "chatty").stdout.decode().split()]
        assert kept == list(range(kept[0], 200)) and kept[0] > 0
        follow = subprocess.Popen(
            [*VORTEX, "logs", "--socket", sup.socket, "-f", "-n", "0", "ticker"],
            stdout=subprocess.PIPE,
        )
        try:
            assert follow.stdout is not None
            first = follow.stdout.readline()
            second = follow.stdout.readline()
        finally:
            follow.terminate()
            follow.wait(5)
            assert follow.stdout is not None
            follow.stdout.close()
        a, b = int(first.split(b"-")[1]), int(second.split(b"-")[1])
        assert b == a + 1  # live, in order, no gap
        assert "ticker | tick-0" in sup.stdout()  # echo with a name prefix


def test_kill_9_supervisor_takes_its_containers_and_restarts_cleanly(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        f"""
[container.one]
command = {TRAPPING}

[container.two]
command = {TRAPPING}
""",
    )
    with supervise(config) as sup:
        running = sup.wait_until(lambda c: all(x["state"] == "running" for x in c.values()))
        pids = [c["pid"] for c in running.values()]
        sup.signal(signal.SIGKILL)
        assert sup.wait() == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "containers outlived their supervisor"
            time.sleep(0.05)
        assert Path(sup.socket).exists()  # stale, left by the dead supervisor
        assert sup.cgroups()  # and the (empty) cgroups of its containers
        # The next supervisor on the same state directory starts cleanly.
        sup.start()
        again = sup.wait_until(lambda c: all(x["state"] == "running" for x in c.values()))
        assert all(c["restarts"] == 0 for c in again.values())
        sup.signal(signal.SIGTERM)
        assert sup.wait() == 0
        assert sup.cgroups() == []  # the stale ones were swept by the second supervisor


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_systemd_notify_ready(rootfs: Path, tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(10)
        config = busybox_config(rootfs, f"[container.a]\ncommand = {TRAPPING}\n")
        with supervise(config, env={"NOTIFY_SOCKET": path}) as sup:
            assert notify.recv(100) == b"READY=1"
            assert sup.ps()["a"]["state"] == "running"  # ready means started
            sup.signal(signal.SIGTERM)
            assert sup.wait() == 0
            assert notify.recv(100) == b"STOPPING=1"


def test_prometheus_metrics_on_loopback(rootfs: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = f'[supervisor]\nmetrics_address = "127.0.0.1:{port}"\n\n' + busybox_config(
        rootfs, f"[container.a]\ncommand = {TRAPPING}\n"
    )
    with supervise(config) as sup:
        sup.wait_until(lambda c: c["a"]["state"] == "running")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'vortex_container_running{name="a"} 1' in text
        assert 'vortex_container_restarts_total{name="a"} 0' in text
        memory = re.search(r'vortex_container_memory_bytes\{name="a"\} (\d+)', text)
        assert memory and int(memory.group(1)) > 0
        metrics = sup.ctl({"cmd": "metrics"})["containers"]["a"]
        assert metrics["cpu_seconds"] is not None and metrics["memory_current"] > 0


def test_unless_stopped_stays_stopped_across_supervisor_restarts(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        f"""
[container.kept]
command = {TRAPPING}
restart = "unless-stopped"

[container.always]
command = {TRAPPING}
restart = "always"
""",
    )
    with supervise(config) as sup:
        sup.wait_until(lambda c: all(x["state"] == "running" for x in c.values()))
        assert sup.cli("stop", "kept").returncode == 0
        assert sup.cli("stop", "always").returncode == 0
        sup.signal(signal.SIGTERM)
        assert sup.wait() == 0
        sup.start()
        after = sup.wait_until(lambda c: c["always"]["state"] == "running")
        assert after["kept"]["state"] == "stopped"  # a manual stop is remembered
        assert sup.cli("start", "kept").stdout == b"kept: running\n"
        sup.signal(signal.SIGTERM)
        assert sup.wait() == 0
        sup.start()
        sup.wait_until(lambda c: all(x["state"] == "running" for x in c.values()))
