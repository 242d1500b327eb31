"""Resource limits: translate ``spec.resources`` into cgroup settings.

The core gives every container a cgroup (placement, statistics, kill); this
plugin is the policy of what goes in it.  It writes the limits before the
clone, so on cgroup v2 (CLONE_INTO_CGROUP) and v1 (attached before the init
continues) the command never runs a single instruction unlimited.
"""

from __future__ import annotations

from vortex.cgroups.base import Limits
from vortex.container import Container
from vortex.hookspecs import hookimpl


@hookimpl(tryfirst=True)
def vortex_prepare(container: Container) -> None:
    resources = container.spec.resources
    limits = Limits(memory=resources.memory, pids=resources.pids, cpus=resources.cpus)
    if container.cgroup is not None and limits != Limits():
        container.cgroup.apply(limits)
