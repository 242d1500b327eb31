"""The steps of a container's life that need no event loop.

Two drivers run containers: the async :class:`vortex.Runtime` (many
containers, one event loop, a fork helper) and :mod:`vortex.direct` (one
container, no event loop, for ``vortex run``).  Both go through these
functions, so a spec means the same thing whichever runs it:

- :func:`open_host`: plugins, cgroup backend, state directory (and the sweep of
  what a dead Runtime left);
- :func:`new_container`: id, state record, cgroup;
- :func:`plan_setup`: ``vortex_pre_pivot`` and ``vortex_security`` hooks;
- :func:`spawn_request`: what the cloned init is told to do;
- :func:`wall_time`, :func:`collect_result` and :func:`release`: after the
  init was reaped.

The hooks that may be async (``prepare``, ``post_cgroup``, ``post_start``,
``on_exit``) are called by each driver in its own way.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

from vortex import _linux as L
from vortex import cgroups, log, rootless
from vortex.container import Container
from vortex.errors import VortexError
from vortex.helper.plan import InitPlan, SpawnRequest
from vortex.pluginmanager import call_sync
from vortex.records import record
from vortex.result import RunResult
from vortex.security.policy import SecurityPolicy
from vortex.state import DEFAULT_STATE_DIR, ContainerRecord, StateDir

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from vortex.ops import SetupOp
    from vortex.pluginmanager import Plugins
    from vortex.spare import SpareInit
    from vortex.spec import ContainerSpec

OUTPUT_DRAIN_TIMEOUT = 5.0
"""How long output (pipes, the terminal) may still be read once the init is reaped:
a process that escaped the container's end could hold them open forever."""

NAMESPACE_FLAGS = L.CLONE_NEWPID | L.CLONE_NEWNS | L.CLONE_NEWUTS | L.CLONE_NEWNET | L.CLONE_NEWIPC
"""Namespaces created at clone.  The cgroup namespace is unshared by the init
once it is in its cgroup, so that its own cgroup is its root on v1 as well."""


@record(frozen=False)
class Host:
    """What a driver sets up once and then uses for every container."""

    plugin_manager: Plugins
    """pluggy's manager, or the built-ins' table (vortex.pluginmanager.BuiltinPlugins)."""
    cgroups: cgroups.CgroupBackend | None
    """None for a rootless caller without a delegated cgroup: containers get none."""
    state: StateDir
    cgroup_root: str

    def remove_stale_cgroup(self, record: ContainerRecord) -> None:
        """Remove the cgroup a dead Runtime left, under whichever parent it used."""
        if self.cgroups is None or not record.cgroup_parent:
            return  # rootless without a cgroup: nothing was created
        backend = self.cgroups
        try:
            if record.cgroup_parent != backend.parent:
                backend = cgroups.detect(self.cgroup_root, record.cgroup_parent)
            backend.open(record.cgroup).remove()
        except VortexError as exc:
            log.emit("warning", "cgroup.sweep_failed", cgroup=record.cgroup, error=str(exc))


def open_host(
    plugins: Plugins,
    *,
    cgroup_root: str = "/sys/fs/cgroup",
    cgroup_parent: str = "auto",
    state_dir: str = DEFAULT_STATE_DIR,
) -> Host:
    """With the plugins the driver loaded: pick the cgroup backend, open the state
    directory and sweep the containers of Runtimes that died (their cgroups and
    records)."""
    if rootless.is_rootless():
        rootless.check_user_namespaces()
        if state_dir == DEFAULT_STATE_DIR:
            state_dir = rootless.state_dir()
    backend = None
    if not rootless.is_rootless():
        backend = cgroups.detect(cgroup_root, cgroup_parent)
    elif (delegated := rootless.delegated_cgroup_parent(cgroup_root)) is not None:
        backend = cgroups.detect(cgroup_root, delegated)
    host = Host(plugins, backend, StateDir(state_dir), cgroup_root)
    for swept in host.state.sweep_stale(host.remove_stale_cgroup):
        log.emit("info", "container.swept", container_id=swept)
    return host


def new_container(host: Host, spec: ContainerSpec, spare: SpareInit | None = None) -> Container:
    """Validate ``spec``; a Container with its id, state record and (empty) cgroup,
    or with those ``spare`` came with (vortex/spare.py; its init is in the cgroup).

    On failure nothing is left behind (and ``spare`` is untouched); on success
    :func:`release` undoes it.
    """
    spec.validate()
    # A spare without an id (no cgroups: rootless) is a process only: the container
    # gets its own.
    taken = spare.container_id if spare is not None else None
    # What secrets.token_hex(16) returns, without importing hmac and hashlib
    # (~3-4 ms of a cold start) for it.
    container_id = taken if taken is not None else os.urandom(16).hex()
    container = Container(
        spec,
        container_id,
        name=spec.name or container_id[:12],
        hostname=spec.hostname or container_id[:12],
    )
    container.state_dir = host.state
    parent = host.cgroups.parent if host.cgroups is not None else ""
    if spare is not None and taken is not None:
        if container.name != container_id[:12]:  # the spare recorded the default name
            host.state.record(container_id, container.name, container_id, parent)
        container.cgroup = spare.cgroup
        return container
    host.state.record(container_id, container.name, container_id, parent)
    if host.cgroups is not None:
        try:
            container.cgroup = host.cgroups.create(container_id)
        except BaseException:
            host.state.forget(container_id)
            raise
    return container


def plan_setup(host: Host, container: Container) -> list[SetupOp]:
    """Ask the ``vortex_pre_pivot`` hooks for the init's setup operations and the
    ``vortex_security`` hooks for its confinement (kept on ``container.security``)."""
    pm = host.plugin_manager
    plan_ops: list[SetupOp] = list(container.spec.mounts)
    for contributed in call_sync(pm, "vortex_pre_pivot", container=container):
        plan_ops.extend(contributed)
    policy = SecurityPolicy()  # unconfined until vortex_security hooks decide
    call_sync(pm, "vortex_security", container=container, policy=policy)
    container.security = policy.compile()
    return plan_ops


def spawn_request(
    container: Container,
    plan_ops: Iterable[SetupOp],
    *,
    has_console_socket: bool = False,
    has_cgroup_fd: bool = False,
) -> SpawnRequest:
    """What the init is cloned with (its fds travel separately, see FD_ORDER)."""
    spec, security = container.spec, container.security
    plan = InitPlan(
        rootfs=os.fspath(spec.rootfs),
        argv=tuple(spec.command),
        env=tuple(spec.env.items()),
        workdir=spec.workdir,
        uid=spec.user.uid,
        gid=spec.user.gid,
        hostname=container.hostname,
        tty=spec.tty,
        ops=tuple(plan_ops),
        security=security,
    )
    userns = security is not None and security.userns
    return SpawnRequest(
        plan=plan,
        clone_flags=NAMESPACE_FLAGS | (L.CLONE_NEWUSER if userns else 0),
        has_console_socket=has_console_socket,
        has_cgroup_fd=has_cgroup_fd,
    )


def wall_time(cloned_at: float) -> float:
    """Seconds from the clone (``cloned_at``, ``time.monotonic()``; 0 when there was
    none) until now: called right after the init was reaped."""
    return time.monotonic() - cloned_at if cloned_at else 0.0


def collect_result(
    container: Container,
    info: os.waitid_result | None,
    *,
    wall_time: float,
    stdout: bytes | None = None,
    stderr: bytes | None = None,
    error: str | None = None,
) -> RunResult:
    """The RunResult of a reaped init (``info``; None when it never started), with the
    statistics of its cgroup.

    They are final: nothing of the container runs any more.  Every container has
    a PID namespace of its own (:data:`NAMESPACE_FLAGS`), and the kernel kills
    and reaps all of a namespace's processes, nested namespaces' included,
    before its init can be reaped.  Only a process moved into the cgroup from
    outside could be left; :func:`release` kills it (the cgroup is busy), so
    the exit is not delayed by a sweep of the cgroup (0.13 ms of each exit
    notification on v1) that finds nothing."""
    cgroup = container.cgroup
    stats = None
    if cgroup is not None:
        try:
            stats = cgroup.stats(result_only=True)
        except VortexError as exc:
            log.emit("warning", "cgroup.stats_failed", container_id=container.id, error=str(exc))
    exit_code = sig = None
    if info is not None:
        if info.si_code == os.CLD_EXITED:
            exit_code = info.si_status
        else:
            sig = info.si_status
    oom = bool(stats and stats.oom_kills) and (sig == signal.SIGKILL or exit_code == 137)
    return RunResult(
        container_id=container.id,
        name=container.name,
        exit_code=exit_code,
        signal=sig,
        oom_killed=oom,
        wall_time=wall_time,
        cpu_time=stats.cpu_time if stats else None,
        memory_peak=stats.memory_peak if stats else None,
        oom_kills=stats.oom_kills if stats else 0,
        pids_peak=stats.pids_peak if stats else None,
        cpu_throttled_periods=stats.cpu_throttled_periods if stats else None,
        cpu_throttled_time=stats.cpu_throttled_time if stats else None,
        io_read_bytes=stats.io_read_bytes if stats else None,
        io_write_bytes=stats.io_write_bytes if stats else None,
        stdout=stdout,
        stderr=stderr,
        error=error,
    )


def release(host: Host, container: Container) -> None:
    """After the exit hooks: remove the cgroup and the state record."""
    release_id(host, container.id, container.cgroup)


def release_id(host: Host, container_id: str, cgroup: cgroups.Cgroup | None) -> None:
    """Remove ``cgroup`` (if any) and the state record of ``container_id``: a
    container's after its exit, or an unused spare's (vortex/spare.py)."""
    if cgroup is not None:
        try:
            cgroup.remove()
        except VortexError as exc:
            log.emit("error", "cgroup.remove_failed", container_id=container_id, error=str(exc))
    host.state.forget(container_id)


def describe_failure(exc: BaseException) -> str:
    """``RunResult.error`` for a start that raised ``exc``."""
    if isinstance(exc, VortexError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
