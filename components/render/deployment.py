"""From validated settings and the plan to what each component declares (pure rendering).

`__main__.py` reads the stack config, plans, calls `render_deployment`, and hands the result
to the components. Everything host-specific (scripts, SSH options, engine command lines) is
decided here, so it is testable without Pulumi (tests/unit/test_deployment.py).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path

from components.plan.sizing import Plan
from components.render.engine import (
    HEAD_CONTAINER,
    HEADLESS_CONTAINER,
    SERVER_CONTAINER,
    WORKER_CONTAINER,
    EngineLaunch,
    MultiNodeLayout,
    NodeNetwork,
    RayLayout,
)
from components.render.operator_files import OperatorFiles
from components.render.shell import MANIFEST as WEIGHTS_MANIFEST
from components.render.shell import (
    DebFile,
    DebsSpec,
    DockerSpec,
    DownloadSpec,
    FanoutSpec,
    GpuExpectation,
    PreflightSpec,
    StorageSpec,
    build_manifest,
    docker_debs_install,
    docker_install,
    fanout_driver,
    image_check,
    image_has_ray,
    image_present,
    image_pull,
    preflight,
    remote_command,
    rsync_argv,
    storage,
    tarball_image_id,
    weights_claim_end,
    weights_delete,
    weights_download,
    weights_ensure_dir,
    weights_verify,
)
from components.render.ssh import Bastion, SshTarget
from components.settings import Host, Settings

OWN_CONTAINERS = (SERVER_CONTAINER, HEADLESS_CONTAINER, HEAD_CONTAINER, WORKER_CONTAINER)
# With --ipc host the engine uses the host's /dev/shm; NCCL needs more than Docker's 64 MB.
MIN_HOST_SHM_BYTES = 1024**3


@dataclass(frozen=True)
class HostScripts:
    """The rendered host steps for one host (None: step not configured)."""

    preflight: str
    storage: str | None = None
    # Runs on the operator machine: when the host has no dockerd, streams the .deb files of
    # docker.deb_dir to the host's install step (by name and SHA-256, root-only directory).
    deb_copy_local: str | None = None
    # Runs on the host: checks Docker is there, merges registry mirrors, adds the docker
    # group user.
    docker_setup: str | None = None
    # Runs on the operator machine: streams the image tarball to the host and loads it,
    # skipped when the host already has the exact image ID.
    image_load_local: str | None = None
    # Runs on the host: pulls the image (registry or mirror) when no tarball is used.
    image_pull: str | None = None
    # Runs on the head, after the image step: fails when the image cannot do what the
    # settings ask of it (the Ray backend with an image without Ray).
    image_fit: str | None = None
    # Read-only, on every preview and up: fails when the host lost the image (removed by
    # hand, or the host was rebuilt), so the load or pull above runs again.
    image_present: str | None = None


@dataclass(frozen=True)
class WeightsSteps:
    verify: str
    fetch_local: str | None = None
    fetch_remote: str | None = None
    needs_hub_token: bool = False
    after_head: bool = False
    # A hub download may run the engine image's client: it waits for the image step.
    after_image: bool = False


@dataclass(frozen=True)
class WeightsRetention:
    """What happens to one host's weights when the stack is destroyed (or the host leaves
    `hosts`). Declared for every host in `hosts`, serving or not, whatever
    model.keep_on_destroy says: only its `delete` changes with the setting, so a toggle, or
    a plan that serves on fewer hosts, updates it and never deletes anything."""

    host: Host
    ssh: SshTarget
    # Removes the files this stack wrote (model.keep_on_destroy: false); None keeps them.
    delete: str | None


@dataclass(frozen=True)
class HostDeployment:
    host: Host
    ssh: SshTarget
    scripts: HostScripts
    weights: WeightsSteps
    node: NodeNetwork


@dataclass(frozen=True)
class Deployment:
    hosts: tuple[HostDeployment, ...]  # serving hosts only; hosts[0] is the head
    launch: EngineLaunch
    # At most one of these: a Ray cluster (RayVllmCluster), or vLLM's own multi-node
    # launcher (VllmService with headless ranks); neither for one node (VllmService).
    layout: RayLayout | None
    multi_node: MultiNodeLayout | None
    ready_timeout_s: int
    image_id: str | None  # from the tarball, when one is used
    # One per host in settings.hosts (not only the serving ones), in that order.
    retention: tuple[WeightsRetention, ...] = ()

    @property
    def head(self) -> HostDeployment:
        return self.hosts[0]


def engine_launch(settings: Settings, plan: Plan) -> EngineLaunch:
    s = settings.serving
    return EngineLaunch(
        model_path=settings.model.path,
        served_model_name=settings.model.served_model_name,
        tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size,
        max_model_len=plan.max_model_len,
        max_num_seqs=plan.max_num_seqs,
        gpu_memory_utilization=plan.gpu_memory_utilization,
        kv_cache_dtype=plan.kv_cache_dtype,
        trust_remote_code=settings.model.trust_remote_code,
        port=s.port,
        distributed_executor_backend=s.distributed_backend if plan.nodes > 1 else None,
        expert_parallel=plan.expert_parallel,
        extra_args=tuple(s.extra_args),
    )


def _ssh_target(settings: Settings, host: Host, files: OperatorFiles) -> SshTarget:
    b = settings.ssh.bastion
    return SshTarget(
        address=host.address,
        user=host.user,
        port=host.port,
        private_key_file=files.private_key_file,
        known_hosts_file=files.known_hosts_file,
        bastion=Bastion(b.address, b.user, b.port) if b else None,
        connect_timeout_s=settings.ssh.connect_timeout_s,
    )


def run_over_ssh(target: SshTarget, script: str, tag: str = "VLLM_CLUSTER_SCRIPT") -> str:
    """An operator-side bash line that runs `script` on the host (script on stdin)."""
    if any(line.strip() == tag for line in script.splitlines()):
        raise ValueError(f"heredoc tag {tag} occurs in the script")
    return f"{shlex.join([*target.ssh_command(), 'bash', '-s'])} <<'{tag}'\n{script}\n{tag}\n"


def _say(message: str) -> str:
    """An operator-side line printing `message` to stderr, as an inert word (paths and names
    may hold quotes, spaces or ``$(...)``)."""
    return f"printf '%s\\n' {shlex.quote(message)} >&2"


def image_stream_load(target: SshTarget, host: str, image: str, image_id: str, tar: str) -> str:
    """Operator-side: stream the image tarball into `docker load` on the host over SSH
    (no temporary copy on the host), skipped when the host has exactly `image_id`."""
    check = run_over_ssh(target, image_check(host, image, image_id))
    ssh = shlex.join([*target.ssh_command(), "docker", "load"])
    qtar = shlex.quote(tar)
    return f"""set -euo pipefail
have=$({check.rstrip()}
)
if [ "$have" = present ]; then
  {_say(f"[{host}] image: {image} ({image_id[:19]}) already loaded, nothing copied")}
  exit 0
fi
size=$(du -h -- {qtar} | cut -f1)
printf '%s (%s) into docker load\\n' {shlex.quote(f"[{host}] image: streaming {tar}")} "$size" >&2
start=$SECONDS
{ssh} < {qtar} >&2
have=$({check.rstrip()}
)
if [ "$have" != present ]; then
  {_say(f"[{host}] image: {image} is not {image_id} after loading")}
  exit 1
fi
printf '%s %ss\\n' {shlex.quote(f"[{host}] image: loaded in")} "$((SECONDS - start))" >&2
"""


def _deb_files(deb_dir: Path) -> tuple[DebFile, ...]:
    """The .deb files in docker.deb_dir (regular files, sorted) with their SHA-256: the only
    files the host installs."""
    found = []
    for path in sorted(deb_dir.glob("*.deb")):
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            found.append(DebFile(path.name, digest.hexdigest()))
    return tuple(found)


def _deb_copy_local(settings: Settings, host: Host, target: SshTarget, base: Path) -> str | None:
    """Operator-side: when Docker is installed from .debs and the host has no dockerd,
    stream exactly the .deb files of docker.deb_dir (a tar) into the host's deb step, which
    checks each file's SHA-256 and installs only those (components.render.shell.
    docker_debs_install)."""
    d = settings.docker
    if not (d.install and d.deb_dir):
        return None
    deb_dir = (base / d.deb_dir).resolve()
    debs = _deb_files(deb_dir)
    if not debs:
        raise ValueError(f"docker.deb_dir: no .deb files in {deb_dir}")
    script = docker_debs_install(DebsSpec(host=host.name, debs=debs))
    ssh = shlex.join(target.ssh_command())
    tar = shlex.join(["tar", "-C", str(deb_dir), "-cf", "-", "--", *(x.name for x in debs)])
    lines = [
        "set -euo pipefail",
        f"if {ssh} 'command -v dockerd >/dev/null 2>&1' </dev/null; then",
        f"  {_say(f'[{host.name}] docker: present, the .deb files are not sent')}",
        "  exit 0",
        "fi",
        f"{tar} | {ssh} {shlex.quote(remote_command(script))} >&2",
    ]
    return "\n".join(lines) + "\n"


def _docker_setup(settings: Settings, host: Host) -> str | None:
    """On the host: install Docker (from the copied .debs), registry mirrors, docker group."""
    d = settings.docker
    if not (d.install or d.registry_mirrors or d.docker_group_user):
        return None
    return docker_install(
        DockerSpec(
            host=host.name,
            install=d.install,
            registry_mirrors=tuple(d.registry_mirrors),
            group_user=d.docker_group_user,
        )
    )


def _local_manifest_push(settings: Settings, target: SshTarget, base: Path) -> str:
    """Operator-side: write the manifest of the local model directory next to the weights
    on the host, so verify (and fan-out) can check every file by size or sha256."""
    assert settings.model.local_dir is not None
    local_dir = base / settings.model.local_dir
    manifest = build_manifest(str(local_dir), sha256=settings.model.verify == "sha256")
    body = json.dumps(manifest, sort_keys=True, indent=1)
    dest = shlex.quote(f"{settings.model.path}/{WEIGHTS_MANIFEST}")
    return run_over_ssh(
        target, f"cat > {dest} <<'VLLM_CLUSTER_MANIFEST'\n{body}\nVLLM_CLUSTER_MANIFEST"
    )


def _weights_steps(
    settings: Settings,
    host: Host,
    target: SshTarget,
    head: HostDeployment | None,
    base: Path,
    owner: str,
) -> WeightsSteps:
    m = settings.model
    verify = weights_verify(host.name, m.path, m.verify, require_manifest=m.source == "local")
    # Every copy into the model path is wrapped in claim begin/end on the host: what it adds
    # is recorded as this stack's, the only files weights_delete may remove.
    # On the host's data disk: nothing is written there while it is not mounted.
    mount_point = _data_mount(host, m.path)
    claim_begin = run_over_ssh(
        target, weights_ensure_dir(host.name, m.path, owner, mount_point=mount_point)
    ).rstrip()
    claim_end = run_over_ssh(target, weights_claim_end(host.name, m.path, owner)).rstrip()
    if head is not None and m.distribution == "fanout":
        spec = FanoutSpec(
            source_host=head.host.name,
            target_host=host.name,
            source_address=head.host.address,
            path=m.path,
            marker=f"{head.host.name}-to-{host.name}",
            source_user=head.host.user,
            source_port=head.host.port,
            # The grant accepts the temporary key only from the target's address.
            from_address=host.address,
            verify=m.verify,
        )
        driver = fanout_driver(spec, head.ssh.endpoint(), target.endpoint())
        # The driver is a whole script (it may `exit 0` early): a subshell keeps claim_end.
        fetch = "\n".join(["set -euo pipefail", claim_begin, "(", driver.rstrip(), ")", claim_end])
        return WeightsSteps(verify, fetch_local=fetch + "\n", after_head=True)
    if m.source == "local":
        assert m.local_dir is not None
        local_dir = str((base / m.local_dir).resolve())
        fetch = "\n".join(
            [
                "set -euo pipefail",
                claim_begin,
                _say(f"[{host.name}] weights: rsync {local_dir} -> {m.path}"),
                shlex.join(rsync_argv(local_dir, target.endpoint(), m.path)) + " >&2",
                _local_manifest_push(settings, target, base).rstrip(),
                claim_end,
            ]
        )
        return WeightsSteps(verify, fetch_local=fetch + "\n")
    assert m.id is not None
    spec_dl = DownloadSpec(
        host=host.name,
        source=m.source,
        model_id=m.id,
        path=m.path,
        revision=m.revision,
        endpoint=m.hub_endpoint,
        token="stdin" if settings.secrets.hub_token else "none",
        verify=m.verify,
        owner=owner,
        mount_point=mount_point,
        engine_image=settings.image.name,
    )
    return WeightsSteps(
        verify,
        fetch_remote=weights_download(spec_dl),
        needs_hub_token=settings.secrets.hub_token,
        after_image=True,
    )


def _data_mount(host: Host, path: str) -> str | None:
    """The host's storage.mount_point when the model path is on it, else None."""
    st = host.storage
    if st is None:
        return None
    # Both are validated normalised (no trailing or repeated '/', never '/' itself).
    mp = st.mount_point
    return mp if path == mp or path.startswith(mp + "/") else None


def _weights_retention(
    settings: Settings, files: OperatorFiles, rendered: list[HostDeployment], owner: str
) -> tuple[WeightsRetention, ...]:
    m = settings.model
    serving = {hd.host.name: hd.ssh for hd in rendered}
    return tuple(
        WeightsRetention(
            host=host,
            ssh=serving.get(host.name) or _ssh_target(settings, host, files),
            delete=None if m.keep_on_destroy else weights_delete(host.name, m.path, owner),
        )
        for host in settings.hosts
    )


def render_deployment(
    settings: Settings, plan: Plan, files: OperatorFiles, base_dir: Path, owner: str
) -> Deployment:
    """Everything the components declare, for the first `plan.nodes` hosts. `owner` is the
    deployment's ``<project>/<stack>``, the label its serving containers carry."""
    serving_hosts = settings.hosts[: plan.nodes]
    multi = plan.nodes > 1
    backend = settings.serving.distributed_backend if multi else None
    image = settings.image
    tarball = str((base_dir / image.tarball).resolve()) if image.tarball else None
    try:
        image_id = tarball_image_id(tarball, image.name) if tarball else None
    except (ValueError, KeyError, OSError, tarfile.TarError) as exc:
        raise ValueError(
            f"image.tarball: {exc}. Fix: save the image the config names into it "
            f"(`docker save -o <file> {image.name}`) or set image.name to a tag it holds"
        ) from None
    s = settings.serving
    rendered: list[HostDeployment] = []
    for index, host in enumerate(serving_hosts):
        target = _ssh_target(settings, host, files)
        is_head = index == 0
        ports: tuple[int, ...] = ()
        if is_head:
            ports = (s.port,)
            if backend == "ray":
                ports += (s.ray_port,)
            elif backend == "mp":
                ports += (s.master_port,)
        needed = plan.checkpoint_bytes or plan.weight_bytes
        pre = PreflightSpec(
            host=host.name,
            weights_path=settings.model.path,
            gpus=GpuExpectation(host.gpus.count, host.gpus.model, host.gpus.memory_gib),
            nic=host.nic,
            address=host.address,
            multi_node=multi,
            needed_bytes=needed,
            storage_device=host.storage.device if host.storage else None,
            storage_mount_point=host.storage.mount_point if host.storage else None,
            ipc_host=s.ipc_host,
            min_shm_bytes=MIN_HOST_SHM_BYTES if s.ipc_host else 0,
            ports=ports,
            own_containers=OWN_CONTAINERS,
            owner=owner,
            docker_optional=settings.docker.install,
            required_commands=("python3",),
            extra_facts={"role": "head" if is_head else "worker"},
        )
        scripts = HostScripts(
            preflight=preflight(pre),
            storage=storage(
                StorageSpec(
                    host=host.name,
                    device=host.storage.device,
                    mount_point=host.storage.mount_point,
                    filesystem=host.storage.filesystem,
                    allow_format=host.storage.allow_format,
                )
            )
            if host.storage
            else None,
            deb_copy_local=_deb_copy_local(settings, host, target, base_dir),
            docker_setup=_docker_setup(settings, host),
            image_load_local=image_stream_load(target, host.name, image.name, image_id, tarball)
            if tarball and image_id
            else None,
            image_pull=None if tarball else image_pull(host.name, image.name),
            image_present=image_present(host.name, image.name, image_id),
            image_fit=image_has_ray(host.name, image.name)
            if is_head and backend == "ray"
            else None,
        )
        head = rendered[0] if rendered else None
        node = NodeNetwork(
            address=host.address,
            socket_ifname=settings.nccl_ifname(host),
            infiniband_hca=s.infiniband.hca if s.infiniband.enabled else None,
        )
        rendered.append(
            HostDeployment(
                host=host,
                ssh=target,
                scripts=scripts,
                weights=_weights_steps(settings, host, target, head, base_dir, owner),
                node=node,
            )
        )
    ready_timeout = s.ready_timeout_s or plan.ready_timeout_s
    layout = None
    multi_node = None
    if backend == "ray":
        layout = RayLayout(
            head_address=serving_hosts[0].address,
            ray_port=s.ray_port,
            gpus_per_node=plan.gpus_per_node,
            nodes={h.name: h.address for h in serving_hosts},
            join_timeout_s=ready_timeout,
        )
    elif backend == "mp":
        multi_node = MultiNodeLayout(
            master_address=serving_hosts[0].address,
            master_port=s.master_port,
            nodes=tuple((h.name, h.address) for h in serving_hosts),
            join_timeout_s=ready_timeout,
        )
    return Deployment(
        hosts=tuple(rendered),
        launch=engine_launch(settings, plan),
        layout=layout,
        multi_node=multi_node,
        ready_timeout_s=ready_timeout,
        image_id=image_id,
        retention=_weights_retention(settings, files, rendered, owner),
    )
