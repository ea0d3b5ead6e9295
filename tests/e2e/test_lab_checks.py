"""End to end on the lab: a one-host stack goes through VllmService alone, and preflight
stops a deployment on a host that is not fit, naming the host and the fix, before any image
is loaded or container started. Real CLI, real SSH; the GPUs are simulated (lab fixtures).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.lab_stack import REPO, chat, containers_on, host_exec, lab_stack
from tests.e2e.pulumi_cli import PulumiCommandError, PulumiStack

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

SINGLE_NODE = {"serving": {"tensor_parallel_size": 2, "pipeline_parallel_size": 1}}


def lab_host(index: int = 0, **changes: Any) -> dict[str, Any]:
    hosts = yaml.safe_load((REPO / "Pulumi.lab.yaml").read_text())["config"]["vllm-cluster:hosts"]
    host = copy.deepcopy(hosts[index])
    host.update(changes)
    return dict(host)


def test_one_host_serves_through_vllm_service_alone(lab: Any) -> None:
    with lab_stack("e2e-one", SINGLE_NODE, hosts=1) as stack:
        started = time.monotonic()
        stack.up()
        print(f"\nfull up (1 host, TP2): {time.monotonic() - started:.1f} s")
        out = stack.outputs(show_secrets=True)
        types = {r["type"] for r in stack.resources()}
        assert "vllm-cluster:index:VllmService" in types
        assert "vllm-cluster:index:RayVllmCluster" not in types
        assert containers_on("1") == ["vllm-server"]
        assert containers_on("2") == []  # not part of this stack
        ok = chat(out["endpoint"], out["api_key"], out["served_model_name"])
        assert ok.status_code == 200, ok.text
        assert "tp=2 pp=1 nodes=local" in ok.json()["choices"][0]["message"]["content"]
        assert chat(out["endpoint"], None, out["served_model_name"]).status_code == 401
        stack.destroy()
        assert containers_on("1") == []


def image_steps(stack: PulumiStack) -> list[str]:
    """The image steps in the stack's state (named `<host>-image-load` / `-image-pull`)."""
    names = [r["urn"].split("::")[-1] for r in stack.resources()]
    return [n for n in names if n.endswith(("-image-load", "-image-pull"))]


def failing_up(prefix: str, overrides: dict[str, Any]) -> str:
    """`pulumi up` of a one-host stack that must fail; returns Pulumi's output."""
    with lab_stack(prefix, {**SINGLE_NODE, **overrides}, hosts=1) as stack:
        with pytest.raises(PulumiCommandError) as info:
            stack.up()
        output = info.value.result.output
        # Nothing past preflight happened on the host.
        assert containers_on("1") == []
        assert image_steps(stack) == []
        return str(output)


def test_preflight_refuses_fewer_gpus_than_configured(lab: Any) -> None:
    gpus = {"count": 4, "model": "NVIDIA H20", "memory_gib": 96}
    out = failing_up("e2e-gpus", {"hosts": [lab_host(gpus=gpus)]})
    assert "preflight lab-1: found 2 GPUs, the config expects 4" in out
    assert "Fix: set gpus.count of host lab-1" in out


def test_preflight_refuses_a_missing_nic(lab: Any) -> None:
    out = failing_up("e2e-nic", {"hosts": [lab_host(nic="ens9f0")]})
    assert "preflight lab-1:" in out and "ens9f0" in out


@pytest.fixture
def tiny_disk(lab: Any) -> Iterator[str]:
    """A 1 MiB filesystem on lab-1 at /data/tiny: too small for the 2.9 MB tiny model."""
    host_exec("1", "mkdir", "-p", "/data/tiny")
    host_exec("1", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", "/data/tiny")
    try:
        yield "/data/tiny"
    finally:
        host_exec("1", "umount", "/data/tiny", check=False)


def test_preflight_refuses_too_little_disk(lab: Any, tiny_disk: str) -> None:
    model = {"path": f"{tiny_disk}/tiny-llama"}
    out = failing_up("e2e-disk", {"model": model})
    assert "preflight lab-1:" in out and "disk" in out.lower()


def test_preflight_refuses_a_container_of_another_stack(lab: Any) -> None:
    """A serving container under our name that another stack made (here: planted, created
    and never started) stops `pulumi up` at preflight, naming that stack and both fixes,
    instead of docker's bare name conflict half-way through the deployment; it is left
    alone."""
    with lab_stack("e2e-owner", SINGLE_NODE, hosts=1) as stack:
        host_exec("1", "sh", "-c", "tar cf - -T /dev/null | docker import - e2e-empty:1")
        host_exec(
            "1", "docker", "create", "--name", "vllm-server",
            "--label", "managed-by=vllm-cluster",
            "--label", "vllm-cluster.stack=vllm-cluster/elsewhere",
            "e2e-empty:1", "/none",
        )  # fmt: skip
        try:
            with pytest.raises(PulumiCommandError) as info:
                stack.up()
            out = info.value.result.output
            assert (
                "preflight lab-1: container vllm-server (created) belongs to stack "
                f"vllm-cluster/elsewhere, not to vllm-cluster/{stack.name}" in out
            ), out
            assert "pulumi destroy --stack elsewhere" in out and "docker rm -f vllm-server" in out
            assert image_steps(stack) == []
            assert containers_on("1") == ["vllm-server"]
        finally:
            host_exec("1", "docker", "rm", "-f", "vllm-server", check=False)
