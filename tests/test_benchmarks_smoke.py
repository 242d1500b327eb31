"""The benchmark suite runs end to end (on 5 containers; its numbers mean nothing here).

The benchmarks themselves never run in the test suite: ``python -m benchmarks``
takes minutes.  This only checks that the entry point builds the C programs,
measures every subject it finds and writes its JSON, with the tools that are
not installed skipped (Vortex and the C reference always run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import (
    LIBRARY_AFTER_A_PAUSE,
    LONG_LIVED_LIBRARY,
    PRIVILEGED_LIBRARY,
    REF_CGROUP_PARENTS,
)

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="containers need root"),
    pytest.mark.skipif(
        not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler for the reference"
    ),
]


def run_benchmarks_smoke(out: Path, timeout: float, max_exit_latency: float) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--out", str(out),
         "--cold-runs", "2", "--warmup", "1", "--containers", "5", "--batch", "5",
         "--live", "5", "--samples", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "MPLCONFIGDIR": str(out.parent / "matplotlib")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert {
        "vortex",
        "vortex via daemon",
        LIBRARY_AFTER_A_PAUSE,
        "C reference",
        "python -c pass",
    } <= set(data["cold"])
    for subject in data["cold"].values():
        assert len(subject["wall"]) == 2
    assert {"vortex library", PRIVILEGED_LIBRARY, "C reference"} <= set(data["sequential"])
    assert sum(b["n"] for b in data["sequential"]["vortex library"]) == 5
    assert sum(b["n"] for b in data["sequential"][PRIVILEGED_LIBRARY]) == 5
    assert sum(b["n"] for b in data["sequential"][LONG_LIVED_LIBRARY]) == 5
    assert len(data["exit"]["steady"]) == 5
    assert all(0 < latency < max_exit_latency for latency in data["exit"]["steady"])
    assert "| vortex " in proc.stdout
    # The plot of the distributions, where matplotlib (the bench extra) is installed.
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "no plot: matplotlib is missing" in proc.stdout
    # The kernel's cgroup lock, probed in the same rhythm (a no-op migration, as root).
    assert len(data["cgroup_lock_wait"]) == 2
    assert all(0 < wait < 1 for wait in data["cgroup_lock_wait"])
    assert "cgroup lock, a no-op migration after the same pause: median" in proc.stdout
    assert not [p for p in REF_CGROUP_PARENTS if os.path.exists(p)], "cgroups left behind"


def test_benchmarks_run_end_to_end(tmp_path: Path) -> None:
    run_benchmarks_smoke(tmp_path / "out", timeout=60, max_exit_latency=1)


@pytest.mark.cgroup2
@pytest.mark.timeout(400)
def test_benchmarks_run_end_to_end_on_cgroup2(tmp_path: Path) -> None:
    """Users mostly run pure cgroup v2: the C reference once failed there (the memory
    controller was not enabled for its cgroups). In the emulated VM everything is
    ~20x slower, hence the generous limits."""
    run_benchmarks_smoke(tmp_path / "out", timeout=360, max_exit_latency=5)
