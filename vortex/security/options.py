"""What a user asks for: the security part of a :class:`vortex.ContainerSpec`.

Every field defaults to the secure choice; each can be relaxed explicitly.
The built-in ``security`` plugin turns these options into a
:class:`~vortex.security.policy.SecurityPolicy`.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping, Sequence

from vortex.errors import SpecError
from vortex.records import field, record
from vortex.security import capabilities

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

SECCOMP_DEFAULT = "default"
SECCOMP_UNCONFINED = "unconfined"

RLIMITS: dict[str, int] = {
    name.removeprefix("RLIMIT_").lower(): getattr(resource, name)
    for name in dir(resource)
    if name.startswith("RLIMIT_")
}
"""``--ulimit`` names (docker's: nofile, nproc, core, stack, memlock, ...)."""

UNLIMITED = resource.RLIM_INFINITY


@record
class LiteralSecurity:
    """A security configuration taken literally: nothing is added to it, no default.

    :func:`vortex.oci.load_bundle` builds one from an OCI config.json, whose
    contract is that a field left out means "not applied" (no seccomp section:
    no filter).  The ``security`` plugin copies it into the policy as it is.
    docs/oci.md maps each field to its config.json field.
    """

    capabilities: frozenset[str] | None = None
    """The permitted set; ``None`` (no ``process.capabilities``): the Runtime's own."""
    bounding: frozenset[str] = frozenset()
    effective: frozenset[str] = frozenset()
    inheritable: frozenset[str] = frozenset()
    ambient: frozenset[str] = frozenset()
    no_new_privileges: bool = False
    seccomp: Mapping[str, Any] | None = None
    """A docker-format profile (vortex/security/seccomp.py), or ``None``: no filter."""
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    read_only: bool = False
    rlimits: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """By ``--ulimit`` name; the others are inherited from the Runtime."""
    restrict_devices: bool = False
    """Only the standard /dev nodes open (see vortex/security/devices.py)."""
    uid_map: tuple[tuple[int, int, int], ...] = ()
    gid_map: tuple[tuple[int, int, int], ...] = ()
    groups: tuple[int, ...] = ()
    umask: int | None = None
    oom_score_adj: int | None = None


@record
class SecurityOptions:
    """Security settings of one container.  The defaults are the secure ones."""

    privileged: bool = False
    """Turn every default below off: all capabilities, no seccomp, no masked or
    read-only paths, every device (docker's ``--privileged``)."""
    cap_add: Sequence[str] = ()
    """Capabilities added to the default set (``ALL`` for every one)."""
    cap_drop: Sequence[str] = ()
    """Capabilities removed from the default set (``ALL`` for every one)."""
    no_new_privileges: bool = True
    """Set no_new_privs: setuid binaries and file capabilities grant nothing."""
    seccomp: str | Mapping[str, Any] = SECCOMP_DEFAULT
    """``default``, ``unconfined``, a path to a docker-format JSON profile, or the profile."""
    unmask: Sequence[str] = ()
    """Masked or read-only paths to leave alone (``ALL`` for all of them)."""
    read_only: bool = False
    """Mount the root filesystem read-only."""
    read_only_tmpfs: bool = True
    """With ``read_only``: writable tmpfs on /tmp, /run and /var/tmp (podman's choice)."""
    ulimits: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """rlimits by ``--ulimit`` name: ``{"nofile": (1024, 4096)}``."""
    userns: str | None = None
    """``None``: no user namespace.  ``auto``: a block of 65536 ids of its own per
    running container, cut from the ``vortex`` (else ``root``) range of /etc/subuid
    and /etc/subgid, or 100000:65536 (rootless: from the caller's subordinate ids).
    ``HOSTID[:COUNT]``: that range, for uids and gids alike, shared by whoever asks."""
    literal: LiteralSecurity | None = None
    """Set (by :func:`vortex.oci.load_bundle`): this configuration exactly, instead of
    the defaults; every other field must then keep its default."""

    @property
    def seccomp_file(self) -> str | None:
        """The profile's path when ``seccomp`` names a file (not default/unconfined)."""
        if isinstance(self.seccomp, str) and self.seccomp not in (
            SECCOMP_DEFAULT,
            SECCOMP_UNCONFINED,
        ):
            return self.seccomp
        return None

    def validate(self) -> None:
        if self.literal is not None and self != SecurityOptions(literal=self.literal):
            raise SpecError(
                "security options: a literal configuration (an OCI bundle's) cannot be "
                "combined with other security options"
            )
        capabilities.resolve((), self.cap_add, self.cap_drop)
        for name, (soft, hard) in self.ulimits.items():
            if name not in RLIMITS:
                raise SpecError(
                    f"--ulimit {name!r} is unknown: use one of {', '.join(sorted(RLIMITS))}"
                )
            if soft != UNLIMITED and hard != UNLIMITED and soft > hard:
                raise SpecError(
                    f"--ulimit {name}={soft}:{hard}: the soft limit exceeds the hard one"
                )
            if hard != UNLIMITED and soft == UNLIMITED:
                raise SpecError(
                    f"--ulimit {name}: an unlimited soft limit needs an unlimited hard one"
                )
        if self.seccomp_file is not None and not os.path.isfile(self.seccomp_file):
            raise SpecError(
                f"--seccomp {self.seccomp!r}: no such file (use a JSON profile, "
                "'default' or 'unconfined')"
            )
        if self.userns is not None:
            user_namespace_range(self.userns)
        for path in self.unmask:
            if path != "ALL" and not path.startswith("/"):
                raise SpecError(f"unmask {path!r}: use an absolute path or ALL")


def parse_ulimit(text: str) -> tuple[str, tuple[int, int]]:
    """``nofile=1024:4096``, ``nofile=1024`` (soft = hard), ``core=unlimited`` (or -1)."""
    name, sep, values = text.partition("=")
    name = name.strip().lower()
    if not sep or name not in RLIMITS:
        raise SpecError(
            f"--ulimit {text!r}: write NAME=SOFT[:HARD] with NAME one of "
            f"{', '.join(sorted(RLIMITS))}, for example nofile=1024:4096"
        )
    soft_text, _, hard_text = values.partition(":")

    def number(value: str) -> int:
        value = value.strip().lower()
        if value in ("unlimited", "-1", "infinity"):
            return UNLIMITED
        try:
            result = int(value)
        except ValueError:
            raise SpecError(f"--ulimit {text!r}: {value!r} is not a whole number") from None
        if result < 0:
            raise SpecError(f"--ulimit {text!r}: limits are not negative")
        return result

    soft = number(soft_text)
    hard = number(hard_text) if hard_text else soft
    if soft != UNLIMITED and hard != UNLIMITED and soft > hard:
        raise SpecError(f"--ulimit {text!r}: the soft limit exceeds the hard one")
    return name, (soft, hard)


def parse_bool(text: str, *, option: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("", "true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise SpecError(f"{option}: {text!r} is not true or false")


_MAPPING_KEYS = frozenset(
    {
        "privileged",
        "cap_add",
        "cap_drop",
        "no_new_privileges",
        "seccomp",
        "unmask",
        "read_only",
        "read_only_tmpfs",
        "ulimits",
        "userns",
    }
)


def options_from_mapping(data: Mapping[str, Any], *, where: str = "security") -> SecurityOptions:
    """Build options from a TOML table or JSON object (``vortex supervise`` configs).

    Keys are the field names (``cap_add = ["NET_ADMIN"]``, ``seccomp = "unconfined"``,
    ``ulimits = { nofile = "1024:4096" }`` or ``{ nofile = [1024, 4096] }``).
    """
    unknown = sorted(set(data) - _MAPPING_KEYS)
    if unknown:
        raise SpecError(
            f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(_MAPPING_KEYS))}"
        )

    def flag(key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise SpecError(f"{where}.{key} must be true or false, not {value!r}")
        return value

    def names(key: str) -> tuple[str, ...]:
        value = data.get(key, ())
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{where}.{key} must be a list of strings")
        return tuple(value)

    ulimits: dict[str, tuple[int, int]] = {}
    raw = data.get("ulimits", {})
    if not isinstance(raw, Mapping):
        raise SpecError(f'{where}.ulimits must be a table such as {{ nofile = "1024:4096" }}')
    for name, value in raw.items():
        if isinstance(value, list | tuple) and len(value) == 2:
            value = f"{value[0]}:{value[1]}"
        parsed_name, limits = parse_ulimit(f"{name}={value}")
        ulimits[parsed_name] = limits
    seccomp = data.get("seccomp", SECCOMP_DEFAULT)
    if not isinstance(seccomp, str | Mapping):
        raise SpecError(f"{where}.seccomp must be 'default', 'unconfined', a path or a profile")
    options = SecurityOptions(
        privileged=flag("privileged", False),
        cap_add=names("cap_add"),
        cap_drop=names("cap_drop"),
        no_new_privileges=flag("no_new_privileges", True),
        seccomp=seccomp,
        unmask=names("unmask"),
        read_only=flag("read_only", False),
        read_only_tmpfs=flag("read_only_tmpfs", True),
        ulimits=ulimits,
        userns=data.get("userns"),
    )
    options.validate()
    return options


SUBID_DEFAULT = (1_000_000_000, 1024 * 65536)
"""The ``auto`` pool when /etc/subuid has no vortex or root entry: 1024 blocks far
above what ``useradd`` hands out (100000 up to SUB_UID_MAX, 600100000 by default),
so that no login user's subordinate ids can ever reach a container's files."""
SUBID_USERS = ("vortex", "root")


def _subid_range(path: str) -> tuple[int, int] | None:
    try:
        with open(path, encoding="utf-8") as f:
            entries = [line.strip().split(":") for line in f if line.count(":") == 2]
    except OSError:
        return None
    for user in SUBID_USERS:
        for name, start, count in entries:
            if name == user and start.isdigit() and count.isdigit():
                return int(start), int(count)
    return None


AUTO_POOL_REMEDY = (
    "give the vortex entry of /etc/subuid and /etc/subgid a larger range "
    "(for example vortex:1000000000:6553600, 100 blocks)"
)


def auto_pool() -> tuple[tuple[int, int], tuple[int, int], str]:
    """The pool ``--userns auto`` cuts its blocks from (as root): uids, gids, and
    where they come from, for messages."""
    (uid, uids), (gid, gids) = user_namespace_range("auto")
    if (uid, uids) == (gid, gids):
        ids = f"ids {uid}-{uid + uids - 1}"
    else:
        ids = f"uids {uid}-{uid + uids - 1} and gids {gid}-{gid + gids - 1}"
    if _subid_range("/etc/subuid") or _subid_range("/etc/subgid"):
        source = f"the {' or '.join(SUBID_USERS)} entry of /etc/subuid and /etc/subgid"
    else:
        source = "the default: /etc/subuid and /etc/subgid have no vortex or root entry"
    return (uid, uids), (gid, gids), f"the pool of {ids} ({source})"


def user_namespace_range(value: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``--userns`` → ((first host uid, count), (first host gid, count)).

    For ``auto`` that is the whole pool; the Runtime gives each container a block
    of it (vortex/userns.py)."""
    if value == "auto":
        uids = _subid_range("/etc/subuid") or SUBID_DEFAULT
        gids = _subid_range("/etc/subgid") or SUBID_DEFAULT
        return uids, gids
    first, _, count = value.partition(":")
    try:
        start, size = int(first), int(count) if count else 65536
    except ValueError:
        raise SpecError(
            f"--userns {value!r}: use 'auto' or HOSTID[:COUNT], for example 200000:65536"
        ) from None
    if start < 1 or size < 1 or start + size > 2**32 - 1:
        raise SpecError(f"--userns {value!r}: the range must start above 0 and fit in 32 bits")
    return (start, size), (start, size)
