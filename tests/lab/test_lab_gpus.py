"""Simulated GPUs in the lab: `docker run --gpus` works on every host with the production
container settings, the fake nvidia-smi is injected into such containers, and its answers
follow /etc/lab/gpus.json live. Every answer is marked as simulated."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.lab import labutil as lu

pytestmark = pytest.mark.lab

MARKER = "SIMULATED (vllm-cluster lab)"
GPU_LINE = re.compile(r"^GPU (\d+): (.+) \(UUID: (GPU-[0-9a-f-]{36})\)$")


def gpu_lines(text: str) -> list[tuple[int, str, str]]:
    found = []
    for line in text.splitlines():
        m = GPU_LINE.match(line)
        assert m, f"not an nvidia-smi -L line: {line!r}"
        found.append((int(m.group(1)), m.group(2), m.group(3)))
    return found


def test_gpus_all_lists_the_simulated_gpus_in_a_container(
    lab: lu.Inventory, probe_image: str
) -> None:
    for host in lab["hosts"]:
        # The production settings: --gpus all, host network, host IPC.
        proc = lu.ssh(
            lab,
            host,
            f"docker run --rm --gpus all --network host --ipc host {probe_image} nvidia-smi -L",
        )
        gpus = gpu_lines(proc.stdout)
        assert [g[0] for g in gpus] == list(range(host["gpu"]["count"]))
        assert {g[1] for g in gpus} == {host["gpu"]["model"]}
        assert MARKER in proc.stderr
        # Same GPUs (same UUIDs) as nvidia-smi on the host itself.
        on_host = gpu_lines(lu.ssh(lab, host, "nvidia-smi -L").stdout)
        assert gpus == on_host


def test_gpu_subsets_follow_nvidia_visible_devices(lab: lu.Inventory, probe_image: str) -> None:
    host = lab["hosts"][0]
    on_host = gpu_lines(lu.ssh(lab, host, "nvidia-smi -L").stdout)
    one = gpu_lines(
        lu.ssh(lab, host, f"docker run --rm --gpus 1 {probe_image} nvidia-smi -L").stdout
    )
    assert one == [on_host[0]]
    second = gpu_lines(
        lu.ssh(
            lab, host, f"docker run --rm --gpus '\"device=1\"' {probe_image} nvidia-smi -L"
        ).stdout
    )
    # Renumbered from 0 inside the container, like the real runtime, with the real UUID.
    assert second == [(0, on_host[1][1], on_host[1][2])]


def test_nvidia_runtime_and_no_gpus_without_request(lab: lu.Inventory, probe_image: str) -> None:
    host = lab["hosts"][1]
    proc = lu.ssh(
        lab,
        host,
        f"docker run --rm --runtime nvidia -e NVIDIA_VISIBLE_DEVICES=all {probe_image} "
        "nvidia-smi -L",
    )
    assert len(gpu_lines(proc.stdout)) == host["gpu"]["count"]
    plain = lu.ssh(
        lab, host, f"docker run --rm {probe_image} sh -c 'command -v nvidia-smi'", check=False
    )
    assert plain.returncode != 0, "a container that asked for no GPU must not get nvidia-smi"


def test_csv_queries_have_the_real_layout(lab: lu.Inventory) -> None:
    host = lab["hosts"][0]
    fields = (
        "index,name,memory.total,memory.used,memory.free,driver_version,uuid,pci.bus_id,compute_cap"
    )
    proc = lu.ssh(lab, host, f"nvidia-smi --query-gpu={fields} --format=csv,noheader,nounits")
    rows = [line.split(", ") for line in proc.stdout.splitlines()]
    assert len(rows) == host["gpu"]["count"]
    for i, row in enumerate(rows):
        index, name, total, used, free, driver, uuid, bus, cap = row
        assert (int(index), name) == (i, host["gpu"]["model"])
        assert int(total) == host["gpu"]["memory_mib"] and int(used) + int(free) == int(total)
        assert re.fullmatch(r"\d+\.\d+\.\d+", driver)
        assert uuid.startswith("GPU-") and re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:00\.0", bus)
        assert re.fullmatch(r"\d+\.\d+", cap)
    assert MARKER in proc.stderr
    with_units = lu.ssh(lab, host, "nvidia-smi --query-gpu=memory.total --format=csv,noheader")
    assert with_units.stdout.splitlines()[0] == f"{host['gpu']['memory_mib']} MiB"
    header = lu.ssh(lab, host, "nvidia-smi --query-gpu=index,memory.total --format=csv")
    assert header.stdout.splitlines()[0] == "index, memory.total [MiB]"
    table = lu.ssh(lab, host, "nvidia-smi").stdout
    assert MARKER in table.splitlines()[1]
    bad = lu.ssh(lab, host, "nvidia-smi --query-gpu=bogus --format=csv", check=False)
    assert bad.returncode != 0 and "not a valid field" in bad.stderr


@pytest.fixture
def restored_gpus(lab: lu.Inventory) -> Iterator[lu.HostEntry]:
    host = lab["hosts"][0]
    original = lu.docker_outer("exec", host["container"], "cat", "/etc/lab/gpus.json")
    yield host
    subprocess.run(
        ["docker", "exec", "-i", host["container"], "sh", "-c", "cat > /etc/lab/gpus.json"],
        input=original,
        text=True,
        check=True,
    )


def test_a_live_change_of_gpus_json_is_reflected(
    lab: lu.Inventory, probe_image: str, restored_gpus: lu.HostEntry
) -> None:
    host = restored_gpus
    new = {
        "model": "NVIDIA H100 80GB HBM3",
        "count": 4,
        "memory_mib": 81559,
        "driver": "535.161.08",
        "cuda": "12.2",
        "memory_used_mib": [0, 10, 20, 30],
    }
    subprocess.run(
        ["docker", "exec", "-i", host["container"], "sh", "-c", "cat > /etc/lab/gpus.json"],
        input=json.dumps(new),
        text=True,
        check=True,
    )
    proc = lu.ssh(
        lab,
        host,
        "nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version "
        "--format=csv,noheader,nounits",
    )
    assert proc.stdout.splitlines() == [
        f"{i}, NVIDIA H100 80GB HBM3, 81559, {i * 10}, 535.161.08" for i in range(4)
    ]
    inside = lu.ssh(lab, host, f"docker run --rm --gpus all {probe_image} nvidia-smi -L")
    assert len(gpu_lines(inside.stdout)) == 4
