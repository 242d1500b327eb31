"""Drive a real ``vortex supervise`` subprocess through its socket, CLI and signals."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from conftest import VORTEX, run_vortex

from vortex.supervise.control import call


def busybox_config(rootfs: Path, body: str) -> str:
    return f'[defaults]\nrootfs = "{rootfs}"\n\n{body}'


# A service that exits 0 promptly on SIGTERM (sh as PID 1 ignores it without a trap).
TRAPPING = '["/bin/sh", "-c", "trap \'exit 0\' TERM; echo up; while :; do sleep 1 & wait $!; done"]'


class Supervise:
    """One supervisor process with its own short state directory."""

    def __init__(self, config: str, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vsv", dir="/tmp"))
        self.config = self.dir / "vortex.toml"
        self.config.write_text(config)
        self.socket = str(self.dir / "state" / "control.sock")
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        # Our own cgroup parent: the leak check below is exact even while other
        # work on this machine creates and removes cgroups under "vortex".
        self.cgroup_parent = f"vortex-test-{self.dir.name}"

    def start(self, timeout: float = 10) -> Supervise:
        with open(self.dir / "out.txt", "ab") as out, open(self.dir / "err.txt", "ab") as err:
            self.proc = subprocess.Popen(
                [
                    *VORTEX,
                    "supervise",
                    "--state-dir",
                    str(self.dir / "state"),
                    "--cgroup-parent",
                    self.cgroup_parent,
                    # Runtime state files of our own: a Runtime of other work on this
                    # machine would sweep our records against its own cgroup parent.
                    "--runtime-state-dir",
                    str(self.dir / "runtime"),
                    str(self.config),
                ],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr()
            with contextlib.suppress(Exception):
                self.ctl({"cmd": "status"})
                return self
            time.sleep(0.05)
        raise AssertionError(f"supervisor did not come up: {self.stderr()}")

    def stderr(self) -> str:
        return (self.dir / "err.txt").read_text(errors="replace")

    def stdout(self) -> str:
        return (self.dir / "out.txt").read_text(errors="replace")

    def ctl(self, message: dict[str, Any]) -> dict[str, Any]:
        return call(self.socket, message, timeout=30)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return run_vortex(*args[:1], "--socket", self.socket, *args[1:], timeout=timeout)

    def ps(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.ctl({"cmd": "ps"})["containers"]}

    def wait_until(
        self, predicate: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 8
    ) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            containers = self.ps()
            if predicate(containers):
                return containers
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; ps says {containers}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        leaked = self.cgroups()
        for parent in self.parents():
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    if child.is_dir():
                        child.rmdir()
                parent.rmdir()
        assert not leaked, f"cgroups left behind by the supervisor: {leaked}"

    def parents(self) -> list[Path]:
        base = Path("/sys/fs/cgroup")
        candidates = [base / self.cgroup_parent]
        candidates += [p / self.cgroup_parent for p in base.iterdir() if p.is_dir()]
        return [p for p in candidates if p.is_dir()]

    def cgroups(self) -> list[str]:
        """Container cgroups under our parent, in any hierarchy."""
        return sorted(str(c) for p in self.parents() for c in p.iterdir() if c.is_dir())


@contextlib.contextmanager
def supervise(config: str, env: dict[str, str] | None = None) -> Iterator[Supervise]:
    sup = Supervise(config, env)
    try:
        yield sup.start()
    finally:
        sup.close()


class Events:
    """A ``vortex events`` subscription read straight off the socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.sendall(b'{"cmd": "events"}\n')
        self.file = self.sock.makefile("rb")
        assert json.loads(self.file.readline())["ok"]
        self.seen: list[dict[str, Any]] = []

    def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 8
    ) -> list[dict[str, Any]]:
        """Read events until one matches; returns every event seen so far."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event; seen {self.seen}")
            self.sock.settimeout(remaining)
            try:
                line = self.file.readline()
            except TimeoutError:
                raise AssertionError(f"no matching event in time; seen {self.seen}") from None
            if not line:
                raise AssertionError(f"event stream ended; seen {self.seen}")
            event = json.loads(line)
            self.seen.append(event)
            if predicate(event):
                return self.seen

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Events:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
