"""Lab hosts are real SSH + Docker servers: pinned host keys, hardened sshd, SFTP, many
parallel sessions, and an inner dockerd whose data is on disk (overlay2), not in RAM."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.lab_stack import containers_on, host_exec, lab_serving_lock
from tests.lab import labutil as lu

pytestmark = pytest.mark.lab


def test_inventory_follows_the_contract(lab: lu.Inventory) -> None:
    assert lab["network"] == "vllm-lab"
    assert lab["subnet"] == "172.31.250.0/24"
    assert Path(lab["ssh_private_key"]).stat().st_mode & 0o077 == 0, (
        "private key readable by others"
    )
    known = Path(lab["known_hosts"]).read_text().splitlines()
    for i, host in enumerate(lab["hosts"], start=1):
        assert host["name"] == f"lab-{i}"
        assert host["container"] == f"vllm-lab-{i}"
        assert host["address"] == f"172.31.250.{10 + i}"
        assert (host["nic"], host["user"], host["port"]) == ("eth0", "root", 22)
        assert host["host_key"].startswith("ssh-ed25519 ")
        assert f"{host['address']} {host['host_key']}" in known
        assert host["gpu"]["count"] >= 1
    keys = [h["host_key"] for h in lab["hosts"]]
    assert len(set(keys)) == len(keys), "every host must have its own host key"


def test_ssh_with_the_pinned_host_key(lab: lu.Inventory) -> None:
    for host in lab["hosts"]:
        out = lu.ssh(lab, host, "hostname; ip -4 -o addr show dev eth0").stdout
        assert out.splitlines()[0] == host["name"]
        assert f"inet {host['address']}/24" in out


def test_ssh_fails_with_a_wrong_known_hosts(lab: lu.Inventory, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    other_key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    for host in lab["hosts"]:
        wrong = tmp_path / f"known_hosts.{host['name']}"
        wrong.write_text(f"{host['address']} {other_key}\n")
        proc = lu.ssh(lab, host, "true", check=False, known_hosts=str(wrong))
        assert proc.returncode == 255
        assert "Host key verification failed" in proc.stderr
        empty = tmp_path / "empty"
        empty.write_text("")
        proc = lu.ssh(lab, host, "true", check=False, known_hosts=str(empty))
        assert proc.returncode == 255, "an unknown host key must be refused, not accepted"


def test_sshd_is_key_only_with_sftp_and_raised_max_startups(lab: lu.Inventory) -> None:
    for host in lab["hosts"]:
        conf = lu.ssh(lab, host, "sshd -T").stdout.lower().splitlines()
        assert "passwordauthentication no" in conf
        assert "kbdinteractiveauthentication no" in conf
        assert "permitrootlogin without-password" in conf
        assert "maxstartups 100:30:200" in conf
        assert "subsystem sftp /usr/lib/openssh/sftp-server" in conf


def test_sftp_round_trip(lab: lu.Inventory, tmp_path: Path) -> None:
    host = lab["hosts"][0]
    src = tmp_path / "payload.bin"
    src.write_bytes(bytes(range(256)) * 64)
    back = tmp_path / "back.bin"
    batch = tmp_path / "batch"
    batch.write_text(f"put {src} /tmp/lab-sftp-test.bin\nget /tmp/lab-sftp-test.bin {back}\n")
    ssh = lu.ssh_argv(lab, host)
    # sftp takes the same options as ssh (everything before the destination).
    proc = subprocess.run(
        ["sftp", *ssh[1:-3], "-P", str(host["port"]), "-b", str(batch), ssh[-1]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert back.read_bytes() == src.read_bytes()
    lu.ssh(lab, host, "rm -f /tmp/lab-sftp-test.bin")


def test_many_parallel_ssh_sessions_are_accepted(lab: lu.Inventory) -> None:
    """The docker provider and parallel remote commands open many connections at once: with
    sshd's default MaxStartups (10:30:100) some of 40 simultaneous logins would be dropped."""
    host = lab["hosts"][0]
    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(
            pool.map(lambda _: lu.ssh(lab, host, "sleep 1; echo ok", check=False), range(40))
        )
    failed = [r.stderr.strip() for r in results if r.returncode != 0 or r.stdout.strip() != "ok"]
    assert failed == [], failed


def test_inner_docker_data_is_on_disk_with_overlay2(lab: lu.Inventory) -> None:
    for host in lab["hosts"]:
        info = json.loads(lu.ssh(lab, host, "docker info --format '{{json .}}'").stdout)
        assert info["Driver"] == "overlay2", f"{host['name']}: storage driver {info['Driver']}"
        fs = lu.ssh(lab, host, "stat -f -c %T /var/lib/docker").stdout.strip()
        assert fs not in ("tmpfs", "ramfs"), f"{host['name']}: /var/lib/docker is on {fs}"
        assert "nvidia" in info["Runtimes"], f"{host['name']}: no nvidia runtime in docker info"


def test_status_reports_every_host(lab: lu.Inventory) -> None:
    proc = lu.lab_cmd("status", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for host in lab["hosts"]:
        assert f"{host['name']}" in proc.stdout
    assert "simulated GPU" in proc.stdout


def test_up_again_changes_nothing(lab: lu.Inventory) -> None:
    """`lab up` is idempotent: the same N and settings keep containers and host keys."""
    ids = {
        h["name"]: lu.docker_outer("inspect", "-f", "{{.Id}}", h["container"]) for h in lab["hosts"]
    }
    env = {k: str(v) for k, v in lab["settings"].items()}
    proc = lu.lab_cmd("up", str(len(lab["hosts"])), "--no-engine", env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recreated" not in proc.stdout and "started" not in proc.stdout, proc.stdout
    after = lu.read_inventory()
    assert after is not None
    assert [h["host_key"] for h in after["hosts"]] == [h["host_key"] for h in lab["hosts"]]
    for h in lab["hosts"]:
        assert lu.docker_outer("inspect", "-f", "{{.Id}}", h["container"]) == ids[h["name"]]


def test_up_clears_serving_containers_no_stack_here_owns(lab: lu.Inventory) -> None:
    """The hosts' Docker volumes outlive the host containers, and every checkout on the
    machine names its hosts alike: `lab up` without this checkout's inventory (another
    checkout's `make demo` brought the lab up) removes the program's serving containers it
    finds, and leaves everything else, and hosts its inventory lists, alone."""

    def plant(host: str, name: str, *labels: str) -> None:
        host_exec(host, "sh", "-c", "tar cf - -T /dev/null | docker import - lab-empty:1")
        flags = [arg for label in labels for arg in ("--label", label)]
        host_exec(host, "docker", "create", "--name", name, *flags, "lab-empty:1", "/none")

    serving = ("managed-by=vllm-cluster", "vllm-cluster.stack=vllm-cluster/lab")
    saved = lu.INVENTORY.read_text()
    with lab_serving_lock():
        try:
            plant("1", "vllm-ray-head", *serving)
            plant("1", "not-ours")
            lu.INVENTORY.unlink()
            up = lu.lab_cmd("up", str(len(lab["hosts"])))
            assert up.returncode == 0, up.stdout + up.stderr
            assert containers_on("1") == ["not-ours"]
            assert "vllm-ray-head (vllm-cluster/lab)" in up.stdout + up.stderr

            plant("1", "vllm-ray-head", *serving)
            again = lu.lab_cmd("up", str(len(lab["hosts"])))
            assert again.returncode == 0, again.stdout + again.stderr
            assert containers_on("1") == ["not-ours", "vllm-ray-head"]
        finally:
            host_exec("1", "docker", "rm", "-f", "vllm-ray-head", "not-ours", check=False)
            if not lu.INVENTORY.exists():
                lu.INVENTORY.write_text(saved)
