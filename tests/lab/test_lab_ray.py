"""The stand-in engine image (lab/engine/build.sh) forms a real 2-node Ray cluster across two
lab hosts, started the way the program starts it: `--network host --ipc host --gpus all`
containers, `ray start --num-gpus=<simulated GPUs per host>` on each node."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.lab import labutil as lu

pytestmark = pytest.mark.lab

HEAD = "labtest-ray-head"
WORKER = "labtest-ray-worker"


def ray_totals(status: str) -> tuple[int, float]:
    """(active nodes, total GPUs) from `ray status` output."""
    active = status.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in status else ""
    nodes = sum(int(m) for m in re.findall(r"^\s*(\d+) node_", active, re.M))
    gpus = re.search(r"^\s*[\d.]+/([\d.]+) GPU\b", status, re.M)
    return nodes, float(gpus.group(1)) if gpus else 0.0


def test_two_hosts_form_a_ray_cluster(lab: lu.Inventory) -> None:
    engine = lab.get("engine_image")
    tarball = Path(engine["tarball"]) if engine else lu.LAB_DIR / "images" / "vllm-standin.tar"
    if not (lu.REPO_ROOT / "lab" / "engine" / "build.sh").exists():
        pytest.skip("lab/engine/build.sh does not exist yet (stand-in engine image recipe)")
    if not tarball.exists() or not engine:
        pytest.skip(f"{tarball} does not exist: run `lab/lab up` (it calls lab/engine/build.sh)")
    tag, image_id = engine["tag"], engine["id"]
    head, worker = lab["hosts"][0], lab["hosts"][1]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda h: lu.load_image(lab, h, tarball, tag, image_id), [head, worker]))

    per_host = head["gpu"]["count"]
    common = f"--network host --ipc host --gpus all {tag}"
    cleanup = f"docker rm -f {HEAD} {WORKER} >/dev/null 2>&1 || true"
    try:
        for host in (head, worker):
            lu.ssh(lab, host, cleanup)
        lu.ssh(
            lab,
            head,
            f"docker run -d --name {HEAD} {common} ray start --head --block "
            f"--node-ip-address={head['address']} --port=6379 --num-gpus={per_host}",
        )
        lu.ssh(
            lab,
            worker,
            f"docker run -d --name {WORKER} {common} ray start --block "
            f"--address={head['address']}:6379 --node-ip-address={worker['address']} "
            f"--num-gpus={per_host}",
        )
        deadline = time.monotonic() + 180
        status = ""
        while time.monotonic() < deadline:
            proc = lu.ssh(lab, head, f"docker exec {HEAD} ray status", check=False, timeout=60)
            status = proc.stdout
            if proc.returncode == 0 and ray_totals(status) == (2, 2.0 * per_host):
                break
            time.sleep(3)
        if ray_totals(status) != (2, 2.0 * per_host):
            logs = "".join(
                lu.ssh(lab, h, f"docker logs --tail 30 {c} 2>&1", check=False).stdout
                for h, c in ((head, HEAD), (worker, WORKER))
            )
            pytest.fail(f"no 2-node cluster within 180 s; ray status:\n{status}\nlogs:\n{logs}")
        # The containers see their host's simulated GPUs, as vLLM's workers would.
        smi = lu.ssh(lab, worker, f"docker exec {WORKER} nvidia-smi -L").stdout
        assert len(smi.splitlines()) == per_host
    finally:
        for host in (head, worker):
            lu.ssh(lab, host, cleanup, check=False)
