"""Bad settings that used to be accepted, crash later or fail without naming the key
(issue 14, first class): each is refused by its key path, by the whole program under Pulumi
mocks, before a single resource is declared.

Every case runs twice: through load_settings alone (exactly one problem, at that key: one
mistake, one line) and through __main__.py under Pulumi mocks (the run fails naming the key,
and the mocks recorded no resource at all). The cases are written against the program
config of tests/unit/test_program.py (two hosts n1/n2, weights from this machine, an image
tarball), with its operator-side files in a temporary project directory.
"""

from __future__ import annotations

import copy
import json
import runpy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components.settings import NAMESPACE, SECRET_KEYS, SettingsError, load_settings
from components.settings_source import read_stack_config
from tests.unit.pulumi_mocks import RecordingMocks
from tests.unit.test_program import HOST_KEY, write_project

REPO = Path(__file__).resolve().parents[2]
API_KEY = {"apiKey": "sk-test"}

Mutator = Callable[[dict[str, Any], Path], None]


def _set(path: str, value: Any) -> Mutator:
    """config[a][b][0][c] = value for path 'a.b.0.c' (intermediate mappings created)."""

    def mutate(config: dict[str, Any], _project: Path) -> None:
        node: Any = config
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _del(path: str) -> Mutator:
    def mutate(config: dict[str, Any], _project: Path) -> None:
        node: Any = config
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[parts[-1]]

    return mutate


def _both(*mutators: Mutator) -> Mutator:
    def mutate(config: dict[str, Any], project: Path) -> None:
        for m in mutators:
            m(config, project)

    return mutate


def _pinned(i: int, mutator: Mutator) -> Mutator:
    """`mutator`, with hosts[i]'s host key pinned in the config itself, so that the old
    code's only complaint is not the fixture's known_hosts missing a changed address/port."""
    return _both(_set(f"hosts.{i}.host_key", HOST_KEY), mutator)


def _write(name: str, content: bytes) -> Mutator:
    def mutate(_config: dict[str, Any], project: Path) -> None:
        (project / name).write_bytes(content)

    return mutate


STORAGE = {"device": "/dev/disk/by-id/nvme-data-1", "filesystem": "xfs", "mount_point": "/data"}
PUBLIC_KEY = HOST_KEY.encode() + b" user@laptop\n"

# (id, mutation, the key path the error must name, a phrase of its message)
CASES: list[tuple[str, Mutator, str, str]] = [
    # Class 1: cross-key rules and types after coercion.
    ("ssh port true", _pinned(0, _set("hosts.0.port", True)), "hosts[0].port", "not true"),
    ("weights bytes true", _set("model.weights_bytes", True), "model.weights_bytes", "not true"),
    (
        "gpu count text differs",
        _set("hosts.0.gpus.count", "4"),
        "hosts[1].gpus.count",
        "identical GPUs",
    ),
    (
        "serving port text equals ray port",
        _set("serving.port", "6379"),
        "serving.ray_port",
        "different ports",
    ),
    (
        "hca with enabled as the word false",
        _set("serving.infiniband", {"enabled": "false", "hca": "mlx5_0"}),
        "serving.infiniband.hca",
        "enabled is false",
    ),
    (
        "docker install as the word true",
        _set("docker", {"install": "true"}),
        "docker.deb_dir",
        "required when docker.install",
    ),
    (
        "allow_format yes",
        _set("hosts.0.storage", {**STORAGE, "allow_format": "yes"}),
        "hosts[0].storage.allow_format",
        "true or false",
    ),
    # Class 2: engine flags the program owns, in vLLM's other spellings.
    (
        "underscored tp",
        _set("serving.extra_args", ["--enforce-eager", "--tensor_parallel_size=4"]),
        "serving.extra_args[1]",
        "serving.tensor_parallel_size",
    ),
    (
        "underscored api key",
        _set("serving.extra_args", ["--api_key=sk-on-argv"]),
        "serving.extra_args[0]",
        f"{NAMESPACE}:apiKey",
    ),
    (
        "flag and value in one word",
        _set("serving.extra_args", ["--max-model-len 4096"]),
        "serving.extra_args[0]",
        "one word",
    ),
    (
        "abbreviated owned flag",
        _set("serving.extra_args", ["--max-model", "4096"]),
        "serving.extra_args[0]",
        "serving.max_model_len",
    ),
    (
        "config file",
        _set("serving.extra_args", ["--enforce-eager", "--config", "/etc/vllm.yaml"]),
        "serving.extra_args[1]",
        "config file",
    ),
    (
        "nul byte",
        _set("serving.extra_args", ["--enforce-eager\0--port=1"]),
        "serving.extra_args[0]",
        "control character",
    ),
    (
        "short flag value attached",
        _set("serving.extra_args", ["-n2"]),
        "serving.extra_args[0]",
        "--nnodes",
    ),
    (
        "data parallel",
        _set("serving.extra_args", ["--data-parallel-size=2"]),
        "serving.extra_args[0]",
        "data parallelism",
    ),
    ("end of options", _set("serving.extra_args", ["--"]), "serving.extra_args[0]", "positional"),
    # Class 3: environment the program owns or that breaks the plan.
    (
        "cuda visible devices",
        _set("serving.extra_env", {"CUDA_VISIBLE_DEVICES": "0,1"}),
        "serving.extra_env.CUDA_VISIBLE_DEVICES",
        "hosts[].gpus.count",
    ),
    (
        "hub offline",
        _set("serving.extra_env", {"HF_HUB_OFFLINE": "0"}),
        "serving.extra_env.HF_HUB_OFFLINE",
        "set by the program",
    ),
    (
        "ray memory monitor",
        _set("serving.extra_env", {"RAY_memory_monitor_refresh_ms": "250"}),
        "serving.extra_env.RAY_memory_monitor_refresh_ms",
        "set by the program",
    ),
    (
        "env value with newline",
        _set("serving.extra_env", {"NCCL_DEBUG": "INFO\nLD_PRELOAD=/tmp/x.so"}),
        "serving.extra_env.NCCL_DEBUG",
        "one line",
    ),
    # Class 4: image.pull false without a tarball.
    (
        "pull false without tarball",
        _both(_del("image.tarball"), _set("image.pull", False)),
        "image.pull",
        "no image.tarball",
    ),
    # Class 6: paths and names.
    (
        "device with dot-dot",
        _set("hosts.0.storage", {**STORAGE, "device": "/dev/../etc/shadow"}),
        "hosts[0].storage.device",
        "'..'",
    ),
    (
        "mount point //etc",
        _set("hosts.0.storage", {**STORAGE, "mount_point": "//etc"}),
        "hosts[0].storage.mount_point",
        "write '/etc'",
    ),
    ("one-component model path", _set("model.path", "/data"), "model.path", "top-level"),
    ("revision with shell", _set("model.revision", "main;reboot"), "model.revision", "branch"),
    (
        "host names overflow the fan-out name",
        _both(_set("hosts.0.name", "a" * 40), _set("hosts.1.name", "b" * 30)),
        "hosts[1].name",
        "too long",
    ),
    (
        "binary config file",
        _write("model/config.json", b"\x89PNG\r\n\x1a\n\xff\xfe"),
        "model.config_file",
        "not UTF-8",
    ),
    (
        "absurd weights bytes",
        _set("model.weights_bytes", 10**30),
        "model.weights_bytes",
        "less than",
    ),
    (
        "weights beyond every GPU",
        _set("model.weights_bytes", 10**14),
        "model.weights_bytes",
        "more than all 4 GPUs",
    ),
    # Class 7: addresses, keys, sizes.
    (
        "unspecified address",
        _pinned(0, _set("hosts.0.address", "0.0.0.0")),
        "hosts[0].address",
        "unspecified",
    ),
    (
        "loopback across hosts",
        _pinned(1, _set("hosts.1.address", "127.0.0.1")),
        "hosts[1].address",
        "loopback",
    ),
    ("ipv6 address", _pinned(1, _set("hosts.1.address", "fd00::2")), "hosts[1].address", "IPv6"),
    (
        "ipv6 scope id with shell",
        _pinned(1, _set("hosts.1.address", "fe80::1%eth0;id")),
        "hosts[1].address",
        "IPv6",
    ),
    (
        "bastion ipv6",
        _set("ssh.bastion", {"address": "fd00::9", "host_key": HOST_KEY}),
        "ssh.bastion.address",
        "IPv6",
    ),
    (
        "public key file by name",
        _both(_write("id_test.pub", PUBLIC_KEY), _set("ssh.private_key_file", "id_test.pub")),
        "ssh.private_key_file",
        "public key",
    ),
    (
        "public key file by content",
        _both(_write("deploy_key", PUBLIC_KEY), _set("ssh.private_key_file", "deploy_key")),
        "ssh.private_key_file",
        "public key",
    ),
    (
        "host key comment with NUL",
        _set("hosts.0.host_key", HOST_KEY + " me\0x"),
        "hosts[0].host_key",
        "control characters",
    ),
    ("shm half a GiB", _set("serving.shm_size_gib", 0.5), "serving.shm_size_gib", "whole number"),
]


def _declare_nothing_run(
    config: dict[str, Any], secrets: dict[str, str], plain: dict[str, Any] | None = None
) -> tuple[RecordingMocks, BaseException | None]:
    """Run __main__.py under mocks like test_program.run_program, but keep the mocks when
    it fails. `plain` adds full config keys (`ns:key`) set in plain text (not secrets)."""
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="vllm-cluster", stack="t", preview=False)
    values = {f"{NAMESPACE}:{k}": json.dumps(v) for k, v in config.items()}
    values.update({f"{NAMESPACE}:{k}": v for k, v in secrets.items()})
    values.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (plain or {}).items()})
    pulumi.runtime.set_all_config(values, secret_keys=[f"{NAMESPACE}:{k}" for k in secrets])

    @pulumi.runtime.test
    def program() -> None:
        runpy.run_path(str(REPO / "__main__.py"), run_name="__main__")

    try:
        program()
    except Exception as exc:  # the program's RunError, as pulumi.runtime.test re-raises it
        return mocks, exc
    return mocks, None


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def _assert_refused_before_anything(
    mocks: RecordingMocks, exc: BaseException | None, path: str, phrase: str
) -> None:
    assert exc is not None, f"accepted; declared {[r.name for r in mocks.resources][:5]}..."
    message = str(exc)
    lines = [line for line in message.splitlines() if line.startswith(f"  - {path}: ")]
    assert lines, message
    assert any(phrase in line for line in lines), message
    assert mocks.resources == [], [r.name for r in mocks.resources]


def test_the_program_config_is_valid(project: Path) -> None:
    """The baseline every case mutates deploys (so each case fails for its own reason)."""
    mocks, exc = _declare_nothing_run(write_project(project, hosts=2), API_KEY)
    assert exc is None, exc
    assert mocks.resources


@pytest.mark.parametrize(
    ("mutate", "path", "phrase"), [pytest.param(m, p, t, id=i) for i, m, p, t in CASES]
)
def test_bad_setting_is_refused_by_key_before_any_resource(
    project: Path, mutate: Mutator, path: str, phrase: str
) -> None:
    config = write_project(project, hosts=2)
    mutate(config, project)
    # load_settings alone: exactly this one problem.
    with pytest.raises(SettingsError) as err:
        load_settings(copy.deepcopy(config), {"apiKey": True}, base_dir=project)
    assert err.value.paths == [path], str(err.value)
    assert phrase in err.value.problems[0].message, str(err.value)
    # The whole program: refused by that key, nothing declared.
    mocks, exc = _declare_nothing_run(config, API_KEY)
    _assert_refused_before_anything(mocks, exc, path, phrase)


def test_at_least_25_new_bad_settings() -> None:
    assert len(CASES) >= 25 and len({i for i, *_ in CASES}) == len(CASES)


# ---------------------------------------------------------------------------------------
# Class 5: keys the program only sees when it reads the whole namespace


@pytest.mark.parametrize(
    ("plain", "path", "phrase"),
    [
        pytest.param(
            {f"{NAMESPACE}:servng": {"port": 9000}},
            f"{NAMESPACE}:servng",
            f"did you mean {NAMESPACE}:serving",
            id="misspelt top-level key",
        ),
        pytest.param(
            {f"{NAMESPACE}:imagee": {"name": "x:1"}},
            f"{NAMESPACE}:imagee",
            f"did you mean {NAMESPACE}:image",
            id="misspelt image",
        ),
        pytest.param(
            {"vllm-clustr:serving": {"port": 9000}},
            "vllm-clustr:serving",
            f"did you mean {NAMESPACE}:serving",
            id="misspelt namespace",
        ),
        pytest.param(
            {f"{NAMESPACE}:hubToken": "hf_plaintext"},
            f"{NAMESPACE}:hubToken",
            f"pulumi config set --secret {NAMESPACE}:hubToken",
            id="hub token in plain text",
        ),
    ],
)
def test_namespace_keys_refused_before_any_resource(
    project: Path, plain: dict[str, Any], path: str, phrase: str
) -> None:
    mocks, exc = _declare_nothing_run(write_project(project, hosts=2), API_KEY, plain)
    _assert_refused_before_anything(mocks, exc, path, phrase)


def test_plaintext_api_key_refused_before_any_resource(project: Path) -> None:
    mocks, exc = _declare_nothing_run(
        write_project(project, hosts=2), {}, {f"{NAMESPACE}:apiKey": "sk-in-plain-text"}
    )
    _assert_refused_before_anything(
        mocks, exc, f"{NAMESPACE}:apiKey", f"pulumi config set --secret {NAMESPACE}:apiKey"
    )
    assert "sk-in-plain-text" not in str(exc)


def test_plaintext_ssh_key_refused_before_any_resource(project: Path) -> None:
    config = write_project(project, hosts=2)
    del config["ssh"]["private_key_file"]
    mocks, exc = _declare_nothing_run(config, API_KEY, {f"{NAMESPACE}:sshPrivateKey": "KEY"})
    _assert_refused_before_anything(mocks, exc, f"{NAMESPACE}:sshPrivateKey", "--secret")


def test_other_namespaces_are_left_alone(project: Path) -> None:
    """Provider and Pulumi keys of other namespaces are not ours to judge."""
    plain = {"docker:host": "unix:///var/run/docker.sock", "pulumi:tags": {"a": "b"}}
    _, exc = _declare_nothing_run(write_project(project, hosts=1), API_KEY, plain)
    assert exc is None, exc


# ---------------------------------------------------------------------------------------
# What stays accepted: the same values in spellings that are right


def test_numbers_as_text_and_true_false_words_are_read_as_what_they_mean(project: Path) -> None:
    config = write_project(project, hosts=2)
    config["hosts"][0]["port"] = "22"
    config["hosts"][0]["gpus"]["count"] = "2"
    config["serving"].update(
        {
            "port": "8001",
            "shm_size_gib": 8.0,
            "ipc_host": "false",
            "extra_args": [
                "--enforce-eager",
                "--max-num-batched-tokens",
                8192,
                "--seed",
                "-1",
                "-O3",
                "--model-impl=vllm",
                "--compilation-config.level=3",
            ],
            "extra_env": {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": 8},
        }
    )
    s = load_settings(config, {"apiKey": True}, base_dir=project)
    assert s.hosts[0].port == 22 and s.hosts[0].gpus.count == 2 and s.serving.port == 8001
    assert s.serving.shm_size_gib == 8 and s.serving.ipc_host is False
    assert s.serving.extra_args[2] == "8192" and s.serving.extra_env["OMP_NUM_THREADS"] == "8"


def test_single_host_may_be_reached_over_loopback(project: Path) -> None:
    """One host that is the operator machine itself: nothing crosses hosts."""
    config = write_project(project, hosts=1)
    config["hosts"][0].update(address="127.0.0.1", nic="lo")
    assert load_settings(config, {"apiKey": True}).head.address == "127.0.0.1"


# ---------------------------------------------------------------------------------------
# Every stack file in the repository still validates, read the way the program reads it


def _stack_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "Pulumi.*.yaml"], cwd=REPO, capture_output=True, text=True
    )
    names = listed.stdout.split() if listed.returncode == 0 else []
    files = [REPO / n for n in names] or sorted(REPO.glob("Pulumi.*.yaml"))
    return [f for f in files if not f.name.startswith("Pulumi.e2e-")]


def test_the_repository_has_its_stacks() -> None:
    assert {f.name for f in _stack_files()} >= {
        "Pulumi.h20.yaml",
        "Pulumi.lab.yaml",
        "Pulumi.lab-cpu.yaml",
        "Pulumi.bare.yaml",
    }


@pytest.mark.parametrize("stack", _stack_files(), ids=lambda p: p.name)
def test_shipped_stack_validates(stack: Path) -> None:
    doc = yaml.safe_load(stack.read_text())
    config: dict[str, Any] = doc["config"]
    values: dict[str, str] = {}
    secret_keys = []
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            values[key] = "decrypted"
            secret_keys.append(key)
        else:
            values[key] = value if isinstance(value, str) else json.dumps(value)
    pulumi.runtime.set_all_config(values, secret_keys=secret_keys)
    try:
        source = read_stack_config()
    finally:
        pulumi.runtime.set_all_config({}, secret_keys=[])
    assert source.plaintext_secrets == ()
    present = dict(source.secrets_present)
    if not present.get("apiKey"):  # Pulumi.h20.yaml: set with `config set --secret` at deploy
        present["apiKey"] = True
    assert set(present) == set(SECRET_KEYS)
    settings = load_settings(source.raw, present)
    assert settings.hosts
