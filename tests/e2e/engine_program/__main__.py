"""Engine check: the smallest program that touches every piece of the toolchain.

Parts (config ``engine-check:parts``):

- ``core``: a dynamic-provider resource (language host + ``pulumi-resource-pulumi-python``),
  plain, ``--path`` and secret configuration, and outputs.
- ``docker``: a ``pulumi_docker.RemoteImage`` of a locally imported image and a
  ``pulumi_docker.Container`` on this machine's Docker engine (``pulumi-resource-docker``).
- ``command``: a ``pulumi_command.local.Command`` (``pulumi-resource-command``) whose script
  reads a secret on stdin and writes under ``engine-check:commandDir``, with a delete script,
  so a test sees create, no-op and delete happen for real.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider

config = pulumi.Config()
parts = {p.strip() for p in (config.get("parts") or "core").split(",") if p.strip()}
unknown = parts - {"core", "docker", "command"}
if unknown:
    raise ValueError(f"engine-check:parts has unknown part(s) {sorted(unknown)}")


class _ShoutProvider(ResourceProvider):
    """Upper-cases its input: pure, so a second `up` must report no change."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        text = str(props["text"])
        return CreateResult(id_=f"shout-{len(text)}", outs={"text": text, "shouted": text.upper()})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = olds.get("text") != news.get("text")
        return DiffResult(changes=changed, replaces=["text"] if changed else [])


class Shout(Resource):
    """A dynamic resource whose ``shouted`` output is its ``text`` input in capitals."""

    shouted: pulumi.Output[str]

    def __init__(self, name: str, text: pulumi.Input[str]) -> None:
        super().__init__(_ShoutProvider(), name, {"text": text, "shouted": None})


if "core" in parts:
    settings = config.get_object("settings") or {}
    greeting = str(settings.get("greeting", "hello"))
    shout = Shout("shout", greeting)
    pulumi.export("shouted", shout.shouted)
    # Must stay a secret in the state and in `stack output` without --show-secrets.
    pulumi.export("token", config.require_secret("token"))

if "docker" in parts:
    import pulumi_docker as docker

    image = docker.RemoteImage(
        "image",
        name=config.require("image"),
        # The image was made locally with `docker import`: never pull, never delete it.
        keep_locally=True,
    )
    container = docker.Container(
        "box",
        name=config.require("containerName"),
        image=image.image_id,
        command=["/bin/sleep", "86400"],
        must_run=True,
        restart="no",
        labels=[docker.ContainerLabelArgs(label="vllm-cluster.e2e", value="engine-check")],
    )
    pulumi.export("containerId", container.id)
    pulumi.export("containerName", container.name)
    pulumi.export("imageId", image.image_id)


if "command" in parts:
    from pulumi_command import local

    marker = f"{config.require('commandDir')}/created"
    step = local.Command(
        "step",
        create=f'set -euo pipefail; secret=$(cat); echo "${{#secret}}" > {marker}; echo made',
        delete=f"rm {marker}",
        stdin=config.require_secret("token"),
        interpreter=["/bin/bash", "-c"],
        add_previous_output_in_env=False,
    )
    pulumi.export("commandStdout", step.stdout)
