"""Health checks run inside the running container (its namespaces and cgroup)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from supervise_harness import Events, busybox_config, supervise

from tests.conftest import reachable_copy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# Starting for 0.5 s (failures there fall in start_period), healthy for ~1.5 s
# (while /dev/ok exists: /dev is the container's private tmpfs), then unhealthy.
# The marker proves the check sees the container's PID 1.
FLAPPY = (
    '["/bin/sh", "-c", ": flappy-marker; trap \'exit 0\' TERM; sleep 0.5; touch /dev/ok; '
    'sleep 1.5; rm /dev/ok; while :; do sleep 1 & wait $!; done"]'
)


CHECK = "grep -q flappy-marker /proc/1/cmdline"


def test_unhealthy_container_is_restarted_and_dependents_wait_for_healthy(
    rootfs: Path,
) -> None:
    config = busybox_config(
        rootfs,
        f"""
[container.flappy]
command = {FLAPPY}
hostname = "flappy1"
restart = "on-failure"
backoff = {{ initial = 0.1 }}
stop_timeout = 2

[container.flappy.health]
command = ["/bin/sh", "-c", "test -e /dev/ok && test $(hostname) = flappy1 && {CHECK}"]
interval = 0.2
timeout = 2
retries = 2
start_period = 1.5

[container.app]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
depends_on = ["flappy"]
""",
    )
    with supervise(config) as sup, Events(sup.socket) as events:
        seen = events.until(lambda e: e["event"] == "healthy" and e["name"] == "flappy")
        assert sup.ps()["flappy"]["health"] == "healthy"
        seen = events.until(
            lambda e: (
                e["event"] == "healthy"
                and e["name"] == "flappy"
                and sum(x["event"] == "healthy" for x in events.seen) == 2
            )
        )
        containers = sup.ps()
    kinds = [(e["event"], e["name"]) for e in seen]
    # app started only once flappy was healthy (it may have started before we subscribed)
    if ("started", "app") in kinds:
        assert kinds.index(("healthy", "flappy")) < kinds.index(("started", "app"))
    first_healthy = kinds.index(("healthy", "flappy"))
    unhealthy = kinds.index(("unhealthy", "flappy"))
    failed = [e for e in seen if e["event"] == "health_failed"]
    assert [e["failures"] for e in failed[:2]] == [1, 2]
    assert first_healthy < unhealthy
    after = kinds[unhealthy:]
    assert after.index(("exited", "flappy")) < after.index(("restarting", "flappy"))
    assert after.index(("restarting", "flappy")) < after.index(("started", "flappy"))
    assert containers["flappy"]["restarts"] == 1
    assert containers["app"]["state"] == "running"


def test_health_check_timeout_counts_as_failure(rootfs: Path) -> None:
    config = busybox_config(
        rootfs,
        """
[container.slow]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
restart = "no"
health = { command = ["/bin/sleep", "10"], interval = 0.1, timeout = 0.3, retries = 1 }
""",
    )
    with supervise(config) as sup, Events(sup.socket) as events:
        seen = events.until(lambda e: e["event"] == "exited")
        assert sup.wait_until(lambda c: c["slow"]["state"] == "failed")["slow"]["health"] is None
    failed = next(e for e in seen if e["event"] == "health_failed")
    assert failed["status"] is None and "timed out" in failed["output"]
    assert any(e["event"] == "unhealthy" for e in seen)


# The check reports how it is confined, then fails, so the report lands in a
# health_failed event.  Its executable comes from the container's root
# filesystem, which the container controls: it must be confined as the
# container is, never run with the supervisor's own privileges.
REPORT = (
    '["/bin/sh", "-c", "grep -E \'^(CapEff|CapBnd|NoNewPrivs|Seccomp):\' /proc/self/status; '
    'cat /proc/self/uid_map; exit 1"]'
)


def _check_report(rootfs: Path, security: str) -> str:
    config = busybox_config(
        rootfs,
        f"""
[container.probe]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
stop_timeout = 2
{security}

[container.probe.health]
command = {REPORT}
interval = 0.2
timeout = 5
retries = 100
""",
    )
    with supervise(config) as sup, Events(sup.socket) as events:
        seen = events.until(lambda e: e["event"] == "health_failed" and e["name"] == "probe")
    return str(seen[-1]["output"])


def test_health_checks_are_confined_as_the_container_is(rootfs: Path) -> None:
    report = _check_report(rootfs, "")
    assert "CapEff:\t00000000a80425fb" in report  # docker's 14 capabilities, no more
    assert "CapBnd:\t00000000a80425fb" in report
    assert "NoNewPrivs:\t1" in report
    assert "Seccomp:\t2" in report  # the container's filter
    # The weakened configuration shows the check can tell the difference.
    privileged = _check_report(rootfs, "security = { privileged = true }")
    assert "CapEff:\t00000000a80425fb" not in privileged
    assert "Seccomp:\t0" in privileged


def test_health_checks_join_the_containers_user_namespace(rootfs: Path) -> None:
    with reachable_copy(rootfs, "vortex-health-") as reachable:
        report = _check_report(reachable, 'security = { userns = "auto" }')
    # Root of the check is the container's root: a mapped, unprivileged host id.
    first_line = next(line for line in report.splitlines() if line.split()[:1] == ["0"])
    inside, outside, count = (int(n) for n in first_line.split())
    assert (inside, count) == (0, 65536) and outside >= 100000
