"""Lifecycle events through structlog: created, started, exited."""

from __future__ import annotations

import os

from vortex import log
from vortex.container import Container
from vortex.hookimpl_marker import hookimpl
from vortex.result import RunResult


@hookimpl(trylast=True)
def vortex_prepare(container: Container) -> None:
    log.emit(
        "info",
        "container.created",
        container_id=container.id,
        name=container.name,
        rootfs=os.fspath(container.spec.rootfs),
        command=list(container.spec.command),
    )


@hookimpl
def vortex_post_start(container: Container) -> None:
    log.emit(
        "info",
        "container.started",
        container_id=container.id,
        name=container.name,
        pid=container.pid,
    )


@hookimpl(trylast=True)
def vortex_on_exit(container: Container, result: RunResult) -> None:
    if result.error is not None:
        log.emit(
            "info",
            "container.failed",
            container_id=container.id,
            name=container.name,
            error=result.error,
        )
        return
    log.emit(
        "warning" if result.oom_killed else "info",
        "container.exited",
        container_id=container.id,
        name=container.name,
        exit_code=result.exit_code,
        signal=result.signal_name,
        oom_killed=result.oom_killed,
        wall_time=round(result.wall_time, 6),
        cpu_time=result.cpu_time,
        memory_peak=result.memory_peak,
    )
