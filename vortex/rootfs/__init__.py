"""Root filesystems for containers: built from busybox, or Alpine's minirootfs.

* :func:`vortex.rootfs.busybox.build_busybox_rootfs` builds a minimal tree
  from the host's static busybox, without network.
* :func:`vortex.rootfs.alpine.install_alpine` downloads, verifies and safely
  extracts the Alpine minirootfs (or a local tarball).

Both refuse to write into a non-empty directory unless told to, and leave
nothing behind when they fail; :class:`Destination` implements that contract
for both.  This module is stdlib-only and light: ``vortex rootfs`` is on the
CLI's cold-start path, so the builders import their heavier modules lazily.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vortex.errors import RootfsError

__all__ = ["DEFAULT_ALPINE_VERSION", "Destination"]

DEFAULT_ALPINE_VERSION = "3.24.2"
"""The Alpine release `vortex rootfs alpine` installs without ``--url``.

Kept here rather than in :mod:`vortex.rootfs.alpine` so that the CLI's help
can show it without importing the installer.
"""


class Destination:
    """The directory a root filesystem is written to, and how to undo that.

    :meth:`check` validates it without touching anything, so that every error
    found before the real work starts leaves the file system as it was;
    :meth:`populate` then creates it and, if the work fails, removes what was
    created: the whole directory if it did not exist, its new content if it
    existed empty.  Content of a non-empty directory (``force``) cannot be
    restored, so that case is left as the failure left it.
    """

    def __init__(self, path: Path, *, existed: bool, was_empty: bool) -> None:
        self.path = path
        self.existed = existed
        self.was_empty = was_empty

    @classmethod
    def check(cls, dest: Path, *, force: bool, force_hint: bool = True) -> Destination:
        """Validate ``dest``: absent, an empty directory, or (``force``) any directory.

        ``force_hint`` says whether the error for a non-empty directory should
        suggest ``--force`` (the command that reports it may not offer it).
        """
        path = Path(os.path.abspath(dest))
        # The real path matters here, not the spelling: "/." or a symlink to /
        # must not slip through as "not the root".
        if Path(os.path.realpath(path)) == Path("/"):
            raise RootfsError(
                f"refusing to write a root filesystem over the host's / (DIR is {dest}); "
                f"pass a new or empty directory"
            )
        if not os.path.lexists(path):
            return cls(path, existed=False, was_empty=True)
        if not path.is_dir():
            raise RootfsError(
                f"{dest} exists and is not a directory; pass a new or empty directory"
            )
        try:
            entries = sorted(os.listdir(path))
        except OSError as err:
            raise RootfsError(f"cannot read directory {dest}: {err.strerror}") from err
        if entries and not force:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            hint = (
                "remove it, pick a new or empty directory, or pass --force to build over it"
                if force_hint
                else "remove it or pick a new or empty directory"
            )
            raise RootfsError(f"{dest} is not empty ({shown}); {hint}")
        return cls(path, existed=True, was_empty=not entries)

    @contextlib.contextmanager
    def populate(self) -> Iterator[Path]:
        """Create the directory (and missing parents); undo on any failure.

        ``BaseException`` is caught on purpose: a Ctrl-C halfway through an
        extraction must not leave half a root filesystem behind either.
        """
        created_top = self._first_missing_ancestor()
        saved = None if not self.existed else os.stat(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RootfsError(f"cannot create directory {self.path}: {err.strerror}") from err
        try:
            yield self.path
        except BaseException:
            if created_top is not None:
                _remove_tree(created_top)
            elif self.was_empty:
                _empty_directory(self.path)
                if saved is not None:
                    # The build may have set the mode or owner of the root
                    # directory itself (a "./" tar member); put them back.
                    with contextlib.suppress(OSError):
                        os.chmod(self.path, saved.st_mode & 0o7777)
                        os.chown(self.path, saved.st_uid, saved.st_gid)
            raise

    def _first_missing_ancestor(self) -> Path | None:
        """The topmost directory mkdir(parents=True) will create, if any."""
        top = None
        for candidate in (self.path, *self.path.parents):
            if os.path.lexists(candidate):
                break
            top = candidate
        return top


def _remove_tree(path: Path) -> None:
    # shutil.rmtree does not follow symlinks (it works with directory fds on
    # Linux), so an extracted link to / cannot turn cleanup into a disaster.
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _empty_directory(path: Path) -> None:
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        child = path / name
        if child.is_dir() and not child.is_symlink():
            _remove_tree(child)
        else:
            with contextlib.suppress(OSError):
                child.unlink()
