"""Run a command inside a running container: ``python -m vortex.supervise.nsexec``.

The supervisor is threaded (anyio worker threads, plugins), so it must not
fork, and ``setns`` into a mount namespace refuses a multi-threaded caller.
This module therefore runs as its own fresh, single-threaded process, spawned
with ``subprocess`` (fork+exec in C, safe from a threaded parent):

1. it reads one request line (JSON) on stdin: the container init's PID, the
   command, environment, working directory and user; then it waits for one
   more byte, which the supervisor sends after moving this process into the
   container's cgroup (``Cgroup.attach``, every hierarchy);
2. it opens ``/proc/PID/ns/{ipc,uts,net,cgroup,pid,mnt}`` and ``setns`` into
   each (the mount namespace last: it also resets root and working directory
   to the container's root);
3. it forks, because joining a PID namespace only applies to children; the
   child sets the parent-death signal, changes user and directory and
   ``execve``s the command; the parent waits and exits with the child's status
   (128+N for signal N; 127/126 when the command cannot be executed, 125 when
   joining failed, with a one-line reason on stderr).

What it does not do yet: apply the container's seccomp filter and capability
bounding set to the command (it runs with the same namespaces, cgroup, uid and
gid as the container, like ``nsenter``, not like ``runc exec``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any

NAMESPACES = ("ipc", "uts", "net", "cgroup", "pid", "mnt")
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns {what}: {os.strerror(err)}")


def _fail(message: str, status: int = 125) -> None:
    sys.stderr.write(f"vortex exec: {message}\n")
    sys.stderr.flush()
    os._exit(status)


def run(request: dict[str, Any]) -> None:
    pid = int(request["pid"])
    argv = [str(a) for a in request["argv"]]
    env = {str(k): str(v) for k, v in request.get("env", {}).items()}
    workdir = str(request.get("workdir", "/"))
    uid, gid = int(request.get("uid", 0)), int(request.get("gid", 0))
    fds: list[tuple[str, int]] = []
    try:
        for name in NAMESPACES:
            fds.append((name, os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)))
        for name, fd in fds:
            _setns(fd, name)
            os.close(fd)
    except OSError as exc:
        _fail(f"cannot join the container's namespaces: {exc.strerror or exc}")
    child = os.fork()
    if child == 0:
        try:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                os.chdir(workdir)
            except OSError:
                os.chdir("/")
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            os.execvpe(argv[0], argv, env)
        except FileNotFoundError:
            _fail(f"exec {argv[0]}: no such file or directory", 127)
        except PermissionError:
            _fail(f"exec {argv[0]}: permission denied", 126)
        except OSError as exc:
            _fail(f"exec {argv[0]}: {exc.strerror}", 126)
        os._exit(125)  # pragma: no cover
    _, status = os.waitpid(child, 0)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def main() -> None:
    line = sys.stdin.buffer.readline()
    try:
        request = json.loads(line)
    except ValueError:
        _fail("bad request")
    if sys.stdin.buffer.read(1) != b"\x01":  # the supervisor placed us in the cgroup
        _fail("aborted by the supervisor")
    run(request)


if __name__ == "__main__":
    main()
