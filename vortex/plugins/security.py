"""Secure defaults: the policy half of vortex/security/ (docs/security.md).

From ``container.spec.security`` this plugin decides, for every container:
the docker default capabilities (14) with ``cap_add``/``cap_drop``,
no_new_privs, the default seccomp profile (or the user's, or none), the masked
and read-only paths, the default ``nofile`` rlimit plus ``--ulimit``s, a
read-only root with writable tmpfs where asked, and the device allow-list
(a v1 devices cgroup it owns: created in ``vortex_post_cgroup``, removed in
``vortex_on_exit``).  ``privileged`` turns each of these off.

Disabling the plugin (``--no-plugin security``) runs containers unconfined:
an explicit choice, never a silent one.
"""

from __future__ import annotations

import os
import stat

from vortex import log, rootless
from vortex.cgroups.v1 import V1Cgroup
from vortex.container import Container
from vortex.errors import SpecError
from vortex.hookspecs import hookimpl
from vortex.ops import MountFilesystem, SetupOp
from vortex.result import RunResult
from vortex.security import capabilities, devices
from vortex.security.apply import write_id_maps
from vortex.security.default_profile import default_profile
from vortex.security.options import (
    RLIMITS,
    SECCOMP_DEFAULT,
    SECCOMP_UNCONFINED,
    user_namespace_range,
)
from vortex.security.policy import (
    DEFAULT_NOFILE,
    MASKED_PATHS,
    READONLY_PATHS,
    SecurityPolicy,
    clamp_to_host,
)
from vortex.security.seccomp import load_profile_file

NAME = "security"
READ_ONLY_TMPFS = ("/tmp", "/run", "/var/tmp")
_TMPFS_FLAGS = 2 | 4  # MS_NOSUID | MS_NODEV


@hookimpl
def vortex_pre_pivot(container: Container) -> list[SetupOp]:
    options = container.spec.security
    if options.read_only and options.read_only_tmpfs:
        return [
            MountFilesystem("tmpfs", path, "mode=1777,size=65536k", _TMPFS_FLAGS)
            for path in READ_ONLY_TMPFS
        ]
    return []


@hookimpl(tryfirst=True)
def vortex_security(container: Container, policy: SecurityPolicy) -> None:
    options = container.spec.security
    container.plugin_data[NAME] = policy
    policy.readonly_rootfs = options.read_only
    for name, (soft, hard) in options.ulimits.items():
        policy.rlimits[name] = (soft, hard)
    if "nofile" not in policy.rlimits:
        policy.rlimits["nofile"] = clamp_to_host(RLIMITS["nofile"], *DEFAULT_NOFILE)
    if rootless.is_rootless():
        # Rootless: always a user namespace whose root is the caller (docs/security.md).
        if options.userns is not None:
            raise SpecError(
                "--userns: rootless containers map only the caller's own uid and gid; "
                "drop --userns or run vortex as root"
            )
        user = container.spec.user
        if user.uid != 0 or user.gid != 0:
            raise SpecError(
                f"--user {user.uid}:{user.gid}: a rootless container maps only uid and gid 0 "
                f"(the caller); run vortex as root for other users"
            )
        policy.uid_map, policy.gid_map = rootless.id_maps()
        policy.rootless = True
    elif options.userns is not None:
        _check_reachable(str(container.spec.rootfs))
        (uid, uids), (gid, gids) = user_namespace_range(options.userns)
        policy.uid_map = ((0, uid, uids),)
        policy.gid_map = ((0, gid, gids),)
    if options.privileged:
        # Every capability the Runtime itself holds, no filter, nothing hidden.
        policy.capabilities = set(capabilities.known_capabilities())
        # docker never sets no_new_privs for --privileged; neither do we.
        policy.no_new_privs = False
        return
    policy.capabilities = set(
        capabilities.resolve(capabilities.DEFAULT_CAPABILITIES, options.cap_add, options.cap_drop)
    )
    policy.inheritable = set()
    policy.ambient = set()
    policy.no_new_privs = options.no_new_privileges
    if isinstance(options.seccomp, str):
        if options.seccomp == SECCOMP_DEFAULT:
            policy.seccomp = default_profile()
        elif options.seccomp == SECCOMP_UNCONFINED:
            policy.seccomp = None
        else:
            policy.seccomp = load_profile_file(options.seccomp)
    else:
        policy.seccomp = dict(options.seccomp)
    unmask = set(options.unmask)
    if "ALL" not in unmask:
        policy.masked_paths = [p for p in MASKED_PATHS if p not in unmask]
        policy.readonly_paths = [p for p in READONLY_PATHS if p not in unmask]
    policy.restrict_devices = True


def _check_reachable(rootfs: str) -> None:
    """In a user namespace the init is an unprivileged host id: every directory on
    the way to the rootfs must be searchable by others (o+x)."""
    path = os.path.realpath(rootfs)
    while True:
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH:
            raise SpecError(
                f"--userns: {path} is not searchable by the container's unprivileged ids; "
                f"run 'chmod o+x {path}' or move the rootfs"
            )
        if path == "/":
            return
        path = os.path.dirname(path)


def _v1_paths(cgroup: V1Cgroup) -> dict[str, str]:
    return {c: p for c in ("memory", "pids", "cpu", "freezer") if (p := cgroup.path(c))}


@hookimpl
def vortex_prepare(container: Container) -> None:
    cgroup = container.cgroup
    if isinstance(cgroup, V1Cgroup) and cgroup.path("devices") is None:
        for stale in devices.sweep_stale(_v1_paths(cgroup)):
            log.emit("info", "devices.swept", directory=stale)


@hookimpl
def vortex_post_cgroup(container: Container) -> None:
    policy = container.plugin_data.get(NAME)
    if not isinstance(policy, SecurityPolicy):
        return
    if policy.uid_map and container.pid is not None:
        # The init waits on its sync pipe until every post_cgroup hook is done.
        write_id_maps(container.pid, policy.uid_map, policy.gid_map, deny_setgroups=policy.rootless)
    if not policy.restrict_devices:
        return
    cgroup = container.cgroup
    if not isinstance(cgroup, V1Cgroup) or container.pid is None:
        return  # v2: the nodev root does the job (see vortex/security/devices.py)
    owned = cgroup.path("devices")
    if owned is not None:  # the cgroup backend manages the devices hierarchy itself
        devices.restrict(owned)
        return
    directory = devices.v1_devices_dir(_v1_paths(cgroup))
    if directory is None:
        return
    devices.create_restricted(directory)
    container.plugin_data[NAME + ".devices"] = directory
    devices.attach(directory, container.pid)


@hookimpl
def vortex_on_exit(container: Container, result: RunResult) -> None:
    directory = container.plugin_data.pop(NAME + ".devices", None)
    if isinstance(directory, str):
        try:
            devices.remove(directory)
        except Exception as exc:
            log.emit("error", "devices.remove_failed", container_id=container.id, error=str(exc))
            raise
