"""Preflight against this machine: a fake nvidia-smi (and the fake
nvidia-container-runtime-hook the lab uses) on PATH; the real docker, ip, ss, df, getent."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.render.shell import GpuExpectation, PreflightSpec, preflight

from .conftest import LoopFactory, needs_root, run_script, write_exe

pytestmark = pytest.mark.scripts


def host_nic() -> tuple[str, str]:
    """(interface, IPv4 address) of the first non-loopback interface with an address."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        fields = line.split()
        if fields[1] != "lo":
            return fields[1], fields[3].split("/")[0]
    pytest.skip("no non-loopback IPv4 interface on this machine")


@pytest.fixture
def gpu_bin(fake_bin: Path) -> Path:
    """Two H20s as nvidia-smi's CSV query prints them, plus the lab's fake hook."""
    needs_root()
    if shutil.which("docker") is None:
        pytest.skip("docker client missing (tools/ensure-docker.sh)")
    write_exe(
        fake_bin / "nvidia-smi",
        "#!/bin/sh\n"
        'case "$*" in *--query-gpu=name,memory.total,driver_version*) ;;'
        ' *) echo "unexpected: $*" >&2; exit 2 ;; esac\n'
        # A notice on stderr (the lab's fake marks itself SIMULATED there) must not be
        # parsed as a GPU row.
        "echo 'nvidia-smi: a notice on stderr' >&2\n"
        "echo 'NVIDIA H20, 97871, 550.54.15'\necho 'NVIDIA H20, 97871, 550.54.15'\n",
    )
    write_exe(fake_bin / "nvidia-container-runtime-hook", "#!/bin/sh\ncat >/dev/null\n")
    return fake_bin


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A TCP port held by this test (an engine that is not ours)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def spec(tmp_path: Path, **kw: Any) -> PreflightSpec:
    nic, ip = host_nic()
    args: dict[str, Any] = {
        "host": "lab-1",
        "weights_path": str(tmp_path / "models" / "tiny"),
        "gpus": GpuExpectation(count=2, model="h20", memory_gib=96),
        "nic": nic,
        "address": ip,
        "multi_node": True,
        "needed_bytes": 1024**3,
        "ports": (free_port(),),
        "own_containers": ("vllm-cluster-test-not-running",),
        "owner": "vllm-cluster/test",
        "min_shm_bytes": 1024**2,
        "required_commands": ("python3",),
        "extra_facts": {"role": "head"},
    }
    args.update(kw)
    return PreflightSpec(**args)


def test_matching_expectations_pass_with_facts(gpu_bin: Path, tmp_path: Path) -> None:
    s = spec(tmp_path)
    proc = run_script(preflight(s), path_prefix=gpu_bin)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    facts = json.loads(proc.stdout)
    assert facts["gpu_count"] == 2
    assert facts["gpus"][0] == {"name": "NVIDIA H20", "memory_mib": 97871}
    assert facts["driver_version"] == "550.54.15"
    assert facts["docker_version"]
    assert facts["docker_gpu_support"] == "nvidia-container-runtime-hook"
    assert facts["nic"] == s.nic
    assert s.address in facts["nic_ips"]
    assert facts["disk_path"] == str(tmp_path)
    assert facts["disk_avail_bytes"] > 1024**3
    assert facts["ports"] == {str(s.ports[0]): "free"}
    assert facts["role"] == "head"
    assert "[lab-1] preflight: gpus: 2 x NVIDIA H20" in proc.stderr
    assert "preflight lab-1:" not in proc.stderr


def test_disk_is_judged_by_the_device_storage_will_mount(
    gpu_bin: Path, tmp_path: Path, loop_device: LoopFactory
) -> None:
    """Weights under a storage mount point that is not mounted yet: the disk that counts is
    the storage device's whole size (through a by-id style link, as configured), not the
    free space of the root filesystem under the empty directory."""
    dev = loop_device(64)
    link = tmp_path / "by-id" / "lab-spare-disk"
    link.parent.mkdir()
    link.symlink_to(dev)
    mp = tmp_path / "data01"
    weights = str(mp / "models" / "tiny")
    fits = spec(tmp_path, weights_path=weights, storage_device=str(link),
                storage_mount_point=str(mp), needed_bytes=32 * 1024**2)  # fmt: skip
    proc = run_script(preflight(fits), path_prefix=gpu_bin)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["disk_source"] == f"device:{link}"
    assert facts["disk_avail_bytes"] == 64 * 1024**2
    too_big = spec(tmp_path, weights_path=weights, storage_device=str(link),
                   storage_mount_point=str(mp), needed_bytes=65 * 1024**2)  # fmt: skip
    proc = run_script(preflight(too_big), path_prefix=gpu_bin)
    assert proc.returncode == 1
    assert "only 0.1 GiB free at" in proc.stderr and "need 0.1 GiB more" in proc.stderr


def test_all_problems_listed(gpu_bin: Path, tmp_path: Path, listening_port: int) -> None:
    s = spec(
        tmp_path,
        gpus=GpuExpectation(count=8, model="H100", memory_gib=80),
        nic="vllmtest9",
        needed_bytes=10 * 1024**5,  # 10 PiB
        ports=(listening_port,),
        required_commands=("python3", "vllm-cluster-no-such-tool"),
    )
    proc = run_script(preflight(s), path_prefix=gpu_bin)
    assert proc.returncode == 1
    assert proc.stdout == ""
    problems = [ln for ln in proc.stderr.splitlines() if ln.startswith("preflight lab-1: ")]
    text = "\n".join(problems)
    for want in (
        "found 2 GPUs, the config expects 8",
        "GPU model does not contain 'H100'",
        "GPU memory differs from the configured 80 GiB by more than 2%",
        "network interface vllmtest9 not found",
        "the weights need 10485760.0 GiB more",
        f"port {listening_port} is already in use",
        "command vllm-cluster-no-such-tool not found",
    ):
        assert want in text, f"{want!r} not in:\n{text}"
    assert all(". Fix: " in ln for ln in problems), text
    assert len(problems) == 7
    assert "FAILED with 7 problem(s)" in proc.stderr


def test_missing_nvidia_smi_and_gpu_support(fake_bin: Path, tmp_path: Path) -> None:
    needs_root()
    # PATH without the fake tools: this machine has no GPU driver and no NVIDIA hook.
    if shutil.which("nvidia-smi") or shutil.which("nvidia-container-runtime-hook"):
        pytest.skip("this machine has NVIDIA tools installed")
    proc = run_script(preflight(spec(tmp_path)))
    assert proc.returncode == 1
    assert "nvidia-smi not found. Fix: install the NVIDIA driver" in proc.stderr
    assert "Docker cannot start GPU containers" in proc.stderr


@pytest.mark.parametrize("docker_optional", [True, False])
def test_a_host_without_docker_passes_only_when_the_docker_step_installs_it(
    gpu_bin: Path, tmp_path: Path, docker_optional: bool
) -> None:
    """A freshly racked server (docker.install: true) has no Docker yet: a warning then,
    a problem otherwise. No address configured: only the NIC is checked."""
    # /usr/bin without the docker client (links to everything else).
    sysbin = tmp_path / "usr-bin-without-docker"
    sysbin.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name != "docker":
            (sysbin / tool.name).symlink_to(tool)
    no_docker = f"{gpu_bin}:{sysbin}"
    assert shutil.which("docker", path=no_docker) is None, "docker is on the stripped PATH"
    s = spec(tmp_path, docker_optional=docker_optional, address=None)
    proc = run_script(preflight(s), env={"PATH": no_docker})
    if docker_optional:
        assert proc.returncode == 0, proc.stderr
        assert "docker not installed; the docker step installs it (docker.install)" in (proc.stderr)
        assert json.loads(proc.stdout)["docker_version"] == ""
    else:
        assert proc.returncode == 1
        assert "docker not found" in proc.stderr
        assert "set docker.install: true with docker.deb_dir" in proc.stderr


def test_address_on_another_nic(gpu_bin: Path, tmp_path: Path) -> None:
    nic, ip = host_nic()
    proc = run_script(preflight(spec(tmp_path, nic="lo", address=ip)), path_prefix=gpu_bin)
    assert proc.returncode == 1
    assert f"address {ip} ({ip}) is on {nic}, not on nic lo" in proc.stderr
    assert f"Fix: set nic of host lab-1 to {nic}" in proc.stderr
    assert "nic is the loopback interface" in proc.stderr


def test_dns_name_resolved_with_getent(gpu_bin: Path, tmp_path: Path) -> None:
    proc = run_script(
        preflight(spec(tmp_path, nic="lo", address="localhost", multi_node=False)),
        path_prefix=gpu_bin,
    )
    assert proc.returncode == 0, proc.stderr
    assert "127.0.0.1" in json.loads(proc.stdout)["address_ips"]


def test_small_shm_fails_only_with_ipc_host(gpu_bin: Path, tmp_path: Path) -> None:
    huge = 1024**5
    fail = run_script(preflight(spec(tmp_path, min_shm_bytes=huge)), path_prefix=gpu_bin)
    assert fail.returncode == 1
    assert "/dev/shm is" in fail.stderr and "--ipc host" in fail.stderr
    warn = run_script(
        preflight(spec(tmp_path, min_shm_bytes=huge, ipc_host=False)), path_prefix=gpu_bin
    )
    assert warn.returncode == 0, warn.stderr
    assert "preflight lab-1: warning: /dev/shm is" in warn.stderr


def test_existing_weights_reduce_the_need(gpu_bin: Path, tmp_path: Path) -> None:
    """A resumed download needs only what is missing."""
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "part.safetensors").write_bytes(b"x" * 1024 * 1024)
    proc = run_script(preflight(spec(tmp_path, needed_bytes=1024 * 1024)), path_prefix=gpu_bin)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["weights_existing_bytes"] >= 1024 * 1024
    assert facts["disk_path"] == str(model)


EMPTY_IMAGE = "vllm-cluster-test-empty:1"


@pytest.fixture
def named_containers(gpu_bin: Path) -> Iterator[dict[str, str]]:
    """Created (never started) containers under four names, one per ownership case; the
    image is an empty filesystem imported here (no registry is reachable)."""
    subprocess.run(
        ["docker", "import", "-", EMPTY_IMAGE],
        input=subprocess.run(["tar", "cf", "-", "-T", "/dev/null"], capture_output=True).stdout,
        capture_output=True,
        check=True,
    )
    tag = secrets.token_hex(4)
    names = {case: f"pftest-{tag}-{case}" for case in ("ours", "legacy", "other", "hand")}
    labels = {
        "ours": ["managed-by=vllm-cluster", "vllm-cluster.stack=vllm-cluster/test"],
        "legacy": ["managed-by=vllm-cluster"],
        "other": ["managed-by=vllm-cluster", "vllm-cluster.stack=vllm-cluster/prod"],
        "hand": [],
    }
    try:
        for case, name in names.items():
            flags = [arg for label in labels[case] for arg in ("--label", label)]
            subprocess.run(
                ["docker", "create", "--name", name, *flags, EMPTY_IMAGE, "/none"],
                capture_output=True,
                check=True,
            )
        yield names
    finally:
        subprocess.run(["docker", "rm", "-f", *names.values()], capture_output=True)


def test_containers_under_our_names_must_be_this_stacks(
    gpu_bin: Path, tmp_path: Path, named_containers: dict[str, str]
) -> None:
    own = tuple(named_containers.values())
    proc = run_script(preflight(spec(tmp_path, own_containers=own)), path_prefix=gpu_bin)
    assert proc.returncode == 1
    problems = [ln for ln in proc.stderr.splitlines() if ln.startswith("preflight lab-1: ")]
    other, hand = named_containers["other"], named_containers["hand"]
    assert problems == [
        f"preflight lab-1: container {other} (created) belongs to stack vllm-cluster/prod, "
        "not to vllm-cluster/test. Fix: destroy that stack first (pulumi destroy --stack prod "
        f"in its project), or remove the container: docker rm -f {other}",
        f"preflight lab-1: container {hand} (created) exists and was not made by vllm-cluster. "
        f"Fix: remove or rename it (docker rm -f {hand}): this deployment needs the name, "
        "and an engine of its own would share the GPUs",
    ], proc.stderr
    assert f"container {named_containers['ours']}: ours (created)" in proc.stderr
    assert f"container {named_containers['legacy']}: ours-unlabelled (created)" in proc.stderr
    # Read-only: every container is still there.
    listed = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True
    ).stdout.split()
    assert set(own) <= set(listed)


def test_this_stacks_containers_pass_and_are_reported(
    gpu_bin: Path, tmp_path: Path, named_containers: dict[str, str]
) -> None:
    own = (named_containers["ours"], named_containers["legacy"], "pftest-absent")
    proc = run_script(preflight(spec(tmp_path, own_containers=own)), path_prefix=gpu_bin)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["containers"] == {
        named_containers["ours"]: "ours",
        named_containers["legacy"]: "ours-unlabelled",
    }


RUNNABLE_IMAGE = "vllm-cluster-test-usr:1"


@pytest.fixture
def running_own_container(gpu_bin: Path, tmp_path: Path) -> Iterator[str]:
    """A running container of this stack: an image of only the usr-merge links, run with
    this machine's /usr mounted read-only (no registry is reachable here)."""
    rootfs = tmp_path / "usr-links.tar"
    with tarfile.open(rootfs, "w") as tar:
        for name in ("bin", "lib", "lib64", "sbin"):
            link = tarfile.TarInfo(name)
            link.type = tarfile.SYMTYPE
            link.linkname = f"usr/{name}"
            tar.addfile(link)
    subprocess.run(
        ["docker", "import", str(rootfs), RUNNABLE_IMAGE], capture_output=True, check=True
    )
    name = f"pftest-{secrets.token_hex(4)}-running"
    try:
        subprocess.run(
            ["docker", "run", "-d", "--name", name, "-v", "/usr:/usr:ro",
             "--label", "managed-by=vllm-cluster",
             "--label", "vllm-cluster.stack=vllm-cluster/test",
             RUNNABLE_IMAGE, "/usr/bin/sleep", "300"],
            capture_output=True, check=True,
        )  # fmt: skip
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_a_port_held_while_our_container_runs_is_ours(
    gpu_bin: Path, tmp_path: Path, listening_port: int, running_own_container: str
) -> None:
    own = ("pftest-absent", running_own_container)
    s = spec(tmp_path, own_containers=own, ports=(listening_port,))
    proc = run_script(preflight(s), path_prefix=gpu_bin)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["ports"] == {str(listening_port): f"ours:{running_own_container}"}
    assert facts["containers"] == {running_own_container: "ours"}
