"""Upgrading a lab stack deployed by the previous release, with `pulumi up` of this one.

The previous release (tests/e2e/previous_release.py) ran its host steps as its own dynamic
resources and its docker provider was its own bridge (5.2.0). This release runs them as
pulumi-command resources and upstream pulumi-docker 5.1.0. A user who upgrades runs
`pulumi up` on the stack they have: serving must not stop (the very same containers keep
running), weights must stay where they are, and the next `up` must be a no-op. Real CLI,
real SSH, real Docker; the GPUs and the engine are simulated (lab fixtures).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.lab_stack import (
    REPO,
    chat,
    containers_on,
    host_exec,
    lab_config,
    lab_serving_lock,
)
from tests.e2e.previous_release import PREVIOUS_DOCKER_VERSION, previous_release
from tests.e2e.pulumi_cli import (
    PulumiStack,
    find_binary,
    list_stacks,
    pulumi_env,
    unique_stack_name,
)

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

MODEL_PATH = "/data/models/tiny-llama"
HOSTS = ("1", "2")


def container_ids() -> dict[str, str]:
    ids = {}
    for h in HOSTS:
        listed = host_exec(h, "docker", "ps", "-a", "--no-trunc", "--format", "{{.Names}} {{.ID}}")
        for line in listed.stdout.splitlines():
            name, cid = line.split()
            ids[f"lab-{h}/{name}"] = cid
    return ids


def weights_state() -> dict[str, str]:
    """Inode and mtime of every weight file: a re-copy would change them."""
    state = {}
    for h in HOSTS:
        stat = host_exec(h, "bash", "-c", f"stat -c '%n %i %Y' {MODEL_PATH}/*").stdout
        for line in stat.splitlines():
            name, inode, mtime = line.split()
            state[f"lab-{h}:{name}"] = f"{inode}/{mtime}"
    return state


def register(pulumi: Path, env: dict[str, str], name: str, version: str, binary: Path) -> None:
    subprocess.run(
        [str(pulumi), "plugin", "install", "resource", name, version, "--file", str(binary)],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture
def upgrade_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A PULUMI_HOME with both releases' providers: the previous release's docker 5.2.0 and
    this release's command 1.2.1 and docker 5.1.0 (as `make toolchain` registered them)."""
    base = pulumi_env()
    pulumi = find_binary("pulumi", base)
    assert pulumi is not None, "make toolchain"
    home = tmp_path / "pulumi-home"
    env = {**base, "PULUMI_HOME": str(home)}
    ours = Path(base["PULUMI_HOME"]) / "plugins"
    for name, version in (("command", "1.2.1"), ("docker", "5.1.0")):
        binary = ours / f"resource-{name}-v{version}" / f"pulumi-resource-{name}"
        assert binary.is_file(), f"{binary}: run make toolchain"
        register(pulumi, env, name, version, binary)
    yield env


@contextmanager
def previous_release_stack(
    upgrade_env: dict[str, str],
) -> Iterator[PulumiStack]:
    """A lab stack deployed by the previous release and serving; yields it as a stack of
    this release's project (same backend, same name, same config).
    Whatever the test leaves is destroyed by this release and removed."""
    old = previous_release(pulumi_env())
    pulumi = find_binary("pulumi", upgrade_env)
    assert pulumi is not None
    register(pulumi, upgrade_env, "docker", PREVIOUS_DOCKER_VERSION, old.docker_provider)
    name = unique_stack_name("e2e-upgrade")
    before = PulumiStack(old.root, name, env=upgrade_env, pulumi=pulumi)
    after = PulumiStack(REPO, name, env=upgrade_env, pulumi=pulumi)
    # The stack's config as it was, and as the upgrade notes say to change it: the previous
    # release served several nodes through Ray only; this one defaults to vLLM's own
    # launcher, so a multi-node stack keeps Ray (and its running containers) by saying so.
    configs = {
        old.root / f"Pulumi.{name}.yaml": lab_config(),
        REPO / f"Pulumi.{name}.yaml": lab_config({"serving": {"distributed_backend": "ray"}}),
    }
    with lab_serving_lock():
        before.run("stack", "init")
        try:
            for path, doc in configs.items():
                path.write_text(yaml.safe_dump(doc, sort_keys=False))
            deployed = before.up()
            print(f"\nprevious release: up {deployed.duration_s:.1f} s")
            out = before.outputs(show_secrets=True)
            assert chat(out["endpoint"], out["api_key"], out["served_model_name"]).ok
            types = {r["type"] for r in before.resources()}
            assert "command:remote:Command" not in types  # really the previous release
            assert sorted(container_ids()) == ["lab-1/vllm-ray-head", "lab-2/vllm-ray-worker"]
            yield after
        finally:
            if any(s.get("name") == name for s in list_stacks(REPO, upgrade_env, pulumi)):
                after.destroy(check=False)
                after.remove(check=False)
            for path in configs:
                path.unlink(missing_ok=True)


def test_previous_release_stack_upgrades_in_place(lab: Any, upgrade_env: dict[str, str]) -> None:
    with previous_release_stack(upgrade_env) as stack:
        running = container_ids()
        weights = weights_state()
        # Refresh first, as a careful operator might: the old steps' providers still load.
        stack.refresh()
        upgraded = stack.up()
        print(f"this release's up over it: {upgraded.duration_s:.1f} s")
        kinds = {r["urn"].split("::")[-1]: r["type"] for r in stack.resources()}
        assert kinds["lab-1-preflight"] == "command:remote:Command"
        assert kinds["lab-1-image-load"] == "command:local:Command"
        assert kinds["weights-lab-2-fetch"] == "command:local:Command"
        assert kinds["serving-ready"] == "command:remote:Command"
        dynamic = sorted(n for n, t in kinds.items() if t == "pulumi-python:dynamic:Resource")
        assert dynamic == [
            "drift-prefetch",
            "lab-1-image-check",
            "lab-2-image-check",
            "serving-ray-token",
            "weights-lab-1-check",
            "weights-lab-2-check",
        ]
        versions = {
            r["inputs"].get("version")
            for r in stack.resources()
            if r["type"] == "pulumi:providers:docker"
        }
        assert versions == {"5.1.0"}
        # The same weight files. The Ray containers are replaced once, and only once: Ray's
        # token authentication (new in this release) starts with the cluster.
        replaced = container_ids()
        assert sorted(replaced) == sorted(running), upgraded.output[-4000:]
        assert all(replaced[name] != running[name] for name in running), (running, replaced)
        assert weights_state() == weights
        out = stack.outputs(show_secrets=True)
        ok = chat(out["endpoint"], out["api_key"], out["served_model_name"])
        assert ok.status_code == 200, ok.text
        # Converged: the next preview and up change nothing.
        stack.preview(expect_no_changes=True)
        stack.up(expect_no_changes=True)
        stack.destroy()
        assert containers_on("1") == [] and containers_on("2") == []
        assert weights_state() == weights  # kept on destroy (model.keep_on_destroy default)


def test_previous_release_stack_destroyed_before_upgrading(
    lab: Any, upgrade_env: dict[str, str]
) -> None:
    """`pulumi destroy` with this release on a stack it never updated: the old steps are
    forgotten through their retired provider, serving goes, the weights stay."""
    with previous_release_stack(upgrade_env) as stack:
        weights = weights_state()
        stack.destroy()
        assert containers_on("1") == [] and containers_on("2") == []
        assert weights_state() == weights
        assert [r["type"] for r in stack.resources()] in ([], ["pulumi:pulumi:Stack"])
