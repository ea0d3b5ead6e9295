#!/usr/bin/env python3
"""SIMULATED nvidia-container-runtime-hook for the vllm-cluster lab.

dockerd registers its "nvidia" device driver when an executable of this name is on its PATH,
and then makes `docker run --gpus ...` add it as an OCI prestart hook (args: `prestart`), with
NVIDIA_VISIBLE_DEVICES in the container's environment. The real hook mounts the driver
libraries, device nodes and nvidia-smi into the container. There are no GPUs here, so this
one does what a container can observe of that: it copies the lab's (fake) nvidia-smi and the
host's /etc/lab/gpus.json, narrowed to NVIDIA_VISIBLE_DEVICES, into the container's root
filesystem. Code inside the container can then count its GPUs with `nvidia-smi -L`.

runc passes the OCI state on stdin: {"bundle": DIR, ...}; DIR/config.json names the root
filesystem (root.path, absolute or relative to the bundle) and the process environment. The
hook runs on the host side, so paths inside the container's root are resolved without ever
following a symlink out of it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from typing import Any

NVIDIA_SMI = os.environ.get("LAB_NVIDIA_SMI", "/usr/bin/nvidia-smi")
GPUS_CONFIG = os.environ.get("LAB_GPUS_CONFIG", "/etc/lab/gpus.json")
# Where the container's nvidia-smi reads its configuration (its default path).
CONTAINER_GPUS_CONFIG = "/etc/lab/gpus.json"
_NO_GPUS = ("", "void", "none", "NoDevFiles")


def resolve_in_root(root: str, path: str) -> str:
    """`path` inside the container rooted at `root`, symlinks resolved as the container would
    (an absolute link target restarts at `root`, `..` stops at `root`)."""
    done: list[str] = []
    todo = [p for p in path.split("/") if p]
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks resolving {path} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


def container_env(config: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in config.get("process", {}).get("env", []) or []:
        key, _, value = str(item).partition("=")
        env[key] = value
    return env


def inject(rootfs: str, visible: str) -> None:
    with open(GPUS_CONFIG, encoding="utf-8") as f:
        gpus = json.load(f)
    # The container's own hostname differs from the host's; keep the host's name so UUIDs
    # inside the container match the ones nvidia-smi shows on the host.
    gpus.setdefault("host", socket.gethostname())
    gpus["visible_devices"] = visible
    smi = resolve_in_root(rootfs, "/usr/bin/nvidia-smi")
    os.makedirs(os.path.dirname(smi), exist_ok=True)
    shutil.copyfile(NVIDIA_SMI, smi)
    os.chmod(smi, 0o755)
    cfg = resolve_in_root(rootfs, CONTAINER_GPUS_CONFIG)
    os.makedirs(os.path.dirname(cfg), exist_ok=True)
    with open(cfg, "w", encoding="utf-8") as f:
        json.dump(gpus, f)
        f.write("\n")


def prestart(state: dict[str, Any]) -> None:
    bundle = str(state["bundle"])
    with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    root = str(config["root"]["path"])
    rootfs = root if os.path.isabs(root) else os.path.join(bundle, root)
    visible = container_env(config).get("NVIDIA_VISIBLE_DEVICES")
    if visible is None or visible.strip() in _NO_GPUS:
        return
    inject(rootfs, visible.strip())


def main(argv: list[str]) -> int:
    raw = sys.stdin.read()
    if len(argv) < 2 or argv[1] != "prestart":
        return 0  # poststart/poststop and other calls: nothing to do, as for the real hook
    try:
        prestart(json.loads(raw))
    except (OSError, ValueError, KeyError, TypeError) as e:
        # Like the real hook: a failure here fails the container start, with the reason.
        print(f"nvidia-container-runtime-hook (SIMULATED, vllm-cluster lab): {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
