"""``mounts`` of config.json → the setup operations the container init applies.

The init always mounts /proc, /sys (read-only), a /dev tmpfs with the
standard nodes, /dev/pts, /dev/shm and /dev/mqueue (vortex/helper/init.py).
Entries for those destinations are checked, not mounted again: their type
must match, and they may not ask for a flag Vortex does not set there
(Vortex's own flags are never weaker than runc's defaults; docs/oci.md has
the table).  Every other entry becomes a :mod:`vortex.ops` operation:
``bind``/``rbind`` a :class:`~vortex.ops.BindMount`; tmpfs, proc, sysfs,
mqueue and devpts a :class:`~vortex.ops.MountFilesystem`; ``cgroup`` a
read-only cgroup2 mount on a cgroup v2 host.  Anything else is an error.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from vortex import _linux as L
from vortex.oci._fields import Field
from vortex.ops import BindMount, MountFilesystem, SetupOp

_MS_SYNCHRONOUS = 16
_MS_DIRSYNC = 128
_MS_NOATIME = 1024
_MS_NODIRATIME = 2048
_MS_RELATIME = 1 << 21

FLAGS: dict[str, tuple[int, int]] = {
    "ro": (L.MS_RDONLY, 0),
    "rw": (0, L.MS_RDONLY),
    "nosuid": (L.MS_NOSUID, 0),
    "suid": (0, L.MS_NOSUID),
    "nodev": (L.MS_NODEV, 0),
    "dev": (0, L.MS_NODEV),
    "noexec": (L.MS_NOEXEC, 0),
    "exec": (0, L.MS_NOEXEC),
    "sync": (_MS_SYNCHRONOUS, 0),
    "async": (0, _MS_SYNCHRONOUS),
    "dirsync": (_MS_DIRSYNC, 0),
    "noatime": (_MS_NOATIME, 0),
    "atime": (0, _MS_NOATIME),
    "nodiratime": (_MS_NODIRATIME, 0),
    "diratime": (0, _MS_NODIRATIME),
    "relatime": (_MS_RELATIME, 0),
    "norelatime": (0, _MS_RELATIME),
    "strictatime": (L.MS_STRICTATIME, 0),
    "nostrictatime": (0, L.MS_STRICTATIME),
    "defaults": (0, 0),
}
"""Mount options that are mount(2) flags: (bits set, bits cleared)."""

PRIVATE = frozenset({"private", "rprivate"})
"""Every mount of a container is private (the init makes / rprivate first)."""
DATA_WORDS = frozenset({"newinstance", "inode32", "inode64", "noswap"})
"""Option words without ``=`` that are filesystem data (devpts, tmpfs), not flags."""
FILESYSTEMS = ("tmpfs", "proc", "sysfs", "mqueue", "devpts")

_SECURITY_FLAGS = {
    "ro": L.MS_RDONLY,
    "nosuid": L.MS_NOSUID,
    "nodev": L.MS_NODEV,
    "noexec": L.MS_NOEXEC,
}
CORE: dict[str, tuple[str, frozenset[str]]] = {
    "/proc": ("proc", frozenset({"nosuid", "noexec", "nodev"})),
    "/sys": ("sysfs", frozenset({"ro", "nosuid", "noexec", "nodev"})),
    "/dev": ("tmpfs", frozenset({"nosuid"})),
    "/dev/pts": ("devpts", frozenset({"nosuid", "noexec"})),
    "/dev/shm": ("tmpfs", frozenset({"nosuid", "nodev", "noexec"})),
    "/dev/mqueue": ("mqueue", frozenset({"nosuid", "nodev", "noexec"})),
}
"""The mounts the init always makes, with the flags (of ro/nosuid/nodev/noexec) it uses."""


def cgroup2_host(root: str = "/sys/fs/cgroup") -> bool:
    """As vortex.cgroups.detect decides: a cgroup2 root has cgroup.controllers."""
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def convert(field: Field | None, bundle: Path, *, restrict_devices: bool) -> list[SetupOp]:
    """The operations for ``mounts``; ``restrict_devices`` adds nodev everywhere (as the
    init does for the rootfs and /dev), so no node made with mknod can be opened."""
    ops: list[SetupOp] = []
    for item in field.items() if field is not None else ():
        op = _mount(item, bundle, restrict_devices=restrict_devices)
        if op is not None:
            ops.append(op)
    return ops


def _mount(item: Field, bundle: Path, *, restrict_devices: bool) -> SetupOp | None:
    members = item.members(
        ("destination", "type", "source", "options", "uidMappings", "gidMappings")
    )
    for name in ("uidMappings", "gidMappings"):
        if name in members:
            raise members[name].unsupported("id-mapped mounts")
    destination_field = item.require(members, "destination")
    destination = destination_field.string()
    if not destination.startswith("/"):
        raise destination_field.error(f"{destination!r} must be an absolute path")
    destination = posixpath.normpath(destination)
    fstype = members["type"].string() if "type" in members else ""
    options = members["options"].strings() if "options" in members else []
    options_field = members.get("options", Field(None, item.member_path("options")))
    for option in options:
        if option in ("shared", "rshared", "slave", "rslave", "unbindable", "runbindable"):
            raise options_field.unsupported(
                f"propagation {option!r}: every container mount is private"
            )
    if "bind" in options or "rbind" in options or fstype == "bind":
        return _bind(bundle, item, members, destination, options, restrict_devices=restrict_devices)
    if not fstype:
        raise Field(None, item.member_path("type")).error("missing (or give bind/rbind options)")
    if destination in CORE:
        _check_core(members.get("type", item), destination, fstype, options, options_field)
        return None
    if fstype in ("cgroup", "cgroup2"):
        if not cgroup2_host():
            # On a v1/hybrid host the container's cgroups sit in several v1
            # hierarchies Vortex does not mount inside; a read-only view of them
            # grants nothing, so leaving it out takes nothing away (docs/oci.md).
            from vortex import log

            log.emit("info", "oci.mount_skipped", destination=destination, type=fstype)
            return None
        fstype = "cgroup2"
    elif fstype not in FILESYSTEMS:
        raise members["type"].unsupported(
            f"mount type {fstype!r} (Vortex mounts bind, {', '.join(FILESYSTEMS)} and cgroup)"
        )
    flags, data = _flags_and_data(options, options_field)
    if restrict_devices:
        flags |= L.MS_NODEV
    return MountFilesystem(fstype, destination, ",".join(data) or None, flags)


def _flags_and_data(options: list[str], field: Field) -> tuple[int, list[str]]:
    flags = 0
    data = []
    for option in options:
        if option in FLAGS:
            add, clear = FLAGS[option]
            flags = (flags | add) & ~clear
        elif option in PRIVATE:
            continue
        elif "=" in option or option in DATA_WORDS:
            data.append(option)
        else:
            raise field.unsupported(f"mount option {option!r}")
    return flags, data


def _check_core(
    type_field: Field, destination: str, fstype: str, options: list[str], field: Field
) -> None:
    expected, vortex_flags = CORE[destination]
    if fstype != expected:
        raise type_field.unsupported(
            f"{destination} is always a {expected} mount in Vortex, not {fstype}"
        )
    flags, _data = _flags_and_data(options, field)
    for option in options:  # rw, suid, dev, exec: explicitly weaker than Vortex's mount
        cleared = FLAGS.get(option, (0, 0))[1]
        for name, bit in _SECURITY_FLAGS.items():
            if cleared & bit and name in vortex_flags:
                raise field.unsupported(
                    f"{option!r} on {destination}: Vortex always mounts it {name}"
                )
    for name, bit in _SECURITY_FLAGS.items():
        if flags & bit and name not in vortex_flags:
            raise field.unsupported(
                f"{name!r} on {destination}: Vortex mounts it with "
                f"{','.join(sorted(vortex_flags))} only"
            )


def _bind(
    bundle: Path,
    item: Field,
    members: dict[str, Field],
    destination: str,
    options: list[str],
    *,
    restrict_devices: bool,
) -> BindMount:
    options_field = members.get("options", Field(None, item.member_path("options")))
    source_field = item.require(members, "source")
    # A relative source is relative to the bundle (the runtime-spec's rule).
    source = bundle / source_field.string()
    if not source.exists():
        raise source_field.error(f"{str(source)!r} does not exist")
    readonly = False
    for option in options:
        if option in ("ro", "rw"):
            readonly = option == "ro"
        elif option == "nodev" and restrict_devices:
            continue  # the init remounts every bind nodev when devices are restricted
        elif option in ("bind", "rbind", "suid", "dev", "exec", "defaults") or option in PRIVATE:
            continue
        else:
            raise options_field.unsupported(
                f"{option!r} on a bind mount (Vortex binds support ro/rw, bind/rbind"
                + (", nodev)" if restrict_devices else "; nodev only with a device deny-all)")
            )
    return BindMount(str(source), destination, readonly=readonly, recursive="rbind" in options)
