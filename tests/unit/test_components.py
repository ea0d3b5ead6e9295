"""Wiring of GpuHost, ModelWeights, VllmService and RayVllmCluster under Pulumi mocks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pulumi
import pytest

from components.gpu_host import GpuHost, GpuHostArgs
from components.model_weights import ModelWeights, WeightsOnDestroy, WeightsTarget
from components.ray_cluster import RayNode, RayVllmCluster, RayVllmClusterArgs
from components.render.deployment import HostScripts
from components.render.engine import EngineLaunch, NodeNetwork, RayLayout
from components.render.ssh import SshTarget
from components.resources.steps import Bastion, HostConnection
from components.vllm_service import VllmService, VllmServiceArgs
from tests.unit.pulumi_mocks import (
    DYNAMIC,
    LOCAL,
    REMOTE,
    DependencyMonitor,
    RecordingMocks,
    is_secret,
    reveal,
)

CONTAINER = "docker:index/container:Container"


@pytest.fixture
def mocks() -> Iterator[RecordingMocks]:
    m = RecordingMocks()
    pulumi.runtime.set_mocks(m, preview=False, monitor=DependencyMonitor(m))
    yield m


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheTestHost"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\ntest\n-----END OPENSSH PRIVATE KEY-----\n"


def ssh(address: str) -> SshTarget:
    return SshTarget(address, "root", 22, "/keys/id", "/keys/known_hosts")


def conn(address: str, bastion: Bastion | None = None) -> HostConnection:
    return HostConnection(address, "root", 22, HOST_KEY, PRIVATE_KEY, bastion=bastion)


def assert_connects_to(command: Any, address: str) -> None:
    """A remote.Command pinned to `address`'s host key, its private key a secret."""
    assert is_secret(command.inputs["connection"]), "the connection holds the private key"
    c = reveal(command.inputs["connection"])
    assert (c["host"], c["user"], c["port"]) == (address, "root", 22)
    assert c["hostKey"] == HOST_KEY
    assert c["privateKey"] == PRIVATE_KEY
    assert command.inputs["addPreviousOutputInEnv"] is False


def host(name: str, address: str) -> GpuHost:
    return GpuHost(
        name,
        GpuHostArgs(
            connection=conn(address),
            ssh=ssh(address),
            image_name="vllm/vllm-openai:v0.8.5",
            scripts=HostScripts(preflight="echo preflight", image_load_local="echo load"),
        ),
    )


def launch(tp: int, pp: int) -> EngineLaunch:
    return EngineLaunch(
        model_path="/data/m",
        served_model_name="m",
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        max_model_len=2048,
        max_num_seqs=8,
        gpu_memory_utilization=0.9,
        distributed_executor_backend="ray" if pp > 1 else None,
    )


def single_node_service(engine: EngineLaunch) -> VllmService:
    """VllmService `svc` on host h1 (10.0.0.1), API key sk-test."""
    return VllmService(
        "svc",
        VllmServiceArgs(
            host=host("h1", "10.0.0.1"),
            node=NodeNetwork("10.0.0.1", "eth0"),
            launch=engine,
            api_key=pulumi.Output.secret("sk-test"),
            ready_timeout_s=300,
            extra_env={},
        ),
    )


def settle(*outputs: Any) -> pulumi.Output[Any]:
    return pulumi.Output.all(*outputs)


@pulumi.runtime.test
def test_single_node_service_container_and_gate(mocks: RecordingMocks) -> Any:
    svc = single_node_service(launch(2, 1))

    def check(args: list[Any]) -> None:
        endpoint = args[0]
        assert endpoint == "http://10.0.0.1:8000/v1"
        (container,) = mocks.of_type(CONTAINER)
        i = container.inputs
        assert i["name"] == "vllm-server"
        assert i["gpus"] == "all"
        assert i["networkMode"] == "host"
        assert i["ipcMode"] == "host"
        assert i["restart"] == "unless-stopped"
        assert i["volumes"] == [
            {"hostPath": "/data/m", "containerPath": "/data/m", "readOnly": True}
        ]
        assert is_secret(i["envs"]), "envs hold the API key: they must be a secret"
        assert "VLLM_API_KEY=sk-test" in reveal(i["envs"])
        assert "HF_HUB_OFFLINE=1" in reveal(i["envs"])
        assert not any("sk-test" in a for a in i["command"] + i["entrypoints"])
        assert container.provider and "h1-docker" in container.provider
        gate = mocks.named("svc-ready")
        assert is_secret(gate.inputs["stdin"])
        assert reveal(gate.inputs["stdin"]) == "sk-test"
        assert "sk-test" not in gate.script
        assert gate.type_ == REMOTE
        assert gate.script.startswith("bash -c ")
        assert_connects_to(gate, "10.0.0.1")
        assert gate.inputs["triggers"] == ["svc-server-id"]

    return settle(svc.endpoint).apply(check)


@pulumi.runtime.test
def test_endpoint_comes_from_the_readiness_gate(mocks: RecordingMocks) -> Any:
    """The endpoint output is known only once the gate passed: it depends on the gate
    command, not merely on the containers (a stack output in CI must not name an endpoint
    that never answered)."""
    svc = single_node_service(launch(1, 1))

    async def names() -> list[str]:
        return sorted(r._name for r in await svc.endpoint.resources())

    def check(found: list[str]) -> None:
        assert found == ["svc-ready"], found

    found: pulumi.Output[list[str]] = pulumi.Output.from_input(names())
    return found.apply(check)


@pulumi.runtime.test
def test_ray_cluster_head_workers_and_gate(mocks: RecordingMocks) -> Any:
    h1, h2, h3 = host("h1", "10.0.0.1"), host("h2", "10.0.0.2"), host("h3", "10.0.0.3")
    layout = RayLayout("10.0.0.1", 6379, 4, {"h1": "10.0.0.1", "h2": "10.0.0.2", "h3": "10.0.0.3"})
    cluster = RayVllmCluster(
        "ray",
        RayVllmClusterArgs(
            head=RayNode("h1", h1, NodeNetwork("10.0.0.1", "eth0")),
            workers=(
                RayNode("h2", h2, NodeNetwork("10.0.0.2", "eth0")),
                RayNode("h3", h3, NodeNetwork("10.0.0.3", "eth0")),
            ),
            launch=launch(4, 3),
            layout=layout,
            api_key=pulumi.Output.secret("sk-test"),
            ready_timeout_s=600,
            extra_env={"X": "1"},
        ),
    )

    def check(args: list[Any]) -> None:
        assert args[0] == "http://10.0.0.1:8000/v1"
        head = mocks.named("ray-head")
        workers = [mocks.named("ray-worker-h2"), mocks.named("ray-worker-h3")]
        assert head.inputs["name"] == "vllm-ray-head"
        assert head.inputs["entrypoints"] == ["bash"]
        assert head.inputs["destroyGraceSeconds"] == 30
        script = head.inputs["command"][1]
        assert "ray start --head" in script and "exec python3 -m vllm" in script
        assert "--distributed-executor-backend ray" in script
        assert is_secret(head.inputs["envs"])
        assert "VLLM_API_KEY=sk-test" in reveal(head.inputs["envs"])
        assert "VLLM_HOST_IP=10.0.0.1" in reveal(head.inputs["envs"])
        assert "RAY_AUTH_TOKEN=generated-ray-ray-token" in reveal(head.inputs["envs"])
        # vLLM must not copy the API key and the token into the workers' actors.
        assert '["VLLM_API_KEY", "RAY_AUTH_TOKEN"]' in script
        assert "ray_non_carry_over_env_vars.json" in script
        token = mocks.named("ray-ray-token")
        assert token.type_ == DYNAMIC and token.inputs["purpose"] == "ray-auth-token"
        for w, ip, h in zip(workers, ("10.0.0.2", "10.0.0.3"), ("h2", "h3"), strict=True):
            assert w.inputs["name"] == "vllm-ray-worker"
            assert w.inputs["entrypoints"] == ["bash"]
            assert w.inputs["destroyGraceSeconds"] == 5
            worker_script = w.inputs["command"][1]
            assert "/dev/tcp/10.0.0.1/6379" in worker_script
            assert f"--node-ip-address={ip}" in worker_script
            assert "--address=10.0.0.1:6379" in worker_script
            # The worker's environment holds the Ray token (a secret) but never the API key.
            assert is_secret(w.inputs["envs"])
            envs = reveal(w.inputs["envs"])
            assert f"VLLM_HOST_IP={ip}" in envs
            assert "RAY_AUTH_MODE=token" in envs
            assert "RAY_AUTH_TOKEN=generated-ray-ray-token" in envs
            assert not any(e.startswith("VLLM_API_KEY") for e in envs)
            labels = {lbl["label"]: lbl["value"] for lbl in w.inputs["labels"]}
            assert labels["vllm-cluster.head"] == "ray-head-id"
            assert w.provider and f"{h}-docker" in w.provider
        # Any serving container replaced (a worker alone too) re-runs the gate.
        assert mocks.named("ray-ready").inputs["triggers"] == [
            "ray-head-id",
            "ray-worker-h2-id",
            "ray-worker-h3-id",
        ]

    return settle(cluster.endpoint).apply(check)


def test_weights_fanout_waits_for_head_and_removal_is_separate(mocks: RecordingMocks) -> None:
    @pulumi.runtime.test
    def program() -> Any:
        h1, h2 = host("h1", "10.0.0.1"), host("h2", "10.0.0.2")
        weights = ModelWeights(
            "weights",
            "/data/m",
            [
                WeightsTarget(
                    "h1", h1, conn("10.0.0.1"), ssh("10.0.0.1"), "verify", fetch_local="rsync push"
                ),
                WeightsTarget(
                    "h2",
                    h2,
                    conn("10.0.0.2"),
                    ssh("10.0.0.2"),
                    "verify",
                    fetch_remote="pull from head",
                    after_head=True,
                ),
            ],
            on_destroy=[
                WeightsOnDestroy("h1", conn("10.0.0.1"), None),
                WeightsOnDestroy("h2", conn("10.0.0.2"), "remove"),
            ],
        )
        return settle(weights.urn)

    program()  # returns once every registration has finished
    head_fetch = mocks.named("weights-h1-fetch")
    assert head_fetch.type_ == LOCAL  # runs on the operator machine
    assert head_fetch.inputs["interpreter"] == ["/bin/bash", "-c"]
    assert head_fetch.script.startswith("rsync push")
    assert "bash -s <<'VLLM_CLUSTER_VERIFY'\nverify" in head_fetch.script
    assert head_fetch.inputs["triggers"] == [1]  # the check's generation
    worker_fetch = mocks.named("weights-h2-fetch")
    assert worker_fetch.type_ == REMOTE
    assert_connects_to(worker_fetch, "10.0.0.2")
    assert worker_fetch.script == "bash -c 'pull from head\nverify'"
    # A re-fetch replaces the fetch; removal must not ride on it.
    assert "delete" not in worker_fetch.inputs
    remove = mocks.named("weights-h2-remove")
    assert remove.inputs["delete"] == "bash -c remove"
    assert_connects_to(remove, "10.0.0.2")
    # Nothing runs on create or update, and nothing can replace it.
    assert "create" not in remove.inputs and "triggers" not in remove.inputs
    keep = mocks.named("weights-h1-remove")
    assert "delete" not in keep.inputs and "create" not in keep.inputs
    checks = sorted(r.name for r in mocks.of_type(DYNAMIC) if r.name.endswith("-check"))
    assert checks == ["weights-h1-check", "weights-h2-check"]


def test_hub_download_waits_for_the_image_and_a_copy_does_not(mocks: RecordingMocks) -> None:
    """A hub download may run the engine image's client (a bare host has no other): it
    waits for the host's image steps. An rsync from the operator machine does not."""

    @pulumi.runtime.test
    def program() -> Any:
        h1, h2 = host("h1", "10.0.0.1"), host("h2", "10.0.0.2")
        weights = ModelWeights(
            "weights",
            "/data/m",
            [
                WeightsTarget(
                    "h1",
                    h1,
                    conn("10.0.0.1"),
                    ssh("10.0.0.1"),
                    "verify",
                    fetch_remote="hf dl",
                    after_image=True,
                ),
                WeightsTarget(
                    "h2", h2, conn("10.0.0.2"), ssh("10.0.0.2"), "verify", fetch_local="rsync"
                ),
            ],
        )
        return settle(weights.urn)

    program()
    download = mocks.named("weights-h1-fetch").depends_on
    assert {"h1-image", "h1-image-load", "h1-preflight", "weights-h1-check"} <= set(download)
    copy = mocks.named("weights-h2-fetch").depends_on
    assert set(copy) == {"h2-preflight", "weights-h2-check"}


@pulumi.runtime.test
def test_host_steps_in_order_and_image_kept(mocks: RecordingMocks) -> Any:
    h = GpuHost(
        "h1",
        GpuHostArgs(
            connection=conn("10.0.0.1"),
            ssh=ssh("10.0.0.1"),
            image_name="img:1",
            scripts=HostScripts(
                preflight="pf",
                storage="st",
                deb_copy_local="rsync debs",
                docker_setup="di",
                image_pull="docker pull",
            ),
        ),
    )

    def check(_: Any) -> None:
        on_host = [r.name for r in mocks.of_type(REMOTE)]
        assert on_host == ["h1-preflight", "h1-storage", "h1-docker-install", "h1-image-pull"]
        # Each step waits for the one before it: nothing is written to the host before the
        # read-only preflight passed, and the image step waits for the Docker it needs.
        chain = ["h1-preflight", "h1-storage", "h1-deb-copy", "h1-docker-install", "h1-image-pull"]
        assert mocks.named("h1-preflight").depends_on == []
        for before, after in itertools.pairwise(chain):
            assert mocks.named(after).depends_on == [before], (after, before)
        assert "h1-image-pull" in mocks.named("h1-image").depends_on
        for name in on_host:
            assert_connects_to(mocks.named(name), "10.0.0.1")
        assert [r.name for r in mocks.of_type(LOCAL)] == ["h1-deb-copy"]
        # The operator-side step carries the host's pinned key: a reinstalled server (new
        # key) gets its .debs again, as the host steps re-run on their changed connection.
        assert mocks.named("h1-deb-copy").script == f"# h1: host key {HOST_KEY}\nrsync debs"
        image = mocks.named("h1-image")
        assert image.inputs["keepLocally"] is True
        provider = mocks.named("h1-docker")
        assert provider.inputs["host"] == "ssh://root@10.0.0.1:22"
        assert "StrictHostKeyChecking=yes" in provider.inputs["sshOpts"]

    return settle(h.image_id).apply(check)
