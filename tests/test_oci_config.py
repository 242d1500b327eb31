"""OCI bundles: config.json fields applied in real containers, and refused with one line.

Every security field is set through config.json and observed from inside
the container, then the same probe runs with the field left out or relaxed,
to show the check sees the difference.  Every input a user can get wrong is
an error naming its JSON path, exit status 125, and leaves nothing behind
(the autouse ``no_leaks`` fixture).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import reachable_copy, run_vortex
from vortex.errors import OciConfigError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"]
CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
CAP_BITS = {"CHOWN": 0, "KILL": 5, "NET_BIND_SERVICE": 10, "MKNOD": 27, "AUDIT_WRITE": 29}
SCRATCH = {
    "destination": "/scratch",
    "type": "tmpfs",
    "source": "tmpfs",
    "options": ["nosuid", "mode=1777", "size=1m"],
}


def runc_like_config(script: str) -> dict[str, Any]:
    """A config.json shaped like ``runc spec`` output, running ``sh -c script``."""
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", script],
            "env": list(ENV),
            "cwd": "/",
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
            dict(SCRATCH),
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [
                {"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
        },
    }


Bundle = Callable[..., Path]


@pytest.fixture
def bundle(rootfs: Path, tmp_path: Path) -> Bundle:
    """Write a bundle (config.json, rootfs -> the session rootfs) and return its path."""
    counter = iter(range(1000))

    def make(config: dict[str, Any] | str) -> Path:
        directory = tmp_path / f"bundle{next(counter)}"
        directory.mkdir()
        (directory / "rootfs").symlink_to(rootfs)
        text = config if isinstance(config, str) else json.dumps(config)
        (directory / "config.json").write_text(text, encoding="utf-8")
        return directory

    return make


def run_bundle(directory: Path, *flags: str) -> subprocess.CompletedProcess[bytes]:
    return run_vortex("run", "--bundle", str(directory), *flags)


def output(bundle: Bundle, config: dict[str, Any]) -> str:
    result = run_bundle(bundle(config))
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def status(bundle: Bundle, config: dict[str, Any]) -> dict[str, str]:
    text = output(bundle, config)
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def mask(*names: str) -> int:
    return sum(1 << CAP_BITS[n] for n in names)


def edited(script: str, edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    config = runc_like_config(script)
    edit(config)
    return config


# --------------------------------------------------------------------- fields take effect


@needs_root
def test_capability_sets_are_the_configs(bundle: Bundle) -> None:
    fields = status(bundle, runc_like_config("cat /proc/self/status"))
    expected = mask("AUDIT_WRITE", "KILL", "NET_BIND_SERVICE")
    for name in ("CapBnd", "CapEff", "CapPrm"):
        assert int(fields[name], 16) == expected, (name, fields[name])
    assert int(fields["CapInh"], 16) == 0 and int(fields["CapAmb"], 16) == 0
    # Weakened: a config that grants MKNOD shows it, so the check reads the real sets.
    more = [*CAPS, "CAP_MKNOD"]
    wide = edited(
        "cat /proc/self/status",
        lambda c: c["process"].update(
            capabilities={"bounding": more, "effective": more, "permitted": more}
        ),
    )
    assert int(status(bundle, wide)["CapEff"], 16) == expected | mask("MKNOD")


@needs_root
def test_ambient_capabilities_reach_a_non_root_user(bundle: Bundle) -> None:
    nbs = ["CAP_NET_BIND_SERVICE"]

    def as_user(ambient: list[str]) -> Callable[[dict[str, Any]], None]:
        def edit(config: dict[str, Any]) -> None:
            config["process"]["user"] = {"uid": 1000, "gid": 1000}
            config["process"]["capabilities"] = {
                "bounding": [*CAPS, "CAP_CHOWN"],
                "permitted": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],
                "effective": nbs,
                "inheritable": nbs,
                "ambient": ambient,
            }

        return edit

    fields = status(bundle, edited("cat /proc/self/status", as_user(nbs)))
    assert int(fields["CapBnd"], 16) == mask("AUDIT_WRITE", "KILL", "NET_BIND_SERVICE", "CHOWN")
    for name in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(fields[name], 16) == mask("NET_BIND_SERVICE"), (name, fields[name])
    # Weakened: without the ambient set, a non-root user keeps nothing across execve.
    fields = status(bundle, edited("cat /proc/self/status", as_user([])))
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapAmb"], 16) == 0


@needs_root
def test_no_new_privileges(bundle: Bundle) -> None:
    assert status(bundle, runc_like_config("cat /proc/self/status"))["NoNewPrivs"] == "1"
    off = edited("cat /proc/self/status", lambda c: c["process"].update(noNewPrivileges=False))
    assert status(bundle, off)["NoNewPrivs"] == "0"


@needs_root
@pytest.mark.parametrize("no_new_privileges", [True, False])
def test_seccomp_blocks_with_the_given_errno(bundle: Bundle, no_new_privileges: bool) -> None:
    script = "grep Seccomp: /proc/self/status; mkdir /scratch/d && echo made"
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 6},
        ],
    }

    def edit(config: dict[str, Any]) -> None:
        config["linux"]["seccomp"] = profile
        config["process"]["noNewPrivileges"] = no_new_privileges

    result = run_bundle(bundle(edited(script, edit)))
    assert result.returncode == 1, result.stderr.decode()
    assert b"Seccomp:\t2" in result.stdout
    assert b"No such device or address" in result.stderr  # ENXIO = 6, the errnoRet
    # Weakened: no seccomp section means no filter (the OCI contract).
    text = output(bundle, runc_like_config(script))
    assert "Seccomp:\t0" in text and "made" in text


@needs_root
def test_masked_and_readonly_paths(bundle: Bundle) -> None:
    script = (
        "wc -c < /proc/meminfo; ls /sys/kernel | wc -l; "
        "touch /scratch/f 2>/dev/null && echo writable || echo read-only"
    )

    def edit(config: dict[str, Any]) -> None:
        config["linux"]["maskedPaths"] = ["/proc/meminfo", "/sys/kernel"]
        config["linux"]["readonlyPaths"] = ["/scratch"]

    assert output(bundle, edited(script, edit)).split() == ["0", "0", "read-only"]

    def weaken(config: dict[str, Any]) -> None:
        del config["linux"]["maskedPaths"], config["linux"]["readonlyPaths"]

    size, entries, state = output(bundle, edited(script, weaken)).split()
    assert int(size) > 0 and int(entries) > 0 and state == "writable"


@needs_root
def test_readonly_root(bundle: Bundle) -> None:
    script = "touch /oci-probe 2>/dev/null && rm /oci-probe && echo rw || echo ro"
    assert output(bundle, runc_like_config(script)).strip() == "ro"
    writable = edited(script, lambda c: c["root"].update(readonly=False))
    assert output(bundle, writable).strip() == "rw"


@needs_root
def test_rlimits(bundle: Bundle) -> None:
    script = "ulimit -n; ulimit -Hn"

    def edit(config: dict[str, Any]) -> None:
        config["process"]["rlimits"] = [
            {"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 2**64 - 1},
        ]

    assert output(bundle, edited(script, edit)).split() == ["100", "200"]
    weakened = edited(script, lambda c: c["process"].pop("rlimits"))
    assert output(bundle, weakened).split()[0] != "100"


@needs_root
def test_user_groups_umask_and_oom_score(bundle: Bundle) -> None:
    script = "grep -E '^(Uid|Gid|Groups):' /proc/self/status; umask; cat /proc/self/oom_score_adj"

    def edit(config: dict[str, Any]) -> None:
        config["process"]["user"] = {
            "uid": 1000,
            "gid": 1001,
            "additionalGids": [2000, 2001],
            "umask": 0o027,
        }
        config["process"]["oomScoreAdj"] = 500

    text = output(bundle, edited(script, edit))
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    assert fields["Uid"].split() == ["1000"] * 4
    assert fields["Gid"].split() == ["1001"] * 4
    assert fields["Groups"].split() == ["2000", "2001"]
    assert text.splitlines()[-2:] == ["0027", "500"]
    # Weakened: root with no additionalGids has no supplementary group.
    text = output(bundle, runc_like_config(script))
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    assert fields["Uid"].split() == ["0"] * 4 and fields["Groups"].split() == []
    assert text.splitlines()[-1] != "500"


@needs_root
def test_hostname_and_exact_environment(bundle: Bundle) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["process"]["args"] = ["env"]
        config["process"]["env"] = [ENV[0], "ONLY=this", "EMPTY="]
        config["hostname"] = "oci-box"

    assert output(bundle, edited("", edit)).splitlines() == [ENV[0], "ONLY=this", "EMPTY="]
    assert output(bundle, runc_like_config("hostname")).strip() == "runc"


@needs_root
def test_devices_deny_all_makes_mknod_nodes_unusable(bundle: Bundle) -> None:
    script = "mknod /scratch/z c 1 5 && head -c 1 /scratch/z >/dev/null && echo opened"
    more = [*CAPS, "CAP_MKNOD"]

    def with_mknod(config: dict[str, Any]) -> None:
        config["process"]["capabilities"] = {"bounding": more, "effective": more, "permitted": more}

    result = run_bundle(bundle(edited(script, with_mknod)))
    assert result.returncode != 0 and b"opened" not in result.stdout

    # Weakened: no device rule at all means every device (runc's reading).
    def allow_all(config: dict[str, Any]) -> None:
        with_mknod(config)
        del config["linux"]["resources"]

    assert output(bundle, edited(script, allow_all)).strip() == "opened"


@needs_root
def test_bind_mount_read_only(bundle: Bundle, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("hello\n")
    script = "cat /data/file; touch /data/new 2>/dev/null && echo rw || echo ro"

    def mount(options: list[str]) -> Callable[[dict[str, Any]], None]:
        return lambda c: c["mounts"].append(
            {"destination": "/data", "type": "bind", "source": str(data), "options": options}
        )

    assert output(bundle, edited(script, mount(["rbind", "ro"]))).split() == ["hello", "ro"]
    assert output(bundle, edited(script, mount(["rbind", "rw"]))).split() == ["hello", "rw"]
    (data / "new").unlink()


@pytest.fixture
def reachable_rootfs(rootfs: Path) -> Iterator[Path]:
    """The rootfs where unprivileged host ids can reach it (pytest's tmp is 0700)."""
    with reachable_copy(rootfs, "vortex-oci-") as copy:
        yield copy


@needs_root
def test_uid_mappings(reachable_rootfs: Path, tmp_path: Path) -> None:
    def run(config: dict[str, Any]) -> str:
        config["root"]["path"] = str(reachable_rootfs)  # absolute, not in the bundle
        (tmp_path / "config.json").write_text(json.dumps(config))
        result = run_bundle(tmp_path)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    def userns(config: dict[str, Any]) -> None:
        config["linux"]["namespaces"].append({"type": "user"})
        config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 250000, "size": 65536}]
        config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 250000, "size": 65536}]

    script = "cat /proc/self/uid_map /proc/self/gid_map"
    assert run(edited(script, userns)).split() == ["0", "250000", "65536"] * 2
    # Weakened: without a user namespace, uid 0 inside is uid 0 outside.
    assert run(runc_like_config(script)).split()[:3] == ["0", "0", "4294967295"]


def cgroup_limits(memory_dir: str | None, pids_dir: str | None) -> tuple[str, str]:
    """(memory limit, pids.max) as the cgroup files say, on v1 or v2."""
    assert memory_dir is not None and pids_dir is not None
    names = ("memory.max", "memory.limit_in_bytes")
    memory_file = next(n for n in names if os.path.exists(f"{memory_dir}/{n}"))
    with open(f"{memory_dir}/{memory_file}", encoding="ascii") as f:
        memory = f.read().strip()
    with open(f"{pids_dir}/pids.max", encoding="ascii") as f:
        return memory, f.read().strip()


@needs_root
@pytest.mark.anyio
async def test_library_memory_and_pids_limits_in_the_cgroup(rootfs: Path, tmp_path: Path) -> None:
    from vortex import Runtime
    from vortex.oci import load_bundle

    config = runc_like_config("sleep 30")
    config["root"]["path"] = str(rootfs)
    config["linux"]["resources"].update(
        memory={"limit": 64 << 20, "swap": 64 << 20}, pids={"limit": 32}
    )

    async def read_limits(config: dict[str, Any]) -> tuple[str, str]:
        (tmp_path / "config.json").write_text(json.dumps(config))
        spec = load_bundle(tmp_path)
        assert spec.resources.memory == (
            config["linux"]["resources"].get("memory", {}).get("limit")
        )
        async with Runtime(entry_points=False) as runtime:
            container = await runtime.start(spec)
            try:
                cgroup = container.cgroup
                assert cgroup is not None
                from vortex.cgroups.v1 import V1Cgroup

                if isinstance(cgroup, V1Cgroup):
                    memory, pids = cgroup_limits(cgroup.path("memory"), cgroup.path("pids"))
                else:  # v2: one directory
                    directory = getattr(cgroup, "path", None)
                    memory, pids = cgroup_limits(directory, directory)
            finally:
                container.kill(signal.SIGKILL)
                await container.wait()
        return memory, pids

    assert await read_limits(config) == (str(64 << 20), "32")
    # Weakened: no limits in the config means none in the cgroup (no 100M default).
    del config["linux"]["resources"]["memory"], config["linux"]["resources"]["pids"]
    memory, pids = await read_limits(config)
    assert memory == "max" or int(memory) > 1 << 40, memory  # v2 "max", v1 2^63 - a page
    assert pids == "max"


@needs_root
def test_runc_spec_output_runs(rootfs: Path, tmp_path: Path) -> None:
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    subprocess.run(["runc", "spec"], cwd=tmp_path, check=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["root"]["path"] = str(rootfs)
    config["process"].update(terminal=False, args=["/bin/sh", "-c", "hostname; id -u"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_bundle(tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.split() == [b"runc", b"0"]


@needs_root
def test_exit_status_is_the_commands(bundle: Bundle) -> None:
    assert run_bundle(bundle(runc_like_config("exit 7"))).returncode == 7
    missing = edited("", lambda c: c["process"].update(args=["/nope"]))
    result = run_bundle(bundle(missing))
    assert result.returncode == 127 and b"/nope" in result.stderr


# --------------------------------------------------------------------- refused inputs


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """An edit that sets ``a.b[2].c`` to ``value`` (``...`` deletes it)."""

    def edit(config: dict[str, Any]) -> None:
        parts = path.replace("]", "").replace("[", ".").split(".")
        target: Any = config
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
        if value is ...:
            del target[last]
        elif isinstance(target, list) and last == len(target):
            target.append(value)
        else:
            target[last] = value

    return edit


BAD_CONFIGS = [
    ("ociVersion", "2.0.0", "ociVersion: not supported: '2.0.0'"),
    ("root", ..., "root: missing"),
    ("root.path", "nope", "root.path: "),
    ("linux.namespaces[6]", {"type": "foo"}, "linux.namespaces[6].type: unknown namespace"),
    (
        "linux.namespaces[0]",
        {"type": "pid", "path": "/proc/1/ns/pid"},
        "linux.namespaces[0].path: not supported: joining an existing namespace",
    ),
    ("linux.namespaces[6]", {"type": "time"}, "linux.namespaces[6].type: not supported"),
    ("linux.namespaces", [{"type": "pid"}], "linux.namespaces: not supported: no 'network'"),
    (
        "process.capabilities.bounding[0]",
        "CAP_GODMODE",
        "process.capabilities.bounding[0]: 'CAP_GODMODE' is not a capability",
    ),
    (
        "process.capabilities.effective",
        ["CAP_SYS_ADMIN"],
        "process.capabilities.effective: CAP_SYS_ADMIN: effective must be a subset",
    ),
    (
        "linux.seccomp",
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "BOOM"}]},
        "linux.seccomp.syscalls[0].action: unknown action 'BOOM'",
    ),
    (
        "linux.seccomp",
        {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PDP11"]},
        "linux.seccomp.architectures[0]: unknown seccomp architecture",
    ),
    (
        "linux.seccomp",
        {"defaultAction": "SCMP_ACT_NOTIFY"},
        "linux.seccomp.defaultAction: not supported: SCMP_ACT_NOTIFY",
    ),
    (
        "process.rlimits[0].type",
        "RLIMIT_FOO",
        "process.rlimits[0].type: unknown rlimit 'RLIMIT_FOO'",
    ),
    (
        "process.rlimits[0]",
        {"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5},
        "process.rlimits[0].soft: the soft limit of RLIMIT_NOFILE exceeds",
    ),
    (
        "mounts[7]",
        {"destination": "/x", "type": "overlay", "source": "o"},
        "mounts[7].type: not supported: mount type 'overlay'",
    ),
    (
        "mounts[7]",
        {"destination": "/x", "type": "bind", "source": "/", "options": ["rbind", "rshared"]},
        "mounts[7].options: not supported: propagation 'rshared'",
    ),
    ("mounts[5].options", ["rw"], "mounts[5].options"),  # /sys is always read-only
    ("process.foo", 1, "process.foo: unknown field"),
    ("linux.sysctl", {"net.ipv4.ip_forward": "1"}, "linux.sysctl: not supported"),
    ("hooks", {"prestart": [{"path": "/bin/true"}]}, "hooks.prestart: not supported"),
    (
        "linux.uidMappings",
        [{"containerID": 0, "hostID": 1000, "size": 1}],
        "linux.uidMappings: needs a user namespace",
    ),
    ("process.env[0]", "NOEQUALS", "process.env[0]: 'NOEQUALS' has no '='"),
    ("process.args", [], "process.args: is empty"),
    ("process.cwd", "relative", "process.cwd: 'relative' must be an absolute path"),
    ("process.user.uid", -1, "process.user.uid: -1 is out of range"),
    ("process.apparmorProfile", "docker-default", "process.apparmorProfile: not supported"),
    (
        "linux.devices",
        [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
        "linux.devices[0]: not supported: device /dev/fuse",
    ),
    (
        "linux.resources.devices[1]",
        {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
        "linux.resources.devices[1]: not supported: allowing c 10:200 rwm",
    ),
    ("linux.resources.memory", {"swappiness": 0}, "linux.resources.memory.swappiness"),
    ("linux.resources.cpu", {"quota": 50000, "period": 50000}, "linux.resources.cpu.period"),
    ("hostname", "a.b", "hostname: 'a.b' is invalid"),
]


@needs_root
@pytest.mark.parametrize(("path", "value", "message"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_a_one_line_error(
    bundle: Bundle, path: str, value: object, message: str
) -> None:
    config = copy.deepcopy(runc_like_config("true"))
    _set(path, value)(config)
    result = run_bundle(bundle(config))
    stderr = result.stderr.decode()
    assert result.returncode == 125, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("vortex: config.json: "), stderr
    assert message in stderr, stderr


@needs_root
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "config.json: no such file"),
        ("{not json", "config.json: not valid JSON"),
        ("[]", "config.json: must be an object"),
    ],
)
def test_unreadable_config_is_a_one_line_error(
    tmp_path: Path, text: str | None, message: str
) -> None:
    if text is not None:
        (tmp_path / "config.json").write_text(text)
    result = run_bundle(tmp_path)
    assert result.returncode == 125
    assert message in result.stderr.decode()
    assert len(result.stderr.decode().strip().splitlines()) == 1


@needs_root
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--memory", "64M"], "--memory cannot be combined with --bundle"),
        (["--cap-add", "SYS_ADMIN"], "--cap-add cannot be combined with --bundle"),
        (["--no-plugin", "security"], "--no-plugin security cannot be combined"),
        (["/rootfs", "true"], "--bundle takes no ROOTFS or COMMAND"),
    ],
)
def test_flags_that_would_change_the_bundle_are_refused(
    bundle: Bundle, flags: list[str], message: str
) -> None:
    result = run_bundle(bundle(runc_like_config("true")), *flags)
    assert result.returncode == 125
    assert message in result.stderr.decode()


def test_missing_bundle_directory(tmp_path: Path) -> None:
    from vortex.oci import load_bundle

    with pytest.raises(OciConfigError, match="is not a directory"):
        load_bundle(tmp_path / "nope")


def test_seccomp_conversion_makes_the_oci_errno_default_explicit() -> None:
    from vortex.oci._fields import Field
    from vortex.oci.seccomp import convert

    profile = convert(
        Field(
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 38,
                "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
                    {
                        "names": ["personality"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}],
                    },
                ],
            },
            "linux.seccomp",
        )
    )
    assert profile["defaultErrnoRet"] == 38
    # The runtime-spec: a rule's errnoRet defaults to EPERM, not to defaultErrnoRet.
    assert profile["syscalls"][1]["errnoRet"] == 1
    assert profile["syscalls"][2]["args"] == [
        {"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}
    ]
    with pytest.raises(OciConfigError, match=r"syscalls\[0\]\.errnoRet: only SCMP_ACT_ERRNO"):
        convert(
            Field(
                {
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["x"], "action": "SCMP_ACT_KILL", "errnoRet": 1}],
                },
                "linux.seccomp",
            )
        )
