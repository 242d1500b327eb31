"""An OCI bundle (a directory with config.json and a root filesystem) → a ContainerSpec.

The config is taken literally, as the runtime-spec and runc do: what it
leaves out is not applied (no ``linux.seccomp``: no filter; no
``process.capabilities``: the Runtime's own).  Vortex's secure defaults are
for ``vortex run ROOTFS``; a bundle carries its own.  The security part
becomes a :class:`~vortex.security.options.LiteralSecurity`, which the
``security`` plugin copies into the policy unchanged.

Every field is checked here, before any process or cgroup exists.  A field
Vortex cannot honour is an :class:`~vortex.errors.OciConfigError` naming its
JSON path; nothing that could make the container stronger or weaker than
the config says is skipped.  docs/oci.md maps every field.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from vortex.errors import OciConfigError
from vortex.oci import mounts as oci_mounts
from vortex.oci import resources as oci_resources
from vortex.oci._fields import INT64_MAX, UINT32_MAX, UINT64_MAX, Field
from vortex.security.options import RLIMITS, UNLIMITED, LiteralSecurity, SecurityOptions
from vortex.spec import ENV_NAME_PATTERN, HOSTNAME_PATTERN, ContainerSpec, Resources, User

VERSION_RE = re.compile(r"^1\.[0-2]\.\d+(?:[-+].*)?$")
"""runtime-spec 1.0.x to 1.2.x, pre-releases such as ``1.0.2-dev`` included."""

CREATED_NAMESPACES = ("pid", "network", "mount", "ipc", "uts")
"""Created for every container (vortex/launch.py): a config must ask for each, since
leaving one out means sharing the host's, which Vortex cannot do."""
NAMESPACE_TYPES = (*CREATED_NAMESPACES, "cgroup", "user", "time")

STANDARD_DEVICES = {
    "/dev/null": (1, 3),
    "/dev/zero": (1, 5),
    "/dev/full": (1, 7),
    "/dev/random": (1, 8),
    "/dev/urandom": (1, 9),
    "/dev/tty": (5, 0),
}
"""The nodes the init creates in every container's /dev (vortex/helper/init.py)."""

HOOKS = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)
MAX_ID_MAP_LINES = 340
"""The kernel's limit on lines in /proc/PID/uid_map (since Linux 4.15)."""


def load_bundle(bundle: str | os.PathLike[str], *, name: str | None = None) -> ContainerSpec:
    """Read ``bundle/config.json`` into a spec for :meth:`vortex.Runtime.run`.

    :param bundle: the bundle directory; relative paths in config.json are relative to it.
    :param name: the container's name (default: its short id).
    :raises OciConfigError: a one-line message naming the field (exit status 125 in the CLI).
    """
    directory = Path(bundle)
    if not directory.is_dir():
        raise OciConfigError(
            f"bundle {str(directory)!r} is not a directory: pass the directory that "
            "holds config.json and the root filesystem"
        )
    path = directory / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OciConfigError(
            f"{path}: no such file: a bundle holds a config.json (write one with 'runc spec')"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OciConfigError(f"{path}: cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OciConfigError(
            f"config.json: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    return spec_from_config(data, directory, name=name)


def spec_from_config(data: Any, bundle: Path, *, name: str | None = None) -> ContainerSpec:
    """The spec for a parsed config.json whose bundle directory is ``bundle``."""
    config = Field(data)
    top = config.members(
        (
            "ociVersion",
            "root",
            "mounts",
            "process",
            "hostname",
            "domainname",
            "hooks",
            "annotations",
            "linux",
            "solaris",
            "windows",
            "vm",
            "zos",
        )
    )
    version_field = config.require(top, "ociVersion")
    version = version_field.string()
    if not VERSION_RE.match(version):
        raise version_field.unsupported(
            f"{version!r}: Vortex reads runtime-spec versions 1.0.x to 1.2.x"
        )
    for platform in ("solaris", "windows", "vm", "zos"):
        if platform in top:
            raise top[platform].unsupported("Vortex runs Linux containers only")
    if "hooks" in top:
        _check_hooks(top["hooks"])
    if "annotations" in top and not isinstance(top["annotations"].value, dict):
        raise top["annotations"].error("must be an object of strings")  # else ignored
    rootfs, read_only = _root(config.require(top, "root"), bundle)
    linux_field = top.get("linux", Field({}, "linux"))
    linux = linux_field.members(
        (
            "uidMappings",
            "gidMappings",
            "timeOffsets",
            "sysctl",
            "resources",
            "cgroupsPath",
            "namespaces",
            "devices",
            "seccomp",
            "rootfsPropagation",
            "maskedPaths",
            "readonlyPaths",
            "mountLabel",
            "intelRdt",
            "personality",
            "netDevices",
        )
    )
    _check_linux_extras(linux)
    userns = _namespaces(linux.get("namespaces"), linux_field)
    uid_map = _id_map(linux, "uidMappings", userns, linux_field)
    gid_map = _id_map(linux, "gidMappings", userns, linux_field)
    if userns:
        _check_reachable(rootfs, linux.get("uidMappings", linux_field))
    hostname = None
    if "hostname" in top:
        hostname = top["hostname"].string() or None
        if hostname is not None and not re.match(HOSTNAME_PATTERN, hostname):
            raise top["hostname"].error(
                f"{hostname!r} is invalid: use 1-63 letters, digits and '-'"
            )
    if "domainname" in top and top["domainname"].string():
        raise top["domainname"].unsupported("Vortex does not set an NIS domain name")
    if "devices" in linux:
        _check_devices(linux["devices"])
    resource_kwargs, restrict_devices = oci_resources.convert(linux.get("resources"))
    process = _Process(config.require(top, "process"), uid_map, gid_map)
    seccomp = None
    if "seccomp" in linux:
        from vortex.oci import seccomp as oci_seccomp

        seccomp = oci_seccomp.convert(linux["seccomp"])
    literal = LiteralSecurity(
        capabilities=process.permitted,
        bounding=process.bounding,
        effective=process.effective,
        inheritable=process.inheritable,
        ambient=process.ambient,
        no_new_privileges=process.no_new_privileges,
        seccomp=seccomp,
        masked_paths=_paths(linux.get("maskedPaths")),
        readonly_paths=_paths(linux.get("readonlyPaths")),
        read_only=read_only,
        rlimits=process.rlimits,
        restrict_devices=restrict_devices,
        uid_map=uid_map,
        gid_map=gid_map,
        groups=process.groups,
        umask=process.umask,
        oom_score_adj=process.oom_score_adj,
    )
    return ContainerSpec(
        rootfs=rootfs,
        command=process.args,
        env=process.env,
        workdir=process.cwd,
        user=User(uid=process.uid, gid=process.gid),
        hostname=hostname,
        name=name,
        resources=Resources(**resource_kwargs),
        tty=process.terminal,
        security=SecurityOptions(literal=literal),
        mounts=tuple(
            oci_mounts.convert(top.get("mounts"), bundle, restrict_devices=restrict_devices)
        ),
    )


# ----------------------------------------------------------------- top level


def _check_hooks(field: Field) -> None:
    # Engines put network set-up (CNI) and device injection in hooks: starting the
    # container without running them would leave it without what the engine expects.
    for hooks in field.members(HOOKS).values():
        if hooks.items():
            raise hooks.unsupported("Vortex does not run OCI hooks yet")


def _root(field: Field, bundle: Path) -> tuple[Path, bool]:
    members = field.members(("path", "readonly"))
    path_field = field.require(members, "path")
    text = path_field.string()
    if not text:
        raise path_field.error("is empty: name the root filesystem directory")
    rootfs = bundle / text  # relative to the bundle, as the runtime-spec says
    if not rootfs.exists():
        raise path_field.error(f"{str(rootfs)!r} does not exist")
    if not rootfs.is_dir():
        raise path_field.error(f"{str(rootfs)!r} is not a directory")
    read_only = members["readonly"].boolean() if "readonly" in members else False
    return rootfs, read_only


def _paths(field: Field | None) -> tuple[str, ...]:
    paths = []
    for item in field.items() if field is not None else ():
        path = item.string()
        if not path.startswith("/"):
            raise item.error(f"{path!r} must be an absolute path")
        paths.append(path)
    return tuple(paths)


# ----------------------------------------------------------------- linux


def _check_linux_extras(linux: dict[str, Field]) -> None:
    """The linux fields Vortex has no mechanism for: refused when they ask for anything."""
    for name, why in (
        ("sysctl", "Vortex does not set sysctls yet"),
        ("timeOffsets", "Vortex creates no time namespace"),
        ("intelRdt", "Vortex does not manage Intel RDT"),
        ("netDevices", "Vortex moves no network device into a container"),
    ):
        if name in linux and linux[name].value:
            raise linux[name].unsupported(why)
    if "mountLabel" in linux and linux["mountLabel"].string():
        raise linux["mountLabel"].unsupported("Vortex applies no SELinux labels")
    if "rootfsPropagation" in linux:
        propagation = linux["rootfsPropagation"].string()
        if propagation not in ("", "private", "rprivate"):
            raise linux["rootfsPropagation"].unsupported(
                f"{propagation!r}: the container's mounts are always private"
            )
    if "personality" in linux:
        fields = linux["personality"].members(("domain", "flags"))
        domain = fields["domain"].string() if "domain" in fields else "LINUX"
        flags = fields["flags"].strings() if "flags" in fields else []
        if domain != "LINUX" or flags:
            raise linux["personality"].unsupported("Vortex runs every container as LINUX")
    if "cgroupsPath" in linux:
        # Placement only: limits and statistics are the same wherever the cgroup is.
        from vortex import log

        log.emit("info", "oci.cgroups_path_ignored", cgroups_path=linux["cgroupsPath"].string())


def _namespaces(field: Field | None, linux: Field) -> bool:
    """Check ``linux.namespaces``; True when a user namespace is asked for."""
    seen: set[str] = set()
    for item in field.items() if field is not None else ():
        members = item.members(("type", "path"))
        kind_field = item.require(members, "type")
        kind = kind_field.string()
        if kind not in NAMESPACE_TYPES:
            raise kind_field.error(
                f"unknown namespace type {kind!r}: use one of {', '.join(NAMESPACE_TYPES)}"
            )
        if kind in seen:
            raise kind_field.error(f"namespace {kind!r} is listed twice")
        seen.add(kind)
        if "path" in members and members["path"].string():
            raise members["path"].unsupported("joining an existing namespace is not supported yet")
        if kind == "time":
            raise kind_field.unsupported("Vortex cannot create time namespaces yet")
    missing = [kind for kind in CREATED_NAMESPACES if kind not in seen]
    if missing:
        where = field if field is not None else Field(None, linux.member_path("namespaces"))
        raise where.unsupported(
            f"no {missing[0]!r} entry means sharing the host's {missing[0]} namespace, "
            f'which Vortex cannot do: add {{"type": "{missing[0]}"}}'
        )
    # A config without "cgroup" gets one anyway: Vortex always unshares it (docs/oci.md).
    return "user" in seen


def _id_map(
    linux: dict[str, Field], name: str, userns: bool, linux_field: Field
) -> tuple[tuple[int, int, int], ...]:
    field = linux.get(name)
    entries = field.items() if field is not None else []
    if entries and not userns:
        assert field is not None
        raise field.error('needs a user namespace: add {"type": "user"} to linux.namespaces')
    if userns and not entries:
        raise Field(None, linux_field.member_path(name)).error(
            "missing: a user namespace needs id mappings"
        )
    if len(entries) > MAX_ID_MAP_LINES:
        assert field is not None
        raise field.error(f"at most {MAX_ID_MAP_LINES} mappings")
    lines = []
    for entry in entries:
        members = entry.members(("containerID", "hostID", "size"))
        inside = entry.require(members, "containerID").integer(0, UINT32_MAX - 1)
        outside = entry.require(members, "hostID").integer(0, UINT32_MAX - 1)
        size = entry.require(members, "size").integer(1, UINT32_MAX)
        if inside + size > UINT32_MAX or outside + size > UINT32_MAX:
            raise members["size"].error("the range does not fit in 32 bits")
        lines.append((inside, outside, size))
    return tuple(lines)


def _check_reachable(rootfs: Path, field: Field) -> None:
    """In a user namespace the init is an unprivileged host id: the rootfs must be
    reachable through directories searchable by others."""
    import stat

    path = os.path.realpath(rootfs)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            raise field.error(
                f"{path} is not searchable by the container's unprivileged ids: "
                f"run 'chmod o+x {path}' or move the bundle"
            )
        if path == "/":
            return
        path = os.path.dirname(path)


def _check_devices(field: Field) -> None:
    for item in field.items():
        members = item.members(("type", "path", "major", "minor", "fileMode", "uid", "gid"))
        path = item.require(members, "path").string()
        kind = item.require(members, "type").string()
        major = members["major"].integer(-1, INT64_MAX) if "major" in members else -1
        minor = members["minor"].integer(-1, INT64_MAX) if "minor" in members else -1
        standard = STANDARD_DEVICES.get(path)
        mode = members["fileMode"].integer(0, 0o7777) if "fileMode" in members else 0o666
        owner = [members[k].integer(0, UINT32_MAX) for k in ("uid", "gid") if k in members]
        if standard is None or kind != "c" or (major, minor) != standard:
            names = ", ".join(sorted(STANDARD_DEVICES))
            raise item.unsupported(
                f"device {path} ({kind} {major}:{minor}): Vortex creates only {names}"
            )
        if mode & 0o777 != 0o666 or any(owner):
            raise item.unsupported(f"{path}: Vortex creates it with mode 0666, owned by root")


# ----------------------------------------------------------------- process


class _Process:
    """``process``, checked and converted."""

    def __init__(
        self,
        field: Field,
        uid_map: tuple[tuple[int, int, int], ...],
        gid_map: tuple[tuple[int, int, int], ...],
    ) -> None:
        members = field.members(
            (
                "terminal",
                "consoleSize",
                "user",
                "args",
                "commandLine",
                "env",
                "cwd",
                "capabilities",
                "rlimits",
                "apparmorProfile",
                "noNewPrivileges",
                "oomScoreAdj",
                "selinuxLabel",
                "scheduler",
                "ioPriority",
                "execCPUAffinity",
            )
        )
        for name, why in (
            ("commandLine", "it is for Windows; use args"),
            ("scheduler", "Vortex does not set a scheduling policy yet"),
            ("ioPriority", "Vortex does not set an I/O priority yet"),
            ("execCPUAffinity", "Vortex does not set a CPU affinity yet"),
        ):
            if name in members:
                raise members[name].unsupported(why)
        for name in ("apparmorProfile", "selinuxLabel"):
            if name in members and members[name].string():
                raise members[name].unsupported("Vortex applies no LSM profile or label")
        if "consoleSize" in members:  # the terminal gets the size of vortex's own
            members["consoleSize"].members(("height", "width"))
        self.terminal = members["terminal"].boolean() if "terminal" in members else False
        args_field = field.require(members, "args")
        self.args = args_field.strings()
        if not self.args:
            raise args_field.error("is empty: name the program to run")
        if any("\0" in arg for arg in self.args):
            raise args_field.error("arguments must not contain NUL bytes")
        cwd_field = field.require(members, "cwd")
        self.cwd = cwd_field.string()
        if not self.cwd.startswith("/"):
            raise cwd_field.error(f"{self.cwd!r} must be an absolute path")
        self.env = self._env(members.get("env"))
        self._user(field, members, uid_map, gid_map)
        self.no_new_privileges = (
            members["noNewPrivileges"].boolean() if "noNewPrivileges" in members else False
        )
        self.oom_score_adj = (
            members["oomScoreAdj"].integer(-1000, 1000) if "oomScoreAdj" in members else None
        )
        self.rlimits = self._rlimits(members.get("rlimits"))
        self._capabilities(members.get("capabilities"))

    @staticmethod
    def _env(field: Field | None) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in field.items() if field is not None else ():
            text = item.string()
            key, sep, value = text.partition("=")
            if not sep:
                raise item.error(f"{text!r} has no '=': write NAME=VALUE")
            if not re.match(ENV_NAME_PATTERN, key):
                raise item.error(f"{key!r} is not a valid variable name")
            if "\0" in value:
                raise item.error("values must not contain NUL bytes")
            env[key] = value
        return env

    def _user(
        self,
        field: Field,
        members: dict[str, Field],
        uid_map: tuple[tuple[int, int, int], ...],
        gid_map: tuple[tuple[int, int, int], ...],
    ) -> None:
        user_field = field.require(members, "user")
        user = user_field.members(("uid", "gid", "umask", "additionalGids", "username"))
        if "username" in user and user["username"].string():
            raise user["username"].unsupported("it is for Windows; use uid and gid")
        ids = {}
        for name, id_map in (("uid", uid_map), ("gid", gid_map)):
            id_field = user_field.require(user, name)
            ids[name] = _mapped(id_field, id_field.integer(0, UINT32_MAX - 1), id_map)
        self.uid, self.gid = ids["uid"], ids["gid"]
        self.groups: tuple[int, ...] = ()
        if "additionalGids" in user:
            self.groups = tuple(
                _mapped(item, item.integer(0, UINT32_MAX - 1), gid_map)
                for item in user["additionalGids"].items()
            )
        self.umask = user["umask"].integer(0, 0o777) if "umask" in user else None

    @staticmethod
    def _rlimits(field: Field | None) -> dict[str, tuple[int, int]]:
        limits: dict[str, tuple[int, int]] = {}
        for item in field.items() if field is not None else ():
            members = item.members(("type", "soft", "hard"))
            type_field = item.require(members, "type")
            kind = type_field.string()
            name = kind.removeprefix("RLIMIT_").lower()
            if not kind.startswith("RLIMIT_") or name not in RLIMITS:
                known = ", ".join(f"RLIMIT_{n.upper()}" for n in sorted(RLIMITS))
                raise type_field.error(f"unknown rlimit {kind!r}: use one of {known}")
            if name in limits:
                raise type_field.error(f"{kind} is listed twice")
            soft, hard = (_rlimit_value(item.require(members, key)) for key in ("soft", "hard"))
            if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
                raise members["soft"].error(f"the soft limit of {kind} exceeds the hard one")
            limits[name] = (soft, hard)
        return limits

    def _capabilities(self, field: Field | None) -> None:
        from vortex.security import capabilities

        self.permitted: frozenset[str] | None = None
        self.bounding = self.effective = self.inheritable = self.ambient = frozenset[str]()
        if field is None:
            return  # the runtime-spec: capabilities are left as they are
        members = field.members(("bounding", "effective", "inheritable", "permitted", "ambient"))
        known = capabilities.known_capabilities()
        sets: dict[str, frozenset[str]] = {}
        for set_name in ("bounding", "effective", "inheritable", "permitted", "ambient"):
            names = set()
            for item in members[set_name].items() if set_name in members else ():
                text = item.string()
                short = text.removeprefix("CAP_")
                if not text.startswith("CAP_") or short not in capabilities.CAPABILITIES:
                    raise item.error(
                        f"{text!r} is not a capability: use kernel names such as CAP_NET_ADMIN"
                    )
                if short not in known:
                    raise item.unsupported(f"this kernel does not know {text}")
                names.add(short)
            sets[set_name] = frozenset(names)
        # What capset(2) would refuse, refused here with the field's name instead of
        # as a failed start.
        for subset, superset in (("effective", "permitted"), ("inheritable", "bounding")):
            outside = sorted(sets[subset] - sets[superset])
            if outside:
                raise members[subset].error(
                    f"CAP_{outside[0]}: {subset} must be a subset of {superset}"
                )
        # An ambient capability must be permitted and inheritable, or the kernel will
        # not raise it.  runc ignores those (and its own 'runc spec' lists ambient
        # without inheritable): so does Vortex, with a warning, since leaving them out
        # only takes capabilities away.
        ambient = sets["ambient"] & sets["permitted"] & sets["inheritable"]
        if ambient != sets["ambient"]:
            from vortex import log

            log.emit(
                "warning",
                "oci.ambient_ignored",
                field="process.capabilities.ambient",
                capabilities=sorted(f"CAP_{c}" for c in sets["ambient"] - ambient),
                reason="not in both permitted and inheritable",
            )
        sets["ambient"] = ambient
        self.permitted = sets["permitted"]
        self.bounding, self.effective = sets["bounding"], sets["effective"]
        self.inheritable, self.ambient = sets["inheritable"], sets["ambient"]


def _mapped(field: Field, value: int, id_map: tuple[tuple[int, int, int], ...]) -> int:
    """``value``, checked against the user namespace's map when there is one."""
    if id_map and not any(first <= value < first + count for first, _host, count in id_map):
        raise field.error(f"{value} is not mapped in the user namespace (see linux.*Mappings)")
    return value


def _rlimit_value(field: Field) -> int:
    value = field.integer(0, UINT64_MAX)
    if value == UINT64_MAX:
        return UNLIMITED  # RLIM_INFINITY
    if value > INT64_MAX:
        raise field.error(f"{value} is too large: use {UINT64_MAX} for unlimited")
    return value
