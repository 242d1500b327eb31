"""``vortex supervise`` at scale: ``python -m benchmarks.supervise [--containers 500]``.

Measures, under one supervisor (a real ``vortex supervise`` subprocess):

- the time from the supervisor's start until every container is running;
- the supervisor's RSS (its own process; the fork helper and the spare init
  separately) per container;
- the CPU the idle supervisor uses (utime+stime over a quiet window);
- the time from a container's exit to its restart (``exited`` → ``started``
  events of a container that exits at once with ``restart = "always"`` and
  no backoff).

With ``--conmon N``, also the conmon-style reference: N containers started
by runc, each under its own ``conmon`` (daemonized, as podman runs it), and
the conmons' memory summed (VmRSS from ``/proc/PID/status`` and Pss from
``/proc/PID/smaps_rollup``; Pss divides shared pages among their users, so it
is the fairer sum) and their idle CPU.  Skipped with a message when conmon or
runc is missing.  ``--containers 0`` skips the ``vortex supervise`` part.

Needs root and a rootfs (built from busybox-static when not given).  Prints
JSON; the numbers go to ``docs/supervise.md`` by hand.
"""

from __future__ import annotations

import argparse
import contextlib
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


def _pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _name(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


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
        others = [p for p in _children(proc.pid) if p not in _container_pids(sock)]
        helper = [p for p in others if _name(p) == "vortex-helper"]
        spare = [p for p in others if _name(p) == "vortex-spare"]  # vortex/spare.py
        cpu_before = _cpu_seconds(proc.pid)
        time.sleep(idle_window)
        idle_cpu = (_cpu_seconds(proc.pid) - cpu_before) / idle_window
        rss = _rss_kib(proc.pid)
        pss = _pss_kib(proc.pid)
        helper_rss = sum(_rss_kib(p) for p in helper)
        helper_pss = sum(_pss_kib(p) for p in helper)
        spare_rss = sum(_rss_kib(p) for p in spare)
        spare_pss = sum(_pss_kib(p) for p in spare)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # The supervisor removes its containers' cgroups, not the --cgroup-parent itself.
        _remove_cgroup_tree(f"vortex-bench-{work.name}")
        shutil.rmtree(work, ignore_errors=True)
    return {
        "containers": count,
        "seconds_until_all_running": round(all_running, 3),
        "supervisor_rss_kib": rss,
        "supervisor_rss_kib_per_container": round(rss / count, 1),
        "supervisor_pss_kib": pss,
        "supervisor_pss_kib_per_container": round(pss / count, 1),
        "fork_helper_rss_kib": helper_rss,
        "fork_helper_pss_kib": helper_pss,
        "spare_init_rss_kib": spare_rss,
        "spare_init_pss_kib": spare_pss,
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


def _tool_version(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (this run's unique work directory)."""
    found = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _remove_cgroup_tree(name: str) -> None:
    """rmdir ``/sys/fs/cgroup/*/NAME`` and everything under it, deepest first."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / name
        if not top.is_dir():
            continue
        dirs = [Path(d) for d, _, _ in os.walk(top)]
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()


def measure_conmon(count: int, rootfs: Path, idle_window: float) -> dict[str, Any]:
    """``count`` sleeping containers, each started by runc under its own conmon."""
    conmon = shutil.which("conmon")
    runc = shutil.which("runc") or ("/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else None)
    if conmon is None or runc is None:
        missing = " and ".join(n for n, p in (("conmon", conmon), ("runc", runc)) if p is None)
        print(f"conmon reference skipped: {missing} not found", file=sys.stderr)
        return {"skipped": f"{missing} not found"}
    work = Path(tempfile.mkdtemp(prefix="vscm", dir="/tmp"))
    root = work / "runc"
    cgroup_parent = f"vortex-bench-conmon-{work.name}"
    ids = [f"cm{i}" for i in range(count)]
    conmon_pids: dict[str, int] = {}
    try:
        for sub in ("exit", "sock", "pid", "log"):
            (work / sub).mkdir()
        subprocess.run([runc, "spec", "--bundle", str(work)], check=True, timeout=30)
        template: dict[str, Any] = json.loads((work / "config.json").read_text())
        template["root"] = {"path": str(rootfs), "readonly": True}
        template["process"]["args"] = ["sleep", "1000"]
        template["process"]["terminal"] = False
        started = time.monotonic()
        for cid in ids:
            bundle = work / "bundles" / cid
            bundle.mkdir(parents=True)
            template["linux"]["cgroupsPath"] = f"/{cgroup_parent}/{cid}"
            (bundle / "config.json").write_text(json.dumps(template))
            # Without --sync conmon double-forks and this call returns at once, as under
            # podman; the conmon then runs `runc create` and waits for the container.
            subprocess.run(
                [
                    conmon, "--cid", cid, "--cuuid", cid, "--name", cid, "--runtime", runc,
                    "--runtime-arg", "--root", "--runtime-arg", str(root),
                    "--bundle", str(bundle), "--exit-dir", str(work / "exit"),
                    "--log-path", str(work / "log" / f"{cid}.log"),
                    "--container-pidfile", str(work / "pid" / f"{cid}.pid"),
                    "--conmon-pidfile", str(work / "pid" / f"{cid}.conmon"),
                    "--socket-dir-path", str(work / "sock"),
                ],
                check=True, timeout=60, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        waiting = list(ids)
        while waiting:
            for cid in list(waiting):
                if (pid := _read_pid(work / "pid" / f"{cid}.conmon")) is not None:
                    conmon_pids[cid] = pid
                if _read_pid(work / "pid" / f"{cid}.pid") is not None:
                    subprocess.run(
                        [runc, "--root", str(root), "start", cid], check=True, timeout=60
                    )
                    waiting.remove(cid)
                elif (work / "exit" / cid).exists() or (
                    cid in conmon_pids and not _alive(conmon_pids[cid])
                ):
                    log_file = work / "log" / f"{cid}.log"
                    log = log_file.read_text(errors="replace") if log_file.exists() else ""
                    raise RuntimeError(f"runc create of {cid} failed under conmon: {log!r}")
            if time.monotonic() - started > 600:
                raise TimeoutError(f"{len(waiting)}/{count} containers not created after 600 s")
            if waiting:
                time.sleep(0.05)
        states = json.loads(
            subprocess.run(
                [runc, "--root", str(root), "list", "--format", "json"],
                check=True, capture_output=True, text=True, timeout=60,
            ).stdout or "[]"
        )  # fmt: skip
        running = sum(s["status"] == "running" for s in states)
        if running != count:
            raise RuntimeError(f"only {running}/{count} containers running under conmon")
        all_running = time.monotonic() - started
        for cid in ids:
            pid = _read_pid(work / "pid" / f"{cid}.conmon")
            if pid is None or not _alive(pid):
                raise RuntimeError(f"conmon of {cid} is not running")
            conmon_pids[cid] = pid
        time.sleep(1.0)
        pids = list(conmon_pids.values())
        cpu_before = sum(_cpu_seconds(p) for p in pids)
        time.sleep(idle_window)
        idle_cpu = (sum(_cpu_seconds(p) for p in pids) - cpu_before) / idle_window
        rss = [_rss_kib(p) for p in pids]
        pss = [_pss_kib(p) for p in pids]
    finally:
        _cleanup_conmon(runc, root, ids, list(conmon_pids.values()), work, cgroup_parent)
    return {
        "containers": count,
        "conmon": _tool_version([conmon, "--version"]),
        "runc": _tool_version([runc, "--version"]),
        "seconds_until_all_running": round(all_running, 3),
        "conmon_rss_kib_sum": sum(rss),
        "conmon_rss_kib_per_container": round(sum(rss) / count, 1),
        "conmon_pss_kib_sum": sum(pss),
        "conmon_pss_kib_per_container": round(sum(pss) / count, 1),
        "conmon_rss_kib_min_max": [min(rss), max(rss)],
        "idle_cpu_fraction_sum": round(idle_cpu, 4),
    }


def _cleanup_conmon(
    runc: str, root: Path, ids: list[str], conmon_pids: list[int], work: Path, cgroup_parent: str
) -> None:
    """Kill and delete every container, wait for (or kill) every conmon, remove cgroups."""
    listed = subprocess.run(
        [runc, "--root", str(root), "list", "--quiet"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    for cid in dict.fromkeys([*ids, *listed]):
        subprocess.run(
            [runc, "--root", str(root), "kill", cid, "KILL"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
    # Each conmon notices its container's exit, writes the exit file and exits.  Any
    # left (or one whose pidfile was never read) is found by this run's work directory.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = [p for p in {*conmon_pids, *_pids_mentioning(str(work))} if _alive(p)]
        if not left:
            break
        time.sleep(0.1)
    else:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for cid in dict.fromkeys([*ids, *listed]):
        subprocess.run(
            [runc, "--root", str(root), "delete", "--force", cid],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
    _remove_cgroup_tree(cgroup_parent)
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=500)
    parser.add_argument("--rootfs", type=Path, default=None)
    parser.add_argument("--idle-window", type=float, default=5.0)
    parser.add_argument("--restarts", type=int, default=200)
    parser.add_argument(
        "--conmon",
        type=int,
        default=0,
        metavar="N",
        help="also start N containers with runc, one conmon each, and sum the conmons' memory",
    )
    args = parser.parse_args()
    rootfs = args.rootfs
    temporary = None
    if rootfs is None:
        from vortex.rootfs.busybox import build_busybox_rootfs

        temporary = Path(tempfile.mkdtemp(prefix="vsvr", dir="/tmp"))
        rootfs = temporary / "rootfs"
        build_busybox_rootfs(rootfs)
    try:
        result: dict[str, Any] = {}
        if args.containers > 0:
            result["vortex"] = measure(args.containers, rootfs, args.idle_window, args.restarts)
        if args.conmon > 0:
            result["conmon_reference"] = measure_conmon(args.conmon, rootfs, args.idle_window)
        print(json.dumps(result, indent=2))
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    main()
