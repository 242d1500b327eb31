"""The supervisor: one :class:`~vortex.runtime.Runtime`, one task per service.

Each service's task starts its container once its dependencies run, captures
its output into its log file, waits for its exit, and restarts it as the
policy says with exponential backoff.  Everything happens in one anyio event
loop: no thread or process per container.

Signals: SIGTERM/SIGINT stop every container (its stop signal, then SIGKILL
after its stop timeout), dependents before their dependencies, then the
supervisor exits 0.  SIGHUP re-reads the file and applies the difference.

If the supervisor dies hard, its containers die with it: every container init
has ``PR_SET_PDEATHSIG=SIGKILL`` set towards the supervisor, and the next
Runtime removes the cgroups they left (from the state files under
``/run/vortex/containers``).  Nothing is adopted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from vortex import log
from vortex.container import Container
from vortex.errors import VortexError
from vortex.result import RunResult
from vortex.runtime import Runtime
from vortex.spec import ContainerSpec, Resources, Stdio, User
from vortex.supervise.config import (
    Config,
    ConfigError,
    HealthCheck,
    ServiceConfig,
    load_config,
)
from vortex.supervise.logs import LineSplitter, LogFile

DEFAULT_STATE_DIR = "/run/vortex/supervise"
SOCKET_NAME = "control.sock"
OUTPUT_DRAIN = 2.0
EVENT_BUFFER = 1024


class _Changes:
    """A condition variable for the loop: ``notify`` wakes every ``wait_for``."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


class Service:
    """One ``[container.NAME]``: its config, its current container, its history."""

    def __init__(self, supervisor: Supervisor, config: ServiceConfig, wanted: bool) -> None:
        self.sup = supervisor
        self.config = config
        self.name = config.name
        self.state = "pending" if wanted else "stopped"
        self.wanted = wanted
        self.removed = False
        self.container: Container | None = None
        self.restarts = 0
        """Restarts done by the policy since the supervisor (re)loaded this service."""
        self._policy_restarts = 0
        """Restarts counted against ``max_restarts`` (reset by a manual start)."""
        self._attempt = 0
        self.started_at: float | None = None
        self.health: str | None = None
        """None without a check; else ``starting``, ``healthy`` or ``unhealthy``."""
        self._unhealthy = False
        self.runs = 0
        """Start attempts so far (a generation counter for waiters)."""
        self.last_exit: dict[str, Any] | None = None
        self.log = LogFile(supervisor.log_dir, config.name, config.logs)
        self.finished = anyio.Event()

    # ------------------------------------------------------------------ the task

    def _set(self, state: str) -> None:
        self.state = state
        self.sup.changes.notify()

    async def run(self) -> None:
        try:
            while not self.removed:
                if not self.wanted:
                    await self.sup.changes.wait_for(lambda: self.wanted or self.removed)
                    continue
                if not self.sup.dependencies_running(self):
                    self._set("waiting")
                    await self.sup.changes.wait_for(
                        lambda: (
                            not self.wanted or self.removed or self.sup.dependencies_running(self)
                        )
                    )
                    continue
                result, ran_for = await self._run_once()
                if not self.wanted or self.removed:
                    continue
                failed = result.error is not None or result.status != 0 or self._unhealthy
                self._unhealthy = False
                delay = self._restart_delay(failed, ran_for)
                if delay is None:
                    self.wanted = False
                    self._set("failed" if failed else "exited")
                    continue
                self._set("backoff")
                self.sup.emit("backoff", self.name, delay=round(delay, 3), attempt=self._attempt)
                with anyio.move_on_after(delay):
                    await self.sup.changes.wait_for(lambda: not self.wanted or self.removed)
                if self.wanted and not self.removed:
                    self.restarts += 1
                    self._policy_restarts += 1
                    self.sup.emit("restarting", self.name, restarts=self.restarts)
        finally:
            self.log.close()
            self.finished.set()

    def _spec(self) -> ContainerSpec:
        c = self.config
        return ContainerSpec(
            rootfs=c.rootfs,
            command=list(c.command),
            env=dict(c.env),
            workdir=c.workdir,
            user=User(uid=c.uid, gid=c.gid),
            hostname=c.hostname,
            name=c.name,
            resources=Resources(memory=c.memory, pids=c.pids, cpus=c.cpus),
            security=c.security,
            stdin=Stdio.NULL,
            stdout=Stdio.STREAM,
            stderr=Stdio.STREAM,
        )

    async def _run_once(self) -> tuple[RunResult, float]:
        """Start the container, capture its output, wait for it; never raises VortexError."""
        runtime = self.sup.runtime
        assert runtime is not None
        self.runs += 1
        self._set("starting")
        try:
            container = await runtime.create(self._spec())
        except Exception as exc:  # a plugin bug must not take every service down
            return self._start_failed(exc, None), 0.0
        self.container = container
        splitters = [LineSplitter(self.log, "stdout"), LineSplitter(self.log, "stderr")]
        streams = [container.stdout, container.stderr]
        started = time.monotonic()
        async with anyio.create_task_group() as pumps:
            pending = [anyio.Event(), anyio.Event()]
            for stream, splitter, done in zip(streams, splitters, pending, strict=True):
                pumps.start_soon(_pump, stream, splitter, done)
            try:
                if not self.wanted:
                    container.kill_all()
                await runtime.resume(container)
            except Exception as exc:
                result = self._start_failed(exc, await container.wait())
            else:
                self.started_at = time.time()
                started = time.monotonic()
                self._set("running")
                self.sup.emit("started", self.name, pid=container.pid, id=container.id)
                if self.config.health is not None:
                    pumps.start_soon(self._health_loop, container, self.config.health)
                result = await container.wait()
                self.last_exit = _describe_result(result)
                if self._unhealthy:
                    self.last_exit["unhealthy"] = True
                self.sup.emit("exited", self.name, **self.last_exit)
            with anyio.move_on_after(OUTPUT_DRAIN):
                for done in pending:
                    await done.wait()
            pumps.cancel_scope.cancel()
        ran_for = time.monotonic() - started
        self.container = None
        self.started_at = None
        self.health = None
        self._set("stopped" if not self.wanted else "exited")
        return result, ran_for

    def _start_failed(self, exc: Exception, result: RunResult | None) -> RunResult:
        message = str(exc) if isinstance(exc, VortexError) else f"{type(exc).__name__}: {exc}"
        status = exc.exit_status if isinstance(exc, VortexError) else 125
        self.last_exit = {"status": status, "error": message}
        self.sup.emit("start_failed", self.name, **self.last_exit)
        if result is not None and result.error is not None:
            return result
        self.container = None
        return RunResult(container_id="", name=self.name, error=message, exit_code=None)

    def _restart_delay(self, failed: bool, ran_for: float) -> float | None:
        c = self.config
        if c.restart == "no" or (c.restart == "on-failure" and not failed):
            return None
        if (
            c.restart == "on-failure"
            and c.max_restarts is not None
            and self._policy_restarts >= c.max_restarts
        ):
            self.sup.emit("gave_up", self.name, restarts=self._policy_restarts)
            return None
        if ran_for >= c.backoff.reset_after:
            self._attempt = 0
        delay = c.backoff.delay(self._attempt)
        self._attempt += 1
        return delay

    # ------------------------------------------------------------------ health

    async def _health_loop(self, container: Container, check: HealthCheck) -> None:
        """Run the check every ``interval``; ``retries`` failures in a row stop the
        container as unhealthy, and the restart policy takes it from there."""
        self.health = "starting"
        self.sup.changes.notify()
        started = time.monotonic()
        failures = 0
        while True:
            await anyio.sleep(check.interval)
            status, output = await self._check(container, check)
            if status == 0:
                failures = 0
                if self.health != "healthy":
                    self.health = "healthy"
                    self.sup.emit("healthy", self.name)
                    self.sup.changes.notify()
                continue
            if self.health != "healthy" and time.monotonic() - started < check.start_period:
                continue
            failures += 1
            self.sup.emit(
                "health_failed", self.name, status=status, failures=failures, output=output
            )
            if failures >= check.retries:
                self.health = "unhealthy"
                self._unhealthy = True
                self.sup.emit("unhealthy", self.name, failures=failures)
                self.sup.changes.notify()
                await container.stop(self.config.stop_timeout, self.config.stop_signal)
                return

    async def _check(self, container: Container, check: HealthCheck) -> tuple[int | None, str]:
        """Run the check inside ``container``; (exit status or None on timeout, output)."""
        from vortex.security.policy import InitSecurity
        from vortex.supervise.nsexec import encode_security

        c = self.config
        request = {
            "security": encode_security(container.security or InitSecurity()),
            "pid": container.pid,
            "argv": list(check.command),
            "env": dict(c.env),
            "workdir": c.workdir,
            "uid": c.uid,
            "gid": c.gid,
        }
        output = b""
        status: int | None = None
        async with await anyio.open_process(
            [sys.executable, "-m", "vortex.supervise.nsexec"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as process:
            assert process.stdin is not None and process.stdout is not None
            try:
                await process.stdin.send(json.dumps(request).encode() + b"\n")
                if container.cgroup is None or container.result is not None:
                    return None, "the container is gone"
                container.cgroup.attach(process.pid)
                await process.stdin.send(b"\x01")
                await process.stdin.aclose()
                with anyio.move_on_after(check.timeout):
                    async for chunk in process.stdout:
                        output = (output + chunk)[-2048:]
                    status = await process.wait()
            except (VortexError, OSError, anyio.BrokenResourceError) as exc:
                output += f"health check failed to run: {exc}".encode()
            finally:
                if process.returncode is None:
                    process.kill()
        text = output.decode("utf-8", errors="replace").strip()
        return status, text if status is not None else (text + " (timed out)").strip()

    # ------------------------------------------------------------------ control

    async def stop(self) -> None:
        """Stop the container (stop signal, timeout, SIGKILL) and keep it stopped."""
        self.wanted = False
        self.sup.changes.notify()
        container = self.container
        if container is not None and container.result is None:
            self._set("stopping")
            self.sup.emit(
                "stopping", self.name, signal=signal.Signals(self.config.stop_signal).name
            )
            await container.stop(self.config.stop_timeout, self.config.stop_signal)
        await self.sup.changes.wait_for(
            lambda: self.container is None and self.state not in ("starting", "stopping")
        )
        if self.state not in ("exited", "failed"):
            self._set("stopped")

    def start(self) -> None:
        self._policy_restarts = 0
        self._attempt = 0
        self.wanted = True
        self.sup.changes.notify()

    def describe(self) -> dict[str, Any]:
        container = self.container
        memory = None
        if container is not None and container.cgroup is not None and self.state == "running":
            with contextlib.suppress(Exception):
                memory = container.cgroup.stats().memory_current
        return {
            "name": self.name,
            "state": self.state,
            "pid": container.pid if container is not None and self.state == "running" else None,
            "started_at": self.started_at,
            "uptime": round(time.time() - self.started_at, 3) if self.started_at else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "memory": memory,
            "restart_policy": self.config.restart,
            "health": self.health,
        }

    def metrics(self) -> dict[str, Any]:
        container = self.container
        stats = None
        if container is not None and container.cgroup is not None and self.state == "running":
            with contextlib.suppress(Exception):
                stats = container.cgroup.stats()
        return {
            "running": 1 if self.state == "running" else 0,
            "restarts": self.restarts,
            "memory_current": stats.memory_current if stats else None,
            "memory_peak": stats.memory_peak if stats else None,
            "cpu_seconds": stats.cpu_time if stats else None,
            "pids": stats.pids_current if stats else None,
        }


async def _pump(
    stream: anyio.abc.ByteReceiveStream | None, splitter: LineSplitter, done: anyio.Event
) -> None:
    if stream is None:
        done.set()
        return
    try:
        while True:
            try:
                chunk = await stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                break
            splitter.feed(chunk)
    finally:
        splitter.flush()
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        done.set()


def _describe_result(result: RunResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "exit_code": result.exit_code,
        "signal": result.signal_name,
        "oom_killed": result.oom_killed,
        "error": result.error,
        "description": result.describe(),
    }


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        state_dir: str | Path = DEFAULT_STATE_DIR,
        socket_path: str | Path | None = None,
        runtime_state_dir: str | None = None,
        cgroup_parent: str | None = None,
    ) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.socket_path = Path(socket_path) if socket_path else self.state_dir / SOCKET_NAME
        self.log_dir = config.supervisor.log_dir or self.state_dir / "logs"
        self._runtime_state_dir = runtime_state_dir
        self._cgroup_parent = cgroup_parent
        self.runtime: Runtime | None = None
        self.services: dict[str, Service] = {}
        self.changes = _Changes()
        self._subscribers: set[MemoryObjectSendStream[dict[str, Any]]] = set()
        self._seq = 0
        self._task_group: anyio.abc.TaskGroup | None = None
        self.started = time.time()
        self.shutting_down = False
        self.reloads = 0
        self._streaming = 0

    # ------------------------------------------------------------------ events

    def emit(self, kind: str, name: str | None, **fields: Any) -> None:
        self._seq += 1
        event = {"seq": self._seq, "time": time.time(), "event": kind, "name": name, **fields}
        log.emit("info", f"supervise.{kind}", container=name, **fields)
        for subscriber in list(self._subscribers):
            try:
                subscriber.send_nowait(event)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(subscriber)  # too slow or gone: drop it
                subscriber.close()

    # ------------------------------------------------------------------ services

    def dependencies_running(self, service: Service) -> bool:
        for dep in service.config.depends_on:
            other = self.services.get(dep)
            if other is None or other.state != "running":
                return False
            if other.config.health is not None and other.health != "healthy":
                return False
        return True

    def _stopped_file(self) -> Path:
        return self.state_dir / "stopped.json"

    def _manually_stopped(self) -> set[str]:
        try:
            return set(json.loads(self._stopped_file().read_text()))
        except (OSError, ValueError, TypeError):
            return set()

    def _remember_stopped(self, name: str, stopped: bool) -> None:
        names = self._manually_stopped()
        (names.add if stopped else names.discard)(name)
        temporary = self.state_dir / ".stopped.json.tmp"
        temporary.write_text(json.dumps(sorted(names)))
        os.replace(temporary, self._stopped_file())

    def _add(self, config: ServiceConfig, wanted: bool = True) -> Service:
        assert self._task_group is not None
        service = Service(self, config, wanted)
        self.services[config.name] = service
        self._task_group.start_soon(service.run)
        self.changes.notify()
        return service

    def _dependents(self, name: str) -> list[Service]:
        return [s for s in self.services.values() if name in s.config.depends_on]

    async def stop_many(self, services: list[Service]) -> None:
        """Stop ``services`` concurrently, each after the ones depending on it."""
        done = {s.name: anyio.Event() for s in services}

        async def stop_one(service: Service) -> None:
            try:
                for dependent in self._dependents(service.name):
                    if dependent.name in done:
                        await done[dependent.name].wait()
                await service.stop()
            finally:
                done[service.name].set()

        async with anyio.create_task_group() as tg:
            for service in services:
                tg.start_soon(stop_one, service)

    async def shutdown(self) -> None:
        self.shutting_down = True
        self.emit("supervisor_stopping", None)
        await self.stop_many(list(self.services.values()))
        self.emit("supervisor_stopped", None)
        for subscriber in list(self._subscribers):
            subscriber.close()
        self._subscribers.clear()
        with anyio.move_on_after(2):  # let event streams deliver what they hold
            await self.changes.wait_for(lambda: self._streaming == 0)

    async def reload(self) -> None:
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            self.emit("reload_failed", None, problems=exc.problems)
            log.emit("error", "supervise.reload_failed", error=str(exc))
            return
        old = self.config.services
        removed = [self.services[n] for n in old if n not in new.services]
        changed = [self.services[n] for n in old if n in new.services and new.services[n] != old[n]]
        added = [n for n in new.start_order() if n not in old]
        self.emit(
            "reloading",
            None,
            added=added,
            removed=[s.name for s in removed],
            changed=[s.name for s in changed],
        )
        await self.stop_many(removed + changed)
        for service in removed:
            service.removed = True
            del self.services[service.name]
        self.changes.notify()
        self.config = new
        for service in changed:
            service.config = new.services[service.name]
            service.log.settings = service.config.logs
            service.restarts = 0
            service.start()
        for name in added:
            self._add(new.services[name])
        self.reloads += 1
        self.emit("reloaded", None)

    # ------------------------------------------------------------------ main

    async def run(self, ready: Callable[[], None] | None = None) -> int:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _refuse_if_running(self.socket_path)
        # A supervisor lives long and restarts rarely: its fork helper is a fresh
        # interpreter from the start (~40 ms before the first container), not a fork
        # of the supervisor replaced after 128 starts.  Half the memory for every
        # clone to copy, and less held in all (docs/supervise.md).
        kwargs: dict[str, Any] = {"fresh_helper": True}
        if self._runtime_state_dir is not None:
            kwargs["state_dir"] = self._runtime_state_dir
        if self._cgroup_parent is not None:
            kwargs["cgroup_parent"] = self._cgroup_parent
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with Runtime(**kwargs) as runtime:
                self.runtime = runtime
                listener = await anyio.create_unix_listener(self.socket_path, mode=0o600)
                try:
                    async with anyio.create_task_group() as tg:
                        self._task_group = tg
                        tg.start_soon(self._serve, listener)
                        address = self.config.supervisor.metrics_address
                        if address is not None:
                            from vortex.supervise.metrics import serve_prometheus

                            await tg.start(serve_prometheus, self, address)
                        stopped = self._manually_stopped()
                        for name in self.config.start_order():
                            cfg = self.config.services[name]
                            keep_down = cfg.restart == "unless-stopped" and name in stopped
                            self._add(cfg, wanted=not keep_down)
                        self.emit("supervisor_started", None, pid=os.getpid())
                        if ready is not None:
                            tg.start_soon(self._ready_when_started, ready)
                        async for signum in signals:
                            if signum == signal.SIGHUP:
                                await self.reload()
                            else:
                                break
                        await self.shutdown()
                        tg.cancel_scope.cancel()
                finally:
                    with contextlib.suppress(OSError):
                        self.socket_path.unlink()
                    for service in self.services.values():
                        service.log.close()
        return 0

    async def _ready_when_started(self, ready: Callable[[], None]) -> None:
        await self.changes.wait_for(
            lambda: all(s.state not in ("pending", "starting") for s in self.services.values())
        )
        ready()

    # ------------------------------------------------------------------ control socket

    async def _serve(self, listener: anyio.abc.SocketListener) -> None:
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                buffered = BufferedByteReceiveStream(stream)
                line = await buffered.receive_until(b"\n", 65536)
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("request must be a JSON object")
                await self._dispatch(request, stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            except (ValueError, anyio.DelimiterNotFound, anyio.IncompleteRead) as exc:
                with contextlib.suppress(Exception):
                    await _send(stream, {"ok": False, "error": f"bad request: {exc}"})
            except Exception as exc:  # one bad request must not take the supervisor down
                log.emit("error", "supervise.request_failed", error=f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):
                    await _send(stream, {"ok": False, "error": f"internal error: {exc}"})

    def _service(self, request: dict[str, Any]) -> Service | None:
        name = request.get("name")
        return self.services.get(name) if isinstance(name, str) else None

    async def _dispatch(self, request: dict[str, Any], stream: anyio.abc.SocketStream) -> None:
        command = request.get("cmd")
        if command == "ps":
            services = [self.services[n] for n in self.config.start_order() if n in self.services]
            await _send(stream, {"ok": True, "containers": [s.describe() for s in services]})
        elif command == "status":
            await _send(stream, {"ok": True, **self.status()})
        elif command == "metrics":
            metrics = {n: s.metrics() for n, s in self.services.items()}
            await _send(stream, {"ok": True, "containers": metrics})
        elif command == "reload":
            await self.reload()
            await _send(stream, {"ok": True})
        elif command == "events":
            await self._stream_events(stream)
        elif command in ("stop", "start", "restart", "logs"):
            service = self._service(request)
            if service is None:
                name = request.get("name")
                await _send(stream, {"ok": False, "error": f"no container named {name!r}"})
            elif command == "logs":
                await self._stream_logs(service, request, stream)
            elif self.shutting_down:
                await _send(stream, {"ok": False, "error": "the supervisor is shutting down"})
            else:
                if command in ("stop", "restart"):
                    await service.stop()
                    self._remember_stopped(service.name, command == "stop")
                if command in ("start", "restart"):
                    self._remember_stopped(service.name, False)
                    runs = service.runs
                    service.start()
                    await self.changes.wait_for(
                        lambda: (
                            not service.wanted
                            or service.state == "waiting"
                            or (service.runs > runs and service.state != "starting")
                        )
                    )
                await _send(stream, {"ok": True, "container": service.describe()})
        else:
            await _send(stream, {"ok": False, "error": f"unknown command {command!r}"})

    def status(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for service in self.services.values():
            states[service.state] = states.get(service.state, 0) + 1
        return {
            "pid": os.getpid(),
            "config": str(self.config.path),
            "socket": str(self.socket_path),
            "log_dir": str(self.log_dir),
            "started_at": self.started,
            "uptime": round(time.time() - self.started, 3),
            "containers": len(self.services),
            "states": states,
            "reloads": self.reloads,
            "shutting_down": self.shutting_down,
        }

    async def _stream_events(self, stream: anyio.abc.SocketStream) -> None:
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](EVENT_BUFFER)
        self._subscribers.add(send)
        self._streaming += 1
        try:
            await _send(stream, {"ok": True})
            async with receive:
                async for event in receive:
                    await _send(stream, event)
        finally:
            self._subscribers.discard(send)
            send.close()
            self._streaming -= 1
            self.changes.notify()

    async def _stream_logs(
        self, service: Service, request: dict[str, Any], stream: anyio.abc.SocketStream
    ) -> None:
        lines = request.get("lines")
        count = lines if isinstance(lines, int) and not isinstance(lines, bool) else None
        follow = bool(request.get("follow"))
        send, receive = anyio.create_memory_object_stream[str](EVENT_BUFFER)

        def listener(line: str) -> None:
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                send.send_nowait(line)

        # Tail and subscribe with no await in between: no line lost or repeated.
        backlog = service.log.tail(count)
        if follow:
            service.log.listeners.add(listener)
        try:
            await _send(stream, {"ok": True})
            for line in backlog:
                await _send(stream, {"line": line})
            if follow:
                async with receive:
                    async for line in receive:
                        await _send(stream, {"line": line})
        finally:
            service.log.listeners.discard(listener)
            send.close()
            receive.close()


async def _send(stream: anyio.abc.SocketStream, message: dict[str, Any]) -> None:
    await stream.send(json.dumps(message).encode() + b"\n")


def _refuse_if_running(path: Path) -> None:
    """Another supervisor answers on ``path``: refuse; a stale socket is replaced."""
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return  # stale: anyio replaces it
    raise VortexError(f"a supervisor is already running on {path}")
