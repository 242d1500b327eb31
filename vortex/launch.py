"""The plumbing of one container start: pipes, sockets, output tasks.

A :class:`Launch` owns every file descriptor it opens and closes each one on
every path (success, failed exec, failed hook, cancellation): the leak checks
in the tests count on it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import anyio
import anyio.abc

from vortex import log
from vortex.container import Container
from vortex.helper.client import ForkHelper
from vortex.helper.init import raise_reported_failure
from vortex.lifecycle import OUTPUT_DRAIN_TIMEOUT, spawn_request
from vortex.ops import SetupOp
from vortex.spec import Stdio
from vortex.streams import FdReceiveStream, FdSendStream, read_all
from vortex.terminal import receive_master, relay

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from vortex.spare import SpareInit


class Launch:
    def __init__(
        self, container: Container, helper: ForkHelper, spare: SpareInit | None = None
    ) -> None:
        self.container = container
        self.helper = helper
        self.spare = spare
        """The spare init this container took (vortex/spare.py), until :meth:`clone`."""
        self.pid = 0
        self.cloned_at = 0.0
        self.placed_in: frozenset[str] = frozenset()
        """The ``cgroup.procs`` files of the cgroup directories the init is in already:
        a spare's, or all of them when it was cloned into its cgroup (v2)."""
        self.error: str | None = None
        self._sync_w: int | None = None
        self._errors_r: int | None = None
        self._console: socket.socket | None = None
        self._child_ends: list[int] = []
        self._captures: dict[str, FdReceiveStream] = {}
        self._captured: dict[str, bytes] = {}
        self._stdin_feed: tuple[FdSendStream, bytes] | None = None
        self._output_done = anyio.Event()
        self._pending_outputs = 0
        self.post_start_done: anyio.Event | None = None
        """Set while ``vortex_post_start`` hooks run, so ``vortex_on_exit`` waits for them."""

    # ------------------------------------------------------------------ clone

    async def clone(self, plan_ops: list[SetupOp]) -> None:
        """Have the helper clone the init with ``plan_ops`` and ``container.security``."""
        container, spec = self.container, self.container.spec
        sync_r, self._sync_w = os.pipe2(os.O_CLOEXEC)
        self._child_ends.append(sync_r)
        self._errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
        self._child_ends.append(errors_w)
        console_child = -1
        if spec.tty:
            stdio = [self._devnull(os.O_RDWR)] * 3
            ours, theirs = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC
            )
            self._console = ours
            console_child = theirs.detach()
            self._child_ends.append(console_child)
        else:
            stdio = [self._stdin_fd(), self._output_fd("stdout", 1), self._output_fd("stderr", 2)]
        fds = [sync_r, errors_w, *stdio]
        if self._console is not None:
            fds.append(console_child)
        try:
            if (taken := await self._hand_to_spare(plan_ops, fds)) is not None:
                self.pid, pidfd = taken
            else:
                self.pid, pidfd = await self._spawn(plan_ops, fds)
        finally:
            self._close_child_ends()
        self.cloned_at = time.monotonic()
        container.pid, container.pidfd = self.pid, pidfd
        container.state = "created"

    async def _hand_to_spare(
        self, plan_ops: list[SetupOp], fds: list[int]
    ) -> tuple[int, int] | None:
        """Give the spare init its request; None when there is none or it cannot serve
        (then it is discarded, and the container keeps its id and cgroup)."""
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        request = spawn_request(
            self.container, plan_ops, has_console_socket=self._console is not None
        )
        if spare.fits(request):
            try:
                pidfd = spare.hand_over(request, fds)
            except OSError as exc:
                log.emit("warning", "spare.lost", container_id=self.container.id, error=str(exc))
            else:
                self.placed_in = spare.placed_in
                return spare.pid, pidfd
        await spare.discard()
        return None

    async def _spawn(self, plan_ops: list[SetupOp], fds: list[int]) -> tuple[int, int]:
        """Have the fork helper clone the init, into its cgroup where the kernel can."""
        container = self.container
        cgroup_fd = container.cgroup.clone_fd() if container.cgroup is not None else None
        if cgroup_fd is not None:
            self._child_ends.append(cgroup_fd)
            assert container.cgroup is not None
            self.placed_in = frozenset(container.cgroup.procs_files())
        request = spawn_request(
            container,
            plan_ops,
            has_console_socket=self._console is not None,
            has_cgroup_fd=cgroup_fd is not None,
        )
        if cgroup_fd is not None:
            fds = [*fds, cgroup_fd]
        return await self.helper.spawn(request, fds)

    def _devnull(self, flags: int) -> int:
        fd = os.open(os.devnull, flags | os.O_CLOEXEC)
        self._child_ends.append(fd)
        return fd

    def _inherited(self, fd: int, flags: int) -> int:
        try:
            os.fstat(fd)
        except OSError:  # closed since the Runtime started (standard_fds)
            return self._devnull(flags)
        return fd

    def _stdin_fd(self) -> int:
        mode = self.container.spec.stdin
        if isinstance(mode, int):
            return mode  # lent by the caller: the helper dups it, we never close it
        if mode is Stdio.INHERIT:
            return self._inherited(0, os.O_RDONLY)
        if mode is Stdio.NULL:
            return self._devnull(os.O_RDONLY)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        self._child_ends.append(read_end)
        if isinstance(mode, bytes):
            self._stdin_feed = (FdSendStream(write_end), mode)
        else:  # STREAM (CAPTURE makes no sense for stdin and is treated alike)
            self.container.stdin = FdSendStream(write_end)
        return read_end

    def _output_fd(self, name: str, inherited: int) -> int:
        mode: Stdio | int = getattr(self.container.spec, name)
        if isinstance(mode, int):
            return mode  # lent by the caller, like stdin
        if mode is Stdio.INHERIT:
            return self._inherited(inherited, os.O_WRONLY)
        if mode is Stdio.NULL:
            return self._devnull(os.O_WRONLY)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        self._child_ends.append(write_end)
        if mode is Stdio.CAPTURE:
            self._captures[name] = FdReceiveStream(read_end)
        else:
            setattr(self.container, name, FdReceiveStream(read_end))
        return write_end

    def _close_child_ends(self) -> None:
        for fd in self._child_ends:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._child_ends.clear()

    # ------------------------------------------------------------------ output

    def start_output_tasks(self, task_group: anyio.abc.TaskGroup) -> None:
        for name, stream in self._captures.items():
            self._pending_outputs += 1
            task_group.start_soon(self._capture, name, stream)
        if self._stdin_feed is not None:
            task_group.start_soon(self._feed_stdin)

    async def _capture(self, name: str, stream: FdReceiveStream) -> None:
        # Like the terminal relay, this task lives in the Runtime's task group: an
        # I/O error ends this capture (logged), never the other containers.
        try:
            self._captured[name] = self._captured.get(name, b"") + await read_all(stream)
        except OSError as exc:
            log.emit(
                "error", "output.capture_failed", container_id=self.container.id, error=str(exc)
            )
        finally:
            await stream.aclose()
            self._output_finished()

    def _output_finished(self) -> None:
        self._pending_outputs -= 1
        if self._pending_outputs == 0:
            self._output_done.set()

    async def _feed_stdin(self) -> None:
        assert self._stdin_feed is not None
        stream, data = self._stdin_feed
        try:
            await stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the command exited without reading everything, as with a shell pipe
        except OSError as exc:
            log.emit("error", "input.feed_failed", container_id=self.container.id, error=str(exc))
        finally:
            await stream.aclose()

    async def collect_output(self) -> tuple[bytes | None, bytes | None]:
        """Captured stdout and stderr, once the pipes reached EOF (bounded wait)."""
        if self._pending_outputs:
            with anyio.move_on_after(OUTPUT_DRAIN_TIMEOUT):
                await self._output_done.wait()
            for stream in self._captures.values():
                await stream.aclose()  # a grandchild kept a pipe open: stop reading
        spec = self.container.spec
        stdout = self._captured.get("stdout", b"") if spec.stdout is Stdio.CAPTURE else None
        stderr = self._captured.get("stderr", b"") if spec.stderr is Stdio.CAPTURE else None
        return stdout, stderr

    # ------------------------------------------------------------------ start

    async def release_and_await_exec(self) -> None:
        """One byte on the sync pipe; then the error pipe says how exec went."""
        assert self._sync_w is not None and self._errors_r is not None
        with contextlib.suppress(BrokenPipeError):  # the init died: its status will tell
            os.write(self._sync_w, b"\x01")
        os.close(self._sync_w)
        self._sync_w = None
        errors = FdReceiveStream(self._errors_r)
        self._errors_r = None
        try:
            report = await read_all(errors)
        finally:
            await errors.aclose()
        raise_reported_failure(report)

    async def attach_terminal(self, task_group: anyio.abc.TaskGroup) -> None:
        """Receive the pty master from the init and connect it as the spec says."""
        assert self._console is not None
        await anyio.wait_readable(self._console)
        console, self._console = self._console, None
        master = receive_master(console)
        container, spec = self.container, self.container.spec
        container.terminal_fd = master
        container.fit_to_caller_terminal()
        if spec.stdout is Stdio.CAPTURE:
            self._pending_outputs += 1
            task_group.start_soon(self._capture, "stdout", FdReceiveStream(os.dup(master)))
        elif spec.stdout is Stdio.STREAM:
            container.stdout = FdReceiveStream(os.dup(master))
            container.stdin = FdSendStream(os.dup(master))
        elif spec.stdout is Stdio.INHERIT:
            self._pending_outputs += 1
            task_group.start_soon(self._relay_terminal, master)

    async def _relay_terminal(self, master: int) -> None:
        # This task lives in the Runtime's task group: an error here must not cancel
        # every other container of the Runtime, only end this relay.
        try:
            await relay(master, 0, 1)
        except OSError as exc:
            log.emit(
                "error", "terminal.relay_failed", container_id=self.container.id, error=str(exc)
            )
        finally:
            self._output_finished()

    # ------------------------------------------------------------------ clean-up

    def abort(self) -> None:
        """The start failed: an init still waiting on the sync pipe sees EOF and exits."""
        if self._sync_w is not None:
            os.close(self._sync_w)
            self._sync_w = None

    async def discard_spare(self) -> None:
        """The start failed before :meth:`clone` took the spare: end its process (its
        cgroup and record are the container's, released with it)."""
        spare, self.spare = self.spare, None
        if spare is not None:
            await spare.discard()

    def close_all(self) -> None:
        self.abort()
        self._close_child_ends()
        if self._errors_r is not None:
            os.close(self._errors_r)
            self._errors_r = None
        if self._console is not None:
            self._console.close()
            self._console = None
        if self.container.terminal_fd is not None:
            os.close(self.container.terminal_fd)
            self.container.terminal_fd = None
