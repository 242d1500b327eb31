"""OOM notification without polling: a file descriptor that becomes readable on OOM.

* cgroup v2: inotify (``IN_MODIFY``) on the container's ``memory.events``; the
  kernel signals a modification each time a counter in it changes, as conmon
  and containerd watch it.
* cgroup v1: an eventfd registered through ``cgroup.event_control`` for
  ``memory.oom_control``; it is signalled on every OOM in the cgroup (and once
  more when the cgroup is removed).

Either way the fd only says "something happened": :meth:`OomWatch.oom_kills`
then reads the ``oom_kill`` counter, which counts processes the OOM killer
actually killed.  The runtime awaits the fd in its event loop
(:func:`vortex.runtime.Runtime` starts one watcher task per container; a direct
run polls it beside the pidfd) and :func:`report_new_kills` emits the
``container.oom`` log event and feeds :meth:`vortex.Container.oom_events`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

from vortex import log
from vortex.cgroups._common import parse_flat_keyed, read_optional
from vortex.cgroups.base import Cgroup

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from vortex.container import Container

IN_MODIFY = 0x00000002
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

RECHECK_DELAYS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5)
"""Seconds after a notification at which the counter is read again: v1 notifies
when the OOM starts, before the victim is killed and counted."""

_libc: ctypes.CDLL | None = None


def _inotify_fd(path: str) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd: int = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), "inotify_init1")
    if _libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY) < 0:
        errno = ctypes.get_errno()
        os.close(fd)
        raise OSError(errno, os.strerror(errno), path)
    return fd


class OomWatch:
    """An fd that is readable after an OOM event in one container's cgroup."""

    def __init__(self, fd: int, counter_file: str) -> None:
        self.fd = fd
        self._counter_file = counter_file

    @classmethod
    def open(cls, cgroup: Cgroup) -> OomWatch | None:
        """A watch for ``cgroup``, or None when it has no memory controller to watch."""
        from vortex.cgroups.v1 import V1Cgroup

        try:
            if isinstance(cgroup, V1Cgroup):
                directory = cgroup.path("memory")
                return None if directory is None else cls._v1(directory)
            # Otherwise v2; its module is imported only then (it is not loaded on v1).
            from vortex.cgroups.v2 import V2Cgroup

            if isinstance(cgroup, V2Cgroup):
                events = os.path.join(cgroup.path, "memory.events")
                if os.path.exists(events):
                    return cls(_inotify_fd(events), events)
        except OSError:
            return None
        return None

    @classmethod
    def _v1(cls, directory: str) -> OomWatch:
        control = os.path.join(directory, "memory.oom_control")
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(control, os.O_RDONLY | os.O_CLOEXEC)
            try:
                event_control = os.open(
                    os.path.join(directory, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC
                )
                try:
                    os.write(event_control, f"{efd} {ofd}".encode())
                finally:
                    os.close(event_control)
            finally:
                # The kernel holds its own reference to the file from now on.
                os.close(ofd)
        except OSError:
            os.close(efd)
            raise
        return cls(efd, control)

    def drain(self) -> None:
        """Consume the pending notifications (inotify events or the eventfd count)."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.fd, 4096):
                pass

    def oom_kills(self) -> int:
        """The ``oom_kill`` counter now; 0 once the cgroup is gone."""
        try:
            text = read_optional(self._counter_file)
        except Exception:
            return 0
        return 0 if text is None else parse_flat_keyed(text).get("oom_kill", 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def report_new_kills(container: Container, watch: OomWatch) -> bool:
    """Read the counter; if it grew, emit ``container.oom`` and tell the container."""
    count = watch.oom_kills()
    if count <= container.oom_kills:
        return False
    log.emit("warning", "container.oom", container_id=container.id, oom_kills=count)
    container._report_oom(count)
    return True
