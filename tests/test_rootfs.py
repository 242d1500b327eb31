"""Tests of ``vortex rootfs``: the busybox builder, the Alpine installer, progress.

The Alpine tests never touch the network: they build small fake minirootfs
tarballs and serve them (with their ``.sha256`` files) from an
``http.server`` on 127.0.0.1.  Temporary files are redirected to a private
directory so that "no temp file left behind" can be checked.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vortex.errors import RootfsError, VortexError
from vortex.progress import Progress, format_bytes
from vortex.rootfs import alpine
from vortex.rootfs.alpine import alpine_arch, default_url, install_alpine
from vortex.rootfs.busybox import build_busybox_rootfs, check_static_elf
from vortex.rootfs.cli import configure_parser, main

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")
APPLET_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin")


def _have_static_busybox() -> bool:
    try:
        check_static_elf(BUSYBOX)
    except RootfsError:
        return False
    return True


needs_busybox = pytest.mark.skipif(
    not _have_static_busybox(), reason="needs /bin/busybox from busybox-static"
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, chown)")


def run_cli(*argv: str) -> int:
    """``vortex rootfs ARGV`` through the parser the top-level CLI will use."""
    parser = argparse.ArgumentParser(prog="vortex rootfs")
    configure_parser(parser)
    return main(parser.parse_args(argv))


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry below ``root``: kind, mode and link target or content hash."""
    entries: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entry = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entry = ("dir", stat.S_IMODE(st.st_mode), "")
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entry = ("file", stat.S_IMODE(st.st_mode), digest)
            entries[str(path.relative_to(root))] = entry
    return entries


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tempfile puts files during a test, to check that none are left."""
    directory = tmp_path / "tempdir"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


# --------------------------------------------------------------------- busybox


def expected_applets() -> list[str]:
    out = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in out.split()
        if line.rpartition("/")[0] in APPLET_DIRS and line != "bin/busybox"
    ]


@needs_busybox
def test_busybox_layout(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "rootfs"  # parents are created too
    build_busybox_rootfs(dest)

    modes = {"tmp": 0o1777, "root": 0o700, "proc": 0o555, "etc": 0o755, "usr/sbin": 0o755}
    for name in (*APPLET_DIRS, "etc", "proc", "sys", "dev", "tmp", "root", "home", "var", "run"):
        path = dest / name
        assert path.is_dir() and not path.is_symlink(), name
        if name in modes:
            assert stat.S_IMODE(path.stat().st_mode) == modes[name], name
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755

    binary = dest / "bin" / "busybox"
    assert binary.is_file() and not binary.is_symlink()
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    assert binary.read_bytes() == BUSYBOX.read_bytes()

    applets = expected_applets()
    assert len(applets) > 100
    for applet in applets:
        link = dest / applet
        assert link.is_symlink(), applet
        # Relative links: they resolve to this tree's busybox from the host too.
        assert not os.readlink(link).startswith("/"), applet
        assert link.resolve() == binary.resolve(), applet
    assert not (dest / "linuxrc").exists()

    passwd = (dest / "etc/passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == ["root", "nobody"]
    assert passwd[0].split(":")[2:4] == ["0", "0"]
    assert "root:x:0:" in (dest / "etc/group").read_text()
    assert (dest / "etc/hostname").read_text().strip()
    assert "localhost" in (dest / "etc/hosts").read_text()
    assert "PS1=" in (dest / "etc/profile").read_text()


@needs_busybox
@needs_root
def test_busybox_runs_in_chroot(tmp_path: Path) -> None:
    chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert chroot is not None, "coreutils' chroot is missing"
    dest = tmp_path / "rootfs"
    build_busybox_rootfs(dest)
    # A plain chroot needs no mounts, so no mount namespace is needed either.
    result = subprocess.run(
        [chroot, str(dest), "/bin/sh", "-c", "echo hello; ls /bin | wc -l"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    hello, count = result.stdout.split()
    assert hello == "hello"
    assert int(count) == len(os.listdir(dest / "bin"))
    # A login shell reads /etc/profile, with its PS1 and PATH.
    result = subprocess.run(
        [chroot, str(dest), "/bin/sh", "-l", "-c", 'echo "$PS1"; whoami; cat /etc/hostname'],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={},
    )
    ps1, user, hostname = result.stdout.split()
    assert "\\w" in ps1
    assert user == "root"
    assert hostname == "vortex"


@needs_busybox
def test_busybox_into_existing_empty_dir(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir(mode=0o700)
    build_busybox_rootfs(dest)
    assert (dest / "bin/busybox").is_file()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


@needs_busybox
def test_busybox_refuses_non_empty_dir(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    (dest / "precious").write_text("keep me")
    with pytest.raises(RootfsError, match=r"is not empty \(precious\).*--force"):
        build_busybox_rootfs(dest)
    assert os.listdir(dest) == ["precious"]


@needs_busybox
def test_busybox_force_rebuilds_identically(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    build_busybox_rootfs(dest)
    first = snapshot(dest)

    # Damage the tree, and add something of the user's.
    (dest / "bin/sh").unlink()
    (dest / "bin/sh").write_text("not a link")
    (dest / "etc/hostname").unlink()
    (dest / "tmp").chmod(0o755)
    (dest / "usr/bin/env").unlink()
    (dest / "usr/bin/env").symlink_to("/somewhere/else")
    (dest / "home/user").mkdir()

    build_busybox_rootfs(dest, force=True)
    second = snapshot(dest)
    assert second.pop("home/user") == ("dir", 0o755, "")
    assert second == first
    assert not [name for name in second if "vortex-tmp" in name]

    assert run_cli("busybox", str(dest), "--force") == 0
    assert snapshot(dest) == {**first, "home/user": ("dir", 0o755, "")}


@needs_busybox
def test_busybox_force_does_not_write_through_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "rootfs"
    dest.mkdir()
    (dest / "etc").symlink_to(outside)  # a build would write outside/passwd
    with pytest.raises(RootfsError, match=r"etc is a symlink; refusing to write through it"):
        build_busybox_rootfs(dest, force=True)
    assert os.listdir(outside) == []


@needs_busybox
def test_busybox_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vortex.rootfs import busybox

    def fail(self: object, relpath: str, data: bytes, mode: int) -> None:
        raise RootfsError(f"simulated failure writing {relpath}")

    monkeypatch.setattr(busybox._Tree, "write_file", fail)
    created = tmp_path / "a" / "b"
    with pytest.raises(RootfsError, match="simulated"):
        build_busybox_rootfs(created)
    assert not (tmp_path / "a").exists()

    empty = tmp_path / "empty"
    empty.mkdir(mode=0o711)
    with pytest.raises(RootfsError, match="simulated"):
        build_busybox_rootfs(empty)
    assert os.listdir(empty) == []
    assert stat.S_IMODE(empty.stat().st_mode) == 0o711


def test_busybox_missing_binary(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError, match=r"does not exist.*apt-get install busybox-static"):
        build_busybox_rootfs(dest, busybox=tmp_path / "no-such-busybox")
    assert not dest.exists()


def test_busybox_dynamic_binary_refused(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError) as info:
        run_cli("busybox", str(dest), "--busybox", "/bin/ls")
    message = str(info.value)
    assert "/bin/ls is dynamically linked" in message
    assert "ld-" in message  # names the loader it needs
    assert "apt-get install busybox-static" in message
    assert "\n" not in message
    assert not dest.exists()


def test_busybox_not_an_elf_binary(tmp_path: Path) -> None:
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\necho fake\n")
    script.chmod(0o755)
    with pytest.raises(RootfsError, match="not an ELF executable"):
        build_busybox_rootfs(tmp_path / "rootfs", busybox=script)


@needs_busybox
def test_busybox_refuses_a_file_and_the_host_root(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(RootfsError, match="exists and is not a directory"):
        build_busybox_rootfs(afile, force=True)
    with pytest.raises(RootfsError, match="refusing to write a root filesystem over the host"):
        build_busybox_rootfs(Path("/"), force=True)
    (tmp_path / "to-root").symlink_to("/")
    with pytest.raises(RootfsError, match="over the host's /"):
        build_busybox_rootfs(tmp_path / "to-root", force=True)


# ------------------------------------------------------------ alpine: helpers

Member = tuple[tarfile.TarInfo, bytes | None]


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes | None = None,
    mode: int = 0o644,
    link: str = "",
    uid: int = 0,
    gid: int = 0,
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.uid, info.gid = uid, gid
    info.uname = info.gname = "root" if uid == 0 else "nosuchname"
    info.mtime = 1_700_000_000
    if kind == tarfile.REGTYPE:
        data = data if data is not None else b""
        info.size = len(data)
    return info, data


def fake_minirootfs() -> list[Member]:
    """A few entries shaped like Alpine's: "./" names, absolute applet links."""
    return [
        entry("./", tarfile.DIRTYPE, mode=0o755),
        entry("./bin/", tarfile.DIRTYPE, mode=0o755),
        entry("./bin/busybox", data=b"\x7fELF fake busybox\n", mode=0o755),
        entry("./bin/sh", tarfile.SYMTYPE, link="/bin/busybox", mode=0o777),
        entry("./bin/bbsuid", data=b"setuid helper\n", mode=0o4111),
        entry("./etc/", tarfile.DIRTYPE, mode=0o755),
        entry("./etc/os-release", tarfile.SYMTYPE, link="../usr/lib/os-release", mode=0o777),
        entry("./usr/", tarfile.DIRTYPE, mode=0o755),
        entry("./usr/lib/", tarfile.DIRTYPE, mode=0o755),
        entry("./usr/lib/os-release", data=b'NAME="Fake Alpine"\n'),
        entry("./usr/lib/os-release.hardlink", tarfile.LNKTYPE, link="./usr/lib/os-release"),
        entry("./usr/share/deep/nested/dir/", tarfile.DIRTYPE, mode=0o750),
        entry("./usr/share/deep/nested/dir/file.txt", data=b"deep\n", uid=1234, gid=5678),
        entry("./tmp/", tarfile.DIRTYPE, mode=0o1777),
        entry("./run/fifo", tarfile.FIFOTYPE, mode=0o600),
        # About 1 MiB that gzip cannot shrink, so the download has many chunks.
        entry("./var/blob.bin", data=os.urandom(1 << 20)),
    ]


def write_tarball(path: Path, members: list[Member]) -> str:
    """Write a .tar.gz of ``members`` and return its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish(www: Path, name: str, members: list[Member], *, sha256: str | None = None) -> str:
    """Serve a tarball and its .sha256 file (``sha256`` overrides the right one)."""
    digest = write_tarball(www / name, members)
    (www / f"{name}.sha256").write_text(f"{sha256 or digest}  {name}\n")
    return digest


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean

    def do_GET(self) -> None:
        if self.path.endswith("/short.tar.gz"):
            # Promise more bytes than are sent, then hang up.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"x" * 1000)
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1 (random port), and its URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_Handler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval: shutdown() waits for one poll.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


NAME = "alpine-minirootfs-9.9.9-x86_64.tar.gz"


def assert_fake_minirootfs(dest: Path) -> None:
    assert (dest / "bin/busybox").read_bytes() == b"\x7fELF fake busybox\n"
    assert os.readlink(dest / "bin/sh") == "/bin/busybox"
    assert os.readlink(dest / "etc/os-release") == "../usr/lib/os-release"
    assert (dest / "etc/os-release").read_text() == 'NAME="Fake Alpine"\n'
    assert (dest / "usr/share/deep/nested/dir/file.txt").read_text() == "deep\n"
    assert len((dest / "var/blob.bin").read_bytes()) == 1 << 20
    assert stat.S_ISFIFO((dest / "run/fifo").lstat().st_mode)
    # Permissions are kept, including those a "data" filter would strip.
    assert stat.S_IMODE((dest / "bin/bbsuid").stat().st_mode) == 0o4111
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((dest / "usr/share/deep/nested/dir").stat().st_mode) == 0o750
    original = (dest / "usr/lib/os-release").stat()
    assert (dest / "usr/lib/os-release.hardlink").stat().st_ino == original.st_ino
    if os.geteuid() == 0:
        # Numeric ownership, not what "nosuchname" would map to on the host.
        owned = (dest / "usr/share/deep/nested/dir/file.txt").stat()
        assert (owned.st_uid, owned.st_gid) == (1234, 5678)


# ------------------------------------------------------- alpine: the good path


def test_alpine_download(
    tmp_path: Path,
    server: tuple[Path, str],
    private_tempdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    www, base = server
    publish(www, NAME, fake_minirootfs())
    dest = tmp_path / "rootfs"
    install_alpine(dest, url=f"{base}/{NAME}")
    assert_fake_minirootfs(dest)
    assert os.listdir(private_tempdir) == []

    # stderr is not a terminal under pytest: one plain line per 10%, then a summary.
    lines = capsys.readouterr().err.splitlines()
    label = f"Downloading {NAME}: "
    assert all(line.startswith(label) for line in lines), lines
    steps = [line.removeprefix(label).split("%")[0] for line in lines[:-1]]
    assert steps == [str(p) for p in range(10, 100, 10)]
    assert "KiB of 1.0 MiB, " in lines[0] and lines[0].endswith("/s)")
    assert lines[-1].startswith(f"{label}done, 1.0 MiB in ")


def test_alpine_default_url_and_published_checksum(
    tmp_path: Path, server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --url: the default release for this machine, as laid out on the CDN."""
    www, base = server
    arch = alpine_arch()
    release = www / "v9.9" / "releases" / arch
    release.mkdir(parents=True)
    publish(release, f"alpine-minirootfs-9.9.9-{arch}.tar.gz", fake_minirootfs())
    monkeypatch.setattr(alpine, "ALPINE_CDN", base)
    monkeypatch.setattr(alpine, "DEFAULT_VERSION", "9.9.9")
    assert default_url() == f"{base}/v9.9/releases/{arch}/alpine-minirootfs-9.9.9-{arch}.tar.gz"
    dest = tmp_path / "rootfs"
    assert run_cli("alpine", str(dest), "--no-progress") == 0
    assert_fake_minirootfs(dest)


def test_alpine_cli_quiet_with_explicit_sha256(
    tmp_path: Path, server: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    www, base = server
    digest = write_tarball(www / NAME, fake_minirootfs())  # no .sha256 published
    dest = tmp_path / "rootfs"
    dest.mkdir()  # an existing empty directory is fine
    url = f"{base}/{NAME}"
    assert run_cli("alpine", str(dest), "--url", url, "--sha256", digest, "--no-progress") == 0
    assert_fake_minirootfs(dest)
    out, err = capsys.readouterr()
    assert err == ""
    assert f"ready in {dest}" in out


def test_alpine_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tarball = tmp_path / NAME
    digest = write_tarball(tarball, fake_minirootfs())
    install_alpine(tmp_path / "unverified", from_file=tarball)
    assert_fake_minirootfs(tmp_path / "unverified")
    verified = tmp_path / "verified"
    assert run_cli("alpine", str(verified), "--from", str(tarball), "--sha256", digest) == 0
    assert_fake_minirootfs(verified)
    assert capsys.readouterr().err == ""  # nothing to download, no progress


# -------------------------------------------------- alpine: nothing left behind


def assert_nothing_left(dest: Path, private_tempdir: Path, *, existed: bool = False) -> None:
    if existed:
        assert os.listdir(dest) == []
    else:
        assert not dest.exists()
    assert os.listdir(private_tempdir) == []


@pytest.mark.parametrize("existed", [False, True])
def test_alpine_bad_published_checksum(
    tmp_path: Path, server: tuple[Path, str], private_tempdir: Path, existed: bool
) -> None:
    www, base = server
    publish(www, NAME, fake_minirootfs(), sha256="ab" * 32)
    dest = tmp_path / "rootfs"
    if existed:
        dest.mkdir()
    with pytest.raises(RootfsError) as info:
        install_alpine(dest, url=f"{base}/{NAME}", progress=False)
    message = str(info.value)
    assert message.startswith(f"sha256 mismatch for {base}/{NAME}: expected {'ab' * 32}, got ")
    assert "\n" not in message
    assert_nothing_left(dest, private_tempdir, existed=existed)


def test_alpine_wrong_explicit_checksum(
    tmp_path: Path, server: tuple[Path, str], private_tempdir: Path
) -> None:
    www, base = server
    publish(www, NAME, fake_minirootfs())  # the published one is right...
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError, match="sha256 mismatch"):  # ...but --sha256 wins
        install_alpine(dest, url=f"{base}/{NAME}", sha256="0" * 64, progress=False)
    assert_nothing_left(dest, private_tempdir)


def test_alpine_http_404(tmp_path: Path, server: tuple[Path, str], private_tempdir: Path) -> None:
    _, base = server
    dest = tmp_path / "rootfs"
    url = f"{base}/missing.tar.gz"
    with pytest.raises(RootfsError) as info:
        install_alpine(dest, url=url, sha256="0" * 64, progress=False)
    assert str(info.value).startswith(f"download of {url} failed: HTTP 404 ")
    assert_nothing_left(dest, private_tempdir)

    # Without --sha256 the published checksum is fetched first, and is missing.
    with pytest.raises(RootfsError) as info:
        install_alpine(dest, url=url, progress=False)
    message = str(info.value)
    assert message.startswith(f"fetching the checksum {url}.sha256 failed: HTTP 404 ")
    assert "--sha256 HEX" in message
    assert_nothing_left(dest, private_tempdir)


def test_alpine_connection_refused(tmp_path: Path, private_tempdir: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError, match=r"failed: .*[Cc]onnection refused"):
        install_alpine(dest, url=f"http://127.0.0.1:{port}/x.tar.gz", sha256="0" * 64)
    assert_nothing_left(dest, private_tempdir)


def test_alpine_download_cut_short(
    tmp_path: Path,
    server: tuple[Path, str],
    private_tempdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, base = server
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError, match=r"cut short: got 1002 of 100000 bytes"):
        install_alpine(dest, url=f"{base}/short.tar.gz", sha256="0" * 64)
    assert_nothing_left(dest, private_tempdir)
    assert capsys.readouterr().err.endswith("failed after 1002 B\n")


def corrupt_tarballs() -> dict[str, bytes]:
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w:gz") as tar:
        for info, data in fake_minirootfs():
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = good.getvalue()
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    return {
        "garbage": os.urandom(4096),
        "truncated": raw[: len(raw) // 2],
        "flipped-byte": bytes(flipped),
        "empty": b"",
    }


@pytest.mark.parametrize("kind", sorted(corrupt_tarballs()))
def test_alpine_corrupt_tarball(
    tmp_path: Path, server: tuple[Path, str], private_tempdir: Path, kind: str
) -> None:
    www, base = server
    data = corrupt_tarballs()[kind]
    (www / NAME).write_bytes(data)
    # The checksum matches: the corruption happened before it was computed.
    (www / f"{NAME}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {NAME}\n")
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError, match=r"is not a valid tarball|is an empty tarball") as info:
        install_alpine(dest, url=f"{base}/{NAME}", progress=False)
    assert "\n" not in str(info.value)
    assert_nothing_left(dest, private_tempdir)


def escaping_tarballs(tmp_path: Path) -> dict[str, list[Member]]:
    """Tarballs that try to write outside DIR; the bad member comes last."""
    outside = tmp_path / "outside"
    return {
        "dotdot": [entry("../escape", data=b"escaped\n")],
        "nested-dotdot": [entry("./etc/../../escape", data=b"escaped\n")],
        "absolute": [entry(str(tmp_path / "escape"), data=b"escaped\n")],
        "through-absolute-symlink": [
            entry("./evil", tarfile.SYMTYPE, link=str(outside)),
            entry("./evil/escape", data=b"escaped\n"),
        ],
        "through-relative-symlink": [
            entry("./evil", tarfile.SYMTYPE, link="etc"),
            entry("./evil/escape", data=b"escaped\n"),
        ],
        "file-replacing-symlink": [
            entry("./evil", tarfile.SYMTYPE, link=str(outside / "escape")),
            entry("./evil", data=b"escaped\n"),
        ],
        "symlink-climbing-out": [entry("./etc/evil", tarfile.SYMTYPE, link="../../outside")],
        "hardlink-out": [entry("./evil", tarfile.LNKTYPE, link="../outside/file")],
        "hardlink-absolute": [entry("./evil", tarfile.LNKTYPE, link="/etc/passwd")],
        "device-node": [entry("./dev/sda", tarfile.BLKTYPE, mode=0o660)],
        "char-device": [entry("./dev/null", tarfile.CHRTYPE, mode=0o666)],
    }


@pytest.mark.parametrize("case", sorted(escaping_tarballs(Path("/x"))))
def test_alpine_refuses_escaping_members(
    tmp_path: Path, server: tuple[Path, str], private_tempdir: Path, case: str
) -> None:
    www, base = server
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = escaping_tarballs(tmp_path)[case]
    if case == "absolute":
        assert bad[0][0].name.startswith("/")  # tarfile kept the absolute name
    publish(www, NAME, fake_minirootfs()[:8] + bad)
    dest = tmp_path / "work" / "rootfs"
    dest.parent.mkdir()
    with pytest.raises(RootfsError, match="refusing") as info:
        install_alpine(dest, url=f"{base}/{NAME}", progress=False)
    assert "\n" not in str(info.value)
    assert_nothing_left(dest, private_tempdir)
    assert os.listdir(dest.parent) == []
    assert not (tmp_path / "escape").exists()
    assert os.listdir(outside) == []


def test_alpine_from_file_wrong_sha256(tmp_path: Path, private_tempdir: Path) -> None:
    tarball = tmp_path / NAME
    write_tarball(tarball, fake_minirootfs())
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError, match=f"sha256 mismatch for {tarball}: expected {'1' * 64}"):
        run_cli("alpine", str(dest), "--from", str(tarball), "--sha256", "1" * 64)
    assert_nothing_left(dest, private_tempdir)


def test_alpine_from_file_corrupt_without_sha256(tmp_path: Path, private_tempdir: Path) -> None:
    tarball = tmp_path / NAME
    tarball.write_bytes(corrupt_tarballs()["flipped-byte"])
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError, match=f"{tarball} is not a valid tarball"):
        install_alpine(dest, from_file=tarball)
    assert_nothing_left(dest, private_tempdir)


def test_alpine_extraction_failure_cleans_up(
    tmp_path: Path, private_tempdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = tmp_path / NAME
    write_tarball(tarball, fake_minirootfs())
    real_extract = tarfile.TarFile._extract_member  # type: ignore[attr-defined]
    count = 0

    def failing_extract(
        self: tarfile.TarFile, tarinfo: tarfile.TarInfo, *args: object, **kwargs: object
    ) -> None:
        nonlocal count
        count += 1
        if count > 5:  # after a few members are on disk
            raise OSError(28, "No space left on device")
        real_extract(self, tarinfo, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "_extract_member", failing_extract)
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError, match=r"extracting .* failed .*No space left on device"):
        install_alpine(dest, from_file=tarball)
    assert count > 5
    assert_nothing_left(dest, private_tempdir)

    count = 0
    dest.mkdir()
    with pytest.raises(RootfsError, match="No space left on device"):
        install_alpine(dest, from_file=tarball)
    assert_nothing_left(dest, private_tempdir, existed=True)


# ------------------------------------------------------ alpine: argument errors


def test_alpine_argument_errors(tmp_path: Path, private_tempdir: Path) -> None:
    tarball = tmp_path / NAME
    write_tarball(tarball, fake_minirootfs())
    dest = tmp_path / "rootfs"
    with pytest.raises(RootfsError, match="not a sha256 checksum"):
        install_alpine(dest, from_file=tarball, sha256="xyz")
    with pytest.raises(RootfsError, match="exclude each other"):
        install_alpine(dest, from_file=tarball, url="http://127.0.0.1/x.tar.gz")
    with pytest.raises(RootfsError, match="only http:// and https://"):
        install_alpine(dest, url="ftp://example.invalid/x.tar.gz")
    with pytest.raises(RootfsError, match="no such file"):
        install_alpine(dest, from_file=tmp_path / "missing.tar.gz")
    assert_nothing_left(dest, private_tempdir)

    dest.mkdir()
    (dest / "precious").write_text("keep me")
    with pytest.raises(RootfsError, match=r"is not empty \(precious\)") as info:
        install_alpine(dest, from_file=tarball)
    assert "--force" not in str(info.value)  # alpine has no --force to suggest
    assert os.listdir(dest) == ["precious"]

    parser = argparse.ArgumentParser(prog="vortex rootfs")
    configure_parser(parser)
    with pytest.raises(SystemExit):  # argparse: --url and --from exclude each other
        parser.parse_args(["alpine", "d", "--url", "http://x/y", "--from", "f"])


def test_alpine_default_url_and_arch() -> None:
    assert default_url("3.24.2", "x86_64") == (
        "https://dl-cdn.alpinelinux.org/alpine/v3.24/releases/x86_64/"
        "alpine-minirootfs-3.24.2-x86_64.tar.gz"
    )
    assert default_url().endswith(f"-{alpine.DEFAULT_VERSION}-{alpine_arch()}.tar.gz")
    assert alpine_arch("aarch64") == "aarch64"
    assert alpine_arch("armv7l") == "armv7"
    assert alpine_arch("i686") == "x86"
    with pytest.raises(RootfsError, match=r"'pdp11'.*--url.*--from"):
        alpine_arch("pdp11")


def test_published_checksum_formats(server: tuple[Path, str]) -> None:
    www, base = server
    digest = "c0ffee" + "0" * 58
    (www / "one.tar.gz.sha256").write_text(f"{digest.upper()}\n")
    assert alpine.fetch_published_sha256(f"{base}/one.tar.gz") == digest
    (www / "many.tar.gz.sha256").write_text(f"{'1' * 64}  other.tar.gz\n{digest} *many.tar.gz\n")
    assert alpine.fetch_published_sha256(f"{base}/many.tar.gz") == digest
    (www / "bad.tar.gz.sha256").write_text("<html>not a checksum</html>\n")
    with pytest.raises(RootfsError, match="is not a sha256 checksum"):
        alpine.fetch_published_sha256(f"{base}/bad.tar.gz")


def test_errors_are_vortex_errors() -> None:
    assert issubclass(RootfsError, VortexError)
    assert RootfsError.exit_status == 125


# -------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_plain_lines_per_tenth() -> None:
    out, clock = io.StringIO(), FakeClock()
    with Progress("get", total=1000, stream=out, clock=clock) as progress:
        for _ in range(100):
            clock.now += 0.01
            progress.update(10)
    lines = out.getvalue().splitlines()
    assert lines[0] == "get: 10% (100 B of 1000 B, 1000 B/s)"
    assert [line.split()[1] for line in lines[:-1]] == [f"{p}%" for p in range(10, 100, 10)]
    assert lines[-1] == "get: done, 1000 B in 1.0s (1000 B/s)"


def test_progress_big_jump_prints_one_line() -> None:
    out = io.StringIO()
    with Progress("get", total=100, stream=out) as progress:
        progress.update(95)
        progress.update(5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("get: 90% ")
    assert lines[1].startswith("get: done, 100 B")


def test_progress_unknown_total_plain() -> None:
    out, clock = io.StringIO(), FakeClock()
    with Progress("get", stream=out, clock=clock) as progress:
        progress.update(1024)  # too early for a line
        for _ in range(3):
            clock.now += 6
            progress.update(1024 * 1024)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("get: 1.0 MiB (")
    assert lines[-1].startswith("get: done, 3.0 MiB in 18.0s")


def test_progress_terminal_bar() -> None:
    out, clock = io.StringIO(), FakeClock()
    with Progress("Downloading x", total=2048, stream=out, tty=True, clock=clock) as progress:
        progress.update(1024)
        clock.now += 1
        progress.update(1024)
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 3  # two updates and the final frame
    bar = frames[0].split("[")[1].split("]")[0]
    assert len(bar) >= 10 and bar == "#" * (len(bar) // 2) + "-" * (len(bar) - len(bar) // 2)
    assert " 1.0 KiB/2.0 KiB  50% " in frames[0]
    # The bar keeps its length as the numbers change.
    assert frames[-1].startswith("Downloading x [" + "#" * len(bar) + "]    2.0 KiB/2.0 KiB 100% ")
    assert frames[-1].endswith(" 2.0 KiB/s\x1b[K\n")  # cleared to the end, then a newline

    out = io.StringIO()
    with Progress("y", stream=out, tty=True) as progress:
        progress.update(3 * 1024 * 1024)
    assert out.getvalue().startswith("\ry    3.0 MiB ")  # no bar without a total
    assert "#" not in out.getvalue() and " [" not in out.getvalue()


def test_progress_failure_and_disabled() -> None:
    out = io.StringIO()
    with pytest.raises(KeyError), Progress("get", total=100, stream=out) as progress:
        progress.update(5)
        raise KeyError("boom")
    assert out.getvalue() == "get: failed after 5 B\n"

    out = io.StringIO()
    with Progress("get", total=100, stream=out, tty=True, enabled=False) as progress:
        progress.update(100)
    assert out.getvalue() == ""
    assert progress.done == 100
    with pytest.raises(ValueError):
        progress.update(-1)


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"


# --------------------------------------------------------------------- contrib


def test_setup_rootfs_script_delegates(tmp_path: Path) -> None:
    fake = tmp_path / "fake-vortex"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    script = REPO / "contrib" / "setup_rootfs.sh"
    env = {**os.environ, "VORTEX": str(fake)}
    result = subprocess.run(
        ["sh", str(script), "my dir", "--url", "http://x/y"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert result.stdout.splitlines() == ["rootfs", "alpine", "my dir", "--url", "http://x/y"]
    result = subprocess.run(
        ["sh", str(script)], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.splitlines() == ["rootfs", "alpine", "rootfs"]

    env["VORTEX"] = str(tmp_path / "nothing-here")
    result = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 127
    assert "not found" in result.stderr
