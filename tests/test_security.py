"""Escape attempts inside real containers: every secure default, and proof that
each check catches the hole when that default is deliberately relaxed.

Each test runs the same probe twice: under the defaults (the hole must be
closed) and under a weakened configuration (``--privileged``, ``--cap-add``,
``--seccomp unconfined``, ``--security-opt ...``) where the same probe must
see the hole open.  A check that passes both ways would prove nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import reachable_copy, run_vortex
from vortex.errors import SpecError
from vortex.security import capabilities, seccomp
from vortex.security.default_profile import default_profile
from vortex.security.options import parse_ulimit

HERE = Path(__file__).resolve().parent / "security"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")
EPERM = 1
DOCKER_DEFAULT_CAPS = 0xA80425FB
"""docker's default CapEff/CapBnd, as /proc/self/status shows it."""


@pytest.fixture(scope="module")
def secroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs of its own, with the static C probes built into it."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the syscall probe")
    from vortex.rootfs.busybox import build_busybox_rootfs

    path = tmp_path_factory.mktemp("secroot") / "rootfs"
    build_busybox_rootfs(path)
    for source, target in (("probe.c", "probe"), ("suid_euid.c", "suid-euid")):
        subprocess.run(
            ["gcc", "-static", "-O1", "-o", str(path / target), str(HERE / source)],
            check=True,
            capture_output=True,
        )
    suid = path / "suid-euid"
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    return path


def run(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    *flags, script = args
    return run_vortex("run", "--no-tty", *flags, str(root), "/bin/sh", "-c", script, env=env)


def out(root: Path, *args: str) -> str:
    result = run(root, *args)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def status_fields(root: Path, *flags: str) -> dict[str, str]:
    text = out(root, *flags, "cat /proc/self/status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def probe(root: Path, *flags: str) -> dict[str, int]:
    result = run_vortex("run", "--no-tty", *flags, str(root), "/probe")
    assert result.returncode == 0, result.stderr.decode()
    return {
        name: int(err)
        for name, err in (line.split() for line in result.stdout.decode().splitlines())
    }


# --------------------------------------------------------------------- unit: no root


def test_capability_arithmetic_follows_docker() -> None:
    default = capabilities.DEFAULT_CAPABILITIES
    assert len(default) == 14
    assert capabilities.to_mask(default) == DOCKER_DEFAULT_CAPS
    assert capabilities.resolve(default, ["cap_sys_admin"], ["NET_RAW"]) == (
        default | {"SYS_ADMIN"}
    ) - {"NET_RAW"}
    assert capabilities.resolve(default, ["CHOWN"], ["ALL"]) == {"CHOWN"}
    assert capabilities.resolve(default, ["ALL"]) == capabilities.known_capabilities()
    with pytest.raises(SpecError, match="not a capability"):
        capabilities.resolve(default, ["SYS_GODMODE"])


def test_ulimit_parsing() -> None:
    assert parse_ulimit("nofile=1024:4096") == ("nofile", (1024, 4096))
    assert parse_ulimit("nproc=64") == ("nproc", (64, 64))
    with pytest.raises(SpecError, match="soft limit exceeds"):
        parse_ulimit("nofile=10:5")
    with pytest.raises(SpecError, match="NAME=SOFT"):
        parse_ulimit("files=10")


def test_compiled_programs_are_cached_on_disk_by_exact_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(seccomp.CACHE_DIR_ENV, str(tmp_path))
    profile = default_profile()

    def compiled_from_disk() -> bytes:
        monkeypatch.setattr(seccomp, "_last_compiled", None)  # not the one in memory
        return seccomp.compile_profile(profile, capabilities.DEFAULT_CAPABILITIES)

    first = compiled_from_disk()
    (cached,) = tmp_path.iterdir()
    assert cached.read_bytes().endswith(first)
    assert compiled_from_disk() == first
    # A file whose stored key does not match exactly is ignored (and rewritten).
    cached.write_bytes(b"other key\0" + b"\0" * 8)
    assert compiled_from_disk() == first
    assert cached.read_bytes().endswith(first)


def test_an_equal_profile_gets_the_last_program_without_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(seccomp.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(seccomp, "_last_compiled", None)
    profile = default_profile()
    first = seccomp.compile_profile(profile, capabilities.DEFAULT_CAPABILITIES)
    (tmp_path / next(tmp_path.iterdir()).name).unlink()
    # A fresh copy of the same profile (as every container gets): from memory.
    assert seccomp.compile_profile(default_profile(), capabilities.DEFAULT_CAPABILITIES) == first
    assert not any(tmp_path.iterdir())
    # The same dict changed in place after its compile: compiled again.
    profile["syscalls"][0]["names"].remove("read")
    changed = seccomp.compile_profile(profile, capabilities.DEFAULT_CAPABILITIES)
    assert changed != first and any(tmp_path.iterdir())
    # Other capabilities: compiled again too.
    fewer = capabilities.DEFAULT_CAPABILITIES - {"SYS_CHROOT"}
    assert "SYS_CHROOT" in capabilities.DEFAULT_CAPABILITIES
    assert seccomp.compile_profile(default_profile(), fewer) != first


def test_policy_written_by_plugins_is_checked() -> None:
    from vortex.security.policy import SecurityPolicy

    with pytest.raises(SpecError, match="unknown capability 'CAP_NET_ADMIN'"):
        SecurityPolicy(capabilities={"CAP_NET_ADMIN"}).compile()
    with pytest.raises(SpecError, match="unknown rlimit"):
        SecurityPolicy(rlimits={"files": (1, 1)}).compile()
    with pytest.raises(SpecError, match="not an absolute path"):
        SecurityPolicy(masked_paths=["proc/kcore"]).compile()
    assert SecurityPolicy().compile().seccomp is None


def test_options_from_a_config_table() -> None:
    from vortex.security.options import options_from_mapping

    options = options_from_mapping(
        {"cap_add": ["NET_ADMIN"], "ulimits": {"nofile": [512, 1024]}, "read_only": True}
    )
    assert options.cap_add == ("NET_ADMIN",) and options.read_only
    assert options.ulimits == {"nofile": (512, 1024)}
    with pytest.raises(SpecError, match="unknown key 'cap_ad'"):
        options_from_mapping({"cap_ad": ["X"]})
    with pytest.raises(SpecError, match="true or false"):
        options_from_mapping({"privileged": "yes"})


@pytest.mark.parametrize(
    ("arch", "mount", "compat"),
    [("x86_64", 165, ("x86", "x32")), ("aarch64", 40, ("arm",))],
)
def test_seccomp_compiles_for_both_architectures(
    arch: str, mount: int, compat: tuple[str, ...]
) -> None:
    profile = default_profile()
    assert seccomp.syscall_number("mount", arch) == mount
    assert seccomp.profile_arches(profile, native=arch) == (arch, *compat)
    bpf = seccomp.compile_profile(
        profile, capabilities.DEFAULT_CAPABILITIES, arches=(arch, *compat)
    )
    assert len(bpf) % 8 == 0 and seccomp.program_length(bpf) > 100
    # SYS_ADMIN brings back mount & co: a different program.
    more = seccomp.compile_profile(
        profile, capabilities.DEFAULT_CAPABILITIES | {"SYS_ADMIN"}, arches=(arch,)
    )
    assert more != seccomp.compile_profile(
        profile, capabilities.DEFAULT_CAPABILITIES, arches=(arch,)
    )


# --------------------------------------------------------------------- capabilities


@needs_root
def test_capability_sets_are_dockers_default(secroot: Path) -> None:
    fields = status_fields(secroot)
    for name in ("CapEff", "CapPrm", "CapBnd"):
        assert int(fields[name], 16) == DOCKER_DEFAULT_CAPS, name
    assert int(fields["CapInh"], 16) == 0
    assert int(fields["CapAmb"], 16) == 0

    weakened = status_fields(secroot, "--privileged")
    assert int(weakened["CapBnd"], 16) & ~DOCKER_DEFAULT_CAPS, "the check cannot see extra caps"
    added = status_fields(secroot, "--cap-add", "SYS_ADMIN", "--cap-drop", "NET_RAW")
    expected = (DOCKER_DEFAULT_CAPS | 1 << 21) & ~(1 << 13)
    assert int(added["CapEff"], 16) == expected


@needs_root
def test_non_root_user_ends_with_no_capabilities(secroot: Path) -> None:
    fields = status_fields(secroot, "--user", "1000:1000")
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    assert int(fields["CapBnd"], 16) == DOCKER_DEFAULT_CAPS
    assert fields["Groups"].strip() == ""


# --------------------------------------------------------------------- no_new_privs, setuid


@needs_root
def test_no_new_privs_is_set(secroot: Path) -> None:
    assert status_fields(secroot)["NoNewPrivs"].strip() == "1"
    relaxed = status_fields(secroot, "--security-opt", "no-new-privileges=false")
    assert relaxed["NoNewPrivs"].strip() == "0"


@needs_root
def test_setuid_binary_cannot_raise_privileges(secroot: Path) -> None:
    assert out(secroot, "--user", "1000", "/suid-euid").strip() == "euid=1000"
    relaxed = out(
        secroot, "--user", "1000", "--security-opt", "no-new-privileges=false", "/suid-euid"
    )
    assert relaxed.strip() == "euid=0", "the check cannot see a setuid escalation"


# --------------------------------------------------------------------- seccomp


@needs_root
def test_seccomp_filter_is_active(secroot: Path) -> None:
    assert status_fields(secroot)["Seccomp"].strip() == "2"
    assert status_fields(secroot, "--seccomp", "unconfined")["Seccomp"].strip() == "0"


ALWAYS_OPEN_WHEN_UNCONFINED = {
    "keyctl",
    "add_key",
    "bpf",
    "perf_event_open",
    "ptrace",
    "mount",
    "umount2",
    "unshare_user",
    "setns",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "quotactl",
    "io_uring_setup",
}
"""Calls whose harmless arguments fail with something other than EPERM once no
filter and no capability check stands in the way, on every kernel we test on
(not open_by_handle_at: a 6.x guest kernel answers EPERM to a bad fd)."""


@needs_root
def test_dangerous_syscalls_are_refused(secroot: Path) -> None:
    results = probe(secroot)
    assert len(results) >= 29
    allowed = {name: err for name, err in results.items() if err != EPERM}
    assert not allowed, f"not refused with EPERM: {allowed}"

    unconfined = probe(secroot, "--seccomp", "unconfined", "--cap-add", "ALL")
    still_closed = {n for n in ALWAYS_OPEN_WHEN_UNCONFINED if unconfined[n] == EPERM}
    assert not still_closed, f"the probe cannot see these holes: {still_closed}"


@needs_root
def test_busybox_mount_unshare_pivot_root_are_refused(secroot: Path) -> None:
    script = "mount -t tmpfs none /tmp; echo $?; unshare -U true; echo $?; unshare -m true; echo $?"
    assert out(secroot, script).split() == ["1", "1", "1"]
    assert out(secroot, "--privileged", script).split() == ["0", "0", "0"]


@needs_root
def test_user_seccomp_profile_in_docker_format(secroot: Path, tmp_path: Path) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["no_such_syscall_anywhere"], "action": "SCMP_ACT_ERRNO"},
        ],
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    script = "mkdir /tmp/x 2>&1; echo $?"
    assert "Permission denied" in out(secroot, "--seccomp", str(path), script)
    assert out(secroot, "--seccomp", "unconfined", script).strip() == "0"
    bad = run_vortex(
        "run", "--no-tty", "--seccomp", str(tmp_path / "nope.json"), str(secroot), "true"
    )
    assert bad.returncode == 125 and b"no such file" in bad.stderr


# --------------------------------------------------------------------- paths


@needs_root
def test_masked_paths_are_empty(secroot: Path) -> None:
    present = [
        p for p in ("/proc/keys", "/proc/timer_list", "/proc/sched_debug") if os.path.isfile(p)
    ]
    dirs = [p for p in ("/sys/firmware", "/proc/acpi", "/proc/scsi") if os.path.isdir(p)]
    if not present and not dirs:
        pytest.skip("this kernel has none of the masked paths")
    script = "; ".join(
        [f"echo {p} $(wc -c < {p})" for p in present]
        + [f"echo {d} $(ls {d} | wc -l)" for d in dirs]
    )
    masked = dict(line.split() for line in out(secroot, script).splitlines())
    assert all(v == "0" for v in masked.values()), masked
    unmasked = dict(
        line.split() for line in out(secroot, "--security-opt", "unmask=ALL", script).splitlines()
    )
    assert any(v != "0" for v in unmasked.values()), "the check cannot see an unmasked path"


@needs_root
def test_readonly_paths(secroot: Path) -> None:
    script = (
        "(echo vortex > /proc/sys/kernel/domainname) 2>&1; echo $?; "
        "(echo h > /proc/sysrq-trigger) 2>&1; echo $?"
    )
    assert out(secroot, script).split()[-2:] != ["0", "0"]
    assert "Read-only file system" in out(secroot, script)
    ro = "grep -c ' /proc/sys ro' /proc/self/mountinfo"
    assert int(out(secroot, ro)) >= 1
    assert run(secroot, "--security-opt", "unmask=ALL", ro).stdout.strip() == b"0"


@needs_root
def test_read_only_root_with_writable_tmp(secroot: Path) -> None:
    script = (
        "touch /vortex-ro-probe 2>/dev/null; echo $?; touch /tmp/ok; echo $?; "
        "rm -f /vortex-ro-probe"
    )
    assert out(secroot, "--read-only", script).split() == ["1", "0"]
    assert out(secroot, script).split() == ["0", "0"]
    assert not (secroot / "vortex-ro-probe").exists()


@needs_root
def test_old_root_and_host_pids_are_gone(secroot: Path) -> None:
    text = out(secroot, "ls /proc | grep -c '^[0-9]'; ls /tmp/pytest-of-root 2>&1 | head -1")
    count, missing = text.splitlines()
    assert int(count) <= 3
    assert "No such file" in missing


# --------------------------------------------------------------------- devices, kernel log


@needs_root
def test_mknod_device_cannot_be_opened(secroot: Path) -> None:
    if not os.path.exists("/dev/loop0") or not stat.S_ISBLK(os.stat("/dev/loop0").st_mode):
        pytest.skip("needs /dev/loop0 on the host")
    script = "mknod /dev/vx-loop b 7 0 && head -c 1 /dev/vx-loop >/dev/null; echo $?"
    assert out(secroot, script).strip() != "0"
    assert out(secroot, "--privileged", script).strip() == "0", "the check cannot see a device"


@needs_root
@pytest.mark.cgroup2
def test_mknod_device_cannot_be_opened_on_cgroup2(secroot: Path) -> None:
    """The same escape on a pure v2 host (the VM suite), where no devices cgroup
    exists: the nodev mounts alone must stop it."""
    # A second /dev/null (1:3): allowed by any device list, so only nodev stops it.
    script = "mknod /dev/vx-null c 1 3 && cat /dev/vx-null; echo $?"
    assert out(secroot, script).strip() != "0"
    assert out(secroot, "--privileged", script).strip() == "0", "the check cannot see a device"
    test_dangerous_syscalls_are_refused(secroot)
    test_capability_sets_are_dockers_default(secroot)


@needs_root
def test_nodev_stops_even_an_allowed_device(secroot: Path) -> None:
    script = "mknod /dev/vx-null c 1 3 && cat /dev/vx-null; echo $?"
    assert out(secroot, script).strip() != "0"
    assert out(secroot, "--privileged", script).strip() == "0", "the check cannot see a device"


@needs_root
def test_kernel_log_is_unreadable(secroot: Path) -> None:
    assert out(secroot, "dmesg >/dev/null 2>&1; echo $?").strip() != "0"
    # Weakened: the capability that would let it through is there under --privileged.
    assert int(status_fields(secroot, "--privileged")["CapEff"], 16) >> 34 & 1


# --------------------------------------------------------------------- leaks, rlimits


@needs_root
def test_no_file_descriptor_leaks(secroot: Path) -> None:
    listing = "ls /proc/self/fd | tr '\\n' ' '"
    # ls itself holds one fd (3) open on the directory it lists.
    assert out(secroot, listing).split() == ["0", "1", "2", "3"]
    assert "5" in out(secroot, "exec 5</dev/null; " + listing).split(), "the check cannot see an fd"


@needs_root
def test_environment_is_exactly_the_spec(secroot: Path) -> None:
    env = dict(os.environ, VORTEX_HOST_SECRET="leak")
    result = run_vortex("run", "--no-tty", str(secroot), "env", env=env)
    assert result.returncode == 0, result.stderr.decode()
    names = {line.split("=", 1)[0] for line in result.stdout.decode().split()}
    assert names == {"PATH"}
    with_var = run_vortex(
        "run", "--no-tty", "-e", "VORTEX_HOST_SECRET=x", str(secroot), "env", env=env
    )
    assert b"VORTEX_HOST_SECRET" in with_var.stdout, "the check cannot see a variable"


@needs_root
def test_rlimits(secroot: Path) -> None:
    assert out(secroot, "ulimit -n").strip() == "1024"
    assert out(secroot, "--ulimit", "nofile=512:1000", "ulimit -n; ulimit -Hn").split() == [
        "512",
        "1000",
    ]


@needs_root
@pytest.mark.anyio
async def test_library_gets_the_defaults_and_a_v1_device_allow_list(secroot: Path) -> None:
    from vortex import ContainerSpec, Runtime, Stdio, hookimpl
    from vortex.container import Container
    from vortex.security import devices

    if devices.devices_hierarchy() is None:
        pytest.skip("no cgroup v1 devices hierarchy (v2: tests/test_cgroup2_devices.py)")
    seen: dict[str, str] = {}

    class Spy:
        __name__ = "spy"

        @hookimpl(trylast=True)
        def vortex_post_cgroup(self, container: Container) -> None:
            directory = container.plugin_data.get("security.devices")
            assert isinstance(directory, str)
            with open(os.path.join(directory, "devices.list"), encoding="ascii") as f:
                seen["list"] = f.read()
            with open(os.path.join(directory, "cgroup.procs"), encoding="ascii") as f:
                seen["procs"] = f.read()

    async with Runtime(plugins=[Spy()], entry_points=False) as runtime:
        result = await runtime.run(
            ContainerSpec(
                rootfs=secroot,
                command=["/bin/grep", "-E", "CapEff|NoNewPrivs|Seccomp:", "/proc/self/status"],
                stdout=Stdio.CAPTURE,
            )
        )
    assert result.exit_code == 0
    assert result.stdout is not None
    fields = dict(line.split(":\t") for line in result.stdout.decode().splitlines())
    assert int(fields["CapEff"], 16) == DOCKER_DEFAULT_CAPS
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
    assert set(seen["list"].split("\n")) - {""} == set(devices.ALLOWED_DEVICES)
    assert seen["procs"].strip(), "the init is not in the devices cgroup"


@needs_root
def test_host_pids_cannot_be_signalled(secroot: Path) -> None:
    host_pid = os.getpid()  # this test process: alive, and certainly not in the container
    script = f"kill -0 {host_pid} 2>/dev/null; echo $?; kill -0 1; echo $?"
    outside, inside = out(secroot, script).split()
    assert outside == "1", "a host PID is reachable from the container"
    assert inside == "0", "the check cannot see a reachable PID"


@needs_root
def test_cgroup_escape_is_impossible(secroot: Path) -> None:
    # Its own cgroup is the root of its cgroup namespace ...
    lines = out(secroot, "cat /proc/self/cgroup").split()
    assert lines and all(line.endswith(":/") for line in lines), lines
    # ... and no cgroup filesystem can be mounted to reach the files above it.
    script = "mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg 2>/dev/null; echo $?"
    assert out(secroot, script).strip() != "0"
    assert out(secroot, "--privileged", script).strip() == "0", "the check cannot see a mount"


@needs_root
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cap-add", "SYS_GODMODE"], "is not a capability"),
        (["--ulimit", "nofile=10:5"], "soft limit exceeds"),
        (["--security-opt", "label=disable"], "is not supported"),
        (["--seccomp", "/nonexistent/profile.json"], "no such file"),
        (["--no-plugin", "security", "--cap-add", "NET_ADMIN"], "need the 'security' plugin"),
    ],
)
def test_bad_security_flags_are_one_line_errors(
    secroot: Path, flags: list[str], message: str
) -> None:
    result = run_vortex("run", "--no-tty", *flags, str(secroot), "true")
    assert result.returncode == 125
    assert message in result.stderr.decode()
    assert len(result.stderr.decode().strip().splitlines()) == 1


def test_userns_ranges() -> None:
    from vortex.security.options import user_namespace_range

    assert user_namespace_range("200000:1000") == ((200000, 1000), (200000, 1000))
    assert user_namespace_range("300000") == ((300000, 65536), (300000, 65536))
    (uid, uids), _ = user_namespace_range("auto")
    assert uid > 0 and uids > 0
    with pytest.raises(SpecError, match="HOSTID"):
        user_namespace_range("lots")
    with pytest.raises(SpecError, match="above 0"):
        user_namespace_range("0:10")


@pytest.fixture(scope="module")
def userns_root(secroot: Path) -> Iterator[Path]:
    """The probe rootfs where unprivileged host ids can reach it (pytest's tmp is 0700)."""
    with reachable_copy(secroot, "vortex-userns-") as copy:
        yield copy


@needs_root
def test_userns_refuses_an_unreachable_rootfs(secroot: Path) -> None:
    result = run_vortex("run", "--no-tty", "--userns", "auto", str(secroot), "true")
    assert result.returncode == 125
    assert b"is not searchable" in result.stderr


@needs_root
@pytest.mark.parametrize("extra", [[], ["--user", "5"]])
def test_user_namespace_root_is_an_unprivileged_host_id(
    userns_root: Path, extra: list[str]
) -> None:
    secroot = userns_root
    name = f"vx-userns-{os.getpid()}-{len(extra)}"
    script = f"cat /proc/self/uid_map; id -u; touch /tmp/{name}"
    probe_file = secroot / "tmp" / name
    try:
        text = out(secroot, "--userns", "250000:65536", *extra, script).split()
        assert text[:3] == ["0", "250000", "65536"]
        assert text[3] == ("5" if extra[:1] == ["--user"] else "0")
        assert probe_file.stat().st_uid == 250000 + int(text[3]), "root inside is root outside"
        probe_file.unlink()
        # Weakened: without a user namespace, root inside is root on the host.
        out(secroot, *extra, script)
        assert probe_file.stat().st_uid == int(text[3])
    finally:
        probe_file.unlink(missing_ok=True)


@needs_root
def test_user_namespace_with_read_only_root(userns_root: Path) -> None:
    script = "cat /proc/self/uid_map; touch /x 2>/dev/null; echo $?; touch /tmp/x; echo $?"
    text = out(userns_root, "--userns", "250000:65536", "--read-only", script).split()
    assert text == ["0", "250000", "65536", "1", "0"]


@needs_root
def test_stale_devices_cgroup_of_a_dead_runtime_is_swept(secroot: Path) -> None:
    from vortex.security import devices

    hierarchy = devices.devices_hierarchy()
    if hierarchy is None:
        pytest.skip("no cgroup v1 devices hierarchy")
    stale = Path(hierarchy, "vortex", f"0stale{os.getpid():010d}")
    stale.mkdir(parents=True)
    try:
        assert out(secroot, "true") == ""
        assert not stale.exists(), "a devices dir without its container was left behind"
    finally:
        if stale.exists():
            stale.rmdir()
