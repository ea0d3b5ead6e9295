"""The one way this program declares an engine container (server, Ray head, Ray worker).

Same image, same weights mount, same GPU/network/IPC settings on every node; only the
command and environment differ. The API key joins the environment as a Pulumi secret, so the
container's `envs` are encrypted in state and the key never reaches a command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import pulumi
import pulumi_docker as docker

from components.render.shell import OWNER_LABEL


def deployment_owner() -> str:
    """``<project>/<stack>`` of the running program: the OWNER_LABEL value of its containers,
    which preflight compares on every host before anything is changed there."""
    return f"{pulumi.get_project()}/{pulumi.get_stack()}"


@dataclass(frozen=True)
class ContainerSpec:
    container_name: str
    entrypoint: list[str]
    command: list[str]
    env: dict[str, str]
    model_path: str
    ipc_host: bool = True
    shm_size_gib: int = 16
    privileged: bool = False
    devices: tuple[str, ...] = ()
    labels: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    # Seconds between SIGTERM and SIGKILL on stop/destroy.
    stop_grace_s: int = 30


class EngineSettings(Protocol):
    """What every engine container of one deployment shares (both serving components'
    args have these): the weights path, IPC/shm, and InfiniBand's privileges and devices."""

    @property
    def model_path(self) -> str: ...
    @property
    def ipc_host(self) -> bool: ...
    @property
    def shm_size_gib(self) -> int: ...
    @property
    def privileged(self) -> bool: ...
    @property
    def devices(self) -> tuple[str, ...]: ...


def node_container_spec(
    shared: EngineSettings,
    container_name: str,
    argv: list[str],
    env: dict[str, str],
    labels: dict[str, pulumi.Input[str]],
    stop_grace_s: int,
) -> ContainerSpec:
    """The spec of one node's engine container: `argv[0]` is its entrypoint."""
    return ContainerSpec(
        container_name=container_name,
        entrypoint=argv[:1],
        command=argv[1:],
        env=env,
        model_path=shared.model_path,
        ipc_host=shared.ipc_host,
        shm_size_gib=shared.shm_size_gib,
        privileged=shared.privileged,
        devices=shared.devices,
        labels=labels,
        stop_grace_s=stop_grace_s,
    )


def engine_container(
    resource_name: str,
    spec: ContainerSpec,
    image_id: pulumi.Input[str],
    api_key: pulumi.Input[str] | None,
    opts: pulumi.ResourceOptions,
    secret_env: Mapping[str, pulumi.Input[str]] | None = None,
) -> docker.Container:
    """One node's engine container. The API key (when it serves HTTP) and `secret_env` go
    into its environment as Pulumi secrets: never on a command line, encrypted in state."""
    envs: list[pulumi.Input[str]] = [f"{k}={v}" for k, v in sorted(spec.env.items())]
    secrets = dict(sorted((secret_env or {}).items()))
    if api_key is not None:
        secrets["VLLM_API_KEY"] = api_key
    for name, value in secrets.items():
        envs.append(pulumi.Output.secret(pulumi.Output.concat(f"{name}=", value)))
    labels = [
        docker.ContainerLabelArgs(label=k, value=v)
        for k, v in sorted(
            {"managed-by": "vllm-cluster", OWNER_LABEL: deployment_owner(), **spec.labels}.items()
        )
    ]
    return docker.Container(
        resource_name,
        name=spec.container_name,
        image=image_id,
        entrypoints=spec.entrypoint,
        command=spec.command,
        envs=envs,
        gpus="all",
        network_mode="host",
        ipc_mode="host" if spec.ipc_host else None,
        shm_size=None if spec.ipc_host else spec.shm_size_gib * 1024,
        privileged=spec.privileged or None,
        devices=[docker.ContainerDeviceArgs(host_path=d, container_path=d) for d in spec.devices]
        or None,
        # Identical absolute path on every node, read-only: the engine never writes weights.
        volumes=[
            docker.ContainerVolumeArgs(
                host_path=spec.model_path, container_path=spec.model_path, read_only=True
            )
        ],
        labels=labels,
        restart="unless-stopped",
        # docker's tini as PID 1: `ray start --block` (or bash) as PID 1 would ignore SIGTERM
        # and every stop would wait out the grace period.
        init=True,
        must_run=True,
        destroy_grace_seconds=spec.stop_grace_s,
        opts=pulumi.ResourceOptions.merge(
            opts,
            # Fixed container names: the old container must go before its replacement starts.
            pulumi.ResourceOptions(delete_before_replace=True),
        ),
    )
