"""The stack configuration (namespace `vllm-cluster:`), validated in one place.

`load_settings(raw, secrets_present)` turns the plain config values into a frozen
`Settings`, or raises `SettingsError` listing *every* problem at once, one line each, named
by the key path the user writes (`hosts[1].address`, `serving.gpu_memory_utilization`,
`vllm-cluster:apiKey`) with what is expected and how to fix it. Secret values never enter
this model: only whether each secret is set (and, to refuse it, whether one was set in
plain text).

Field-level rules live on the pydantic models below (pydantic reports all of them in one
pass; value rules that need more than a pattern, such as engine flags as vLLM's parser reads
them, are in components/settings_checks.py). Rules that relate several keys (unique hosts,
identical GPUs, ports that must differ, exactly one SSH key source, ...) run in
`_cross_checks` over each field's *validated* value, one field at a time, so they are reported
in the same pass even when other fields are broken and never see a value pydantic would
still coerce (`'8000'`, `true`). Files on the operator machine are checked last
(`_file_checks`). components/settings_source.py reads all of it from Pulumi's config.
"""

from __future__ import annotations

import difflib
import json
import posixpath
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticUndefined

from components.plan.model_config import INDEX_FILE
from components.render.shell._weights_tool import system_path_problem
from components.render.shell.storage import FORBIDDEN_MOUNT_POINTS, stable_device_problem
from components.settings_checks import (
    check_address,
    check_env_name,
    check_env_value,
    check_extra_arg,
    check_host_path,
    is_loopback,
)

NAMESPACE = "vllm-cluster"
CONFIG_KEYS = ("hosts", "ssh", "model", "image", "serving", "docker")
SECRET_KEYS = ("apiKey", "sshPrivateKey", "hubToken")
HUB_SOURCES = ("modelscope", "huggingface")

# The largest checkpoint model.weights_bytes may name (1 PiB): beyond any model served today,
# and far below where the planner's float arithmetic overflows.
MAX_WEIGHTS_BYTES = 2**50
GIB = 2**30
# The fan-out step names its state after both hosts: f"{head}-to-{target}" must be a name
# of at most 63 characters (components/render/shell/_common.py check_name).
_MAX_PAIR_NAME = 63
# Mount points under these would hide a kernel or runtime filesystem.
_PSEUDO_FS = ("/proc", "/sys", "/dev", "/run", "/boot")


# ---------------------------------------------------------------------------------------
# Field validators (each raises ValueError with the message the user sees)


def _host_name(v: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", v):
        raise ValueError(
            f"must be lowercase letters, digits and '-' (1-63 chars, no leading/trailing '-'; "
            f"it names Pulumi resources), got {v!r}"
        )
    return v


def _address(v: str) -> str:
    return check_address(v)


def _no_bool(v: Any) -> Any:
    # pydantic's lax mode reads true as 1 (`port: true` would be SSH port 1); numeric
    # strings ('8000', as `pulumi config set --path` may store them) stay accepted.
    if isinstance(v, bool):
        raise ValueError(f"must be a number, not {str(v).lower()}")
    return v


def _bool(v: Any) -> Any:
    # Only true/false (YAML booleans, or the words as `pulumi config set --path` stores
    # them): lax mode would also read 1, 'yes', 'on', 'y' as true, e.g. for allow_format.
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ValueError(f"must be true or false, got {v!r}")


def _whole(v: Any) -> Any:
    if isinstance(v, float) and not v.is_integer():
        raise ValueError(f"must be a whole number, got {v!r}")
    return v


def _no_control(v: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError(f"must not contain control characters (NUL, newline, ...), got {v!r}")
    return v


def _unix_user(v: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", v):
        raise ValueError(f"must be a Unix user name (e.g. root), got {v!r}")
    return v


def _ifname(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", v):
        raise ValueError(
            f"must be a network interface name like eth0 or ens1f0 (<= 15 chars), got {v!r}"
        )
    return v


def _host_key(v: str) -> str:
    _no_control(v.strip())
    if not re.fullmatch(
        r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
        r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( \S.*)?",
        v.strip(),
    ):
        raise ValueError(
            "must be an OpenSSH public host key line like 'ssh-ed25519 AAAAC3...' "
            "(from `ssh-keyscan -t ed25519 <address>`)"
        )
    return v.strip()


def _model_path(v: str) -> str:
    # Weights are verified, fanned out and (keep_on_destroy: false) removed as a whole
    # directory: it must be the model's own, not a top-level directory like /data.
    v = check_host_path(v, min_components=2)
    problem = system_path_problem(v)
    if problem:
        raise ValueError(
            f"{problem}; keep the weights on a data directory (e.g. /data01/{_leaf(v)})"
        )
    return v


def _leaf(v: str) -> str:
    return v.rstrip("/").rsplit("/", 1)[-1] or "model"


def _mount_point(v: str) -> str:
    v = check_host_path(v)
    if v in FORBIDDEN_MOUNT_POINTS:
        raise ValueError(f"{v} is a system directory; mount the data disk elsewhere (e.g. /data01)")
    if any(v.startswith(p + "/") for p in _PSEUDO_FS):
        raise ValueError(
            f"{v} is inside a kernel or runtime filesystem; mount the data disk elsewhere "
            "(e.g. /data01)"
        )
    problem = system_path_problem(v)
    if problem:
        raise ValueError(f"{problem}; mount the data disk elsewhere (e.g. /data01)")
    return v


def _device(v: str) -> str:
    if not re.fullmatch(r"/dev/[A-Za-z0-9._/:-]+", v):
        raise ValueError(f"must be a block device path under /dev (e.g. /dev/nvme1n1), got {v!r}")
    try:
        v = check_host_path(v, min_components=2, colon=True)
    except ValueError as exc:
        raise ValueError(f"must be a block device path under /dev: {exc}") from None
    problem = stable_device_problem(v)
    if problem:
        raise ValueError(problem)
    return v


def _revision(v: str) -> str:
    # A branch, tag or commit; it reaches the hub CLI's command line on the hosts.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}", v) or ".." in v:
        raise ValueError(
            "must be a branch, tag or commit (letters, digits and . _ / -, not starting "
            f"with . / or -, no '..'), got {v!r}"
        )
    return v


def _private_key_file(v: str) -> str:
    if v.endswith(".pub"):
        raise ValueError(
            f"{v!r} is a public key (.pub); give the private key file beside it "
            f"({v.removesuffix('.pub')!r})"
        )
    return v


def _url(v: str) -> str:
    _no_control(v)
    m = re.fullmatch(r"https?://([^/\s]+)(/\S*)?", v)
    if not m:
        raise ValueError(f"must be an http:// or https:// URL, got {v!r}")
    if "@" in m.group(1):
        raise ValueError(
            "must not carry credentials; tokens go in the secret vllm-cluster:hubToken"
        )
    return v.rstrip("/")


def _image_ref(v: str) -> str:
    if not re.fullmatch(
        r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
        r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
        v,
    ):
        raise ValueError(
            "must be an image reference with a tag, name:tag "
            f"(e.g. vllm/vllm-openai:v0.8.5), got {v!r}"
        )
    return v


def _hub_id(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", v):
        raise ValueError(
            f"must be a hub model id 'organisation/name' (e.g. deepseek-ai/DeepSeek-R1), got {v!r}"
        )
    return v


def _served_name(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]*", v):
        raise ValueError(f"must be a name without spaces (clients send it as `model`), got {v!r}")
    return v


def _parallel(v: Any) -> int | Literal["auto"]:
    if v == "auto" or v is None:
        return "auto"
    if isinstance(v, bool):
        raise ValueError("must be 'auto' or a positive integer")
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if isinstance(v, int) and v > 0:
        return v
    raise ValueError(f"must be 'auto' or a positive integer, got {v!r}")


def _shm_gib(v: Any) -> Any:
    if isinstance(v, float) and not v.is_integer():
        raise ValueError(
            f"must be a whole number of GiB (Docker gets it as an integer), got {v!r}; "
            f"write {max(1, round(v))}"
        )
    return v


def _scalar_to_str(v: Any) -> Any:
    # YAML turns `- 8192` into a number; command-line words and env values are strings.
    if isinstance(v, int | float) and not isinstance(v, bool):
        return str(v)
    return v


HostName = Annotated[str, AfterValidator(_host_name)]
Address = Annotated[str, AfterValidator(_address)]
UnixUser = Annotated[str, AfterValidator(_unix_user)]
IfName = Annotated[str, AfterValidator(_ifname)]
# Numbers: no booleans (lax mode reads true as 1), whole numbers for ints.
Int = Annotated[int, BeforeValidator(_no_bool), BeforeValidator(_whole)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Bool = Annotated[bool, PlainValidator(_bool)]
Port = Annotated[Int, Field(ge=1, le=65535)]
ParallelSize = Annotated[int | Literal["auto"], PlainValidator(_parallel)]
NonEmpty = Annotated[str, Field(min_length=1), AfterValidator(_no_control)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------------------------------
# The models (one per config object; field names are the YAML keys)


class GpuSpec(_Model):
    count: Int = Field(ge=1, le=64, description="GPUs per host")
    model: NonEmpty = Field(description='GPU model as nvidia-smi names it, e.g. "NVIDIA H20"')
    memory_gib: Float = Field(
        gt=0,
        le=1024,
        description="memory per GPU: the label (96 for a 96 GB H20) or nvidia-smi "
        "memory.total/1024; the planner counts 99% of it as what CUDA can use",
    )


class Storage(_Model):
    device: Annotated[str, AfterValidator(_device)] = Field(
        description="the data disk by a name that survives reboots: /dev/disk/by-id/... "
        "(or by-uuid, by-partuuid, by-path, /dev/mapper/...); /dev/sdX and /dev/nvmeXnY "
        "are refused (they can name another disk after a reboot); /dev/loopN is accepted "
        "(loop devices have no by-id link)"
    )
    filesystem: Literal["xfs", "ext4"] = Field(description="xfs or ext4")
    mount_point: Annotated[str, AfterValidator(_mount_point)] = Field(description="e.g. /data01")
    allow_format: Bool = Field(
        default=False,
        description="let the first pulumi up partition and format the device, once, and only "
        "if it is blank: no filesystem, RAID/LVM or partition-table signature on it or its "
        "partitions, not mounted, not swap, no holders, not open in any process. A device "
        "holding anything is refused, never wiped. After formatting, a record on the host "
        "(/var/lib/vllm-cluster/storage) stops any later up from formatting it again",
    )


class Host(_Model):
    name: HostName = Field(description="unique name, [a-z0-9-], used in resource names")
    address: Address = Field(description="IPv4/IPv6 address or DNS name reachable over SSH")
    user: UnixUser = "root"
    port: Port = 22
    nic: IfName = Field(default="eth0", description="interface NCCL/GLOO/Ray use between nodes")
    host_key: Annotated[str, AfterValidator(_host_key)] | None = Field(
        default=None, description="pinned SSH host key line ('ssh-ed25519 AAAA...')"
    )
    gpus: GpuSpec = Field(description="expected GPUs: {count, model, memory_gib}")
    storage: Storage | None = None


class Bastion(_Model):
    address: Address
    user: UnixUser = "root"
    port: Port = 22
    host_key: Annotated[str, AfterValidator(_host_key)] | None = Field(
        default=None,
        description="pinned SSH host key line of the bastion (or list it in ssh.known_hosts_file)",
    )


class SshSettings(_Model):
    private_key_file: Annotated[NonEmpty, AfterValidator(_private_key_file)] | None = Field(
        default=None,
        description="private key file on this machine (or the secret vllm-cluster:sshPrivateKey)",
    )
    known_hosts_file: NonEmpty | None = None
    bastion: Bastion | None = None
    connect_timeout_s: Int = Field(default=10, ge=1, le=600)


class ModelSettings(_Model):
    id: str | None = Field(
        default=None, description="hub id, e.g. deepseek-ai/DeepSeek-R1 (informational for local)"
    )
    source: Literal["modelscope", "huggingface", "local"] = Field(
        description="modelscope, huggingface or local"
    )
    revision: Annotated[str, AfterValidator(_revision)] | None = None
    path: Annotated[str, AfterValidator(_model_path)] = Field(
        description="absolute path of the weights on every node (at least two levels deep)"
    )
    served_name: Annotated[str, AfterValidator(_served_name)] | None = None
    trust_remote_code: Bool = False
    local_dir: NonEmpty | None = Field(
        default=None, description="weights directory on this machine (source=local)"
    )
    config_file: NonEmpty | None = Field(
        default=None,
        description="config.json on this machine for planning (default <local_dir>/config.json)",
    )
    weights_bytes: Int | None = Field(
        default=None,
        gt=0,
        le=MAX_WEIGHTS_BYTES,
        description="checkpoint size in bytes for planning",
    )
    hub_endpoint: Annotated[str, AfterValidator(_url)] | None = None
    distribute: Literal["fanout", "each"] | None = Field(
        default=None,
        description="fanout: the head fetches, the other hosts copy from it over the LAN; "
        "each: every host fetches for itself. Default: fanout for hub sources (one download), "
        "each for source=local (the operator machine pushes to every host, as the manual does)",
    )
    keep_on_destroy: Bool = True
    verify: Literal["sizes", "sha256"] = "sizes"

    @property
    def distribution(self) -> Literal["fanout", "each"]:
        """How the weights reach the hosts. From a hub, fan-out downloads once instead of once
        per host. From the operator machine, pushing to each host moves the same bytes over
        the operator's link as fan-out does over the head's, without fan-out's extra steps
        (a temporary key and a verify of the head for every host: 7 SSH sessions instead of
        4; measured 12-13 s per host against 4 s for the push to the head, on 4 lab hosts)."""
        if self.distribute is not None:
            return self.distribute
        return "each" if self.source == "local" else "fanout"

    @property
    def served_model_name(self) -> str:
        """served_name, else the last part of id, else the last part of path."""
        if self.served_name:
            return self.served_name
        if self.id:
            return self.id.rstrip("/").split("/")[-1]
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def config_path(self) -> str:
        """config.json on the operator machine (relative to the project directory)."""
        if self.config_file:
            return self.config_file
        return posixpath.join(self.local_dir or ".", "config.json")

    @property
    def from_hub(self) -> bool:
        return self.source in HUB_SOURCES


class ImageSettings(_Model):
    name: Annotated[str, AfterValidator(_image_ref)] = Field(description="name:tag")
    tarball: NonEmpty | None = Field(
        default=None, description="image tarball on this machine: copied, then `docker load`"
    )
    pull: Bool | None = Field(
        default=None, description="pull from a registry (default: true without a tarball)"
    )

    @property
    def should_pull(self) -> bool:
        return self.pull if self.pull is not None else self.tarball is None


class Infiniband(_Model):
    enabled: Bool = False
    hca: (
        Annotated[str, Field(pattern=r"^[=^]?[A-Za-z0-9_]+(:\d+)?(,[A-Za-z0-9_]+(:\d+)?)*$")] | None
    ) = None


class ServingSettings(_Model):
    port: Port = 8000
    max_model_len: Int | None = Field(
        default=None, gt=0, description="default: the model's context length"
    )
    max_num_seqs: Int = Field(default=256, gt=0)
    gpu_memory_utilization: Float = Field(default=0.9, gt=0, le=1)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    tensor_parallel_size: ParallelSize = "auto"
    pipeline_parallel_size: ParallelSize = "auto"
    extra_args: tuple[
        Annotated[str, BeforeValidator(_scalar_to_str), AfterValidator(check_extra_arg)], ...
    ] = ()
    extra_env: dict[
        Annotated[str, AfterValidator(check_env_name)],
        Annotated[str, BeforeValidator(_scalar_to_str), AfterValidator(check_env_value)],
    ] = Field(default_factory=dict)
    nccl_socket_ifname: IfName | None = None
    gloo_socket_ifname: IfName | None = None
    infiniband: Infiniband = Infiniband()
    ipc_host: Bool = True
    shm_size_gib: Annotated[Int, BeforeValidator(_shm_gib)] = Field(
        default=16, gt=0, le=1024, description="/dev/shm of the engine containers, whole GiB"
    )
    ready_timeout_s: Int | None = Field(default=None, ge=30)
    reserve_gib: Float | None = Field(default=None, ge=0, le=1024)
    # How several nodes serve one model. mp: vLLM's own launcher (--nnodes/--node-rank/
    # --master-addr, no Ray: what current vLLM images support; the official image has no
    # Ray since v0.18). ray: a Ray cluster (images that carry Ray, like the manual's).
    distributed_backend: Literal["mp", "ray"] = Field(
        default="mp", description="mp (vLLM's own multi-node launcher) or ray"
    )
    expert_parallel: Bool = Field(
        default=False,
        description="MoE: whole experts per GPU over the TP group (--enable-expert-parallel)",
    )
    master_port: Port = Field(
        default=29501, description="rank 0's port for the mp backend's rendezvous (vLLM's default)"
    )
    ray_port: Port = 6379

    @property
    def tp(self) -> int | None:
        """tensor_parallel_size as an int, None for auto."""
        v = self.tensor_parallel_size
        return None if v == "auto" else int(v)

    @property
    def pp(self) -> int | None:
        v = self.pipeline_parallel_size
        return None if v == "auto" else int(v)


class DockerSettings(_Model):
    install: Bool = False
    deb_dir: NonEmpty | None = Field(
        default=None, description="directory of docker .deb files on this machine"
    )
    registry_mirrors: tuple[Annotated[str, AfterValidator(_url)], ...] = ()
    docker_group_user: UnixUser | None = None


class SecretsPresent(_Model):
    """Which secrets are set (never their values)."""

    api_key: bool
    ssh_private_key: bool
    hub_token: bool


class Settings(_Model):
    hosts: tuple[Host, ...] = Field(
        min_length=1, description="the GPU servers as a list; hosts[0] is the head"
    )
    ssh: SshSettings = SshSettings()
    model: ModelSettings = Field(description="the model: id, source, path, config_file, ...")
    image: ImageSettings = Field(description="the vLLM image: name:tag, optional tarball")
    serving: ServingSettings = ServingSettings()
    docker: DockerSettings = DockerSettings()
    secrets: SecretsPresent

    @property
    def head(self) -> Host:
        return self.hosts[0]

    @property
    def workers(self) -> tuple[Host, ...]:
        return self.hosts[1:]

    @property
    def multi_node(self) -> bool:
        """More than one host configured (the plan may still serve on fewer: plan.nodes)."""
        return len(self.hosts) > 1

    @property
    def gpus_per_node(self) -> int:
        return self.hosts[0].gpus.count

    @property
    def gpu_memory_gib(self) -> float:
        return self.hosts[0].gpus.memory_gib

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * len(self.hosts)

    @property
    def ssh_key_source(self) -> Literal["file", "secret"]:
        return "secret" if self.secrets.ssh_private_key else "file"

    def nccl_ifname(self, host: Host) -> str:
        return self.serving.nccl_socket_ifname or host.nic

    def gloo_ifname(self, host: Host) -> str:
        return self.serving.gloo_socket_ifname or host.nic


# ---------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class Problem:
    path: str  # as the user writes it: hosts[1].address, vllm-cluster:apiKey
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SettingsError(ValueError):
    """The stack configuration is invalid; `problems` lists every issue found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        n = len(self.problems)
        lines = [f"invalid stack configuration ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))

    @property
    def paths(self) -> list[str]:
        return [p.path for p in self.problems]


def _path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an invalid dict key
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _strip(tp: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X (first BaseModel/container member)."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            tp = next((m for m in members if get_origin(m) or isinstance(m, type)), members[0])
        else:
            return tp


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that owns the keys at `loc` (for 'did you mean')."""
    tp: Any = Settings
    for part in loc:
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if not isinstance(part, str) or part not in tp.model_fields:
                return None
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) in (tuple, list, dict):
            tp = get_args(tp)[-1 if get_origin(tp) is dict else 0]
        else:
            return None
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _secret_hint(key: str) -> str:
    k = re.sub(r"[^a-z]", "", key.lower())
    if "apikey" in k:
        return (
            f"the API key is the secret {NAMESPACE}:apiKey "
            f"(`pulumi config set --secret {NAMESPACE}:apiKey <key>`)"
        )
    if "privatekey" in k or k in ("sshkey", "key"):
        return (
            "an SSH key goes in ssh.private_key_file (a path) or the secret "
            f"{NAMESPACE}:sshPrivateKey "
            f"(`pulumi config set --secret {NAMESPACE}:sshPrivateKey < ~/.ssh/id_ed25519`)"
        )
    if "token" in k or "password" in k:
        return (
            f"hub tokens are the secret {NAMESPACE}:hubToken "
            f"(`pulumi config set --secret {NAMESPACE}:hubToken <token>`)"
        )
    return ""


def _unknown_key(loc: Sequence[str | int]) -> str:
    key = str(loc[-1])
    owner = _model_at(loc[:-1])
    valid = sorted(k for k in owner.model_fields if k != "secrets") if owner else []
    msg = f"unknown key {key!r}"
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = _secret_hint(key)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    elif hint:
        msg += f"; {hint}"
    if valid:
        msg += f" (valid keys here: {', '.join(valid)})"
    return msg


def _describe_missing(loc: Sequence[str | int]) -> str:
    owner = _model_at(loc[:-1])
    key = str(loc[-1])
    desc = owner.model_fields[key].description if owner and key in owner.model_fields else None
    where = f"{NAMESPACE}:{loc[0]}" if len(loc) == 1 else _path(loc)
    return f"is required ({desc}); set {where} in Pulumi.<stack>.yaml" if desc else "is required"


def _from_pydantic(err: ValidationError) -> list[Problem]:
    out = []
    errors = err.errors(include_url=False)
    for e in errors:
        loc = tuple(e["loc"])
        kind = e["type"]
        if kind == "too_short" and any(
            len(o["loc"]) > len(loc) and tuple(o["loc"][: len(loc)]) == loc for o in errors
        ):
            continue  # items failed and were dropped; the item errors say why
        if kind == "extra_forbidden":
            out.append(Problem(_path(loc), _unknown_key(loc)))
            continue
        if kind == "missing":
            out.append(Problem(_path(loc), _describe_missing(loc)))
            continue
        msg = str(e["msg"])
        ctx = e.get("ctx") or {}
        if kind == "too_short":
            msg = f"must have at least {ctx.get('min_length', 1)} item(s)"
        elif kind in ("tuple_type", "list_type"):
            msg = "must be a list (YAML `- item` lines)"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            msg = "must be a mapping of keys to values"
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        else:
            msg = msg[:1].lower() + msg[1:]  # "Input should be ..." -> "input should be ..."
        if kind != "value_error" and not isinstance(e.get("input"), dict | list):
            got = repr(e.get("input"))
            msg += f" (got {got[:60]})"
        out.append(Problem(_path(loc), msg))
    return out


# ---------------------------------------------------------------------------------------
# Cross-key rules. They compare values *after* each field's own validation (so `port: '8000'`
# is 8000 and `port: true` is refused, never 1), one field at a time, so that they are
# reported in the same pass even when other fields are broken: a field that is invalid is
# None here (its own rule reports it) and the rules that need it are skipped.


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: Any) -> list[Mapping[str, Any]]:
    return [_obj(v) for v in value] if isinstance(value, list | tuple) else []


_ADAPTERS: dict[tuple[type[BaseModel], str], TypeAdapter[Any]] = {}


def _coerced(model: type[BaseModel], raw: Mapping[str, Any], key: str) -> Any:
    """raw[key] as `model`'s field `key` validates it; the field's default when absent; None
    when invalid (or required and absent)."""
    field = model.model_fields[key]
    if key not in raw:
        default = field.get_default(call_default_factory=True)
        return None if default is PydanticUndefined else default
    adapter = _ADAPTERS.get((model, key))
    if adapter is None:
        tp: Any = field.annotation
        if field.metadata:
            tp = Annotated.__class_getitem__((tp, *field.metadata))  # type: ignore[attr-defined]
        adapter = TypeAdapter(tp)
        _ADAPTERS[model, key] = adapter
    try:
        return adapter.validate_python(raw[key])
    except ValidationError:
        return None


def _is_set(raw: Mapping[str, Any], key: str) -> bool:
    """Whether the user set `key` at all (whatever its value's validity)."""
    return raw.get(key) not in (None, "")


def _cross_checks(raw: Mapping[str, Any], secrets: SecretsPresent) -> list[Problem]:
    out: list[Problem] = []
    hosts = _items(raw.get("hosts"))
    out += _host_checks(hosts)

    ssh = _obj(raw.get("ssh"))
    key_file = _is_set(ssh, "private_key_file")
    if key_file and secrets.ssh_private_key:
        out.append(
            Problem(
                "ssh.private_key_file",
                f"both this and the secret {NAMESPACE}:sshPrivateKey are set; "
                "keep exactly one SSH key source",
            )
        )
    elif not key_file and not secrets.ssh_private_key:
        out.append(
            Problem(
                "ssh.private_key_file",
                f"no SSH key: set ssh.private_key_file (a key file on this machine) or the secret "
                f"`pulumi config set --secret {NAMESPACE}:sshPrivateKey < ~/.ssh/id_ed25519`",
            )
        )
    if not secrets.api_key:
        out.append(
            Problem(
                f"{NAMESPACE}:apiKey",
                f"required secret is not set (clients send it as the bearer token); set it with "
                f"`pulumi config set --secret {NAMESPACE}:apiKey <key>`",
            )
        )

    out += _model_checks(_obj(raw.get("model")), hosts)

    image = _obj(raw.get("image"))
    tarball, pull = _is_set(image, "tarball"), _coerced(ImageSettings, image, "pull")
    if tarball and pull is True:
        out.append(
            Problem(
                "image.pull",
                "is true but image.tarball is set (the tarball is loaded instead of "
                "pulling); remove one",
            )
        )
    elif not tarball and pull is False:
        out.append(
            Problem(
                "image.pull",
                "is false but there is no image.tarball, so the image has no source; set "
                "image.tarball (copied and `docker load`ed) or remove image.pull (pulled "
                "from its registry)",
            )
        )

    out += _serving_checks(_obj(raw.get("serving")), hosts)

    docker = _obj(raw.get("docker"))
    if _coerced(DockerSettings, docker, "install") is True and not _is_set(docker, "deb_dir"):
        out.append(
            Problem(
                "docker.deb_dir",
                "is required when docker.install is true: a directory of Docker .deb files "
                "on this machine",
            )
        )
    return out


def _host_checks(hosts: list[Mapping[str, Any]]) -> list[Problem]:
    out: list[Problem] = []
    names = [_coerced(Host, h, "name") for h in hosts]
    addresses = [_coerced(Host, h, "address") for h in hosts]
    seen_names: dict[str, int] = {}
    seen_addrs: dict[str, int] = {}
    for i, (name, addr) in enumerate(zip(names, addresses, strict=True)):
        if name is not None:
            if name in seen_names:
                out.append(
                    Problem(
                        f"hosts[{i}].name",
                        f"{name!r} is already used by hosts[{seen_names[name]}]; "
                        "host names must be unique",
                    )
                )
            else:
                seen_names[name] = i
        if addr is not None:
            key = addr.lower().rstrip(".")
            if key in seen_addrs:
                out.append(
                    Problem(
                        f"hosts[{i}].address",
                        f"{addr!r} is already hosts[{seen_addrs[key]}].address; "
                        "each host needs its own address",
                    )
                )
            else:
                seen_addrs[key] = i
            if len(hosts) > 1 and is_loopback(addr):
                out.append(
                    Problem(
                        f"hosts[{i}].address",
                        f"{addr!r} is a loopback address: the other hosts would reach "
                        "themselves at it (Ray, NCCL/GLOO and the rendezvous use it between "
                        "nodes); give the host's address on the cluster network",
                    )
                )
    # The fan-out step names its state after the head and each target host.
    head = names[0] if names else None
    for i, name in enumerate(names[1:], start=1):
        if head is not None and name is not None:
            derived = f"{head}-to-{name}"
            if len(derived) > _MAX_PAIR_NAME:
                out.append(
                    Problem(
                        f"hosts[{i}].name",
                        f"is too long together with hosts[0].name: the weights fan-out step is "
                        f"named {derived!r} ({len(derived)} characters, at most "
                        f"{_MAX_PAIR_NAME}); keep len(hosts[0].name) + len(this name) <= "
                        f"{_MAX_PAIR_NAME - 4}",
                    )
                )
    # The planner and vLLM's TP x PP layout assume identical nodes.
    gpus = [_obj(h.get("gpus")) for h in hosts]
    for key in ("count", "model", "memory_gib"):
        values = [_coerced(GpuSpec, g, key) if g else None for g in gpus]
        first = values[0] if values else None
        if first is None:
            continue
        for i, value in enumerate(values[1:], start=1):
            if value is not None and value != first:
                out.append(
                    Problem(
                        f"hosts[{i}].gpus.{key}",
                        f"{value!r} differs from hosts[0].gpus.{key} {first!r}; all hosts "
                        "must have identical GPUs (vLLM places the same TP x PP layout on "
                        "every node)",
                    )
                )
    return out


def _model_checks(model: Mapping[str, Any], hosts: list[Mapping[str, Any]]) -> list[Problem]:
    out: list[Problem] = []
    source = _coerced(ModelSettings, model, "source")
    if source in HUB_SOURCES:
        if not _is_set(model, "id"):
            out.append(
                Problem(
                    "model.id",
                    f"is required for source={source}: the hub id, e.g. deepseek-ai/DeepSeek-R1",
                )
            )
        elif isinstance(model.get("id"), str):
            try:
                _hub_id(model["id"])
            except ValueError as exc:
                out.append(Problem("model.id", str(exc)))
        if not _is_set(model, "config_file"):
            out.append(
                Problem(
                    "model.config_file",
                    f"is required for source={source}: the planner reads the model's "
                    "config.json on this machine; download it (a few KB) to e.g. "
                    "models/<name>/config.json and point here",
                )
            )
        if _is_set(model, "local_dir"):
            out.append(
                Problem(
                    "model.local_dir",
                    f"is only used with source=local (source is {source}); remove it",
                )
            )
    elif source == "local":
        if not _is_set(model, "local_dir"):
            out.append(
                Problem(
                    "model.local_dir",
                    "is required for source=local: the weights directory on this machine",
                )
            )
        if _is_set(model, "hub_endpoint"):
            out.append(
                Problem(
                    "model.hub_endpoint",
                    "is only used with a hub source; remove it for source=local",
                )
            )
    # A checkpoint larger than every GPU of every host together can never be served.
    weights = _coerced(ModelSettings, model, "weights_bytes")
    first_gpus = _obj(hosts[0].get("gpus")) if hosts else {}
    count = _coerced(GpuSpec, first_gpus, "count") if first_gpus else None
    memory = _coerced(GpuSpec, first_gpus, "memory_gib") if first_gpus else None
    if weights is not None and count is not None and memory is not None:
        total = count * memory * GIB * len(hosts)
        if weights > total:
            out.append(
                Problem(
                    "model.weights_bytes",
                    f"{weights:,} bytes ({weights / GIB:,.0f} GiB) is more than all "
                    f"{count * len(hosts)} GPUs of the {len(hosts)} host(s) hold together "
                    f"({total / GIB:,.0f} GiB); it is the checkpoint's size in bytes "
                    "(metadata.total_size of model.safetensors.index.json)",
                )
            )
    return out


def _serving_checks(serving: Mapping[str, Any], hosts: list[Mapping[str, Any]]) -> list[Problem]:
    out: list[Problem] = []
    port = _coerced(ServingSettings, serving, "port")
    ray_port = _coerced(ServingSettings, serving, "ray_port")
    master_port = _coerced(ServingSettings, serving, "master_port")
    backend = _coerced(ServingSettings, serving, "distributed_backend")
    if port is not None and port == ray_port:
        out.append(
            Problem(
                "serving.ray_port",
                f"{ray_port} is also serving.port; Ray and the API server need different ports",
            )
        )
    if backend == "mp" and port is not None and port == master_port:
        out.append(
            Problem(
                "serving.master_port",
                f"{master_port} is also serving.port; rank 0's rendezvous and the API "
                "server need different ports",
            )
        )
    tp = _coerced(ServingSettings, serving, "tensor_parallel_size")
    pp = _coerced(ServingSettings, serving, "pipeline_parallel_size")
    first_gpus = _obj(hosts[0].get("gpus")) if hosts else {}
    count = _coerced(GpuSpec, first_gpus, "count") if first_gpus else None
    if (
        isinstance(tp, int)
        and isinstance(pp, int)
        and count is not None
        and tp * pp > count * len(hosts)
    ):
        out.append(
            Problem(
                "serving.tensor_parallel_size",
                f"{tp} x pipeline_parallel_size {pp} = {tp * pp} GPUs, but the "
                f"{len(hosts)} host(s) have {count * len(hosts)}",
            )
        )
    ib = _obj(serving.get("infiniband"))
    if _is_set(ib, "hca") and _coerced(Infiniband, ib, "enabled") is False:
        out.append(
            Problem(
                "serving.infiniband.hca",
                "is set but serving.infiniband.enabled is false; enable InfiniBand or remove hca",
            )
        )
    return out


_SECTIONS = (*CONFIG_KEYS, NAMESPACE)


def _section_order(p: Problem) -> int:
    """Group problems by config section (hosts first, namespaced secrets/keys last)."""
    head = re.split(r"[.\[:]", p.path, maxsplit=1)[0]
    return _SECTIONS.index(head) if head in _SECTIONS else len(_SECTIONS)


def _file_checks(s: Settings, base: Path) -> list[Problem]:
    """Files on the operator machine that later steps read."""

    def resolve(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else base / path

    out = []
    checks: list[tuple[str, str | None, bool]] = [
        (
            "model.config_file",
            s.model.config_path if s.model.config_file or s.model.local_dir else None,
            False,
        ),
        ("model.local_dir", s.model.local_dir if s.model.source == "local" else None, True),
        ("ssh.private_key_file", s.ssh.private_key_file, False),
        ("ssh.known_hosts_file", s.ssh.known_hosts_file, False),
        ("image.tarball", s.image.tarball, False),
        ("docker.deb_dir", s.docker.deb_dir if s.docker.install else None, True),
    ]
    for key, value, is_dir in checks:
        if value is None:
            continue
        path = resolve(value)
        ok = path.is_dir() if is_dir else path.is_file()
        if not ok:
            kind = "directory" if is_dir else "file"
            out.append(Problem(key, f"{kind} {str(path)!r} does not exist on this machine"))
        elif key == "model.config_file":
            out += _json_file_problems(key, path, "the model's config.json")
            index = path.parent / INDEX_FILE
            if s.model.weights_bytes is None and index.is_file():
                out += _json_file_problems(key, index, f"{INDEX_FILE} beside it")
        elif key == "ssh.private_key_file":
            out += _private_key_problems(path)
    return out


# config.json is a few KB, its index a few MB; anything this large is not one of them.
_MAX_JSON_BYTES = 64 * 2**20
# The line of an OpenSSH public key (or of an authorized_keys / known_hosts entry).
_PUBLIC_KEY = re.compile(
    rb"\s*(\S+\s+)?(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+@openssh\.com)\s+AAAA"
)


def _json_file_problems(key: str, path: Path, what: str) -> list[Problem]:
    """The planner reads `path` as UTF-8 JSON: say so here, by key, instead of a traceback."""
    try:
        size = path.stat().st_size
        if size > _MAX_JSON_BYTES:
            return [Problem(key, f"{str(path)!r} is {size:,} bytes, not {what}")]
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        return [Problem(key, f"cannot read {str(path)!r}: {exc.strerror or exc}")]
    except UnicodeDecodeError:
        return [Problem(key, f"{str(path)!r} is not a text file (not UTF-8), not {what}")]
    except json.JSONDecodeError as exc:
        return [Problem(key, f"{str(path)!r} is not valid JSON ({exc}), not {what}")]
    if not isinstance(data, dict):
        return [Problem(key, f"{str(path)!r} holds a JSON {type(data).__name__}, not {what}")]
    return []


def _private_key_problems(path: Path) -> list[Problem]:
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as exc:
        return [Problem("ssh.private_key_file", f"cannot read {str(path)!r}: {exc.strerror}")]
    if _PUBLIC_KEY.match(head):
        return [
            Problem(
                "ssh.private_key_file",
                f"{str(path)!r} holds a public key ('{head.split()[0].decode(errors='replace')} "
                "AAAA...'); give the private key file (for ~/.ssh/id_ed25519.pub that is "
                "~/.ssh/id_ed25519)",
            )
        ]
    return []


def load_settings(
    raw: Mapping[str, Any],
    secrets_present: Mapping[str, bool],
    *,
    base_dir: str | Path | None = None,
    plaintext_secrets: Collection[str] = (),
) -> Settings:
    """Validate the stack config.

    raw: top-level keys without namespace ("hosts", "ssh", "model", "image", "serving",
    "docker") -> plain values (what `pulumi.Config().get_object(key)` returns; None = unset).
    secrets_present: "apiKey" / "sshPrivateKey" / "hubToken" -> whether set (non-empty).
    base_dir: when given, files on this machine (model config, key file, tarball, ...) must
    exist, relative paths resolving against it (the project directory).
    plaintext_secrets: the secret keys ("apiKey", ...) that are set, but in plain text
    rather than as Pulumi secrets (`pulumi config set` without `--secret`); each is refused.
    Raises SettingsError listing every problem."""
    problems: list[Problem] = []
    data: dict[str, Any] = {}
    for key, value in raw.items():
        if key in CONFIG_KEYS:
            if value is not None:
                data[key] = value
            continue
        namespace, sep, rest = key.partition(":")
        if sep and namespace != NAMESPACE:
            problems.append(
                Problem(
                    key,
                    f"unknown namespace {namespace!r}: this program reads {NAMESPACE}:* keys; "
                    f"did you mean {NAMESPACE}:{rest}?",
                )
            )
            continue
        bare = rest if sep else key
        if bare in CONFIG_KEYS:
            data[bare] = value
            continue
        if bare in SECRET_KEYS:
            problems.append(
                Problem(
                    f"{NAMESPACE}:{bare}",
                    "is a secret: it is read with config.get_secret, not as plain config",
                )
            )
            continue
        close = difflib.get_close_matches(bare, CONFIG_KEYS, n=1, cutoff=0.6)
        hint = (
            f"; did you mean {NAMESPACE}:{close[0]}?"
            if close
            else f" (valid keys: {', '.join(CONFIG_KEYS)})"
        )
        problems.append(Problem(f"{NAMESPACE}:{bare}", f"unknown key{hint}"))

    for key in sorted(set(plaintext_secrets) & set(SECRET_KEYS)):
        problems.append(
            Problem(
                f"{NAMESPACE}:{key}",
                "is set in plain text (it would sit unencrypted in Pulumi.<stack>.yaml and "
                "the state); make it a Pulumi secret: `pulumi config rm "
                f"{NAMESPACE}:{key}`, then `pulumi config set --secret {NAMESPACE}:{key} ...`",
            )
        )
    unknown_secrets = (set(secrets_present) | set(plaintext_secrets)) - set(SECRET_KEYS)
    if unknown_secrets:
        raise TypeError(f"secrets_present has unknown keys {sorted(unknown_secrets)}")
    secrets = SecretsPresent(
        api_key=bool(secrets_present.get("apiKey")),
        ssh_private_key=bool(secrets_present.get("sshPrivateKey")),
        hub_token=bool(secrets_present.get("hubToken")),
    )
    data["secrets"] = secrets
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems += _from_pydantic(exc)
    problems += _cross_checks(data, secrets)
    if settings is not None and base_dir is not None:
        problems += _file_checks(settings, Path(base_dir))
    if problems or settings is None:
        raise SettingsError(sorted(problems, key=_section_order))
    return settings
