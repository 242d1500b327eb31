"""The ``vortex`` command line: a dispatcher over subcommand modules.

Every subcommand lives in its own module with two functions,
``configure_parser(parser)`` and ``main(args) -> int``, and is listed in
:data:`COMMANDS`.  Those modules import only argparse-level things at the top:
a cold ``vortex run`` pays for every import, so heavy modules are imported
inside ``main``.  Errors of the project's hierarchy become one line on stderr
and the error's exit status here, at the edge.
"""

from __future__ import annotations

import sys

from vortex import _import_module
from vortex.standard_fds import open_standard_fds

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("vortex.run_command", "run a command in a new container"),
    "rootfs": ("vortex.rootfs.cli", "build a root filesystem"),
    "supervise": ("vortex.supervise.cmd_supervise", "supervise the containers of a TOML file"),
    "ps": ("vortex.supervise.cmd_ps", "list the supervisor's containers"),
    "stop": ("vortex.supervise.cmd_stop", "stop a supervised container"),
    "start": ("vortex.supervise.cmd_start", "start a supervised container"),
    "restart": ("vortex.supervise.cmd_restart", "restart a supervised container"),
    "logs": ("vortex.supervise.cmd_logs", "print a supervised container's log"),
    "events": ("vortex.supervise.cmd_events", "stream the supervisor's events (JSON lines)"),
    "status": ("vortex.supervise.cmd_status", "show the supervisor's status"),
    "daemon": ("vortex.daemon.cmd_daemon", "serve 'vortex run' from one warm process"),
}
"""Subcommand name → (module, one-line help)."""


GLOBAL_OPTIONS_WITH_VALUE = frozenset({"--log-level", "--log-format"})


def requested_subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, or None (``vortex --help``, a typo, nothing).

    Skips the global options (and the values of those that take one, also when
    abbreviated as argparse allows); the first other word is the subcommand.
    """
    words = iter(argv)
    for word in words:
        if word.startswith("--") and any(o.startswith(word) for o in GLOBAL_OPTIONS_WITH_VALUE):
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(only: str | None = None, *, list_all: bool = True) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, just that subcommand's arguments are configured.

    Configuring a subcommand imports its module (and its options' modules):
    ``vortex run`` must not pay for the supervisor's.  The other subcommands
    are still listed, with their one-line help, so ``vortex --help`` and
    argparse's "invalid choice" message are the same either way.  Without
    ``list_all`` they are left out as well (~1-3 ms of a cold ``vortex run``:
    argparse builds a whole parser for each): only for a command line that
    names ``only`` and does not ask for the top-level help (:func:`lists_commands`).
    """
    import argparse
    import functools

    # One width for every formatter argparse builds (one per option it adds).
    formatter = functools.partial(argparse.HelpFormatter, width=help_width())
    parser = argparse.ArgumentParser(
        prog="vortex",
        description="Run Linux containers (namespaces, cgroups, pivot_root).",
        formatter_class=formatter,
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
        if not (list_all or name == only):
            continue
        command = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=formatter
        )
        if only is None or only == name:
            _import_module(module).configure_parser(command)
    return parser


def lists_commands(argv: Sequence[str]) -> bool:
    """Whether parsing ``argv`` may show the list of subcommands: it names none
    (an error or the top-level help follows), or asks for the top-level help
    before the one it names."""
    command = requested_subcommand(argv)
    if command is None:
        return True
    before = argv[: list(argv).index(command)]
    return any(w.startswith("-h") or (len(w) > 2 and "--help".startswith(w)) for w in before)


def help_width() -> int:
    """The width for argparse's help: the terminal's, less 2, found without ``shutil``.

    Given no width, argparse's formatter imports shutil to ask for the terminal's;
    shutil imports zlib, bz2 and lzma: ~2 ms of every cold start. The width is
    found the way shutil does it.
    """
    import os

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


def main(argv: Sequence[str] | None = None) -> None:
    status = run_cli(argv, exit_when_served=True)
    # The process ends now.  The interpreter's finalization would run the cyclic
    # garbage collector over every object left, the imported modules' above all
    # (~4 ms of a ~70 ms in-process `vortex run` on the benchmark machine), to
    # free memory the process is about to give back anyway.  Frozen, those
    # objects are out of its sight; atexit handlers, threads and the flushing of
    # files run as before.  (Python never promised __del__ for objects alive at
    # exit, which is all a cycle left here would miss.)
    import gc

    gc.freeze()
    sys.exit(status)


def run_cli(argv: Sequence[str] | None = None, *, exit_when_served: bool = False) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return its exit status.

    With ``exit_when_served``, a ``vortex run`` that a daemon served ends the
    process at once instead (see :func:`_exit_at_once`).
    """
    open_standard_fds()
    words = sys.argv[1:] if argv is None else list(argv)
    stop_warmup = None
    command = requested_subcommand(words)
    if command == "run":
        # A listening ``vortex daemon`` runs it warm (vortex/daemon/__init__.py).
        from vortex.daemon.client import run_through_daemon

        served = run_through_daemon(words)
        if served is not None:
            if exit_when_served:
                _exit_at_once(served)
            return served
        # This process imports, starts one container and waits for it: the cyclic
        # garbage collector would only scan the freshly imported modules (~5% of a
        # cold start); what little cyclic garbage there is goes with the process.
        import gc

        gc.disable()
        # We will move an init into a v1 cgroup: have the kernel's wait for that
        # pass while we import (vortex/cgroups/warmup.py).
        from vortex.cgroups import warmup

        warmup.start()
        stop_warmup = warmup.stop
    # Not at the top: a run the daemon serves does without it (~0.2 ms).
    from vortex.errors import VortexError

    try:
        parser = build_parser(command or "", list_all=lists_commands(words))
        args = parser.parse_args(words)
        from vortex.log import configure_logging

        configure_logging(args.log_level, args.log_format)
        module = _import_module(COMMANDS[args.subcommand][0])
        status: int = module.main(args)
        return status
    except VortexError as exc:
        print(f"vortex: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    finally:
        if stop_warmup is not None:
            stop_warmup()  # normally already stopped before the clone


def _exit_at_once(status: int) -> None:
    """Flush what was printed and end the process without the interpreter's
    finalization: 1.5-1.9 ms of a ~17 ms ``vortex run`` served by the daemon.

    Only for a served run: the process then holds its standard streams and
    nothing else (no plugin was loaded, no thread started, no file written), so
    finalization would only tear down the freshly imported modules.
    """
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream: what was printed is lost either way
    os._exit(status)


if __name__ == "__main__":
    main()
