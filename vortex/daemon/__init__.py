"""``vortex daemon``: a warm Runtime that serves ``vortex run``.

A cold ``vortex run`` spends most of its time importing Python modules
(anyio, asyncio, pluggy, the runtime itself) before the container runs.  When
a daemon listens on its socket, ``vortex run`` instead hands its command line,
its working directory and its standard streams (file descriptors, over
SCM_RIGHTS) to the daemon and waits for the exit status: the client imports
nothing but C modules (:mod:`vortex.daemon.client`), the daemon starts the
container on its already warm Runtime (:mod:`vortex.daemon.server`).

What the user sees is the same either way: the container's stdio is the
client's, signals sent to the client reach the container, the exit status is
the command's, errors are the same one-line messages, and a client that dies
takes its container with it.  Whatever the daemon does not serve (a terminal,
``--no-plugin``, another cgroup parent, a non-root caller) the client runs
in-process, as it does when no daemon listens.  docs/daemon.md has the rest.
"""
