"""Prometheus text exposition (format 0.0.4) of the supervisor's metrics.

Served over plain HTTP/1.0 on a loopback address when ``[supervisor]
metrics_address`` is set; any path answers with the metrics.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

if TYPE_CHECKING:
    from vortex.supervise.supervisor import Supervisor

_METRICS = (
    ("running", "vortex_container_running", "gauge", "1 if the container runs"),
    ("restarts", "vortex_container_restarts_total", "counter", "restarts done by the policy"),
    ("memory_current", "vortex_container_memory_bytes", "gauge", "memory in use (cgroup)"),
    ("memory_peak", "vortex_container_memory_peak_bytes", "gauge", "peak memory (cgroup)"),
    ("cpu_seconds", "vortex_container_cpu_seconds_total", "counter", "CPU time (cgroup)"),
    ("pids", "vortex_container_pids", "gauge", "processes in the container"),
)


def render(metrics: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for key, metric, kind, help_text in _METRICS:
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        for name in sorted(metrics):
            value = metrics[name].get(key)
            if value is not None:
                label = name.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{metric}{{name="{label}"}} {value}')
    return "\n".join(lines) + "\n"


async def serve_prometheus(
    supervisor: Supervisor,
    address: tuple[str, int],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    host, port = address
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(Exception), anyio.move_on_after(5):
                request = b""
                while b"\r\n\r\n" not in request and b"\n\n" not in request:
                    request += await stream.receive()
                    if len(request) > 8192:
                        return
                body = render({n: s.metrics() for n, s in supervisor.services.items()}).encode()
                head = (
                    "HTTP/1.0 200 OK\r\n"
                    "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                await stream.send(head.encode() + body)

    task_status.started()
    async with listener:
        await listener.serve(handle)
