"""RayVllmCluster: one engine container per node; the head serves once Ray is complete.

The head starts Ray, waits until every configured node is alive with its GPUs (naming the
nodes that did not join), then runs vLLM with the Ray backend. Workers run `ray start
--block` against the head. Workers carry the head container's ID as a label, so replacing the
head (any serving change) replaces the workers too instead of leaving them attached to a
dead Ray head until Ray's reconnect timeout expires.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.gpu_host import GpuHost
from components.render.engine import (
    HEAD_CONTAINER,
    WORKER_CONTAINER,
    EngineLaunch,
    NodeNetwork,
    RayLayout,
    node_environment,
    ray_head_script,
    ray_worker_script,
)
from components.resources.containers import (
    ContainerSpec,
    engine_container,
    node_container_spec,
)
from components.resources.generated_secret import GeneratedSecret
from components.vllm_service import gated_endpoint

WORKER_STOP_GRACE_S = 5


@dataclass(frozen=True)
class RayNode:
    name: str
    host: GpuHost
    node: NodeNetwork


@dataclass(frozen=True)
class RayVllmClusterArgs:
    head: RayNode
    workers: tuple[RayNode, ...]
    launch: EngineLaunch
    layout: RayLayout
    api_key: pulumi.Input[str]
    ready_timeout_s: int
    extra_env: dict[str, str]
    ipc_host: bool = True
    shm_size_gib: int = 16
    privileged: bool = False
    devices: tuple[str, ...] = ()
    depends_on: tuple[pulumi.Resource, ...] = ()

    @property
    def model_path(self) -> str:
        return self.launch.model_path


class RayVllmCluster(pulumi.ComponentResource):
    """Outputs: `endpoint` on the head once a chat completion has answered."""

    endpoint: pulumi.Output[str]

    def __init__(
        self, name: str, args: RayVllmClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-cluster:index:RayVllmCluster", name, None, opts)

        def spec(
            node: RayNode,
            container: str,
            script: str,
            labels: dict[str, pulumi.Input[str]],
            stop_grace_s: int,
        ) -> ContainerSpec:
            env = node_environment(node.node, args.extra_env, ray=True)
            argv = ["bash", "-c", script]
            return node_container_spec(args, container, argv, env, labels, stop_grace_s)

        every_host_ready = [r for n in (args.head, *args.workers) for r in n.host.ready]
        # Every node of this cluster, and nothing else, holds the Ray token (Ray >= 2.52
        # refuses any node, client or driver without it; RAY_AUTH_MODE in node_environment).
        ray_token = GeneratedSecret(
            f"{name}-ray-token", purpose="ray-auth-token", opts=pulumi.ResourceOptions(parent=self)
        )
        token_env = {"RAY_AUTH_TOKEN": ray_token.value}
        head = engine_container(
            f"{name}-head",
            spec(
                args.head,
                HEAD_CONTAINER,
                ray_head_script(args.head.node, args.layout, args.launch),
                {"vllm-cluster.role": "ray-head"},
                # The head runs the API server: let it finish requests and free the GPUs.
                30,
            ),
            args.head.host.image_id,
            args.api_key,
            pulumi.ResourceOptions(
                parent=self,
                provider=args.head.host.docker_provider,
                depends_on=[*every_host_ready, *args.depends_on],
            ),
            secret_env=token_env,
        )
        workers = [
            engine_container(
                f"{name}-worker-{w.name}",
                spec(
                    w,
                    WORKER_CONTAINER,
                    ray_worker_script(w.node, args.layout),
                    {"vllm-cluster.role": "ray-worker", "vllm-cluster.head": head.id},
                    # Destroy removes workers before the head; a worker's raylet then waits
                    # for the head's engine actors to let go of its GPUs and would hold
                    # every destroy for the full grace period (measured: 30 s of 32 s).
                    WORKER_STOP_GRACE_S,
                ),
                w.host.image_id,
                None,  # workers never serve HTTP, so they never hold the API key
                pulumi.ResourceOptions(
                    parent=self, provider=w.host.docker_provider, depends_on=[head]
                ),
                secret_env=token_env,
            )
            for w in args.workers
        ]
        self.endpoint = gated_endpoint(
            f"{name}-ready",
            args.head.host,
            args.layout.head_address,
            HEAD_CONTAINER,
            args.launch,
            args.ready_timeout_s,
            args.api_key,
            [head, *workers],
            pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"endpoint": self.endpoint})
