"""The program's rendered Ray head script (components.render.engine) in the stand-in image on a lab
host: a fresh container starts Ray without `ray stop`; the same container started again (what
the `unless-stopped` restart policy does after a crash: same filesystem, stale Ray session)
stops the old session first and forms the cluster again."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from components.render.engine import EngineLaunch, NodeNetwork, RayLayout, ray_head_script
from tests.lab import labutil as lu

pytestmark = pytest.mark.lab

CONTAINER = "labtest-head-restart"
RESTART_NOTE = "ray head: restarted; stopping the Ray session of the previous run"


def wait_exited(lab: lu.Inventory, host: lu.HostEntry, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = lu.ssh(lab, host, f"docker inspect -f '{{{{.State.Status}}}}' {CONTAINER}")
        if state.stdout.strip() == "exited":
            return
        time.sleep(0.5)
    pytest.fail(f"{CONTAINER} still running after {timeout_s} s")


def test_head_script_clears_a_stale_session_only_after_a_restart(lab: lu.Inventory) -> None:
    engine = lab.get("engine_image")
    if not engine:
        pytest.skip("no stand-in engine image in the inventory: run `lab/lab up`")
    host = lab["hosts"][0]
    lu.load_image(lab, host, Path(engine["tarball"]), engine["tag"], engine["id"])
    gpus = host["gpu"]["count"]
    layout = RayLayout(host["address"], 6379, gpus, {host["name"]: host["address"]}, 60)
    # No model at this path: once Ray is complete the stand-in exits, ending each run.
    launch = EngineLaunch(
        "/nonexistent/model", "m", gpus, 1, 128, 1, 0.9, distributed_executor_backend="ray"
    )
    script = ray_head_script(NodeNetwork(host["address"], host["nic"]), layout, launch)
    cleanup = f"docker rm -f {CONTAINER} >/dev/null 2>&1 || true"
    lu.ssh(lab, host, cleanup)
    try:
        lu.ssh(
            lab,
            host,
            f"docker run -d --name {CONTAINER} --network host --ipc host --gpus all --init "
            f"-e RAY_USAGE_STATS_ENABLED=0 --entrypoint bash {engine['tag']} "
            f"-c {shlex.quote(script)} >/dev/null",
        )
        wait_exited(lab, host)
        first = lu.ssh(lab, host, f"docker logs {CONTAINER} 2>&1").stdout
        assert f"ray cluster: 1/1 nodes, {gpus}/{gpus} GPUs" in first, first[-3000:]
        assert RESTART_NOTE not in first

        lu.ssh(lab, host, f"docker start {CONTAINER} >/dev/null")
        wait_exited(lab, host)
        both = lu.ssh(lab, host, f"docker logs {CONTAINER} 2>&1").stdout
        second = both[len(first) :] if both.startswith(first) else both
        assert RESTART_NOTE in second, both[-3000:]
        assert f"ray cluster: 1/1 nodes, {gpus}/{gpus} GPUs" in second, both[-3000:]
    finally:
        lu.ssh(lab, host, cleanup, check=False)
