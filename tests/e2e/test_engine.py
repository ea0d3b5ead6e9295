"""Proof that the Go-built Pulumi engine works: real CLI, real plugins, real Docker.

Runs ``tests/e2e/engine_program`` through ``pulumi preview`` / ``up`` / a second ``up`` that
must change nothing / ``stack output`` / ``stack export`` / ``destroy``, and checks the effects
with the ``docker`` CLI. The program's parts are chosen per test so that a missing plugin
names itself (see conftest: skip locally, fail under CI).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.pulumi_cli import (
    PulumiCommandError,
    PulumiStack,
    find_binary,
    sdk_plugin_versions,
    temporary_stack,
)

pytestmark = pytest.mark.e2e

PROGRAM = Path(__file__).parent / "engine_program"


def _docker_inspect(docker: str, name: str) -> dict[str, Any] | None:
    """`docker inspect` of a container, or None when it does not exist."""
    proc = subprocess.run(
        [docker, "container", "inspect", name], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    assert isinstance(data, list) and len(data) == 1
    item = data[0]
    assert isinstance(item, dict)
    return item


def _run_lifecycle(stack: PulumiStack, parts: set[str]) -> dict[str, Any]:
    """preview, up, then prove idempotence; returns the outputs after the first up."""
    preview = stack.preview()
    assert "create" in preview.stdout, preview.tail()
    stack.up()
    outputs = stack.outputs()
    # A second run of the same program must change nothing: both preview and up say so.
    stack.preview(expect_no_changes=True)
    stack.up(expect_no_changes=True)
    assert stack.outputs() == outputs
    return outputs


def _check_core(stack: PulumiStack, outputs: dict[str, Any], token: str) -> None:
    # "hello e2e" arrived through `config set --path settings.greeting`.
    assert outputs["shouted"] == "HELLO E2E"
    # The secret output is masked without --show-secrets and real with it.
    assert outputs["token"] == "[secret]"
    assert stack.outputs(show_secrets=True)["token"] == token
    # ... and is encrypted in the state: its plaintext appears nowhere in the export.
    assert token not in json.dumps(stack.export())


CASES: dict[str, tuple[str, ...]] = {
    # The CLI, the language host and the dynamic-provider host: no provider plugin needed.
    "core": (),
    # The provider plugins the program uses: containers and images, and host steps.
    "docker": ("docker",),
    "command": ("command",),
}


@pytest.mark.parametrize("case", list(CASES))
def test_engine_lifecycle(
    case: str,
    toolchain_env: dict[str, str],
    require_plugins: Callable[..., None],
    request: pytest.FixtureRequest,
) -> None:
    plugins = CASES[case]
    require_plugins(*plugins)
    parts = {"core", *plugins}
    token = secrets.token_hex(12)
    config = {"parts": ",".join(sorted(parts))}
    docker = ""
    container_name = ""
    if "docker" in parts:
        docker = request.getfixturevalue("docker_engine")
        container_name = f"vllm-e2e-{case}-{secrets.token_hex(4)}"
        config["image"] = request.getfixturevalue("busybox_image")
        config["containerName"] = container_name
    command_dir = request.getfixturevalue("tmp_path")
    if "command" in parts:
        config["commandDir"] = str(command_dir)

    with temporary_stack(
        PROGRAM,
        prefix=f"engine-{case}",
        config=config,
        secret_config={"token": token},
        path_config={"settings.greeting": "hello e2e"},
        env=toolchain_env,
    ) as stack:
        # A --path value reads back through the same key.
        assert stack.get_config("settings.greeting", path=True) == "hello e2e"
        outputs = _run_lifecycle(stack, parts)
        _check_core(stack, outputs, token)

        if "docker" in parts:
            assert outputs["containerName"] == container_name
            info = _docker_inspect(docker, container_name)
            assert info is not None, f"container {container_name} was not created"
            assert info["Id"] == outputs["containerId"]
            assert info["State"]["Running"] is True
            assert info["Config"]["Labels"]["vllm-cluster.e2e"] == "engine-check"
            assert info["Image"] == outputs["imageId"]
        if "command" in parts:
            # The script ran once (the no-change up did not run it again) and read the
            # secret from stdin, which stays encrypted in the state.
            assert outputs["commandStdout"] == "made"
            assert (command_dir / "created").read_text() == f"{len(token)}\n"

        resources = stack.resources()
        types = {r["type"] for r in resources}
        assert "pulumi-python:dynamic:Resource" in types
        # The engine loaded each provider at the version the installed SDK asks for.
        for name, version in sdk_plugin_versions(plugins).items():
            provider = next(r for r in resources if r["type"] == f"pulumi:providers:{name}")
            assert provider["inputs"]["version"] == version, provider
        if "docker" in parts:
            assert {
                "docker:index/container:Container",
                "docker:index/remoteImage:RemoteImage",
            } <= types
        if "command" in parts:
            assert "command:local:Command" in types

        stack.destroy()
        # Only the stack itself is left in the state; the container is really gone.
        assert [r["type"] for r in stack.resources()] in ([], ["pulumi:pulumi:Stack"])
        if "docker" in parts:
            assert _docker_inspect(docker, container_name) is None
        if "command" in parts:
            assert not (command_dir / "created").exists(), "the delete script did not run"

        timings = {" ".join(r.args[:2]): round(r.duration_s, 1) for r in stack.history}
        request.node.user_properties.append(("pulumi_timings_s", timings))


def test_toolchain_runs_the_upstream_plugins(
    toolchain_env: dict[str, str], require_plugins: Callable[..., None]
) -> None:
    """`pulumi about` in a project lists the upstream language host and both providers by
    version, and nothing is picked up from $PATH (the engine would warn)."""
    require_plugins("command", "docker")
    pulumi = find_binary("pulumi", toolchain_env)
    assert pulumi is not None
    for name in ("pulumi-resource-command", "pulumi-resource-docker"):
        assert find_binary(name, toolchain_env) is None, f"{name} must stay off $PATH"
    with temporary_stack(
        PROGRAM, prefix="engine-about", secret_config={"token": "unused"}, env=toolchain_env
    ) as stack:
        about = subprocess.run(
            [str(pulumi), "about", "--stack", stack.name],
            cwd=PROGRAM,
            env=toolchain_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    listed = about.stdout
    rows = {tuple(line.split()[:3]) for line in listed.splitlines() if line.strip()}
    assert ("language", "python", "3.259.0") in rows, listed
    assert ("resource", "command", "1.2.1") in rows, listed
    assert ("resource", "docker", "5.1.0") in rows, listed
    assert "from $PATH" not in listed + about.stderr


def test_failed_update_raises_with_pulumi_output(toolchain_env: dict[str, str]) -> None:
    """A failing `pulumi up` raises with Pulumi's own message, and the stack is still removed."""
    with (
        pytest.raises(PulumiCommandError) as failure,
        temporary_stack(
            PROGRAM,
            prefix="engine-fail",
            # The docker part needs engine-check:image, which is not set.
            config={"parts": "core,docker"},
            secret_config={"token": "unused"},
            env=toolchain_env,
        ) as stack,
    ):
        stack.up()
    message = str(failure.value)
    assert "engine-check:image" in message, message
    assert failure.value.result.returncode != 0
    listed = subprocess.run(
        [str(find_binary("pulumi", toolchain_env)), "stack", "ls", "--json"],
        cwd=PROGRAM,
        env=toolchain_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert stack.name not in listed.stdout
