"""``linux.seccomp`` of config.json → the docker-format profile Vortex compiles.

The two formats share their vocabulary (actions, operators, ``errnoRet``,
``args``), so the conversion is mostly checking: everything is validated
here, with the JSON path in the message, so that the compiler
(vortex/security/seccomp.py, in the Runtime) never meets a value it would
reject.  Two OCI rules are made explicit, because the docker format reads
them differently: an ``SCMP_ACT_ERRNO`` or ``SCMP_ACT_TRACE`` rule without
``errnoRet`` returns EPERM (the docker compiler would use
``defaultErrnoRet``), and ``errnoRet`` on any other action is an error.
"""

from __future__ import annotations

from typing import Any

from vortex.oci._fields import UINT64_MAX, Field
from vortex.security import seccomp

EPERM = 1
ERRNO_MAX = 4095
"""The kernel's MAX_ERRNO: a larger errnoRet is not an error number."""

ACTIONS = (
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
)
_WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
OPERATORS = (
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)
_NO_EFFECT_FLAGS = ("SECCOMP_FILTER_FLAG_TSYNC",)
"""TSYNC syncs the filter to the other threads: the init has none, so it changes nothing."""


def _action(field: Field) -> str:
    name = field.string()
    if name == "SCMP_ACT_NOTIFY":
        raise field.unsupported("SCMP_ACT_NOTIFY needs a seccomp agent, which Vortex has not")
    if name not in ACTIONS:
        raise field.error(f"unknown action {name!r}: use one of {', '.join(ACTIONS)}")
    return name


def _errno(field: Field, action: str, *, low: int = 0) -> int:
    if action not in _WITH_ERRNO:
        raise field.error(f"only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno, not {action}")
    return field.integer(low, ERRNO_MAX)


def convert(field: Field) -> dict[str, Any]:
    """The docker-format profile for ``linux.seccomp``."""
    members = field.members(
        (
            "defaultAction",
            "defaultErrnoRet",
            "architectures",
            "flags",
            "listenerPath",
            "listenerMetadata",
            "syscalls",
        )
    )
    default = _action(field.require(members, "defaultAction"))
    profile: dict[str, Any] = {"defaultAction": default}
    if "defaultErrnoRet" in members:
        # 1 and up: the compiler reads a 0 here as "not set" (EPERM).
        profile["defaultErrnoRet"] = _errno(members["defaultErrnoRet"], default, low=1)
    elif default in _WITH_ERRNO:
        profile["defaultErrnoRet"] = EPERM
    for name in ("listenerPath", "listenerMetadata"):
        if name in members and members[name].string():
            raise members[name].unsupported("Vortex has no seccomp agent support (SCMP_ACT_NOTIFY)")
    for flag in members["flags"].items() if "flags" in members else ():
        if flag.string() not in _NO_EFFECT_FLAGS:
            raise flag.unsupported(
                f"{flag.string()!r}: Vortex loads filters without flags "
                f"(only {', '.join(_NO_EFFECT_FLAGS)} is accepted, it has no effect here)"
            )
    arches = []
    for arch in members["architectures"].items() if "architectures" in members else ():
        name = arch.string()
        try:
            seccomp.arch_token(name)
        except seccomp.SeccompError as exc:
            raise arch.error(f"{exc} (use names such as SCMP_ARCH_X86_64)") from None
        arches.append(name)
    profile["architectures"] = arches
    rules = []
    for rule in members["syscalls"].items() if "syscalls" in members else ():
        rules.append(_rule(rule))
    profile["syscalls"] = rules
    return profile


def _rule(field: Field) -> dict[str, Any]:
    members = field.members(("names", "action", "errnoRet", "args"))
    names = field.require(members, "names").strings()
    if not names:
        raise members["names"].error("must name at least one syscall")
    action = _action(field.require(members, "action"))
    rule: dict[str, Any] = {"names": names, "action": action}
    if "errnoRet" in members:
        rule["errnoRet"] = _errno(members["errnoRet"], action)
    elif action in _WITH_ERRNO:
        rule["errnoRet"] = EPERM  # the runtime-spec's default, not defaultErrnoRet
    args = []
    for arg in members["args"].items() if "args" in members else ():
        fields = arg.members(("index", "value", "valueTwo", "op"))
        op = arg.require(fields, "op").string()
        if op not in OPERATORS:
            raise fields["op"].error(f"unknown operator {op!r}: use one of {', '.join(OPERATORS)}")
        args.append(
            {
                "index": arg.require(fields, "index").integer(0, 5),
                "value": arg.require(fields, "value").integer(0, UINT64_MAX),
                "valueTwo": fields["valueTwo"].integer(0, UINT64_MAX)
                if "valueTwo" in fields
                else 0,
                "op": op,
            }
        )
    rule["args"] = args
    return rule
