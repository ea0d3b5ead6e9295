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

from components.deployment import (
    Deployment,
    OperatorFiles,
    host_key_from_known_hosts,
    known_hosts_text,
    render_deployment,
)
from components.gpu_host import GpuHost, GpuHostArgs
from components.model_weights import ModelWeights, WeightsTarget
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
    """Per-stack files on the operator machine (a key written from the secret, pinned
    known_hosts). Outside the project, readable by the operator only."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = cache / "vllm-cluster" / pulumi.get_project() / pulumi.get_stack()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def ssh_credentials(settings: Settings) -> OperatorFiles:
    """The private key as a file and the pinned host keys as a known_hosts file: every SSH
    client of the program (commands, docker provider, rsync) is OpenSSH with these."""
    if settings.ssh.private_key_file:
        key_path = (PROJECT_DIR / Path(settings.ssh.private_key_file).expanduser()).resolve()
    else:
        # OpenSSH needs a file: write the secret to a 0600 file in the operator's own cache,
        # never into the project or the state.
        key_path = operator_dir() / "id_ssh"
        write_private(key_path, str(get_config(f"{NAMESPACE}:sshPrivateKey")))

    keys: dict[str, str] = {}
    known_text = ""
    if settings.ssh.known_hosts_file:
        known_path = (PROJECT_DIR / Path(settings.ssh.known_hosts_file).expanduser()).resolve()
        known_text = known_path.read_text()
    unpinned = []
    for index, host in enumerate(settings.hosts):
        key = host.host_key or host_key_from_known_hosts(known_text, host.address, host.port)
        if key:
            keys[host.name] = key
        else:
            unpinned.append(
                f"hosts[{index}].host_key: no pinned host key for {host.address}; set it "
                f"(ssh-keyscan -t ed25519 {host.address}) or list the host in "
                "ssh.known_hosts_file"
            )
    if unpinned:
        raise pulumi.RunError("host keys must be pinned:\n  - " + "\n  - ".join(unpinned))
    if settings.ssh.known_hosts_file and all(h.host_key is None for h in settings.hosts):
        known_file = str(known_path)
    else:
        pinned = operator_dir() / "known_hosts"
        pinned.write_text(known_hosts_text(settings.hosts, keys))
        known_file = str(pinned)
    return OperatorFiles(str(key_path), known_file, keys)


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
                address=dep.head.host.address,
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
    files = ssh_credentials(settings)
    dep = render_deployment(settings, plan, files, PROJECT_DIR)
    declare(dep, settings)


main()
