"""The supervisor's configuration file (TOML), parsed and validated up front.

```toml
[supervisor]                 # optional
metrics_address = "127.0.0.1:9464"
log_dir = "/var/log/vortex"

[defaults]                   # any container key; container tables override it
rootfs = "/srv/rootfs"
restart = "on-failure"

[container.web]
command = ["/bin/httpd", "-f"]
depends_on = ["db"]
```

Every mistake is collected (not just the first) and reported with the file,
the table and the key; :func:`load_config` raises one :class:`ConfigError`
holding them all, and nothing starts.
"""

from __future__ import annotations

import math
import re
import signal
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vortex.errors import SpecError, VortexError
from vortex.records import field, record
from vortex.security.options import SecurityOptions, options_from_mapping
from vortex.spec import (
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_PATH,
    ENV_NAME_PATTERN,
    HOSTNAME_PATTERN,
    NAME_PATTERN,
    parse_size,
)

RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")

CONTAINER_KEYS = frozenset(
    {
        "rootfs",
        "command",
        "env",
        "workdir",
        "user",
        "hostname",
        "memory",
        "pids",
        "cpus",
        "restart",
        "max_restarts",
        "backoff",
        "stop_signal",
        "stop_timeout",
        "depends_on",
        "health",
        "logs",
        "security",
    }
)
BACKOFF_KEYS = frozenset({"initial", "max", "multiplier", "reset_after"})
LOGS_KEYS = frozenset({"max_size", "max_files", "echo"})
HEALTH_KEYS = frozenset({"command", "interval", "timeout", "retries", "start_period"})
SUPERVISOR_KEYS = frozenset({"metrics_address", "log_dir"})


class ConfigError(VortexError):
    """The configuration file has mistakes; :attr:`problems` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        count = len(problems)
        head = f"{count} mistake{'s' if count != 1 else ''} in the configuration"
        super().__init__(head + ":\n  " + "\n  ".join(problems))


@record
class Backoff:
    initial: float = 0.5
    """Seconds before the first restart."""
    max: float = 30.0
    """The delay never grows beyond this."""
    multiplier: float = 2.0
    reset_after: float = 10.0
    """A run at least this long resets the delay to ``initial``."""

    def delay(self, attempt: int) -> float:
        """Delay before restart number ``attempt`` (0-based) since the last reset."""
        return float(min(self.max, self.initial * self.multiplier**attempt))


@record
class LogSettings:
    max_size: int = 10 * 1024 * 1024
    max_files: int = 3
    """Files kept in total: NAME.log plus NAME.log.1 .. NAME.log.(max_files-1)."""
    echo: bool = False
    """Also print each line to the supervisor's stdout, prefixed with the name."""


@record
class HealthCheck:
    """A command run inside the running container (its namespaces and cgroup)."""

    command: tuple[str, ...]
    interval: float = 10.0
    """Seconds between the end of one check and the start of the next."""
    timeout: float = 5.0
    """A check running longer fails (and is killed)."""
    retries: int = 3
    """Consecutive failures that make the container unhealthy (then it is stopped
    and the restart policy applies)."""
    start_period: float = 0.0
    """Seconds after the start during which failures do not count."""


@record
class ServiceConfig:
    name: str
    rootfs: Path
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = (("PATH", DEFAULT_PATH),)
    workdir: str = "/"
    uid: int = 0
    gid: int = 0
    hostname: str | None = None
    memory: int | None = DEFAULT_MEMORY_LIMIT
    pids: int | None = None
    cpus: float | None = None
    restart: str = "on-failure"
    max_restarts: int | None = None
    """With ``on-failure``: give up after this many restarts (None: never)."""
    backoff: Backoff = field(default_factory=Backoff)
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    depends_on: tuple[str, ...] = ()
    health: HealthCheck | None = None
    logs: LogSettings = field(default_factory=LogSettings)
    security: SecurityOptions = field(default_factory=SecurityOptions)
    """The ``security`` table: the same settings as vortex run's security flags."""


@record
class SupervisorConfig:
    metrics_address: tuple[str, int] | None = None
    log_dir: Path | None = None


@record
class Config:
    path: Path
    supervisor: SupervisorConfig
    services: Mapping[str, ServiceConfig]

    def start_order(self) -> list[str]:
        """Names so that every service comes after its dependencies."""
        return topological_order({n: s.depends_on for n, s in self.services.items()})


def topological_order(graph: Mapping[str, tuple[str, ...]]) -> list[str]:
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        for dep in graph.get(name, ()):
            if dep in graph and dep not in path:
                visit(dep, (*path, dep))
        done.add(name)
        order.append(name)

    for name in sorted(graph):
        visit(name, (name,))
    return order


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``; raises :class:`ConfigError` listing every mistake."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path) -> Config:
    checker = _Checker(path)
    for key in data:
        if key not in ("defaults", "container", "supervisor"):
            checker.problem(
                f"[{key}]" if isinstance(data[key], dict) else "(top level)",
                key,
                "unknown table or key: use [supervisor], [defaults] and [container.NAME]",
            )
    supervisor = checker.supervisor(data.get("supervisor", {}))
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        checker.problem("(top level)", "defaults", "must be a table")
        defaults = {}
    for key in defaults:
        if key not in CONTAINER_KEYS:
            checker.problem("[defaults]", key, _unknown(key, CONTAINER_KEYS))
    containers = data.get("container", {})
    if not isinstance(containers, dict):
        checker.problem("(top level)", "container", "must be tables [container.NAME]")
        containers = {}
    if not containers:
        checker.problem("(top level)", "container", "no [container.NAME] table: nothing to run")
    services: dict[str, ServiceConfig] = {}
    for name, table in containers.items():
        where = f"[container.{name}]"
        if not isinstance(table, dict):
            checker.problem(where, name, "must be a table")
            continue
        if not re.match(NAME_PATTERN, name):
            checker.problem(
                where, "(name)", f"{name!r} is not a valid name: letters, digits, '_', '.', '-'"
            )
            continue
        for key in table:
            if key not in CONTAINER_KEYS:
                checker.problem(where, key, _unknown(key, CONTAINER_KEYS))
        merged = {k: v for k, v in defaults.items() if k in CONTAINER_KEYS}
        merged.update({k: v for k, v in table.items() if k in CONTAINER_KEYS})
        service = checker.service(name, where, merged, set(containers))
        if service is not None:
            services[name] = service
    checker.cycles({n: s.depends_on for n, s in services.items()})
    if checker.problems:
        raise ConfigError(checker.problems)
    return Config(path=path, supervisor=supervisor, services=services)


def _unknown(key: str, known: frozenset[str]) -> str:
    return f"unknown key {key!r}: known keys are {', '.join(sorted(known))}"


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def problem(self, table: str, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {table} {key}: {message}")

    # ------------------------------------------------------------ supervisor

    def supervisor(self, table: Any) -> SupervisorConfig:
        where = "[supervisor]"
        if not isinstance(table, dict):
            self.problem("(top level)", "supervisor", "must be a table")
            return SupervisorConfig()
        for key in table:
            if key not in SUPERVISOR_KEYS:
                self.problem(where, key, _unknown(key, SUPERVISOR_KEYS))
        address = None
        if "metrics_address" in table:
            value = table["metrics_address"]
            host, _, port = str(value).rpartition(":")
            if (
                not isinstance(value, str)
                or host not in ("127.0.0.1", "::1", "[::1]", "localhost")
                or not port.isdigit()
                or not 0 < int(port) < 65536
            ):
                self.problem(
                    where,
                    "metrics_address",
                    f"{value!r} must be a loopback HOST:PORT such as '127.0.0.1:9464'",
                )
            else:
                address = (host.strip("[]"), int(port))
        log_dir = None
        if "log_dir" in table:
            value = table["log_dir"]
            if not isinstance(value, str) or not value.startswith("/"):
                self.problem(where, "log_dir", f"{value!r} must be an absolute path")
            else:
                log_dir = Path(value)
        return SupervisorConfig(metrics_address=address, log_dir=log_dir)

    # ------------------------------------------------------------ one container

    def service(
        self, name: str, where: str, t: dict[str, Any], names: set[str]
    ) -> ServiceConfig | None:
        before = len(self.problems)
        values: dict[str, Any] = {}
        # rootfs
        rootfs = t.get("rootfs")
        if rootfs is None:
            self.problem(where, "rootfs", "missing (set it here or in [defaults])")
        elif not isinstance(rootfs, str) or not rootfs:
            self.problem(where, "rootfs", f"{rootfs!r} must be a path (a string)")
        else:
            root = Path(rootfs)
            if not root.is_absolute():
                root = self.path.parent / root
            if not root.is_dir():
                self.problem(where, "rootfs", f"{rootfs!r} is not an existing directory")
            values["rootfs"] = root
        # command
        command = t.get("command")
        if command is None:
            self.problem(where, "command", "missing: a list such as ['/bin/sleep', '60']")
        elif (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) and "\0" not in a for a in command)
        ):
            self.problem(where, "command", f"{command!r} must be a non-empty list of strings")
        else:
            values["command"] = tuple(command)
        # env
        if "env" in t:
            env = t["env"]
            if not isinstance(env, dict):
                self.problem(where, "env", "must be a table of NAME = 'value'")
            else:
                merged = {"PATH": DEFAULT_PATH}
                for key, value in env.items():
                    if not re.match(ENV_NAME_PATTERN, key):
                        self.problem(where, f"env.{key}", "is not a valid variable name")
                    elif not isinstance(value, str) or "\0" in value:
                        self.problem(where, f"env.{key}", f"{value!r} must be a string")
                    else:
                        merged[key] = value
                values["env"] = tuple(sorted(merged.items()))
        if "workdir" in t:
            workdir = t["workdir"]
            if not isinstance(workdir, str) or not workdir.startswith("/"):
                self.problem(where, "workdir", f"{workdir!r} must be an absolute path")
            else:
                values["workdir"] = workdir
        if "user" in t:
            self._user(where, t["user"], values)
        if "hostname" in t:
            hostname = t["hostname"]
            if not isinstance(hostname, str) or not re.match(HOSTNAME_PATTERN, hostname):
                self.problem(
                    where, "hostname", f"{hostname!r} is invalid: 1-63 letters, digits and '-'"
                )
            else:
                values["hostname"] = hostname
        self._limits(where, t, values)
        self._restart(where, t, values)
        if "backoff" in t:
            self._backoff(where, t["backoff"], values)
        if "stop_signal" in t:
            sig = _parse_signal(t["stop_signal"])
            if sig is None:
                self.problem(
                    where,
                    "stop_signal",
                    f"{t['stop_signal']!r} is not a signal: use a name like 'SIGTERM' or 'INT'",
                )
            else:
                values["stop_signal"] = sig
        if "stop_timeout" in t:
            timeout = t["stop_timeout"]
            if not _is_number(timeout) or timeout < 0 or not math.isfinite(timeout):
                self.problem(where, "stop_timeout", f"{timeout!r} must be seconds (>= 0)")
            else:
                values["stop_timeout"] = float(timeout)
        if "depends_on" in t:
            deps = t["depends_on"]
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                self.problem(where, "depends_on", f"{deps!r} must be a list of container names")
            else:
                for dep in deps:
                    if dep == name:
                        self.problem(where, "depends_on", "a container cannot depend on itself")
                    elif dep not in names:
                        self.problem(where, "depends_on", f"{dep!r} is not a [container.*] table")
                values["depends_on"] = tuple(dict.fromkeys(d for d in deps if d != name))
        if "health" in t:
            self._health(where, t["health"], values)
        if "logs" in t:
            self._logs(where, t["logs"], values)
        if "security" in t:
            self._security(where, t["security"], values)
        if len(self.problems) != before:
            return None
        return ServiceConfig(name=name, **values)

    def _security(self, where: str, table: Any, values: dict[str, Any]) -> None:
        if not isinstance(table, dict):
            self.problem(where, "security", "must be a table such as { cap_add = ['NET_ADMIN'] }")
            return
        try:
            options = options_from_mapping(table, where="security")
            options.validate()
        except SpecError as exc:
            self.problem(where, "security", str(exc))
            return
        values["security"] = options

    def _user(self, where: str, user: Any, values: dict[str, Any]) -> None:
        uid = gid = None
        if isinstance(user, int) and not isinstance(user, bool):
            uid = gid = user
        elif isinstance(user, str):
            uid_text, _, gid_text = user.partition(":")
            if uid_text.isdigit() and (not gid_text or gid_text.isdigit()):
                uid = int(uid_text)
                gid = int(gid_text) if gid_text else uid
        if uid is None or gid is None or not (0 <= uid < 2**32 - 1 and 0 <= gid < 2**32 - 1):
            self.problem(where, "user", f"{user!r} must be a numeric 'UID[:GID]' such as '1000'")
            return
        values["uid"], values["gid"] = uid, gid

    def _limits(self, where: str, t: dict[str, Any], values: dict[str, Any]) -> None:
        if "memory" in t:
            memory = t["memory"]
            if isinstance(memory, str) and memory.strip().lower() in ("none", "unlimited", "max"):
                values["memory"] = None
            elif isinstance(memory, int) and not isinstance(memory, bool):
                if memory < 256 * 1024:
                    self.problem(where, "memory", f"{memory} bytes is too small: at least 256K")
                else:
                    values["memory"] = memory
            elif isinstance(memory, str):
                try:
                    size = parse_size(memory, option="memory")
                except SpecError as exc:
                    self.problem(where, "memory", str(exc).removeprefix("memory "))
                else:
                    if size < 256 * 1024:
                        self.problem(where, "memory", f"{memory!r} is too small: at least 256K")
                    else:
                        values["memory"] = size
            else:
                self.problem(where, "memory", f"{memory!r} must be a size like '64M' or 'none'")
        if "pids" in t:
            pids = t["pids"]
            if isinstance(pids, str) and pids.lower() in ("none", "unlimited", "max"):
                values["pids"] = None
            elif isinstance(pids, int) and not isinstance(pids, bool) and pids >= 1:
                values["pids"] = pids
            else:
                self.problem(where, "pids", f"{pids!r} must be a whole number >= 1 or 'none'")
        if "cpus" in t:
            cpus = t["cpus"]
            if isinstance(cpus, str) and cpus.lower() in ("none", "unlimited", "max"):
                values["cpus"] = None
            elif _is_number(cpus) and 0.001 <= cpus <= 100000 and math.isfinite(cpus):
                values["cpus"] = float(cpus)
            else:
                self.problem(where, "cpus", f"{cpus!r} must be a positive number such as 0.5")

    def _restart(self, where: str, t: dict[str, Any], values: dict[str, Any]) -> None:
        policy = t.get("restart", "on-failure")
        max_restarts = t.get("max_restarts")
        if isinstance(policy, str) and policy.startswith("on-failure:"):
            policy, _, count = policy.partition(":")
            if not count.isdigit():
                self.problem(where, "restart", f"'on-failure:{count}' needs a whole number")
                return
            max_restarts = int(count)
        if policy not in RESTART_POLICIES:
            self.problem(
                where, "restart", f"{policy!r} is not a policy: use {', '.join(RESTART_POLICIES)}"
            )
            return
        values["restart"] = policy
        if max_restarts is not None:
            if policy != "on-failure":
                self.problem(where, "max_restarts", "only applies to restart = 'on-failure'")
            elif (
                not isinstance(max_restarts, int)
                or isinstance(max_restarts, bool)
                or max_restarts < 0
            ):
                self.problem(where, "max_restarts", f"{max_restarts!r} must be a whole number")
            else:
                values["max_restarts"] = max_restarts

    def _backoff(self, where: str, table: Any, values: dict[str, Any]) -> None:
        if not isinstance(table, dict):
            self.problem(
                where, "backoff", "must be a table {initial, max, multiplier, reset_after}"
            )
            return
        fields: dict[str, float] = {}
        for key, value in table.items():
            if key not in BACKOFF_KEYS:
                self.problem(where, f"backoff.{key}", _unknown(key, BACKOFF_KEYS))
            elif not _is_number(value) or value < 0 or not math.isfinite(value):
                self.problem(where, f"backoff.{key}", f"{value!r} must be a number >= 0")
            else:
                fields[key] = float(value)
        backoff = Backoff(**fields)
        if backoff.multiplier < 1:
            self.problem(where, "backoff.multiplier", f"{backoff.multiplier} must be at least 1")
        if backoff.max < backoff.initial:
            self.problem(where, "backoff.max", f"{backoff.max} is less than initial")
        values["backoff"] = backoff

    def _health(self, where: str, table: Any, values: dict[str, Any]) -> None:
        if not isinstance(table, dict):
            self.problem(where, "health", "must be a table {command, interval, timeout, retries}")
            return
        fields: dict[str, Any] = {}
        for key, value in table.items():
            if key not in HEALTH_KEYS:
                self.problem(where, f"health.{key}", _unknown(key, HEALTH_KEYS))
            elif key == "command":
                if (
                    not isinstance(value, list)
                    or not value
                    or not all(isinstance(a, str) and "\0" not in a for a in value)
                ):
                    self.problem(
                        where, "health.command", f"{value!r} must be a non-empty list of strings"
                    )
                else:
                    fields[key] = tuple(value)
            elif key == "retries":
                if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                    fields[key] = value
                else:
                    self.problem(where, "health.retries", f"{value!r} must be a whole number >= 1")
            elif not _is_number(value) or not math.isfinite(value) or value < 0:
                self.problem(where, f"health.{key}", f"{value!r} must be seconds (>= 0)")
            elif key in ("interval", "timeout") and value <= 0:
                self.problem(where, f"health.{key}", f"{value!r} must be more than 0 seconds")
            else:
                fields[key] = float(value)
        if "command" not in table:
            self.problem(where, "health.command", "missing: the check to run inside")
        elif "command" in fields:
            values["health"] = HealthCheck(**fields)

    def _logs(self, where: str, table: Any, values: dict[str, Any]) -> None:
        if not isinstance(table, dict):
            self.problem(where, "logs", "must be a table {max_size, max_files, echo}")
            return
        fields: dict[str, Any] = {}
        for key, value in table.items():
            if key not in LOGS_KEYS:
                self.problem(where, f"logs.{key}", _unknown(key, LOGS_KEYS))
            elif key == "max_size":
                if isinstance(value, int) and not isinstance(value, bool) and value >= 1024:
                    fields[key] = value
                elif isinstance(value, str):
                    try:
                        fields[key] = parse_size(value, option="logs.max_size")
                    except SpecError as exc:
                        self.problem(where, "logs.max_size", str(exc))
                else:
                    self.problem(where, "logs.max_size", f"{value!r} must be a size like '10M'")
            elif key == "max_files":
                if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
                    fields[key] = value
                else:
                    self.problem(where, "logs.max_files", f"{value!r} must be between 1 and 1000")
            elif key == "echo":
                if isinstance(value, bool):
                    fields[key] = value
                else:
                    self.problem(where, "logs.echo", f"{value!r} must be true or false")
        values["logs"] = LogSettings(**fields)

    def cycles(self, graph: dict[str, tuple[str, ...]]) -> None:
        state: dict[str, int] = {}
        reported: set[frozenset[str]] = set()

        def visit(name: str, stack: list[str]) -> None:
            state[name] = 1
            for dep in graph.get(name, ()):
                if dep not in graph:
                    continue
                if state.get(dep) == 1:
                    cycle = [*stack[stack.index(dep) :], dep]
                    if frozenset(cycle) not in reported:
                        reported.add(frozenset(cycle))
                        self.problem(
                            f"[container.{name}]",
                            "depends_on",
                            "dependency cycle: " + " -> ".join(cycle),
                        )
                elif dep not in state:
                    visit(dep, [*stack, dep])
            state[name] = 2

        for name in sorted(graph):
            if name not in state:
                visit(name, [name])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_signal(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 1 <= value < signal.NSIG else None
    if not isinstance(value, str):
        return None
    name = value.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        return None
