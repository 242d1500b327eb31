"""Secure defaults: the policy half of vortex/security/ (docs/security.md).

From ``container.spec.security`` this plugin decides, for every container:
the docker default capabilities (14) with ``cap_add``/``cap_drop``,
no_new_privs, the default seccomp profile (or the user's, or none), the masked
and read-only paths, the default ``nofile`` rlimit plus ``--ulimit``s, a
read-only root with writable tmpfs where asked, and the device allow-list
(on v1 a devices cgroup it owns: created in ``vortex_post_cgroup``, removed in
``vortex_on_exit``; on v2 an eBPF device filter attached to the container's
cgroup in ``vortex_post_cgroup``, freed with the cgroup).  ``privileged``
turns each of these off.

It also decides the user namespace maps (``--userns``, rootless) and writes
them while the init waits; a ``--userns auto`` block is allocated in
``vortex_prepare`` and released with the container's state record
(vortex/userns.py).

Disabling the plugin (``--no-plugin security``) runs containers unconfined:
an explicit choice, never a silent one.
"""

from __future__ import annotations

import os
import stat
from _weakref import ReferenceType
from collections.abc import Awaitable

from vortex import log, rootless
from vortex.cgroups.base import Cgroup
from vortex.cgroups.v1 import V1Cgroup
from vortex.container import Container
from vortex.errors import SpecError
from vortex.hookimpl_marker import hookimpl
from vortex.ops import MountFilesystem, SetupOp
from vortex.result import RunResult
from vortex.security import capabilities, devices
from vortex.security.apply import write_id_maps
from vortex.security.default_profile import default_profile
from vortex.security.options import (
    AUTO_POOL_REMEDY,
    RLIMITS,
    SECCOMP_DEFAULT,
    SECCOMP_UNCONFINED,
    LiteralSecurity,
    auto_pool,
    user_namespace_range,
)
from vortex.security.policy import (
    DEFAULT_NOFILE,
    MASKED_PATHS,
    READONLY_PATHS,
    SecurityPolicy,
    clamp_to_host,
    maps_inside,
)
from vortex.security.seccomp import load_profile_file
from vortex.state import StateDir
from vortex.userns import IdRange

NAME = "security"
USERNS_BLOCK = NAME + ".userns_block"
"""plugin_data key: the (uid, gid) host ranges ``--userns auto`` allocated."""
READ_ONLY_TMPFS = ("/tmp", "/run", "/var/tmp")
_TMPFS_FLAGS = 2 | 4  # MS_NOSUID | MS_NODEV


@hookimpl
def vortex_pre_pivot(container: Container) -> list[SetupOp]:
    options = container.spec.security
    if options.literal is not None:
        return []  # a bundle's mounts are the spec's own (ContainerSpec.mounts)
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
    if options.literal is not None:
        _apply_literal(container, policy, options.literal)
        return
    policy.readonly_rootfs = options.read_only
    for name, (soft, hard) in options.ulimits.items():
        policy.rlimits[name] = (soft, hard)
    if "nofile" not in policy.rlimits:
        policy.rlimits["nofile"] = clamp_to_host(RLIMITS["nofile"], *DEFAULT_NOFILE)
    if rootless.is_rootless():
        # Rootless: always a user namespace (docs/security.md, "Rootless").
        _rootless_maps(container, policy)
    elif options.userns is not None:
        _check_reachable(os.fspath(container.spec.rootfs))
        if options.userns == "auto":
            (uid, uids), (gid, gids) = _allocated_block(container)
        else:
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


def _allocated_block(container: Container) -> tuple[IdRange, IdRange]:
    block = container.plugin_data.get(USERNS_BLOCK)
    if not isinstance(block, tuple):
        raise SpecError("--userns auto: no id block was allocated (vortex_prepare did not run)")
    uid_block, gid_block = block
    return uid_block, gid_block


def _rootless_maps(container: Container, policy: SecurityPolicy) -> None:
    options, user = container.spec.security, container.spec.user
    if options.userns == "auto":
        # A block of the caller's subordinate ids, without the caller (podman's
        # rootless --userns=auto): container root is an id no other container has.
        (uid, uids), (gid, gids) = _allocated_block(container)
        policy.uid_map, policy.gid_map = ((0, uid, uids),), ((0, gid, gids),)
        _check_reachable(os.fspath(container.spec.rootfs))
    elif options.userns is not None:
        raise SpecError(
            f"--userns {options.userns}: a rootless container maps the caller's own ids; "
            "use --userns auto for a block of your subordinate ids, or run vortex as root"
        )
    else:
        policy.uid_map, policy.gid_map = rootless.id_maps(rootless.subordinate_ids())
    policy.rootless = True
    if not (maps_inside(policy.uid_map, user.uid) and maps_inside(policy.gid_map, user.gid)):
        if len(policy.uid_map) == 1 and policy.uid_map[0][2] == 1:
            raise SpecError(
                f"--user {user.uid}:{user.gid}: a rootless container maps only uid and gid 0 "
                f"(the caller); give your user ranges in {rootless.SUBUID} and "
                f"{rootless.SUBGID} (and install newuidmap) or run vortex as root"
            )
        raise SpecError(
            f"--user {user.uid}:{user.gid}: not mapped in the rootless user namespace "
            f"(uids {rootless.describe_map(policy.uid_map)}; gids "
            f"{rootless.describe_map(policy.gid_map)})"
        )


def _allocate_userns_block(container: Container) -> None:
    """``--userns auto``: a block of ids for this container alone, recorded in the
    Runtime's state directory so that other Runtimes skip it."""
    state = container.state_dir
    if state is None:
        raise SpecError("--userns auto needs a Runtime's state directory to record its ids")
    # Refuse an unreachable rootfs before taking a block: a bad path is the clearer error.
    _check_reachable(os.fspath(container.spec.rootfs))
    if rootless.is_rootless():
        subids = rootless.require_subordinate_ids("--userns auto")
        uid_pool, gid_pool = subids.uids, subids.gids
        pool = f"the subordinate ids of {subids.owner} in {rootless.SUBUID} and {rootless.SUBGID}"
        remedy = f"ask for larger ranges in {rootless.SUBUID} and {rootless.SUBGID}"
    else:
        uid_range, gid_range, pool = auto_pool()
        uid_pool, gid_pool = (uid_range,), (gid_range,)
        remedy = AUTO_POOL_REMEDY
    block = state.userns.allocate(container.id, uid_pool, gid_pool, pool=pool, remedy=remedy)
    container.plugin_data[USERNS_BLOCK] = block
    log.emit("debug", "userns.allocated", container_id=container.id, uid=block[0], gid=block[1])


def _apply_literal(container: Container, policy: SecurityPolicy, literal: LiteralSecurity) -> None:
    """An OCI bundle's configuration: exactly what it says, no default added (docs/oci.md)."""
    if rootless.is_rootless():
        raise SpecError("OCI bundles need root for now: rootless bundles are not supported yet")
    if literal.uid_map:
        _check_reachable(os.fspath(container.spec.rootfs))
    if literal.capabilities is not None:
        policy.capabilities = set(literal.capabilities)
        policy.bounding = set(literal.bounding)
        policy.effective = set(literal.effective)
        policy.inheritable = set(literal.inheritable)
        policy.ambient = set(literal.ambient)
    policy.no_new_privs = literal.no_new_privileges
    policy.seccomp = dict(literal.seccomp) if literal.seccomp is not None else None
    policy.masked_paths = list(literal.masked_paths)
    policy.readonly_paths = list(literal.readonly_paths)
    policy.readonly_rootfs = literal.read_only
    policy.rlimits = dict(literal.rlimits)
    policy.restrict_devices = literal.restrict_devices
    policy.uid_map, policy.gid_map = literal.uid_map, literal.gid_map
    policy.groups, policy.umask = literal.groups, literal.umask
    policy.oom_score_adj = literal.oom_score_adj


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


# The StateDirs (one per Runtime) whose sweep is done, held weakly so that a new
# Runtime's never passes for a dead one's.  A list of references rather than a
# weakref.WeakSet: the weakref module is ~1 ms of a cold ``vortex run``.
_devices_swept_for: list[ReferenceType[StateDir]] = []


def _sweep_stale_devices_once(container: Container, cgroup: V1Cgroup) -> None:
    """Once per Runtime (its StateDir), at its first start: a sweep reads every
    sibling directory, so on each start it would cost in proportion to the
    containers running.  What a Runtime dying later leaves, the next one sweeps."""
    runtime_state = container.state_dir
    if runtime_state is not None:
        _devices_swept_for[:] = [r for r in _devices_swept_for if r() is not None]
        if any(r() is runtime_state for r in _devices_swept_for):
            return
        _devices_swept_for.append(ReferenceType(runtime_state))
    for stale in devices.sweep_stale(_v1_paths(cgroup), cgroup.mounts):
        log.emit("info", "devices.swept", directory=stale)


@hookimpl
def vortex_prepare(container: Container) -> None:
    cgroup = container.cgroup
    if isinstance(cgroup, V1Cgroup) and cgroup.path("devices") is None:
        _sweep_stale_devices_once(container, cgroup)
    if container.spec.security.userns == "auto":
        _allocate_userns_block(container)


@hookimpl(specname="vortex_post_cgroup", tryfirst=True)
def post_cgroup_id_maps(container: Container) -> Awaitable[None] | None:
    """Write the user namespace maps first, so later post_cgroup hooks see them.

    The init waits on its sync pipe until every post_cgroup hook is done.  Only
    rootless maps with subordinate ids run newuidmap/newgidmap (a few ms each):
    that case returns an awaitable, which the Runtime awaits (a direct run gives
    it an event loop of its own); every other case is written here and now.
    """
    policy = container.plugin_data.get(NAME)
    if not isinstance(policy, SecurityPolicy) or not policy.uid_map or container.pid is None:
        return None
    if policy.rootless and not rootless.maps_own_ids_only(policy.uid_map, policy.gid_map):
        return rootless.write_id_maps(container.pid, policy.uid_map, policy.gid_map)
    write_id_maps(container.pid, policy.uid_map, policy.gid_map, deny_setgroups=policy.rootless)
    return None


@hookimpl
def vortex_post_cgroup(container: Container) -> None:
    policy = container.plugin_data.get(NAME)
    if not isinstance(policy, SecurityPolicy):
        return
    if not policy.restrict_devices:
        return
    cgroup = container.cgroup
    if cgroup is None or container.pid is None:
        return  # rootless without a delegated cgroup: only the nodev mounts guard devices
    if not isinstance(cgroup, V1Cgroup):
        _attach_device_filter(container, policy, cgroup)
        return
    owned = cgroup.path("devices")
    if owned is not None:  # the cgroup backend manages the devices hierarchy itself
        devices.restrict(owned)
        return
    directory = devices.v1_devices_dir(_v1_paths(cgroup), cgroup.mounts)
    if directory is None:
        return
    devices.create_restricted(directory)
    container.plugin_data[NAME + ".devices"] = directory
    devices.attach(directory, container.pid)


def _attach_device_filter(container: Container, policy: SecurityPolicy, cgroup: Cgroup) -> None:
    """cgroup v2: the allow-list as an eBPF program on the container's cgroup.

    The init still waits on its sync pipe, so the filter is in place before the
    container runs anything.  Imported here: the ctypes wrappers cost import
    time, and only v2 hosts need them.
    """
    from vortex.cgroups.v2 import V2Cgroup

    if not isinstance(cgroup, V2Cgroup):
        return
    if policy.rootless:
        # bpf(2) needs CAP_SYS_ADMIN (or CAP_BPF) in the initial user namespace, which
        # a rootless runtime never has: the nodev mounts are the barrier there.
        return
    from vortex.security import bpf_devices

    program = bpf_devices.install(cgroup.path, devices.ALLOWED_DEVICES)
    log.emit("debug", "devices.filter_attached", container_id=container.id, program_id=program)


@hookimpl
def vortex_on_exit(container: Container, result: RunResult) -> None:
    directory = container.plugin_data.pop(NAME + ".devices", None)
    if isinstance(directory, str):
        try:
            devices.remove(directory)
        except Exception as exc:
            log.emit("error", "devices.remove_failed", container_id=container.id, error=str(exc))
            raise
