"""Download, verify and safely extract the Alpine minirootfs.

The order of the steps is what makes "nothing left behind" hold: DIR is
checked first (so a bad DIR costs no download), the tarball goes to a
temporary file that is always removed, its sha256 is checked, then every
member is read and validated, and only then is DIR created and written.  A
failure in that last step removes what was written (see
:class:`vortex.rootfs.Destination`).

Extraction is done by :mod:`tarfile` after our own validation, not with its
``data``/``tar`` filters: those clear setuid bits and the sticky ``/tmp`` mode,
and the ``data`` filter refuses absolute symlinks, all of which a root
filesystem needs (Alpine's applets are links to ``/bin/busybox``).  Instead the
rules are: no absolute member name and no ``..``; no member below a symlink or
a file (so nothing is ever written through a link); each name once; hard links
only to an earlier regular file; relative symlinks must not climb above DIR
(absolute ones resolve inside the container's root); no device nodes.

Only the stdlib is used; urllib and tarfile are imported when needed because
``vortex rootfs`` is on the CLI's cold-start path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from vortex.errors import RootfsError
from vortex.rootfs import DEFAULT_ALPINE_VERSION, Destination

if TYPE_CHECKING:
    import tarfile

__all__ = [
    "ALPINE_CDN",
    "DEFAULT_VERSION",
    "alpine_arch",
    "default_url",
    "fetch_published_sha256",
    "install_alpine",
]

DEFAULT_VERSION = DEFAULT_ALPINE_VERSION
"""The Alpine release installed when no ``--url`` is given."""

ALPINE_CDN = "https://dl-cdn.alpinelinux.org/alpine"

# uname -m -> Alpine's name for the architecture in release paths.
_ARCHES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "i386": "x86",
    "i486": "x86",
    "i586": "x86",
    "i686": "x86",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "armv8l": "armv7",
    "armv7l": "armv7",
    "armv6l": "armhf",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loongarch64",
}

_CHUNK = 64 * 1024
_TIMEOUT = 30.0
"""Seconds without any byte from the server before a download is given up."""
_MAX_CHECKSUM_FILE = 64 * 1024
_USER_AGENT = "vortex-rootfs/0.1 (python-urllib)"


def alpine_arch(machine: str | None = None) -> str:
    """Alpine's architecture name for ``machine`` (default: this host's ``uname -m``)."""
    machine = machine or os.uname().machine
    try:
        return _ARCHES[machine]
    except KeyError:
        raise RootfsError(
            f"Alpine publishes no minirootfs for this machine's architecture {machine!r}; "
            f"pass the tarball's address with --url or a local file with --from"
        ) from None


def default_url(version: str | None = None, arch: str | None = None) -> str:
    """The minirootfs tarball of ``version`` (default: :data:`DEFAULT_VERSION`) for
    ``arch`` (default: this host's) on the official CDN."""
    version = version or DEFAULT_VERSION
    arch = arch or alpine_arch()
    branch = "v" + ".".join(version.split(".")[:2])
    return f"{ALPINE_CDN}/{branch}/releases/{arch}/alpine-minirootfs-{version}-{arch}.tar.gz"


def install_alpine(
    dest: Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
    from_file: Path | None = None,
    progress: bool = True,
) -> None:
    """Install the Alpine minirootfs into ``dest`` (which must be absent or empty).

    Downloads ``url`` (default: :func:`default_url`) and checks it against
    ``sha256`` or, without it, against the ``<url>.sha256`` file Alpine
    publishes; or uses ``from_file``, checked only if ``sha256`` is given.
    ``progress`` draws the download's progress on stderr.  Any failure raises
    :class:`RootfsError` and leaves no file behind.
    """
    if url is not None and from_file is not None:
        raise RootfsError(
            f"--url {url} and --from {from_file} exclude each other; pass only one of them"
        )
    expected = _parse_sha256(sha256, "--sha256") if sha256 is not None else None
    target = Destination.check(dest, force=False, force_hint=False)
    with contextlib.ExitStack() as stack:
        if from_file is not None:
            archive = from_file
            label = str(from_file)
            if not from_file.is_file():
                problem = "is not a regular file" if from_file.exists() else "no such file"
                raise RootfsError(f"--from {from_file}: {problem}; pass a tarball")
            if expected is not None:
                _check_digest(label, expected, _file_sha256(from_file))
            hint = f"check the file {from_file}"
        else:
            source = url if url is not None else default_url()
            _check_url(source)
            if expected is None:
                expected = fetch_published_sha256(source)
            archive = stack.enter_context(_temporary_file())
            actual = _download(source, archive, progress=progress)
            label = source
            _check_digest(label, expected, actual)
            hint = "the file on the server is not a tarball; check --url"
        tar = stack.enter_context(_open_tarball(archive, label, hint))
        members = _validated_members(tar, label, hint)
        with target.populate() as root:
            _extract(tar, members, root, label)


def fetch_published_sha256(url: str) -> str:
    """The sha256 that Alpine publishes for ``url`` in ``<url>.sha256``."""
    checksum_url = url + ".sha256"
    body = _fetch_small(checksum_url)
    name = url.rstrip("/").rpartition("/")[2]
    lines = [line.split() for line in body.decode(errors="replace").splitlines() if line.strip()]
    # sha256sum format, "HEX  NAME" per line: take the line of our file, or
    # the only line of a file that names nothing else.
    for fields in lines:
        if len(fields) >= 2 and fields[1].lstrip("*").rpartition("/")[2] == name:
            return _parse_sha256(fields[0], checksum_url)
    if len(lines) == 1:
        return _parse_sha256(lines[0][0], checksum_url)
    raise RootfsError(
        f"{checksum_url} holds no sha256 for {name}; pass the expected checksum with --sha256 HEX"
    )


def _parse_sha256(value: str, source: str) -> str:
    digest = value.strip().lower().removeprefix("sha256:")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise RootfsError(
            f"{source}: {value.strip()[:80]!r} is not a sha256 checksum (64 hexadecimal digits)"
        )
    return digest


def _check_url(url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RootfsError(
            f"--url {url}: only http:// and https:// addresses can be downloaded; "
            f"use --from FILE for a local tarball"
        )


def _check_digest(label: str, expected: str, actual: str) -> None:
    if actual != expected:
        raise RootfsError(
            f"sha256 mismatch for {label}: expected {expected}, got {actual}; the file is "
            f"corrupt or not the one the checksum is for (download again or check --sha256)"
        )


def _file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as err:
        raise RootfsError(f"cannot read {path}: {err.strerror}") from err
    return digest.hexdigest()


@contextlib.contextmanager
def _temporary_file() -> Iterator[Path]:
    """A private temporary file for the download, removed whatever happens."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="vortex-alpine-", suffix=".tar.gz")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _http_error(url: str, err: BaseException, what: str, hint: str) -> RootfsError:
    """A one-line RootfsError for a failed HTTP request, whatever urllib raised."""
    import urllib.error

    if isinstance(err, urllib.error.HTTPError):
        err.close()
        detail = f"HTTP {err.code} {err.reason}"
    elif isinstance(err, urllib.error.URLError):
        detail = str(err.reason)
    elif isinstance(err, OSError) and err.strerror:
        detail = err.strerror
    else:
        detail = str(err) or type(err).__name__
    return RootfsError(f"{what} {url} failed: {detail}; {hint}")


def _fetch_small(url: str) -> bytes:
    import http.client
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            body: bytes = response.read(_MAX_CHECKSUM_FILE)
    except (OSError, http.client.HTTPException) as err:
        raise _http_error(
            url,
            err,
            "fetching the checksum",
            "check the address, or pass the expected checksum with --sha256 HEX",
        ) from err
    return body


def _download(url: str, path: Path, *, progress: bool) -> str:
    """Download ``url`` into ``path`` with a progress report; return its sha256."""
    import hashlib
    import http.client
    import urllib.request

    from vortex.progress import Progress

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(request, timeout=_TIMEOUT) as response,
            path.open("wb") as out,
        ):
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            name = url.rstrip("/").rpartition("/")[2]
            with Progress(f"Downloading {name}", total, enabled=progress) as report:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    report.update(len(chunk))
                # http.client does not raise when the connection closes before
                # Content-Length bytes came; the checksum would catch it, but
                # "cut short" tells the user what actually happened.
                if total is not None and report.done != total:
                    raise RootfsError(
                        f"download of {url} was cut short: got {report.done} of {total} "
                        f"bytes; try again"
                    )
    except (OSError, http.client.HTTPException) as err:
        raise _http_error(
            url, err, "download of", "check the address (--url) and the network, or use --from FILE"
        ) from err
    return digest.hexdigest()


@contextlib.contextmanager
def _open_tarball(path: Path, label: str, hint: str) -> Iterator[tarfile.TarFile]:
    import tarfile

    try:
        # Not a with-statement: the try must cover the open only, not the body.
        tar = tarfile.open(path, mode="r:*")  # noqa: SIM115
    except tarfile.ReadError as err:
        # tarfile's own message lists every method it tried, over many lines.
        raise RootfsError(
            f"{label} is not a valid tarball (neither a plain tar archive nor one compressed "
            f"with gzip, bzip2 or xz); {hint}"
        ) from err
    except (OSError, tarfile.TarError, EOFError) as err:
        raise RootfsError(f"{label} is not a valid tarball ({_one_line(err)}); {hint}") from err
    with tar:
        yield tar


def _one_line(err: BaseException) -> str:
    """An exception's message on one line: errors are reported as a single line."""
    return " ".join(str(err).split()) or type(err).__name__


def _member_path(name: str, label: str, what: str = "member") -> str:
    """``name`` normalised ("./a//b" -> "a/b", "./" -> "."); refuses escapes."""
    if name.startswith("/"):
        raise RootfsError(
            f"{label} holds the {what} {name!r} with an absolute path; refusing to extract it"
        )
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise RootfsError(
            f"{label} holds the {what} {name!r}, which climbs out of the target directory "
            f"with '..'; refusing to extract it"
        )
    return "/".join(parts) or "."


def _validated_members(tar: tarfile.TarFile, label: str, hint: str) -> list[tarfile.TarInfo]:
    """Every member, checked against the rules of this module's docstring.

    Reading all members also reads the whole compressed stream, so a truncated
    or corrupt tarball is found here, before anything is written.
    """
    import tarfile
    import zlib

    try:
        members = tar.getmembers()
        # getmembers() stops at the end-of-archive blocks; reading on to the
        # end makes gzip check its CRC and length trailer too.
        fileobj = tar.fileobj
        while fileobj.read(1 << 20):
            pass
    except (OSError, tarfile.TarError, EOFError, zlib.error) as err:
        raise RootfsError(f"{label} is not a valid tarball ({_one_line(err)}); {hint}") from err
    if not members:
        raise RootfsError(f"{label} is an empty tarball; {hint}")

    by_name: dict[str, tarfile.TarInfo] = {}
    for member in members:
        original = member.name
        name = _member_path(original, label)
        if member.ischr() or member.isblk():
            raise RootfsError(
                f"{label} holds the device node {original!r}; refusing to create device "
                f"nodes (the container runtime provides /dev)"
            )
        if not (
            member.isreg() or member.isdir() or member.issym() or member.islnk() or member.isfifo()
        ):
            raise RootfsError(
                f"{label} holds {original!r} of unsupported tar type {member.type!r}; "
                f"refusing to extract it"
            )
        if name == "." and not member.isdir():
            raise RootfsError(f"{label} holds {original!r} as a non-directory; refusing it")
        previous = by_name.get(name)
        # A second member of the same name replaces the first: a file after a
        # symlink would be written through the link.  Only a directory listed
        # twice is harmless.
        if previous is not None and not (previous.isdir() and member.isdir()):
            raise RootfsError(f"{label} holds {original!r} twice; refusing to extract it")
        if member.issym():
            _check_symlink(name, member.linkname, label)
        if member.islnk():
            link = _member_path(member.linkname, label, what="hard link target")
            linked = by_name.get(link)
            if linked is None or not linked.isreg():
                raise RootfsError(
                    f"{label} holds the hard link {original!r} to {member.linkname!r}, which is "
                    f"not an earlier regular file of the archive; refusing to extract it"
                )
            member.linkname = link
        member.name = name
        by_name[name] = member

    for name in by_name:
        # Every ancestor of a member must be a directory (or absent, then
        # tarfile creates it): a member below a symlink would be written
        # wherever the link points.
        parts = name.split("/")
        for depth in range(1, len(parts)):
            ancestor = by_name.get("/".join(parts[:depth]))
            if ancestor is not None and not ancestor.isdir():
                kind = "symlink" if ancestor.issym() else "non-directory"
                raise RootfsError(
                    f"{label} holds {name!r} below the {kind} {ancestor.name!r}; extracting "
                    f"it would write through the link; refusing to extract it"
                )
    return members


def _check_symlink(name: str, target: str, label: str) -> None:
    """Refuse a relative symlink that climbs above the root of the tree.

    Absolute targets are fine: they resolve inside the container's root, and
    extraction never follows a link (no member may lie below one).
    """
    if target.startswith("/"):
        return
    depth = name.count("/")  # directories between the root and the link
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise RootfsError(
                    f"{label} holds the symlink {name!r} -> {target!r}, which points out of the "
                    f"target directory; refusing to extract it"
                )
        elif part not in ("", "."):
            depth += 1


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], root: Path, label: str) -> None:
    import tarfile
    import zlib

    try:
        # numeric_owner: ownership is the archive's uid/gid, not what the
        # archive's user names mean on this host.  The members were validated
        # above, so the "fully_trusted" filter keeps setuid bits and modes.
        if hasattr(tarfile, "fully_trusted_filter"):
            tar.extractall(root, members, numeric_owner=True, filter="fully_trusted")
        else:  # Python < 3.11.4: no filters, and no filtering either
            tar.extractall(root, members, numeric_owner=True)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as err:
        raise RootfsError(
            f"extracting {label} into {root} failed ({_one_line(err)}); nothing was left behind"
        ) from err
