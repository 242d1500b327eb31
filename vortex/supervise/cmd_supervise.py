"""``vortex supervise CONFIG``: run the containers a TOML file declares, until SIGTERM."""

from __future__ import annotations

import argparse
import os


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the TOML file (see docs/supervise.md)")
    parser.add_argument(
        "--state-dir",
        default="/run/vortex/supervise",
        help="control socket, logs and state (default /run/vortex/supervise)",
    )
    parser.add_argument("--socket", help="control socket path (default STATE_DIR/control.sock)")
    parser.add_argument(
        "--cgroup-parent",
        default=None,
        help="cgroup under which container cgroups are created (default: vortex)",
    )
    parser.add_argument(
        "--runtime-state-dir",
        default=None,
        help="the Runtime's state files, swept after a crash (default: /run/vortex)",
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the file, print the start order, exit"
    )


def main(args: argparse.Namespace) -> int:
    from vortex.supervise.config import load_config

    config = load_config(args.config)  # every mistake reported before anything starts
    if args.check:
        print("configuration OK; start order: " + ", ".join(config.start_order()))
        return 0
    if os.geteuid() != 0:
        from vortex.errors import PermissionDeniedError

        raise PermissionDeniedError("vortex supervise needs root: run it with sudo")
    import anyio

    from vortex.supervise.notify import sd_notify
    from vortex.supervise.supervisor import Supervisor

    supervisor = Supervisor(
        config,
        state_dir=args.state_dir,
        socket_path=args.socket,
        cgroup_parent=args.cgroup_parent,
        runtime_state_dir=args.runtime_state_dir,
    )

    def ready() -> None:
        sd_notify("READY=1")

    status = anyio.run(lambda: supervisor.run(ready=ready))
    sd_notify("STOPPING=1")
    return status
