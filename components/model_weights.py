"""ModelWeights: identical weights at the identical absolute path on every serving node.

Per host: a RemoteCheck (re-verifies the weights on every preview/up, so a file removed by
hand is noticed) and a fetch command that runs when the host is new, when the fetch recipe
changes, or when the check failed. With fan-out the head fetches first (from the hub or the
operator machine) and the other hosts copy from the head over the LAN.
Weights are kept on `pulumi destroy` unless `model.keep_on_destroy` is false. What happens
to them is one `<name>-<host>-remove` step per host in `hosts` (serving or not), declared
whatever keep_on_destroy says and never replaced: pulumi-command runs it only when it leaves
the program (the stack is destroyed, or the host is removed from `hosts`), and then it runs
the delete script stored at the last `pulumi up`, which removes only the files this stack
recorded as written by itself (components/render/shell/weights.py). Toggling
keep_on_destroy, or a plan that serves on fewer hosts, only updates it: nothing is deleted.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import pulumi

from components.gpu_host import GpuHost
from components.render.ssh import SshTarget
from components.resources.remote_check import RemoteCheck
from components.resources.steps import (
    HostConnection,
    local_step,
    remote_on_destroy,
    remote_step,
)


@dataclass(frozen=True)
class WeightsTarget:
    """The weights steps of one host, rendered (components.host_steps)."""

    name: str
    host: GpuHost
    # pulumi-command's connection (steps on the host) and OpenSSH's (the drift check and
    # the operator-side copy).
    connection: HostConnection
    ssh: SshTarget
    # Read-only: exits 0 when the weights at the path are complete.
    verify_script: str
    # Exactly one of these fetches the weights: run on the operator machine (rsync push)...
    fetch_local: str | None = None
    # ...or on the host (hub download, or a copy from the head over the LAN).
    fetch_remote: str | None = None
    fetch_stdin: pulumi.Input[str] | None = None
    # Fan-out: this host copies from the head, so it waits for the head's copy.
    after_head: bool = False
    # A hub download that may run the engine image's client waits for the image step.
    after_image: bool = False


@dataclass(frozen=True)
class WeightsOnDestroy:
    """One host's weights on destroy (components.render.deployment.WeightsRetention)."""

    name: str
    connection: HostConnection
    # Removes the files this stack wrote; None keeps everything.
    delete: str | None


class ModelWeights(pulumi.ComponentResource):
    """Outputs: `path`; `ready` lists the resources that the serving containers wait for
    (the on-destroy steps too, so that on destroy the containers stop before any file goes)."""

    path: str
    ready: list[pulumi.Resource]

    def __init__(
        self,
        name: str,
        path: str,
        targets: list[WeightsTarget],
        on_destroy: list[WeightsOnDestroy] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("vllm-cluster:index:ModelWeights", name, None, opts)
        self.path = path
        self.ready = []
        head_fetch: pulumi.Resource | None = None
        for target in targets:
            check = RemoteCheck(
                f"{name}-{target.name}-check",
                label=f"{target.name}:{path}",
                ssh_argv=target.ssh.ssh_command(),
                # The host's other checks ride along: one SSH round trip for all of them.
                checks={**target.host.drift_checks, "weights": target.verify_script},
                part="weights",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*target.host.checked]),
            )
            # Only preflight (and storage before it): copying weights need not wait for the
            # multi-GB image load; serving waits for both (measured: ~4 s at 4 lab hosts).
            # A hub download waits for the image: without a hub CLI on the host, the engine
            # image's client does it (a bare server has nothing else to run it with).
            waits: list[pulumi.Resource] = [check, *target.host.checked]
            if target.after_image:
                waits.extend(target.host.ready)
            if target.after_head and head_fetch is not None:
                waits.append(head_fetch)
            child = pulumi.ResourceOptions(parent=self, depends_on=waits)
            fetch: pulumi.Resource
            if target.fetch_local is not None:
                verify_over_ssh = (
                    shlex.join([*target.ssh.ssh_command(), "bash", "-s"])
                    + " <<'VLLM_CLUSTER_VERIFY'\n"
                    + target.verify_script
                    + "\nVLLM_CLUSTER_VERIFY\n"
                )
                fetch = local_step(
                    f"{name}-{target.name}-fetch",
                    target.fetch_local + "\n" + verify_over_ssh,
                    triggers=[check.generation],
                    opts=child,
                )
            elif target.fetch_remote is not None:
                fetch = remote_step(
                    f"{name}-{target.name}-fetch",
                    target.connection,
                    target.fetch_remote + "\n" + target.verify_script,
                    stdin=target.fetch_stdin,
                    triggers=[check.generation],
                    opts=child,
                )
            else:
                raise ValueError(f"weights on {target.name}: no fetch step rendered")
            if head_fetch is None:
                head_fetch = fetch
            self.ready.append(fetch)
        for step in on_destroy or []:
            # Never replaced, never dependent on a fetch (a replaced fetch, or one that leaves
            # with a host that stops serving, must not take the weights with it).
            self.ready.append(
                remote_on_destroy(
                    f"{name}-{step.name}-remove",
                    step.connection,
                    step.delete,
                    opts=pulumi.ResourceOptions(parent=self),
                )
            )
        self.register_outputs({"path": path})
