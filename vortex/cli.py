"""The ``vortex`` command line: a dispatcher over subcommand modules.

Every subcommand lives in its own module with two functions,
``configure_parser(parser)`` and ``main(args) -> int``, and is listed in
:data:`COMMANDS`.  Those modules import only argparse-level things at the top:
a cold ``vortex run`` pays for every import, so heavy modules are imported
inside ``main``.  Errors of the project's hierarchy become one line on stderr
and the error's exit status here, at the edge.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vortex.errors import VortexError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("vortex.run_command", "run a command in a new container"),
    "rootfs": ("vortex.rootfs.cli", "build a root filesystem"),
}
"""Subcommand name → (module, one-line help)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vortex", description="Run Linux containers (namespaces, cgroups, pivot_root)."
    )
    parser.add_argument(
        "--log-level", default="warning", help="debug, info, warning (default), error"
    )
    parser.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "console", "json"],
        help="console on a terminal, JSON lines otherwise (auto)",
    )
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure_parser(command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_cli(argv))


def run_cli(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from vortex.log import configure_logging

        configure_logging(args.log_level, args.log_format)
        module = importlib.import_module(COMMANDS[args.subcommand][0])
        status: int = module.main(args)
        return status
    except VortexError as exc:
        print(f"vortex: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    main()
