"""GpuHost: one GPU server, checked, prepared and given the engine image.

Children, in order on the host (independent hosts run in parallel):
  storage (optional) -> docker install (optional) -> preflight -> image load -> RemoteImage.
Every script is rendered by pure functions (components.host_steps); this module only wires.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_docker as docker

from components.commands import ShellCommand
from components.remote_check import RemoteCheck
from components.ssh import SshTarget


@dataclass(frozen=True)
class HostScripts:
    """The rendered host steps for one host (None: step not configured)."""

    preflight: str
    storage: str | None = None
    # Runs on the operator machine: copies .deb files (when installing) and runs the docker
    # step on the host over SSH (install, registry mirrors, docker group).
    docker_install_local: str | None = None
    # Runs on the operator machine: streams the image tarball to the host and loads it,
    # skipped when the host already has the exact image ID.
    image_load_local: str | None = None
    # Runs on the host: pulls the image (registry or mirror) when no tarball is used.
    image_pull: str | None = None
    # Read-only, on every preview and up: fails when the host lost the image (removed by
    # hand, or the host was rebuilt), so the load or pull above runs again.
    image_present: str | None = None


@dataclass(frozen=True)
class GpuHostArgs:
    ssh: SshTarget
    image_name: str
    scripts: HostScripts


class GpuHost(pulumi.ComponentResource):
    """A host that passed preflight and holds the engine image.

    Outputs: `facts` (what preflight saw, as a dict), `image_id`, and `docker_provider`
    (the per-host docker provider the serving containers use).
    """

    facts: pulumi.Output[Any]
    image_id: pulumi.Output[str]
    docker_provider: docker.Provider
    ssh: SshTarget
    # Checked (and storage prepared): what the weights need. `ready` adds the image: what
    # the serving containers need.
    checked: list[pulumi.Resource]
    ready: list[pulumi.Resource]

    def __init__(
        self, name: str, args: GpuHostArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-cluster:index:GpuHost", name, None, opts)
        self.ssh = args.ssh
        child = pulumi.ResourceOptions(parent=self)
        previous: list[pulumi.Resource] = []

        def step(
            role: str,
            script: str,
            on_host: bool = True,
            triggers: list[pulumi.Input[Any]] | None = None,
        ) -> ShellCommand:
            cmd = ShellCommand(
                f"{name}-{role}",
                target=args.ssh.ssh_command() if on_host else [],
                create=script,
                triggers=triggers,
                opts=pulumi.ResourceOptions.merge(
                    child, pulumi.ResourceOptions(depends_on=list(previous))
                ),
            )
            previous[:] = [cmd]
            return cmd

        s = args.scripts
        if s.storage:
            step("storage", s.storage)
        if s.docker_install_local:
            step("docker-install", s.docker_install_local, on_host=False)
        preflight = step("preflight", s.preflight)
        self.facts = preflight.stdout.apply(_last_json_line)
        self.checked = [preflight]

        triggers: list[pulumi.Input[Any]] | None = None
        if s.image_present:
            check = RemoteCheck(
                f"{name}-image-check",
                label=f"{name}:{args.image_name}",
                ssh_argv=args.ssh.ssh_command(),
                script=s.image_present,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[preflight]),
            )
            triggers = [check.generation]
        if s.image_load_local:
            load: pulumi.Resource = step(
                "image-load", s.image_load_local, on_host=False, triggers=triggers
            )
        elif s.image_pull:
            load = step("image-pull", s.image_pull, triggers=triggers)
        else:
            raise ValueError(f"host {name}: neither an image tarball nor a pull is configured")

        self.docker_provider = docker.Provider(
            f"{name}-docker",
            host=args.ssh.docker_host(),
            ssh_opts=args.ssh.docker_ssh_opts(),
            # Lets `pulumi preview` plan hosts it cannot reach yet (a new cluster, or a
            # laptop outside the lab network); operations still fail clearly on `up`.
            disable_docker_daemon_check=True,
            opts=child,
        )
        image = docker.RemoteImage(
            f"{name}-image",
            name=args.image_name,
            # The image was loaded from a tarball (or pulled) above; never delete it on
            # destroy: reloading a multi-GB image is the slowest step of a deployment.
            keep_locally=True,
            opts=pulumi.ResourceOptions(
                parent=self, provider=self.docker_provider, depends_on=[load]
            ),
        )
        self.image_id = image.image_id
        self.ready = [image, load]
        self.register_outputs({"facts": self.facts, "image_id": self.image_id})


def _last_json_line(stdout: str) -> Any:
    """Preflight prints its facts as one JSON line last; anything before it is progress."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    return {}
