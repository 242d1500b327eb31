"""The warm side of the benchmarks: one long-lived process that uses the library.

``python -m benchmarks.worker ROOTFS`` reads one JSON request per line on
stdin and answers one JSON line per request on its original stdout.  Its fd 1
is pointed at a "stamp file" (opened O_APPEND): containers started with
``Stdio.INHERIT`` write there, which is how the exit-notification benchmark's
containers report the moment they exit.

With ``--one-at-a-time`` it keeps one default ``Runtime`` open instead and
answers every line with one container of ``/bin/true`` started in it:
``{"wall": seconds, "cpu": seconds}`` (the cold-start table's "vortex library"
subject: a program's Runtime, started after the same pause as the others).
Between lines its event loop keeps running, so the Runtime prepares its next
start as it would in any program.

Otherwise, requests (each opens its own ``Runtime``, so start-up costs are
outside the measurement):

* ``{"op": "throughput", "n": N, "concurrency": C, "warmup": W, "privileged":
  P, "fresh_helper": F}``: run N containers of ``/bin/true``, C at a time, after
  W unmeasured ones (with P, as ``--privileged``; with F, in a
  ``Runtime(fresh_helper=True)``); returns per-container wall times, the
  batch's wall time and its CPU time;
* ``{"op": "exit_latency", "live": L, "samples": S, "stamps": PATH}``: start L
  idle containers, then S measured ones one at a time; each measured container
  runs ``/exitstamp``, which writes its CLOCK_MONOTONIC time and exits when it
  gets a byte on stdin; a plugin registered with ``Runtime(plugins=[...])``
  takes the time in ``vortex_on_exit``.  Finally the L idle containers are
  released all at once (the "burst" figures).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import anyio

import vortex
from benchmarks.proccpu import process_cpu
from vortex import ContainerSpec, Stdio
from vortex.security.options import SecurityOptions


def _rss() -> int:
    """Resident set size of this process in bytes."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def _cpu() -> float:
    """Our CPU time, that of reaped children (the container inits) and live ones
    (the fork helper)."""
    return process_cpu("self")


class ExitClock:
    """A plugin: the CLOCK_MONOTONIC time at which ``vortex_on_exit`` ran, per hostname."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    @vortex.hookimpl(tryfirst=True)
    def vortex_on_exit(self, container: vortex.Container) -> None:
        self.seen[container.hostname] = time.monotonic_ns()


async def throughput(
    rootfs: str,
    n: int,
    concurrency: int,
    warmup: int,
    privileged: bool = False,
    fresh_helper: bool = False,
) -> dict[str, Any]:
    # privileged: docker's --privileged, no seccomp filter, no capability drop, no
    # masked paths: what is left of the gap to the C program without the security work.
    security = SecurityOptions(privileged=privileged)
    spec = ContainerSpec(rootfs=Path(rootfs), command=["/bin/true"], security=security)
    per_container: list[float] = []
    failures = 0

    async def one(runtime: vortex.Runtime, record: bool) -> None:
        nonlocal failures
        started = time.perf_counter()
        result = await runtime.run(spec)
        if record:
            per_container.append(time.perf_counter() - started)
        if result.exit_code != 0:
            failures += 1

    # fresh_helper: what a default Runtime's helper is after its first
    # vortex.runtime.RENEW_HELPER_AFTER starts (see benchmarks/run.py LONG_LIVED_LIBRARY).
    async with vortex.Runtime(fresh_helper=True if fresh_helper else None) as runtime:
        for _ in range(warmup):
            await one(runtime, False)
        remaining = n

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one(runtime, True)

        cpu_before, wall_before = _cpu(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(lane)
        wall, cpu = time.perf_counter() - wall_before, _cpu() - cpu_before
    return {"per_container": per_container, "wall": wall, "cpu": cpu, "failures": failures}


async def exit_latency(rootfs: str, live: int, samples: int) -> dict[str, Any]:
    clock = ExitClock()

    def spec(hostname: str) -> ContainerSpec:
        return ContainerSpec(
            rootfs=Path(rootfs), command=["/exitstamp"], hostname=hostname, stdin=Stdio.STREAM
        )

    async def release(container: vortex.Container) -> None:
        assert container.stdin is not None
        await container.stdin.send(b"x")
        await container.stdin.aclose()

    idle: list[vortex.Container] = []
    async with vortex.Runtime(plugins=[clock]) as runtime:
        try:
            rss_before = _rss()
            for i in range(live):
                idle.append(await runtime.start(spec(f"idle{i}")))
            rss_after = _rss()
            for i in range(samples):
                container = await runtime.start(spec(f"sample{i}"))
                await release(container)
                await container.wait()
        finally:
            # All idle ones at once: the burst figures.
            for container in idle:
                await release(container)
            for container in idle:
                await container.wait()
    # What an idle container costs the Runtime's own process (its Container,
    # Launch, watcher task, pidfd, pipes); the container's processes are not in it.
    per_container = (rss_after - rss_before) / live if live else 0.0
    return {"seen": clock.seen, "live": live, "rss_per_idle_container": per_container}


def latencies(seen: dict[str, int], stamps: str, live: int) -> dict[str, Any]:
    """Pair each container's exit stamp with its on_exit time."""
    exited: dict[str, int] = {}
    for line in Path(stamps).read_text().splitlines():
        hostname, stamp = line.split()
        exited[hostname] = int(stamp)

    def of(prefix: str) -> list[float]:
        return [
            (seen[h] - t) / 1e9 for h, t in exited.items() if h.startswith(prefix) and h in seen
        ]

    return {"steady": of("sample"), "burst": of("idle"), "live": live}


async def one_at_a_time(rootfs: str) -> None:
    spec = ContainerSpec(rootfs=Path(rootfs), command=["/bin/true"], stdout=Stdio.NULL)
    pending = b""
    async with vortex.Runtime() as runtime:
        while True:
            # Wait in the event loop, not in a blocking read: the Runtime clones the
            # next spare after each exit.
            await anyio.wait_readable(0)
            chunk = os.read(0, 4096)
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                _line, pending = pending.split(b"\n", 1)
                cpu_before, wall_before = _cpu(), time.perf_counter()
                result = await runtime.run(spec)
                wall, cpu = time.perf_counter() - wall_before, _cpu() - cpu_before
                if result.exit_code != 0:
                    raise SystemExit(f"the library's container failed: {result.describe()}")
                os.write(1, json.dumps({"wall": wall, "cpu": cpu}).encode() + b"\n")


def main() -> None:
    rootfs = sys.argv[1]
    if sys.argv[2:] == ["--one-at-a-time"]:
        anyio.run(one_at_a_time, rootfs)
        return
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    # More than 500 containers hold a pidfd and a pipe each.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "throughput":
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)
            reply = anyio.run(
                throughput,
                rootfs,
                request["n"],
                request["concurrency"],
                request["warmup"],
                request.get("privileged", False),
                request.get("fresh_helper", False),
            )
        elif request["op"] == "exit_latency":
            stamps = os.open(request["stamps"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(stamps, 1)
            os.close(stamps)
            seen = anyio.run(exit_latency, rootfs, request["live"], request["samples"])
            reply = latencies(seen["seen"], request["stamps"], request["live"])
            reply["rss_per_idle_container"] = seen["rss_per_idle_container"]
        else:
            raise SystemExit(f"unknown request {request!r}")
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
