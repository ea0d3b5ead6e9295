"""Throwaway stacks of this project on the lab, derived from Pulumi.lab.yaml.

The stack's config file is Pulumi.lab.yaml with overrides applied (the encrypted lab API
key and its salt come along: same lab-only passphrase), so every e2e test deploys exactly
what `make demo` deploys, changed only where the test says.
"""

from __future__ import annotations

import copy
import fcntl
import os
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.e2e.pulumi_cli import (
    PulumiStack,
    find_binary,
    list_stacks,
    pulumi_env,
    temporary_stack,
)
from tests.lab.labutil import LAB_DIR, read_inventory

REPO = Path(__file__).resolve().parents[2]
NS = "vllm-cluster"
LAB_BUSY_WAIT_S = float(os.environ.get("LAB_BUSY_WAIT_S", "1800"))
# `make demo`'s stack (tools/demo.sh): it stays deployed, serving on lab hosts 1..2.
DEMO_STACK = "lab"


def inventory_paths() -> dict[str, dict[str, str]]:
    """The operator-side files of the running lab (its inventory), which Pulumi.lab.yaml
    names relative to the project: the same files unless LAB_DIR points elsewhere."""
    inventory = read_inventory()
    if inventory is None:
        return {}
    engine = inventory.get("engine_image") or {}
    paths: dict[str, dict[str, str]] = {
        "ssh": {
            "private_key_file": inventory["ssh_private_key"],
            "known_hosts_file": inventory["known_hosts"],
        }
    }
    if inventory.get("model_dir"):
        paths["model"] = {"local_dir": inventory["model_dir"]}
    if engine.get("tarball"):
        paths["image"] = {"tarball": engine["tarball"]}
    return paths


def lab_config(overrides: Mapping[str, Any] | None = None, hosts: int = 2) -> dict[str, Any]:
    """Pulumi.lab.yaml's document with `hosts` cut to the first N, the running lab's files
    (inventory_paths) and then `overrides` merged into the named top-level keys (dicts merge
    one level deep; other values replace)."""
    doc = yaml.safe_load((REPO / "Pulumi.lab.yaml").read_text())
    config = doc["config"]
    config[f"{NS}:hosts"] = config[f"{NS}:hosts"][:hosts]
    for key, value in inventory_paths().items():
        config[f"{NS}:{key}"] = {**config[f"{NS}:{key}"], **value}
    for key, value in (overrides or {}).items():
        full = f"{NS}:{key}"
        if isinstance(value, dict) and isinstance(config.get(full), dict):
            merged = copy.deepcopy(config[full])
            merged.update(value)
            config[full] = merged
        else:
            config[full] = value
    return dict(doc)


def write_stack_config(stack: PulumiStack, doc: Mapping[str, Any]) -> None:
    path = REPO / f"Pulumi.{stack.name}.yaml"
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))


@contextmanager
def lab_serving_lock(wait_s: float = LAB_BUSY_WAIT_S) -> Iterator[None]:
    """An advisory lock on serving in the lab ($LAB_DIR/serving.lock, flock), held for a
    stack's whole life: two stacks serving on the same host and port would answer each
    other's readiness checks or remove each other's containers (seen when tests and
    benchmarks shared the lab)."""
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    with open(LAB_DIR / "serving.lock", "w") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    msg = f"{LAB_DIR / 'serving.lock'} stayed locked {wait_s:.0f} s"
                    raise TimeoutError(msg) from None
                time.sleep(5)
        try:
            release_demo_stack()
            remove_leftover_serving()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def release_demo_stack() -> None:
    """Destroy `make demo`'s deployment when one is up. It serves on the lab without the
    lock (it is meant to stay up), under the container names every lab stack uses, so a
    test, the real-engine run or the benchmark would collide with it. Only its resources go:
    its config and history stay, weights are kept, and `make demo` brings it back."""
    env = pulumi_env()
    pulumi = find_binary("pulumi", env)
    if pulumi is None:
        return  # no CLI, no demo deployment (the callers report the missing CLI)
    demo = [s for s in list_stacks(REPO, env, pulumi) if s.get("name") == DEMO_STACK]
    if not demo or not demo[0].get("resourceCount"):
        return
    print(f"\nlab: destroying the `{DEMO_STACK}` stack of `make demo` to serve on the lab")
    PulumiStack(REPO, DEMO_STACK, env=env, pulumi=pulumi).destroy()


def remove_leftover_serving() -> None:
    """Remove serving containers that no stack owns any more from the lab hosts, with a
    warning naming the stack that left them. Under the lock no stack serves, and the demo's
    was just destroyed: anything left is a leak (a stack whose destroy failed, or a run that
    was killed). Left in place it would hold the ports, and every later stack's preflight
    would refuse the host, failing tests that have nothing to do with the leak."""
    inventory = read_inventory()
    for host in (inventory or {}).get("hosts", []):
        listed = subprocess.run(
            ["docker", "exec", host["container"], "docker", "ps", "-a",
             "--filter", "label=managed-by=vllm-cluster",
             "--format", '{{.Names}}\t{{.Label "vllm-cluster.stack"}}'],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        for line in listed.stdout.splitlines():
            name, _, owner = line.partition("\t")
            warnings.warn(
                f"lab: removing {name} left on {host['name']} by stack {owner or '(unknown)'}",
                stacklevel=2,
            )
            subprocess.run(
                ["docker", "exec", host["container"], "docker", "rm", "-f", name],
                capture_output=True, check=True,
            )  # fmt: skip


@contextmanager
def lab_stack(
    prefix: str, overrides: Mapping[str, Any] | None = None, hosts: int = 2
) -> Iterator[PulumiStack]:
    """A throwaway stack of this project on the lab, under the serving lock."""
    with lab_serving_lock(), temporary_stack(REPO, prefix=prefix) as stack:
        write_stack_config(stack, lab_config(overrides, hosts))
        yield stack


def host_exec(host: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside a lab host (the outer container) as root."""
    return subprocess.run(
        ["docker", "exec", f"vllm-lab-{host}", *argv], capture_output=True, text=True, check=check
    )


def containers_on(host: str) -> list[str]:
    out = host_exec(host, "docker", "ps", "-a", "--format", "{{.Names}}").stdout
    return sorted(out.split())


def chat(endpoint: str, api_key: str | None, model: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return requests.post(
        f"{endpoint}/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        headers=headers,
        timeout=60,
    )
