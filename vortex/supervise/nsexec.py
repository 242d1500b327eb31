"""Run a command inside a running container: ``python -m vortex.supervise.nsexec``.

The supervisor is threaded (anyio worker threads, plugins), so it must not
fork, and ``setns`` into a mount namespace refuses a multi-threaded caller.
This module therefore runs as its own fresh, single-threaded process, spawned
with ``subprocess`` (fork+exec in C, safe from a threaded parent):

1. it reads one request line (JSON) on stdin: the container init's PID, the
   command, environment, working directory, user and the container's compiled
   security settings; then it waits for one more byte, which the supervisor
   sends after moving this process into the container's cgroup
   (``Cgroup.attach``, every hierarchy);
2. it opens ``/proc/PID/ns/{ipc,uts,net,cgroup,pid,mnt}`` (and ``user`` when the
   container has one) and ``setns`` into each: the mount namespace resets root
   and working directory to the container's root; the user namespace comes
   last, while we still hold the host's capabilities the others require;
3. it forks, because joining a PID namespace only applies to children; the
   child confines itself exactly as the container's init did before its exec
   (vortex/security/apply.py: rlimits, bounding set, user and groups,
   capability sets, no_new_privs, the seccomp filter), changes directory and
   ``execve``s the command; the parent waits and exits with the child's status
   (128+N for signal N; 127/126 when the command cannot be executed, 125 when
   joining or confining failed, with a one-line reason on stderr).

Like ``runc exec`` and unlike ``nsenter``: the command is an executable of the
container's root filesystem, which the container itself can replace, so it must
get no more privilege than the container's own processes.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import pickle
import signal
import sys
from typing import Any

from vortex.security import apply as security
from vortex.security.policy import InitSecurity

NAMESPACES = ("ipc", "uts", "net", "cgroup", "pid", "mnt")
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def encode_security(sec: InitSecurity) -> str:
    """The request's ``security`` field (the supervisor is this process's parent:
    pickle across the pipe is trusted)."""
    return base64.b64encode(pickle.dumps(sec)).decode("ascii")


def _decode_security(text: str) -> InitSecurity:
    sec = pickle.loads(base64.b64decode(text))
    if not isinstance(sec, InitSecurity):
        raise ValueError("security: not an InitSecurity")
    return sec


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns {what}: {os.strerror(err)}")


def _fail(message: str, status: int = 125) -> None:
    sys.stderr.write(f"vortex exec: {message}\n")
    sys.stderr.flush()
    os._exit(status)


def _join(pid: int, sec: InitSecurity) -> None:
    namespaces = (*NAMESPACES, "user") if sec.userns else NAMESPACES
    fds: list[tuple[str, int]] = []
    try:
        for name in namespaces:
            fds.append((name, os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)))
        for name, fd in fds:
            _setns(fd, name)
    except OSError as exc:
        _fail(f"cannot join the container's namespaces: {exc.strerror or exc}")
    finally:
        for _name, fd in fds:
            os.close(fd)


def run(request: dict[str, Any]) -> None:
    pid = int(request["pid"])
    argv = [str(a) for a in request["argv"]]
    env = {str(k): str(v) for k, v in request.get("env", {}).items()}
    workdir = str(request.get("workdir", "/"))
    uid, gid = int(request.get("uid", 0)), int(request.get("gid", 0))
    try:
        sec = _decode_security(str(request["security"]))
    except (KeyError, ValueError, pickle.UnpicklingError) as exc:
        _fail(f"bad request: {exc}")
    _join(pid, sec)
    child = os.fork()
    if child == 0:
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            try:
                if sec.userns:
                    security.become_namespace_root()  # sets the parent-death signal again
                security.confine(uid, gid, sec)  # the init's own steps, in its order
            except OSError as exc:
                _fail(f"cannot confine the command as the container is: {exc.strerror or exc}")
            try:
                os.chdir(workdir)
            except OSError:
                os.chdir("/")
            try:  # no_new_privs and seccomp: the last steps before exec
                security.lock_down(sec)
            except OSError as exc:
                _fail(f"cannot confine the command as the container is: {exc.strerror or exc}")
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
