"""The client commands of the supervisor: ps, stop, start, restart, logs, events, status.

Each talks to the control socket (``--socket``, or ``$VORTEX_SUPERVISE_SOCKET``,
default /run/vortex/supervise/control.sock); when nothing answers they fail
with one line and exit status 125.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from vortex.supervise.control import call, default_socket, request


def add_socket(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket", default=None, help="the supervisor's control socket (default: %(default)s)"
    )


def _socket(args: argparse.Namespace) -> str:
    return str(args.socket or default_socket())


# ----------------------------------------------------------------------- ps


def ps_configure(parser: argparse.ArgumentParser) -> None:
    add_socket(parser)
    parser.add_argument("--format", choices=["table", "json"], default="table")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value = value / 1024  # type: ignore[assignment]
    return "-"  # pragma: no cover


def _exit(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    if last.get("error"):
        return f"error({last.get('status')})"
    if last.get("signal"):
        return str(last["signal"])
    return str(last.get("status"))


def ps_main(args: argparse.Namespace) -> int:
    reply = call(_socket(args), {"cmd": "ps"}, timeout=30)
    containers: list[dict[str, Any]] = reply["containers"]
    if args.format == "json":
        print(json.dumps(containers, indent=2))
        return 0
    rows = [("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "EXIT", "MEMORY", "HEALTH")]
    for c in containers:
        rows.append(
            (
                c["name"],
                c["state"],
                str(c["pid"]) if c["pid"] else "-",
                _duration(c["uptime"]),
                str(c["restarts"]),
                _exit(c["last_exit"]),
                _size(c["memory"]),
                c.get("health") or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


# ----------------------------------------------------------------------- stop/start/restart


def name_configure(parser: argparse.ArgumentParser) -> None:
    add_socket(parser)
    parser.add_argument("name", help="the container's name in the configuration")


def _control(args: argparse.Namespace, command: str) -> int:
    reply = call(_socket(args), {"cmd": command, "name": args.name})
    container = reply["container"]
    print(f"{container['name']}: {container['state']}")
    return 0


def stop_main(args: argparse.Namespace) -> int:
    return _control(args, "stop")


def start_main(args: argparse.Namespace) -> int:
    return _control(args, "start")


def restart_main(args: argparse.Namespace) -> int:
    return _control(args, "restart")


# ----------------------------------------------------------------------- logs


def logs_configure(parser: argparse.ArgumentParser) -> None:
    name_configure(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.add_argument("-n", "--lines", type=int, default=None, help="only the last N lines")
    parser.add_argument(
        "--raw", action="store_true", help="print the CRI lines (timestamp, stream, tag)"
    )


def logs_main(args: argparse.Namespace) -> int:
    from vortex.supervise.logs import parse_cri_line

    message = {"cmd": "logs", "name": args.name, "lines": args.lines, "follow": args.follow}
    replies = request(_socket(args), message)
    next(replies)
    for reply in replies:
        line: str = reply["line"]
        if args.raw:
            sys.stdout.write(line)
        else:
            parsed = parse_cri_line(line)
            if parsed is None:
                continue
            _ts, stream, tag, text = parsed
            out = sys.stdout if stream == "stdout" else sys.stderr
            out.write(text + ("\n" if tag == "F" else ""))
            out.flush()
        sys.stdout.flush()
    return 0


# ----------------------------------------------------------------------- events


def events_configure(parser: argparse.ArgumentParser) -> None:
    add_socket(parser)


def events_main(args: argparse.Namespace) -> int:
    replies = request(_socket(args), {"cmd": "events"})
    next(replies)
    for event in replies:
        print(json.dumps(event), flush=True)
    return 0


# ----------------------------------------------------------------------- status


def status_configure(parser: argparse.ArgumentParser) -> None:
    add_socket(parser)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--metrics", action="store_true", help="include per-container metrics")


def status_main(args: argparse.Namespace) -> int:
    status = call(_socket(args), {"cmd": "status"}, timeout=30)
    status.pop("ok", None)
    if args.metrics:
        status["metrics"] = call(_socket(args), {"cmd": "metrics"}, timeout=30)["containers"]
    if args.format == "json":
        print(json.dumps(status, indent=2))
        return 0
    states = ", ".join(f"{n} {s}" for s, n in sorted(status["states"].items())) or "none"
    print(f"supervisor pid {status['pid']}, up {_duration(status['uptime'])}")
    print(f"config:     {status['config']}")
    print(f"socket:     {status['socket']}")
    print(f"logs:       {status['log_dir']}")
    print(f"containers: {status['containers']} ({states})")
    print(f"reloads:    {status['reloads']}")
    print(f"started:    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status['started_at']))}")
    for name, m in status.get("metrics", {}).items():
        print(
            f"  {name}: memory {_size(m['memory_current'])}, cpu {m['cpu_seconds']}s, "
            f"restarts {m['restarts']}"
        )
    return 0
