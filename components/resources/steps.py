"""Host steps as pulumi-command resources: one way to declare a script run on a host or here.

- `remote_step`: `pulumi_command.remote.Command` over pulumi-command's own SSH client, with
  the host key pinned (`connection.host_key`), the private key as a Pulumi secret, the
  bastion as `connection.proxy` (pinned too), dial retries, and output streamed into
  `pulumi up` as the script prints it. Scripts need bash (`pipefail`, arrays) and the
  remote login shell may be dash, so `create` is `bash -c '<script>'`
  (components.render.shell.remote_command).
- `local_step`: `pulumi_command.local.Command` run by bash on the operator machine, for the
  steps that move bytes from here to a host with OpenSSH (streaming the image into
  `docker load`, rsync of weights and .deb files, the fan-out driver).

Secrets go on `stdin` only, never into a script: pulumi-command keeps `create`/`delete` in
state in plain text and prints the command line in its error messages, while `stdin` is
stored as the Pulumi secret it was given. The previous run's output is not passed back in
the environment (`add_previous_output_in_env=False`): it would need sshd's AcceptEnv, and a
warning on every update where it is missing.

`triggers` replace a step (pulumi-command's `replaceOnChanges`); any other input change runs
`create` again in place. Steps are replaced delete-first.

Upgrading a stack whose steps an earlier release declared as its own dynamic resources: the
steps here have another type, so `pulumi up` creates them (each script is idempotent: it
checks, finds everything in place, and changes nothing) and deletes the old ones through
components.resources.retired, which never runs their delete scripts. An alias of the old
type cannot carry them over: pulumi-command refuses to decode the old state on update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_command import local, remote

from components.render.shell import remote_command


@dataclass(frozen=True)
class Bastion:
    address: str
    user: str
    port: int
    # `<type> <base64>`: the bastion's pinned host key.
    host_key: str


@dataclass(frozen=True)
class HostConnection:
    """How pulumi-command's SSH client reaches one host."""

    address: str
    user: str
    port: int
    # `<type> <base64>` (components.render.operator_files pins every host before this exists).
    host_key: str
    private_key: pulumi.Input[str]
    bastion: Bastion | None = None
    # Seconds for one dial; dial_error_limit dials before the step fails.
    per_dial_timeout_s: int = 10
    dial_error_limit: int = 3

    def args(self) -> remote.ConnectionArgs:
        proxy = None
        if self.bastion is not None:
            proxy = remote.ProxyConnectionArgs(
                host=self.bastion.address,
                user=self.bastion.user,
                port=self.bastion.port,
                host_key=self.bastion.host_key,
                private_key=self.private_key,
                per_dial_timeout=self.per_dial_timeout_s,
                dial_error_limit=self.dial_error_limit,
            )
        return remote.ConnectionArgs(
            host=self.address,
            user=self.user,
            port=self.port,
            host_key=self.host_key,
            private_key=pulumi.Output.secret(self.private_key),
            proxy=proxy,
            per_dial_timeout=self.per_dial_timeout_s,
            dial_error_limit=self.dial_error_limit,
        )


def _options(opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(delete_before_replace=True))


def remote_step(
    name: str,
    connection: HostConnection,
    script: str,
    *,
    stdin: pulumi.Input[str] | None = None,
    triggers: Sequence[pulumi.Input[Any]] | None = None,
    delete: str | None = None,
    opts: pulumi.ResourceOptions | None = None,
) -> remote.Command:
    """`script` run by bash on the host on create, and again when it (or stdin) changes;
    `delete` (a script too) on destroy. Progress on stderr shows in `pulumi up`."""
    return remote.Command(
        name,
        connection=connection.args(),
        create=remote_command(script),
        delete=remote_command(delete) if delete else None,
        stdin=stdin,
        triggers=list(triggers) if triggers else None,
        add_previous_output_in_env=False,
        opts=_options(opts),
    )


def remote_on_destroy(
    name: str,
    connection: HostConnection,
    delete: str | None,
    *,
    opts: pulumi.ResourceOptions | None = None,
) -> remote.Command:
    """A step with no `create`: pulumi-command runs nothing (and does not even connect) on
    create or update, only `delete` (a script, or nothing when None) when the resource
    leaves the program or the stack is destroyed. A change of `delete` or of the connection
    is an update (only `triggers` replace), so it never runs the old `delete`."""
    return remote.Command(
        name,
        connection=connection.args(),
        delete=remote_command(delete) if delete else None,
        add_previous_output_in_env=False,
        opts=_options(opts),
    )


# What a local step runs: bash reading the step's script from stdin.
LOCAL_SCRIPT_RUNNER = "exec /bin/bash -s"


def local_step(
    name: str,
    script: str,
    *,
    triggers: Sequence[pulumi.Input[Any]] | None = None,
    opts: pulumi.ResourceOptions | None = None,
) -> local.Command:
    """`script` run by bash on the operator machine (it reaches hosts with OpenSSH).

    The script goes to bash on stdin, not as its `-c` argument: one argument may not exceed
    128 KiB (MAX_ARG_STRLEN), and a fan-out step carrying the weights tool for several
    hosts is larger (measured: 164 KB for the second of two hosts)."""
    return local.Command(
        name,
        create=LOCAL_SCRIPT_RUNNER,
        stdin=script,
        interpreter=["/bin/bash", "-c"],
        triggers=list(triggers) if triggers else None,
        add_previous_output_in_env=False,
        opts=_options(opts),
    )
