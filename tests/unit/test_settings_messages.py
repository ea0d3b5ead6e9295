"""What a user sees for a bad stack config, found by `make mutation`: the refusal names the
key, what to set instead, and the keys that are valid there; values that are fine pass.

(The rules themselves are tested in test_settings*.py; these pin the guidance the design
promises — "errors name the key and the fix" — and the accepted spellings next to each
refused one.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.settings import SettingsError, load_settings
from components.settings_checks import check_env_name, check_env_value, check_extra_arg
from tests.unit.test_settings import ALL_SECRETS, REPO, valid_raw

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def problems(change: Callable[[dict[str, Any]], object]) -> dict[str, str]:
    raw = valid_raw()
    change(raw)
    with pytest.raises(SettingsError) as err:
        load_settings(raw, ALL_SECRETS)
    return {p.path: p.message for p in err.value.problems}


def loads(change: Callable[[dict[str, Any]], object]) -> Any:
    raw = valid_raw()
    change(raw)
    return load_settings(raw, ALL_SECRETS)


def setter(value: Any, *path: str | int) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        target: Any = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


# ---------------------------------------------------------------------------------------
# Unknown keys: "did you mean", the valid keys of that very object, the secret to use


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (
            lambda r: r["hosts"][0]["gpus"].update(modle="x"),
            "hosts[0].gpus.modle",
            "unknown key 'modle'; did you mean 'model'? (valid keys here: count, memory_gib, "
            "model)",
        ),
        (  # inside an optional object of a list item
            lambda r: r["hosts"][0]["storage"].update(devcie="x"),
            "hosts[0].storage.devcie",
            "unknown key 'devcie'; did you mean 'device'? (valid keys here: allow_format, "
            "device, filesystem, mount_point)",
        ),
        (  # inside an optional object of an object
            lambda r: r["ssh"].update(
                bastion={"address": "10.0.0.9", "host_key": HOST_KEY, "adress": "x"}
            ),
            "ssh.bastion.adress",
            "unknown key 'adress'; did you mean 'address'? (valid keys here: address, "
            "host_key, port, user)",
        ),
        (
            lambda r: r["serving"].update(infiniband={"hcaa": "mlx5_0"}),
            "serving.infiniband.hcaa",
            "unknown key 'hcaa'; did you mean 'hca'? (valid keys here: enabled, hca)",
        ),
        (  # nothing close: the valid keys only
            lambda r: r["hosts"][1].update(zzz=1),
            "hosts[1].zzz",
            "unknown key 'zzz' (valid keys here: address, gpus, host_key, name, nic, port, "
            "storage, user)",
        ),
    ],
)
def test_unknown_key_names_the_close_key_and_the_valid_ones(
    change: Callable[[dict[str, Any]], object], path: str, message: str
) -> None:
    assert problems(change) == {path: message}


API_HINT = (
    "the API key is the secret vllm-cluster:apiKey "
    "(`pulumi config set --secret vllm-cluster:apiKey <key>`)"
)
SSH_HINT = (
    "an SSH key goes in ssh.private_key_file (a path) or the secret vllm-cluster:sshPrivateKey "
    "(`pulumi config set --secret vllm-cluster:sshPrivateKey < ~/.ssh/id_ed25519`)"
)
HUB_HINT = (
    "hub tokens are the secret vllm-cluster:hubToken "
    "(`pulumi config set --secret vllm-cluster:hubToken <token>`)"
)


@pytest.mark.parametrize(
    ("section", "key", "hint"),
    [
        ("serving", "api_key", API_HINT),
        ("serving", "API-KEY", API_HINT),
        ("model", "hub_token", HUB_HINT),
        ("model", "password", HUB_HINT),
        ("ssh", "ssh_key", SSH_HINT),
        ("model", "key", SSH_HINT),
        ("model", "Private-Key", SSH_HINT),
        ("image", "privatekey_pem", SSH_HINT),
    ],
)
def test_a_secret_written_as_a_key_is_pointed_to_its_secret(
    section: str, key: str, hint: str
) -> None:
    found = problems(lambda r: r[section].update({key: "x"}))
    message = found[f"{section}.{key}"]
    assert message.startswith(f"unknown key {key!r}; {hint} (valid keys here: "), message


def test_an_unknown_key_that_is_no_secret_gets_no_secret_hint() -> None:
    message = problems(lambda r: r["model"].update(monkey="x"))["model.monkey"]
    assert "secret" not in message
    assert message.startswith("unknown key 'monkey' (valid keys here: config_file, ")


# ---------------------------------------------------------------------------------------
# Missing keys: what the key is and where to set it


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (
            lambda r: r["hosts"][0]["gpus"].pop("memory_gib"),
            "hosts[0].gpus.memory_gib",
            "is required (memory per GPU: the label (96 for a 96 GB H20) or nvidia-smi "
            "memory.total/1024; the planner counts 99% of it as what CUDA can use); set "
            "hosts[0].gpus.memory_gib in Pulumi.<stack>.yaml",
        ),
        (
            lambda r: r["hosts"][1].pop("name"),
            "hosts[1].name",
            "is required (unique name, [a-z0-9-], used in resource names); set hosts[1].name "
            "in Pulumi.<stack>.yaml",
        ),
        (
            lambda r: r.pop("model"),
            "model",
            "is required (the model: id, source, path, config_file, ...); set "
            "vllm-cluster:model in Pulumi.<stack>.yaml",
        ),
        (
            lambda r: r["hosts"][0]["storage"].pop("filesystem"),
            "hosts[0].storage.filesystem",
            "is required (xfs or ext4); set hosts[0].storage.filesystem in Pulumi.<stack>.yaml",
        ),
        (
            lambda r: r["ssh"].update(bastion={"user": "jump"}),
            "ssh.bastion.address",
            "is required",  # a key without a description: no empty parentheses
        ),
    ],
)
def test_missing_key_says_what_it_is_and_where_to_set_it(
    change: Callable[[dict[str, Any]], object], path: str, message: str
) -> None:
    assert problems(change)[path] == message


# ---------------------------------------------------------------------------------------
# Value rules: the accepted spelling next to each refused one


def test_revisions() -> None:
    for good in ("main", "V1.0", "refs/pr/1", "a1b2C3d4", "release_2024-01"):
        assert loads(setter(good, "model", "revision")).model.revision == good
    for bad in ("v1..2", "../main", "-rf", ".hidden", "a b"):
        message = problems(setter(bad, "model", "revision"))["model.revision"]
        assert message == (
            "must be a branch, tag or commit (letters, digits and . _ / -, not starting with "
            f". / or -, no '..'), got {bad!r}"
        )


def test_devices_by_id_and_by_path_are_accepted() -> None:
    for device in (
        "/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_2TB_S6B0NL0T",
        "/dev/disk/by-path/pci-0000:3b:00.0-nvme-1",
        "/dev/loop3",  # loop devices have no stable link; the lab and tests attach them
    ):
        s = loads(setter(device, "hosts", 0, "storage", "device"))
        assert s.hosts[0].storage is not None and s.hosts[0].storage.device == device
    message = problems(lambda r: r["hosts"][0]["storage"].update(device="/dev/sd a"))
    assert message == {
        "hosts[0].storage.device": "must be a block device path under /dev (e.g. /dev/nvme1n1), "
        "got '/dev/sd a'"
    }


@pytest.mark.parametrize("inside", ["/proc/data", "/sys/fs/data", "/run/data", "/boot/x"])
def test_mount_point_inside_a_kernel_filesystem(inside: str) -> None:
    found = problems(lambda r: r["hosts"][0]["storage"].update(mount_point=inside))
    assert found == {
        "hosts[0].storage.mount_point": f"{inside} is inside a kernel or runtime filesystem; "
        "mount the data disk elsewhere (e.g. /data01)"
    }


def test_mount_point_next_to_a_kernel_filesystem_is_fine() -> None:
    s = loads(lambda r: r["hosts"][0]["storage"].update(mount_point="/procdata"))
    assert s.hosts[0].storage is not None and s.hosts[0].storage.mount_point == "/procdata"


def test_registry_mirror_is_written_without_its_trailing_slash() -> None:
    s = loads(
        lambda r: r.update(
            docker={"registry_mirrors": ["https://mirror.example.com/", "http://10.0.0.5:5000"]}
        )
    )
    assert s.docker.registry_mirrors == ("https://mirror.example.com", "http://10.0.0.5:5000")
    found = problems(
        lambda r: r.update(docker={"registry_mirrors": ["https://user:pw@mirror.example.com"]})
    )
    assert found == {
        "docker.registry_mirrors[0]": "must not carry credentials; tokens go in the secret "
        "vllm-cluster:hubToken"
    }


def test_host_key_refusal_says_how_to_get_one() -> None:
    found = problems(lambda r: r["hosts"][0].update(host_key="AAAAC3Nza"))
    assert found == {
        "hosts[0].host_key": "must be an OpenSSH public host key line like 'ssh-ed25519 "
        "AAAAC3...' (from `ssh-keyscan -t ed25519 <address>`)"
    }


@pytest.mark.parametrize(("given", "write"), [(0.4, 1), (1.5, 2), (2.6, 3)])
def test_fractional_shm_size_suggests_a_whole_number(given: float, write: int) -> None:
    found = problems(lambda r: r["serving"].update(shm_size_gib=given))
    assert found["serving.shm_size_gib"].endswith(f"got {given!r}; write {write}")


def test_gloo_interface_defaults_to_the_hosts_nic() -> None:
    s = loads(lambda r: r["hosts"][1].update(nic="ens5"))
    assert [s.gloo_ifname(h) for h in s.hosts] == ["eth0", "ens5"]
    s = loads(lambda r: r["serving"].update(gloo_socket_ifname="ib0"))
    assert [s.gloo_ifname(h) for h in s.hosts] == ["ib0", "ib0"]


# ---------------------------------------------------------------------------------------
# serving.extra_args / extra_env: the refusal names the flag vLLM reads and where to set it


def refusal(word: str) -> str:
    with pytest.raises(ValueError) as err:
        check_extra_arg(word)
    return str(err.value)


DATA_PARALLEL = (
    "is not allowed here: data parallelism is not planned by this program (it places one "
    "TP x PP replica on the hosts)"
)


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("--port=9000", "'--port' is set by the program from serving.port; set it there instead"),
        (
            "--max_num_seqs",
            "'--max_num_seqs' (vLLM reads it as --max-num-seqs) is set by the program from "
            "serving.max_num_seqs; set it there instead",
        ),
        (
            "--nn",
            "'--nn' (vLLM reads it as --nnodes) is owned by the program: the program sets it "
            "from the plan (the number of hosts that serve)",
        ),
        (
            "--uds",
            "'--uds' is not allowed here: the API must listen on serving.port, where the "
            "readiness gate and clients look",
        ),
        ("--data-parallel-size-local", f"'--data-parallel-size-local' {DATA_PARALLEL}"),
        ("--no-data-parallel-hybrid-lb", f"'--no-data-parallel-hybrid-lb' {DATA_PARALLEL}"),
        ("--data-par=2", f"'--data-par' (vLLM reads it as --data-parallel-size) {DATA_PARALLEL}"),
        ("-dp", f"'-dp' (vLLM reads it as --data-parallel-size) {DATA_PARALLEL}"),
    ],
)
def test_owned_flag_refusal_names_the_flag_and_the_key(word: str, message: str) -> None:
    assert refusal(word) == message


@pytest.mark.parametrize("word", ["--e", "--m", "--h"])
def test_short_ambiguous_words_are_left_to_vllm(word: str) -> None:
    """Three characters cannot abbreviate one flag (vLLM refuses them as ambiguous itself)."""
    assert check_extra_arg(word) == word


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "1BAD",
            "'1BAD' is not a valid environment variable name (letters, digits and _, not "
            "starting with a digit)",
        ),
        (
            "VLLM_HOST_IP",
            "VLLM_HOST_IP is set by the program from hosts[].address; set that instead",
        ),
        (
            "RAY_USAGE_STATS_ENABLED",
            "RAY_USAGE_STATS_ENABLED is set by the program on every node to 0",
        ),
    ],
)
def test_env_name_refusal_says_who_sets_it(name: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_env_name(name)
    assert str(err.value) == message


def test_env_values() -> None:
    for fine in ("XX", "a=b c", "MAX_JOBS", "\t"):
        assert check_env_value(fine) == fine
    for bad in ("a\nb", "a\rb", "a\0b"):
        with pytest.raises(ValueError) as err:
            check_env_value(bad)
        assert str(err.value) == (
            f"must be one line without NUL: the value {bad!r} would split the container's "
            "environment"
        )


# ---------------------------------------------------------------------------------------
# Wrong shapes: said in YAML terms, with the value given (scalars only), every one at once


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (setter({"a": 1}, "hosts"), {"hosts": "must be a list (YAML `- item` lines)"}),
        (setter([], "hosts"), {"hosts": "must have at least 1 item(s)"}),
        # the item says what is wrong; no second "at least 1 item" for the dropped item
        (setter(["x"], "hosts"), {"hosts[0]": "must be a mapping of keys to values (got 'x')"}),
        (setter("abc", "serving"), {"serving": "must be a mapping of keys to values (got 'abc')"}),
        (
            setter("x", "serving", "extra_env"),
            {"serving.extra_env": "must be a mapping of keys to values (got 'x')"},
        ),
        (
            setter({"registry_mirrors": "http://x"}, "docker"),
            {"docker.registry_mirrors": "must be a list (YAML `- item` lines) (got 'http://x')"},
        ),
        (
            setter({"1BAD": "x"}, "serving", "extra_env"),
            {
                "serving.extra_env['1BAD']": "'1BAD' is not a valid environment variable name "
                "(letters, digits and _, not starting with a digit)"
            },
        ),
        (
            setter([{"a": 1}], "serving", "extra_args"),
            {"serving.extra_args[0]": "input should be a valid string"},
        ),
        (
            setter([None], "serving", "extra_args"),
            {"serving.extra_args[0]": "input should be a valid string (got None)"},
        ),
        (
            setter("abc", "serving", "port"),
            {
                "serving.port": "input should be a valid integer, unable to parse string as an "
                "integer (got 'abc')"
            },
        ),
    ],
)
def test_wrong_shape_is_said_in_yaml_terms(
    change: Callable[[dict[str, Any]], None], found: dict[str, str]
) -> None:
    assert problems(change) == found


def test_yaml_numbers_in_extra_args_become_words_and_booleans_do_not() -> None:
    s = loads(setter(["--seed", 7, "--swap-space", 1.5], "serving", "extra_args"))
    assert s.serving.extra_args == ("--seed", "7", "--swap-space", "1.5")
    found = problems(setter(["--enforce-eager", True], "serving", "extra_args"))
    assert list(found) == ["serving.extra_args[1]"]


def test_every_kind_of_problem_is_reported_in_one_pass() -> None:
    def change(r: dict[str, Any]) -> None:
        r["serving"].update(zz=1, yy=2, port="abc")
        r["hosts"][0]["gpus"].pop("count")
        r["hosts"][1].pop("gpus")
        r["model"]["revision"] = ".."
        r["image"] = "x"

    assert sorted(problems(change)) == [
        "hosts[0].gpus.count",
        "hosts[1].gpus",
        "image",
        "model.revision",
        "serving.port",
        "serving.yy",
        "serving.zz",
    ]


@pytest.mark.parametrize(
    ("word", "message"),
    [
        (
            "--api-key=c2stdGVzdA==",  # a base64 key ends with '='
            "'--api-key' is set by the program from the secret vllm-cluster:apiKey (on the "
            "command line the key would show in `ps` and in Pulumi state); set it there instead",
        ),
        (  # vLLM reads the flag name up to the first '.' (--flag.sub=value)
            "--max-model-len.a.b=1",
            "'--max-model-len.a.b' (vLLM reads it as --max-model-len) is set by the program "
            "from serving.max_model_len; set it there instead",
        ),
        (
            "-tp=4=1",
            "'-tp' (vLLM reads it as --tensor-parallel-size) is set by the program from "
            "serving.tensor_parallel_size; set it there instead",
        ),
        (
            "-t",
            "'-t' (vLLM reads it as --tensor-parallel-size) is set by the program from "
            "serving.tensor_parallel_size; set it there instead",
        ),
        (
            "-n2",
            "'-n2' (vLLM reads it as --nnodes) is owned by the program: the program sets it "
            "from the plan (the number of hosts that serve)",
        ),
        (
            "--served-model-name a b",
            "'--served-model-name a b' is a flag and its value in one word, which vLLM does not "
            "read as the flag (it becomes the model name); give them as two items "
            "('--served-model-name', then the value) or as one '--served-model-name=VALUE'",
        ),
        (
            "--",
            "'--' would end vLLM's options: the flags the program adds after the extra args "
            "would be read as positional words",
        ),
        (
            "--seed\x7f",
            "contains a control character (NUL, newline, tab, ...): '--seed\\x7f'; each list "
            "item is one command-line word",
        ),
    ],
)
def test_extra_arg_refusal_reads_the_word_as_vllm_does(word: str, message: str) -> None:
    assert refusal(word) == message


@pytest.mark.parametrize("word", ["-1", "-2.5e-3", "-1E5", "value-with=signs", "--seed=-1"])
def test_values_and_unowned_flags_pass(word: str) -> None:
    assert check_extra_arg(word) == word


# ---------------------------------------------------------------------------------------
# Host addresses


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (
            "::1",
            "'::1' is an IPv6 address, which is not supported yet (the ssh://, ssh -J, Ray and "
            "endpoint URLs the program writes do not bracket it); use an IPv4 address or a DNS "
            "name",
        ),
        (
            "0.0.0.0",
            "'0.0.0.0' is the unspecified address (it means 'any' to a listener and reaches "
            "nothing); give the host's own IPv4 address",
        ),
        ("224.0.0.1", "'224.0.0.1' is a multicast/broadcast address, not a host's address"),
        (
            "255.255.255.255",
            "'255.255.255.255' is a multicast/broadcast address, not a host's address",
        ),
        ("240.0.0.1", "'240.0.0.1' is in a reserved range (240.0.0.0/4), not a host's"),
        (
            "gpu-1:22",
            "'gpu-1:22' looks like an IPv6 address (or carries a scope id), which is not "
            "supported yet; use an IPv4 address or a DNS name",
        ),
        (
            "gpu%eth0",
            "'gpu%eth0' looks like an IPv6 address (or carries a scope id), which is not "
            "supported yet; use an IPv4 address or a DNS name",
        ),
        ("1.2.3", "must be an IPv4 address or a DNS name, got '1.2.3'"),
    ],
)
def test_address_refusals(address: str, message: str) -> None:
    assert problems(setter(address, "hosts", 1, "address")) == {"hosts[1].address": message}


@pytest.mark.parametrize(
    "address", ["gpu-02.example.com", "gpu-02.example.com.", "h20-2", "GPU-02.Example.COM"]
)
def test_dns_names_are_addresses(address: str) -> None:
    assert loads(setter(address, "hosts", 1, "address")).hosts[1].address == address


@pytest.mark.parametrize("address", ["localhost", "LocalHost.", "gpu.localhost", "127.0.0.2"])
def test_loopback_names_are_refused_across_hosts(address: str) -> None:
    found = problems(setter(address, "hosts", 1, "address"))
    assert found == {
        "hosts[1].address": f"{address!r} is a loopback address: the other hosts would reach "
        "themselves at it (Ray, NCCL/GLOO and the rendezvous use it between nodes); give the "
        "host's address on the cluster network"
    }


@pytest.mark.parametrize("address", ["mylocalhost", "localhost-gpu.example.com"])
def test_names_that_only_contain_localhost_are_not_loopback(address: str) -> None:
    assert loads(setter(address, "hosts", 1, "address")).hosts[1].address == address


def test_host_paths_keep_their_case_and_take_no_colon() -> None:
    s = loads(setter("/data01/DeepSeek-R1", "model", "path"))
    assert s.model.path == "/data01/DeepSeek-R1"
    found = problems(setter("/data01/model:v1", "model", "path"))
    assert found == {
        "model.path": "may only contain letters, digits and . _ / @ + - (it goes into shell "
        "commands and Docker mounts), got '/data01/model:v1'"
    }


def test_dns_name_length_limit() -> None:
    longest = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters
    assert len(longest) == 253
    assert loads(setter(longest, "hosts", 1, "address")).hosts[1].address == longest
    too_long = longest + "b"
    found = problems(setter(too_long, "hosts", 1, "address"))
    assert found == {"hosts[1].address": f"must be an IPv4 address or a DNS name, got {too_long!r}"}
    assert loads(setter("GPU-BOX", "hosts", 1, "address")).hosts[1].address == "GPU-BOX"


def test_dot_components_in_a_host_path_are_refused() -> None:
    found = problems(setter("/data01/./x", "model", "path"))
    assert found == {"model.path": "must not contain '.' or '..' components, got '/data01/./x'"}


# ---------------------------------------------------------------------------------------
# Files on this machine (base_dir given): each problem by key, never a traceback


def _with_files(tmp_path: Path) -> dict[str, Any]:
    raw = valid_raw()
    (tmp_path / "id").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    raw["ssh"]["private_key_file"] = "id"
    raw["model"]["config_file"] = str(REPO / "models" / "deepseek-r1" / "config.json")
    return raw


def file_problems(raw: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    with pytest.raises(SettingsError) as err:
        load_settings(raw, ALL_SECRETS, base_dir=tmp_path)
    return {p.path: p.message for p in err.value.problems}


def test_files_in_place_pass(tmp_path: Path) -> None:
    raw = _with_files(tmp_path)
    (tmp_path / "known_hosts").write_text("")
    raw["ssh"]["known_hosts_file"] = "known_hosts"
    assert load_settings(raw, ALL_SECRETS, base_dir=tmp_path).ssh.known_hosts_file


def test_a_missing_known_hosts_file_is_named(tmp_path: Path) -> None:
    raw = _with_files(tmp_path)
    raw["ssh"]["known_hosts_file"] = "known_hosts"
    assert file_problems(raw, tmp_path) == {
        "ssh.known_hosts_file": f"file {str(tmp_path / 'known_hosts')!r} does not exist on this "
        "machine"
    }


def test_a_missing_local_model_directory_is_named(tmp_path: Path) -> None:
    raw = _with_files(tmp_path)
    raw["model"] = {
        "source": "local",
        "local_dir": "weights",
        "path": "/data01/tiny",
        "config_file": str(REPO / "models" / "deepseek-r1" / "config.json"),
    }
    assert file_problems(raw, tmp_path) == {
        "model.local_dir": f"directory {str(tmp_path / 'weights')!r} does not exist on this machine"
    }


def test_a_public_key_given_as_the_private_key_is_named(tmp_path: Path) -> None:
    raw = _with_files(tmp_path)
    (tmp_path / "id").write_text(HOST_KEY + " me@laptop\n")
    assert file_problems(raw, tmp_path) == {
        "ssh.private_key_file": f"{str(tmp_path / 'id')!r} holds a public key ('ssh-ed25519 "
        "AAAA...'); give the private key file (for ~/.ssh/id_ed25519.pub that is "
        "~/.ssh/id_ed25519)"
    }


def test_an_unreadable_private_key_file_is_named(tmp_path: Path) -> None:
    """/proc/self/mem is a regular file whose first page cannot be read (EIO), even by root."""
    raw = _with_files(tmp_path)
    raw["ssh"]["private_key_file"] = "/proc/self/mem"
    assert file_problems(raw, tmp_path) == {
        "ssh.private_key_file": "cannot read '/proc/self/mem': Input/output error"
    }


# ---------------------------------------------------------------------------------------
# Smaller rules


def test_parallel_sizes_read_as_written() -> None:
    s = loads(setter(" 4 ", "serving", "tensor_parallel_size"))
    assert s.serving.tensor_parallel_size == 4 and s.serving.tp == 4
    s = loads(setter("auto", "serving", "pipeline_parallel_size"))
    assert s.serving.pipeline_parallel_size == "auto" and s.serving.pp is None
    found = problems(setter(True, "serving", "tensor_parallel_size"))
    assert found == {"serving.tensor_parallel_size": "must be 'auto' or a positive integer"}


def test_the_error_counts_its_problems() -> None:
    with pytest.raises(SettingsError) as one:
        load_settings({**valid_raw(), "zz": 1}, ALL_SECRETS)
    assert str(one.value).splitlines()[0] == "invalid stack configuration (1 problem):"
    with pytest.raises(SettingsError) as two:
        load_settings({**valid_raw(), "zz": 1, "yy": 2}, ALL_SECRETS)
    assert str(two.value).splitlines()[0] == "invalid stack configuration (2 problems):"
    assert str(two.value).splitlines()[1].startswith("  - ")


def test_a_long_bad_value_is_quoted_up_to_60_characters() -> None:
    value = "9" * 30 + "x" * 70
    found = problems(setter(value, "serving", "port"))
    assert found["serving.port"].endswith(f" (got {repr(value)[:60]})")


def test_registry_mirror_path_keeps_its_letters() -> None:
    s = loads(setter({"registry_mirrors": ["http://10.0.0.5:5000/BOX/"]}, "docker"))
    assert s.docker.registry_mirrors == ("http://10.0.0.5:5000/BOX",)


def test_a_config_file_too_large_or_unreadable_is_named(tmp_path: Path) -> None:
    raw = _with_files(tmp_path)
    huge = tmp_path / "config.json"
    with huge.open("wb") as f:
        f.truncate(64 * 2**20 + 1)  # sparse: nothing is written
    raw["model"]["config_file"] = str(huge)
    assert file_problems(raw, tmp_path) == {
        "model.config_file": f"{str(huge)!r} is 67,108,865 bytes, not the model's config.json"
    }
    raw["model"]["config_file"] = "/proc/self/mem"
    assert file_problems(raw, tmp_path) == {
        "model.config_file": "cannot read '/proc/self/mem': Input/output error"
    }


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (setter(8000.5, "serving", "port"), {"serving.port": "must be a whole number, got 8000.5"}),
        (
            setter("NVIDIA\x7fH20", "hosts", 0, "gpus", "model"),
            {
                "hosts[0].gpus.model": "must not contain control characters (NUL, newline, ...), "
                "got 'NVIDIA\\x7fH20'"
            },
        ),
        (
            setter("my model", "model", "served_name"),
            {
                "model.served_name": "must be a name without spaces (clients send it as `model`), "
                "got 'my model'"
            },
        ),
        (
            setter("vllm", "image", "name"),
            {
                "image.name": "must be an image reference with a tag, name:tag (e.g. "
                "vllm/vllm-openai:v0.8.5), got 'vllm'"
            },
        ),
    ],
)
def test_value_refusals_say_what_is_expected(
    change: Callable[[dict[str, Any]], None], found: dict[str, str]
) -> None:
    assert problems(change) == found


@pytest.mark.parametrize(
    ("change", "read"),
    [
        (setter("enP2p1s0", "hosts", 0, "nic"), lambda s: s.hosts[0].nic),
        (
            setter({"name": "Registry.Example.com:5000/vllm/vllm-openai:V0.8.5-RC1"}, "image"),
            lambda s: s.image.name,
        ),
    ],
)
def test_mixed_case_names_are_accepted(
    change: Callable[[dict[str, Any]], None], read: Callable[[Any], str]
) -> None:
    raw = valid_raw()
    change(raw)
    assert read(load_settings(raw, ALL_SECRETS)) in str(raw)


def test_two_ssh_key_sources_are_refused() -> None:
    raw = valid_raw()  # it names a key file; the secret is set too
    with pytest.raises(SettingsError) as err:
        load_settings(raw, {"apiKey": True, "sshPrivateKey": True})
    messages = {p.path: p.message for p in err.value.problems}
    assert messages == {
        "ssh.private_key_file": "both this and the secret vllm-cluster:sshPrivateKey are set; "
        "keep exactly one SSH key source"
    }


# ---------------------------------------------------------------------------------------
# Rules across keys: the conflict and both ways out


def _hosts(r: dict[str, Any], *names_and_addresses: tuple[str, str]) -> None:
    for host, (name, address) in zip(r["hosts"], names_and_addresses, strict=True):
        host.update(name=name, address=address)


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (
            setter({"name": "vllm/vllm-openai:v1", "pull": True, "tarball": "x.tar"}, "image"),
            {
                "image.pull": "is true but image.tarball is set (the tarball is loaded instead "
                "of pulling); remove one"
            },
        ),
        (
            setter({"name": "vllm/vllm-openai:v1", "pull": False}, "image"),
            {
                "image.pull": "is false but there is no image.tarball, so the image has no "
                "source; set image.tarball (copied and `docker load`ed) or remove image.pull "
                "(pulled from its registry)"
            },
        ),
        (
            setter({"install": True}, "docker"),
            {
                "docker.deb_dir": "is required when docker.install is true: a directory of "
                "Docker .deb files on this machine"
            },
        ),
        (
            lambda r: _hosts(r, ("h20-1", "10.0.0.1"), ("h20-1", "10.0.0.2")),
            {"hosts[1].name": "'h20-1' is already used by hosts[0]; host names must be unique"},
        ),
        (  # the same DNS name in another case or with the root dot is the same host
            lambda r: _hosts(r, ("a", "GPU-A.example.com."), ("b", "gpu-a.example.com")),
            {
                "hosts[1].address": "'gpu-a.example.com' is already hosts[0].address; each host "
                "needs its own address"
            },
        ),
        (
            lambda r: (
                r["hosts"][1]["gpus"].update(count=4),
                r["hosts"][0]["gpus"].update(memory_gib=80),
            ),
            {
                "hosts[1].gpus.count": "4 differs from hosts[0].gpus.count 8; all hosts must have "
                "identical GPUs (vLLM places the same TP x PP layout on every node)",
                "hosts[1].gpus.memory_gib": "96.0 differs from hosts[0].gpus.memory_gib 80.0; all "
                "hosts must have identical GPUs (vLLM places the same TP x PP layout on every "
                "node)",
            },
        ),
        (
            lambda r: r["model"].pop("config_file"),
            {
                "model.config_file": "is required for source=modelscope: the planner reads the "
                "model's config.json on this machine; download it (a few KB) to e.g. "
                "models/<name>/config.json and point here"
            },
        ),
        (
            lambda r: _hosts(r, ("a" * 30, "10.0.0.1"), ("b" * 30, "10.0.0.2")),
            {
                "hosts[1].name": "is too long together with hosts[0].name: the weights fan-out "
                f"step is named '{'a' * 30}-to-{'b' * 30}' (64 characters, at most 63); keep "
                "len(hosts[0].name) + len(this name) <= 59"
            },
        ),
    ],
)
def test_cross_key_conflicts_name_both_ways_out(
    change: Callable[[dict[str, Any]], object], found: dict[str, str]
) -> None:
    assert problems(change) == found


def test_host_names_of_the_longest_fan_out_name_pass() -> None:
    raw = valid_raw()
    _hosts(raw, ("a" * 30, "10.0.0.1"), ("b" * 29, "10.0.0.2"))  # a-to-b: 63 characters
    assert len(load_settings(raw, ALL_SECRETS).hosts) == 2


_LOCAL = {"source": "local", "path": "/data01/tiny", "config_file": "c.json"}


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (
            setter("/tmp/w", "model", "local_dir"),
            {"model.local_dir": "is only used with source=local (source is modelscope); remove it"},
        ),
        (
            setter(
                {**_LOCAL, "local_dir": "/tmp/w", "hub_endpoint": "https://hub.example.com"},
                "model",
            ),
            {"model.hub_endpoint": "is only used with a hub source; remove it for source=local"},
        ),
        (
            setter(_LOCAL, "model"),
            {
                "model.local_dir": "is required for source=local: the weights directory on this "
                "machine"
            },
        ),
        (
            setter(8000, "serving", "master_port"),
            {
                "serving.master_port": "8000 is also serving.port; rank 0's rendezvous and the "
                "API server need different ports"
            },
        ),
        (  # one byte more than 2 hosts x 8 GPUs x 96 GiB
            setter(2 * 8 * 96 * 2**30 + 1, "model", "weights_bytes"),
            {
                "model.weights_bytes": f"{2 * 8 * 96 * 2**30 + 1:,} bytes (1,536 GiB) is more "
                "than all 16 GPUs of the 2 host(s) hold together (1,536 GiB); it is the "
                "checkpoint's size in bytes (metadata.total_size of model.safetensors.index.json)"
            },
        ),
    ],
)
def test_model_and_serving_conflicts(
    change: Callable[[dict[str, Any]], None], found: dict[str, str]
) -> None:
    assert problems(change) == found


def test_a_checkpoint_exactly_as_large_as_every_gpu_passes_this_check() -> None:
    s = loads(setter(2 * 8 * 96 * 2**30, "model", "weights_bytes"))
    assert s.model.weights_bytes == 2 * 8 * 96 * 2**30


def test_the_secrets_that_are_set_are_recorded() -> None:
    s = load_settings(valid_raw(), {"apiKey": True, "hubToken": True})
    assert (s.secrets.api_key, s.secrets.hub_token, s.secrets.ssh_private_key) == (
        True,
        True,
        False,
    )
    s = load_settings(valid_raw(), {"apiKey": True})
    assert s.secrets.hub_token is False


def test_a_public_key_file_named_as_the_private_key_points_to_its_pair() -> None:
    found = problems(setter("~/.ssh/id_ed25519.pub", "ssh", "private_key_file"))
    assert found == {
        "ssh.private_key_file": "'~/.ssh/id_ed25519.pub' is a public key (.pub); give the "
        "private key file beside it ('~/.ssh/id_ed25519')"
    }


def test_the_rendezvous_port_only_clashes_with_the_mp_launcher() -> None:
    s = loads(setter({"distributed_backend": "ray", "master_port": 8000}, "serving"))
    assert s.serving.master_port == s.serving.port == 8000
