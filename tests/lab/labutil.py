"""Helpers for tests that use the lab (simulated GPU hosts, see lab/host/labctl.py).

Everything goes through the lab's real interfaces: `lab/lab` (run through tools/with-env),
$LAB_DIR/inventory.json, and OpenSSH with the pinned host keys.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
LAB_DIR = Path(os.environ.get("LAB_DIR") or REPO_ROOT / ".lab")
INVENTORY = LAB_DIR / "inventory.json"
LAB = [str(REPO_ROOT / "tools" / "with-env"), str(REPO_ROOT / "lab" / "lab")]

Inventory = dict[str, Any]
HostEntry = dict[str, Any]


def lab_cmd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run `lab/lab ARGS` in the project environment; output is captured for assertions."""
    return subprocess.run(
        [*LAB, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def read_inventory() -> Inventory | None:
    try:
        data: Inventory = json.loads(INVENTORY.read_text())
    except (OSError, ValueError):
        return None
    return data


def lab_is_up() -> bool:
    return INVENTORY.exists() and lab_cmd("status", timeout=120).returncode == 0


def ssh_argv(inventory: Inventory, host: HostEntry, *, known_hosts: str | None = None) -> list[str]:
    return [
        "ssh",
        "-i",
        str(inventory["ssh_private_key"]),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts or inventory['known_hosts']}",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(host["port"]),
        f"{host['user']}@{host['address']}",
    ]


def ssh(
    inventory: Inventory,
    host: HostEntry,
    command: str,
    *,
    check: bool = True,
    timeout: float = 120,
    known_hosts: str | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*ssh_argv(inventory, host, known_hosts=known_hosts), command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{host['name']}: `{command}` exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def image_id_on(inventory: Inventory, host: HostEntry, ref: str) -> str | None:
    proc = ssh(inventory, host, f"docker image inspect --format '{{{{.Id}}}}' {ref}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def drop_stale_image(inventory: Inventory, host: HostEntry, ref: str, image_id: str) -> None:
    """Remove `ref` from a lab host when it names another image than `image_id`: a rebuilt
    7 GB engine image would otherwise stay on the host, untagged, beside the new one."""
    present = image_id_on(inventory, host, ref)
    if present and present != image_id:
        ssh(inventory, host, f"docker rmi {ref} >/dev/null 2>&1 || true", check=False)


def load_image(
    inventory: Inventory, host: HostEntry, tarball: Path, ref: str, image_id: str | None = None
) -> None:
    """`docker load` a tarball into a lab host over SSH (as the program does), unless the host
    already has `ref` (with `image_id`, when given; another image under `ref` is removed
    first)."""
    present = image_id_on(inventory, host, ref)
    if present and (image_id is None or present == image_id):
        return
    if image_id is not None:
        drop_stale_image(inventory, host, ref, image_id)
    with open(tarball, "rb") as f:
        proc = subprocess.run(
            [*ssh_argv(inventory, host), "docker load"],
            stdin=f,
            capture_output=True,
            timeout=600,
            check=False,
        )
    assert proc.returncode == 0, f"{host['name']}: docker load failed: {proc.stderr.decode()}"


def docker_outer(*args: str) -> str:
    """`docker` on this machine (the engine the lab hosts are containers of)."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def lab_leftovers() -> list[str]:
    """Everything of the lab that still exists on this machine (empty after `lab down`)."""
    found: list[str] = []
    label = "label=vllm-lab.managed"
    found += [f"container {c}" for c in docker_outer("ps", "-aq", "--filter", label).split()]
    found += [
        f"container {c}" for c in docker_outer("ps", "-aq", "--filter", "name=^vllm-lab-").split()
    ]
    found += [f"volume {v}" for v in docker_outer("volume", "ls", "-q", "--filter", label).split()]
    found += [
        f"network {n}"
        for n in docker_outer("network", "ls", "-q", "--filter", "name=^vllm-lab$").split()
    ]
    loops = subprocess.run(
        ["losetup", "-a"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    found += [f"loop device {line}" for line in loops if str(LAB_DIR) in line]
    return found
