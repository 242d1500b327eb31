"""An example Vortex plugin: copy this package to start your own.

Three hooks, each in the process and at the moment described in
``docs/plugin-hooks.md`` of the Vortex repository:

- ``vortex_pre_pivot`` makes the container's init write /etc/vortex-example
  (the container's name) before ``pivot_root``;
- ``vortex_post_cgroup`` (async) records the host PID of the container's init;
- ``vortex_on_exit`` appends one JSON line per container to the file named by
  the ``VORTEX_EXAMPLE_LOG`` environment variable, if it is set.
"""

from __future__ import annotations

import json
import os

import anyio.lowlevel

from vortex.container import Container
from vortex.hookspecs import hookimpl  # also importable as vortex.hookimpl
from vortex.ops import SetupOp, WriteFile
from vortex.result import RunResult

NAME = "example"
"""The entry-point name in pyproject.toml: the plugin's name and its ``plugin_data`` key."""
LOG_ENV = "VORTEX_EXAMPLE_LOG"
"""The environment variable (of the Runtime's process) naming the JSON-lines log."""


@hookimpl
def vortex_pre_pivot(container: Container) -> list[SetupOp]:
    # Runs in the Runtime before the clone and only *describes* work: the container's
    # init performs it.  Paths are container paths.  Note that the rootfs is the
    # user's directory, bind-mounted: the file stays in it after the container.
    return [WriteFile("/etc/vortex-example", f"{container.name}\n".encode())]


@hookimpl
async def vortex_post_cgroup(container: Container) -> None:
    # The init exists and waits until every post_cgroup hook has returned, so an
    # async hook (netlink, an HTTP call) is awaited before the command starts.
    await anyio.lowlevel.checkpoint()  # stands in for real asynchronous work
    container.plugin_data[NAME] = {"pid": container.pid}


@hookimpl
def vortex_on_exit(container: Container, result: RunResult) -> None:
    # Called once per container, also when its start failed: then result.error is set
    # and vortex_post_cgroup may not have run, so nothing recorded there is certain.
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    recorded = container.plugin_data.get(NAME)
    record = {
        "id": container.id,
        "name": container.name,
        "pid": recorded.get("pid") if isinstance(recorded, dict) else None,
        "exit_code": result.exit_code,
        "signal": result.signal,
        "status": result.status,
        "oom_killed": result.oom_killed,
        "wall_time": round(result.wall_time, 6),
        "error": result.error,
    }
    # Sync hooks run on the Runtime's event loop: one short append is fine, slow
    # I/O belongs in an ``async def`` hook (e.g. via anyio.to_thread.run_sync).
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
