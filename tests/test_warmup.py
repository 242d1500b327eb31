"""vortex.cgroups.warmup: the v1 attach's RCU wait paid in a background thread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_python
from vortex.cgroups import warmup
from vortex.errors import ExecError
from vortex.runtime import Runtime
from vortex.spec import ContainerSpec, Stdio

pytestmark = pytest.mark.skipif(
    not Path("/sys/fs/cgroup/memory/cgroup.procs").exists(),
    reason="the warm-up is for cgroup v1 (a memory hierarchy)",
)

WARMUP = """
import json, os, time
from vortex import _linux as L
from vortex.cgroups import warmup

def own_cgroups():
    with open("/proc/self/cgroup") as f:
        return f.read()

before = own_cgroups()
warmup.start()
running = warmup._running
time.sleep(0.1)
threads = L.is_single_threaded()
warmup.stop()
print(json.dumps({
    "migrations": running.migrations if running else 0,
    "single_threaded_while_running": threads,
    "single_threaded_after": L.is_single_threaded(),
    "same_cgroups": own_cgroups() == before,
    "stopped": warmup._running is None,
}))
"""


def test_attach_warmup_migrates_in_place_until_stopped() -> None:
    outcome = json.loads(run_python(WARMUP).stdout)
    assert outcome["migrations"] >= 2  # the first one, then every few ms
    assert outcome["single_threaded_while_running"] is False
    assert outcome["single_threaded_after"] is True
    assert outcome["same_cgroups"] and outcome["stopped"]


CLI_AFTER_WARMUP = """
import sys
from vortex import cli, direct

def no_helper(*args):
    raise AssertionError("the warm-up thread must be gone before the clone")

direct._clone_through_helper = no_helper
sys.exit(cli.run_cli(["run", sys.argv[1], "/bin/true"]))
"""


def test_cli_run_clones_the_init_itself_after_the_warmup(rootfs: Path) -> None:
    run_python(CLI_AFTER_WARMUP, str(rootfs))


GIVES_UP = """
import json, time
from vortex import _linux as L
from vortex.cgroups import warmup

warmup.MAX_RUN = 0.05
warmup.start()
first = warmup._running
time.sleep(0.3)
gave_up = first.finished
warmup.start()
second = warmup._running
warmup.stop()
print(json.dumps({
    "gave_up": gave_up,
    "restarted": second is not None and second is not first,
    "single_threaded": L.is_single_threaded(),
}))
"""


def test_an_unstopped_warmup_ends_by_itself_and_can_start_again() -> None:
    outcome = json.loads(run_python(GIVES_UP).stdout)
    assert outcome == {"gave_up": True, "restarted": True, "single_threaded": True}


@pytest.mark.anyio
async def test_runtime_starts_leave_no_warmup_running(rootfs: Path) -> None:
    async with Runtime() as runtime:
        container = await runtime.start(
            ContainerSpec(rootfs=rootfs, command=["/bin/true"], stdout=Stdio.NULL)
        )
        assert warmup._running is None
        assert (await container.wait()).exit_code == 0
        with pytest.raises(ExecError):
            await runtime.start(ContainerSpec(rootfs=rootfs, command=["/no/such"]))
        assert warmup._running is None
