"""render_deployment: from a stack config to what each host's steps are asked to do.

The shell renderers have their own tests that run the scripts (tests/scripts); what is
tested here is that each setting reaches the step that acts on it, for the right host: the
spec every renderer is called with, recorded by a spy that still calls the real renderer.
Expected values are written from the config below and the plan, not from the renderer.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import components.render.deployment as deployment
from components.plan.sizing import plan_from_settings
from components.render.deployment import (
    MIN_HOST_SHM_BYTES,
    OWN_CONTAINERS,
    Deployment,
    render_deployment,
)
from components.render.operator_files import OperatorFiles
from components.render.shell import (
    DebFile,
    DockerSpec,
    DownloadSpec,
    FanoutSpec,
    GpuExpectation,
    PreflightSpec,
    StorageSpec,
)
from components.render.ssh import SshTarget
from components.settings import load_settings
from tests.tiny_model import TINY_CONFIG as _TINY

OWNER = "vllm-cluster/t"
# Six layers: up to PP 3 (one layer per stage at least) in the fan-out test.
TINY_CONFIG = {**_TINY, "num_hidden_layers": 6}
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBlahBlahBlahBlahBlahBlahBlahBlahBlahBlahBlah"
SPIED = (
    "preflight",
    "storage",
    "docker_install",
    "weights_verify",
    "weights_ensure_dir",
    "weights_download",
    "fanout_driver",
    "rsync_argv",
    "build_manifest",
)


def base_config(tmp: Path, hosts: int) -> dict[str, Any]:
    model = tmp / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(TINY_CONFIG))
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    (tmp / "id_test").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    (tmp / "known_hosts").write_text("")
    return {
        "hosts": [
            {
                "name": f"n{i + 1}",
                "address": f"10.9.0.{i + 1}",
                "nic": f"ens{i + 1}",
                "gpus": {"count": 2, "model": "NVIDIA H20", "memory_gib": 96},
            }
            for i in range(hosts)
        ],
        "ssh": {"private_key_file": "id_test", "known_hosts_file": "known_hosts"},
        "model": {
            "source": "local",
            "local_dir": "model",
            "path": "/data01/models/tiny",
            "served_name": "tiny",
        },
        "image": {"name": "eng:1"},
        # TP 2 x PP n: every host serves.
        "serving": {
            "max_model_len": 1024,
            "max_num_seqs": 4,
            "tensor_parallel_size": 2,
            "pipeline_parallel_size": hosts,
        },
    }


Calls = dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Every call render_deployment makes to the renderers in SPIED, in order."""
    recorded: Calls = {name: [] for name in SPIED}

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            recorded[name].append((args, kwargs))
            return real(*args, **kwargs)

        return wrapper

    for name in SPIED:
        monkeypatch.setattr(deployment, name, spy(name, getattr(deployment, name)))
    return recorded


def render(
    tmp: Path, config: dict[str, Any], *, hub_token: bool = False
) -> tuple[Deployment, Any, Any]:
    settings = load_settings(
        config, {"apiKey": True, "hubToken": hub_token, "sshPrivateKey": False}, base_dir=tmp
    )
    plan = plan_from_settings(settings, base_dir=tmp)
    files = OperatorFiles(
        private_key_file=str(tmp / "id_test"),
        known_hosts_file=str(tmp / "known_hosts"),
        host_keys={h.name: HOST_KEY for h in settings.hosts},
    )
    return render_deployment(settings, plan, files, tmp, OWNER), settings, plan


def specs(calls: Calls, name: str) -> list[Any]:
    return [args[0] for args, _ in calls[name]]


# --- preflight ---------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "head_ports"), [("ray", (8000, 6379)), ("mp", (8000, 29501))])
def test_preflight_checks_what_each_host_will_need(
    tmp_path: Path, calls: Calls, backend: str, head_ports: tuple[int, ...]
) -> None:
    config = base_config(tmp_path, hosts=2)
    config["serving"]["distributed_backend"] = backend
    if backend == "mp":
        config["serving"]["master_port"] = 29501
    config["hosts"][1]["storage"] = {
        "device": "/dev/disk/by-id/data-disk",
        "filesystem": "ext4",
        "mount_point": "/data01",
    }
    config["docker"] = {"install": True, "deb_dir": "debs"}
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / "docker.io_1_amd64.deb").write_bytes(b"deb")
    dep, _, plan = render(tmp_path, config)
    head, worker = specs(calls, "preflight")
    assert isinstance(head, PreflightSpec) and isinstance(worker, PreflightSpec)
    needed = plan.checkpoint_bytes or plan.weight_bytes
    assert needed > 0
    for spec, n, role in ((head, 1, "head"), (worker, 2, "worker")):
        assert spec.host == f"n{n}"
        assert spec.address == f"10.9.0.{n}" and spec.nic == f"ens{n}"
        assert spec.gpus == GpuExpectation(2, "NVIDIA H20", 96)
        assert spec.weights_path == "/data01/models/tiny"
        assert spec.multi_node is True
        assert spec.needed_bytes == needed
        assert spec.ipc_host is True and spec.min_shm_bytes == MIN_HOST_SHM_BYTES
        assert spec.own_containers == OWN_CONTAINERS and spec.owner == OWNER
        assert spec.docker_optional is True  # docker.install: the docker step installs it
        assert spec.required_commands == ("python3",)
        assert spec.extra_facts == {"role": role}
    # Only the head serves the API and the rendezvous port; only n2 has a data disk.
    assert head.ports == head_ports and worker.ports == ()
    assert (head.storage_device, head.storage_mount_point) == (None, None)
    assert (worker.storage_device, worker.storage_mount_point) == (
        "/dev/disk/by-id/data-disk",
        "/data01",
    )
    assert dep.hosts[0].scripts.preflight != dep.hosts[1].scripts.preflight


def test_one_host_checks_only_the_api_port_and_allows_loopback(
    tmp_path: Path, calls: Calls
) -> None:
    config = base_config(tmp_path, hosts=1)
    config["serving"]["port"] = 8080
    config["serving"]["ipc_host"] = False
    dep, _, _ = render(tmp_path, config)
    (spec,) = specs(calls, "preflight")
    assert spec.ports == (8080,) and spec.multi_node is False
    # Without --ipc host the container has its own /dev/shm: the host's is only reported.
    assert spec.ipc_host is False and spec.min_shm_bytes == 0
    assert spec.docker_optional is False
    assert dep.layout is None and dep.multi_node is None


# --- storage and docker ------------------------------------------------------------------


def test_storage_is_prepared_as_configured_and_only_where_configured(
    tmp_path: Path, calls: Calls
) -> None:
    config = base_config(tmp_path, hosts=2)
    config["hosts"][0]["storage"] = {
        "device": "/dev/disk/by-id/nvme-a",
        "filesystem": "xfs",
        "mount_point": "/data01",
        "allow_format": True,
    }
    dep, _, _ = render(tmp_path, config)
    assert specs(calls, "storage") == [
        StorageSpec(
            host="n1",
            device="/dev/disk/by-id/nvme-a",
            mount_point="/data01",
            filesystem="xfs",
            allow_format=True,
        )
    ]
    assert dep.hosts[0].scripts.storage is not None and dep.hosts[1].scripts.storage is None


@pytest.mark.parametrize(
    ("docker", "expected"),
    [
        ({}, None),
        ({"install": True, "deb_dir": "debs"}, DockerSpec(host="n1", install=True)),
        (
            {"registry_mirrors": ["https://mirror.example"]},
            DockerSpec(host="n1", registry_mirrors=("https://mirror.example",)),
        ),
        ({"docker_group_user": "ops"}, DockerSpec(host="n1", group_user="ops")),
    ],
)
def test_the_docker_step_exists_when_any_docker_setting_asks_for_it(
    tmp_path: Path, calls: Calls, docker: dict[str, Any], expected: DockerSpec | None
) -> None:
    config = base_config(tmp_path, hosts=1)
    config["docker"] = docker
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / "docker.io_1_amd64.deb").write_bytes(b"deb")
    dep, _, _ = render(tmp_path, config)
    assert specs(calls, "docker_install") == ([expected] if expected else [])
    assert (dep.hosts[0].scripts.docker_setup is None) == (expected is None)


def test_deb_files_are_the_regular_deb_files_with_their_sha256(tmp_path: Path) -> None:
    debs = tmp_path / "debs"
    debs.mkdir()
    big = bytes(range(256)) * 9000  # > 2 MiB: hashed in several blocks
    (debs / "b.deb").write_bytes(big)
    (debs / "a.deb").write_bytes(b"a")
    (debs / "notes.txt").write_bytes(b"not a deb")
    (debs / "dir.deb").mkdir()
    (debs / "link.deb").symlink_to(debs / "a.deb")
    assert deployment._deb_files(debs) == (
        DebFile("a.deb", hashlib.sha256(b"a").hexdigest()),
        DebFile("b.deb", hashlib.sha256(big).hexdigest()),
    )


def test_an_empty_deb_dir_is_refused_by_key(tmp_path: Path) -> None:
    config = base_config(tmp_path, hosts=1)
    config["docker"] = {"install": True, "deb_dir": "debs"}
    (tmp_path / "debs").mkdir()
    with pytest.raises(ValueError, match=r"^docker\.deb_dir: no \.deb files in .*/debs$"):
        render(tmp_path, config)


# --- weights -----------------------------------------------------------------------------


def test_local_weights_are_copied_from_the_configured_directory(
    tmp_path: Path, calls: Calls
) -> None:
    config = base_config(tmp_path, hosts=1)
    config["model"]["verify"] = "sha256"
    config["hosts"][0]["storage"] = {
        "device": "/dev/disk/by-id/nvme-a",
        "filesystem": "xfs",
        "mount_point": "/data01",
    }
    dep, _, _ = render(tmp_path, config)
    steps = dep.hosts[0].weights
    assert calls["weights_verify"] == [
        (("n1", "/data01/models/tiny", "sha256"), {"require_manifest": True})
    ]
    # Nothing is written to the model path while the data disk is not mounted.
    assert calls["weights_ensure_dir"] == [
        (("n1", "/data01/models/tiny", OWNER), {"mount_point": "/data01"})
    ]
    (((local_dir, endpoint, path), _),) = calls["rsync_argv"]
    assert (local_dir, path) == (str((tmp_path / "model").resolve()), "/data01/models/tiny")
    assert (endpoint.address, endpoint.user, endpoint.port) == ("10.9.0.1", "root", 22)
    # The manifest sent along hashes every file: verify: sha256.
    (((manifest_dir,), manifest_kwargs),) = calls["build_manifest"]
    assert manifest_dir == str(tmp_path / "model") and manifest_kwargs == {"sha256": True}
    assert steps.fetch_local is not None and steps.fetch_remote is None
    assert not steps.after_head and not steps.after_image and not steps.needs_hub_token


@pytest.mark.parametrize("hub_token", [True, False])
def test_hub_weights_are_downloaded_as_configured(
    tmp_path: Path, calls: Calls, hub_token: bool
) -> None:
    config = base_config(tmp_path, hosts=1)
    config["model"] = {
        "id": "org/tiny",
        "source": "huggingface",
        "revision": "v1.0",
        "hub_endpoint": "http://hub.example:8080",
        "config_file": "model/config.json",
        "path": "/data02/models/tiny",
        "verify": "sha256",
    }
    config["hosts"][0]["storage"] = {
        "device": "/dev/disk/by-id/nvme-a",
        "filesystem": "xfs",
        "mount_point": "/data02",
    }
    dep, _, _ = render(tmp_path, config, hub_token=hub_token)
    assert specs(calls, "weights_download") == [
        DownloadSpec(
            host="n1",
            source="huggingface",
            model_id="org/tiny",
            path="/data02/models/tiny",
            revision="v1.0",
            endpoint="http://hub.example:8080",
            token="stdin" if hub_token else "none",
            verify="sha256",
            owner=OWNER,
            mount_point="/data02",
            engine_image="eng:1",
        )
    ]
    # A hub has no manifest of ours: verify checks what the download recorded.
    assert calls["weights_verify"] == [
        (("n1", "/data02/models/tiny", "sha256"), {"require_manifest": False})
    ]
    steps = dep.hosts[0].weights
    assert steps.fetch_remote is not None and steps.fetch_local is None
    assert steps.needs_hub_token is hub_token
    assert steps.after_image is True  # may run the engine image's hub client


def test_fanout_copies_from_the_head_to_each_other_host(tmp_path: Path, calls: Calls) -> None:
    config = base_config(tmp_path, hosts=3)
    config["model"]["distribute"] = "fanout"
    config["model"]["verify"] = "sha256"
    config["hosts"][0].update(user="deploy", port=2222)
    dep, _, _ = render(tmp_path, config)
    fanned = [args[0] for args, _ in calls["fanout_driver"]]
    assert fanned == [
        FanoutSpec(
            source_host="n1",
            target_host=f"n{n}",
            source_address="10.9.0.1",
            path="/data01/models/tiny",
            marker=f"n1-to-n{n}",
            source_user="deploy",
            source_port=2222,
            from_address=f"10.9.0.{n}",
            verify="sha256",
        )
        for n in (2, 3)
    ]
    head, *others = dep.hosts
    assert head.weights.fetch_local is not None and not head.weights.after_head
    for other in others:
        assert other.weights.after_head is True and other.weights.fetch_local is not None


@pytest.mark.parametrize(
    ("mount_point", "path", "expected"),
    [
        ("/data01", "/data01/models/tiny", "/data01"),
        ("/data01", "/data01", "/data01"),
        ("/data", "/data01/models/tiny", None),  # a prefix of the name is not a parent
        ("/data02", "/data01/models/tiny", None),
        ("/data01/models", "/data01/models/tiny", "/data01/models"),
    ],
)
def test_the_data_mount_guards_the_model_path_only_when_the_path_is_on_it(
    tmp_path: Path, mount_point: str, path: str, expected: str | None
) -> None:
    config = base_config(tmp_path, hosts=1)
    config["hosts"][0]["storage"] = {
        "device": "/dev/disk/by-id/nvme-a",
        "filesystem": "xfs",
        "mount_point": mount_point,
    }
    settings = load_settings(config, {"apiKey": True}, base_dir=tmp_path)
    assert deployment._data_mount(settings.hosts[0], path) == expected
    config["hosts"][0].pop("storage")
    settings = load_settings(config, {"apiKey": True}, base_dir=tmp_path)
    assert deployment._data_mount(settings.hosts[0], path) is None


# --- engine launch and SSH ----------------------------------------------------------------


def test_the_engine_is_launched_with_the_serving_settings(tmp_path: Path) -> None:
    config = base_config(tmp_path, hosts=2)
    config["model"]["trust_remote_code"] = True
    config["serving"].update(
        port=8123,
        kv_cache_dtype="fp8",
        extra_args=["--enable-prefix-caching"],
        distributed_backend="ray",
    )
    dep, _, plan = render(tmp_path, config)
    launch = dep.launch
    assert launch.port == 8123 and launch.kv_cache_dtype == "fp8"
    assert launch.trust_remote_code is True
    assert launch.extra_args == ("--enable-prefix-caching",)
    assert launch.expert_parallel is plan.expert_parallel is False
    assert launch.distributed_executor_backend == "ray"
    assert (launch.tensor_parallel_size, launch.pipeline_parallel_size) == (2, 2)


def test_ssh_targets_carry_the_timeout_and_the_bastion_port(tmp_path: Path) -> None:
    config = base_config(tmp_path, hosts=1)
    config["ssh"].update(
        connect_timeout_s=42,
        bastion={"address": "10.8.0.1", "user": "jump", "port": 2200, "host_key": HOST_KEY},
    )
    dep, _, _ = render(tmp_path, config)
    target = dep.hosts[0].ssh
    assert target.connect_timeout_s == 42
    assert target.bastion is not None
    assert (target.bastion.address, target.bastion.user, target.bastion.port) == (
        "10.8.0.1",
        "jump",
        2200,
    )


def test_the_image_comes_from_the_tarball_or_the_registry_never_both(tmp_path: Path) -> None:
    config = base_config(tmp_path, hosts=1)
    dep, _, _ = render(tmp_path, config)
    pulled = dep.hosts[0].scripts
    assert pulled.image_pull is not None and pulled.image_load_local is None
    assert dep.image_id is None
    image_id = "sha256:" + "ab" * 32
    manifest = json.dumps([{"Config": f"blobs/sha256/{image_id[7:]}", "RepoTags": ["eng:1"]}])
    with tarfile.open(tmp_path / "image.tar", "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest.encode()))
    config["image"]["tarball"] = "image.tar"
    dep, _, _ = render(tmp_path, config)
    loaded = dep.hosts[0].scripts
    assert loaded.image_pull is None and loaded.image_load_local is not None
    assert dep.image_id == image_id


@pytest.mark.parametrize("backend", ["ray", "mp"])
def test_the_cluster_layout_names_every_serving_host_and_the_join_timeout(
    tmp_path: Path, backend: str
) -> None:
    config = base_config(tmp_path, hosts=2)
    config["serving"].update(
        distributed_backend=backend,
        ready_timeout_s=345,
        infiniband={"enabled": True, "hca": "mlx5_0,mlx5_1"},
    )
    dep, _, _ = render(tmp_path, config)
    assert dep.ready_timeout_s == 345
    if backend == "ray":
        assert dep.layout is not None and dep.multi_node is None
        assert dep.layout.nodes == {"n1": "10.9.0.1", "n2": "10.9.0.2"}
        assert dep.layout.join_timeout_s == 345
    else:
        assert dep.multi_node is not None and dep.layout is None
        assert dep.multi_node.nodes == (("n1", "10.9.0.1"), ("n2", "10.9.0.2"))
        assert dep.multi_node.join_timeout_s == 345
    assert [hd.node.infiniband_hca for hd in dep.hosts] == ["mlx5_0,mlx5_1"] * 2
    config["serving"]["infiniband"] = {"enabled": False}  # hca without enabled is refused
    dep, _, _ = render(tmp_path, config)
    assert [hd.node.infiniband_hca for hd in dep.hosts] == [None, None]


def test_a_script_that_would_end_its_own_heredoc_is_refused() -> None:
    target = SshTarget("10.0.0.1", "root", 22, "/k", "/kh")
    with pytest.raises(ValueError, match=r"^heredoc tag VLLM_CLUSTER_SCRIPT occurs in the script$"):
        deployment.run_over_ssh(target, "echo a\nVLLM_CLUSTER_SCRIPT\necho b")
    assert deployment.run_over_ssh(target, "echo a").endswith(
        "<<'VLLM_CLUSTER_SCRIPT'\necho a\nVLLM_CLUSTER_SCRIPT\n"
    )
