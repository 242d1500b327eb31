"""Run the ``cgroup2`` tests inside a pure cgroup v2 VM when the host is hybrid.

Our dev and CI machines mount the v1 controllers, so memory.max, pids.max and
cpu.max of cgroup v2 cannot be exercised on the host.  The v2vm tooling next to
the checkout (``../shared/tools/v2vm``) boots a throw-away QEMU guest with
``cgroup_no_v1=all`` that shares this checkout read-write; there the
``cgroup2`` tests of the whole ``tests/`` directory run for real.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
V2VM = REPO.parent / "shared" / "tools" / "v2vm"
VM_RUN = V2VM / "vm-run.sh"
VM_TIMEOUT = 900  # seconds for the whole guest run; the usual run takes about three minutes
SETUP_TIMEOUT = 1200  # apt installs on a fresh machine (~450 MB)

# The command run in the guest.  Plugin autoload is off (heavy plugins cost
# ~20 s of startup under emulation), so the plugins the suite needs are loaded
# explicitly: pytest-timeout for pyproject's ``timeout`` option, anyio's for
# the async tests (``pytest.mark.anyio``).  The host's interpreter is used by
# path, because pyenv shims are slow in the guest and a venv must stay the same.
GUEST_COMMAND = (
    f"{shlex.quote(sys.executable)} -m pytest -m cgroup2 -p no:cacheprovider "
    "-p pytest_timeout -p anyio.pytest_plugin -q -rfEs tests/"
)


def _summary(output: str) -> str:
    """The last pytest summary line, e.g. '11 passed, 14 deselected in 4.70s'."""
    lines = [
        line
        for line in output.splitlines()
        if re.search(r"\d+ (passed|failed|skipped|deselected|errors?)\b", line)
    ]
    return lines[-1] if lines else ""


@pytest.mark.slow
@pytest.mark.timeout(SETUP_TIMEOUT + VM_TIMEOUT + 300)
def test_cgroup2_suite_in_vm() -> None:
    if os.environ.get("V2VM_GUEST") == "1":
        pytest.skip("already inside the v2 VM")
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        # The same test vortex.cgroups.detect() uses for a pure unified host.
        pytest.skip("the host is pure cgroup v2: the cgroup2 tests run directly here")
    if not VM_RUN.exists():
        pytest.skip(f"no v2vm tooling at {VM_RUN}")
    if os.geteuid() != 0:
        pytest.skip("the cgroup2 tests need root (also inside the VM)")
    # setup.sh installs only what is missing (qemu, the guest kernel, busybox; apt,
    # a minute or two on a fresh machine) and takes milliseconds otherwise.  Its
    # smoke boot is skipped: the run below is one.
    setup = subprocess.run(
        ["bash", str(V2VM / "setup.sh")],
        env={**os.environ, "V2VM_SETUP_NO_SMOKE": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT,
        check=False,
    )
    assert setup.returncode == 0, f"v2vm setup.sh failed:\n{setup.stdout}{setup.stderr}"

    env = {
        **os.environ,
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "PYTHONUNBUFFERED": "1",
        "V2VM_TIMEOUT": str(VM_TIMEOUT),
    }
    started = time.monotonic()
    result = subprocess.run(
        [str(VM_RUN), GUEST_COMMAND],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=VM_TIMEOUT + 120,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = result.stdout
    print(f"--- v2 VM run: exit status {result.returncode} after {elapsed:.1f}s ---")
    print(output)

    summary = _summary(output)
    assert result.returncode == 0, f"VM run failed (exit {result.returncode}): {summary}"
    assert re.search(r"\b[1-9]\d* passed\b", summary), f"no test passed in the VM: {summary!r}"
    for bad in ("skipped", "failed", "error"):
        assert bad not in summary, f"tests {bad} in the VM: {summary!r}"
