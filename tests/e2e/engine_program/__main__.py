"""Engine check: the smallest program that touches every piece of the toolchain.

Parts (config ``engine-check:parts``):

- ``core``: a dynamic-provider resource (language host + ``pulumi-resource-pulumi-python``),
  plain, ``--path`` and secret configuration, and outputs.
- ``docker``: a ``pulumi_docker.RemoteImage`` of a locally imported image and a
  ``pulumi_docker.Container`` on this machine's Docker engine (``pulumi-resource-docker``).
- ``parallel``: ``engine-check:parallel`` independent dynamic resources whose create sleeps
  and records its start and end under ``engine-check:parallelDir``, so a test can count how
  many the dynamic-provider host served at once.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider

config = pulumi.Config()
parts = {p.strip() for p in (config.get("parts") or "core").split(",") if p.strip()}
unknown = parts - {"core", "docker", "parallel"}
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


if "parallel" in parts:
    # Imported from a module, not defined here: dill pickles its provider by reference, as
    # it does the program's components.commands providers, so the provider host must be
    # able to import it from the project directory.
    from nap import Nap

    for i in range(config.require_int("parallel")):
        Nap(f"nap-{i}", config.require("parallelDir"), 3.0)
