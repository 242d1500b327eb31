"""Networking: for now, loopback up in the container's own network namespace.

Bridge networking with published ports will grow here (a veth moved into the
container in ``vortex_post_cgroup``, removed in ``vortex_on_exit``).
"""

from __future__ import annotations

from vortex.container import Container
from vortex.hookimpl_marker import hookimpl
from vortex.ops import LoopbackUp, SetupOp


@hookimpl
def vortex_pre_pivot(container: Container) -> list[SetupOp]:
    return [LoopbackUp()]
