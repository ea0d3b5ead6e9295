#!/usr/bin/env python3
"""SIMULATED nvidia-container-runtime for the vllm-cluster lab.

On a real GPU server `nvidia-ctk runtime configure --runtime=docker` registers this runtime
as "nvidia" in /etc/docker/daemon.json (so `docker info` lists it), and it is a thin wrapper
around runc: on `create` it adds nvidia-container-runtime-hook as a prestart hook when the
container asks for GPUs with NVIDIA_VISIBLE_DEVICES, then runs runc. This file does the same
(without the GPU device handling, which the fake hook replaces), so both
`docker run --gpus all` and `docker run --runtime nvidia -e NVIDIA_VISIBLE_DEVICES=all` work
in the lab as on a server.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

HOOK = "nvidia-container-runtime-hook"
_NO_GPUS = ("", "void", "none", "NoDevFiles")
# runc global flags that take a value (they come before the command).
_GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}


def command_and_bundle(args: list[str]) -> tuple[str | None, str]:
    command = None
    bundle = os.getcwd()
    i = 0
    while i < len(args):
        arg = args[i]
        if command is None:
            if arg in _GLOBAL_WITH_VALUE:
                i += 2
                continue
            if not arg.startswith("-"):
                command = arg
        elif arg in ("--bundle", "-b") and i + 1 < len(args):
            bundle = args[i + 1]
        elif arg.startswith("--bundle="):
            bundle = arg.split("=", 1)[1]
        i += 1
    return command, bundle


def add_hook(config: dict[str, object], hook_path: str) -> bool:
    """Add the prestart hook when the container asks for GPUs; False when nothing changed."""
    process = config.get("process")
    env = process.get("env", []) if isinstance(process, dict) else []
    visible = None
    for item in env or []:
        key, _, value = str(item).partition("=")
        if key == "NVIDIA_VISIBLE_DEVICES":
            visible = value
    if visible is None or visible.strip() in _NO_GPUS:
        return False
    hooks = config.setdefault("hooks", {})
    if not isinstance(hooks, dict):
        return False
    prestart = hooks.setdefault("prestart", [])
    if any(os.path.basename(str(h.get("path", ""))) == HOOK for h in prestart):
        return False  # docker --gpus already added it
    prestart.append({"path": hook_path, "args": [HOOK, "prestart"]})
    return True


def main(args: list[str]) -> int:
    command, bundle = command_and_bundle(args)
    if command == "create":
        path = os.path.join(bundle, "config.json")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if add_hook(config, shutil.which(HOOK) or f"/usr/bin/{HOOK}"):
            with open(path, "w", encoding="utf-8") as f:
                json.dump(config, f)
    os.execvp("runc", ["runc", *args])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
