"""The dispatcher of the command line (vortex/cli.py): what it builds for which words.

For a command line naming a subcommand, the CLI builds only that subcommand's
parser (a cold ``vortex run`` pays for every parser argparse builds).  The
listing of subcommands must still be complete wherever argparse shows it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from vortex.cli import COMMANDS, build_parser, lists_commands

VORTEX = [sys.executable, "-m", "vortex"]


def vortex(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VORTEX, *words], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ([], True),
        (["--help"], True),
        (["--help", "run"], True),
        (["--he", "run", "/r", "/bin/true"], True),
        (["-h", "run"], True),
        (["runn"], True),
        (["run", "--help"], False),
        (["run", "/r", "/bin/sh", "-h"], False),
        (["--log-level", "debug", "run", "/r", "/bin/true"], False),
        (["--log-format", "json", "ps"], False),
    ],
)
def test_lists_commands_only_where_argparse_may_show_the_list(
    words: list[str], expected: bool
) -> None:
    assert lists_commands(words) is expected


@pytest.mark.parametrize("words", [["--help"], ["--help", "run"], ["--he", "run"], ["-h", "ps"]])
def test_the_top_level_help_lists_every_command(words: list[str]) -> None:
    done = vortex(*words)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    section = lines[lines.index("  COMMAND") + 1 : lines.index("options:")]
    listed = [line.split()[0] for line in section if line.startswith("    ") and line.strip()]
    assert listed == list(COMMANDS)


def test_an_unknown_command_lists_every_choice() -> None:
    done = vortex("runn")
    assert done.returncode == 2
    assert f"invalid choice: 'runn' (choose from {', '.join(map(repr, COMMANDS))})" in done.stderr


def test_a_subcommand_alone_is_parsed_as_with_the_whole_parser() -> None:
    words = ["--log-level", "info", "run", "-m", "64M", "--name", "x", "/r", "/bin/sh", "-c", "1"]
    alone = build_parser("run", list_all=False)
    whole = build_parser()
    assert alone.parse_args(words) == whole.parse_args(words)
    choices = alone._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(choices) == ["run"]


def test_subcommand_help_is_the_subcommand_s() -> None:
    done = vortex("run", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: vortex run ")
