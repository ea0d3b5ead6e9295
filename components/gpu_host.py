"""GpuHost: one GPU server, checked, prepared and given the engine image.

Children, in order on the host (independent hosts run in parallel):
  preflight (read-only) -> storage (optional) -> .deb copy + docker setup (optional) -> image
  load or pull -> image fit check (optional: can the image do what the settings ask) ->
  RemoteImage.
Every script is rendered by pure functions (components.render); this module only wires.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_docker as docker
from pulumi_command import local, remote

from components.render.deployment import HostScripts
from components.render.ssh import SshTarget
from components.resources.remote_check import RemoteCheck, drift_checks
from components.resources.steps import HostConnection, local_step, remote_step


@dataclass(frozen=True)
class GpuHostArgs:
    # pulumi-command's connection (host steps) and the OpenSSH view of the same host (the
    # docker provider, the drift checks and the operator-side copies use OpenSSH).
    connection: HostConnection
    ssh: SshTarget
    image_name: str
    scripts: HostScripts
    # Read-only: exits 0 when the model weights on this host are complete. The host's drift
    # checks run it beside the image's (one SSH round trip per host on every preview/up).
    weights_verify: str | None = None


class GpuHost(pulumi.ComponentResource):
    """A host that passed preflight and holds the engine image.

    Outputs: `facts` (what preflight saw, as a dict), `image_id`, and `docker_provider`
    (the per-host docker provider the serving containers use).
    """

    facts: pulumi.Output[Any]
    image_id: pulumi.Output[str]
    docker_provider: docker.Provider
    ssh: SshTarget
    connection: HostConnection
    # Checked (and storage prepared): what the weights need. `ready` adds the image: what
    # the serving containers need.
    checked: list[pulumi.Resource]
    ready: list[pulumi.Resource]
    # Every read-only drift check script of this host, by part ("image", "weights").
    drift_checks: dict[str, str]

    def __init__(
        self, name: str, args: GpuHostArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-cluster:index:GpuHost", name, None, opts)
        self.ssh = args.ssh
        self.connection = args.connection
        child = pulumi.ResourceOptions(parent=self)
        previous: list[pulumi.Resource] = []

        def after_previous() -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=list(previous))

        def on_host(role: str, script: str, triggers: list[Any] | None = None) -> remote.Command:
            cmd = remote_step(
                f"{name}-{role}",
                args.connection,
                script,
                triggers=triggers,
                opts=after_previous(),
            )
            previous[:] = [cmd]
            return cmd

        def from_here(role: str, script: str, triggers: list[Any] | None = None) -> local.Command:
            # The host's pinned key is part of the step (a comment line): a reinstalled server
            # (new host key) gets these operator-side steps again, as it gets the host steps
            # (their connection changes). Without it the .deb copy never re-ran on a reimaged
            # host, and the Docker step then failed with dockerd missing.
            pinned = f"# {name}: host key {args.connection.host_key}\n"
            cmd = local_step(
                f"{name}-{role}", pinned + script, triggers=triggers, opts=after_previous()
            )
            previous[:] = [cmd]
            return cmd

        s = args.scripts
        # Preflight is read-only and comes first: nothing is written to a host (no disk
        # formatted, no package installed) before it passed. It judges the disk against the
        # device storage will mount, and tolerates a Docker the next steps install.
        preflight = on_host("preflight", s.preflight)
        self.facts = preflight.stdout.apply(_last_json_line)
        if s.storage:
            on_host("storage", s.storage)
        if s.deb_copy_local:
            from_here("deb-copy", s.deb_copy_local)
        if s.docker_setup:
            on_host("docker-install", s.docker_setup)
        # Checked, its storage mounted and Docker installed: what the weights need.
        self.checked = list(previous)

        # Every drift check of this host carries all of its scripts: the first one asked runs
        # them all in one SSH round trip (components/resources/remote_check.py).
        self.drift_checks = drift_checks(s.image_present, args.weights_verify)
        triggers: list[Any] | None = None
        if s.image_present:
            check = RemoteCheck(
                f"{name}-image-check",
                label=f"{name}:{args.image_name}",
                ssh_argv=args.ssh.ssh_command(),
                checks=self.drift_checks,
                part="image",
                opts=pulumi.ResourceOptions(parent=self, depends_on=list(previous)),
            )
            triggers = [check.generation]
        if s.image_load_local:
            load: pulumi.CustomResource = from_here(
                "image-load", s.image_load_local, triggers=triggers
            )
        elif s.image_pull:
            load = on_host("image-pull", s.image_pull, triggers=triggers)
        else:
            raise ValueError(f"host {name}: neither an image tarball nor a pull is configured")
        fit = on_host("image-fit", s.image_fit, triggers=[load.id]) if s.image_fit else None

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
        self.ready = [image, load, *([fit] if fit else [])]
        self.register_outputs({"facts": self.facts, "image_id": self.image_id})


def _last_json_line(stdout: str) -> Any:
    """Preflight prints its facts as one JSON line last; anything before it is progress."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    return {}
