"""Seccomp: compile docker-format profiles to BPF with libseccomp, load them.

Two halves, in two processes:

- :func:`compile_profile` runs in the Runtime, before the clone.  It drives
  libseccomp (``libseccomp.so.2``, Debian package ``libseccomp2``) through
  ctypes: libseccomp resolves every syscall name per architecture (x86_64
  with its x86 and x32 compat ABIs, aarch64 with arm), evaluates the
  profile's argument filters and emits a classic BPF program.  The result is
  plain bytes, cached per (profile, capabilities, architectures).
- :func:`load_filter` runs in the container init, as the very last step
  before ``execve``: one ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)``.  No
  libseccomp, no parsing in the privileged child.

The profile format is docker's (``defaultAction``, ``defaultErrnoRet``,
``architectures`` or ``archMap``, ``syscalls[]`` with ``names``/``name``,
``action``, ``errnoRet``, ``args`` and ``includes``/``excludes`` on ``caps``,
``arches`` and ``minKernel``).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence

from vortex.errors import SpecError, VortexError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

# ----------------------------------------------------------------- libseccomp ABI

ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000

_ACTIONS = {
    "SCMP_ACT_KILL": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": ACT_TRAP,
    "SCMP_ACT_ERRNO": ACT_ERRNO,
    "SCMP_ACT_TRACE": ACT_TRACE,
    "SCMP_ACT_LOG": ACT_LOG,
    "SCMP_ACT_ALLOW": ACT_ALLOW,
}
_OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_FLTATR_ACT_BADARCH = 2
_FLTATR_CTL_NNP = 3
_FLTATR_CTL_OPTIMIZE = 8
BINARY_TREE = 2
"""libseccomp's SCMP_FLTATR_CTL_OPTIMIZE level that sorts the syscalls of each
architecture into a binary tree instead of one long list of comparisons.

Why it matters at start-up: since Linux 5.11 the kernel, on loading a filter,
runs it once per syscall number and architecture to find the calls it may let
through without running the filter again (seccomp's action cache).  With
docker's profile as a list, each of those runs walks hundreds of comparisons;
as a tree, about ten.  Measured here: loading the default profile (three ABIs)
takes 0.35 ms instead of 0.9 ms, on every container start, although the tree is
25% more instructions.  Older libseccomp (before 2.5) lacks the attribute and
keeps the list."""
LINEAR = 1
"""The optimization level of libseccomp's default layout (for tests and comparison)."""
EPERM = 1

COMPAT_ARCHES = {"x86_64": ("x86", "x32"), "aarch64": ("arm",)}
"""The compat ABIs a native architecture can also run, as docker's archMap has them."""


class SeccompError(VortexError):
    """libseccomp is missing or refused the profile."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        # The soname first: find_library would run ldconfig (milliseconds).
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        lib = None
    try:
        if lib is None:
            from ctypes.util import find_library

            lib = ctypes.CDLL(find_library("seccomp") or "libseccomp.so", use_errno=True)
    except OSError as exc:
        raise SeccompError(
            f"cannot load libseccomp ({exc}): install it (Debian/Ubuntu: apt-get install "
            "libseccomp2) or run with --seccomp unconfined"
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_remove.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def native_arch() -> str:
    machine = os.uname().machine
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def arch_token(name: str) -> int:
    """libseccomp's token for ``x86_64``, ``SCMP_ARCH_AARCH64``, ..."""
    short = name.lower().removeprefix("scmp_arch_")
    token: int = _library().seccomp_arch_resolve_name(short.encode())
    if not token:
        raise SeccompError(f"unknown seccomp architecture {name!r}")
    return token


def syscall_number(name: str, arch: str) -> int | None:
    """The number of syscall ``name`` on ``arch``, or None if that arch lacks it."""
    number: int = _library().seccomp_syscall_resolve_name_arch(arch_token(arch), name.encode())
    return number if number >= 0 else None


# ----------------------------------------------------------------- profiles


def load_profile_file(path: str) -> dict[str, Any]:
    """Read a docker-format JSON profile; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            profile = json.load(f)
    except OSError as exc:
        raise SpecError(f"--seccomp {path!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SpecError(f"--seccomp {path!r} is not valid JSON: {exc}") from None
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise SpecError(f"--seccomp {path!r}: not a seccomp profile (no 'defaultAction')")
    return profile


def _action(name: str, errno_ret: int | None, default_errno: int) -> int:
    try:
        base = _ACTIONS[name]
    except KeyError:
        raise SeccompError(
            f"unknown seccomp action {name!r}: use one of {', '.join(sorted(_ACTIONS))}"
        ) from None
    if base == ACT_ERRNO:
        return base | ((default_errno if errno_ret is None else errno_ret) & 0xFFFF)
    if base == ACT_TRACE:
        return base | ((errno_ret or 0) & 0xFFFF)
    return base


def _kernel_at_least(version: str) -> bool:
    def parts(text: str) -> tuple[int, ...]:
        numbers = []
        for piece in text.split(".")[:2]:
            digits = "".join(ch for ch in piece if ch.isdigit())
            numbers.append(int(digits or 0))
        return tuple(numbers)

    return parts(os.uname().release) >= parts(version)


def _applies(rule: Mapping[str, Any], caps: frozenset[str], arches: Sequence[str]) -> bool:
    def caps_of(block: Mapping[str, Any]) -> set[str]:
        return {c.upper().removeprefix("CAP_") for c in block.get("caps") or ()}

    def arches_of(block: Mapping[str, Any]) -> set[str]:
        return {a.lower().removeprefix("scmp_arch_") for a in block.get("arches") or ()}

    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if includes.get("caps") and not caps_of(includes) <= caps:
        return False
    if includes.get("arches") and not arches_of(includes) & set(arches):
        return False
    if includes.get("minKernel") and not _kernel_at_least(includes["minKernel"]):
        return False
    if excludes.get("caps") and caps_of(excludes) & caps:
        return False
    if excludes.get("arches") and arches_of(excludes) & set(arches):
        return False
    return not (excludes.get("minKernel") and _kernel_at_least(excludes["minKernel"]))


def profile_arches(profile: Mapping[str, Any], native: str | None = None) -> tuple[str, ...]:
    """The architectures a filter covers: the native one plus its compat ABIs."""
    native = native or native_arch()
    arches = [native]
    for entry in profile.get("archMap") or ():
        if entry.get("architecture", "").lower().removeprefix("scmp_arch_") == native:
            arches += [
                a.lower().removeprefix("scmp_arch_") for a in entry.get("subArchitectures") or ()
            ]
    if not profile.get("archMap"):
        listed = [a.lower().removeprefix("scmp_arch_") for a in profile.get("architectures") or ()]
        arches += [a for a in listed if a in COMPAT_ARCHES.get(native, ())]
    return tuple(dict.fromkeys(arches))


def compile_profile(
    profile: Mapping[str, Any],
    capabilities: Iterable[str] = (),
    arches: Sequence[str] | None = None,
) -> bytes:
    """Compile a docker-format profile into a BPF program (``struct sock_filter[]``).

    :param capabilities: the container's capabilities, for ``includes.caps`` rules.
    :param arches: architectures to cover; default: native plus its compat ABIs.
    """
    global _last_compiled
    caps = frozenset(capabilities)
    asked_arches = tuple(arches) if arches is not None else None
    last = _last_compiled
    # Equal to the last profile (most starts: every container gets a fresh copy of
    # the default): its program, without the ~0.1 ms of encoding the key and
    # reading the cache file.  Equality is ~2 us for the default profile.
    if last is not None and last[1:3] == (caps, asked_arches) and last[0] == profile:
        return last[3]
    key = json.dumps(profile, sort_keys=True)
    arch_list = asked_arches if asked_arches is not None else profile_arches(profile)
    cache_key = json.dumps(
        [key, sorted(caps), arch_list, _library_version(), os.uname().release, BINARY_TREE]
    ).encode()
    bpf = _read_cache(cache_key)
    if bpf is None:
        bpf = _compile_cached(key, caps, arch_list)
        _write_cache(cache_key, bpf)
    # A copy (through the JSON already made): the caller may change its profile later.
    _last_compiled = (json.loads(key), caps, asked_arches, bpf)
    return bpf


_last_compiled: tuple[Any, frozenset[str], tuple[str, ...] | None, bytes] | None = None
"""(profile, capabilities, asked architectures, program) of the last compile_profile."""


CACHE_DIR_ENV = "VORTEX_SECCOMP_CACHE"
DEFAULT_CACHE_DIR = "/run/vortex/seccomp"
"""Compiled programs are kept here (root only, on tmpfs): compiling the default
profile costs ~10 ms, reading it back well under one.  Each file holds the full
key it was compiled for and is used only when that key matches exactly."""


def _cache_path(cache_key: bytes) -> str | None:
    directory = os.environ.get(CACHE_DIR_ENV, DEFAULT_CACHE_DIR)
    if not directory:
        return None
    return os.path.join(directory, f"{zlib.crc32(cache_key):08x}-{len(cache_key)}.bpf")


def _read_cache(cache_key: bytes) -> bytes | None:
    path = _cache_path(cache_key)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    stored_key, sep, bpf = data.partition(b"\0")
    if not sep or stored_key != cache_key or not bpf or len(bpf) % 8:
        return None
    return bpf


def _write_cache(cache_key: bytes, bpf: bytes) -> None:
    path = _cache_path(cache_key)
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, cache_key + b"\0" + bpf)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError:
        pass  # a cache only: compiling again next time is fine


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


@functools.cache
def _library_version() -> str:
    lib = _library()
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    version = lib.seccomp_version().contents
    return f"{version.major}.{version.minor}.{version.micro}"


@functools.lru_cache(maxsize=32)
def _compile_cached(
    key: str, caps: frozenset[str], arches: tuple[str, ...], layout: int = BINARY_TREE
) -> bytes:
    profile = json.loads(key)
    lib = _library()
    default_errno = int(profile.get("defaultErrnoRet") or EPERM)
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"), default_errno)
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SeccompError("seccomp_init failed (bad defaultAction?)")
    try:
        native = lib.seccomp_arch_native()
        tokens = [arch_token(a) for a in arches]
        for token in tokens:
            if token != native:
                _check(lib.seccomp_arch_add(ctx, token), "seccomp_arch_add")
        if native not in tokens:
            _check(lib.seccomp_arch_remove(ctx, native), "seccomp_arch_remove")
        # A foreign-arch syscall is denied like any unlisted one, not a kill.
        _check(lib.seccomp_attr_set(ctx, _FLTATR_ACT_BADARCH, ACT_KILL_PROCESS), "attr")
        # Refused by libseccomp before 2.5: the list layout is as correct, only slower.
        lib.seccomp_attr_set(ctx, _FLTATR_CTL_OPTIMIZE, layout)
        for rule in profile.get("syscalls") or ():
            if not _applies(rule, caps, arches):
                continue
            action = _action(rule["action"], rule.get("errnoRet"), default_errno)
            if action == default:
                continue  # libseccomp refuses rules equal to the default, and they are no-ops
            names = list(rule.get("names") or ()) + ([rule["name"]] if rule.get("name") else [])
            for name in names:
                _add_rule(lib, ctx, tokens, name, action, rule.get("args") or ())
        fd = os.memfd_create("vortex-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def _add_rule(
    lib: ctypes.CDLL,
    ctx: int,
    tokens: Sequence[int],
    name: str,
    action: int,
    args: Sequence[Mapping[str, Any]],
) -> None:
    # Known on at least one of the filter's architectures?  Otherwise skip it, as
    # docker does: a profile lists syscalls of every architecture.
    if all(lib.seccomp_syscall_resolve_name_arch(t, name.encode()) < 0 for t in tokens):
        return
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number == -1:
        return
    comparisons = []
    for arg in args:
        try:
            op = _OPERATORS[arg["op"]]
        except KeyError:
            raise SeccompError(f"{name}: unknown argument operator {arg.get('op')!r}") from None
        comparisons.append(
            _ArgCmp(int(arg["index"]), op, int(arg.get("value", 0)), int(arg.get("valueTwo", 0)))
        )
    # Comparisons on distinct arguments are ANDed in one rule; several on the same
    # argument cannot be, so (docker's rule) each becomes a rule of its own: ORed.
    indexes = [c.arg for c in comparisons]
    groups = [comparisons] if len(set(indexes)) == len(indexes) else [[c] for c in comparisons]
    for group in groups:
        array = (_ArgCmp * len(group))(*group) if group else None
        ret = lib.seccomp_rule_add_array(ctx, action, number, len(group), array)
        if ret < 0:
            raise SeccompError(f"seccomp rule for {name}: {os.strerror(-ret)}")


def _check(ret: int, what: str) -> None:
    if ret < 0:
        raise SeccompError(f"{what}: {os.strerror(-ret)}")


def program_length(bpf: bytes) -> int:
    """Number of BPF instructions (8 bytes each)."""
    return len(bpf) // 8


# ----------------------------------------------------------------- loading (init side)

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

_libc = ctypes.PyDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def set_no_new_privs() -> None:
    if (
        _libc.prctl(
            PR_SET_NO_NEW_PRIVS,
            ctypes.c_ulong(1),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
        < 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


def load_filter(bpf: bytes) -> None:
    """Install ``bpf`` as this thread's seccomp filter (needs no_new_privs or SYS_ADMIN)."""
    if len(bpf) % 8 or not bpf:
        raise ValueError("a BPF program is a non-empty multiple of 8 bytes")
    buffer = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buffer, ctypes.c_void_p).value)
    ret = _libc.prctl(
        PR_SET_SECCOMP,
        ctypes.c_ulong(SECCOMP_MODE_FILTER),
        ctypes.c_void_p(ctypes.addressof(prog)),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"load seccomp filter: {os.strerror(err)}")
