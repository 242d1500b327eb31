"""1,000 container restarts under one supervisor leave nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from supervise_harness import busybox_config, supervise

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


def _children(pid: int) -> list[str]:
    states = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                states.append(fields[0])
    return states


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
        sup.wait_until(lambda c: c["churn"]["restarts"] >= 20)
        assert sup.cli("stop", "churn").returncode == 0
        fds_before, rss_before = _fds(pid), _rss_kib(pid)
        assert sup.cli("start", "churn").returncode == 0
        sup.wait_until(lambda c: c["churn"]["restarts"] >= 1020, timeout=40)
        assert sup.cli("stop", "churn").returncode == 0
        assert _fds(pid) == fds_before  # no pidfd, pipe or socket left open
        assert _rss_kib(pid) < rss_before + 8 * 1024
        children = _children(pid)
        assert "Z" not in children  # every init reaped
        assert children.count("S") + children.count("R") <= 1  # only the fork helper
        assert _records(pid) == []  # every state file forgotten
    # no_leaks: no cgroup of the 1,000 containers is left.
