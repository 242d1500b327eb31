"""``vortex run`` flags of the security options (docker/podman spelling)."""

from __future__ import annotations

import argparse

from vortex.errors import SpecError
from vortex.security.options import SecurityOptions, parse_bool, parse_ulimit


def add_arguments(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("security (defaults are secure; see docs/security.md)")
    group.add_argument(
        "--privileged",
        action="store_true",
        help="turn every security default off: all capabilities, no seccomp, no masked paths",
    )
    group.add_argument(
        "--cap-add", action="append", default=[], metavar="CAP", help="add a capability (or ALL)"
    )
    group.add_argument(
        "--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability (or ALL)"
    )
    group.add_argument(
        "--seccomp",
        metavar="PROFILE",
        help="seccomp profile: a docker-format JSON file, 'default' or 'unconfined'",
    )
    group.add_argument(
        "--security-opt",
        action="append",
        default=[],
        metavar="OPT",
        help="seccomp=PROFILE, no-new-privileges[=true|false], unmask=PATH[:PATH...]|ALL",
    )
    group.add_argument(
        "--read-only", action="store_true", help="mount the root filesystem read-only"
    )
    group.add_argument(
        "--read-only-tmpfs",
        default="true",
        metavar="BOOL",
        help="with --read-only, writable tmpfs on /tmp, /run, /var/tmp (default true)",
    )
    group.add_argument(
        "--userns",
        metavar="auto|HOSTID[:COUNT]",
        help="run in a user namespace: container root is an unprivileged host id",
    )
    group.add_argument(
        "--ulimit",
        action="append",
        default=[],
        metavar="NAME=SOFT[:HARD]",
        help="set an rlimit, e.g. nofile=1024:4096 (default nofile=1024:524288)",
    )


def options_from_args(args: argparse.Namespace) -> SecurityOptions:
    seccomp: str = args.seccomp or "default"
    no_new_privileges = True
    unmask: list[str] = []
    for opt in args.security_opt:
        # docker accepts both "seccomp=FILE" and the older "seccomp:FILE".
        separator = "=" if "=" in opt else ":"
        key, sep, value = opt.partition(separator)
        key = key.strip().lower()
        if key == "seccomp" and sep:
            if args.seccomp and args.seccomp != value:
                raise SpecError("--seccomp and --security-opt seccomp= disagree: give one")
            seccomp = value
        elif key == "no-new-privileges":
            no_new_privileges = parse_bool(value, option="--security-opt no-new-privileges")
        elif key == "unmask" and sep:
            unmask += [p for p in value.split(":") if p]
        else:
            raise SpecError(
                f"--security-opt {opt!r} is not supported: use seccomp=PROFILE, "
                "no-new-privileges[=true|false] or unmask=PATH|ALL"
            )
    ulimits = dict(parse_ulimit(text) for text in args.ulimit)
    explicit = (
        args.privileged
        or args.cap_add
        or args.cap_drop
        or args.seccomp
        or args.security_opt
        or args.read_only
        or args.ulimit
        or args.userns
    )
    if explicit and "security" in getattr(args, "no_plugin", ()):
        raise SpecError(
            "security flags need the 'security' plugin, which --no-plugin disabled "
            "(without it containers run unconfined)"
        )
    return SecurityOptions(
        privileged=args.privileged,
        cap_add=tuple(args.cap_add),
        cap_drop=tuple(args.cap_drop),
        no_new_privileges=no_new_privileges,
        seccomp=seccomp,
        unmask=tuple(unmask),
        read_only=args.read_only,
        read_only_tmpfs=parse_bool(args.read_only_tmpfs, option="--read-only-tmpfs"),
        ulimits=ulimits,
        userns=args.userns,
    )
