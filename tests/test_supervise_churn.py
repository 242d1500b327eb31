"""1,000 container restarts under one supervisor leave nothing behind."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from supervise_harness import busybox_config, supervise

from tests.conftest import child_processes, fork_helper_of, is_fresh_helper

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.slow,
]


def _fds(pid: int) -> list[str]:
    kinds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            kinds.append(os.readlink(f"/proc/{pid}/fd/{fd}").split(":")[0])
        except OSError:
            continue
    return sorted(kinds)


def _settled_fds(pid: int, expected: list[str] | None = None) -> list[str]:
    """:func:`_fds` once it holds still (or equals ``expected``): right after a stop
    the spare init taken by the last start may still be on its way (the helper's
    socket pair open, its pidfd not yet received)."""
    deadline = time.monotonic() + 10
    last = _fds(pid)
    while time.monotonic() < deadline and last != expected:
        time.sleep(0.1)
        now = _fds(pid)
        if now == last and expected is None:
            break
        last = now
    return last


def _spare_ids(children: dict[int, tuple[str, str]]) -> set[str]:
    """The container id a waiting spare init holds (cgroup v2 only: its cgroup's name)."""
    ids = set()
    for child, (name, _state) in children.items():
        if name == "vortex-spare":
            with open(f"/proc/{child}/cgroup") as f:
                unified = [line for line in f.read().splitlines() if line.startswith("0::")]
            if unified:
                ids.add(os.path.basename(unified[0].split("::", 1)[1]))
    return ids


def _records(pid: int) -> list[dict[str, object]]:
    found = []
    for file in Path("/run/vortex/containers").glob("*.json"):
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if record.get("owner_pid") == pid:
            found.append(record)
    return found


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_thousand_restarts_leak_nothing(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        """
[container.churn]
command = ["/bin/true"]
restart = "always"
backoff = { initial = 0, max = 0 }
""",
    )
    with supervise(config) as sup:
        assert sup.proc is not None
        pid = sup.proc.pid
        # Its fork helper is a fresh interpreter from the start (never renewed: a
        # renewal would open a socket of its own in the middle of the count).
        sup.wait_until(lambda c: c["churn"]["restarts"] >= 20)
        assert is_fresh_helper(fork_helper_of(pid))
        assert sup.cli("stop", "churn").returncode == 0
        fds_before, rss_before = _settled_fds(pid), _rss_kib(pid)
        assert sup.cli("start", "churn").returncode == 0
        sup.wait_until(lambda c: c["churn"]["restarts"] >= 1020, timeout=40)
        assert sup.cli("stop", "churn").returncode == 0
        assert _settled_fds(pid, fds_before) == fds_before  # no pidfd, pipe or socket left
        assert _rss_kib(pid) < rss_before + 8 * 1024
        children = child_processes(pid)
        assert all(state != "Z" for _name, state in children.values())  # every init reaped
        # Only the fork helper, and the init it cloned ahead (vortex/spare.py).
        assert sorted(name for name, _state in children.values()) in (
            ["vortex-helper"],
            ["vortex-helper", "vortex-spare"],
        )
        # Every state file forgotten (on cgroup v2 the spare's own is the next container's).
        spare_ids = _spare_ids(children)
        assert [r for r in _records(pid) if r["id"] not in spare_ids] == []
    # no_leaks: no cgroup of the 1,000 containers is left.
