"""The example plugin in contrib/, installed for real and found through its entry point.

pip builds the package (as a plugin author's user would install it) into a
private target directory, which the tests put on ``sys.path``: the entry point
is then found by ``importlib.metadata``, exactly as in a site-packages, without
installing anything into the environment the rest of the suite runs in.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vortex.rootfs.busybox import build_busybox_rootfs
from vortex.runtime import Runtime
from vortex.spec import ContainerSpec, Stdio

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0, reason="starting containers needs root"),
]

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "contrib" / "vortex-example-plugin"
MODULE = "vortex_example_plugin"


@pytest.fixture(params=["asyncio", "trio"], scope="module")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The contrib package pip-installed into a directory that is on ``sys.path``."""
    work = tmp_path_factory.mktemp("example-plugin")
    # Build from a copy: a build leaves build/ and *.egg-info/ next to the sources.
    source = work / "source"
    shutil.copytree(PACKAGE_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = work / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(
            f"pip could not install {PACKAGE_DIR} (it needs setuptools from the package "
            f"index for the isolated build):\n{proc.stdout}\n{proc.stderr}"
        )
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop(MODULE, None)
        importlib.invalidate_caches()


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A fresh rootfs per test: the plugin's WriteFile lands in the rootfs directory."""
    path = tmp_path / "rootfs"
    build_busybox_rootfs(path)
    return path


@pytest.fixture
def example_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "example.jsonl"
    monkeypatch.setenv("VORTEX_EXAMPLE_LOG", str(path))
    return path


def log_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines the plugin's vortex_on_exit appended, or [] without a file."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_entry_point_is_installed(plugin_site: Path) -> None:
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group="vortex")}
    assert "example" in found, f"no 'example' entry point in group 'vortex': {sorted(found)}"
    assert found["example"].value == MODULE
    module = found["example"].load()
    assert Path(module.__file__).is_relative_to(plugin_site)


async def test_the_plugin_writes_its_file_and_logs_the_exit(
    plugin_site: Path, rootfs: Path, example_log: Path
) -> None:
    spec = ContainerSpec(
        rootfs=rootfs,
        command=["/bin/sh", "-c", "cat /etc/vortex-example; exit 3"],
        name="example-test",
        stdout=Stdio.CAPTURE,
    )
    async with Runtime() as runtime:
        assert runtime.plugin_manager is not None
        assert runtime.plugin_manager.get_plugin("example") is not None
        result = await runtime.run(spec)

    assert result.stdout == b"example-test\n"
    assert result.exit_code == 3
    [record] = log_records(example_log)
    assert record["id"] == result.container_id
    assert record["name"] == "example-test"
    assert record["exit_code"] == 3
    assert record["status"] == 3
    assert record["signal"] is None
    assert record["oom_killed"] is False
    assert record["error"] is None
    assert isinstance(record["pid"], int) and record["pid"] > 1  # from vortex_post_cgroup
    assert 0 < record["wall_time"] < 60


async def test_one_log_line_per_container(
    plugin_site: Path, rootfs: Path, example_log: Path
) -> None:
    async with Runtime() as runtime:
        results = [
            await runtime.run(ContainerSpec(rootfs=rootfs, command=["/bin/sh", "-c", f"exit {n}"]))
            for n in (0, 1, 2)
        ]
    records = log_records(example_log)
    assert [(r["id"], r["exit_code"]) for r in records] == [
        (result.container_id, n) for n, result in enumerate(results)
    ]


async def test_no_log_without_the_environment_variable(
    plugin_site: Path, rootfs: Path, example_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VORTEX_EXAMPLE_LOG")
    async with Runtime() as runtime:
        result = await runtime.run(ContainerSpec(rootfs=rootfs, command=["/bin/true"]))
    assert result.exit_code == 0
    assert log_records(example_log) == []


async def test_disabled_by_name(plugin_site: Path, rootfs: Path, example_log: Path) -> None:
    spec = ContainerSpec(
        rootfs=rootfs,
        command=["/bin/sh", "-c", "test -e /etc/vortex-example && echo present || echo absent"],
        stdout=Stdio.CAPTURE,
    )
    async with Runtime(disabled_plugins=["example"]) as runtime:
        assert runtime.plugin_manager is not None
        assert runtime.plugin_manager.get_plugin("example") is None
        result = await runtime.run(spec)
    assert result.stdout == b"absent\n"
    assert log_records(example_log) == []


@pytest.mark.parametrize(
    ("options", "expected"), [([], b"cli\n"), (["--no-plugin", "example"], b"")]
)
def test_cli_loads_and_disables_the_plugin(
    plugin_site: Path, rootfs: Path, options: list[str], expected: bytes
) -> None:
    path = [str(plugin_site), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    env.pop("VORTEX_EXAMPLE_LOG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "vortex.cli", "run", *options, "--name", "cli", str(rootfs),
         "/bin/sh", "-c", "cat /etc/vortex-example 2>/dev/null; true"],
        capture_output=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected
