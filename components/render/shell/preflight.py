"""Preflight: read-only checks of one GPU host before anything is changed on it.

The script lists *every* problem it finds (not just the first), one per line on stderr as
``preflight <host>: <problem>. Fix: <fix>``, and exits 1. On success it prints the facts it
gathered as one JSON line on stdout (the component exports it). Warnings that do not stop
the deployment are printed as ``preflight <host>: warning: ...``.

Checks (what multi-node vLLM users keep hitting, facts section 6): GPU count/model/memory
and driver, Docker and GPU support in Docker, free disk for the weights, /dev/shm, the NIC
that NCCL/GLOO/Ray will use and that it holds the host's address, the serving and Ray
ports, and the commands later steps need.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ._common import bash_array, check_abs_path, fragment, q, render

GIB = 1024**3
#: Docker label naming the deployment ("<project>/<stack>") that made a serving container.
OWNER_LABEL = "vllm-cluster.stack"


@dataclass(frozen=True)
class GpuExpectation:
    """What the config says the host has (``hosts[].gpus``)."""

    count: int
    model: str
    """Matched as a case-insensitive substring of nvidia-smi's name ("H20" matches
    "NVIDIA H20")."""
    memory_gib: float
    """Per GPU, in GiB as nvidia-smi reports it (MiB / 1024)."""


@dataclass(frozen=True)
class PreflightSpec:
    host: str
    """Host name used in messages (``hosts[].name``)."""
    weights_path: str
    """``model.path``; free disk is measured at its nearest existing parent."""
    gpus: GpuExpectation | None = None
    """None skips the GPU checks (nvidia-smi is still reported when present)."""
    nic: str = "eth0"
    address: str | None = None
    """The configured address; when set it must be one of the NIC's addresses (a DNS name
    is resolved with getent on the host first). None checks only that the NIC exists."""
    multi_node: bool = False
    """Multi-node refuses the loopback NIC (NCCL/GLOO would bind to 127.0.0.1)."""
    needed_bytes: int = 0
    """Bytes the weights still need at weights_path; 0 skips the disk check. Bytes already
    present under weights_path are subtracted (a resumed download needs only the rest)."""
    storage_device: str | None = None
    storage_mount_point: str | None = None
    """When storage will be prepared later and weights_path lies under its mount point but
    it is not mounted yet, the device size is used instead of the root filesystem's space."""
    ipc_host: bool = True
    min_shm_bytes: int = 0
    """With ipc_host the engine uses the host's /dev/shm: fail below this (0: report only).
    Without ipc_host the container gets its own /dev/shm of shm_size, so the host's is only
    reported (and warned about when small)."""
    ports: tuple[int, ...] = ()
    """Ports that must be free: serving port, and the Ray port on the head."""
    own_containers: tuple[str, ...] = ()
    """The serving containers' names. One that exists must be this deployment's own (its
    OWNER_LABEL is ``owner``): it may hold the ports on a re-run. Another stack's, or one
    made by hand, is a problem: it takes the name, and its engine the GPUs."""
    owner: str = ""
    """``<project>/<stack>`` of this deployment; required with own_containers."""
    docker_optional: bool = False
    """True when the docker step will install Docker: a missing Docker is a warning."""
    required_commands: tuple[str, ...] = ()
    """Commands later steps need on this host (python3, rsync, hf, modelscope, ...)."""
    memory_tolerance: float = 0.02
    extra_facts: dict[str, str] = field(default_factory=dict)
    """Constant strings added to the facts JSON (e.g. the host's role)."""


_INSTALL_HINT = {
    "python3": "install python3 (apt-get install python3)",
    "rsync": "install rsync (apt-get install rsync)",
    "hf": "install the Hugging Face CLI (pip install -U huggingface_hub)",
    "huggingface-cli": "install the Hugging Face CLI (pip install -U huggingface_hub)",
    "modelscope": "install the ModelScope CLI (pip install -U modelscope)",
    "ssh-keygen": "install openssh-client",
    "ssh": "install openssh-client",
    "tar": "install tar",
}


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def preflight(spec: PreflightSpec) -> str:
    """Render the preflight script for one host (read-only; safe to run any time)."""
    weights_path = check_abs_path(spec.weights_path, "model.path")
    if spec.needed_bytes < 0 or spec.min_shm_bytes < 0:
        raise ValueError("needed_bytes and min_shm_bytes must be >= 0")
    if not 0 <= spec.memory_tolerance < 1:
        raise ValueError("memory_tolerance must be in [0, 1)")
    for port in spec.ports:
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {port}")
    if spec.own_containers and not spec.owner:
        raise ValueError("own_containers needs owner (<project>/<stack>)")
    mount_point = (
        check_abs_path(spec.storage_mount_point, "storage.mount_point")
        if spec.storage_mount_point
        else ""
    )
    gpus = spec.gpus
    address_is_ip = spec.address is not None and _is_ip(spec.address)
    hints = [_INSTALL_HINT.get(c, f"install {c}") for c in spec.required_commands]
    lines = [
        f"WEIGHTS_PATH={q(weights_path)}",
        f"NEEDED_BYTES={int(spec.needed_bytes)}",
        f"NIC={q(spec.nic)}",
        f"ADDRESS={q(spec.address or '')}",
        f"ADDRESS_IS_IP={1 if address_is_ip else 0}",
        f"MULTI_NODE={1 if spec.multi_node else 0}",
        f"STORAGE_DEVICE={q(spec.storage_device or '')}",
        f"STORAGE_MP={q(mount_point)}",
        f"IPC_HOST={1 if spec.ipc_host else 0}",
        f"MIN_SHM={int(spec.min_shm_bytes)}",
        f"DOCKER_OPTIONAL={1 if spec.docker_optional else 0}",
        f"GPU_CHECK={1 if gpus else 0}",
        f"EXP_COUNT={int(gpus.count) if gpus else 0}",
        f"EXP_MODEL={q(gpus.model if gpus else '')}",
        # Integer MiB and basis points: bash has no floating point.
        f"EXP_MIB={round(gpus.memory_gib * 1024) if gpus else 0}",
        f"EXP_GIB={q(f'{gpus.memory_gib:g}' if gpus else '')}",
        f"TOL_BP={round(spec.memory_tolerance * 10000)}",
        f"TOL_PCT={q(f'{spec.memory_tolerance * 100:g}')}",
        bash_array("PORTS", spec.ports),
        bash_array("OWN_CONTAINERS", spec.own_containers),
        f"OWNER={q(spec.owner)}",
        f"OWNER_LABEL={q(OWNER_LABEL)}",
        bash_array("REQUIRED", spec.required_commands),
        bash_array("REQUIRED_HINT", hints),
        bash_array("EXTRA_KEYS", list(spec.extra_facts)),
        bash_array("EXTRA_VALUES", list(spec.extra_facts.values())),
        fragment("preflight"),
    ]
    return render(spec.host, "preflight", "\n".join(lines))
