"""An interactive shell through a pseudo-terminal, driven like a user would."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import anyio
import pytest

from tests.conftest import VORTEX
from vortex import ContainerSpec, Runtime, Stdio


class Terminal:
    """The user's side of a pty in which ``vortex run`` runs."""

    def __init__(self, argv: list[str], *, new_session: bool = True) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        self.initial_attributes = termios.tcgetattr(slave)
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=new_session
        )
        os.close(slave)
        self.seen = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, needle: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"never saw {needle!r}; got {self.seen[-500:]!r}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {needle!r}: {self.seen!r}")
                self.seen += chunk
        before, _, self.seen = self.seen.partition(needle)
        return before

    def close_keeping_master(self) -> int:
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> int:
        try:
            return self.close_keeping_master()
        finally:
            os.close(self.master)


def test_interactive_shell(rootfs: Path) -> None:
    term = Terminal([*VORTEX, "run", str(rootfs), "/bin/sh"])
    try:
        term.expect(b"# ")
        term.send(b"echo $((6*7))\r")
        term.expect(b"42")
        term.expect(b"# ")
        # It is the container's own terminal, with the caller's window size.
        term.send(b"tty; stty size\r")
        term.expect(b"/dev/pts/0")
        term.expect(b"40 100")
        term.expect(b"# ")
        # Line editing: two backspaces.
        term.send(b"echo abc\x7f\x7fxy\r")
        term.expect(b"axy")
        term.expect(b"# ")
        # Ctrl-C interrupts the command inside the container, not vortex.
        term.send(b"sleep 100\r")
        time.sleep(0.5)
        term.send(b"\x03")
        term.expect(b"# ", timeout=5)
        assert term.proc.poll() is None
        term.send(b"echo still here\r")
        term.expect(b"still here")
        term.send(b"exit 5\r")
    finally:
        status = term.close()
    assert status == 5


def test_terminal_is_restored_after_exit(rootfs: Path) -> None:
    term = Terminal([*VORTEX, "run", str(rootfs), "/bin/sh", "-c", "echo done"])
    term.expect(b"done")
    assert term.close_keeping_master() == 0
    # The relay put the caller's terminal in raw mode; it is back to what it was.
    assert termios.tcgetattr(term.master) == term.initial_attributes
    os.close(term.master)


def test_terminal_hang_up_while_running(rootfs: Path) -> None:
    # The user's terminal goes away (its window closed) while the command runs:
    # vortex forwards the SIGHUP, finishes without a traceback, leaves nothing.
    script = "trap 'exit 3' HUP; echo ready; sleep 5 & wait"
    # setsid --ctty: vortex leads a session whose controlling terminal is this pty,
    # as under a terminal emulator, so the kernel sends it SIGHUP on hang-up.
    term = Terminal(
        ["setsid", "--ctty", *VORTEX, "run", str(rootfs), "/bin/sh", "-c", script],
        new_session=False,
    )
    term.expect(b"ready")
    os.close(term.master)
    assert term.proc.wait(timeout=10) == 3


def test_window_resize_reaches_the_container(rootfs: Path) -> None:
    # vortex must own the terminal (setsid --ctty) for the kernel to send it SIGWINCH.
    term = Terminal(["setsid", "--ctty", *VORTEX, "run", str(rootfs), "/bin/sh"], new_session=False)
    try:
        term.expect(b"# ")
        term.send(b"stty size\r")
        term.expect(b"40 100")
        term.expect(b"# ")
        fcntl.ioctl(term.master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
        time.sleep(0.3)  # SIGWINCH to vortex, which resizes the container's terminal
        term.send(b"stty size\r")
        term.expect(b"33 77")
        term.send(b"exit\r")
    finally:
        status = term.close()
    assert status == 0


# The Runtime's own terminal handling (vortex run relays from vortex/direct.py; a
# program using the library gets the pty through Launch.attach_terminal).


@pytest.mark.anyio
async def test_runtime_terminal_captured(rootfs: Path) -> None:
    async with Runtime() as runtime:
        result = await runtime.run(
            ContainerSpec(
                rootfs=rootfs,
                command=["/bin/sh", "-c", "tty; echo hi; exit 4"],
                tty=True,
                stdout=Stdio.CAPTURE,
            )
        )
    assert result.exit_code == 4
    assert result.stdout is not None
    assert b"/dev/pts/0\r\nhi\r\n" in result.stdout  # the terminal's CRLF: a real pty


@pytest.mark.anyio
async def test_runtime_terminal_streamed(rootfs: Path) -> None:
    async with Runtime() as runtime:
        container = await runtime.start(
            ContainerSpec(rootfs=rootfs, command=["/bin/sh"], tty=True, stdout=Stdio.STREAM)
        )
        assert container.stdin is not None and container.stdout is not None
        await container.stdin.send(b"echo $((6*7))\n")
        seen = b""
        with anyio.fail_after(10):
            while b"42\r\n" not in seen:
                seen += await container.stdout.receive()
        await container.stdin.send(b"exit 6\n")
        result = await container.wait()
        await container.stdin.aclose()
        await container.stdout.aclose()
    assert result.exit_code == 6


RUNTIME_ON_A_TERMINAL = """
import anyio, sys
from vortex import ContainerSpec, Runtime

async def main():
    async with Runtime() as runtime:
        spec = ContainerSpec(rootfs=sys.argv[1], command=["/bin/sh"], tty=True)
        return (await runtime.run(spec)).exit_code

sys.exit(anyio.run(main))
"""


def test_runtime_terminal_inherited_is_relayed(rootfs: Path) -> None:
    term = Terminal([sys.executable, "-c", RUNTIME_ON_A_TERMINAL, str(rootfs)])
    try:
        term.expect(b"# ")
        term.send(b"echo $((6*7))\r")
        term.expect(b"42")
        term.send(b"exit 7\r")
    finally:
        status = term.close()
    assert status == 7
