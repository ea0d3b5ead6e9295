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

from components.gpu_host import GpuHost, GpuHostArgs
from components.model_weights import ModelWeights, WeightsOnDestroy, WeightsTarget
from components.parallelism import parallelism_advice
from components.plan.sizing import Plan, PlanError, plan_from_settings
from components.ray_cluster import RayNode, RayVllmCluster, RayVllmClusterArgs
from components.render.deployment import Deployment, render_deployment
from components.render.operator_files import (
    HostKeysNotPinned,
    OperatorFiles,
    curl_line,
    prepare_operator_files,
)
from components.render.ssh import SshTarget
from components.resources.containers import deployment_owner
from components.resources.remote_check import DriftPrefetch, drift_checks
from components.resources.steps import Bastion, HostConnection
from components.settings import NAMESPACE, Settings, SettingsError, load_settings
from components.settings_source import read_stack_config
from components.vllm_service import HeadlessNode, VllmService, VllmServiceArgs

PROJECT_DIR = Path.cwd()


def read_settings(config: pulumi.Config) -> Settings:
    # Every key of the namespace (unknown ones are refused) and, for the secrets, presence
    # and whether each is a Pulumi secret: the values never enter the settings model.
    stack = read_stack_config(config)
    try:
        return load_settings(
            stack.raw,
            stack.secrets_present,
            base_dir=PROJECT_DIR,
            plaintext_secrets=stack.plaintext_secrets,
        )
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


def ssh_private_key(settings: Settings, files: OperatorFiles) -> pulumi.Output[str]:
    """The key pulumi-command's SSH client uses, as a Pulumi secret: the same key as the
    OpenSSH clients (ssh.private_key_file, or the secret vllm-cluster:sshPrivateKey)."""
    if not settings.ssh.private_key_file:
        return pulumi.Config().require_secret("sshPrivateKey")
    try:
        text = Path(files.private_key_file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise pulumi.RunError(
            f"ssh.private_key_file: cannot read {files.private_key_file} ({exc}); "
            "point it at an OpenSSH private key file"
        ) from None
    return pulumi.Output.secret(text)


def host_connection(
    name: str, target: SshTarget, files: OperatorFiles, private_key: pulumi.Output[str]
) -> HostConnection:
    bastion = None
    if target.bastion is not None:
        assert files.bastion_host_key is not None  # prepare_operator_files refuses otherwise
        b = target.bastion
        bastion = Bastion(b.address, b.user, b.port, files.bastion_host_key)
    return HostConnection(
        address=target.address,
        user=target.user,
        port=target.port,
        host_key=files.host_keys[name],
        private_key=private_key,
        bastion=bastion,
        per_dial_timeout_s=target.connect_timeout_s,
    )


def declare(dep: Deployment, settings: Settings, files: OperatorFiles) -> None:
    config = pulumi.Config()
    api_key = config.require_secret("apiKey")
    hub_token = config.get_secret("hubToken") if settings.secrets.hub_token else None
    private_key = ssh_private_key(settings, files)
    # Every host in `hosts` (the weights' on-destroy steps cover the ones not serving too).
    connections = {
        r.host.name: host_connection(r.host.name, r.ssh, files, private_key) for r in dep.retention
    }

    # First and depending on nothing: every host's drift checks start together on each
    # preview/up, and the hosts' checks below find their answers (one SSH round trip per host).
    DriftPrefetch(
        "drift-prefetch",
        {
            hd.host.name: (
                hd.ssh.ssh_command(),
                drift_checks(hd.scripts.image_present, hd.weights.verify),
            )
            for hd in dep.hosts
        },
    )
    hosts = {
        hd.host.name: GpuHost(
            hd.host.name,
            GpuHostArgs(
                connection=connections[hd.host.name],
                ssh=hd.ssh,
                image_name=settings.image.name,
                scripts=hd.scripts,
                weights_verify=hd.weights.verify,
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
                connection=connections[hd.host.name],
                ssh=hd.ssh,
                verify_script=hd.weights.verify,
                fetch_local=hd.weights.fetch_local,
                fetch_remote=hd.weights.fetch_remote,
                fetch_stdin=hub_token if hd.weights.needs_hub_token else None,
                after_head=hd.weights.after_head,
                after_image=hd.weights.after_image,
            )
            for hd in dep.hosts
        ],
        on_destroy=[
            WeightsOnDestroy(r.host.name, connections[r.host.name], r.delete) for r in dep.retention
        ],
    )
    s = settings.serving
    infiniband = s.infiniband.enabled
    if dep.layout is None:
        # One node, or several through vLLM's own multi-node launcher (mp backend).
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
                multi_node=dep.multi_node,
                headless=tuple(
                    HeadlessNode(hd.host.name, hosts[hd.host.name], hd.node) for hd in dep.hosts[1:]
                ),
                privileged=infiniband,
                devices=("/dev/infiniband",) if infiniband else (),
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
                privileged=infiniband,
                devices=("/dev/infiniband",) if infiniband else (),
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
    pulumi.export("curl", endpoint.apply(lambda url: curl_line(url, dep.launch.served_model_name)))


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
    try:
        dep = render_deployment(settings, plan, files, PROJECT_DIR, deployment_owner())
    except ValueError as exc:  # a file on this machine the config names (tarball, .debs)
        raise pulumi.RunError(str(exc)) from None
    advice = parallelism_advice(len(dep.hosts), pulumi.runtime.settings.SETTINGS.parallel)
    if advice:
        pulumi.log.warn(advice)
    declare(dep, settings, files)


main()
