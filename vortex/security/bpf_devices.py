"""The device allow-list on cgroup v2: an eBPF program of type CGROUP_DEVICE.

Cgroup v2 has no devices controller.  Instead the kernel runs the
``BPF_PROG_TYPE_CGROUP_DEVICE`` programs attached to a process's cgroup (and to
its ancestors) on every ``mknod`` and every ``open`` of a device node; the
access is refused with EPERM unless every one of them returns 1.  This module
compiles a devices list (:data:`vortex.security.devices.ALLOWED_DEVICES`, the
list the v1 controller gets) into such a program, loads it with bpf(2) and
attaches it to a container's cgroup directory.

The program sees ``struct bpf_cgroup_dev_ctx`` in r1::

    u32 access_type   (access << 16) | type; access: 1 mknod, 2 read, 4 write;
                      type: 1 block, 2 char
    u32 major
    u32 minor

It tests the rules one block at a time.  A block falls through to "return 1"
when the device matches its rule, and jumps to the next block at the first
test that fails; after the last block the program returns 0::

    r2 = ctx->access_type; r3 = r2 >> 16; r2 &= 0xffff; r4 = major; r5 = minor
    for each rule:
        if r2 != TYPE goto next               (no test for 'a')
        if r3 & ~ACCESS goto next             (no test for rwm)
        if r4 != MAJOR goto next              (no test for *)
        if r5 != MINOR goto next              (no test for *)
        r0 = 1; exit
    next: ...
    r0 = 0; exit

The rules mean what they mean to the v1 controller: the requested access must
be covered by one rule (an ``open(O_RDWR)`` needs ``rw`` in a single rule), and
rules with the same type and numbers are merged first, as v1 merges them.
"""

from __future__ import annotations

import errno
import functools
import os
import struct
from collections.abc import Iterable

from vortex.errors import CgroupError
from vortex.records import record
from vortex.security import _bpf
from vortex.security.devices import ALLOWED_DEVICES, DeviceRule, parse_rule

PROGRAM_NAME = "vortex_devices"
"""The name the kernel shows for our programs (bpftool prog, BPF_OBJ_GET_INFO_BY_FD)."""

ProgramInfo = _bpf.ProgramInfo

# struct bpf_cgroup_dev_ctx
ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE = 1, 2, 4
TYPE_BLOCK, TYPE_CHAR = 1, 2
_ACCESS = {"m": ACCESS_MKNOD, "r": ACCESS_READ, "w": ACCESS_WRITE}
_TYPE = {"b": TYPE_BLOCK, "c": TYPE_CHAR}

# Opcode parts (include/uapi/linux/bpf_common.h and bpf.h).
_LDX, _ALU, _JMP, _ALU64 = 0x01, 0x04, 0x05, 0x07
_W, _MEM = 0x00, 0x60
_K, _X = 0x00, 0x08
_AND, _RSH, _MOV = 0x50, 0x70, 0xB0
_JNE, _JSET, _EXIT = 0x50, 0x40, 0x90
R0, R1, R2, R3, R4, R5 = range(6)

_VERIFIER_LOG_SIZE = 1 << 18


@record
class Insn:
    """One ``struct bpf_insn``: u8 code, u8 dst_reg:4 + src_reg:4, s16 off, s32 imm."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        # The two 4-bit register fields are a C bitfield: their order in the byte
        # follows the machine's endianness, like the rest of the struct.
        regs = self.dst | self.src << 4 if _LITTLE else self.dst << 4 | self.src
        return _INSN.pack(self.code, regs, self.off, self.imm)


_INSN = struct.Struct("=BBhi")
_LITTLE = struct.pack("=H", 1) == b"\x01\x00"


def _load_word(dst: int, offset: int) -> Insn:
    return Insn(_LDX | _MEM | _W, dst, R1, offset)


def _exit_with(value: int) -> list[Insn]:
    return [Insn(_ALU64 | _MOV | _K, R0, imm=value), Insn(_JMP | _EXIT)]


def merge(rules: Iterable[str | DeviceRule]) -> list[DeviceRule]:
    """Parse the rules and merge the accesses of rules with the same type and numbers."""
    merged: dict[tuple[str, int | None, int | None], set[str]] = {}
    for rule in rules:
        parsed = rule if isinstance(rule, DeviceRule) else parse_rule(rule)
        merged.setdefault((parsed.kind, parsed.major, parsed.minor), set()).update(parsed.access)
    return [
        DeviceRule(kind, major, minor, "".join(c for c in "rwm" if c in access))
        for (kind, major, minor), access in merged.items()
    ]


def instructions(rules: Iterable[str | DeviceRule]) -> list[Insn]:
    """The filter for ``rules`` (see the module docstring for its shape)."""
    parsed = merge(rules)
    if any(rule.kind == "a" for rule in parsed):
        return _exit_with(1)
    program = [
        _load_word(R2, 0),
        Insn(_ALU | _MOV | _X, R3, R2),
        Insn(_ALU | _RSH | _K, R3, imm=16),
        Insn(_ALU | _AND | _K, R2, imm=0xFFFF),
        _load_word(R4, 4),
        _load_word(R5, 8),
    ]
    for rule in parsed:
        # Each test is (opcode, register, immediate) and skips the block when it holds.
        tests = [(_JNE, R2, _TYPE[rule.kind])]
        denied = sum(bit for letter, bit in _ACCESS.items() if letter not in rule.access)
        if denied:
            tests.append((_JSET, R3, denied))
        if rule.major is not None:
            tests.append((_JNE, R4, rule.major))
        if rule.minor is not None:
            tests.append((_JNE, R5, rule.minor))
        # Offsets count from the next instruction; the block ends with 2 for "return 1".
        for index, (op, register, value) in enumerate(tests):
            skip = len(tests) - index - 1 + 2
            program.append(Insn(_JMP | op | _K, register, off=skip, imm=value))
        program += _exit_with(1)
    return program + _exit_with(0)


@functools.lru_cache(maxsize=8)
def compile_rules(rules: tuple[str | DeviceRule, ...] = ALLOWED_DEVICES) -> bytes:
    """The encoded program for ``rules`` (cached: every container gets the same one)."""
    return b"".join(insn.encode() for insn in instructions(rules))


def load(program: bytes) -> int:
    """Load an encoded CGROUP_DEVICE program; returns its fd, which the caller closes.

    The first attempt runs the verifier without a log (the fast path).  If it is
    refused, the load is repeated with a log buffer, so that the error carries
    the verifier's own explanation.
    """
    try:
        return _bpf.prog_load(_bpf.BPF_PROG_TYPE_CGROUP_DEVICE, program, name=PROGRAM_NAME)
    except OSError as exc:
        first = exc
    if first.errno in (errno.EINVAL, errno.EACCES):
        try:
            return _bpf.prog_load(
                _bpf.BPF_PROG_TYPE_CGROUP_DEVICE,
                program,
                name=PROGRAM_NAME,
                log_size=_VERIFIER_LOG_SIZE,
            )
        except _bpf.BpfLoadError as exc:
            if exc.log.strip():
                lines = exc.log.strip().splitlines()
                raise CgroupError(
                    "the kernel's BPF verifier rejected the cgroup v2 device filter "
                    f"({exc.strerror.lower() if exc.strerror else exc.errno}): "
                    + " / ".join(lines[-6:])
                ) from None
            first = exc
    raise CgroupError(f"cannot load the cgroup v2 device filter: {_explain(first)}") from None


def _explain(exc: OSError) -> str:
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    if exc.errno == errno.EPERM:
        return (
            f"{reason}; bpf(2) needs CAP_SYS_ADMIN (or CAP_BPF) in the initial user "
            "namespace, and a seccomp filter around the runtime must allow it"
        )
    if exc.errno == errno.ENOSYS:
        return f"{reason}; the kernel was built without CONFIG_BPF_SYSCALL"
    if exc.errno == errno.EINVAL:
        return f"{reason}; the kernel may lack CONFIG_CGROUP_BPF (cgroup device programs)"
    return reason


def _open_cgroup(directory: str) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"cannot open cgroup {directory}: {exc.strerror}") from None


def install(directory: str, rules: tuple[str | DeviceRule, ...] = ALLOWED_DEVICES) -> int:
    """Attach a filter allowing only ``rules`` to the cgroup v2 ``directory``.

    Returns the program's id.  The program fd is closed before returning: the
    attachment holds the program, and it is freed with the cgroup.  It is
    attached with BPF_F_ALLOW_MULTI, as runc and systemd do: programs of
    ancestors (a systemd unit's DevicePolicy, an outer container's filter)
    keep running too, every one must allow an access, and a nested runtime can
    still attach its own below ours.
    """
    program = compile_rules(rules)
    target = _open_cgroup(directory)
    try:
        prog_fd = load(program)
        try:
            try:
                _bpf.prog_attach(target, prog_fd, _bpf.BPF_CGROUP_DEVICE, _bpf.BPF_F_ALLOW_MULTI)
            except OSError as exc:
                hint = ""
                if exc.errno == errno.EPERM:
                    hint = (
                        "; an ancestor cgroup may have a device program attached that does "
                        "not allow others below it (neither ALLOW_MULTI nor ALLOW_OVERRIDE)"
                    )
                raise CgroupError(
                    f"cannot attach the device filter to cgroup {directory}: "
                    f"{os.strerror(exc.errno).lower() if exc.errno else exc}{hint}"
                ) from None
            try:
                return _bpf.prog_info(prog_fd).id
            except OSError as exc:  # attached all the same: only the id is missing
                raise CgroupError(f"cannot read the device filter's id: {exc.strerror}") from None
        finally:
            os.close(prog_fd)
    finally:
        os.close(target)


def attached_programs(directory: str) -> list[ProgramInfo]:
    """The device programs attached to the cgroup v2 ``directory`` itself (not its
    ancestors'), via BPF_PROG_QUERY.  A program that vanishes meanwhile is skipped."""
    target = _open_cgroup(directory)
    try:
        _flags, ids = _bpf.prog_query(target, _bpf.BPF_CGROUP_DEVICE)
    except OSError as exc:
        raise CgroupError(f"cannot query the device programs of {directory}: {exc}") from None
    finally:
        os.close(target)
    found = []
    for prog_id in ids:
        info = program_info(prog_id)
        if info is not None:
            found.append(info)
    return found


def program_info(prog_id: int) -> ProgramInfo | None:
    """What the kernel says about program ``prog_id``; None once it has been freed."""
    try:
        fd = _bpf.prog_get_fd_by_id(prog_id)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise CgroupError(f"cannot open BPF program {prog_id}: {exc.strerror}") from None
    try:
        return _bpf.prog_info(fd)
    finally:
        os.close(fd)
