"""VllmService: the OpenAI API server on one node, gated on real readiness."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.gpu_host import GpuHost
from components.render.engine import (
    SERVER_CONTAINER,
    EngineLaunch,
    NodeNetwork,
    node_environment,
    vllm_server_argv,
)
from components.render.readiness import ReadinessGate, readiness_script
from components.resources.containers import ContainerSpec, engine_container
from components.resources.steps import remote_step


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


class VllmService(pulumi.ComponentResource):
    """Outputs: `endpoint` (http://<host>:<port>/v1) once a chat completion has answered."""

    endpoint: pulumi.Output[str]

    def __init__(
        self, name: str, args: VllmServiceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-cluster:index:VllmService", name, None, opts)
        argv = vllm_server_argv(args.launch)
        spec = ContainerSpec(
            container_name=SERVER_CONTAINER,
            entrypoint=argv[:1],
            command=argv[1:],
            env=node_environment(args.node, args.extra_env),
            model_path=args.launch.model_path,
            ipc_host=args.ipc_host,
            shm_size_gib=args.shm_size_gib,
        )
        container = engine_container(
            f"{name}-server",
            spec,
            args.host.image_id,
            args.api_key,
            pulumi.ResourceOptions(
                parent=self,
                provider=args.host.docker_provider,
                depends_on=[*args.host.ready, *args.depends_on],
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
            [container],
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
