"""`labctl.ensure_container`, the one declarative "run this container" of the lab.

Every lab container (GPU hosts, bare hosts, the hub) goes through it, so `lab up` twice
changes nothing, a stopped host comes back with its filesystem, and a changed configuration
recreates the container. Run here against the real Docker engine with a throwaway container
from the lab host image (the `lab` fixture guarantees it is built).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import uuid
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.lab import labutil as lu


def _labctl() -> ModuleType:
    path = lu.REPO_ROOT / "lab" / "host" / "labctl.py"
    spec = importlib.util.spec_from_file_location("labctl_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def container(lab: lu.Inventory) -> Iterator[tuple[str, list[str]]]:
    image = lu.docker_outer(
        "inspect", "-f", "{{.Config.Image}}", lab["hosts"][0]["container"]
    ).strip()
    name = f"labtest-ensure-container-{uuid.uuid4().hex[:8]}"
    # --init: sleep as PID 1 would ignore SIGTERM, and every recreate would wait out the
    # 30 s stop timeout.
    args = ["--detach", "--init", f"--name={name}", "--entrypoint=sleep", image, "infinity"]
    yield name, args
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def _id(name: str) -> str:
    return lu.docker_outer("inspect", "-f", "{{.Id}}", name).strip()


def test_ensure_container_starts_keeps_restarts_and_recreates(
    container: tuple[str, list[str]],
) -> None:
    lc = _labctl()
    name, args = container
    assert lc.ensure_container(name, args, {"inputs": 1}) == "started"
    first = _id(name)
    assert lc.ensure_container(name, args, {"inputs": 1}) == "running"
    assert _id(name) == first, "an unchanged container was replaced"

    lu.docker_outer("stop", "-t", "1", name)
    assert lc.ensure_container(name, args, {"inputs": 1}) == "restarted"
    assert _id(name) == first, "a stopped container was replaced instead of started"
    assert lu.docker_outer("inspect", "-f", "{{.State.Running}}", name).strip() == "true"

    assert lc.ensure_container(name, args, {"inputs": 2}) == "recreated"
    second = _id(name)
    assert second != first, "changed inputs did not recreate the container"
    assert lc.ensure_container(name, [*args[:-1], "999999"], {"inputs": 2}) == "recreated"
    assert _id(name) != second, "changed run arguments did not recreate the container"
