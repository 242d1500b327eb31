"""The ``vortex rootfs`` command: ``vortex rootfs busybox DIR`` and ``vortex rootfs alpine DIR``.

The top-level CLI creates the ``rootfs`` parser, hands it to
:func:`configure_parser`, and calls :func:`main` with the parsed namespace; it
turns the :class:`vortex.errors.VortexError` that :func:`main` raises into a
message and exit status 125.  The builders are imported in :func:`main` only,
so that merely building the parser stays cheap.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vortex.errors import SpecError
from vortex.rootfs import DEFAULT_ALPINE_VERSION as DEFAULT_VERSION

__all__ = ["configure_parser", "main"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``busybox`` and ``alpine`` sub-subcommands to the ``rootfs`` parser."""
    parser.description = (
        "Make a root filesystem for containers: from the host's static busybox "
        "(no network), or from Alpine's minirootfs."
    )
    commands = parser.add_subparsers(dest="rootfs_kind", metavar="KIND", required=True)

    busybox = commands.add_parser(
        "busybox",
        help="build a minimal rootfs from the host's static busybox (no network)",
        description=(
            "Build a minimal root filesystem in DIR from a statically linked busybox: "
            "FHS directories, /bin/busybox, a symlink per applet and basic /etc files. "
            "DIR may exist if it is empty."
        ),
    )
    busybox.add_argument("dir", metavar="DIR", type=Path, help="directory to build in")
    busybox.add_argument(
        "--busybox",
        metavar="PATH",
        type=Path,
        default=None,
        help="busybox binary to use (default: /bin/busybox, from Debian's busybox-static)",
    )
    busybox.add_argument(
        "--force",
        action="store_true",
        help="build over a non-empty DIR (replaces the files it writes, keeps the rest)",
    )

    alpine = commands.add_parser(
        "alpine",
        help="download, verify and extract the Alpine minirootfs",
        description=(
            f"Download the Alpine {DEFAULT_VERSION} minirootfs for this machine's "
            f"architecture (or --url), verify its sha256 and extract it safely into DIR, "
            f"which must be new or empty. On failure nothing is left behind."
        ),
    )
    alpine.add_argument("dir", metavar="DIR", type=Path, help="directory to extract into")
    source = alpine.add_mutually_exclusive_group()
    source.add_argument(
        "--url",
        default=None,
        help=f"tarball to download (default: Alpine {DEFAULT_VERSION} on dl-cdn.alpinelinux.org)",
    )
    source.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        type=Path,
        default=None,
        help="use a local tarball instead of downloading (verified only with --sha256)",
    )
    alpine.add_argument(
        "--sha256",
        metavar="HEX",
        default=None,
        help="expected sha256 of the tarball (default for downloads: the <url>.sha256 file)",
    )
    alpine.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not report the download's progress on stderr",
    )


def main(args: argparse.Namespace) -> int:
    """Run the ``rootfs`` command parsed by :func:`configure_parser`; 0 on success."""
    kind: str = args.rootfs_kind
    if kind == "busybox":
        from vortex.rootfs.busybox import build_busybox_rootfs

        build_busybox_rootfs(args.dir, busybox=args.busybox, force=args.force)
        print(f"busybox root filesystem ready in {args.dir}")
        return 0
    if kind == "alpine":
        from vortex.rootfs.alpine import install_alpine

        install_alpine(
            args.dir,
            url=args.url,
            sha256=args.sha256,
            from_file=args.from_file,
            progress=args.progress,
        )
        print(f"Alpine root filesystem ready in {args.dir}")
        return 0
    # argparse only produces the kinds above; this is for hand-made namespaces.
    raise SpecError(f"unknown rootfs kind {kind!r}; use `vortex rootfs busybox` or `... alpine`")
