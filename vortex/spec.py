"""What a container should be: the specification the runtime executes.

Pure data and validation, no I/O beyond checking that paths exist.  Every
value a user can get wrong is parsed here into a :class:`~vortex.errors.SpecError`
whose message names the option, the value and what would be accepted.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping, Sequence

from vortex.cgroups.base import Limits
from vortex.errors import SpecError
from vortex.records import field, record
from vortex.security.options import SecurityOptions

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from vortex.ops import SetupOp

DEFAULT_MEMORY_LIMIT = 100 * 1024 * 1024
"""The original runtime's default memory limit: 100 MB."""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# Patterns are kept as text and matched with re.match, which compiles each on its
# first use and caches it: a cold ``vortex run`` compiles only the ones its
# arguments need (compiling all of them at import cost ~0.8 ms of every start).
_SIZE_PATTERN = r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$"
NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"
"""A valid container name (also for the TOML loader)."""
HOSTNAME_PATTERN = r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"
"""A valid hostname: 1-63 letters, digits and inner '-' (also for the OCI and TOML loaders)."""
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""A valid environment variable name."""


class Stdio(enum.Enum):
    """What happens to the container's standard streams."""

    INHERIT = "inherit"
    """Share the caller's file descriptors (the CLI's default)."""
    CAPTURE = "capture"
    """Collect into :attr:`vortex.RunResult.stdout` / ``stderr``."""
    STREAM = "stream"
    """Expose as byte streams on the :class:`vortex.Container` handle."""
    NULL = "null"
    """Connect to /dev/null."""


@record
class Resources(Limits):
    """Limits for the container's cgroup.  ``None`` (or empty) means unlimited.

    The fields are those of :class:`vortex.cgroups.Limits`, which the cgroup
    backends apply; only the default differs: the memory limit is 100 MB, as in
    the original runtime (``memory=None`` for none).  docs/cgroups.md maps each
    field to its flag and its v2/v1 files.
    """

    memory: int | None = DEFAULT_MEMORY_LIMIT


@record
class User:
    uid: int = 0
    gid: int = 0


@record
class ContainerSpec:
    """Everything needed to start one container.

    Build it directly (library) or with :func:`build_spec` from strings (CLI).
    """

    rootfs: str | os.PathLike[str]
    """A directory path, str or path-like (``pathlib.Path``); relative to the
    current directory when relative."""
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    workdir: str = "/"
    user: User = field(default_factory=User)
    hostname: str | None = None
    """Defaults to the container's short id."""
    name: str | None = None
    resources: Resources = field(default_factory=Resources)
    tty: bool = False
    """Give the command a pseudo-terminal (interactive shells)."""
    stdin: Stdio | bytes | int = Stdio.INHERIT
    """INHERIT, NULL, STREAM, bytes to feed on stdin, or a file descriptor."""
    stdout: Stdio | int = Stdio.INHERIT
    """INHERIT, NULL, STREAM, CAPTURE, or a file descriptor."""
    stderr: Stdio | int = Stdio.INHERIT
    """A file descriptor (as with ``subprocess.Popen``) is only lent: the container
    gets a copy and the caller keeps and closes its own."""
    security: SecurityOptions = field(default_factory=SecurityOptions)
    """Capabilities, seccomp, no_new_privs, masked paths, rlimits (docs/security.md)."""
    mounts: tuple[SetupOp, ...] = ()
    """The container's own mounts (an OCI bundle's, volumes), applied in order after
    the core ones (/proc, /sys, /dev) and before those plugins add."""

    def validate(self) -> None:
        """Raise SpecError for anything the kernel would reject later, and worse."""
        if not self.command:
            raise SpecError("no command given: pass the program to run after the rootfs")
        if any("\0" in arg for arg in self.command):
            raise SpecError("command arguments must not contain NUL bytes")
        rootfs = os.fspath(self.rootfs)
        if not isinstance(rootfs, str):
            raise SpecError(f"rootfs {rootfs!r} must be a str or path-like (pathlib.Path)")
        if not os.path.exists(rootfs):
            raise SpecError(
                f"rootfs {rootfs!r} does not exist: create one with "
                f"'vortex rootfs busybox {rootfs}'"
            )
        if not os.path.isdir(rootfs):
            raise SpecError(f"rootfs {rootfs!r} is not a directory: pass a directory")
        if not self.workdir.startswith("/"):
            raise SpecError(f"--workdir {self.workdir!r} must be an absolute path")
        for key, value in self.env.items():
            if not re.match(ENV_NAME_PATTERN, key):
                raise SpecError(f"--env name {key!r} is invalid: use letters, digits and _")
            if "\0" in value:
                raise SpecError(f"--env {key}: value must not contain NUL bytes")
        if self.hostname is not None and not re.match(HOSTNAME_PATTERN, self.hostname):
            raise SpecError(
                f"--hostname {self.hostname!r} is invalid: use 1-63 letters, digits and '-'"
            )
        if self.name is not None and not re.match(NAME_PATTERN, self.name):
            raise SpecError(
                f"--name {self.name!r} is invalid: use letters, digits, '_', '.', '-' "
                "(at most 63, starting with a letter or digit)"
            )
        res = self.resources
        if res.memory is not None and res.memory < 4096 * 64:
            raise SpecError(f"memory limit {res.memory} bytes is too small: use at least 256K")
        if res.pids is not None and res.pids < 1:
            raise SpecError(f"pids limit {res.pids} must be at least 1")
        if res.cpus is not None and not 0.001 <= res.cpus <= (os.cpu_count() or 1) * 1000:
            raise SpecError(f"cpus {res.cpus} is out of range: use a positive number like 0.5")
        streams = {"stdin": self.stdin, "stdout": self.stdout, "stderr": self.stderr}
        for stream, mode in streams.items():
            if isinstance(mode, int) and mode < 0:
                raise SpecError(f"{stream}={mode}: a file descriptor cannot be negative")
        if self.tty and not all(isinstance(mode, Stdio) for mode in streams.values()):
            raise SpecError("tty=True cannot be combined with stdin bytes or file descriptors")
        self.security.validate()


def parse_size(text: str, *, option: str) -> int:
    """Parse ``64M``, ``1g``, ``512k``, ``1048576`` (binary units) into bytes."""
    match = re.match(_SIZE_PATTERN, text)
    if not match:
        raise SpecError(
            f"{option} {text!r} is not a size: use a number with an optional unit "
            "K, M, G (for example 64M)"
        )
    number, unit = match.groups()
    size = int(float(number) * _SIZE_UNITS[unit.lower()])
    if size <= 0:
        raise SpecError(f"{option} {text!r} must be greater than zero")
    return size


def parse_memory(text: str) -> int | None:
    """``--memory``: a size, or ``none``/``unlimited`` for no limit."""
    if text.strip().lower() in ("none", "unlimited", "max", "-1"):
        return None
    return parse_size(text, option="--memory")


def parse_pids(text: str) -> int | None:
    if text.strip().lower() in ("none", "unlimited", "max", "-1"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise SpecError(
            f"--pids {text!r} is not a whole number: use for example 64, or 'none'"
        ) from None
    if value < 1:
        raise SpecError(f"--pids {text!r} must be at least 1 (or 'none')")
    return value


def parse_cpus(text: str) -> float | None:
    if text.strip().lower() in ("none", "unlimited", "max"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"--cpus {text!r} is not a number: use for example 0.5 or 2") from None
    if not value > 0 or value != value or value == float("inf"):
        raise SpecError(f"--cpus {text!r} must be a positive number such as 0.5")
    return value


def parse_env(items: Sequence[str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``K=V`` pairs on top of ``base`` (default: just PATH, no host variables)."""
    env = dict(base if base is not None else {"PATH": DEFAULT_PATH})
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            # docker takes "--env K" to mean "copy K from the caller"; we keep the spec
            # explicit and demand a value so no host variable leaks in by accident.
            raise SpecError(f"--env {item!r} has no '=': write KEY=VALUE")
        if not re.match(ENV_NAME_PATTERN, key):
            raise SpecError(f"--env {item!r}: {key!r} is not a valid variable name")
        env[key] = value
    return env


def parse_user(text: str) -> User:
    """``UID[:GID]`` (numeric; names would need the rootfs's /etc/passwd)."""
    uid_text, _, gid_text = text.partition(":")
    try:
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else uid
    except ValueError:
        raise SpecError(
            f"--user {text!r} must be numeric UID[:GID], for example 1000:1000"
        ) from None
    if not (0 <= uid < 2**32 - 1 and 0 <= gid < 2**32 - 1):
        raise SpecError(f"--user {text!r} is out of range")
    return User(uid=uid, gid=gid)
