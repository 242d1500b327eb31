"""``vortex daemon``: serve ``vortex run`` from one warm Runtime until SIGTERM."""

from __future__ import annotations

import argparse
import os


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from vortex.daemon.protocol import DEFAULT_SOCKET, SOCKET_ENV

    parser.add_argument(
        "--socket",
        default=None,
        help=f"where to listen (default ${SOCKET_ENV}, else {DEFAULT_SOCKET})",
    )


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        from vortex.errors import PermissionDeniedError

        raise PermissionDeniedError("vortex daemon needs root: run it with sudo")
    from vortex.daemon.protocol import DEFAULT_SOCKET, socket_path

    path = args.socket or socket_path() or DEFAULT_SOCKET
    import anyio

    return anyio.run(_serve, path)


async def _serve(path: str) -> int:
    import contextlib
    import signal

    import anyio

    from vortex import log
    from vortex.daemon.server import RunDaemon, activated_listener, listen
    from vortex.runtime import Runtime
    from vortex.supervise.notify import sd_notify

    listener = activated_listener()
    owned = listener is None  # a socket systemd passed stays systemd's: never unlink it
    if listener is None:
        listener = listen(path)  # refused (another daemon, not a socket) before anything starts
    else:
        path = str(listener.getsockname()) or path
    try:
        # A daemon mostly waits between clients, so its spares take their copy-on-write
        # faults in that time (Runtime's default spare_prefault), not in the next
        # client's start.  It lives long: a fresh helper's ~40 ms at start buy ~0.7 ms
        # per served run.
        async with Runtime(fresh_helper=True) as runtime:
            daemon = RunDaemon(runtime, listener)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(daemon.serve)
                    log.emit("info", "daemon.listening", socket=path, pid=os.getpid())
                    sd_notify("READY=1")
                    async for signum in signals:
                        log.emit("info", "daemon.stopping", signal=signum, served=daemon.served)
                        sd_notify("STOPPING=1")
                        tg.cancel_scope.cancel()
                        break
    finally:
        listener.close()
        if owned:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    # Leaving the Runtime killed what clients still ran; they got no exit status
    # and report that the daemon went away.
    return 0
