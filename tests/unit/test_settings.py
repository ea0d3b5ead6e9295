"""Stack-config validation: a good config loads; every bad one is reported by the key path
the user writes, with what is expected; all problems come out in one error."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.settings import (
    CONFIG_KEYS,
    SECRET_KEYS,
    DockerSettings,
    ServingSettings,
    Settings,
    SettingsError,
    SshSettings,
    load_settings,
)

REPO = Path(__file__).resolve().parents[2]
ALL_SECRETS = {"apiKey": True, "sshPrivateKey": False, "hubToken": False}


def valid_raw() -> dict[str, Any]:
    """The manual's cluster: 2 x H20 (8 x 96 GB), DeepSeek-R1 from ModelScope."""
    return {
        "hosts": [
            {
                "name": "h20-1",
                "address": "192.168.0.2",
                "nic": "eth0",
                "host_key": "ssh-ed25519 "
                "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
                "gpus": {"count": 8, "model": "NVIDIA H20", "memory_gib": 96},
                "storage": {
                    "device": "/dev/disk/by-id/nvme-data-1",
                    "filesystem": "xfs",
                    "mount_point": "/data01",
                },
            },
            {
                "name": "h20-2",
                "address": "192.168.0.3",
                "gpus": {"count": 8, "model": "NVIDIA H20", "memory_gib": 96},
            },
        ],
        "ssh": {"private_key_file": "~/.ssh/id_ed25519"},
        "model": {
            "id": "deepseek-ai/DeepSeek-R1",
            "source": "modelscope",
            "path": "/data01/deepseek-r1",
            "trust_remote_code": True,
            "config_file": "models/deepseek-r1/config.json",
        },
        "image": {"name": "vllm/vllm-openai:v0.8.5"},
        "serving": {"max_model_len": 2048},
    }


def test_valid_config_loads() -> None:
    s = load_settings(valid_raw(), ALL_SECRETS)
    assert isinstance(s, Settings)
    assert s.head.name == "h20-1" and [h.name for h in s.workers] == ["h20-2"]
    assert s.multi_node and s.gpus_per_node == 8 and s.gpu_memory_gib == 96 and s.total_gpus == 16
    assert s.model.served_model_name == "DeepSeek-R1"
    assert s.model.config_path == "models/deepseek-r1/config.json"
    assert s.image.should_pull is True
    assert s.serving.tp is None and s.serving.pp is None
    assert s.ssh_key_source == "file"
    assert s.nccl_ifname(s.hosts[1]) == "eth0"
    assert s.hosts[1].user == "root" and s.hosts[1].port == 22
    assert s.secrets.api_key and not s.secrets.hub_token


def test_settings_are_frozen_and_hold_no_secret_values() -> None:
    s = load_settings(valid_raw(), ALL_SECRETS)
    with pytest.raises(ValueError):
        s.serving.port = 9000  # type: ignore[misc]
    # only whether each secret is set, never a value
    assert s.secrets.model_dump() == {"api_key": True, "ssh_private_key": False, "hub_token": False}


def test_local_source_defaults() -> None:
    raw = valid_raw()
    raw["model"] = {"source": "local", "path": "/srv/tiny", "local_dir": ".lab/model"}
    s = load_settings(raw, ALL_SECRETS)
    assert s.model.config_path == ".lab/model/config.json"
    assert s.model.served_model_name == "tiny"


def test_secret_ssh_key_alone_is_enough() -> None:
    raw = valid_raw()
    del raw["ssh"]
    s = load_settings(raw, {"apiKey": True, "sshPrivateKey": True})
    assert s.ssh_key_source == "secret" and s.ssh.connect_timeout_s == 10


def test_yaml_numbers_in_extra_args_and_env_become_strings() -> None:
    raw = valid_raw()
    raw["serving"]["extra_args"] = ["--max-num-batched-tokens", 8192]
    raw["serving"]["extra_env"] = {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": 8}
    s = load_settings(raw, ALL_SECRETS)
    assert s.serving.extra_args == ("--max-num-batched-tokens", "8192")
    assert s.serving.extra_env["OMP_NUM_THREADS"] == "8"


def test_namespaced_and_none_top_level_keys() -> None:
    raw: dict[str, Any] = {f"vllm-cluster:{k}": v for k, v in valid_raw().items()}
    raw["docker"] = None  # get_object() of an unset key
    assert load_settings(raw, ALL_SECRETS).docker.install is False


Mutator = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutator:
    """raw[a][b][0][c] = value for path 'a.b.0.c'."""

    def mutate(raw: dict[str, Any]) -> None:
        node: Any = raw
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _del(path: str) -> Mutator:
    def mutate(raw: dict[str, Any]) -> None:
        node: Any = raw
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[parts[-1]]

    return mutate


def _both(*ms: Mutator) -> Mutator:
    def mutate(raw: dict[str, Any]) -> None:
        for m in ms:
            m(raw)

    return mutate


def _copy_host(i: int, **changes: Any) -> Mutator:
    def mutate(raw: dict[str, Any]) -> None:
        raw["hosts"].append({**copy.deepcopy(raw["hosts"][i]), **changes})

    return mutate


# (id, mutation, secrets, the key path the message must name, a phrase of the message)
BAD: list[tuple[str, Mutator, dict[str, bool] | None, str, str]] = [
    ("hosts missing", _del("hosts"), None, "hosts", "is required"),
    ("hosts empty", _set("hosts", []), None, "hosts", "at least 1 item"),
    ("hosts not a list", _set("hosts", {"name": "a"}), None, "hosts", "must be a list"),
    ("host name case", _set("hosts.0.name", "H20_1"), None, "hosts[0].name", "lowercase"),
    (
        "duplicate name",
        _set("hosts.1.name", "h20-1"),
        None,
        "hosts[1].name",
        "already used by hosts[0]",
    ),
    (
        "duplicate address",
        _set("hosts.1.address", "192.168.0.2"),
        None,
        "hosts[1].address",
        "own address",
    ),
    ("bad ipv4", _set("hosts.0.address", "192.168.0.300"), None, "hosts[0].address", "IPv4"),
    (
        "address with space",
        _set("hosts.0.address", "gpu box"),
        None,
        "hosts[0].address",
        "DNS name",
    ),
    ("port zero", _set("hosts.0.port", 0), None, "hosts[0].port", "greater than or equal to 1"),
    ("port too big", _set("hosts.1.port", 70000), None, "hosts[1].port", "65535"),
    ("port text", _set("hosts.0.port", "ssh"), None, "hosts[0].port", "integer"),
    ("bad user", _set("hosts.0.user", "Root User"), None, "hosts[0].user", "Unix user"),
    ("bad nic", _set("hosts.0.nic", "eth 0"), None, "hosts[0].nic", "interface"),
    ("bad host key", _set("hosts.0.host_key", "AAAA"), None, "hosts[0].host_key", "ssh-keyscan"),
    ("gpus missing", _del("hosts.0.gpus"), None, "hosts[0].gpus", "is required"),
    (
        "gpu count zero",
        _set("hosts.0.gpus.count", 0),
        None,
        "hosts[0].gpus.count",
        "greater than or equal to 1",
    ),
    (
        "gpu memory negative",
        _set("hosts.1.gpus.memory_gib", -1),
        None,
        "hosts[1].gpus.memory_gib",
        "greater than 0",
    ),
    (
        "gpus differ",
        _set("hosts.1.gpus.memory_gib", 80),
        None,
        "hosts[1].gpus.memory_gib",
        "identical GPUs",
    ),
    (
        "gpu model differs",
        _set("hosts.1.gpus.model", "NVIDIA H100"),
        None,
        "hosts[1].gpus.model",
        "identical GPUs",
    ),
    (
        "filesystem",
        _set("hosts.0.storage.filesystem", "btrfs"),
        None,
        "hosts[0].storage.filesystem",
        "'xfs' or 'ext4'",
    ),
    (
        "mount on /etc",
        _set("hosts.0.storage.mount_point", "/etc"),
        None,
        "hosts[0].storage.mount_point",
        "system directory",
    ),
    (
        # Refused by the storage renderer too: one set serves both checks.
        "mount on /home",
        _set("hosts.0.storage.mount_point", "/home"),
        None,
        "hosts[0].storage.mount_point",
        "system directory",
    ),
    (
        "device path",
        _set("hosts.0.storage.device", "nvme1n1"),
        None,
        "hosts[0].storage.device",
        "/dev",
    ),
    (
        "host key typo",
        _set("hosts.0.adress", "10.0.0.1"),
        None,
        "hosts[0].adress",
        "did you mean 'address'",
    ),
    (
        "ssh both",
        lambda r: None,
        {"apiKey": True, "sshPrivateKey": True},
        "ssh.private_key_file",
        "exactly one",
    ),
    ("ssh neither", _del("ssh"), None, "ssh.private_key_file", "vllm-cluster:sshPrivateKey"),
    (
        "ssh timeout",
        _set("ssh.connect_timeout_s", 0),
        None,
        "ssh.connect_timeout_s",
        "greater than or equal to 1",
    ),
    (
        "bastion address",
        _set("ssh.bastion", {"address": "bad host"}),
        None,
        "ssh.bastion.address",
        "DNS name",
    ),
    ("model missing", _del("model"), None, "model", "is required"),
    (
        "model source",
        _set("model.source", "hf"),
        None,
        "model.source",
        "'modelscope', 'huggingface' or 'local'",
    ),
    ("relative path", _set("model.path", "data01/r1"), None, "model.path", "absolute"),
    ("root path", _set("model.path", "/"), None, "model.path", "below /"),
    ("path with space", _set("model.path", "/data 01/r1"), None, "model.path", "may only contain"),
    (
        "local without dir",
        _set("model.source", "local"),
        None,
        "model.local_dir",
        "required for source=local",
    ),
    ("hub without config", _del("model.config_file"), None, "model.config_file", "config.json"),
    ("hub without id", _del("model.id"), None, "model.id", "required for source=modelscope"),
    ("id without org", _set("model.id", "DeepSeek-R1"), None, "model.id", "organisation/name"),
    (
        "weights bytes",
        _set("model.weights_bytes", -5),
        None,
        "model.weights_bytes",
        "greater than 0",
    ),
    (
        "hub endpoint scheme",
        _set("model.hub_endpoint", "ftp://mirror"),
        None,
        "model.hub_endpoint",
        "http",
    ),
    (
        "hub endpoint creds",
        _set("model.hub_endpoint", "https://u:p@mirror"),
        None,
        "model.hub_endpoint",
        "hubToken",
    ),
    (
        "distribute",
        _set("model.distribute", "broadcast"),
        None,
        "model.distribute",
        "'fanout' or 'each'",
    ),
    ("verify", _set("model.verify", "md5"), None, "model.verify", "'sizes' or 'sha256'"),
    (
        "model token key",
        _set("model.hub_token", "hf_x"),
        None,
        "model.hub_token",
        "vllm-cluster:hubToken",
    ),
    ("image missing", _del("image"), None, "image", "is required"),
    ("image no tag", _set("image.name", "vllm/vllm-openai"), None, "image.name", "name:tag"),
    (
        "image pull and tarball",
        _set("image", {"name": "vllm/vllm-openai:v1", "tarball": "/srv/i.tar", "pull": True}),
        None,
        "image.pull",
        "remove one",
    ),
    (
        "util zero",
        _set("serving.gpu_memory_utilization", 0),
        None,
        "serving.gpu_memory_utilization",
        "greater than 0",
    ),
    (
        "util above one",
        _set("serving.gpu_memory_utilization", 1.5),
        None,
        "serving.gpu_memory_utilization",
        "less than or equal to 1",
    ),
    ("serving port", _set("serving.port", 70000), None, "serving.port", "65535"),
    (
        "max len zero",
        _set("serving.max_model_len", 0),
        None,
        "serving.max_model_len",
        "greater than 0",
    ),
    (
        "max len typo",
        _set("serving.max_modle_len", 2048),
        None,
        "serving.max_modle_len",
        "did you mean 'max_model_len'",
    ),
    (
        "kv dtype",
        _set("serving.kv_cache_dtype", "fp16"),
        None,
        "serving.kv_cache_dtype",
        "'auto', 'fp8'",
    ),
    (
        "tp word",
        _set("serving.tensor_parallel_size", "eight"),
        None,
        "serving.tensor_parallel_size",
        "'auto' or a positive integer",
    ),
    (
        "tp zero",
        _set("serving.tensor_parallel_size", 0),
        None,
        "serving.tensor_parallel_size",
        "positive integer",
    ),
    (
        "pp negative",
        _set("serving.pipeline_parallel_size", -2),
        None,
        "serving.pipeline_parallel_size",
        "positive integer",
    ),
    (
        "tp x pp too many",
        _both(_set("serving.tensor_parallel_size", 8), _set("serving.pipeline_parallel_size", 4)),
        None,
        "serving.tensor_parallel_size",
        "have 16",
    ),
    (
        "owned flag",
        _set("serving.extra_args", ["--enforce-eager", "--port=9000"]),
        None,
        "serving.extra_args[1]",
        "serving.port",
    ),
    (
        "secret env",
        _set("serving.extra_env", {"HF_TOKEN": "hf_x"}),
        None,
        "serving.extra_env.HF_TOKEN",
        "looks like a secret",
    ),
    (
        "owned env",
        _set("serving.extra_env", {"VLLM_HOST_IP": "1.2.3.4"}),
        None,
        "serving.extra_env.VLLM_HOST_IP",
        "hosts[].address",
    ),
    ("ray port clash", _set("serving.ray_port", 8000), None, "serving.ray_port", "different ports"),
    (
        "hca without ib",
        _set("serving.infiniband", {"hca": "mlx5_0"}),
        None,
        "serving.infiniband.hca",
        "enabled is false",
    ),
    ("shm zero", _set("serving.shm_size_gib", 0), None, "serving.shm_size_gib", "greater than 0"),
    ("ready timeout", _set("serving.ready_timeout_s", 5), None, "serving.ready_timeout_s", "30"),
    (
        "api key as plain key",
        _set("serving.api_key", "x"),
        None,
        "serving.api_key",
        "vllm-cluster:apiKey",
    ),
    (
        "docker deb dir",
        _set("docker.install", True),
        None,
        "docker.deb_dir",
        "required when docker.install",
    ),
    (
        "docker mirror",
        _set("docker.registry_mirrors", ["mirror.local"]),
        None,
        "docker.registry_mirrors[0]",
        "http",
    ),
    (
        "api key missing",
        lambda r: None,
        {},
        "vllm-cluster:apiKey",
        "pulumi config set --secret vllm-cluster:apiKey",
    ),
    (
        "unknown top-level",
        _set("servng", {}),
        None,
        "vllm-cluster:servng",
        "did you mean vllm-cluster:serving",
    ),
    ("secret as plain", _set("apiKey", "x"), None, "vllm-cluster:apiKey", "is a secret"),
]


@pytest.mark.parametrize(
    ("mutate", "secrets", "path", "phrase"),
    [pytest.param(m, s, p, t, id=i) for i, m, s, p, t in BAD],
)
def test_bad_setting_names_its_key(
    mutate: Mutator, secrets: dict[str, bool] | None, path: str, phrase: str
) -> None:
    raw = valid_raw()
    mutate(raw)
    with pytest.raises(SettingsError) as err:
        load_settings(raw, ALL_SECRETS if secrets is None else secrets)
    matching = [p for p in err.value.problems if p.path == path]
    assert matching, f"no problem at {path}: {err.value}"
    assert any(phrase in p.message for p in matching), str(err.value)
    assert f"  - {path}: " in str(err.value)
    # One mistake, one line: a broken key must not drag in unrelated complaints.
    assert len(err.value.problems) == 1, str(err.value)


def test_at_least_25_distinct_bad_settings() -> None:
    assert len({path for _, _, _, path, _ in BAD}) >= 25


def test_all_errors_at_once() -> None:
    raw = valid_raw()
    for m in (
        _set("hosts.0.address", "300.1.1.1"),
        _set("hosts.1.name", "h20-1"),
        _set("serving.gpu_memory_utilization", 2),
        _set("serving.max_modle_len", 4096),
        _set("image.name", "vllm"),
        _del("model.config_file"),
        _set("docker.install", True),
    ):
        m(raw)
    with pytest.raises(SettingsError) as err:
        load_settings(raw, {"sshPrivateKey": True})
    paths = err.value.paths
    for expected in (
        "hosts[0].address",
        "hosts[1].name",
        "serving.gpu_memory_utilization",
        "serving.max_modle_len",
        "image.name",
        "model.config_file",
        "docker.deb_dir",
        "ssh.private_key_file",  # key file and the secret both set
        "vllm-cluster:apiKey",
    ):
        assert expected in paths, str(err.value)
    text = str(err.value)
    assert text.startswith(f"invalid stack configuration ({len(paths)} problems):")
    # grouped by section: hosts first, namespaced secrets last
    assert paths.index("hosts[0].address") < paths.index("serving.gpu_memory_utilization")
    assert paths[-1] == "vllm-cluster:apiKey"


def test_file_checks_with_base_dir(tmp_path: Path) -> None:
    raw = valid_raw()
    raw["ssh"]["private_key_file"] = "keys/id"
    raw["image"]["tarball"] = "/nonexistent/vllm.tar"
    with pytest.raises(SettingsError) as err:
        load_settings(raw, ALL_SECRETS, base_dir=tmp_path)
    assert set(err.value.paths) == {"model.config_file", "ssh.private_key_file", "image.tarball"}
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_text("k")
    (tmp_path / "vllm.tar").write_text("t")
    raw["image"]["tarball"] = "vllm.tar"
    raw["model"]["config_file"] = str(REPO / "models/deepseek-r1/config.json")
    assert load_settings(raw, ALL_SECRETS, base_dir=tmp_path).image.should_pull is False


def test_unknown_secret_flag_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        load_settings(valid_raw(), {"apiKey": True, "apikey": True})


# ---------------------------------------------------------------------------------------
# Pulumi.yaml declares every key, and its defaults are the models' defaults


def _pulumi_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert data["name"] == "vllm-cluster" and data["runtime"]["name"] == "python"
    config: dict[str, Any] = data["config"]
    return config


def test_pulumi_yaml_declares_every_key() -> None:
    config = _pulumi_config()
    assert set(config) == set(CONFIG_KEYS) | set(SECRET_KEYS)
    for key, decl in config.items():
        assert decl.get("description"), key
    for required in ("hosts", "model", "image"):
        assert "default" not in config[required]
    assert config["apiKey"] == {**config["apiKey"], "type": "string", "secret": True}
    assert "default" not in config["apiKey"]


@pytest.mark.parametrize(
    ("key", "model"),
    [("serving", ServingSettings), ("ssh", SshSettings), ("docker", DockerSettings)],
)
def test_pulumi_yaml_defaults_match_models(key: str, model: type[Any]) -> None:
    default = _pulumi_config()[key]["default"]
    dumped = model().model_dump()
    for field, value in default.items():
        expected = dumped[field]
        if isinstance(expected, tuple):
            expected = list(expected)
        if isinstance(expected, dict) and isinstance(value, dict):
            expected = {k: v for k, v in expected.items() if k in value}
        assert value == expected, f"{key}.{field}"
    raw = valid_raw()
    raw[key] = default
    if key == "ssh":
        load_settings(raw, {"apiKey": True, "sshPrivateKey": True})
    else:
        load_settings(raw, ALL_SECRETS)
