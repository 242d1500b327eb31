"""A spare init: the next container's init, cloned before anyone asks for it.

Why: in a warm Runtime, the fork helper's clone (the request, a fork of a
Python process, five new namespaces, the reply with its pidfd) takes ~1.5 ms
of the ~8.5 ms between ``Runtime.run`` and the command's ``execve``, and the
caller waits for all of it.  So a Runtime keeps one init cloned ahead, in its
namespaces, waiting on a socket of its own (its process name is
``vortex-spare``).  The next container whose spec allows it takes the spare:
the request the fork helper would have been sent goes to the spare, which
from then on runs exactly as a freshly cloned init.  While it waits it does
what no spec changes (vortex/helper/server.py ``_wait_as_spare``): the init's
first steps, and, unless its request comes soon (back to back), its kernel
filesystems, detached (vortex/helper/kernelfs.py).
It also brings ``lo`` up when the last container's plan did (the net plugin's
does): a container whose plan differs is cloned fresh (``SpareInit.fits``).
The helper clones the next spare while that container runs, or once it exited
when the start found the Runtime idle (``Runtime._next_spare_at_exit``).

The spare comes with what a container gets before its clone: an id, a state
record and a cgroup, and it is in that cgroup before anyone asks for it.  On
cgroup v2 it is cloned into it (CLONE_INTO_CGROUP, as every v2 init).  On v1,
which has no such clone, the spare moves itself in before it waits, and
reports that on its socket, which :meth:`clone` awaits: that migration may
wait for the kernel's cgroup lock (cgroups/warmup.py), and this way the wait
holds up only the spare, and never a start that finds it ready (measured on
the v1 host, back to back:
~0.4 ms less per start, 156 → 167 containers/s; after 100 ms pauses 1.0 ms
less).  The container that takes it gets that id and cgroup.  So a
Runtime's idle spare shows as one cgroup holding one ``vortex-spare``
process, and a container that took a spare has its init in
``container.cgroup`` already when ``vortex_prepare`` runs (``container.pid``
is still ``None`` there).  A v1 limit that needs an on-demand hierarchy
(cpuset, blkio, hugetlb: created by ``Cgroup.apply``) is the exception: the
Runtime moves the init into it after ``vortex_prepare``.

The cost: one waiting process (a copy-on-write fork of the helper) and its
namespaces per Runtime, and one clone thrown away when the Runtime closes.
``Runtime(spare_init=False)`` turns it off.  With the kernel filesystems it
also takes ahead the copy-on-write faults its init will take
(vortex/helper/prefault.py; ``Runtime(spare_prefault=False)`` turns that off).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Collection

import anyio

from vortex import rootless
from vortex.errors import CgroupError, VortexError
from vortex.helper.client import ForkHelper, encoded
from vortex.helper.plan import PLACED, SpareRequest, SpawnRequest
from vortex.lifecycle import NAMESPACE_FLAGS, Host, release_id
from vortex.ops import brings_loopback_up
from vortex.spec import ContainerSpec

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from vortex.cgroups import Cgroup


def may_take(spec: ContainerSpec) -> bool:
    """Whether a container of ``spec`` will most likely be cloned with the spare's
    flags.  A user namespace (``--userns``, rootless, an OCI bundle's literal
    configuration) changes them; a security hook that asks for one is caught later,
    by :meth:`SpareInit.fits`."""
    options = spec.security
    return options.userns is None and options.literal is None and not rootless.is_rootless()


class SpareInit:
    """One init waiting for its container's request; owns its pidfd and socket until
    :meth:`hand_over` (then the container owns the pidfd) or :meth:`discard`."""

    def __init__(
        self,
        container_id: str | None,
        cgroup: Cgroup | None,
        pid: int,
        pidfd: int,
        requests: socket.socket,
        *,
        placed_in: Collection[str] = (),
        loopback: bool = False,
    ) -> None:
        self.container_id = container_id
        """The id (with a state record) the spare's cgroup was made for; None when the
        host gives containers no cgroup (rootless without delegation)."""
        self.cgroup = cgroup
        self.pid = pid
        self.pidfd: int | None = pidfd
        self._requests = requests
        self.placed_in = frozenset(placed_in)
        """The ``cgroup.procs`` files of the directories the spare is in: ``cgroup``'s,
        as far as they existed when it was cloned (a v1 limit may add a hierarchy)."""
        self.clone_flags = NAMESPACE_FLAGS
        self.loopback = loopback
        """Asked to bring ``lo`` up while it waits: only a plan with LoopbackUp fits."""

    @classmethod
    async def clone(
        cls,
        host: Host,
        helper: ForkHelper,
        *,
        prefault: bool = False,
        loopback: bool = False,
        ahead_after: float = 0.0,
    ) -> SpareInit:
        """First record an id and create its cgroup, then have the helper clone a
        spare into that cgroup (on v1 the spare moves itself in, and this waits for
        its report).  On failure nothing is left behind.
        Once it has waited ``ahead_after`` seconds without its request it creates
        its container's kernel filesystems (helper/kernelfs.py) and, with
        ``prefault``, copies the pages its init will write (helper/prefault.py);
        with ``loopback`` it brings ``lo`` up, and only a container whose plan does
        so will fit."""
        container_id = None
        if host.cgroups is not None:
            container_id = os.urandom(16).hex()
            parent = host.cgroups.parent
            host.state.record(container_id, container_id[:12], container_id, parent)
        cgroup = None
        ours = None
        spare = None
        try:
            if host.cgroups is not None and container_id is not None:
                cgroup = host.cgroups.create(container_id)
            ours, theirs = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
            )
            cgroup_fd = cgroup.clone_fd() if cgroup is not None else None
            fds = [theirs.fileno()] + ([cgroup_fd] if cgroup_fd is not None else [])
            placed_in = cgroup.procs_files() if cgroup is not None else []
            # Without CLONE_INTO_CGROUP (v1) the spare moves itself in.
            join = placed_in if cgroup_fd is None else []
            try:
                request = SpareRequest(
                    NAMESPACE_FLAGS,
                    has_cgroup_fd=cgroup_fd is not None,
                    prefault=prefault,
                    loopback=loopback,
                    ahead_after=ahead_after,
                    join=tuple(join),
                )
                pid, pidfd = await helper.spawn(request, fds)
            finally:
                theirs.close()
                if cgroup_fd is not None:
                    os.close(cgroup_fd)
            spare = cls(
                container_id, cgroup, pid, pidfd, ours, placed_in=placed_in, loopback=loopback
            )
            if join:
                await spare._await_placed()
        except BaseException:
            with anyio.CancelScope(shield=True):
                if spare is not None:
                    await spare.discard()
            if ours is not None:
                ours.close()
            if cgroup is not None:
                with contextlib.suppress(VortexError):
                    cgroup.remove()
            if container_id is not None:
                host.state.forget(container_id)
            raise
        return spare

    async def _await_placed(self) -> None:
        """Wait for the spare's report that it joined its cgroups (v1): CgroupError
        with its reason when it could not (it then exits)."""
        await anyio.wait_readable(self._requests)
        report = self._requests.recv(512)
        if report != PLACED:
            raise CgroupError(report.decode(errors="replace") or "the spare init exited")

    def fds(self) -> list[int]:
        """The descriptors the spare holds in the Runtime (for leak accounting)."""
        held = [] if self._requests.fileno() < 0 else [self._requests.fileno()]
        return held + ([self.pidfd] if self.pidfd is not None else [])

    def fits(self, request: SpawnRequest) -> bool:
        """The container's init needs the namespaces the spare was cloned with, and
        ``lo`` up exactly when the spare brought it up (no init takes it down)."""
        return request.clone_flags == self.clone_flags and self.loopback == brings_loopback_up(
            request.plan.ops
        )

    def hand_over(self, request: SpawnRequest, fds: list[int]) -> int:
        """Send the spare its container's request (the fds are only lent); returns the
        pidfd, which the caller owns from now on.  OSError when the spare is gone."""
        with encoded(request, fds) as (payload, lent):
            socket.send_fds(self._requests, [payload], lent)
        self._requests.close()
        pidfd, self.pidfd = self.pidfd, None
        assert pidfd is not None
        return pidfd

    async def discard(self) -> None:
        """End the spare's process and reap it.  Its id, record and cgroup stay: a
        container that took them keeps them, :meth:`release` frees them otherwise."""
        self._requests.close()
        pidfd, self.pidfd = self.pidfd, None
        if pidfd is None:
            return
        try:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            with anyio.CancelScope(shield=True):
                await anyio.wait_readable(pidfd)
            # Does not block: the pidfd is readable, so the spare is a zombie.
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)  # noqa: ASYNC222
        finally:
            os.close(pidfd)

    async def release(self, host: Host) -> None:
        """Nobody took the spare (the Runtime closes): discard it and free its cgroup
        and record."""
        await self.discard()
        if self.container_id is not None:
            release_id(host, self.container_id, self.cgroup)
