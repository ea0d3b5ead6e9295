"""The whole program (__main__.py) under Pulumi mocks: config in, resource graph out.

Each test writes the operator-side files a stack refers to (model config, SSH key,
known_hosts, image tarball) into a temporary project directory, sets the stack config the
way `pulumi config set` would, runs __main__.py and inspects what it declared.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import runpy
import shlex
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest

from tests.tiny_model import TINY_CONFIG
from tests.unit.pulumi_mocks import RecordingMocks, is_secret, reveal

REPO = Path(__file__).resolve().parents[2]
IMAGE_ID = "sha256:" + "ab" * 32
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBlahBlahBlahBlahBlahBlahBlahBlahBlahBlahBlah"


def write_project(tmp: Path, hosts: int) -> dict[str, Any]:
    model = tmp / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_CONFIG))
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    (tmp / "id_test").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    addresses = [f"10.9.0.{i + 1}" for i in range(hosts)]
    (tmp / "known_hosts").write_text("".join(f"{a} {HOST_KEY}\n" for a in addresses))
    manifest = json.dumps([{"Config": f"blobs/sha256/{IMAGE_ID[7:]}", "RepoTags": ["eng:1"]}])
    with tarfile.open(tmp / "image.tar", "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest.encode()))
    return {
        "hosts": [
            {
                "name": f"n{i + 1}",
                "address": a,
                "nic": "eth0",
                "gpus": {"count": 2, "model": "NVIDIA H20", "memory_gib": 96},
            }
            for i, a in enumerate(addresses)
        ],
        "ssh": {"private_key_file": "id_test", "known_hosts_file": "known_hosts"},
        "model": {
            "source": "local",
            "local_dir": "model",
            "path": "/data/models/tiny",
            "served_name": "tiny",
        },
        "image": {"name": "eng:1", "tarball": "image.tar"},
        "serving": {"max_model_len": 1024, "max_num_seqs": 4},
    }


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield tmp_path


def mock_stack(config: dict[str, Any], secrets: dict[str, str]) -> RecordingMocks:
    """Fresh mocks for stack `t`, with `config` as its vllm-cluster: keys and `secrets` set
    as Pulumi secrets."""
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="vllm-cluster", stack="t", preview=False)
    values = {f"vllm-cluster:{k}": json.dumps(v) for k, v in config.items()}
    values.update({f"vllm-cluster:{k}": v for k, v in secrets.items()})
    pulumi.runtime.set_all_config(values, secret_keys=[f"vllm-cluster:{k}" for k in secrets])
    return mocks


def run_program(config: dict[str, Any], secrets: dict[str, str]) -> RecordingMocks:
    mocks = mock_stack(config, secrets)

    @pulumi.runtime.test
    def program() -> None:
        runpy.run_path(str(REPO / "__main__.py"), run_name="__main__")

    program()
    return mocks


def test_the_image_id_is_the_configured_images_in_a_tarball_of_several(project: Path) -> None:
    """A `docker save` of two images: the host steps load and check the ID of the image the
    config names (second in manifest.json), not the first entry's."""
    config = write_project(project, hosts=1)
    other = "sha256:" + "cd" * 32
    manifest = json.dumps(
        [
            {"Config": f"blobs/sha256/{other[7:]}", "RepoTags": ["other:2"]},
            {"Config": f"blobs/sha256/{IMAGE_ID[7:]}", "RepoTags": ["eng:1"]},
        ]
    )
    with tarfile.open(project / "image.tar", "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest.encode()))
    mocks = run_program(config, {"apiKey": "sk-lab"})
    load = mocks.named("n1-image-load").script
    check = mocks.named("n1-image-check").inputs["checks"]["image"]
    assert IMAGE_ID in load and IMAGE_ID in check
    assert other not in load and other not in check


def test_two_hosts_serve_through_vllms_own_launcher_by_default(project: Path) -> None:
    config = write_project(project, hosts=2)
    config["serving"].update({"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    mocks = run_program(config, {"apiKey": "sk-lab"})
    types = [r.type_ for r in mocks.resources]
    assert types.count("vllm-cluster:index:VllmService") == 1
    assert "vllm-cluster:index:RayVllmCluster" not in types
    rank0 = mocks.named("serving-server")
    assert rank0.inputs["name"] == "vllm-server"
    script = rank0.inputs["command"][1]
    assert "exec vllm serve /data/models/tiny --served-model-name tiny" in script
    assert "--distributed-executor-backend mp --nnodes 2 --node-rank 0" in script
    assert "--master-addr 10.9.0.1 --master-port 29501" in script
    assert "--headless" not in script
    assert "VLLM_API_KEY=sk-lab" in reveal(rank0.inputs["envs"])
    headless = mocks.named("serving-headless-n2")
    assert headless.inputs["name"] == "vllm-headless"
    assert headless.inputs["entrypoints"] == ["bash"]
    assert headless.inputs["command"][0] == "-c"
    last = headless.inputs["command"][1].rstrip("\n").rsplit("\n", 1)[1]
    argv = shlex.split(last)
    assert argv[:3] == ["exec", "vllm", "serve"]
    assert argv[argv.index("--node-rank") + 1] == "1" and argv[-1] == "--headless"
    assert "VLLM_HOST_IP=10.9.0.2" in headless.inputs["envs"]
    assert not any(e.startswith("VLLM_API_KEY") for e in headless.inputs["envs"])
    # Rank 0 names the headless containers (short IDs): replacing one replaces rank 0.
    labels = {lbl["label"]: lbl["value"] for lbl in rank0.inputs["labels"]}
    assert labels["vllm-cluster.ranks"] == "serving-headless-n2-id"[:12]
    headless_labels = {lbl["label"] for lbl in headless.inputs["labels"]}
    assert "vllm-cluster.head" not in headless_labels
    assert mocks.named("serving-ready").inputs["triggers"] == [
        "serving-server-id",
        "serving-headless-n2-id",
    ]
    # Preflight reserves the API and rendezvous ports on the head; no Ray check.
    assert "29501" in mocks.named("n1-preflight").script
    assert not [r for r in mocks.resources if r.name.endswith("-image-fit")]


def test_two_hosts_with_the_ray_backend_become_a_ray_cluster(project: Path) -> None:
    config = write_project(project, hosts=2)
    config["serving"].update(
        {"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "distributed_backend": "ray"}
    )
    mocks = run_program(config, {"apiKey": "sk-lab"})
    types = [r.type_ for r in mocks.resources]
    assert types.count("vllm-cluster:index:GpuHost") == 2
    assert types.count("vllm-cluster:index:RayVllmCluster") == 1
    assert "vllm-cluster:index:VllmService" not in types
    # The image must carry Ray: checked on the head before any engine container starts.
    fit = mocks.named("n1-image-fit")
    assert "import ray" in fit.script
    assert "serving.distributed_backend: mp" in fit.script
    assert fit.inputs["triggers"] == ["n1-image-load-id"]
    assert not [r for r in mocks.resources if r.name == "n2-image-fit"]
    head = mocks.named("serving-head")
    script = head.inputs["command"][1]
    assert "--tensor-parallel-size 2 --pipeline-parallel-size 2" in script
    assert "--distributed-executor-backend ray" in script
    assert "VLLM_API_KEY=sk-lab" in reveal(head.inputs["envs"])
    worker = mocks.named("serving-worker-n2")
    assert "--address=10.9.0.1:6379" in worker.inputs["command"][1]
    # The image is streamed only when the host lacks this exact ID.
    load = mocks.named("n2-image-load").script
    assert IMAGE_ID in load and "docker load" in load
    # ... and loaded again when the host lost it: a check on every preview/up triggers it.
    check = mocks.named("n2-image-check").inputs
    assert check["part"] == "image" and check["label"] == "n2:eng:1"
    assert IMAGE_ID in check["checks"]["image"]
    # The host's checks ride together (one SSH round trip per host): the image's and the
    # weights' checks carry the same scripts, and the weights' is what the fetch verifies.
    weights_check = mocks.named("weights-n2-check").inputs
    assert weights_check["part"] == "weights" and weights_check["checks"] == check["checks"]
    assert check["checks"]["weights"] in mocks.named("weights-n2-fetch").script
    # ... and the prefetch that starts every host's round trip at once carries the same
    # scripts and argv, so the checks find its results.
    prefetched = mocks.named("drift-prefetch").inputs["hosts"]
    assert sorted(prefetched) == ["n1", "n2"]
    assert prefetched["n2"] == {"ssh_argv": check["ssh_argv"], "checks": check["checks"]}
    assert len(mocks.named("n2-image-load").inputs["triggers"]) == 1
    # Local weights: the operator machine pushes them to every host (distribute: each).
    for name in ("n1", "n2"):
        fetch = mocks.named(f"weights-{name}-fetch").script
        assert "rsync" in fetch and "fanout" not in fetch
    # Preflight checks what the config expects of each host.
    preflight = mocks.named("n1-preflight").script
    assert "NVIDIA H20" in preflight and "eth0" in preflight and "10.9.0.1" in preflight
    # Containers carry the stack as their owner; preflight refuses another owner's.
    assert "OWNER=vllm-cluster/t" in preflight
    for container in (head, worker):
        labels = {lbl["label"]: lbl["value"] for lbl in container.inputs["labels"]}
        assert labels["vllm-cluster.stack"] == "vllm-cluster/t"
    # Every SSH client pins the host keys from ssh.known_hosts_file: pulumi-command's
    # connection (with the key file's contents as a secret) and OpenSSH's (checks, copies).
    for index, name in enumerate(("n1", "n2")):
        step = mocks.named(f"{name}-preflight")
        assert step.type_ == "command:remote:Command"
        assert is_secret(step.inputs["connection"])
        connection = reveal(step.inputs["connection"])
        assert connection["host"] == f"10.9.0.{index + 1}"
        assert connection["hostKey"] == HOST_KEY
        assert connection["privateKey"] == (project / "id_test").read_text()
        assert "proxy" not in connection
    check_argv = mocks.named("n1-image-check").inputs["ssh_argv"]
    assert "StrictHostKeyChecking=yes" in check_argv
    assert f"UserKnownHostsFile={project / 'known_hosts'}" in check_argv
    load = mocks.named("n1-image-load").script
    assert f"UserKnownHostsFile={project / 'known_hosts'}" in load


def test_bastion_is_pinned_for_every_client(project: Path) -> None:
    config = write_project(project, hosts=1)
    bastion_key = HOST_KEY.replace("Blah", "Bast")
    config["ssh"]["bastion"] = {"address": "10.9.9.9", "user": "jump", "host_key": bastion_key}
    mocks = run_program(config, {"apiKey": "sk-lab"})
    proxy = reveal(mocks.named("n1-preflight").inputs["connection"])["proxy"]
    assert (proxy["host"], proxy["user"], proxy["port"]) == ("10.9.9.9", "jump", 22)
    assert proxy["hostKey"] == bastion_key
    assert reveal(proxy["privateKey"]) == (project / "id_test").read_text()


def test_unpinned_bastion_is_refused_by_key(project: Path) -> None:
    config = write_project(project, hosts=1)
    config["ssh"]["bastion"] = {"address": "10.9.9.9"}
    with pytest.raises(Exception, match=r"ssh\.bastion\.host_key: no pinned host key"):
        run_program(config, {"apiKey": "sk-lab"})


def test_one_host_goes_through_vllm_service_alone(project: Path) -> None:
    mocks = run_program(write_project(project, hosts=1), {"apiKey": "sk-lab"})
    types = [r.type_ for r in mocks.resources]
    assert types.count("vllm-cluster:index:VllmService") == 1
    assert "vllm-cluster:index:RayVllmCluster" not in types
    server = mocks.named("serving-server")
    assert server.inputs["name"] == "vllm-server"
    assert "--distributed-executor-backend" not in server.inputs["command"]
    assert "--tensor-parallel-size" in server.inputs["command"]


def test_plan_uses_fewest_hosts_that_fit(project: Path) -> None:
    """A tiny model on 3 hosts with auto layout serves on one; the others are untouched."""
    mocks = run_program(write_project(project, hosts=3), {"apiKey": "sk-lab"})
    hosts = [r.name for r in mocks.of_type("vllm-cluster:index:GpuHost")]
    assert hosts == ["n1"]


def test_invalid_settings_stop_before_any_resource(project: Path) -> None:
    config = write_project(project, hosts=2)
    config["hosts"][1]["address"] = "not an address!"
    config["serving"]["gpu_memory_utilization"] = 1.5
    with pytest.raises(Exception) as info:
        run_program(config, {"apiKey": "sk-lab"})
    message = str(info.value)
    assert "hosts[1].address" in message
    assert "serving.gpu_memory_utilization" in message


def test_plan_that_cannot_fit_fails_with_the_reason(project: Path) -> None:
    config = write_project(project, hosts=1)
    config["hosts"][0]["gpus"]["memory_gib"] = 0.1
    with pytest.raises(Exception) as info:
        run_program(config, {"apiKey": "sk-lab"})
    assert "cannot fit" in str(info.value)


@pytest.mark.parametrize("tags", [["other:2"], None])
def test_a_tarball_without_the_configured_tag_is_refused_before_any_resource(
    project: Path, tags: list[str] | None
) -> None:
    """`docker load` restores the tarball's tags: without image.name among them the engine
    could not start, after streaming the whole tarball. Refused at preview instead."""
    config = write_project(project, hosts=1)
    manifest = json.dumps([{"Config": f"blobs/sha256/{IMAGE_ID[7:]}", "RepoTags": tags}])
    with tarfile.open(project / "image.tar", "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest.encode()))
    with pytest.raises(Exception) as info_:
        run_program(config, {"apiKey": "sk-lab"})
    message = str(info_.value)
    assert message.startswith("image.tarball: "), message
    assert f"no image tagged eng:1 among its 1 image(s) (tags: {tags[0] if tags else 'none'})" in (
        message
    )
    assert "docker save -o <file> eng:1" in message


def test_unpinned_host_is_refused(project: Path) -> None:
    config = write_project(project, hosts=2)
    (project / "known_hosts").write_text(f"10.9.0.1 {HOST_KEY}\n")
    with pytest.raises(Exception) as info:
        run_program(config, {"apiKey": "sk-lab"})
    assert "hosts[1].host_key" in str(info.value)


def test_secret_ssh_key_is_written_private_and_never_exported(project: Path) -> None:
    config = write_project(project, hosts=1)
    del config["ssh"]["private_key_file"]
    mocks = run_program(config, {"apiKey": "sk-lab", "sshPrivateKey": "KEY MATERIAL"})
    key_file = project / "cache" / "vllm-cluster" / "vllm-cluster" / "t" / "id_ssh"
    assert key_file.read_text() == "KEY MATERIAL\n"
    assert os.stat(key_file).st_mode & 0o077 == 0
    provider = mocks.named("n1-docker")
    assert str(key_file) in provider.inputs["sshOpts"]


HUB_MODEL = {"source": "huggingface", "id": "org/tiny", "local_dir": None}


@pytest.mark.parametrize(
    ("model", "n2_fans_out"),
    [
        ({"distribute": "fanout"}, True),
        ({"distribute": "each"}, False),
        (HUB_MODEL, True),
        ({**HUB_MODEL, "distribute": "each"}, False),
    ],
)
def test_weights_distribution(project: Path, model: dict[str, Any], n2_fans_out: bool) -> None:
    """From a hub the head downloads once and n2 copies from it; fanout/each when asked."""
    config = write_project(project, hosts=2)
    config["serving"].update({"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    config["model"].update(model)
    if config["model"].get("local_dir") is None:
        config["model"].pop("local_dir")
        config["model"]["config_file"] = "model/config.json"
    mocks = run_program(config, {"apiKey": "sk-lab"})
    n1 = mocks.named("weights-n1-fetch").script
    n2 = mocks.named("weights-n2-fetch").script
    assert "fanout" not in n1
    assert ("fanout" in n2) is n2_fans_out


def test_fanout_grant_is_bound_to_the_target_address(project: Path) -> None:
    """The head accepts n2's temporary key only from n2's address (from=)."""
    config = write_project(project, hosts=2)
    config["serving"].update({"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    config["model"].update(HUB_MODEL)
    config["model"].pop("local_dir")
    config["model"]["config_file"] = "model/config.json"
    mocks = run_program(config, {"apiKey": "sk-lab"})
    driver = mocks.named("weights-n2-fetch").script
    assert "FROM=10.9.0.2" in driver


def test_bastion_hop_of_openssh_clients_uses_the_pinned_key_and_known_hosts(
    project: Path,
) -> None:
    """No `-J` (its hop ssh would use default keys and ~/.ssh/known_hosts): a ProxyCommand
    with the stack's key, the pinned known_hosts (which pins the bastion too), strict."""
    config = write_project(project, hosts=1)
    bastion_key = HOST_KEY.replace("Blah", "Bast")
    config["ssh"]["bastion"] = {"address": "10.9.9.9", "user": "jump", "host_key": bastion_key}
    mocks = run_program(config, {"apiKey": "sk-lab"})
    raw = mocks.named("n1-docker").inputs["sshOpts"]
    opts = json.loads(raw) if isinstance(raw, str) else raw
    assert "-J" not in opts
    proxy = next(o for o in opts if o.startswith("ProxyCommand="))
    hop = shlex.split(proxy[len("ProxyCommand=") :])
    known = next(o for o in opts if o.startswith("UserKnownHostsFile="))
    assert hop[0] == "ssh" and hop[-3:] == ["-W", "[%h]:%p", "jump@10.9.9.9"]
    for word in (
        str(project / "id_test"),
        "IdentitiesOnly=yes",
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
        known,
    ):
        assert word in hop, word
    kh = Path(known.split("=", 1)[1]).read_text()
    assert f"10.9.9.9 {bastion_key}" in kh.splitlines()
    load = mocks.named("n1-image-load").script
    assert " -J " not in load and "ProxyCommand=" in load


def test_docker_debs_are_sent_by_name_and_checksum(project: Path) -> None:
    """Only the .deb files of docker.deb_dir, each with its SHA-256, go to the host's
    install step; nothing goes to /var/tmp."""
    config = write_project(project, hosts=1)
    debs = project / "debs"
    debs.mkdir()
    (debs / "docker-ce_1_amd64.deb").write_bytes(b"docker")
    (debs / "notes.txt").write_text("not a package")
    config["docker"] = {"install": True, "deb_dir": "debs"}
    mocks = run_program(config, {"apiKey": "sk-lab"})
    create = mocks.named("n1-deb-copy").script
    assert f"tar -C {debs} -cf - -- docker-ce_1_amd64.deb |" in create
    assert hashlib.sha256(b"docker").hexdigest() in create
    assert "notes.txt" not in create
    assert "/var/tmp" not in create


def _non_secret(value: Any) -> Any:
    """The value with every secret-wrapped part replaced by a placeholder."""
    if is_secret(value):
        return "<secret>"
    if isinstance(value, dict):
        return {k: _non_secret(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_non_secret(v) for v in value]
    return value


def _run_capturing_exports(
    config: dict[str, Any], secrets: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[RecordingMocks, dict[str, tuple[bool, Any]]]:
    """run_program, plus every stack output as (is_secret, value)."""
    exported: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.__setitem__(name, value))
    resolved: dict[str, tuple[bool, Any]] = {}
    mocks = mock_stack(config, secrets)

    @pulumi.runtime.test
    def program() -> Any:
        runpy.run_path(str(REPO / "__main__.py"), run_name="__main__")

        async def settle() -> None:
            for name, value in exported.items():
                out = pulumi.Output.from_input(value)
                resolved[name] = (await out.is_secret(), await out.future())

        return pulumi.Output.from_input(settle())

    program()
    return mocks, resolved


def test_no_secret_or_anything_derived_from_it_is_stored_in_plain_text(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pulumi state keeps every resource input and stack output; only secret-wrapped ones
    are encrypted. Two runs with different API key, SSH key and hub token must give the
    same non-secret inputs and outputs (so none is derived from a secret, hashed or not),
    and no plain value may hold a secret or its SHA-256."""
    config = write_project(project, hosts=2)
    config["serving"].update({"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    config["model"].update(HUB_MODEL)
    config["model"].pop("local_dir")
    config["model"]["config_file"] = "model/config.json"
    del config["ssh"]["private_key_file"]

    def secrets(tag: str) -> dict[str, str]:
        return {
            "apiKey": f"sk-api-{tag}",
            "sshPrivateKey": f"-----BEGIN OPENSSH PRIVATE KEY-----\nkey-{tag}\n",
            "hubToken": f"hf_token_{tag}",
        }

    runs = []
    for tag in ("alpha", "omega"):
        mocks, outputs = _run_capturing_exports(config, secrets(tag), monkeypatch)
        plain_inputs = {r.name: _non_secret(r.inputs) for r in mocks.resources}
        plain_outputs = {k: v for k, (secret, v) in outputs.items() if not secret}
        text = json.dumps([plain_inputs, plain_outputs], sort_keys=True, default=str)
        for value in secrets(tag).values():
            for form in (value, value.strip(), hashlib.sha256(value.encode()).hexdigest()):
                assert form not in text, f"{form!r} stored in plain text"
        assert outputs["api_key"][0] is True  # exported, but as a secret
        runs.append((plain_inputs, plain_outputs))
    assert runs[0] == runs[1]
    # The secrets did reach the resources that need them, as secrets.
    stdin = mocks.named("weights-n1-fetch").inputs["stdin"]
    assert is_secret(stdin) and reveal(stdin) == "hf_token_omega"
