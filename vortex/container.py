"""The handle of one container, as the Runtime hands it out."""

from __future__ import annotations

import contextlib
import fcntl
import signal
import struct
import termios
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from vortex.result import RunResult
from vortex.spec import ContainerSpec

if TYPE_CHECKING:
    from vortex.cgroups.base import Cgroup


class Container:
    """A container started by a :class:`vortex.Runtime`.

    ``state`` goes ``creating`` → ``created`` (cloned, held before setup) →
    ``running`` (the command was executed) → ``exited``.  The Runtime reaps the
    init in its own task; :meth:`wait` returns the :class:`RunResult`.
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
        self._exited = anyio.Event()
        self._result: RunResult | None = None

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.state} pid={self.pid}>"

    @property
    def result(self) -> RunResult | None:
        """The result once the container has exited, else ``None``."""
        return self._result

    async def wait(self) -> RunResult:
        """Wait until the container has exited and been cleaned up."""
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
        """SIGKILL every process of the container at once (through its cgroup)."""
        self.kill(signal.SIGKILL)
        if self.cgroup is not None and self.pidfd is not None:
            with contextlib.suppress(Exception):
                self.cgroup.kill()

    async def stop(self, grace_period: float = 10.0, sig: int = signal.SIGTERM) -> RunResult:
        """Graceful stop: ``sig``, then SIGKILL after ``grace_period`` seconds."""
        self.kill(sig)
        with anyio.move_on_after(grace_period):
            return await self.wait()
        self.kill_all()
        return await self.wait()

    def resize(self, rows: int, columns: int) -> None:
        """Set the window size of the container's terminal (SIGWINCH inside)."""
        if self.terminal_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(
                    self.terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0)
                )

    def _finish(self, result: RunResult) -> None:
        self._result = result
        self.state = "exited"
        self._exited.set()
