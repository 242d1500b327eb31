"""Rootless mode: what changes when vortex runs as an ordinary user (euid != 0).

The container gets a user namespace whose root is the caller's own uid/gid
(single-id maps written by the Runtime, ``setgroups`` denied first, as the
kernel requires of an unprivileged writer).  The state directory moves to a
user-writable place, and cgroups are used only when a writable (delegated)
cgroup v2 subtree is available; see docs/security.md, "Rootless".
"""

from __future__ import annotations

import contextlib
import os

from vortex.errors import PermissionDeniedError

NO_CGROUP_WARNING = (
    "vortex: rootless: no cgroup delegated, running without the default memory limit"
)
LIMITS_UNAVAILABLE = (
    "rootless: resource limits (--memory/--pids/--cpus/...) need a delegated cgroup v2 "
    "subtree, and none is writable by uid {uid}; run inside one (for example "
    "'systemd-run --user --scope -p Delegate=yes vortex run ...') or run vortex as root"
)


def is_rootless() -> bool:
    return os.geteuid() != 0


def state_dir() -> str:
    """``$XDG_RUNTIME_DIR/vortex`` when that directory is ours, else ``/tmp/vortex-UID``."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        try:
            st = os.stat(runtime_dir)
        except OSError:
            pass
        else:
            if st.st_uid == os.geteuid() and os.access(runtime_dir, os.W_OK | os.X_OK):
                return os.path.join(runtime_dir, "vortex")
    path = f"/tmp/vortex-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if st.st_uid != os.geteuid() or not os.path.isdir(path) or st.st_mode & 0o077:
        raise PermissionDeniedError(
            f"rootless: {path} is not a private directory of uid {os.geteuid()}; "
            f"remove it or set XDG_RUNTIME_DIR"
        )
    return path


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def check_user_namespaces() -> None:
    """One clear line when the kernel refuses unprivileged user namespaces."""
    if _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        raise PermissionDeniedError(
            "rootless: the kernel refuses unprivileged user namespaces "
            "(kernel.unprivileged_userns_clone = 0); enable it or run vortex as root"
        )
    if _read_int("/proc/sys/user/max_user_namespaces") == 0:
        raise PermissionDeniedError(
            "rootless: user namespaces are disabled (user.max_user_namespaces = 0); "
            "raise it or run vortex as root"
        )


def id_maps() -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int, int], ...]]:
    """Container root = the caller: ``0 euid 1`` / ``0 egid 1``."""
    return ((0, os.geteuid(), 1),), ((0, os.getegid(), 1),)


def delegated_cgroup_parent(root: str = "/sys/fs/cgroup") -> str | None:
    """A cgroup v2 directory below ``root`` we may create children in: the cgroup we
    run in, when it is writable by us (systemd user delegation), else None."""
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return None  # v1 or hybrid: never delegated to users
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            rel = line[3:].strip("/")
            path = os.path.join(root, rel)
            if (
                rel
                and os.access(path, os.W_OK | os.X_OK)
                and os.access(os.path.join(path, "cgroup.subtree_control"), os.W_OK)
            ):
                return rel
    return None
