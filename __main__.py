"""vllm-cluster: SSH-reachable NVIDIA servers -> one OpenAI-compatible vLLM endpoint.

Read the stack config, plan memory (a plan that cannot fit stops here, in preview), render
every host step, declare the components, export the endpoint. Nothing is declared before
the settings and the plan are valid.
"""

from __future__ import annotations

import os
from pathlib import Path

import pulumi
from pulumi.runtime.config import get_config

from components.containers import deployment_owner
from components.deployment import Deployment, render_deployment
from components.gpu_host import GpuHost, GpuHostArgs
from components.model_weights import ModelWeights, WeightsTarget
from components.operator_files import HostKeysNotPinned, prepare_operator_files
from components.ray_cluster import RayNode, RayVllmCluster, RayVllmClusterArgs
from components.settings import (
    CONFIG_KEYS,
    NAMESPACE,
    SECRET_KEYS,
    Settings,
    SettingsError,
    load_settings,
)
from components.sizing import Plan, PlanError, plan_from_settings
from components.vllm_service import VllmService, VllmServiceArgs

PROJECT_DIR = Path.cwd()


def read_settings(config: pulumi.Config) -> Settings:
    raw = {key: config.get_object(key) for key in CONFIG_KEYS}
    # Presence only: the values stay in Pulumi secrets and never enter the settings model.
    present = {key: bool(get_config(f"{NAMESPACE}:{key}")) for key in SECRET_KEYS}
    try:
        return load_settings(raw, present, base_dir=PROJECT_DIR)
    except SettingsError as exc:
        raise pulumi.RunError(str(exc)) from None


def make_plan(settings: Settings) -> Plan:
    try:
        return plan_from_settings(settings, base_dir=PROJECT_DIR)
    except PlanError as exc:
        raise pulumi.RunError(f"the deployment cannot fit: {exc}") from None


def operator_dir() -> Path:
    """Per-stack files on the operator machine, outside the project: a key written from the
    secret, the pinned known_hosts."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "vllm-cluster" / pulumi.get_project() / pulumi.get_stack()


def declare(dep: Deployment, settings: Settings) -> None:
    config = pulumi.Config()
    api_key = config.require_secret("apiKey")
    hub_token = config.get_secret("hubToken") if settings.secrets.hub_token else None

    hosts = {
        hd.host.name: GpuHost(
            hd.host.name,
            GpuHostArgs(
                ssh=hd.ssh,
                image_name=settings.image.name,
                scripts=hd.scripts,
            ),
        )
        for hd in dep.hosts
    }
    weights = ModelWeights(
        "weights",
        settings.model.path,
        [
            WeightsTarget(
                name=hd.host.name,
                host=hosts[hd.host.name],
                ssh=hd.ssh,
                verify_script=hd.weights.verify,
                fetch_local=hd.weights.fetch_local,
                fetch_remote=hd.weights.fetch_remote,
                fetch_stdin=hub_token if hd.weights.needs_hub_token else None,
                delete_remote=hd.weights.delete_remote,
                after_head=hd.weights.after_head,
            )
            for hd in dep.hosts
        ],
    )
    s = settings.serving
    if dep.layout is None:
        service = VllmService(
            "serving",
            VllmServiceArgs(
                host=hosts[dep.head.host.name],
                node=dep.head.node,
                launch=dep.launch,
                api_key=api_key,
                ready_timeout_s=dep.ready_timeout_s,
                extra_env=dict(s.extra_env),
                ipc_host=s.ipc_host,
                shm_size_gib=int(s.shm_size_gib),
                depends_on=tuple(weights.ready),
            ),
        )
        endpoint = service.endpoint
    else:
        nodes = [RayNode(hd.host.name, hosts[hd.host.name], hd.node) for hd in dep.hosts]
        cluster = RayVllmCluster(
            "serving",
            RayVllmClusterArgs(
                head=nodes[0],
                workers=tuple(nodes[1:]),
                launch=dep.launch,
                layout=dep.layout,
                api_key=api_key,
                ready_timeout_s=dep.ready_timeout_s,
                extra_env=dict(s.extra_env),
                ipc_host=s.ipc_host,
                shm_size_gib=int(s.shm_size_gib),
                privileged=s.infiniband.enabled,
                devices=("/dev/infiniband",) if s.infiniband.enabled else (),
                depends_on=tuple(weights.ready),
            ),
        )
        endpoint = cluster.endpoint

    pulumi.export("endpoint", endpoint)
    pulumi.export("served_model_name", dep.launch.served_model_name)
    pulumi.export("api_key", api_key)
    pulumi.export(
        "hosts",
        {
            name: {
                "address": hd.host.address,
                "role": "head" if index == 0 else "worker",
                "preflight": hosts[name].facts,
                "image_id": hosts[name].image_id,
            }
            for index, (name, hd) in enumerate((hd.host.name, hd) for hd in dep.hosts)
        },
    )
    pulumi.export(
        "curl",
        endpoint.apply(
            lambda url: (
                f"curl -s {url}/chat/completions -H 'Content-Type: application/json' "
                '-H "Authorization: Bearer $(pulumi stack output api_key --show-secrets)" '
                f'-d \'{{"model": "{dep.launch.served_model_name}", '
                '"messages": [{"role": "user", "content": "Hello"}]}\''
            )
        ),
    )


def main() -> None:
    config = pulumi.Config()
    settings = read_settings(config)
    plan = make_plan(settings)
    pulumi.export("plan", plan.to_dict())
    for note in plan.notes:
        pulumi.log.info(f"plan: {note}")
    pulumi.log.info(
        f"plan: TP {plan.tensor_parallel_size} x PP {plan.pipeline_parallel_size} on "
        f"{plan.nodes} node(s); KV cache {plan.kv_cache_tokens:,} tokens, "
        f"max concurrency {plan.max_concurrency} at max_model_len {plan.max_model_len}; "
        f"the manual's estimate: {plan.seed_estimate_gb:.0f} GB -> {plan.seed_nodes} node(s)"
    )
    secret_key = (
        get_config(f"{NAMESPACE}:sshPrivateKey") if settings.secrets.ssh_private_key else None
    )
    try:
        files = prepare_operator_files(
            settings, PROJECT_DIR, operator_dir(), str(secret_key) if secret_key else None
        )
    except HostKeysNotPinned as exc:
        raise pulumi.RunError(str(exc)) from None
    dep = render_deployment(settings, plan, files, PROJECT_DIR, deployment_owner())
    declare(dep, settings)


main()
