"""Resource limits: translate ``spec.resources`` into cgroup settings.

The core gives every container a cgroup (placement, statistics, kill); this
plugin is the policy of what goes in it.  It writes the limits before the
clone, so on cgroup v2 (CLONE_INTO_CGROUP) and v1 (attached before the init
continues) the command never runs a single instruction unlimited.
"""

from __future__ import annotations

import os

from vortex import records
from vortex.cgroups.base import Limits
from vortex.container import Container
from vortex.hookimpl_marker import hookimpl

NO_LIMITS = records.as_dict(Limits())


@hookimpl(tryfirst=True)
def vortex_prepare(container: Container) -> None:
    limits = container.spec.resources  # a Limits with Vortex's default memory limit
    if records.as_dict(limits) == NO_LIMITS:
        return
    if container.cgroup is None:
        # Rootless without a delegated cgroup: a requested limit is never skipped
        # silently.  (The CLI drops only its default memory limit, with a warning.)
        from vortex import rootless
        from vortex.errors import MissingControllerError

        raise MissingControllerError(
            rootless.LIMITS_UNAVAILABLE.format(uid=os.geteuid())
            + "; from the library, pass Resources(memory=None) to run without limits"
        )
    container.cgroup.apply(limits)
