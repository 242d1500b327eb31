"""The typed outcome of one container run."""

from __future__ import annotations

import signal as _signal

from vortex.errors import EXIT_RUNTIME_ERROR
from vortex.records import record


@record
class RunResult:
    """How a container ended, with its statistics.

    Exactly one of ``exit_code`` and ``signal`` is set for a container that
    ran; both are ``None`` when the start failed (then ``error`` says why).
    """

    container_id: str
    name: str
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    """The kernel's OOM killer killed a process of the container (cgroup ``oom_kill``)."""
    wall_time: float = 0.0
    """Seconds from the clone to the reaping of the init."""
    cpu_time: float | None = None
    """CPU seconds used by every process of the container (from its cgroup)."""
    memory_peak: int | None = None
    """Highest memory use of the container in bytes (from its cgroup)."""
    oom_kills: int = 0
    """How many processes the OOM killer killed (also ones PID 1 survived)."""
    pids_peak: int | None = None
    """Highest number of tasks (v2 ``pids.peak``; None on v1)."""
    cpu_throttled_periods: int | None = None
    """CFS periods in which the container was throttled by its ``cpus`` limit."""
    cpu_throttled_time: float | None = None
    """Seconds the container spent throttled by its ``cpus`` limit."""
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    """Bytes read from / written to block devices (v2 ``io.stat``, v1 blkio)."""
    stdout: bytes | None = None
    stderr: bytes | None = None
    error: str | None = None
    """Why the container could not be started, if it could not."""

    @property
    def status(self) -> int:
        """The shell-style status: the exit code, or 128+N when killed by signal N."""
        if self.exit_code is not None:
            return self.exit_code
        if self.signal is not None:
            return 128 + self.signal
        return EXIT_RUNTIME_ERROR

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    def describe(self) -> str:
        """One line for humans: 'exited with status 3', 'OOM-killed', ..."""
        if self.error is not None:
            return f"failed to start: {self.error}"
        if self.oom_killed:
            return f"was OOM-killed (memory limit reached; peak {self.memory_peak} bytes)"
        if self.signal is not None:
            return f"was killed by {self.signal_name}"
        return f"exited with status {self.exit_code}"
