"""The Runtime: one anyio event loop's view of its containers.

It owns the fork helper, the plugin manager and the cgroup backend, and one
watcher task per container that awaits the container's pidfd, reaps it with
``waitid(P_PIDFD)`` and runs the exit hooks.  No SIGCHLD handler, no polling
and no thread per container.

Starting a container, step by step (see also vortex/hookspecs.py):

1. validate the spec, create the container's cgroup, ``vortex_prepare``;
2. ``vortex_pre_pivot`` → the setup plan; ``vortex_security`` → the security policy;
3. the helper clones the init (CLONE_PARENT: it is *our* child), into its
   cgroup directly on v2 (CLONE_INTO_CGROUP); on v1 we attach it now, while
   it waits on the sync pipe.  Usually the init was cloned ahead: the
   container took the Runtime's spare (vortex/spare.py) and its request goes
   there; the helper clones the next spare meanwhile, or after the exit
   when starts come one at a time (``Runtime._next_spare_at_exit``);
4. ``vortex_post_cgroup``; then one byte on the sync pipe lets it go on;
5. the error pipe (close-on-exec in the init) closes on a successful exec, or
   carries the reason it failed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import pluggy

from vortex import cgroups, log
from vortex.cgroups import warmup
from vortex.container import Container
from vortex.errors import VortexError
from vortex.helper.client import ForkHelper, can_renew
from vortex.launch import Launch
from vortex.lifecycle import (
    Host,
    collect_result,
    describe_failure,
    new_container,
    open_host,
    plan_setup,
    release,
    wall_time,
)
from vortex.ops import brings_loopback_up
from vortex.pluginmanager import call_async, load_plugins
from vortex.result import RunResult
from vortex.spare import SpareInit, may_take
from vortex.spec import ContainerSpec
from vortex.standard_fds import open_standard_fds
from vortex.state import DEFAULT_STATE_DIR, StateDir

if TYPE_CHECKING:
    from vortex.cgroups.oom import OomWatch

RENEW_HELPER_AFTER = 128
"""Starts after which a Runtime replaces its forked helper by a fresh interpreter
(``fresh_helper=None``).  The renewal costs ~40 ms of CPU once, on another core, and
saves ~0.3 ms of CPU per container after it (measured on this project's 2-core VM):
by the time a Runtime has started as many containers as it takes to earn that
back, it most likely lives on.  One that starts fewer never pays."""


SPARE_AHEAD_AFTER = 0.05
"""Seconds a spare cloned beside a running container waits for its request before it
works ahead (vortex/spare.py): far longer than a start (~6 ms back to back), so
that back to back it never does, while one that waits for a restart now and then
(a supervisor's) still does."""


class Runtime:
    """Runs containers.  Use as ``async with Runtime() as rt: await rt.run(spec)``.

    :param plugins: extra plugin objects to register (modules or instances).
    :param disabled_plugins: names of plugins not to load (e.g. ``["net"]``).
    :param entry_points: load third-party plugins from the ``vortex`` entry-point group.
    :param cgroup_root: where the cgroup hierarchies are mounted.
    :param cgroup_parent: the cgroup under which container cgroups are created, below
        ``cgroup_root``; ``auto`` (the default) is ``vortex``, or on cgroup v2 inside a
        systemd unit with ``Delegate=yes`` the unit's own cgroup (docs/cgroups.md).
    :param spare_init: keep the next container's init cloned ahead (vortex/spare.py):
        ~1.5 ms less per start, for one waiting process per Runtime.
    :param spare_prefault: have a waiting spare take the copy-on-write faults its
        init will take (vortex/helper/prefault.py): at once when it was cloned while
        no container runs, else once it has waited :data:`SPARE_AHEAD_AFTER`
        without its request.  ~0.6 ms less for a start after a pause, for ~1 MiB
        more held by the waiting spare, most of which its init would copy anyway.
        Back-to-back starts never use it.
    :param fresh_helper: whether the fork helper is a fresh interpreter
        (vortex/helper/__main__.py) or a fork of this process.  A fresh one makes
        every clone and exit cheaper (~5% more containers/s back to back here, more
        in a larger program), but takes ~40 ms to start.  ``None`` (the default): a
        fork first, so that the Runtime is ready at once, replaced by a fresh
        interpreter started in the background once the Runtime has started
        :data:`RENEW_HELPER_AFTER` containers (a Runtime that lives on), where
        ``sys.executable`` is a Python (not in a frozen program or one that embeds
        Python).  ``True``: fresh from the start (``vortex daemon``).  ``False``: the
        fork for good.
    """

    def __init__(
        self,
        *,
        plugins: Iterable[object] = (),
        disabled_plugins: Iterable[str] = (),
        entry_points: bool = True,
        cgroup_root: str = "/sys/fs/cgroup",
        cgroup_parent: str = "auto",
        state_dir: str = DEFAULT_STATE_DIR,
        spare_init: bool = True,
        spare_prefault: bool = True,
        fresh_helper: bool | None = None,
    ) -> None:
        self._extra_plugins = list(plugins)
        self._disabled = list(disabled_plugins)
        self._entry_points = entry_points
        self._cgroup_root = cgroup_root
        self._cgroup_parent = cgroup_parent
        self._state_dir = state_dir
        self.state: StateDir | None = None
        self._helper: ForkHelper | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._containers: dict[str, Container] = {}
        self._launches: dict[str, Launch] = {}
        self._oom_watchers: dict[str, _OomWatcher] = {}
        self.plugin_manager: pluggy.PluginManager | None = None
        self.cgroups: cgroups.CgroupBackend | None = None
        self._host: Host | None = None
        self._spare: SpareInit | None = None
        self._spare_wanted = spare_init
        self._spare_prefault = spare_prefault
        self._fresh_helper = fresh_helper
        self._spare_cloned: anyio.Event | None = None
        """Set when the spare being cloned is ready (or failed); None when none is."""
        self._spare_clone_seconds = 0.0
        """How long the last spare took to clone (see _next_spare_at_exit)."""
        self._idle_since = time.monotonic()
        """When the last live container finished (or the Runtime was made)."""
        self._spare_loopback = True
        """Whether the next spare brings ``lo`` up: the last plan did (the net plugin's
        does; a spare that guessed wrong is turned away, see SpareInit.fits)."""
        self._closing = False
        self._starts = 0
        self._renewal: anyio.CancelScope | None = None
        """Cancels the helper's renewal in progress (see fresh_helper)."""

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Runtime:
        open_standard_fds()  # before the helper's socket could take a closed one's number
        # The helper first: after this point plugins and anyio may start threads.
        self._helper = ForkHelper.start(fresh=self._fresh_helper is True)
        try:
            self.plugin_manager = load_plugins(
                self._disabled, extra=self._extra_plugins, entry_points=self._entry_points
            )
            self._host = open_host(
                self.plugin_manager,
                cgroup_root=self._cgroup_root,
                cgroup_parent=self._cgroup_parent,
                state_dir=self._state_dir,
            )
            self.cgroups = self._host.cgroups
            self.state = self._host.state
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
        except BaseException:
            self._helper.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task_group is not None and self._helper is not None
        self._closing = True
        if self._renewal is not None:
            self._renewal.cancel()  # its new helper would only be closed again
        # Containers do not outlive their Runtime.
        for container in list(self._containers.values()):
            container.kill_all()
        try:
            # The watcher tasks finish on their own once the inits are dead.  An
            # exception leaving the ``async with`` body is not theirs: let it
            # propagate as it is instead of wrapping it in an ExceptionGroup.
            await self._task_group.__aexit__(None, None, None)
        finally:
            try:
                if self._spare is not None:
                    spare, self._spare = self._spare, None
                    assert self._host is not None
                    with anyio.CancelScope(shield=True):
                        await spare.release(self._host)
            finally:
                self._helper.close()

    @property
    def containers(self) -> list[Container]:
        """Containers that have not finished yet."""
        return list(self._containers.values())

    async def spare(self) -> SpareInit | None:
        """The spare init waiting for the next container (vortex/spare.py), once the
        one being cloned (if any) is ready; None when there is none."""
        if self._spare_cloned is not None:
            await self._spare_cloned.wait()
        return self._spare

    def spare_coming(self) -> bool:
        """Whether a spare init is waiting or being cloned: a start that takes it finds
        its init in its cgroup, with no migration to wait for (cgroups/warmup.py)."""
        return self._spare is not None or self._spare_cloned is not None

    # ------------------------------------------------------------------ public API

    async def run(self, spec: ContainerSpec) -> RunResult:
        """Start a container, wait for it, return its result.

        Raises :class:`~vortex.errors.ExecError` (exit status 126/127) when the
        command cannot be executed, other :class:`~vortex.errors.VortexError`\\ s
        when the container cannot be set up.  Cancelling the call kills the
        container and waits for its clean-up.
        """
        container = await self.start(spec)
        try:
            return await container.wait()
        finally:
            if container.result is None:
                container.kill_all()
                with anyio.CancelScope(shield=True):
                    await container.wait()

    async def start(self, spec: ContainerSpec) -> Container:
        """Start a container and return once its command is executing."""
        container = await self.create(spec)
        await self.resume(container)
        return container

    async def create(self, spec: ContainerSpec) -> Container:
        """Clone the container's init, place it in its cgroup, run ``post_cgroup``
        hooks, and leave it waiting: :meth:`resume` lets it set up and exec."""
        assert self._helper is not None and self._task_group is not None
        assert self._host is not None and self.plugin_manager is not None
        fits_a_spare = may_take(spec)
        if self._spare_cloned is not None and fits_a_spare:
            await self._spare_cloned.wait()  # on its way: sooner than a clone of our own
        spare = self._spare if fits_a_spare else None
        container = new_container(self._host, spec, spare)
        if spare is not None:
            self._spare = None
        next_spare_at_exit = spare is not None and self._next_spare_at_exit()
        if container.cgroup is not None and spare is None:
            warmup.start()  # the attach below may wait for the kernel (cgroups/warmup.py)
        launch = Launch(container, self._helper, spare)
        self._containers[container.id] = container
        self._starts += 1
        if self._starts == RENEW_HELPER_AFTER and self._may_renew_helper():
            self._task_group.start_soon(self._renew_helper)
        try:
            await call_async(self.plugin_manager, "vortex_prepare", container=container)
            plan_ops = plan_setup(self._host, container)
            # The next spare brings lo up ahead when this plan does: plans rarely change.
            self._spare_loopback = brings_loopback_up(plan_ops)
            await launch.clone(plan_ops)
            if not next_spare_at_exit:
                self._clone_spare_soon()  # busy: have it ready by the next start
            self._task_group.start_soon(self._watch, container, launch)
            if (watcher := _OomWatcher.start(self._task_group, container)) is not None:
                self._oom_watchers[container.id] = watcher
            launch.start_output_tasks(self._task_group)
            warmup.stop()
            cgroup = container.cgroup
            # A spare is in its cgroup already, but for a v1 hierarchy that a limit
            # made it join (cpuset, blkio, hugetlb: vortex/spare.py).
            if cgroup is not None and not launch.placed_in.issuperset(cgroup.procs_files()):
                cgroup.attach(launch.pid, skip=launch.placed_in)
                warmup.mark_migrated()
            await call_async(self.plugin_manager, "vortex_post_cgroup", container=container)
        except BaseException as exc:
            warmup.stop()
            await self._abort(container, launch, exc)
            raise
        self._launches[container.id] = launch
        return container

    async def resume(self, container: Container) -> None:
        """Let a created container set itself up and execute its command."""
        launch = self._launches.pop(container.id)
        try:
            await launch.release_and_await_exec()
            container.state = "running"
            if container.spec.tty:
                await launch.attach_terminal(self._task_group)  # type: ignore[arg-type]
        except BaseException as exc:
            # Also when the terminal could not be attached: the caller gets no handle,
            # so the container must not keep running unseen.
            await self._abort(container, launch, exc)
            raise
        assert self.plugin_manager is not None
        launch.post_start_done = anyio.Event()
        try:
            for failure in await call_async(
                self.plugin_manager, "vortex_post_start", keep_going=True, container=container
            ):
                log.emit("error", "plugin.failed", container_id=container.id, error=str(failure))
        finally:
            launch.post_start_done.set()

    # ------------------------------------------------------------------ internals

    def _next_spare_at_exit(self) -> bool:
        """Whether the spare this start took is replaced only once its container exits.
        Asked before the starting container is registered in ``_containers``.

        A spare cloned while a container sets up or exits competes with it in the
        kernel (the helper's clone copies a mount table and makes namespaces while
        the init mounts and the exit tears its own down): measured on 2 cores, a
        start after a 10 ms pause took ~7.7 ms with the next spare cloned during it
        and ~6.6 ms with the clone after the exit; after the exec was no better.
        Back to back, though, the clone must overlap the container, or the next
        start waits for it (163 against 141 containers/s).  So: after the exit when
        no other container lives and the Runtime was idle for longer than a clone
        takes (the next start will likely find the spare ready); right away otherwise.
        """
        idle = time.monotonic() - self._idle_since
        return not self._containers and idle > self._spare_clone_seconds

    def _may_renew_helper(self) -> bool:
        assert self._helper is not None
        return self._fresh_helper is None and not self._helper.execed and can_renew()

    async def _renew_helper(self) -> None:
        """Replace the forked helper by a fresh interpreter (see ``fresh_helper``);
        containers keep starting meanwhile.  A failure leaves the fork serving."""
        assert self._helper is not None
        forked = self._helper.pid
        with anyio.CancelScope() as self._renewal:
            try:
                await self._helper.renew()
            except (VortexError, OSError) as exc:
                log.emit("warning", "helper.renewal_failed", error=str(exc))
            else:
                log.emit("debug", "helper.renewed", forked=forked, fresh=self._helper.pid)
        self._renewal = None

    def _clone_spare_soon(self) -> None:
        """Start cloning the next spare init unless there is one (or one on the way)."""
        none_yet = self._spare is None and self._spare_cloned is None and not self._closing
        if self._spare_wanted and none_yet and self._task_group is not None:
            self._spare_cloned = anyio.Event()
            # A spare cloned while a container runs works ahead (premount, prefault)
            # only if its request has not come after a while: at once, it would
            # compete with a container that is starting (the premount for the
            # kernel's mount lock: on 2 cores, back to back, ~0.25 ms more CPU per
            # container for ~0.1-0.4 ms less per start), and back to back its
            # request comes first anyway.
            ahead_after = 0.0 if not self._containers else SPARE_AHEAD_AFTER
            self._task_group.start_soon(self._clone_spare, self._spare_cloned, ahead_after)

    async def _clone_spare(self, done: anyio.Event, ahead_after: float) -> None:
        assert self._host is not None and self._helper is not None
        try:
            # Shielded: a request cut off between send and reply would leave the
            # helper's answer for the next caller.
            with anyio.CancelScope(shield=True):
                began = time.monotonic()
                spare = await SpareInit.clone(
                    self._host,
                    self._helper,
                    prefault=self._spare_prefault,
                    loopback=self._spare_loopback,
                    ahead_after=ahead_after,
                )
                self._spare_clone_seconds = time.monotonic() - began
        except (VortexError, OSError) as exc:
            # Every container is still started, by the helper: just no spares.
            self._spare_wanted = False
            log.emit("warning", "spare.disabled", error=str(exc))
            return
        finally:
            self._spare_cloned = None
            done.set()
        if self._closing:
            with anyio.CancelScope(shield=True):
                await spare.release(self._host)
            return
        self._spare = spare

    async def _abort(self, container: Container, launch: Launch, exc: BaseException) -> None:
        """A start failed: make sure the init is gone, then clean up like an exit."""
        launch.error = _describe(exc)
        launch.abort()
        with anyio.CancelScope(shield=True):
            await launch.discard_spare()
            if container.pidfd is not None:
                container.kill_all()
                await container.wait()  # the watcher reaps and cleans up
            else:
                await self._finish(container, launch, None)
            # The caller never gets this handle: close the streams it would have read.
            for stream in (container.stdin, container.stdout, container.stderr):
                if stream is not None:
                    await stream.aclose()

    async def _watch(self, container: Container, launch: Launch) -> None:
        """Await the pidfd, reap, collect, run exit hooks, clean up."""
        pidfd = container.pidfd
        assert pidfd is not None
        exited = False
        try:
            await anyio.wait_readable(pidfd)
            exited = True
        except anyio.get_cancelled_exc_class():
            container.kill_all()  # the Runtime is closing: the init must not survive it
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if not exited:
                    # Killed above (or the wait failed): wait for the exit itself.  In
                    # the normal case it already happened; a second wait would cost an
                    # event-loop round trip on every container's exit notification.
                    await _wait_pidfd(pidfd)
                # Does not block: the pidfd is readable, so the init is a zombie.
                info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)  # noqa: ASYNC222
                container.pidfd = None
                os.close(pidfd)
                await self._finish(container, launch, info)

    async def _finish(
        self, container: Container, launch: Launch, info: os.waitid_result | None
    ) -> None:
        elapsed = wall_time(launch.cloned_at)
        stdout, stderr = await launch.collect_output()
        if launch.post_start_done is not None:
            await launch.post_start_done.wait()  # on_exit never overtakes post_start
        result = collect_result(
            container,
            info,
            wall_time=elapsed,
            stdout=stdout,
            stderr=stderr,
            error=launch.error,
        )
        assert self.plugin_manager is not None
        for failure in await call_async(
            self.plugin_manager,
            "vortex_on_exit",
            keep_going=True,
            container=container,
            result=result,
        ):
            log.emit("error", "plugin.failed", container_id=container.id, error=str(failure))
        assert self._host is not None
        release(self._host, container)
        launch.close_all()
        self._containers.pop(container.id, None)
        self._launches.pop(container.id, None)
        watcher = self._oom_watchers.pop(container.id, None)
        if watcher is not None:
            await watcher.stop()
        container._finish(result)
        if not self._containers:
            self._idle_since = time.monotonic()
        self._clone_spare_soon()  # when the start deferred it (a no-op otherwise)


class _OomWatcher:
    """A container's OOM notification fd (vortex.cgroups.oom) and the task awaiting it.

    Only that task closes the fd, once its own wait has ended.  Why: anyio's
    asyncio backend ends a ``wait_readable`` by unregistering whatever wait is
    registered under the fd's *number*.  When another task closed the fd
    (``notify_closing``, then ``close``), a wait started meanwhile on the reused
    number (the next container's error pipe) lost its registration when the
    woken watcher ran on, and never woke: a start hung (seen with two starts at
    a time).
    """

    def __init__(self, container: Container, watch: OomWatch) -> None:
        self._container = container
        self._watch = watch
        self._scope = anyio.CancelScope()
        self._closed = anyio.Event()

    @classmethod
    def start(cls, task_group: anyio.abc.TaskGroup, container: Container) -> _OomWatcher | None:
        """Open the watch now (before the init runs) and await it in a task."""
        from vortex.cgroups.oom import OomWatch

        watch = OomWatch.open(container.cgroup) if container.cgroup is not None else None
        if watch is None:
            return None
        container._oom_watch = watch
        watcher = cls(container, watch)
        task_group.start_soon(watcher._run)
        return watcher

    async def stop(self) -> None:
        """End the task and wait until it has closed the fd."""
        self._scope.cancel()
        await self._closed.wait()

    async def _run(self) -> None:
        try:
            with self._scope:
                await self._report_kills()
        finally:
            self._container._oom_watch = None
            self._watch.close()
            self._closed.set()

    async def _report_kills(self) -> None:
        """Emit ``container.oom`` and feed Container.oom_events() each time the kernel
        signals the fd and the oom_kill counter grew."""
        from vortex.cgroups.oom import RECHECK_DELAYS, report_new_kills

        container, watch = self._container, self._watch
        # Read first: an OOM before the watch existed sent no notification.
        retries: tuple[float, ...] = (0.0,)
        with contextlib.suppress(OSError):
            while True:
                for delay in retries:
                    await anyio.sleep(delay)
                    if report_new_kills(container, watch):
                        break
                await anyio.wait_readable(watch.fd)
                watch.drain()
                retries = RECHECK_DELAYS


async def _wait_pidfd(pidfd: int) -> None:
    with contextlib.suppress(anyio.ClosedResourceError):
        await anyio.wait_readable(pidfd)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "start cancelled"
    return describe_failure(exc)
