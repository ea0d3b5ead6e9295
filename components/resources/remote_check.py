"""RemoteCheck: a resource that notices drift on a host that plain commands cannot see.

Why a dynamic resource and not pulumi-command: a `remote.Command` runs when its inputs
change and never looks again, and pulumi-command has no read, so `pulumi refresh` cannot
see drift either (pulumi-command issue 20, open). A weight file deleted on a host after
`pulumi up` would stay missing forever. A RemoteCheck runs a
read-only check script over SSH in `diff` (on every preview and up): when the check fails it
reports a change, its `generation` output goes up, and the commands that list that output in
their `triggers` run again. When everything is in place it costs one SSH round trip and
changes nothing.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pulumi
from pulumi.dynamic import (
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from components.render.shell import remote_command

CHECK_TIMEOUT_S = 120


def run_check(ssh_argv: list[str], script: str, timeout_s: float = CHECK_TIMEOUT_S) -> bool:
    """Run the read-only `script` with bash on the host behind the OpenSSH argv `ssh_argv`
    (locally when it is empty): did it exit 0 within `timeout_s`? An unreachable host
    fails the check too, so the guarded steps run (and say why they cannot)."""
    argv = [*ssh_argv, remote_command(script)] if ssh_argv else ["bash", "-c", script]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class RemoteCheckProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        # A new check starts at generation 1; the commands it guards run anyway on create.
        return CreateResult(id_=str(props["label"]), outs={**props, "generation": 1})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        inputs_changed = any(olds.get(k) != news.get(k) for k in ("ssh_argv", "script", "label"))
        if inputs_changed:
            return DiffResult(changes=True)
        passed = run_check(list(news["ssh_argv"]), str(news["script"]))
        return DiffResult(changes=not passed)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, "generation": int(olds.get("generation", 0)) + 1})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)


class RemoteCheck(Resource):
    """`generation` changes whenever the check failed at the last preview/up."""

    generation: pulumi.Output[int]

    def __init__(
        self,
        name: str,
        label: str,
        ssh_argv: list[str],
        script: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            RemoteCheckProvider(),
            name,
            {"label": label, "ssh_argv": ssh_argv, "script": script, "generation": None},
            opts,
        )
