"""`make demo` then `make test` on one machine: the demo's stack stays deployed on the lab,
under the container names every lab stack uses, and the next stack that serves on the lab
(test, real-engine run or benchmark, all under the serving lock) destroys it first instead of
colliding with it. Real CLI: tools/demo.sh is the README's main command."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.e2e.lab_stack import DEMO_STACK, REPO, containers_on, lab_serving_lock
from tests.e2e.pulumi_cli import find_binary, list_stacks, pulumi_env

pytestmark = [pytest.mark.e2e, pytest.mark.lab]


def demo_resource_count() -> int:
    env = pulumi_env()
    pulumi = find_binary("pulumi", env)
    assert pulumi is not None
    stacks = {s["name"]: s for s in list_stacks(REPO, env, pulumi)}
    return int(stacks.get(DEMO_STACK, {}).get("resourceCount") or 0)


def test_serving_lock_releases_the_demo_stack(lab: Any) -> None:
    with lab_serving_lock():
        # Under the lock so no test stack is serving meanwhile; the demo itself takes none.
        demo = subprocess.run(
            ["tools/demo.sh"],
            cwd=REPO,
            env=pulumi_env({"STACK": DEMO_STACK}),
            capture_output=True,
            text=True,
        )
        assert demo.returncode == 0, f"{demo.stdout[-4000:]}\n{demo.stderr[-4000:]}"
    assert demo_resource_count() > 0
    # Pulumi.lab.yaml serves across both hosts through vLLM's own launcher (the default).
    assert containers_on("1") == ["vllm-server"]
    assert containers_on("2") == ["vllm-headless"]
    with lab_serving_lock():
        assert demo_resource_count() == 0
        assert containers_on("1") == [] and containers_on("2") == []
