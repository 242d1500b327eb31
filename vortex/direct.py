"""One container, no event loop: how ``vortex run`` runs in its own process.

The async :class:`vortex.Runtime` is built for a process that runs many
containers.  A process that starts one container and exits needs none of its
machinery, and a cold start pays for all of it: importing asyncio and anyio's
backend alone is ~35 ms.  :func:`run` takes the same steps through the same
functions (:mod:`vortex.lifecycle`), without them:

- no fork helper: the helper exists so that no init is ever cloned from a
  threaded process.  This process is single-threaded, so it clones the init
  itself (if a plugin started a thread, a helper is started after all);
- lifecycle hooks are called in order; an ``async def`` implementation gets an
  event loop of its own for the call (:func:`~vortex.pluginmanager.call_blocking`);
- the exit is awaited in ``poll()`` on the init's pidfd, beside the OOM watch
  (``container.oom`` events while it runs) and, with a terminal, the pty
  (:class:`~vortex.terminal.BlockingRelay`, between the pty and this process's
  own stdin and stdout); signal handlers forward SIGINT, SIGTERM, SIGHUP and
  SIGQUIT to the init, and SIGWINCH resizes its terminal.

What needs relays to the caller's code stays with the Runtime: stdin/stdout/stderr
other than inherited, ``/dev/null`` or a lent file descriptor, and a terminal
whose streams are not inherited (:func:`supports`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from types import FrameType

from vortex import _linux as L
from vortex import log
from vortex.cgroups import warmup
from vortex.cgroups.oom import RECHECK_DELAYS, OomWatch, report_new_kills
from vortex.container import Container
from vortex.errors import ContainerSetupError, SpecError
from vortex.helper.init import raise_reported_failure, run_init
from vortex.helper.plan import FD_ORDER, SpawnRequest
from vortex.lifecycle import (
    OUTPUT_DRAIN_TIMEOUT,
    Host,
    collect_result,
    describe_failure,
    new_container,
    open_host,
    plan_setup,
    release,
    spawn_request,
    wall_time,
)
from vortex.ops import SetupOp
from vortex.pluginmanager import call_blocking, load_plugins_for_one_run
from vortex.result import RunResult
from vortex.spec import ContainerSpec, Stdio
from vortex.standard_fds import open_standard_fds
from vortex.state import DEFAULT_STATE_DIR
from vortex.terminal import BlockingRelay, raw_mode, receive_master

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import socket
    from typing import TypeVar

    T = TypeVar("T")

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def supports(spec: ContainerSpec) -> bool:
    """Whether :func:`run` can run ``spec`` (else the Runtime must)."""
    streams = (spec.stdin, spec.stdout, spec.stderr)
    if spec.tty:
        return all(mode is Stdio.INHERIT for mode in streams)
    passthrough = (Stdio.INHERIT, Stdio.NULL)
    return all(isinstance(mode, int) or mode in passthrough for mode in streams)


def run(
    spec: ContainerSpec,
    *,
    disabled_plugins: Iterable[str] = (),
    plugins: Iterable[object] = (),
    entry_points: bool = True,
    cgroup_root: str = "/sys/fs/cgroup",
    cgroup_parent: str = "auto",
    state_dir: str = DEFAULT_STATE_DIR,
) -> RunResult:
    """Run ``spec`` to its end in this process, without an event loop.

    Like :meth:`vortex.Runtime.run`: raises the start's error (an
    :class:`~vortex.errors.ExecError` for a command that cannot be executed) once
    everything is cleaned up; the options are the Runtime's.  Signals in
    :data:`FORWARDED_SIGNALS` that reach this process meanwhile go to the
    container's init (those sent before its command runs, once it does); called
    from another thread than the main one, it forwards none (Python runs signal
    handlers only there).  Must not be called from a running event loop: it blocks.
    """
    if not supports(spec):
        raise SpecError(
            "stdin/stdout/stderr as a stream, captured or fed from bytes (or a terminal "
            "not on the inherited ones) needs the event loop: run this spec with vortex.Runtime"
        )
    open_standard_fds()  # before we open anything that could take their numbers
    signals = (*FORWARDED_SIGNALS, signal.SIGWINCH) if spec.tty else FORWARDED_SIGNALS
    with _SignalForwarder(signals) as forwarder:
        host = open_host(
            load_plugins_for_one_run(disabled_plugins, extra=plugins, entry_points=entry_points),
            cgroup_root=cgroup_root,
            cgroup_parent=cgroup_parent,
            state_dir=state_dir,
        )
        return _DirectRun(host, new_container(host, spec), forwarder).run()


class _SignalForwarder:
    """Signal handlers that send what they catch to the init's pidfd (held back
    until :meth:`forward_to`); SIGWINCH calls :attr:`on_resize` instead.  Restores
    the previous handlers on exit."""

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = tuple(signals)
        self.on_resize: Callable[[], None] | None = None
        self._pidfd: int | None = None
        self._pending: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _SignalForwarder:
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._caught)
            except ValueError:
                break  # not the main thread: handlers cannot be set; nothing is forwarded
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pidfd = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _caught(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGWINCH:
            if self.on_resize is not None:
                self.on_resize()
        elif self._pidfd is None:
            self._pending.append(signum)
        else:
            self._send(signum)

    def _send(self, signum: int) -> None:
        assert self._pidfd is not None
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signum)

    def forward_to(self, pidfd: int | None) -> None:
        """Forward to ``pidfd`` from now on (first what was held back); None stops."""
        self._pidfd = pidfd
        if pidfd is not None:
            pending, self._pending = self._pending, []
            for signum in pending:
                self._send(signum)


class _DirectRun:
    """The life of one container, start to clean-up, in one call of :meth:`run`."""

    def __init__(self, host: Host, container: Container, forwarder: _SignalForwarder) -> None:
        self.host = host
        self.container = container
        self.forwarder = forwarder
        self.cloned_at = 0.0
        self._sync_w = self._errors_r = -1
        self._oom_watch: OomWatch | None = None
        self._console: socket.socket | None = None
        self._relay: BlockingRelay | None = None
        self._owned: list[int] = []
        """Every fd this run opened and has not closed yet."""

    def run(self) -> RunResult:
        container, pm = self.container, self.host.plugin_manager
        failure: BaseException | None = None
        try:
            try:
                self._start()
            except BaseException as exc:
                failure = exc
                if container.pidfd is not None:
                    container.kill_all()
            info = self._reap() if container.pidfd is not None else None
            result = collect_result(
                container,
                info,
                wall_time=wall_time(self.cloned_at),
                error=describe_failure(failure) if failure is not None else None,
            )
            for error in call_blocking(
                pm, "vortex_on_exit", keep_going=True, container=container, result=result
            ):
                log.emit("error", "plugin.failed", container_id=container.id, error=str(error))
        finally:
            self._close_owned()
            self._close_terminal()
            release(self.host, container)
        container._finish(result)
        if failure is not None:
            raise failure
        return result

    def _start(self) -> None:
        container, pm = self.container, self.host.plugin_manager
        call_blocking(pm, "vortex_prepare", container=container)
        request = self._clone(plan_setup(self.host, container))
        if container.cgroup is not None:
            self._oom_watch = OomWatch.open(container.cgroup)
            if not request.has_cgroup_fd:  # v1: no CLONE_INTO_CGROUP
                assert container.pid is not None
                container.cgroup.attach(container.pid)
        call_blocking(pm, "vortex_post_cgroup", container=container)
        self._release_and_await_exec()
        if self._console is not None:
            self._attach_terminal()
        container.state = "running"
        self.forwarder.forward_to(container.pidfd)
        for error in call_blocking(pm, "vortex_post_start", keep_going=True, container=container):
            log.emit("error", "plugin.failed", container_id=container.id, error=str(error))

    # ------------------------------------------------------------------ clone

    def _clone(self, plan_ops: list[SetupOp]) -> SpawnRequest:
        container, spec = self.container, self.container.spec
        sync_r, self._sync_w = self._pipe()
        self._errors_r, errors_w = self._pipe()
        console = None
        if spec.tty:
            # The init opens the pty and sends its master back over this socket.
            stdio = [self._stdio_fd(Stdio.NULL, -1, os.O_RDWR)] * 3
            console = self._console_socket()
        else:
            stdio = [
                self._stdio_fd(spec.stdin, 0, os.O_RDONLY),
                self._stdio_fd(spec.stdout, 1, os.O_WRONLY),
                self._stdio_fd(spec.stderr, 2, os.O_WRONLY),
            ]
        cgroup_fd = container.cgroup.clone_fd() if container.cgroup is not None else None
        if cgroup_fd is not None:
            self._owned.append(cgroup_fd)
        request = spawn_request(
            container,
            plan_ops,
            has_console_socket=console is not None,
            has_cgroup_fd=cgroup_fd is not None,
        )
        child_fds = [sync_r, errors_w, *stdio]
        warmup.stop()  # its thread must be gone before we clone
        if L.is_single_threaded():
            pid, pidfd = self._clone_here(request, child_fds, console, cgroup_fd)
        else:
            extra = [*_optional(console), *_optional(cgroup_fd)]
            pid, pidfd = _clone_through_helper(request, [*child_fds, *extra])
        self.cloned_at = time.monotonic()
        container.pid, container.pidfd = pid, pidfd
        container.state = "created"
        # The init has its copies: close ours, so that its exit (or exec, for the
        # error pipe) is what the pipes report.
        for fd in (sync_r, errors_w, *_optional(console), *_optional(cgroup_fd)):
            self._close(fd)
        for fd in set(stdio):
            if fd in self._owned:
                self._close(fd)
        return request

    def _console_socket(self) -> int:
        """Our end of the console socket (kept); returns the init's end (owned)."""
        import socket  # only a terminal needs it: ~2 ms of a cold start otherwise

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._console = ours
        child_end = theirs.detach()
        self._owned.append(child_end)
        return child_end

    def _clone_here(
        self,
        request: SpawnRequest,
        child_fds: list[int],
        console: int | None,
        cgroup_fd: int | None,
    ) -> tuple[int, int]:
        # Blocked across the clone: the child must not run our handlers (it resets
        # every disposition and then unblocks); the parent gets what arrived after.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, self.forwarder.signals)
        try:
            try:
                pid, pidfd = L.clone3(request.clone_flags, cgroup_fd=cgroup_fd)
            except OSError as exc:
                raise ContainerSetupError(f"clone failed: {exc}") from exc
            if pid == 0:
                named = dict(zip(FD_ORDER, child_fds, strict=True))
                if console is not None:
                    named["console"] = console
                run_init(request.plan, named)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return pid, pidfd

    def _pipe(self) -> tuple[int, int]:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        self._owned += (read_end, write_end)
        return read_end, write_end

    def _stdio_fd(self, mode: Stdio | bytes | int, inherited: int, flags: int) -> int:
        if isinstance(mode, int):
            return mode  # lent by the caller: the init dups it, we never close it
        if mode is Stdio.INHERIT:
            return inherited  # open: run() saw to it (standard_fds)
        fd = os.open(os.devnull, flags | os.O_CLOEXEC)
        self._owned.append(fd)
        return fd

    # ------------------------------------------------------------------ start

    def _release_and_await_exec(self) -> None:
        """One byte on the sync pipe; the error pipe then says how exec went (EOF:
        the exec succeeded and closed it)."""
        with contextlib.suppress(BrokenPipeError):  # the init died: its status will tell
            os.write(self._sync_w, b"\x01")
        self._close(self._sync_w)
        report = b""
        while chunk := os.read(self._errors_r, 65536):
            report += chunk
        self._close(self._errors_r)
        raise_reported_failure(report)

    def _attach_terminal(self) -> None:
        """Receive the pty master the init sent before its exec; relay it to our
        stdin and stdout, sized like our terminal."""
        assert self._console is not None
        console, self._console = self._console, None
        container = self.container
        container.terminal_fd = receive_master(console)
        self.forwarder.on_resize = container.fit_to_caller_terminal
        container.fit_to_caller_terminal()
        self._relay = BlockingRelay(container.terminal_fd)

    # ------------------------------------------------------------------ exit

    def _reap(self) -> os.waitid_result:
        """Wait for the init's exit, reporting OOM kills and forwarding signals
        meanwhile; then reap it.

        If the start failed, an init still waiting on its sync pipe sees EOF (the
        pipe is closed here) and exits; the caller has also killed it.
        """
        container = self.container
        pidfd = container.pidfd
        assert pidfd is not None
        self._close_owned()
        try:
            # Raw: keys (Ctrl-C too) go to the container's terminal as bytes.
            with raw_mode(0) if self._relay is not None else contextlib.nullcontext():
                self._wait_for_exit(pidfd)
            info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        finally:
            self.forwarder.forward_to(None)
            container.pidfd = None
            os.close(pidfd)
            if self._oom_watch is not None:
                self._oom_watch.close()
        assert info is not None
        return info

    def _wait_for_exit(self, pidfd: int) -> None:
        """poll() on the pidfd, the OOM watch and the terminal until the init has
        exited and the terminal's output is drained (at most OUTPUT_DRAIN_TIMEOUT
        more).  Interrupted polls are resumed by Python once the signal handlers
        ran (PEP 475)."""
        watch, relay = self._oom_watch, self._relay
        if watch is None and relay is None:
            return  # waitid blocks until the exit
        # Read the OOM counter first: an OOM before the watch existed sent nothing.
        rechecks = [time.monotonic()] if watch is not None else []
        exited_by: float | None = None  # then: drain the terminal until this time
        while True:
            now = time.monotonic()
            if exited_by is not None and (relay is None or relay.closed or now >= exited_by):
                return
            deadlines = [*rechecks[:1], *_optional(exited_by)]
            timeout = max(0.0, min(deadlines) - now) * 1000 if deadlines else None
            poller = select.poll()
            if exited_by is None:
                poller.register(pidfd, select.POLLIN)
            if watch is not None:
                poller.register(watch.fd, select.POLLIN)
            for fd, events in relay.poll_events() if relay is not None else ():
                poller.register(fd, events)
            for fd, events in poller.poll(timeout):
                if fd == pidfd:
                    exited_by = time.monotonic() + OUTPUT_DRAIN_TIMEOUT
                elif watch is not None and fd == watch.fd:
                    watch.drain()
                    rechecks = [time.monotonic() + delay for delay in RECHECK_DELAYS]
                elif relay is not None:
                    relay.handle(fd, events)
            if watch is not None and rechecks and rechecks[0] <= time.monotonic():
                del rechecks[0]
                if report_new_kills(self.container, watch):
                    rechecks.clear()

    def _close(self, fd: int) -> None:
        self._owned.remove(fd)
        os.close(fd)

    def _close_terminal(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if self.container.terminal_fd is not None:
            os.close(self.container.terminal_fd)
            self.container.terminal_fd = None

    def _close_owned(self) -> None:
        for fd in self._owned:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._owned.clear()


def _clone_through_helper(request: SpawnRequest, fds: list[int]) -> tuple[int, int]:
    """A plugin started a thread: cloning here could hand the init a lock held by
    it.  An exec'd fork helper clones instead (CLONE_PARENT: still our child)."""
    from vortex.helper.client import ForkHelper

    helper = ForkHelper.start()
    try:
        return helper.spawn_blocking(request, fds)
    finally:
        helper.close()


def _optional(value: T | None) -> list[T]:
    return [] if value is None else [value]
