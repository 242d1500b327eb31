"""The handle of one container, as the Runtime hands it out."""

from __future__ import annotations

import contextlib
import fcntl
import signal
import struct
from collections.abc import AsyncIterator

from vortex.errors import ContainerStateError
from vortex.result import RunResult
from vortex.spec import ContainerSpec

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import anyio
    import anyio.abc
    from anyio.streams.memory import MemoryObjectSendStream

    from vortex.cgroups.base import Cgroup, CgroupStats
    from vortex.cgroups.oom import OomWatch
    from vortex.security.policy import InitSecurity
    from vortex.state import StateDir


class Container:
    """A container started by a :class:`vortex.Runtime`.

    ``state`` goes ``creating`` → ``created`` (cloned, held before setup) →
    ``running`` (the command was executed) → ``exited``; :meth:`pause` and
    :meth:`resume` go to ``paused`` and back.  The Runtime reaps the init in its
    own task; :meth:`wait` returns the :class:`RunResult`.
    """

    def __init__(self, spec: ContainerSpec, container_id: str, name: str, hostname: str) -> None:
        self.spec = spec
        self.id = container_id
        self.name = name
        self.hostname = hostname
        self.state = "creating"
        self.pid: int | None = None
        """Host PID of the container's init (PID 1 inside)."""
        self.pidfd: int | None = None
        """A pidfd of the init while it is not reaped; owned by the Runtime."""
        self.cgroup: Cgroup | None = None
        self.stdin: anyio.abc.ByteSendStream | None = None
        """With ``stdin=Stdio.STREAM`` (or a tty in stream mode): write to the command."""
        self.stdout: anyio.abc.ByteReceiveStream | None = None
        """With ``stdout=Stdio.STREAM``: read what the command writes."""
        self.stderr: anyio.abc.ByteReceiveStream | None = None
        self.terminal_fd: int | None = None
        """The pty master, when the spec asked for a tty."""
        self.plugin_data: dict[str, object] = {}
        """Scratch space for plugins, keyed by plugin name."""
        self.security: InitSecurity | None = None
        """The compiled security settings the init applied before its exec; a process
        later started inside the container (a health check) must get the same."""
        self.state_dir: StateDir | None = None
        """The Runtime's state directory: host-side allocations that must outlive a
        crash of the Runtime are recorded there (the ``--userns auto`` id blocks)."""
        self._exited: anyio.Event | None = None
        """Created by the first :meth:`wait`: a container run without an event loop
        (vortex.direct) never needs one, and anyio cannot make one outside a loop."""
        self._result: RunResult | None = None
        self.oom_kills = 0
        """Processes of this container the OOM killer killed so far (live, v1 and v2)."""
        self._oom_subscribers: list[MemoryObjectSendStream[int]] = []
        self._oom_watch: OomWatch | None = None
        """The OOM notification fd, owned by the Runtime (opened at create, closed at exit)."""

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.state} pid={self.pid}>"

    @property
    def result(self) -> RunResult | None:
        """The result once the container has exited, else ``None``."""
        return self._result

    async def wait(self) -> RunResult:
        """Wait until the container has exited and been cleaned up."""
        if self._result is None:
            if self._exited is None:
                import anyio

                self._exited = anyio.Event()
            await self._exited.wait()
        assert self._result is not None
        return self._result

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the container's init, through its pidfd (no PID-reuse race).

        Note that PID 1 ignores signals it installed no handler for (a shell
        ignores SIGTERM); :meth:`stop` escalates to SIGKILL.
        """
        if self.pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, sig)

    def kill_all(self) -> None:
        """SIGKILL every process of the container at once (through its cgroup).

        Returns at once, without waiting for the processes to exit (:meth:`wait`
        does): it is called on the event loop, which a wait for the kernel would
        stall for every other container (~4 ms on v1, up to the cgroup timeout
        for a process stuck in the kernel).
        """
        self.kill(signal.SIGKILL)
        if self.cgroup is not None and self.pidfd is not None:
            with contextlib.suppress(Exception):
                self.cgroup.send_kill()

    def stats(self) -> CgroupStats:
        """The live counters of a running container's cgroup (memory, CPU, throttling,
        pids, I/O).  ContainerStateError once it has exited: see :attr:`result`."""
        if self.cgroup is None or self.pidfd is None:
            raise ContainerStateError(f"container {self.name} is not running: no stats")
        return self.cgroup.stats()

    async def pause(self) -> None:
        """Freeze every process of the container (v2 ``cgroup.freeze``, v1 freezer).

        Returns once the kernel reports the cgroup frozen; ``state`` becomes
        ``paused``.  Signals stay pending until :meth:`resume`; :meth:`kill_all`
        still works on a paused container.
        """
        if self.cgroup is None or self.pidfd is None or self.state != "running":
            raise ContainerStateError(f"cannot pause container {self.name}: it is {self.state}")
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.cgroup.freeze)
        self.state = "paused"

    async def resume(self) -> None:
        """Thaw a container frozen by :meth:`pause`; ``state`` goes back to ``running``."""
        if self.cgroup is None or self.pidfd is None or self.state != "paused":
            raise ContainerStateError(f"cannot resume container {self.name}: it is {self.state}")
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.cgroup.thaw)
        self.state = "running"

    async def stop(self, grace_period: float = 10.0, sig: int = signal.SIGTERM) -> RunResult:
        """Graceful stop: ``sig``, then SIGKILL after ``grace_period`` seconds."""
        import anyio

        self.kill(sig)
        with anyio.move_on_after(grace_period):
            return await self.wait()
        self.kill_all()
        return await self.wait()

    def resize(self, rows: int, columns: int) -> None:
        """Set the window size of the container's terminal (SIGWINCH inside)."""
        if self.terminal_fd is not None:
            import termios  # here: most containers have no terminal (a cold start's ms)

            with contextlib.suppress(OSError):
                fcntl.ioctl(
                    self.terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0)
                )

    def fit_to_caller_terminal(self) -> None:
        """Give the container's terminal the size of ours (stdout's, else stdin's), if
        we run on one: at the start, and on each SIGWINCH."""
        from vortex.terminal import window_size

        size = window_size(1) or window_size(0)
        if size:
            self.resize(*size)

    async def oom_events(self) -> AsyncIterator[int]:
        """Yield the ``oom_kills`` count each time the OOM killer strikes in this container.

        First the count so far, if it is not 0; then each new count.
        Notified by the kernel (inotify on v2 ``memory.events``, an eventfd on
        v1), not polled; the iteration ends when the container has exited.  A
        process killed while PID 1 lives on shows up here and in the
        ``container.oom`` log event, not in the final result's ``oom_killed``.
        """
        import anyio

        send, receive = anyio.create_memory_object_stream[int](16)
        if self.oom_kills:
            send.send_nowait(self.oom_kills)  # what happened before the call
        if self._result is not None:
            send.close()
        else:
            self._oom_subscribers.append(send)
        async with receive:
            async for count in receive:
                yield count

    def _report_oom(self, count: int) -> None:
        """Called by the Runtime's OOM watcher with the new ``oom_kill`` count."""
        self.oom_kills = count
        import anyio

        for send in self._oom_subscribers:
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                send.send_nowait(count)

    def _finish(self, result: RunResult) -> None:
        for send in self._oom_subscribers:
            send.close()
        self._oom_subscribers.clear()
        self._result = result
        self.state = "exited"
        if self._exited is not None:
            self._exited.set()
