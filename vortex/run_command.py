"""``vortex run [options] ROOTFS CMD [ARG...]``: one container, in the foreground.

Flags follow ``docker run``/``podman run`` where they overlap.  The command's
exit status becomes ours (128+N when it was killed by signal N); SIGINT,
SIGTERM, SIGHUP and SIGQUIT sent to vortex are forwarded to the container, and
SIGWINCH resizes its terminal.
"""

from __future__ import annotations

import argparse
import os
import sys

from vortex.errors import EXIT_RUNTIME_ERROR

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from typing import Any

    from vortex.container import Container
    from vortex.result import RunResult
    from vortex.runtime import Runtime
    from vortex.spec import ContainerSpec


def configure_parser(run: argparse.ArgumentParser) -> None:

    run.add_argument("--name", help="a name for the container (default: its short id)")
    run.add_argument("--hostname", help="hostname inside (default: the short id)")
    run.add_argument(
        "-m", "--memory", default=None, help="memory limit, e.g. 64M, or none (default 100M)"
    )
    run.add_argument("--pids", help="maximum number of processes, or none")
    run.add_argument("--cpus", help="CPU bandwidth in CPUs, e.g. 0.5")
    run.add_argument(
        "-e", "--env", action="append", default=[], metavar="K=V", help="set a variable"
    )
    run.add_argument("-w", "--workdir", default="/", help="working directory inside")
    run.add_argument("-u", "--user", help="UID[:GID] to run the command as")
    tty = run.add_mutually_exclusive_group()
    tty.add_argument("-t", "--tty", action="store_true", default=None, help="allocate a terminal")
    tty.add_argument("--no-tty", dest="tty", action="store_false", help="never allocate a terminal")
    run.add_argument(
        "--rm",
        action="store_true",
        help="accepted for docker compatibility: nothing is ever left behind",
    )
    run.add_argument(
        "--no-plugin", action="append", default=[], metavar="NAME", help="disable a plugin"
    )
    from vortex.security.cli import add_arguments as add_security_arguments

    add_security_arguments(run)
    from vortex.cgroups.options import add_arguments as add_cgroup_arguments

    add_cgroup_arguments(run)
    run.add_argument(
        "--bundle", metavar="DIR", help="run the OCI bundle in DIR (its config.json; docs/oci.md)"
    )
    run.add_argument("rootfs", nargs="?", help="root filesystem directory")
    run.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")


def spec_from_args(args: argparse.Namespace) -> ContainerSpec:
    from vortex.errors import SpecError
    from vortex.security.cli import options_from_args as security_options_from_args
    from vortex.spec import (
        DEFAULT_MEMORY_LIMIT,
        ContainerSpec,
        Resources,
        User,
        parse_cpus,
        parse_env,
        parse_memory,
        parse_pids,
        parse_user,
    )

    if not args.command:
        raise SpecError("no command given: write 'vortex run ROOTFS COMMAND [ARG...]'")
    from vortex.cgroups.options import resources_from_args

    cgroup_resources = resources_from_args(args)
    resources = Resources(
        memory=parse_memory(args.memory) if args.memory is not None else DEFAULT_MEMORY_LIMIT,
        pids=parse_pids(args.pids) if args.pids is not None else None,
        cpus=parse_cpus(args.cpus) if args.cpus is not None else None,
        **cgroup_resources,
    )
    explicit = _explicit_limits(args, cgroup_resources)
    if "limits" in args.no_plugin and explicit:
        raise SpecError(
            "--memory/--pids/--cpus and the other cgroup limits need the 'limits' plugin, "
            "which --no-plugin disabled"
        )
    tty = args.tty if args.tty is not None else (os.isatty(0) and os.isatty(1))
    return ContainerSpec(
        rootfs=args.rootfs,
        command=list(args.command),
        env=parse_env(args.env),
        workdir=args.workdir,
        user=parse_user(args.user) if args.user else User(),
        hostname=args.hostname,
        name=args.name,
        resources=resources,
        tty=tty,
        security=security_options_from_args(args),
    )


def _explicit_limits(args: argparse.Namespace, cgroup_resources: dict[str, Any]) -> bool:
    return (
        args.memory is not None
        or args.pids is not None
        or args.cpus is not None
        or bool(cgroup_resources)
    )


def _rootless_resources(args: argparse.Namespace, spec: ContainerSpec) -> ContainerSpec:
    """Without a delegated cgroup: explicit limits are an error, the default memory
    limit is dropped with one warning line (docs/security.md, "Rootless")."""
    from vortex import records, rootless
    from vortex.cgroups.options import resources_from_args
    from vortex.errors import PermissionDeniedError

    if rootless.delegated_cgroup_parent() is not None:
        return spec  # the Runtime uses the delegated cgroup and applies the limits there
    if _explicit_limits(args, resources_from_args(args)):
        raise PermissionDeniedError(rootless.LIMITS_UNAVAILABLE.format(uid=os.geteuid()))
    if "limits" not in args.no_plugin:
        print(rootless.NO_CGROUP_WARNING, file=sys.stderr)
    return records.replace(spec, resources=records.replace(spec.resources, memory=None))


def main(args: argparse.Namespace) -> int:
    if args.bundle is not None:
        from vortex.oci.cli import spec_from_args as bundle_spec_from_args

        spec = bundle_spec_from_args(args)
    else:
        spec = spec_from_args(args)
    if os.geteuid() != 0:
        spec = _rootless_resources(args, spec)
    spec.validate()  # before any process or cgroup exists
    # One container, no event loop: vortex/direct.py (the daemon uses the Runtime).
    from vortex import direct

    options = {} if args.cgroup_parent is None else {"cgroup_parent": args.cgroup_parent}
    status, message = foreground_outcome(
        direct.run(spec, disabled_plugins=args.no_plugin, **options)
    )
    if message:
        print(f"vortex: {message}", file=sys.stderr)
    return status


async def run_in_foreground(
    runtime: Runtime, spec: ContainerSpec, signals: AsyncIterator[int]
) -> tuple[int, str | None]:
    """Start ``spec``, forward ``signals`` to it until it exits; return the exit
    status ``vortex run`` reports and the line it prints (or None).

    Shared by ``vortex run`` (its own signals) and ``vortex daemon`` (signals a
    client relays over its connection).
    """
    import anyio

    container = await runtime.start(spec)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_forward_signals, signals, container)
        result = await container.wait()
        tg.cancel_scope.cancel()
    return foreground_outcome(result)


def foreground_outcome(result: RunResult) -> tuple[int, str | None]:
    """The exit status ``vortex run`` reports for ``result``, and the line it prints
    (or None): the command's own status, unless the container was OOM-killed."""
    message = f"container {result.name} {result.describe()}" if result.oom_killed else None
    return (result.status if result.error is None else EXIT_RUNTIME_ERROR), message


async def _forward_signals(signals: AsyncIterator[int], container: Container) -> None:
    import signal

    async for signum in signals:
        if signum == signal.SIGWINCH:
            container.fit_to_caller_terminal()
        else:
            container.kill(signum)
