"""vortex.spec: ContainerSpec.validate() on the rootfs, given as a str or path-like."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vortex.errors import SpecError
from vortex.spec import ContainerSpec


def _spec(rootfs: str | os.PathLike[str]) -> ContainerSpec:
    return ContainerSpec(rootfs=rootfs, command=["/bin/true"])


@pytest.mark.parametrize("kind", [str, Path], ids=["str", "Path"])
def test_a_rootfs_is_a_str_or_a_path(tmp_path: Path, kind: type) -> None:
    directory = tmp_path / "rootfs"
    directory.mkdir()
    spec = _spec(kind(directory))
    spec.validate()
    assert os.fspath(spec.rootfs) == str(directory)


@pytest.mark.parametrize("kind", [str, Path], ids=["str", "Path"])
def test_a_missing_rootfs_is_refused(tmp_path: Path, kind: type) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SpecError, match=f"rootfs '{missing}' does not exist: create one with"):
        _spec(kind(missing)).validate()


@pytest.mark.parametrize("kind", [str, Path], ids=["str", "Path"])
def test_a_rootfs_that_is_a_file_is_refused(tmp_path: Path, kind: type) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(SpecError, match="is not a directory: pass a directory"):
        _spec(kind(file)).validate()


def test_a_relative_rootfs_is_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rootfs").mkdir()
    monkeypatch.chdir(tmp_path)
    _spec("rootfs").validate()
    _spec(Path("rootfs")).validate()


def test_a_bytes_rootfs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="must be a str or path-like"):
        _spec(os.fsencode(tmp_path)).validate()  # type: ignore[arg-type]
