"""VllmService: vLLM serving on one node, or on several through vLLM's own multi-node
launcher (the mp backend: no Ray), gated on real readiness.

One node: the OpenAI API server. Several: the same `vllm serve` on every node, rank 0 on the
head serves the API and names any node that has not joined; the other ranks run headless.
Rank 0 carries the headless containers' IDs as a label: Pulumi starts the headless ranks
first, and replacing any of them replaces rank 0 after them. A headless rank leaves when it
loses rank 0 (see `headless_node_script`) and its restart policy brings it back to join the
new one, so replacing rank 0 alone (or losing it) needs no headless replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.gpu_host import GpuHost
from components.render.engine import (
    HEADLESS_CONTAINER,
    SERVER_CONTAINER,
    EngineLaunch,
    MultiNodeLayout,
    NodeNetwork,
    headless_node_script,
    multi_node_head_script,
    node_environment,
    vllm_server_argv,
)
from components.render.readiness import ReadinessGate, readiness_script
from components.resources.containers import (
    ContainerSpec,
    engine_container,
    node_container_spec,
)
from components.resources.steps import remote_step

# Seconds from SIGTERM to SIGKILL: rank 0 serves requests and frees the GPUs; a headless
# rank is stopped after rank 0 on destroy and has nothing to finish.
SERVER_STOP_GRACE_S = 30
HEADLESS_STOP_GRACE_S = 5


@dataclass(frozen=True)
class HeadlessNode:
    name: str
    host: GpuHost
    node: NodeNetwork


@dataclass(frozen=True)
class VllmServiceArgs:
    host: GpuHost
    # Its address is the endpoint's host.
    node: NodeNetwork
    launch: EngineLaunch
    api_key: pulumi.Input[str]
    ready_timeout_s: int
    extra_env: dict[str, str]
    ipc_host: bool = True
    shm_size_gib: int = 16
    depends_on: tuple[pulumi.Resource, ...] = ()
    # vLLM's own multi-node launcher: the layout (rank order) and every node but rank 0.
    multi_node: MultiNodeLayout | None = None
    headless: tuple[HeadlessNode, ...] = ()
    privileged: bool = False
    devices: tuple[str, ...] = ()

    @property
    def model_path(self) -> str:
        return self.launch.model_path


class VllmService(pulumi.ComponentResource):
    """Outputs: `endpoint` (http://<host>:<port>/v1) once a chat completion has answered."""

    endpoint: pulumi.Output[str]

    def __init__(
        self, name: str, args: VllmServiceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-cluster:index:VllmService", name, None, opts)
        layout = args.multi_node
        if (layout is None) != (not args.headless):
            raise ValueError("VllmService: headless nodes need a multi-node layout, and back")

        def spec(
            node: NodeNetwork,
            container: str,
            argv: list[str],
            labels: dict[str, pulumi.Input[str]],
            stop_grace_s: int,
        ) -> ContainerSpec:
            env = node_environment(node, args.extra_env)
            return node_container_spec(args, container, argv, env, labels, stop_grace_s)

        every_host_ready = [
            r for h in (args.host, *(n.host for n in args.headless)) for r in h.ready
        ]
        # Headless ranks first: rank 0 names their container IDs in a label, so Pulumi
        # creates them before it and, when one of them is replaced, deletes rank 0 first and
        # starts a fresh rank 0 after it. The other order (headless naming rank 0) let a
        # stale headless rank join a fresh rank 0 and then be replaced under it, which
        # killed the new engine ("node rank 1 lost") before its readiness gate passed.
        headless = []
        for rank, n in enumerate(args.headless, start=1):
            assert layout is not None
            headless.append(
                engine_container(
                    f"{name}-headless-{n.name}",
                    spec(
                        n.node,
                        HEADLESS_CONTAINER,
                        ["bash", "-c", headless_node_script(args.launch, layout, rank)],
                        {"vllm-cluster.role": f"rank-{rank}"},
                        HEADLESS_STOP_GRACE_S,
                    ),
                    n.host.image_id,
                    None,  # headless ranks never serve HTTP, so they never hold the API key
                    pulumi.ResourceOptions(
                        parent=self,
                        provider=n.host.docker_provider,
                        depends_on=[*every_host_ready, *args.depends_on],
                    ),
                )
            )
        if layout is None:
            argv = vllm_server_argv(args.launch)
            server_spec = spec(args.node, SERVER_CONTAINER, argv, {}, SERVER_STOP_GRACE_S)
        else:
            ranks: pulumi.Output[str] = pulumi.Output.all(*[h.id for h in headless]).apply(
                lambda ids: ",".join(str(i)[:12] for i in ids)
            )
            server_spec = spec(
                args.node,
                SERVER_CONTAINER,
                ["bash", "-c", multi_node_head_script(args.launch, layout)],
                {"vllm-cluster.role": "rank-0", "vllm-cluster.ranks": ranks},
                SERVER_STOP_GRACE_S,
            )
        server = engine_container(
            f"{name}-server",
            server_spec,
            args.host.image_id,
            args.api_key,
            pulumi.ResourceOptions(
                parent=self,
                provider=args.host.docker_provider,
                depends_on=[*every_host_ready, *args.depends_on, *headless],
            ),
        )
        self.endpoint = gated_endpoint(
            f"{name}-ready",
            args.host,
            args.node.address,
            SERVER_CONTAINER,
            args.launch,
            args.ready_timeout_s,
            args.api_key,
            [server, *headless],
            pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"endpoint": self.endpoint})


def gated_endpoint(
    resource_name: str,
    host: GpuHost,
    address: str,
    container_name: str,
    launch: EngineLaunch,
    timeout_s: int,
    api_key: pulumi.Input[str],
    containers: Sequence[docker.Container],
    opts: pulumi.ResourceOptions,
) -> pulumi.Output[str]:
    """The endpoint URL, known only once the readiness gate passed on the serving host.

    The gate re-runs each time any of the serving `containers` is (re)created (their IDs are
    its triggers): a Ray worker replaced alone, after its host lost it, takes the engine
    down with it (vLLM's Ray executor fails with a lost node) until the cluster re-forms."""
    gate = ReadinessGate(
        container=container_name,
        port=launch.port,
        served_model_name=launch.served_model_name,
        timeout_s=timeout_s,
    )
    command = remote_step(
        resource_name,
        host.connection,
        readiness_script(gate),
        stdin=pulumi.Output.secret(api_key),
        triggers=[c.id for c in containers],
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[*containers])),
    )
    # The gate's id is known only once it passed (its stdout is not needed, and stays out
    # of the endpoint so no secret-ness can leak into it from the gate's stdin).
    gate_id: pulumi.Output[str] = command.id
    return gate_id.apply(lambda _: f"http://{address}:{launch.port}/v1")
