"""Proof that the Go-built Pulumi engine works: real CLI, real plugins, real Docker.

Runs ``tests/e2e/engine_program`` through ``pulumi preview`` / ``up`` / a second ``up`` that
must change nothing / ``stack output`` / ``stack export`` / ``destroy``, and checks the effects
with the ``docker`` CLI. The program's parts are chosen per test so that a missing plugin
names itself (see conftest: skip locally, fail under CI).
"""

from __future__ import annotations

import inspect
import json
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.pulumi_cli import PulumiCommandError, PulumiStack, find_binary, temporary_stack

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


def _sdk_plugin_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The provider version each installed Python SDK requests (its pulumi-plugin.json)."""
    versions = {}
    for name in names:
        module = __import__(f"pulumi_{name}")
        plugin_json = Path(module.__file__ or "").parent / "pulumi-plugin.json"
        versions[name] = str(json.loads(plugin_json.read_text())["version"])
    return versions


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
    # The provider plugin the program uses (host commands are dynamic-provider resources).
    "docker": ("docker",),
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

        resources = stack.resources()
        types = {r["type"] for r in resources}
        assert "pulumi-python:dynamic:Resource" in types
        # The engine loaded each provider at the version the installed SDK asks for.
        for name, version in _sdk_plugin_versions(plugins).items():
            provider = next(r for r in resources if r["type"] == f"pulumi:providers:{name}")
            assert provider["inputs"]["version"] == version, provider
        if "docker" in parts:
            assert set(SDK_RESOURCES) & types == {
                "docker:index/container:Container",
                "docker:index/remoteImage:RemoteImage",
            }

        stack.destroy()
        # Only the stack itself is left in the state; the container is really gone.
        assert [r["type"] for r in stack.resources()] in ([], ["pulumi:pulumi:Stack"])
        if "docker" in parts:
            assert _docker_inspect(docker, container_name) is None

        timings = {" ".join(r.args[:2]): round(r.duration_s, 1) for r in stack.history}
        request.node.user_properties.append(("pulumi_timings_s", timings))


# ---------------------------------------------------------------------------------------
# The docker provider is bridged by tools/build-toolchain.sh from the same Terraform
# provider pulumi-docker uses. These resources must look exactly like the pulumi-docker SDK
# in requirements.txt expects: same tokens, same property names, same list-ness.
SDK_RESOURCES = {
    "docker:index/container:Container": "Container",
    "docker:index/remoteImage:RemoteImage": "RemoteImage",
    "docker:index/network:Network": "Network",
    "docker:index/volume:Volume": "Volume",
}


def _sdk_properties(cls: type) -> dict[str, bool]:
    """Pulumi property names of an SDK class -> whether the SDK types it as a list."""
    props: dict[str, bool] = {}
    for _, member in inspect.getmembers(cls, lambda m: isinstance(m, property)):
        name = getattr(member.fget, "_pulumi_name", None)
        if name is None:
            continue
        annotation = str(getattr(member.fget, "__annotations__", {}).get("return", ""))
        props[name] = "Sequence[" in annotation
    return props


def _schema_properties(spec: dict[str, Any]) -> dict[str, bool]:
    return {name: prop.get("type") == "array" for name, prop in (spec or {}).items()}


def test_docker_provider_matches_sdk(
    toolchain_env: dict[str, str], require_plugins: Callable[..., None]
) -> None:
    require_plugins("docker")
    import pulumi_docker

    binary = find_binary("pulumi-resource-docker", toolchain_env)
    assert binary is not None
    proc = subprocess.run(
        [str(binary), "--emit-schema"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    schema = json.loads(proc.stdout)

    expected_version = json.loads(
        (Path(pulumi_docker.__file__).parent / "pulumi-plugin.json").read_text()
    )["version"]
    assert schema["version"] == expected_version

    for token, class_name in SDK_RESOURCES.items():
        assert token in schema["resources"], f"{token} missing from the provider"
        resource = schema["resources"][token]
        args_cls = getattr(pulumi_docker, f"{class_name}Args")
        inputs = _schema_properties(resource.get("inputProperties"))
        assert inputs == _sdk_properties(args_cls), token
        outputs = _schema_properties(resource.get("properties"))
        sdk_outputs = _sdk_properties(getattr(pulumi_docker, class_name))
        assert outputs == sdk_outputs, token

    provider_inputs = _schema_properties(schema["provider"].get("inputProperties"))
    assert provider_inputs == _sdk_properties(pulumi_docker.ProviderArgs)

    # Nested input types (ContainerLabel, ContainerPort, ...): same fields as the SDK's
    # <Name>Args classes. Function result and provider-config types have other class names.
    checked = 0
    for token, spec in schema["types"].items():
        args_cls = getattr(pulumi_docker, token.rsplit(":", 1)[-1] + "Args", None)
        if args_cls is None:
            continue
        checked += 1
        assert _schema_properties(spec.get("properties")) == _sdk_properties(args_cls), token
    assert checked >= 70, f"only {checked} nested types matched SDK classes"


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


def test_dynamic_provider_serves_more_than_four_calls_at_once(
    toolchain_env: dict[str, str], tmp_path: Path
) -> None:
    """The SDK's dynamic-provider host serves 4 calls at a time; the toolchain's
    (tools/toolchain/dynamic_provider.py) serves more, so host steps of more than 4 hosts run
    together instead of in batches of 4."""
    count = 8
    with temporary_stack(
        PROGRAM,
        prefix="engine-parallel",
        config={"parts": "parallel", "parallel": str(count), "parallelDir": str(tmp_path)},
        env=toolchain_env,
    ) as stack:
        stack.up()
    spans = [tuple(map(float, f.read_text().split())) for f in tmp_path.iterdir()]
    assert len(spans) == count
    # Most creates running at one instant: with 4 threads it would be 4.
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == count, f"at most {most} of {count} dynamic creates ran at once: {spans}"
