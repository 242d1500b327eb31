"""bpf(2) through ctypes: the few commands the cgroup v2 device filter needs.

Only :mod:`vortex.security.bpf_devices` imports this, and only once a
container actually has a cgroup v2 directory, so the ctypes set-up below stays
off the CLI's cold start.  The constants and attribute layouts are those of
``include/uapi/linux/bpf.h``; every ``union bpf_attr`` member is declared only
as far as we use it (the kernel zero-fills the rest of a shorter attribute).

The handle is a ``CDLL``, not ``vortex._linux``'s ``PyDLL``: the verifier may
take a while and nothing here runs between fork and exec, so the GIL can be
released during the call.
"""

from __future__ import annotations

import ctypes
import errno
import os

from vortex.records import record

# commands (enum bpf_cmd)
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16

BPF_PROG_TYPE_CGROUP_DEVICE = 15  # enum bpf_prog_type
BPF_CGROUP_DEVICE = 6  # enum bpf_attach_type
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2
BPF_OBJ_NAME_LEN = 16

_SYS_BPF = {"x86_64": 321, "aarch64": 280}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", _u32),
        ("insn_cnt", _u32),
        ("insns", _u64),
        ("license", _u64),
        ("log_level", _u32),
        ("log_size", _u32),
        ("log_buf", _u64),
        ("kern_version", _u32),
        ("prog_flags", _u32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", _u32),
        ("expected_attach_type", _u32),
    ]


class _AttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", _u32),
        ("attach_bpf_fd", _u32),
        ("attach_type", _u32),
        ("attach_flags", _u32),
        ("replace_bpf_fd", _u32),
    ]


class _QueryAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", _u32),
        ("attach_type", _u32),
        ("query_flags", _u32),
        ("attach_flags", _u32),
        ("prog_ids", _u64),
        ("prog_cnt", _u32),
    ]


class _GetIdAttr(ctypes.Structure):
    _fields_ = [("prog_id", _u32), ("next_id", _u32), ("open_flags", _u32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", _u32), ("info_len", _u32), ("info", _u64)]


class _ProgInfo(ctypes.Structure):
    # The head of struct bpf_prog_info, up to and including ``name`` (Linux 4.15).
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", _u32),
        ("xlated_prog_len", _u32),
        ("jited_prog_insns", _u64),
        ("xlated_prog_insns", _u64),
        ("load_time", _u64),
        ("created_by_uid", _u32),
        ("nr_map_ids", _u32),
        ("map_ids", _u64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


@record
class ProgramInfo:
    """What the kernel tells about a loaded program."""

    id: int
    type: int
    name: str
    tag: str
    """The program's hash in hex, as bpftool prints it."""


class BpfLoadError(OSError):
    """BPF_PROG_LOAD failed; ``log`` holds the verifier's output when one was asked for."""

    def __init__(self, err: int, log: str) -> None:
        super().__init__(err, os.strerror(err))
        self.log = log


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    number = _SYS_BPF.get(os.uname().machine)
    if number is None:
        raise OSError(0, f"bpf: unsupported architecture {os.uname().machine}")
    ret = _libc.syscall(
        ctypes.c_long(number),
        ctypes.c_int(cmd),
        ctypes.byref(attr),
        ctypes.c_uint(ctypes.sizeof(attr)),
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def prog_load(
    prog_type: int, insns: bytes, *, name: str, license: str = "GPL", log_size: int = 0
) -> int:
    """Load a program; returns its fd (close-on-exec).  With ``log_size`` the verifier
    writes its log (level 1) into a buffer of that size, kept in BpfLoadError.log."""
    code = ctypes.create_string_buffer(insns, len(insns))
    licence = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = _ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(insns) // 8,
        insns=ctypes.addressof(code),
        license=ctypes.addressof(licence),
        log_level=1 if log is not None else 0,
        log_size=log_size,
        log_buf=ctypes.addressof(log) if log is not None else 0,
        prog_name=name.encode()[: BPF_OBJ_NAME_LEN - 1],
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        text = log.value.decode(errors="replace") if log is not None else ""
        raise BpfLoadError(exc.errno or 0, text) from None


def prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    _bpf(
        BPF_PROG_ATTACH,
        _AttachAttr(
            target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type, attach_flags=flags
        ),
    )


def prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    _bpf(
        BPF_PROG_DETACH,
        _AttachAttr(target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type),
    )


def prog_query(target_fd: int, attach_type: int) -> tuple[int, list[int]]:
    """(attach flags, ids) of the programs attached to ``target_fd`` itself (not inherited)."""
    capacity = 16
    while True:
        ids = (_u32 * capacity)()
        attr = _QueryAttr(
            target_fd=target_fd,
            attach_type=attach_type,
            prog_ids=ctypes.addressof(ids),
            prog_cnt=capacity,
        )
        try:
            _bpf(BPF_PROG_QUERY, attr)
        except OSError as exc:
            # ENOSPC: more programs than room; prog_cnt now says how many there are.
            if exc.errno == errno.ENOSPC and attr.prog_cnt > capacity:
                capacity = attr.prog_cnt
                continue
            raise
        return attr.attach_flags, list(ids[: attr.prog_cnt])


def prog_get_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, _GetIdAttr(prog_id=prog_id))


def prog_info(prog_fd: int) -> ProgramInfo:
    info = _ProgInfo()
    _bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        _InfoAttr(bpf_fd=prog_fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
    )
    return ProgramInfo(
        id=info.id,
        type=info.type,
        name=info.name.decode(errors="replace"),
        tag=bytes(info.tag).hex(),
    )
