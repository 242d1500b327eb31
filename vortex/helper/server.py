"""The fork helper: a privileged, single-threaded process that only clones.

Why it exists: ``fork()``/``clone()`` in a process that runs threads (anyio
worker threads, pyroute2, structlog handlers, plugins) can hand the child a
lock held by a thread that does not exist there.  The helper is forked (or
exec'd) before any of that, never starts a thread and never imports plugins,
so every container init starts from a clean, single-threaded image.

Protocol (one SOCK_SEQPACKET socket to the Runtime): an exec'd helper first
sends :data:`READY` (a forked one is ready at once); each request is a pickled
:class:`~vortex.helper.plan.SpawnRequest` with its fds as SCM_RIGHTS; the
reply is ``("ok", pid)`` with the pidfd attached, or ``("error", errno, text)``.
The child is cloned with CLONE_PARENT, so it is the *Runtime's* child and the
Runtime reaps it with ``waitid(P_PIDFD)``.

A :class:`~vortex.helper.plan.SpareRequest` clones a *spare* init instead: it
waits on a socket of its own for the SpawnRequest of the container that will
take it (vortex/spare.py), in the same encoding, and then runs exactly as a
child cloned for that request would.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Sequence

from vortex import _linux as L
from vortex.helper import kernelfs
from vortex.helper.init import prepare_process, run_init, try_loopback_up
from vortex.helper.plan import FD_ORDER, PLACED, SpareRequest, SpawnRequest
from vortex.helper.prefault import WrittenPages, populate_until_readable

MAX_REQUEST = 4 << 20
"""Upper bound of a pickled request: the kernel refuses an argv + environment above
ARG_MAX (2 MiB by default) anyway."""
MAX_INLINE_REQUEST = 64 << 10
"""Larger requests are written to a memfd (see SPILLED_REQUEST): one SOCK_SEQPACKET
message must fit the socket's send buffer."""
SPILLED_REQUEST = b"memfd"
"""The message of a request whose pickle is in the first fd passed with it."""
MAX_FDS = 16


READY = b"ready"
"""What an exec'd helper sends first, once it can serve: a Runtime that replaces its
forked helper by a fresh one in the background (``ForkHelper.renew``) waits for it."""


def serve(sock: socket.socket, *, announce: bool = False) -> None:
    """Answer spawn requests until the Runtime closes its end.  Never returns.

    :param announce: first send :data:`READY` (an exec'd helper does)."""
    status = 0
    try:
        _prepare_process()
        written_pages = WrittenPages()  # this helper's own: its spares' memory is its own
        if announce:
            sock.send(READY)
        while (received := receive_request(sock)) is not None:
            _handle(sock, *received, written_pages)
    except BaseException:
        status = 1
    finally:
        os._exit(status)


def _prepare_process() -> None:
    L.set_process_name("vortex-helper")
    # Ctrl-C on the terminal reaches the whole process group; the Runtime decides
    # what a SIGINT means, the helper must simply survive it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # an inherited event-loop wakeup fd is not ours
    L.set_parent_death_signal(signal.SIGKILL)


def receive_request(sock: socket.socket) -> tuple[SpawnRequest | SpareRequest, list[int]] | None:
    """The next request and its fds; None once the other end closed the socket."""
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, MAX_INLINE_REQUEST, MAX_FDS)
        except InterruptedError:
            continue
        if not message:
            _close(fds)
            return None
        if message == SPILLED_REQUEST:
            message, fds = _read_spilled(fds[0]), fds[1:]
        request: SpawnRequest | SpareRequest = pickle.loads(message)
        return request, fds


def named_fds(request: SpawnRequest, fds: list[int]) -> tuple[dict[str, int], int | None]:
    """The init's fds by name (FD_ORDER, then the console socket), and the cgroup fd."""
    named = dict(zip(FD_ORDER, fds, strict=False))
    extra = fds[len(FD_ORDER) :]
    if request.has_console_socket:
        named["console"] = extra.pop(0)
    return named, extra.pop(0) if request.has_cgroup_fd else None


def _handle(
    sock: socket.socket,
    request: SpawnRequest | SpareRequest,
    fds: list[int],
    written_pages: WrittenPages,
) -> None:
    learner = None
    if isinstance(request, SpareRequest):
        named, cgroup_fd = {"spare": fds[0]}, fds[1] if request.has_cgroup_fd else None
        written_pages.refresh()  # the spare inherits what the learners have listed
        learner = written_pages.claim_learner()
    else:
        named, cgroup_fd = named_fds(request, fds)
    try:
        pid, pidfd = L.clone3(request.clone_flags, cgroup_fd=cgroup_fd, parent=True)
    except OSError as exc:
        reply = pickle.dumps(("error", exc.errno or 0, str(exc)))
        sock.send(reply)
        _close(fds)
        return
    if pid == 0:
        sock.close()
        if isinstance(request, SpareRequest):
            # never returns
            _wait_as_spare(named["spare"], request, written_pages, learner)
        else:
            run_init(request.plan, named)  # never returns
    try:
        socket.send_fds(sock, [pickle.dumps(("ok", pid))], [pidfd])
    finally:
        os.close(pidfd)
        _close(fds)


def _wait_as_spare(
    fd: int, asked: SpareRequest, written_pages: WrittenPages, learner: int | None
) -> None:
    """In a spare init: wait for the request of the container that takes us, then be
    its init.  Never returns: EOF (the Runtime discarded us) exits.

    While it waits it does what does not depend on its container: the init's
    first steps (signals, session), with ``loopback`` ``lo`` up (the Runtime
    asks for that only when its container's plan will), and, once its request
    has not come for ``ahead_after`` seconds, its kernel filesystems, detached
    (helper/kernelfs.py), and with ``prefault`` the copy-on-write faults its
    init will take, as far as the helper knows them; as a ``learner`` its init
    lists them (helper/prefault.py)."""
    status = 1
    try:
        # First the parent-death signal: the Runtime's death must not leave us waiting.
        prepare_process()
        L.set_process_name("vortex-spare")  # what ps shows while it waits
        premounts = None
        with socket.socket(fileno=fd) as spare:
            if asked.join and not _join_cgroups(spare, asked.join):
                return
            # The kernel's work for a network device going up (~0.3 ms on 2 cores), off
            # the start's path.  If it fails here, the init tries again at its plan's
            # LoopbackUp and reports the failure as a fresh init would.
            loopback_up = asked.loopback and try_loopback_up()
            try:
                received = _receive_within(spare, asked.ahead_after)
            except TimeoutError:  # no request yet: work ahead, then wait for it
                # Restricted devices are the default (vortex/plugins/security.py).
                premounts = kernelfs.Premounts.make(nodev=True)
                if asked.prefault:
                    populate_until_readable(written_pages.runs, fd)
                received = receive_request(spare)
        if received is not None:
            request, fds = received
            assert isinstance(request, SpawnRequest)
            named, _no_cgroup_fd = named_fds(request, fds)
            # never returns
            run_init(
                request.plan,
                named,
                prepared=True,
                premounts=premounts,
                loopback_up=loopback_up,
                last_as_root=None if learner is None else lambda: written_pages.record(learner),
            )
        status = 0
    finally:
        os._exit(status)


def _join_cgroups(sock: socket.socket, procs_files: Sequence[str]) -> bool:
    """Move this process into each v1 cgroup and tell the Runtime (PLACED, or the
    error).  Done here, not by the Runtime: after a quiet moment a v1 migration
    waits for an RCU grace period (cgroups/warmup.py), which then holds up this
    process only, not the Runtime's event loop or the fork helper."""
    for procs_file in procs_files:
        try:
            fd = os.open(procs_file, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")  # 0: the writing process
            finally:
                os.close(fd)
        except OSError as exc:
            sock.send(f"cannot move the spare init into {procs_file}: {exc.strerror}".encode())
            return False
    sock.send(PLACED)
    return True


def _receive_within(
    sock: socket.socket, seconds: float
) -> tuple[SpawnRequest | SpareRequest, list[int]] | None:
    """:func:`receive_request`, or TimeoutError after ``seconds`` (at once for 0).

    The timeout is the kernel's (SO_RCVTIMEO) on a blocking receive, not a poll
    first: a spare woken by its request then wakes as one blocked in recvmsg does,
    which back to back at concurrency 2 was ~0.2 ms of CPU per container cheaper."""
    if seconds <= 0:
        raise TimeoutError
    whole = int(seconds)
    timeout = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
    try:
        return receive_request(sock)
    except BlockingIOError:  # EAGAIN: the time ran out
        raise TimeoutError from None
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 0))


def _read_spilled(memfd: int) -> bytes:
    try:
        size = os.fstat(memfd).st_size
        return os.pread(memfd, size, 0)
    finally:
        os.close(memfd)


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def main() -> None:
    """The exec'd helper (vortex/helper/__main__.py, for a threaded caller or a fresh
    interpreter): it announces when it is ready."""
    serve(socket.socket(fileno=int(sys.argv[1])), announce=True)
