"""Container cgroups: the backend interface and the choice between v1 and v2.

The runtime calls :func:`detect` once and then only talks to the
:class:`CgroupBackend` / :class:`Cgroup` interface.  The backends live in
:mod:`vortex.cgroups.v1` and :mod:`vortex.cgroups.v2` and are imported by
:func:`detect` on demand; everything here is stdlib-only because it is on the
CLI's cold-start path.
"""

from __future__ import annotations

import os

from vortex.cgroups._common import DEFAULT_PARENT, DEFAULT_ROOT, find_v1_hierarchies
from vortex.cgroups.base import Cgroup, CgroupBackend, CgroupStats, DeviceLimit, Limits
from vortex.errors import CgroupError, MissingControllerError

__all__ = [
    "Cgroup",
    "CgroupBackend",
    "CgroupError",
    "CgroupStats",
    "DeviceLimit",
    "Limits",
    "MissingControllerError",
    "detect",
]


def detect(root: str = DEFAULT_ROOT, parent: str = DEFAULT_PARENT) -> CgroupBackend:
    """The backend for this host: v2 on a pure unified host, else v1.

    ``parent`` is a path below the root, or ``auto``: on v2, a cgroup systemd
    delegated to us when we run in one (see :func:`vortex.cgroups.v2.resolve_parent`),
    else ``vortex``.

    ``root`` is a cgroup2 mount exactly when it has ``cgroup.controllers``.  A
    hybrid host (v1 controllers under ``root/<ctrl>`` and a mostly empty
    cgroup2 at ``root/unified``) has no such file at ``root`` and uses v1,
    because the controllers that enforce limits are bound to v1 there.
    """
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        from vortex.cgroups.v2 import V2Backend, resolve_parent

        return V2Backend(root, resolve_parent(root, parent))
    if parent == "auto":
        parent = DEFAULT_PARENT
    hierarchies = find_v1_hierarchies(root)
    if "memory" in hierarchies:
        from vortex.cgroups.v1 import V1Backend

        return V1Backend(root, parent, hierarchies=hierarchies)
    raise CgroupError(
        f"no usable cgroup hierarchy at {root}: it is not a cgroup2 mount (no "
        f"cgroup.controllers) and no cgroup v1 memory hierarchy is mounted below it; "
        f"mount cgroup2 on {root} (or the v1 controllers below it)"
    )
