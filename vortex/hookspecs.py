"""Every hook a Vortex plugin can implement: the plugin API, in one module.

A plugin is any module or object with functions named like the hooks below,
decorated with :data:`vortex.hookimpl`.  pluggy calls them with keyword
arguments, and an implementation may accept any *subset* of a hook's
parameters, so hooks can grow parameters without breaking plugins.

Lifecycle of one container, and where each hook runs::

    Runtime (event loop)                      container init (cloned child)
    ---------------------                     ------------------------------
    vortex_prepare(container)
    vortex_pre_pivot(container) -> ops
    vortex_security(container, policy)
    clone3 ------------------------------->   waits on the sync pipe
    (cgroup placement)
    vortex_post_cgroup(container)
    sync byte ---------------------------->   mounts, ops, pivot_root, exec
    vortex_post_start(container)
    ... the command runs ...
    reap (waitid on the pidfd)
    vortex_on_exit(container, result)

No plugin code ever runs in the container init: ``vortex_pre_pivot`` returns a
plan of :mod:`vortex.ops` operations that the init applies.

Hooks that run in the Runtime may be ``async def``; the Runtime awaits them one
after another in pluggy's order (``tryfirst`` first, then most recently
registered first, ``trylast`` last).  ``vortex run`` has no event loop
(:mod:`vortex.direct`): it calls them in the same order and runs each async
implementation on a loop of its own.  Any exception raised by a
hook aborts the start of that container (for ``vortex_prepare``,
``vortex_pre_pivot``, ``vortex_post_cgroup``), is reported as a :class:`vortex.errors.PluginError`
naming the plugin and hook, and leaves nothing behind: ``vortex_on_exit`` is
still called for every plugin, so each plugin releases what it created.

Reference with signatures and examples: ``docs/plugin-hooks.md``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

import pluggy

from vortex.hookimpl_marker import PROJECT as PROJECT
from vortex.hookimpl_marker import hookimpl as hookimpl

if TYPE_CHECKING:
    from vortex.container import Container
    from vortex.ops import SetupOp
    from vortex.result import RunResult
    from vortex.security.policy import SecurityPolicy

hookspec = pluggy.HookspecMarker(PROJECT)


# --------------------------------------------------------------------- before clone


@hookspec
def vortex_prepare(container: Container) -> Awaitable[None] | None:
    """Allocate host-side resources for a container that is about to start.

    Runs in the Runtime's event loop (may be ``async def``), before the clone.
    ``container.cgroup`` already exists (empty); ``container.pid`` is ``None``.
    Typical use: write cgroup limits (the ``limits`` plugin), reserve an IP
    address.  Raising aborts the start; ``vortex_on_exit`` is then called with
    a result whose ``error`` says why, so release what you created there.

    :param container: the container being started; ``container.spec`` is its spec.
    """


@hookspec
def vortex_pre_pivot(container: Container) -> Sequence[SetupOp] | None:
    """Contribute setup operations the container init applies before ``pivot_root``.

    Runs in the Runtime (synchronous only), before the clone.  Return a list of
    :mod:`vortex.ops` operations (bind mounts, tmpfs, files such as
    /etc/hosts, ``LoopbackUp``); paths are container paths.  The init applies
    every plugin's list in call order, after the rootfs bind mount and the
    core mounts (/proc, /sys, /dev), in the container's private mount
    namespace.  Do not perform side effects here: return data.

    :param container: the container being started.
    :return: a sequence of operations, or ``None``.
    """


@hookspec
def vortex_security(container: Container, policy: SecurityPolicy) -> None:
    """Decide the container's capabilities, seccomp filter, masked paths and rlimits.

    Runs in the Runtime (synchronous only), before the clone, after
    ``vortex_pre_pivot``.  ``policy`` starts *unconfined* (every capability, no
    filter, nothing masked); edit it in place.  The built-in ``security``
    plugin runs first (``tryfirst``) and fills in the defaults from
    ``container.spec.security``, so later implementations see them and may
    tighten or relax them.  The init applies the result: masked and read-only
    paths after ``pivot_root``, rlimits, capabilities after the user switch,
    then no_new_privs and the seccomp filter as the last steps before
    ``execve``.  Do not perform side effects here.

    :param container: the container being started.
    :param policy: the :class:`vortex.security.SecurityPolicy` to edit in place.
    """


# --------------------------------------------------------------------- after clone


@hookspec
def vortex_post_cgroup(container: Container) -> Awaitable[None] | None:
    """The init exists, is in its cgroup and namespaces, and waits for this hook.

    Runs in the Runtime's event loop (may be ``async def``), after the clone and
    the cgroup placement, before the init mounts anything or runs a single
    instruction of the user's command.  ``container.pid`` (host PID) and
    ``container.pidfd`` are set; ``/proc/<pid>/ns/net`` is the container's
    network namespace, so this is where a network plugin moves a veth in.
    Raising aborts the start: the init is killed and reaped, then
    ``vortex_on_exit`` runs.

    :param container: the container, with ``pid`` and ``cgroup`` set.
    """


@hookspec
def vortex_post_start(container: Container) -> Awaitable[None] | None:
    """The command was executed successfully inside the container.

    Runs in the Runtime's event loop (may be ``async def``), right after
    ``execve`` succeeded (the close-on-exec error pipe closed with no
    message).  Exceptions are logged and do not stop the container.

    :param container: the running container.
    """


@hookspec
def vortex_on_exit(container: Container, result: RunResult) -> Awaitable[None] | None:
    """The container is over: reaped, or its start failed.  Release what you hold.

    Runs in the Runtime's event loop (may be ``async def``), exactly once for
    every container that reached ``vortex_prepare``, after the init was reaped
    and the cgroup statistics were read into ``result``, and before the cgroup
    is removed.  When the start failed, ``result.error`` holds the message and
    ``container.pid`` may be ``None``; a plugin whose ``vortex_prepare`` did not
    run for this container (an earlier plugin raised) must cope with that.
    Exceptions are logged; every other plugin still runs.

    :param container: the container.
    :param result: exit status, OOM flag, times and peak memory.
    """
