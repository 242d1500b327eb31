"""The binary-tree layout of a compiled seccomp filter decides exactly as the list.

vortex.security.seccomp asks libseccomp for a binary tree of comparisons (it
loads faster, see BINARY_TREE).  These tests run both layouts of docker's
default profile through a small classic-BPF interpreter, for every syscall
number of every architecture the filter covers and for argument values that
hit each argument rule, and require the same verdict everywhere.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from vortex.security import capabilities, seccomp
from vortex.security.default_profile import default_profile

AUDIT_ARCH = {"x86_64": 0xC000003E, "x86": 0x40000003, "x32": 0xC000003E}
X32_SYSCALL_BIT = 0x40000000
UNKNOWN_ARCH = 0x12345678


def run_filter(program: bytes, nr: int, arch: int, args: tuple[int, ...]) -> int:
    """The verdict of a classic BPF seccomp program for one ``struct seccomp_data``."""
    data = struct.pack("<iIQ6Q", nr, arch, 0x1000, *args)
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    a = x = 0
    memory = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # BPF_LD
            mode = code & 0xE0
            if mode == 0x20:  # ABS, 32-bit words only in seccomp
                a = struct.unpack_from("<I", data, k)[0]
            elif mode == 0x00:
                a = k
            elif mode == 0x60:
                a = memory[k]
            else:
                raise AssertionError(f"unexpected load {code:#x}")
        elif cls == 0x01:  # BPF_LDX
            x = memory[k] if code & 0xE0 == 0x60 else k
        elif cls == 0x02:  # BPF_ST
            memory[k] = a
        elif cls == 0x03:  # BPF_STX
            memory[k] = x
        elif cls == 0x04:  # BPF_ALU
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x50:
                a &= operand
            elif op == 0x40:
                a |= operand
            elif op == 0x00:
                a = (a + operand) & 0xFFFFFFFF
            elif op == 0x10:
                a = (a - operand) & 0xFFFFFFFF
            else:
                raise AssertionError(f"unexpected ALU op {code:#x}")
        elif cls == 0x05:  # BPF_JMP
            op = code & 0xF0
            operand = x if code & 0x08 else k
            if op == 0x00:
                pc += k
                continue
            taken = {
                0x10: a == operand,
                0x20: a > operand,
                0x30: a >= operand,
                0x40: bool(a & operand),
            }[op]
            pc += jt if taken else jf
        elif cls == 0x06:  # BPF_RET
            return a if code & 0x18 == 0x10 else k
        elif cls == 0x07:  # BPF_MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
        else:
            raise AssertionError(f"unexpected class {code:#x}")


def argument_rules(profile: dict[str, Any]) -> tuple[set[str], list[int]]:
    """The calls with argument rules, and values around every constant they compare with."""
    names: set[str] = set()
    values = {0, 1, 0xFFFFFFFF, 1 << 32, (1 << 64) - 1}
    for rule in profile["syscalls"]:
        if not rule.get("args"):
            continue
        names.update(rule.get("names") or ())
        for arg in rule["args"]:
            for value in (int(arg.get("value", 0)), int(arg.get("valueTwo", 0))):
                for candidate in (value, value + 1, value - 1, value | 0x8, value << 32):
                    values.add(candidate % (1 << 64))
    return names, sorted(values)


@pytest.fixture(scope="module")
def layouts() -> tuple[bytes, bytes]:
    profile = default_profile()
    key = json.dumps(profile, sort_keys=True)
    caps = frozenset(capabilities.DEFAULT_CAPABILITIES)
    arches = ("x86_64", "x86", "x32")
    tree = seccomp._compile_cached(key, caps, arches, seccomp.BINARY_TREE)
    listed = seccomp._compile_cached(key, caps, arches, seccomp.LINEAR)
    return tree, listed


def test_the_tree_layout_is_what_compile_profile_produces(layouts: tuple[bytes, bytes]) -> None:
    tree, listed = layouts
    if seccomp._library_version() < "2.5":
        pytest.skip("libseccomp before 2.5 has no binary-tree layout")
    assert tree != listed, "libseccomp ignored the layout: the comparison below proves nothing"
    compiled = seccomp.compile_profile(
        default_profile(), capabilities.DEFAULT_CAPABILITIES, arches=("x86_64", "x86", "x32")
    )
    assert compiled == tree


def test_both_layouts_decide_every_call_alike(layouts: tuple[bytes, bytes]) -> None:
    tree, listed = layouts
    names, values = argument_rules(default_profile())
    verdicts: set[int] = set()
    with_arguments = 0
    for arch_name, arch in (*AUDIT_ARCH.items(), ("unknown", UNKNOWN_ARCH)):
        base = X32_SYSCALL_BIT if arch_name == "x32" else 0
        for nr in range(base, base + 460):
            first = run_filter(listed, nr, arch, (0,) * 6)
            assert run_filter(tree, nr, arch, (0,) * 6) == first, (arch_name, nr)
            verdicts.add(first)
        # Calls with argument rules: their verdict depends on the values.
        lookup = "x86_64" if arch_name == "unknown" else arch_name
        numbers = {seccomp.syscall_number(name, lookup) for name in names} - {None}
        for nr in sorted(n for n in numbers if n is not None):
            for value in values:
                args = (value,) * 6
                decided = run_filter(listed, nr, arch, args)
                assert run_filter(tree, nr, arch, args) == decided, (arch_name, nr, value)
                verdicts.add(decided)
                with_arguments += 1
    # The comparison saw allowed calls, refused ones and the foreign-architecture kill,
    # and argument rules on every architecture.
    assert seccomp.ACT_ALLOW in verdicts
    assert seccomp.ACT_ERRNO | seccomp.EPERM in verdicts
    assert seccomp.ACT_KILL_PROCESS in verdicts
    assert with_arguments > 4 * len(values)
