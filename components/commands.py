"""Command resources: run a script on a host over SSH, or on the operator machine.

Why not pulumi-command: its provider plugin cannot be obtained where this project is built
and tested (the Go module proxy refuses every github.com/pulumi/pulumi-command module with
"403 Forbidden: This module version is not available", and no package registry ships the
binary). These resources are a Pulumi dynamic provider with the subset of its semantics the
program uses:

- `create` runs on create; a change of `create`/`update`/`stdin`/`target` runs `update` (or
  `create` again); a change of `triggers` replaces the resource (delete, then create);
- `delete` runs on destroy/replacement when given;
- `stdin` (often a Pulumi secret) goes to the script's standard input, never a command line;
  state keeps only a salted hash of it, to notice a change;
- `stdout`/`stderr` are outputs; a non-zero exit fails the step with the last lines of output.

Remote scripts run through the OpenSSH client with the options of components.ssh.SshTarget
(pinned known_hosts, key file, bastion), wrapped in `bash -c` because login shells may be dash.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import sys
import threading
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

from components.shell import remote_command

OUTPUT_TAIL_LINES = 40
# Inputs whose change re-runs the command in place (triggers replace instead).
_RERUN_KEYS = ("create", "update", "target")


def _stdin_digest(salt: str, stdin: str | None) -> str:
    return hashlib.sha256(f"{salt}\0{stdin or ''}".encode()).hexdigest()


def run_script(
    target: list[str],
    script: str,
    stdin: str | None,
    label: str,
    *,
    timeout_s: float | None = None,
    quiet: bool = False,
) -> dict[str, str]:
    """Run `script` with bash, locally (`target == []`) or through the ssh argv `target`.

    Its stderr (the `[host] step: ...` progress lines) is echoed line by line as it comes
    to this process's stderr, which Pulumi shows during the step, unless `quiet`. Raises
    RuntimeError with the output's tail on a non-zero exit or after `timeout_s`."""
    argv = [*target, remote_command(script)] if target else ["bash", "-c", script]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err_lines: list[str] = []
    out_chunks: list[str] = []

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            if not quiet:
                print(line, end="", file=sys.stderr, flush=True)

    def drain_stdout() -> None:
        assert proc.stdout is not None
        out_chunks.append(proc.stdout.read())

    pumps = [threading.Thread(target=f, daemon=True) for f in (pump_stderr, drain_stdout)]
    for t in pumps:
        t.start()
    assert proc.stdin is not None
    try:
        proc.stdin.write(stdin or "")
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the script exited without reading its input; its exit code tells
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{label}: no answer within {timeout_s:.0f}s") from None
    finally:
        for t in pumps:
            t.join(timeout=5)
    out = "".join(out_chunks)
    err = "".join(err_lines)
    if proc.returncode != 0:
        tail = "\n".join((err.strip().splitlines() + out.strip().splitlines())[-OUTPUT_TAIL_LINES:])
        raise RuntimeError(f"{label}: exited with {proc.returncode}:\n{tail}")
    return {"stdout": out, "stderr": err}


class ShellCommandProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        salt = secrets.token_hex(8)
        result = run_script(props["target"], props["create"], props.get("stdin"), props["label"])
        return CreateResult(id_=props["label"], outs=self._outs(props, salt, result))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        salt = str(olds.get("stdin_salt", ""))
        stdin_changed = olds.get("stdin_sha256") != _stdin_digest(salt, news.get("stdin"))
        rerun = stdin_changed or any(olds.get(k) != news.get(k) for k in _RERUN_KEYS)
        replace = olds.get("triggers") != news.get("triggers")
        delete_changed = olds.get("delete") != news.get("delete")
        return DiffResult(
            changes=rerun or replace or delete_changed,
            replaces=["triggers"] if replace else [],
            delete_before_replace=True,
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        salt = str(olds.get("stdin_salt") or secrets.token_hex(8))
        stdin_changed = olds.get("stdin_sha256") != _stdin_digest(salt, news.get("stdin"))
        if stdin_changed or any(olds.get(k) != news.get(k) for k in _RERUN_KEYS):
            script = news.get("update") or news["create"]
            result = run_script(news["target"], script, news.get("stdin"), news["label"])
        else:  # only `delete` changed: nothing to run now
            result = {"stdout": olds.get("stdout", ""), "stderr": olds.get("stderr", "")}
        return UpdateResult(outs=self._outs(news, salt, result))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if props.get("delete"):
            # stdin is not kept in state (only its hash), so delete scripts get none.
            run_script(props["target"], props["delete"], None, props["label"] + " (delete)")

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)

    @staticmethod
    def _outs(props: dict[str, Any], salt: str, result: dict[str, str]) -> dict[str, Any]:
        outs = {k: v for k, v in props.items() if k != "stdin"}
        outs["stdin_salt"] = salt
        outs["stdin_sha256"] = _stdin_digest(salt, props.get("stdin"))
        outs.update(result)
        return outs


class ShellCommand(Resource):
    """A script run on create (and on change), with an optional delete script.

    `target` is an ssh argv prefix (components.ssh.SshTarget.ssh_command()) to run on a host,
    or [] to run on the operator machine."""

    stdout: pulumi.Output[str]
    stderr: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        target: list[str],
        create: pulumi.Input[str],
        update: pulumi.Input[str] | None = None,
        delete: pulumi.Input[str] | None = None,
        stdin: pulumi.Input[str] | None = None,
        triggers: pulumi.Input[list[Any]] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            ShellCommandProvider(),
            name,
            {
                "label": name,
                "target": target,
                "create": create,
                "update": update,
                "delete": delete,
                "stdin": stdin,
                "triggers": triggers or [],
                "stdout": None,
                "stderr": None,
                "stdin_salt": None,
                "stdin_sha256": None,
            },
            opts,
        )
