"""Rootless mode: what changes when vortex runs as an ordinary user (euid != 0).

The container gets a user namespace whose root is the caller's own uid/gid.
When the caller has ranges in /etc/subuid and /etc/subgid and the setuid
helpers newuidmap/newgidmap are installed, container ids 1..N map to those
ranges, written by the helpers (as podman and rootlesskit do); otherwise the
Runtime writes single-id maps itself, ``setgroups`` denied first, as the
kernel requires of an unprivileged writer.  The state directory moves to a
user-writable place, and cgroups are used only when a writable (delegated)
cgroup v2 subtree is available; see docs/security.md, "Rootless".
"""

from __future__ import annotations

import contextlib
import os

from vortex import log
from vortex.errors import IdMappingError, PermissionDeniedError
from vortex.records import record
from vortex.userns import IdRange

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
MAX_EXTENTS = 340
"""Lines a uid_map or gid_map may hold (Linux 4.15 and later)."""
HELPERS_PACKAGE = "newuidmap/newgidmap (Debian/Ubuntu package uidmap, Fedora shadow-utils)"

IdMap = tuple[tuple[int, int, int], ...]
"""(inside, outside, count) lines."""

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


@record
class SubordinateIds:
    """The caller's ranges in /etc/subuid and /etc/subgid, and the helpers that map them."""

    user: str
    uid: int
    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]
    newuidmap: str
    newgidmap: str

    @property
    def owner(self) -> str:
        return f"{self.user} (uid {self.uid})"


def read_subid_file(path: str, user: str | None, uid: int) -> tuple[IdRange, ...]:
    """The ranges of ``user`` or of ``uid`` (subuid(5) accepts either) in ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    owners = {str(uid)} | ({user} if user else set())
    ranges = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in owners:
            continue
        first, count = fields[1], fields[2]
        if first.isdigit() and count.isdigit() and int(count) > 0:
            ranges.append((int(first), int(count)))
    return tuple(ranges)


def _find_helper(name: str) -> str | None:
    import shutil  # not at module level: a cold start pays for it only when needed

    return shutil.which(name) or shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")


def find_subordinate_ids() -> tuple[SubordinateIds | None, str]:
    """The caller's subordinate ids, or None and why they cannot be used."""
    import pwd

    uid, gid = os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None, f"uid {uid} has no entry in the user database, which newuidmap needs"
    owner = f"{entry.pw_name} (uid {uid})"
    uids = read_subid_file(SUBUID, entry.pw_name, uid)
    gids = read_subid_file(SUBGID, entry.pw_name, uid)
    if not uids or not gids:
        missing = SUBUID if not uids else SUBGID
        return None, f"{owner} has no range in {missing}"
    newuidmap, newgidmap = _find_helper("newuidmap"), _find_helper("newgidmap")
    if newuidmap is None or newgidmap is None:
        return None, f"{HELPERS_PACKAGE} are not installed"
    if gid != entry.pw_gid or os.getgid() != gid:
        # newgidmap only serves a caller whose real gid is its primary group.
        return None, f"gid {gid} is not the primary group {entry.pw_gid} of {owner}"
    return SubordinateIds(entry.pw_name, uid, uids, gids, newuidmap, newgidmap), ""


_explained = False


def subordinate_ids() -> SubordinateIds | None:
    """The caller's subordinate ids when they can be used; otherwise None, and the
    reason is logged once per process (single-id maps are a normal setup)."""
    global _explained
    subids, reason = find_subordinate_ids()
    if subids is None and not _explained:
        _explained = True
        log.emit("info", "rootless.single_id_maps", reason=reason)
    return subids


def require_subordinate_ids(what: str) -> SubordinateIds:
    subids, reason = find_subordinate_ids()
    if subids is None:
        raise IdMappingError(
            f"rootless: {what} needs subordinate ids, but {reason}; add ranges to "
            f"{SUBUID} and {SUBGID} (for example 'usermod --add-subuids 100000-165535 "
            f"--add-subgids 100000-165535 USER') and install {HELPERS_PACKAGE}"
        )
    return subids


def _stacked(ranges: tuple[IdRange, ...]) -> IdMap:
    """Container ids 1, 2, ... onto the ranges, in file order."""
    lines, inside = [], 1
    for first, count in ranges[: MAX_EXTENTS - 1]:
        count = min(count, 2**32 - 1 - inside)
        if count <= 0:
            break
        lines.append((inside, first, count))
        inside += count
    return tuple(lines)


def id_maps(subids: SubordinateIds | None = None) -> tuple[IdMap, IdMap]:
    """Container root = the caller: ``0 euid 1`` / ``0 egid 1``; with subordinate ids,
    container ids 1..N follow as the caller's ranges (``1 FIRST COUNT``, ...)."""
    uid_map: IdMap = ((0, os.geteuid(), 1),)
    gid_map: IdMap = ((0, os.getegid(), 1),)
    if subids is not None:
        uid_map += _stacked(subids.uids)
        gid_map += _stacked(subids.gids)
    return uid_map, gid_map


def describe_map(id_map: IdMap) -> str:
    return ", ".join(f"{i}-{i + n - 1} -> {o}-{o + n - 1}" for i, o, n in id_map)


def maps_own_ids_only(uid_map: IdMap, gid_map: IdMap) -> bool:
    """True when the maps name only the caller's own uid and gid: the one case the
    kernel lets an unprivileged process write itself (once, with setgroups denied)."""
    return uid_map == ((0, os.geteuid(), 1),) and gid_map == ((0, os.getegid(), 1),)


async def write_id_maps(pid: int, uid_map: IdMap, gid_map: IdMap) -> None:
    """Write the maps of a cloned init that waits on its sync pipe.

    Only the caller's own ids (:func:`maps_own_ids_only`) are written directly.
    Anything else goes through newuidmap/newgidmap, setuid helpers that check the
    ranges against /etc/subuid and /etc/subgid (newgidmap also allows setgroups
    when the gid ranges come from /etc/subgid).  The init is our unreaped child,
    so its PID cannot be reused.
    """
    if maps_own_ids_only(uid_map, gid_map):
        from vortex.security.apply import write_id_maps as write_directly

        write_directly(pid, uid_map, gid_map, deny_setgroups=True)
        return
    import anyio

    for kind, path, id_map in (("uid", SUBUID, uid_map), ("gid", SUBGID, gid_map)):
        tool = _find_helper(f"new{kind}map")
        if tool is None:
            raise IdMappingError(
                f"rootless: mapping {kind}s {describe_map(id_map)} needs {HELPERS_PACKAGE}, "
                "which are not installed"
            )
        argv = [tool, str(pid), *(str(n) for line in id_map for n in line)]
        done = await anyio.run_process(argv, check=False)
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            detail = lines[-1] if lines else f"exit status {done.returncode}"
            raise IdMappingError(
                f"rootless: new{kind}map refused {kind}s {describe_map(id_map)} ({detail}); "
                f"fix the ranges of uid {os.geteuid()} in {path} (NAME:FIRST:COUNT, not "
                f"overlapping your own {kind}), or remove them to map only your own {kind}"
            )


def delegated_cgroup_parent(root: str = "/sys/fs/cgroup") -> str | None:
    """A cgroup v2 directory below ``root`` we may create children in: the cgroup we
    run in, when it is writable by us (systemd user delegation), else None."""
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return None  # v1 or hybrid: never delegated to users
    from vortex.cgroups._common import own_cgroups

    rel = own_cgroups().get("", "").strip("/")
    path = os.path.join(root, rel)
    if (
        rel
        and os.access(path, os.W_OK | os.X_OK)
        and os.access(os.path.join(path, "cgroup.subtree_control"), os.W_OK)
    ):
        return rel
    return None
