"""The init side: apply an :class:`~vortex.security.policy.InitSecurity`.

Called from vortex/helper/init.py, in the cloned child, in this order:

1. :func:`mask_and_protect` right after ``pivot_root`` (paths are container paths);
2. :func:`remount_root` (read-only and/or nodev), after the plan's mounts;
3. :func:`set_rlimits` while still root with every capability;
4. :func:`drop_bounding`, then the uid/gid switch (``keep_caps`` around it),
   then :func:`set_capabilities`;
5. :func:`lock_down`: no_new_privs, then the seccomp filter, the last thing
   before ``execve``.  Without no_new_privs the kernel only lets a process
   holding SYS_ADMIN load a filter, so the init then loads it *before*
   dropping capabilities (:func:`early_seccomp`), as runc does; the profile
   must then allow the few calls the init still makes (capset, setuid, ...).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
from collections.abc import Callable

from vortex import _linux as L
from vortex.security import capabilities, seccomp
from vortex.security.policy import InitSecurity

_PRESERVED_FLAGS = (
    (os.ST_NOSUID, L.MS_NOSUID),
    (os.ST_NODEV, L.MS_NODEV),
    (os.ST_NOEXEC, L.MS_NOEXEC),
    (os.ST_RDONLY, L.MS_RDONLY),
    # In a user namespace the atime flags of a mount from outside are locked too.
    (os.ST_NOATIME, 1024),
    (os.ST_NODIRATIME, 2048),
    (os.ST_RELATIME, 1 << 21),
)


def mount_flags(path: str) -> int:
    """The per-mount flags a bind remount must repeat (the kernel would drop them)."""
    flags = 0
    with contextlib.suppress(OSError):
        f_flag = os.statvfs(path).f_flag
        for st, ms in _PRESERVED_FLAGS:
            if f_flag & st:
                flags |= ms
    return flags


def mask_and_protect(security: InitSecurity) -> None:
    """Mask and read-only paths; a path that does not exist is skipped."""
    for path in security.readonly_paths:
        try:
            L.mount(path, path, None, L.MS_BIND | L.MS_REC)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise
        flags = mount_flags(path)
        L.mount(None, path, None, L.MS_BIND | L.MS_REMOUNT | L.MS_RDONLY | L.MS_REC | flags)
    for path in security.masked_paths:
        try:
            if os.path.isdir(path):
                L.mount(
                    "tmpfs", path, "tmpfs", L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC
                )
            else:
                L.mount("/dev/null", path, None, L.MS_BIND)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            raise


def remount_root(security: InitSecurity) -> None:
    """The root bind mount: read-only and/or nodev (mknod'ed nodes there cannot be opened)."""
    extra = (L.MS_RDONLY if security.readonly_rootfs else 0) | (
        L.MS_NODEV if security.nodev_rootfs else 0
    )
    if extra:
        L.mount(None, "/", None, L.MS_BIND | L.MS_REMOUNT | mount_flags("/") | extra)


def set_rlimits(security: InitSecurity) -> None:
    """The rlimits, then the other inherited process attributes an OCI config can set:
    oom_score_adj (lowering it needs SYS_RESOURCE, still held here) and the umask
    (nothing the init creates after this point depends on it)."""
    for limit, soft, hard in security.rlimits:
        resource.setrlimit(limit, (soft, hard))
    if security.oom_score_adj is not None:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
            f.write(str(security.oom_score_adj))
    if security.umask is not None:
        os.umask(security.umask)


def drop_bounding(security: InitSecurity) -> None:
    if security.bounding is not None:
        capabilities.drop_bounding(security.bounding)
    elif security.capabilities is not None:
        capabilities.drop_bounding(security.capabilities)


def early_seccomp(security: InitSecurity) -> None:
    """Without no_new_privs, load the filter while SYS_ADMIN is still held."""
    if security.seccomp is not None and not security.no_new_privs:
        seccomp.load_filter(security.seccomp)


def switch_user(uid: int, gid: int, security: InitSecurity) -> None:
    """setgroups/setgid/setuid, keeping the permitted set across the uid change."""
    keep = security.capabilities is not None
    if keep:
        capabilities.set_keep_caps(True)
    if not security.rootless:  # rootless, setgroups is denied in the namespace
        os.setgroups(list(security.groups))
    os.setgid(gid)
    os.setuid(uid)
    if keep:
        capabilities.set_keep_caps(False)


def set_capabilities(security: InitSecurity) -> None:
    if security.capabilities is None:
        return
    _effective, permitted, _inheritable = capabilities.get_sets()
    # Never ask for more than we hold (a host without SYS_RESOURCE, say): capset
    # can only lower the permitted set.
    target = capabilities.to_mask(security.capabilities) & permitted
    effective = target
    if security.effective is not None:
        effective = capabilities.to_mask(security.effective) & target
    # The kernel takes new inheritable bits only from the bounding set.
    bounding = security.bounding if security.bounding is not None else security.capabilities
    inheritable = capabilities.to_mask(security.inheritable) & capabilities.to_mask(bounding)
    capabilities.set_sets(effective, target, inheritable & permitted)
    capabilities.set_ambient(security.ambient & security.inheritable & security.capabilities)


def _run_step(action: Callable[[], object], _what: str) -> None:
    action()


def confine(
    uid: int,
    gid: int,
    security: InitSecurity,
    step: Callable[[Callable[[], object], str], None] = _run_step,
) -> None:
    """Everything between a process's setup and its last two steps (``lock_down``,
    ``execve``) that makes it as confined as the container: the init runs it, and
    so does every process later started inside (a health check), in this order.

    :param step: runs each step with a description for error messages (the init
        turns an OSError into its one-line report).
    """
    # Still root with every capability: rlimits may be raised, the bounding set dropped.
    step(lambda: set_rlimits(security), "setrlimit")
    step(lambda: drop_bounding(security), "drop bounding capabilities")
    step(lambda: early_seccomp(security), "load seccomp filter")
    # Supplementary groups are always cleared: the host's must not leak in.
    step(lambda: switch_user(uid, gid, security), f"set user {uid}:{gid}")
    if uid or gid:
        # A credential change clears the parent-death signal; set it again.
        L.set_parent_death_signal(signal.SIGKILL)
    step(lambda: set_capabilities(security), "set capabilities")


def lock_down(security: InitSecurity) -> None:
    """no_new_privs, then the seccomp filter: the last two steps before execve."""
    if security.no_new_privs:
        seccomp.set_no_new_privs()
        if security.seccomp is not None:
            seccomp.load_filter(security.seccomp)


def become_namespace_root() -> None:
    """setgroups([]), then gid and uid 0 of the (already mapped) user namespace.

    Rootless, setgroups is denied in the namespace (EPERM) and the caller's
    supplementary groups are kept by the kernel, unmapped (shown as nogroup)."""
    with contextlib.suppress(PermissionError):
        os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    # When that changed our host uid or gid (root, or rootless with subordinate ids),
    # the kernel cleared the parent-death signal: without it a container whose
    # Runtime was SIGKILLed would keep running, on ids the next Runtime hands out again.
    L.set_parent_death_signal(signal.SIGKILL)


def write_id_maps(
    pid: int,
    uid_map: tuple[tuple[int, int, int], ...],
    gid_map: tuple[tuple[int, int, int], ...],
    *,
    deny_setgroups: bool = False,
) -> None:
    """Runtime side: write /proc/PID/{uid,gid}_map of a freshly cloned init.

    An unprivileged writer must deny setgroups before writing gid_map (user_namespaces(7))."""
    if deny_setgroups:
        with open(f"/proc/{pid}/setgroups", "w", encoding="ascii") as f:
            f.write("deny")
    for name, entries in (("uid_map", uid_map), ("gid_map", gid_map)):
        text = "".join(f"{inside} {outside} {count}\n" for inside, outside, count in entries)
        with open(f"/proc/{pid}/{name}", "w", encoding="ascii") as f:
            f.write(text)
