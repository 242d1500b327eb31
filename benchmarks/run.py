"""Vortex side by side with runc, crun, bubblewrap, a C program and a bare Python.

``python -m benchmarks`` (as root, from the repository) prints the tables and
writes ``benchmarks/out/results.json`` (every raw number) and
``benchmarks/out/results.png`` (the distributions; needs the ``bench`` extra).
It installs nothing: runc, crun and bwrap are used when found on PATH and
skipped otherwise (Debian: ``apt-get install runc crun bubblewrap``); a C
compiler is required, for the reference program in ``refcontainer.c``.

Every comparison is interleaved (A B C A B C ...) after warm-up rounds, so a
slow minute of the machine hurts every subject alike.  What is measured:

cold
    one whole process per container, ``/bin/true`` in the same busybox root
    filesystem: ``vortex run`` vs ``runc run``, ``crun run``, ``bwrap``, the C
    program and ``python -c pass``; wall time around spawn+wait, CPU time from
    ``getrusage(RUSAGE_CHILDREN)`` (the process and everything it reaped).
    Each start follows a pause (``--settle``, 100 ms): on a cgroup v1 host the
    first cgroup migration after a quiet moment waits for an RCU grace period
    (docs/performance.md), and back to back, a subject would inherit a warm
    kernel lock from the one before it and the next would not.
sequential, concurrent
    containers per second: the library (one warm process, ``Runtime.run``
    back to back, see worker.py; also with ``--privileged``, without docker's
    security defaults) vs the tools exec'd once per container, in batches;
    concurrent runs as many lanes as there are cores.
exit
    container exit → ``vortex_on_exit`` hook latency with ``--live`` idle
    containers alive (see worker.py for the method).

On a hybrid cgroup host crun 1.8 refuses to run ("cgroups in hybrid mode not
supported"); it then runs as ``unshare -m sh -c 'umount /sys/fs/cgroup/unified
&& exec crun ...'``, and that wrapper alone (``exec /bin/true``) is measured
as its own subject so its cost can be subtracted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.proccpu import process_cpu
from vortex.cgroups._common import own_cgroups

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HYBRID_CGROUP2 = "/sys/fs/cgroup/unified"
REF_CGROUP_PARENTS = ("/sys/fs/cgroup/vortex-bench-ref", "/sys/fs/cgroup/memory/vortex-bench-ref")
"""Where refcontainer.c creates its cgroups (v2, v1): it removes each run's own, and
the benchmark removes the parent when it is done."""
MEMORY_LIMIT = 100 << 20


@dataclass
class Subject:
    """One thing that starts a container: a command line per run."""

    name: str
    command: Callable[[int], list[str]]
    """Command line for run number ``i`` (container ids must be unique)."""
    note: str = ""
    env: dict[str, str] | None = None
    """Environment of the command (None: ours)."""
    resident_pid: int | None = None
    """A process that does part of the work and is not reaped per run (the
    daemon): its CPU time, and that of its live children, counts too."""
    measure: Callable[[], tuple[float, float]] | None = None
    """Instead of a command: one run measured elsewhere, (wall, CPU) seconds (the
    library, in a process that stays)."""


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


# --------------------------------------------------------------------- setup


def _which(name: str) -> str | None:
    # runc lives in /usr/sbin on Debian, which is not on every PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def _host_is_hybrid() -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        mounts = {fields[1]: fields[2] for fields in (line.split() for line in f)}
    return mounts.get("/sys/fs/cgroup") != "cgroup2" and mounts.get(HYBRID_CGROUP2) == "cgroup2"


def build_c(out: Path) -> tuple[Path, Path]:
    """Compile the reference program and the exit-stamp program; returns their paths."""
    cc = os.environ.get("CC") or _which("cc") or _which("gcc")
    if cc is None:
        raise SystemExit("benchmarks: no C compiler (apt-get install gcc libc6-dev)")
    ref, stamp = out / "refcontainer", out / "exitstamp"
    flags = ["-O2", "-Wall", "-Wextra"]
    subprocess.run([cc, *flags, "-o", str(ref), str(HERE / "refcontainer.c")], check=True)
    # Static: it runs inside a busybox root filesystem without a libc.
    subprocess.run([cc, *flags, "-static", "-o", str(stamp), str(HERE / "exitstamp.c")], check=True)
    return ref, stamp


def compile_vortex() -> None:
    """Byte-compile the vortex package, as ``pip install`` does.

    An editable install run with PYTHONDONTWRITEBYTECODE=1 (this project's
    sandbox sets it) compiles every Vortex module from source on every start:
    ~40 ms of a cold ``vortex run`` that no installed copy pays.  Python reads
    ``__pycache__`` even when told not to write it.
    """
    import importlib.util

    spec = importlib.util.find_spec("vortex")
    assert spec is not None and spec.submodule_search_locations
    for location in spec.submodule_search_locations:
        done = subprocess.run([sys.executable, "-m", "compileall", "-q", location], check=False)
        if done.returncode != 0:  # e.g. a read-only install: it was compiled at install time
            print(f"note: could not byte-compile {location}; numbers may include compiling")


def build_rootfs(out: Path, stamp: Path) -> Path:
    rootfs = out / "rootfs"
    if not (rootfs / "bin" / "true").exists():
        subprocess.run(
            [sys.executable, "-m", "vortex", "rootfs", "busybox", str(rootfs)], check=True
        )
    shutil.copy2(stamp, rootfs / "exitstamp")
    return rootfs


def build_bundle(out: Path, rootfs: Path, tool: str) -> Path:
    """An OCI bundle for runc and crun: ``runc spec``, then edited to match Vortex."""
    bundle = out / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").unlink(missing_ok=True)
    subprocess.run([tool, "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": str(rootfs), "readonly": False}
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    linux = config["linux"]
    # The same namespaces as Vortex (runc's default lacks the cgroup one), and the
    # same 100 MB memory limit, so that runc and crun do cgroup work too.
    if {"type": "cgroup"} not in linux["namespaces"]:
        linux["namespaces"].append({"type": "cgroup"})
    linux.setdefault("resources", {})["memory"] = {"limit": MEMORY_LIMIT}
    (bundle / "config.json").write_text(json.dumps(config, indent=2))
    return bundle


def subjects(
    rootfs: Path, ref: Path, bundle: Path | None, daemon: Daemon, library: OneAtATime
) -> tuple[list[Subject], list[str]]:
    """The cold-start subjects available here, and notes on the skipped ones."""
    tag = f"vxb{os.getpid()}"
    # The console script pip installed (what users type), run by this interpreter
    # directly; `-m vortex` where there is none (it adds runpy's imports).
    script = Path(sysconfig.get_paths()["scripts"]) / "vortex"
    entry = [str(script)] if script.is_file() else ["-m", "vortex"]
    vortex_run = [sys.executable, *entry, "run", str(rootfs), "/bin/true"]
    found = [
        Subject(
            "vortex",
            lambda i: vortex_run,
            "in-process: no daemon",
            env=dict(os.environ, VORTEX_DAEMON_SOCKET="off"),
        ),
        Subject(
            "vortex, python -S",
            lambda i: [sys.executable, "-S", *vortex_run[1:]],
            "the same, in-process, on an interpreter that skips site: the package and its "
            "dependencies on PYTHONPATH, no .pth hooks (what a regular install on a machine "
            "without such hooks pays, less site's own ~1.5 ms)",
            env=dict(
                os.environ,
                VORTEX_DAEMON_SOCKET="off",
                PYTHONPATH=f"{REPO}:{sysconfig.get_paths()['purelib']}",
            ),
        ),
        Subject(
            "vortex via daemon",
            lambda i: vortex_run,
            "the same command, served by a running `vortex daemon` (its CPU included)",
            env=dict(os.environ, VORTEX_DAEMON_SOCKET=str(daemon.socket)),
            resident_pid=daemon.pid,
        ),
        Subject(
            "vortex via daemon, python -S",
            lambda i: [sys.executable, "-S", *vortex_run[1:]],
            "the client on an interpreter that skips site (no .pth hooks): it imports "
            "nothing from site-packages",
            env=dict(os.environ, VORTEX_DAEMON_SOCKET=str(daemon.socket), PYTHONPATH=str(REPO)),
            resident_pid=daemon.pid,
        ),
        Subject(
            LIBRARY_AFTER_A_PAUSE,
            lambda i: [],
            "one `await runtime.run()` in a program's Runtime opened before (its own start "
            "not counted), after the same pause as every other subject",
            measure=library.run,
        ),
        Subject("C reference", lambda i: [str(ref), str(rootfs), "/bin/true"]),
        Subject("python -c pass", lambda i: [sys.executable, "-c", "pass"]),
        Subject(
            "python -S -c pass",
            lambda i: [sys.executable, "-S", "-c", "pass"],
            "without site: what this machine's .pth files cost every Python start",
        ),
    ]
    skipped = []
    runc, crun, bwrap = _which("runc"), _which("crun"), _which("bwrap")
    if runc and bundle:
        found.append(
            Subject("runc", lambda i: [runc, "run", "--bundle", str(bundle), f"{tag}-r{i}"])
        )
    else:
        skipped.append("runc (not installed)")
    if crun and bundle:
        if _host_is_hybrid():
            unshare = _which("unshare")
            assert unshare is not None  # util-linux
            wrap = f"umount {HYBRID_CGROUP2} && exec "
            found.append(
                Subject(
                    "crun",
                    lambda i: [
                        unshare,
                        "-m",
                        "sh",
                        "-c",
                        f"{wrap}{crun} run --bundle {bundle} {tag}-c{i}",
                    ],
                    "inside `unshare -m` with the cgroup2 mount unmounted (hybrid host)",
                )
            )
            found.append(
                Subject(
                    "crun wrapper alone",
                    lambda i: [unshare, "-m", "sh", "-c", f"{wrap}/bin/true"],
                    "unshare -m + umount + exec /bin/true: subtract from crun",
                )
            )
        else:
            found.append(
                Subject("crun", lambda i: [crun, "run", "--bundle", str(bundle), f"{tag}-c{i}"])
            )
    else:
        skipped.append("crun (not installed)")
    if bwrap:
        found.append(
            Subject(
                "bwrap",
                lambda i: [
                    bwrap,
                    "--bind", str(rootfs), "/",
                    "--proc", "/proc",
                    "--dev", "/dev",
                    "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                    "--unshare-cgroup",
                    "/bin/true",
                ],
                "no cgroup",
            )
        )  # fmt: skip
    else:
        skipped.append("bwrap (not installed)")
    return found, skipped


# --------------------------------------------------------------------- measuring


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(subject: Subject, round_: int) -> tuple[float, float]:
    """Spawn, wait; (wall seconds, CPU seconds of the process and what it reaped,
    plus the resident process's share)."""
    if subject.measure is not None:
        return subject.measure()
    command = subject.command(round_)
    resident = process_cpu(subject.resident_pid) if subject.resident_pid else 0.0
    cpu = _children_cpu()
    started = time.perf_counter()
    proc = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=subject.env,
    )
    wall = time.perf_counter() - started
    cpu = _children_cpu() - cpu
    if subject.resident_pid:
        cpu += process_cpu(subject.resident_pid) - resident
    if proc.returncode != 0:
        raise RuntimeError(
            f"{command[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        )
    return wall, cpu


def own_cgroup_procs() -> str | None:
    """This process's ``cgroup.procs`` in the v1 memory hierarchy, or in cgroup2 on a
    host without one; None if there is neither (or we are not root)."""
    if os.geteuid() != 0:
        return None
    paths = own_cgroups()
    if "memory" in paths:
        candidate = f"/sys/fs/cgroup/memory{paths['memory']}"
    elif "" in paths:
        root = HYBRID_CGROUP2 if _host_is_hybrid() else "/sys/fs/cgroup"
        candidate = f"{root}{paths['']}"
    else:
        return None
    procs = os.path.join(candidate.rstrip("/"), "cgroup.procs")
    return procs if os.path.exists(procs) else None


def probe_cgroup_lock(procs: str) -> float:
    """Seconds one no-op migration (this process into the cgroup it is in) takes now.

    Every cgroup move takes the kernel's global ``cgroup_threadgroup_rwsem``, whose
    first writer after a quiet moment waits for an RCU grace period; runc, crun and
    the C reference move their init and pay that wait, Vortex in-process hides it
    (vortex/cgroups/warmup.py).  Whether the lock is cold after the pause depends on
    the whole machine (other migrations keep it warm), so the benchmark measures it.
    """
    fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
    try:
        pid = str(os.getpid()).encode()
        started = time.perf_counter()
        os.write(fd, pid)
        return time.perf_counter() - started
    finally:
        os.close(fd)


def cold(
    found: list[Subject], runs: int, warmup: int, settle: float
) -> tuple[dict[str, Samples], list[float]]:
    """Every subject once per round, each after ``settle`` seconds; and, in the same
    rhythm, the cgroup lock's wait (:func:`probe_cgroup_lock`), as one more slot."""
    results = {s.name: Samples() for s in found}
    lock_waits: list[float] = []
    procs = own_cgroup_procs()
    for round_ in range(warmup + runs):
        for subject in found:
            time.sleep(settle)
            wall, cpu = run_once(subject, round_)
            if round_ >= warmup:
                results[subject.name].wall.append(wall)
                results[subject.name].cpu.append(cpu)
        if procs is not None:
            time.sleep(settle)
            try:
                wait = probe_cgroup_lock(procs)
            except OSError:  # e.g. EBUSY: a cgroup v2 with controllers for its children
                procs, lock_waits = None, []
                continue
            if round_ >= warmup:
                lock_waits.append(wait)
    for subject in found:
        if subject.resident_pid:
            # The resident share comes in clock ticks (10 ms): spread it evenly.
            samples = results[subject.name].cpu
            mean = statistics.fmean(samples)
            results[subject.name].cpu = [mean] * len(samples)
    return results, lock_waits


class Daemon:
    """A ``vortex daemon`` for the "vortex via daemon" subject."""

    def __init__(self, out: Path) -> None:
        self.socket = out / "daemon.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vortex", "daemon", "--socket", str(self.socket)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("vortex daemon did not start listening")
            time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Worker:
    """The warm library process (benchmarks/worker.py)."""

    def __init__(self, rootfs: Path, *options: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", str(rootfs), *options],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark worker died; see its error above")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class OneAtATime(Worker):
    """A library process that keeps one Runtime open and starts one container per
    request (``benchmarks/worker.py --one-at-a-time``)."""

    def __init__(self, rootfs: Path) -> None:
        super().__init__(rootfs, "--one-at-a-time")

    def run(self) -> tuple[float, float]:
        reply = self.ask(op="run")
        return float(reply["wall"]), float(reply["cpu"])


def batch(subject: Subject, n: int, concurrency: int, first: int) -> dict[str, Any]:
    """``n`` runs of a tool, ``concurrency`` at a time: wall and CPU of the batch."""
    cpu, started = _children_cpu(), time.perf_counter()
    if concurrency == 1:
        for i in range(n):
            run_once(subject, first + i)
    else:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: run_once(subject, first + i), range(n)))
    return {"wall": time.perf_counter() - started, "cpu": _children_cpu() - cpu, "n": n}


LIBRARY_AFTER_A_PAUSE = "vortex library, after the pause"
"""The cold-start table's library subject: what a program that keeps a Runtime
(a judge, a CI runner) waits for one container started now and then."""
PRIVILEGED_LIBRARY = "vortex library, --privileged"
"""The library without docker's security defaults (no seccomp, capability drop or
masked paths): how much of the distance to the C program is that work."""
LONG_LIVED_LIBRARY = "vortex library, long-lived"
"""A Runtime as it is once it lives on: its fork helper a fresh interpreter, as a
default Runtime's is after RENEW_HELPER_AFTER starts (started so from the beginning,
``fresh_helper=True``, so that the renewal stays out of the measurement as the rest
of a Runtime's start does).  The plain library row is a default Runtime's first
starts, as in earlier sessions."""


def throughput(
    worker: Worker, found: list[Subject], total: int, size: int, concurrency: int, warmup: int
) -> dict[str, list[dict[str, Any]]]:
    """Batches of ``size`` containers, interleaved: library, then each tool, repeated."""
    tools = [s for s in found if s.name in ("runc", "crun", "C reference")]
    libraries: dict[str, dict[str, bool]] = {
        "vortex library": {},
        PRIVILEGED_LIBRARY: {"privileged": True},
        LONG_LIVED_LIBRARY: {"fresh_helper": True},
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in libraries}
    results.update({s.name: [] for s in tools})
    counter = 10_000 * concurrency  # container ids distinct from the cold runs'
    for subject in tools:  # warm-up
        batch(subject, warmup, concurrency, counter)
        counter += warmup
    done = 0
    while done < total:
        n = min(size, total - done)
        for name, options in libraries.items():
            reply = worker.ask(
                op="throughput", n=n, concurrency=concurrency, warmup=warmup, **options
            )
            if reply["failures"]:
                raise RuntimeError(f"{reply['failures']} library containers failed ({name})")
            reply["n"] = len(reply["per_container"])
            results[name].append(reply)
        for subject in tools:
            results[subject.name].append(batch(subject, n, concurrency, counter))
            counter += n
        done += n
    return results


# --------------------------------------------------------------------- report


def _rate(batch: dict[str, Any]) -> float:
    """Containers per second of one batch."""
    return int(batch["n"]) / float(batch["wall"])


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def report_cold(results: dict[str, Samples]) -> str:
    def ratio(name: str, to: str) -> str:
        if to not in results:
            return "-"
        return f"{statistics.median(results[name].wall) / statistics.median(results[to].wall):.2f}"

    rows = [
        [
            name,
            _ms(statistics.median(s.wall)),
            _ms(min(s.wall)),
            _ms(max(s.wall)),
            _ms(statistics.median(s.cpu)),
            ratio(name, "C reference"),
            ratio(name, "runc"),
            ratio(name, "crun"),
        ]
        for name, s in results.items()
    ]
    headers = ["cold start", "median ms", "min", "max", "CPU ms", "x C", "x runc", "x crun"]
    return _table(headers, rows)


def report_lock(waits: list[float]) -> str:
    if not waits:
        return "cgroup lock: not probed (needs root and a cgroup.procs to write)"
    median = statistics.median(waits)
    state = "warm: moves did not wait" if median < 0.001 else "cold: moves waited"
    return (  # two decimals: a warm lock answers in tens of microseconds
        f"cgroup lock, a no-op migration after the same pause: median {median * 1000:.2f} ms, "
        f"min {min(waits) * 1000:.2f}, max {max(waits) * 1000:.2f} ({state})"
    )


def report_throughput(results: dict[str, list[dict[str, Any]]], title: str) -> str:
    def rates(name: str) -> list[float]:
        return [_rate(b) for b in results[name]]

    def cpu(name: str) -> float:
        batches = results[name]
        return sum(float(b["cpu"]) for b in batches) / sum(int(b["n"]) for b in batches)

    library = statistics.median(rates("vortex library"))
    rows = [
        [
            name,
            f"{statistics.median(rates(name)):.0f}",
            f"{min(rates(name)):.0f}",
            f"{max(rates(name)):.0f}",
            _ms(cpu(name)),
            f"{library / statistics.median(rates(name)):.2f}",
        ]
        for name in results
    ]
    headers = [title, "containers/s", "min", "max", "CPU ms/container", "library x"]
    return _table(headers, rows)


def report_exit(result: dict[str, Any]) -> str:
    rows = []
    for kind, label in (("steady", "one exit at a time"), ("burst", "all idle ones at once")):
        values = result[kind]
        if values:
            rows.append(
                [
                    label,
                    str(len(values)),
                    f"{_pct(values, 0.5) * 1e3:.2f}",
                    f"{_pct(values, 0.99) * 1e3:.2f}",
                    f"{max(values) * 1e3:.2f}",
                ]
            )
    headers = [f"exit → on_exit ({result['live']} live)", "n", "p50 ms", "p99 ms", "max ms"]
    rss = result.get("rss_per_idle_container", 0.0) / 1024
    return (
        _table(headers, rows)
        + f"\nRuntime process RSS per idle container: {rss:.1f} KiB (containers' own not included)"
    )


def machine() -> dict[str, str]:
    info = {
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "cores": str(os.cpu_count()),
        "hybrid_cgroups": str(_host_is_hybrid()),
        # Other work on the machine skews everything: say how busy it was.
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        info["cpu"] = platform.processor()
    for tool in ("runc", "crun", "bwrap"):
        path = _which(tool)
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            info[tool] = out.splitlines()[0] if out else "?"
    return info


def plot(data: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is missing (pip install -e '.[bench]')"
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    names = list(data["cold"])
    axes[0].boxplot([[w * 1e3 for w in data["cold"][n]["wall"]] for n in names], vert=False)
    axes[0].set_yticks(range(1, len(names) + 1), names)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("ms per container, whole process (log)")
    axes[0].set_title("cold start")
    seq = data["sequential"]
    tputs = [[_rate(b) for b in seq[name]] for name in seq]
    axes[1].boxplot(tputs, vert=False)
    axes[1].set_yticks(range(1, len(seq) + 1), list(seq))
    axes[1].set_xlabel("containers/s, one after another (per batch)")
    axes[1].set_title("throughput")
    exits = data["exit"]
    kinds = [k for k in ("steady", "burst") if exits[k]]
    axes[2].boxplot([[v * 1e3 for v in exits[k]] for k in kinds], vert=False)
    labels = {"steady": "one at a time", "burst": "all at once"}
    axes[2].set_yticks(range(1, len(kinds) + 1), [labels[k] for k in kinds])
    axes[2].set_xscale("log")
    axes[2].set_xlabel("ms from container exit to vortex_on_exit (log)")
    axes[2].set_title(f"exit notification, {exits['live']} live containers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return f"plot: {path}"


# --------------------------------------------------------------------- main


def measure(
    args: argparse.Namespace,
    found: list[Subject],
    daemon: Daemon,
    library: OneAtATime,
    rootfs: Path,
    out: Path,
) -> tuple[dict[str, Samples], list[float], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Every measurement, printed as it completes: cold (and the cgroup lock's wait),
    sequential, concurrent, exit."""
    try:
        cold_results, lock_waits = cold(found, args.cold_runs, args.warmup, args.settle / 1000)
    finally:
        daemon.close()
        library.close()
    print(f"\n{report_cold(cold_results)}\n{report_lock(lock_waits)}", flush=True)
    worker = Worker(rootfs)
    try:
        sequential = throughput(worker, found, args.containers, args.batch, 1, args.warmup)
        print(f"\n{report_throughput(sequential, 'one after another')}", flush=True)
        parallel = throughput(
            worker, found, args.containers, args.batch, args.concurrency, args.warmup
        )
        title = f"concurrency {args.concurrency}"
        print(f"\n{report_throughput(parallel, title)}", flush=True)
        stamps = out / "exit-stamps.txt"
        stamps.unlink(missing_ok=True)
        exits = worker.ask(
            op="exit_latency", live=args.live, samples=args.samples, stamps=str(stamps)
        )
        print(f"\n{report_exit(exits)}", flush=True)
    finally:
        worker.close()
    return cold_results, lock_waits, sequential, parallel, exits


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output directory")
    parser.add_argument("--cold-runs", type=int, default=30, help="measured cold runs per subject")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs first")
    parser.add_argument(
        "--containers", type=int, default=500, help="containers per throughput test"
    )
    parser.add_argument("--batch", type=int, default=50, help="throughput batch size")
    parser.add_argument("--live", type=int, default=500, help="idle containers during exit test")
    parser.add_argument("--samples", type=int, default=200, help="measured exits")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--settle",
        type=float,
        default=100,
        help="ms of pause before each cold start (0: back to back)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("benchmarks: run as root (containers need namespaces and cgroups)")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    compile_vortex()
    ref, stamp = build_c(out)
    rootfs = build_rootfs(out, stamp)
    tool = _which("runc") or _which("crun")
    bundle = build_bundle(out, rootfs, tool) if tool else None
    daemon = Daemon(out)
    library = OneAtATime(rootfs)
    found, skipped = subjects(rootfs, ref, bundle, daemon, library)
    for note in skipped:
        print(f"skipped: {note}; install with: apt-get install runc crun bubblewrap")
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)

    started = time.monotonic()
    try:
        cold_results, lock_waits, sequential, parallel, exits = measure(
            args, found, daemon, library, rootfs, out
        )
    finally:
        for parent in REF_CGROUP_PARENTS:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(parent)

    data = {
        "machine": info,
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "skipped": skipped,
        "notes": {s.name: s.note for s in found if s.note},
        "cold": {n: {"wall": s.wall, "cpu": s.cpu} for n, s in cold_results.items()},
        "cgroup_lock_wait": lock_waits,
        "sequential": sequential,
        "concurrent": parallel,
        "exit": exits,
        "duration": time.monotonic() - started,
    }
    (out / "results.json").write_text(json.dumps(data, indent=1))
    print(f"\nraw numbers: {out / 'results.json'}")
    print(plot(data, out / "results.png"))
    return 0
