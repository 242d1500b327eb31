"""The supervisor's TOML file: every mistake is reported with file, table and key,
and a bad file starts nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_vortex

from vortex.supervise.config import Backoff, ConfigError, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vortex.toml"
    path.write_text(text)
    return path


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    for problem in caught.value.problems:
        assert problem.startswith(f"{path}: "), problem
    return caught.value.problems


GOOD = """
[defaults]
rootfs = "{rootfs}"
memory = "64M"
restart = "always"

[container.db]
command = ["/bin/sleep", "60"]
env = {{ MODE = "primary" }}
user = "1000:1000"
hostname = "db"
pids = 32
cpus = 0.5
stop_signal = "INT"
stop_timeout = 3
backoff = {{ initial = 0.5, max = 10, multiplier = 3, reset_after = 60 }}
health = {{ command = ["/bin/true"], interval = 2, timeout = 1, retries = 4 }}
logs = {{ max_size = "1M", max_files = 5, echo = true }}

[container.web]
command = ["/bin/httpd", "-f"]
depends_on = ["db"]
restart = "on-failure:4"
memory = "none"
"""


def test_a_good_file_parses_into_frozen_records(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD.format(rootfs=tmp_path)))
    db, web = config.services["db"], config.services["web"]
    assert config.start_order() == ["db", "web"]
    assert db.memory == 64 * 1024**2 and web.memory is None
    assert (db.uid, db.gid, db.pids, db.cpus) == (1000, 1000, 32, 0.5)
    assert dict(db.env) == {"MODE": "primary", "PATH": dict(db.env)["PATH"]}
    assert db.stop_signal == 2 and db.stop_timeout == 3.0
    assert db.restart == "always" and (web.restart, web.max_restarts) == ("on-failure", 4)
    assert db.backoff == Backoff(initial=0.5, max=10, multiplier=3, reset_after=60)
    assert [db.backoff.delay(i) for i in range(4)] == [0.5, 1.5, 4.5, 10]
    assert (db.logs.max_size, db.logs.max_files, db.logs.echo) == (1024**2, 5, True)
    assert db.health is not None and web.health is None
    assert (db.health.command, db.health.interval, db.health.retries) == (("/bin/true",), 2, 4)
    with pytest.raises(AttributeError):
        db.memory = 1  # type: ignore[misc]


MISTAKES = [
    # (what is wrong, file body after [defaults] rootfs, expected table, key, words)
    ("toml syntax", "[container.a\n", None, None, "TOML syntax error"),
    ("no containers", "", "(top level)", "container", "nothing to run"),
    ("unknown key", '[container.a]\ncommand=["/x"]\ncomand=["/x"]\n', "[container.a]", "comand",
     "unknown key"),
    ("unknown table", '[containers.a]\ncommand=["/x"]\n[container.b]\ncommand=["/x"]\n',
     "[containers]", "containers", "unknown table"),
    ("missing command", "[container.a]\n", "[container.a]", "command", "missing"),
    ("command not a list", '[container.a]\ncommand="/bin/sh"\n', "[container.a]", "command",
     "list of strings"),
    ("bad restart", '[container.a]\ncommand=["/x"]\nrestart="sometimes"\n', "[container.a]",
     "restart", "not a policy"),
    ("max_restarts without on-failure",
     '[container.a]\ncommand=["/x"]\nrestart="always"\nmax_restarts=3\n', "[container.a]",
     "max_restarts", "only applies"),
    ("bad memory", '[container.a]\ncommand=["/x"]\nmemory="12 parsecs"\n', "[container.a]",
     "memory", "not a size"),
    ("tiny memory", '[container.a]\ncommand=["/x"]\nmemory=1000\n', "[container.a]", "memory",
     "too small"),
    ("bad pids", '[container.a]\ncommand=["/x"]\npids=0\n', "[container.a]", "pids", ">= 1"),
    ("bad cpus", '[container.a]\ncommand=["/x"]\ncpus=-1\n', "[container.a]", "cpus", "positive"),
    ("bad signal", '[container.a]\ncommand=["/x"]\nstop_signal="SIGNOPE"\n', "[container.a]",
     "stop_signal", "not a signal"),
    ("negative timeout", '[container.a]\ncommand=["/x"]\nstop_timeout=-1\n', "[container.a]",
     "stop_timeout", ">= 0"),
    ("unknown dependency", '[container.a]\ncommand=["/x"]\ndepends_on=["b"]\n', "[container.a]",
     "depends_on", "'b' is not a [container.*] table"),
    ("self dependency", '[container.a]\ncommand=["/x"]\ndepends_on=["a"]\n', "[container.a]",
     "depends_on", "itself"),
    ("dependency cycle",
     '[container.a]\ncommand=["/x"]\ndepends_on=["b"]\n'
     '[container.b]\ncommand=["/x"]\ndepends_on=["a"]\n', "[container.b]", "depends_on",
     "cycle: a -> b -> a"),
    ("bad env name", '[container.a]\ncommand=["/x"]\nenv={"1X"="y"}\n', "[container.a]",
     "env.1X", "not a valid variable name"),
    ("env not a string", '[container.a]\ncommand=["/x"]\nenv={X=1}\n', "[container.a]", "env.X",
     "must be a string"),
    ("relative workdir", '[container.a]\ncommand=["/x"]\nworkdir="srv"\n', "[container.a]",
     "workdir", "absolute"),
    ("bad user", '[container.a]\ncommand=["/x"]\nuser="root"\n', "[container.a]", "user",
     "numeric"),
    ("bad hostname", '[container.a]\ncommand=["/x"]\nhostname="a b"\n', "[container.a]",
     "hostname", "invalid"),
    ("backoff multiplier", '[container.a]\ncommand=["/x"]\nbackoff={multiplier=0.5}\n',
     "[container.a]", "backoff.multiplier", "at least 1"),
    ("backoff unknown key", '[container.a]\ncommand=["/x"]\nbackoff={start=1}\n',
     "[container.a]", "backoff.start", "unknown key"),
    ("logs max_files", '[container.a]\ncommand=["/x"]\nlogs={max_files=0}\n', "[container.a]",
     "logs.max_files", "between 1 and 1000"),
    ("logs echo", '[container.a]\ncommand=["/x"]\nlogs={echo="yes"}\n', "[container.a]",
     "logs.echo", "true or false"),
    ("health without command", '[container.a]\ncommand=["/x"]\nhealth={interval=1}\n',
     "[container.a]", "health.command", "missing"),
    ("health retries", '[container.a]\ncommand=["/x"]\nhealth={command=["/x"],retries=0}\n',
     "[container.a]", "health.retries", ">= 1"),
    ("health interval", '[container.a]\ncommand=["/x"]\nhealth={command=["/x"],interval=0}\n',
     "[container.a]", "health.interval", "more than 0"),
    ("bad name", '[container."a b"]\ncommand=["/x"]\n', '[container.a b]', "(name)",
     "not a valid name"),
    ("metrics not loopback", '[supervisor]\nmetrics_address="0.0.0.0:9100"\n'
     '[container.a]\ncommand=["/x"]\n', "[supervisor]", "metrics_address", "loopback"),
    ("unknown default", '[container.a]\ncommand=["/x"]\n', "[defaults]", "bogus", "unknown key"),
    ("security not a table", '[container.a]\ncommand=["/x"]\nsecurity="strict"\n',
     "[container.a]", "security", "must be a table"),
    ("security unknown key", '[container.a]\ncommand=["/x"]\nsecurity={caps=["X"]}\n',
     "[container.a]", "security", "unknown key 'caps'"),
    ("security bad flag", '[container.a]\ncommand=["/x"]\nsecurity={privileged="yes"}\n',
     "[container.a]", "security", "must be true or false"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "table", "key", "words"),
    [m[1:] for m in MISTAKES],
    ids=[m[0] for m in MISTAKES],
)
def test_each_mistake_names_file_table_and_key(
    tmp_path: Path, body: str, table: str | None, key: str | None, words: str
) -> None:
    defaults = f'[defaults]\nrootfs = "{tmp_path}"\n'
    if table == "[defaults]":
        defaults += f"{key} = 1\n"
    problems = _problems(tmp_path, defaults + body if "TOML" not in words else body)
    assert len(problems) == 1, problems
    if table is not None:
        assert f" {table} {key}: " in problems[0], problems
    assert words in problems[0], problems


def test_missing_and_bad_rootfs(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        '[container.a]\ncommand=["/x"]\n'
        '[container.b]\ncommand=["/x"]\nrootfs="/nonexistent/rootfs"\n'
        '[container.c]\ncommand=["/x"]\nrootfs=7\n',
    )
    assert len(problems) == 3
    assert "[container.a] rootfs: missing" in problems[0]
    assert "[container.b] rootfs: '/nonexistent/rootfs' is not an existing directory" in problems[1]
    assert "[container.c] rootfs: 7 must be a path" in problems[2]


def test_every_mistake_is_reported_at_once_and_nothing_starts(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f'[defaults]\nrootfs = "{tmp_path}"\n'
        '[container.a]\ncommand=["/x"]\nrestart="sometimes"\nmemory="lots"\n'
        '[container.b]\ncommand="oops"\ndepends_on=["zzz"]\n',
    )
    state = tmp_path / "state"
    proc = run_vortex("supervise", "--state-dir", str(state), str(path), timeout=30)
    assert proc.returncode == 125
    err = proc.stderr.decode()
    assert err.startswith("vortex: 4 mistakes in the configuration:")
    for needle in (
        "[container.a] restart:",
        "[container.a] memory:",
        "[container.b] command:",
        "[container.b] depends_on:",
    ):
        assert f"{path}: {needle}" in err
    assert not state.exists()  # no socket, no logs, no state: it stopped before the Runtime


def test_check_flag_and_client_without_supervisor(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.format(rootfs=tmp_path))
    proc = run_vortex("supervise", "--check", str(path), timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"configuration OK; start order: db, web\n"
    sock = str(tmp_path / "none.sock")
    for command in (["ps"], ["status"], ["stop", "x"], ["logs", "x"], ["events"]):
        proc = run_vortex(command[0], "--socket", sock, *command[1:], timeout=30)
        assert proc.returncode == 125, command
        lines = proc.stderr.decode().splitlines()
        assert lines == [f"vortex: no supervisor is running on {sock} (start one with "
                         "'vortex supervise CONFIG')"]  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_relative_rootfs_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "fs").mkdir()
    path = _write(tmp_path, '[container.a]\ncommand=["/x"]\nrootfs="fs"\n')
    assert load_config(path).services["a"].rootfs == tmp_path / "fs"


def test_security_table_sets_the_container_security(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f'[defaults]\nrootfs = "{tmp_path}"\nsecurity = {{ cap_add = ["NET_ADMIN"] }}\n'
        '[container.a]\ncommand = ["/x"]\n'
        '[container.b]\ncommand = ["/x"]\n'
        'security = { seccomp = "unconfined", read_only = true, '
        'ulimits = { nofile = "100:200" } }\n',
    )
    services = load_config(path).services
    assert tuple(services["a"].security.cap_add) == ("NET_ADMIN",)
    b = services["b"].security
    assert b.seccomp == "unconfined" and b.read_only and b.ulimits == {"nofile": (100, 200)}
    assert tuple(b.cap_add) == ()  # a container's table replaces the [defaults] one
