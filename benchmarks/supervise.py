"""``vortex supervise`` at scale: ``python -m benchmarks.supervise [--containers 500]``.

Measures, under one supervisor (a real ``vortex supervise`` subprocess):

- the time from the supervisor's start until every container is running;
- the supervisor's RSS (its own process; the fork helper separately) per container;
- the CPU the idle supervisor uses (utime+stime over a quiet window);
- the time from a container's exit to its restart (``exited`` → ``started``
  events of a container that exits at once with ``restart = "always"`` and
  no backoff).

Needs root and a rootfs (built from busybox-static when not given).  Prints
JSON; the numbers go to the README by hand.  Not compared with conmon yet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def _ps(sock: str) -> list[dict[str, Any]]:
    from vortex.supervise.control import call

    containers: list[dict[str, Any]] = call(sock, {"cmd": "ps"}, timeout=60)["containers"]
    return containers


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def measure(count: int, rootfs: Path, idle_window: float, restarts: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vsvb", dir="/tmp"))
    sock = str(work / "state" / "control.sock")
    body = [f'[defaults]\nrootfs = "{rootfs}"\nmemory = "16M"\nstop_timeout = 2\n']
    for i in range(count):
        body.append(
            f'[container.s{i}]\ncommand = ["/bin/sh", "-c", '
            f"\"trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done\"]\n"
        )
    body.append(
        '[container.churn]\ncommand = ["/bin/true"]\nrestart = "always"\n'
        "backoff = { initial = 0, max = 0 }\n"
    )
    config = work / "vortex.toml"
    config.write_text("\n".join(body))
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "vortex", "supervise", "--state-dir", str(work / "state"),
            "--cgroup-parent", f"vortex-bench-{work.name}", "--runtime-state-dir",
            str(work / "runtime"), str(config),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "err.txt", "wb"),  # noqa: SIM115
    )  # fmt: skip
    try:
        while True:
            try:
                containers = _ps(sock)
            except Exception:
                time.sleep(0.1)
                continue
            running = sum(c["state"] == "running" for c in containers if c["name"] != "churn")
            if running == count:
                break
            if time.monotonic() - started > 600:
                raise TimeoutError(f"only {running}/{count} running after 600 s")
            time.sleep(0.1)
        all_running = time.monotonic() - started
        latencies = _restart_latencies(sock, restarts)
        from vortex.supervise.control import call

        call(sock, {"cmd": "stop", "name": "churn"}, timeout=60)
        time.sleep(1.0)
        helper = [p for p in _children(proc.pid) if p not in _container_pids(sock)]
        cpu_before = _cpu_seconds(proc.pid)
        time.sleep(idle_window)
        idle_cpu = (_cpu_seconds(proc.pid) - cpu_before) / idle_window
        rss = _rss_kib(proc.pid)
        helper_rss = sum(_rss_kib(p) for p in helper)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "containers": count,
        "seconds_until_all_running": round(all_running, 3),
        "supervisor_rss_kib": rss,
        "supervisor_rss_kib_per_container": round(rss / count, 1),
        "fork_helper_rss_kib": helper_rss,
        "idle_cpu_fraction": round(idle_cpu, 4),
        "restart_latency_ms_median": round(statistics.median(latencies) * 1000, 2),
        "restart_latency_ms_p90": round(sorted(latencies)[int(len(latencies) * 0.9)] * 1000, 2),
        "restart_samples": len(latencies),
        "exit_code": proc.returncode,
    }


def _container_pids(sock: str) -> set[int]:
    return {c["pid"] for c in _ps(sock) if c["pid"]}


def _restart_latencies(sock: str, samples: int) -> list[float]:
    """exited → started of the churn container, from the supervisor's own event times."""
    latencies: list[float] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(sock)
        conn.sendall(b'{"cmd": "events"}\n')
        reader = conn.makefile("rb")
        reader.readline()
        exited_at = None
        while len(latencies) < samples:
            event = json.loads(reader.readline())
            if event["name"] != "churn":
                continue
            if event["event"] == "exited":
                exited_at = event["time"]
            elif event["event"] == "started" and exited_at is not None:
                latencies.append(event["time"] - exited_at)
                exited_at = None
        reader.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=500)
    parser.add_argument("--rootfs", type=Path, default=None)
    parser.add_argument("--idle-window", type=float, default=5.0)
    parser.add_argument("--restarts", type=int, default=200)
    args = parser.parse_args()
    rootfs = args.rootfs
    temporary = None
    if rootfs is None:
        from vortex.rootfs.busybox import build_busybox_rootfs

        temporary = Path(tempfile.mkdtemp(prefix="vsvr", dir="/tmp"))
        rootfs = temporary / "rootfs"
        build_busybox_rootfs(rootfs)
    try:
        print(
            json.dumps(measure(args.containers, rootfs, args.idle_window, args.restarts), indent=2)
        )
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    main()
