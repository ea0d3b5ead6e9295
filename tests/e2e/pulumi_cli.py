"""Drive the real ``pulumi`` CLI from end-to-end tests.

Every e2e test goes through :func:`temporary_stack`: it creates a uniquely named stack for a
project directory on the local file backend of ``tools/env.sh``, sets its configuration
(plain, ``--secret`` and ``--path`` values), lets the test run ``preview`` / ``up`` /
``destroy`` / ``stack output`` / ``stack export``, and always cleans up (``destroy`` then
``stack rm``) even when the test fails. Failing commands raise :class:`PulumiCommandError`
with the tail of their output, so a red test shows what Pulumi said.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_SH = REPO_ROOT / "tools" / "env.sh"

#: Binaries that must be found on the toolchain PATH for any Python program to run.
CORE_BINARIES = (
    "pulumi",
    "pulumi-language-python",
    "pulumi-language-python-exec",
    "pulumi-resource-pulumi-python",  # the host of pulumi.dynamic providers
)

DEFAULT_TIMEOUT_S = 900.0
TAIL_LINES = 60


@cache
def _env_sh_environment() -> tuple[tuple[str, str], ...]:
    """The variables ``tools/env.sh`` sets, read by sourcing it in bash (one place of truth)."""
    out = subprocess.run(
        ["bash", "-c", 'set -euo pipefail; source "$1"; env -0', "env.sh", str(ENV_SH)],
        check=True,
        capture_output=True,
        env=dict(os.environ),
    ).stdout
    pairs = []
    for entry in out.split(b"\0"):
        if b"=" in entry:
            key, _, value = entry.partition(b"=")
            pairs.append((key.decode(), value.decode()))
    return tuple(pairs)


def pulumi_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for running ``pulumi``: the caller's, plus ``tools/env.sh``, plus ``extra``.

    ``tools/env.sh`` keeps values already set by the caller, so running the tests through
    ``tools/with-env`` or not gives the same result.
    """
    env = dict(_env_sh_environment())
    # Never let a run wait for a prompt or decorate its output.
    env["PULUMI_SKIP_CONFIRMATIONS"] = "true"
    env.setdefault("NO_COLOR", "1")
    if extra:
        env.update(extra)
    return env


def find_binary(name: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Where ``name`` is on the toolchain PATH (``.toolchain/bin`` first), or None."""
    path = (env or pulumi_env()).get("PATH", "")
    found = shutil.which(name, path=path)
    return Path(found) if found else None


def list_stacks(project_dir: Path, env: Mapping[str, str], pulumi: Path) -> list[dict[str, Any]]:
    """``pulumi stack ls --json`` of the project: name, resourceCount, lastUpdate, ..."""
    listed = subprocess.run(
        [str(pulumi), "stack", "ls", "--json"],
        cwd=project_dir,
        env=dict(env),
        capture_output=True,
        text=True,
        check=True,
    )
    stacks: list[dict[str, Any]] = json.loads(listed.stdout or "[]")
    return stacks


def sdk_plugin_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The provider version each installed Python SDK requests (its pulumi-plugin.json)."""
    versions = {}
    for name in names:
        module = importlib.import_module(f"pulumi_{name}")
        plugin_json = Path(module.__file__ or "").parent / "pulumi-plugin.json"
        versions[name] = str(json.loads(plugin_json.read_text())["version"])
    return versions


def installed_plugins(env: Mapping[str, str]) -> dict[tuple[str, str], set[str]]:
    """``pulumi plugin ls --json`` as (kind, name) -> versions installed in PULUMI_HOME."""
    pulumi = find_binary("pulumi", env)
    if pulumi is None:
        return {}
    listed = subprocess.run(
        [str(pulumi), "plugin", "ls", "--json"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    plugins: dict[tuple[str, str], set[str]] = {}
    for p in json.loads(listed.stdout or "[]") or []:
        plugins.setdefault((p["kind"], p["name"]), set()).add(str(p["version"]))
    return plugins


def missing_binaries(names: tuple[str, ...], env: Mapping[str, str] | None = None) -> list[str]:
    """The subset of ``names`` not found on the toolchain PATH."""
    return [name for name in names if find_binary(name, env) is None]


@dataclass(frozen=True)
class CommandResult:
    """One finished ``pulumi`` invocation."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def output(self) -> str:
        """stdout followed by stderr."""
        return self.stdout + ("\n" + self.stderr if self.stderr else "")

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines of the combined output, after its diagnostics (what
        failed and why), which a long list of stack outputs would otherwise push out."""
        text = self.output.rstrip()
        diagnostics = ""
        if "\nDiagnostics:\n" in text:
            after = text.split("\nDiagnostics:\n", 1)[1]
            kept = after.split("\nOutputs:\n", 1)[0].split("\nResources:\n", 1)[0]
            diagnostics = "Diagnostics:\n" + "\n".join(kept.splitlines()[-4 * lines :]) + "\n...\n"
        return diagnostics + "\n".join(text.splitlines()[-lines:])


class PulumiCommandError(RuntimeError):
    """A ``pulumi`` command exited non-zero (or timed out); carries its result."""

    def __init__(self, result: CommandResult, reason: str = "") -> None:
        self.result = result
        what = reason or f"exit code {result.returncode}"
        super().__init__(
            f"`pulumi {' '.join(result.args)}` failed ({what}, {result.duration_s:.1f} s). "
            f"Last lines of its output:\n{result.tail()}"
        )


class PulumiStack:
    """A stack of one project, driven through the CLI. Create it with :func:`temporary_stack`."""

    def __init__(
        self,
        project_dir: Path,
        name: str,
        *,
        env: Mapping[str, str],
        pulumi: Path,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.project_dir = project_dir
        self.name = name
        self.env = dict(env)
        self.pulumi = pulumi
        self.timeout_s = timeout_s
        self.history: list[CommandResult] = []

    def run(self, *args: str, check: bool = True, timeout_s: float | None = None) -> CommandResult:
        """Run ``pulumi ARGS --stack NAME --non-interactive`` in the project directory.

        The stack flags go before a ``--`` separator in ``args`` (after it, everything is
        positional).
        """
        flags = ("--stack", self.name, "--non-interactive")
        if "--" in args:
            split = args.index("--")
            full = (*args[:split], *flags, *args[split:])
        else:
            full = (*args, *flags)
        return self._run(full, check=check, timeout_s=timeout_s)

    def _run(self, args: tuple[str, ...], *, check: bool, timeout_s: float | None) -> CommandResult:
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [str(self.pulumi), *args],
                cwd=self.project_dir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout_s or self.timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            result = CommandResult(
                args=args,
                returncode=-1,
                stdout=_text(exc.stdout),
                stderr=_text(exc.stderr),
                duration_s=time.monotonic() - started,
            )
            self.history.append(result)
            raise PulumiCommandError(result, f"timed out after {exc.timeout:.0f} s") from exc
        result = CommandResult(
            args=args,
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
            duration_s=time.monotonic() - started,
        )
        self.history.append(result)
        if check and proc.returncode != 0:
            raise PulumiCommandError(result)
        return result

    # -- configuration -------------------------------------------------------------------
    def set_config(self, key: str, value: str, *, secret: bool = False, path: bool = False) -> None:
        """``pulumi config set KEY VALUE`` (``--secret`` encrypts it, ``--path`` sets a nested key).

        The value is passed after ``--`` so values starting with ``-`` are not read as flags.
        """
        flags = ["--secret" if secret else "--plaintext"]
        if path:
            flags.append("--path")
        self.run("config", "set", *flags, key, "--", value)

    def set_config_many(
        self, values: Mapping[str, str], *, secret: bool = False, path: bool = False
    ) -> None:
        """Set several keys with the same flags."""
        for key, value in values.items():
            self.set_config(key, value, secret=secret, path=path)

    def get_config(self, key: str, *, path: bool = False) -> str:
        """The (decrypted) value of one key."""
        args = ["config", "get", key]
        if path:
            args.append("--path")
        return self.run(*args).stdout.rstrip("\n")

    # -- lifecycle -----------------------------------------------------------------------
    def preview(self, *, expect_no_changes: bool = False, diff: bool = False) -> CommandResult:
        """``pulumi preview``; with ``expect_no_changes`` it fails when anything would change."""
        args = ["preview"]
        if expect_no_changes:
            args.append("--expect-no-changes")
        if diff:
            args.append("--diff")
        return self.run(*args)

    def up(self, *, expect_no_changes: bool = False, refresh: bool = False) -> CommandResult:
        """``pulumi up --yes --skip-preview``."""
        args = ["up", "--yes", "--skip-preview"]
        if expect_no_changes:
            args.append("--expect-no-changes")
        if refresh:
            args.append("--refresh")
        return self.run(*args)

    def refresh(self) -> CommandResult:
        """``pulumi refresh --yes --skip-preview``."""
        return self.run("refresh", "--yes", "--skip-preview")

    def destroy(self, *, check: bool = True) -> CommandResult:
        """``pulumi destroy --yes --skip-preview``."""
        return self.run("destroy", "--yes", "--skip-preview", check=check)

    # -- state ---------------------------------------------------------------------------
    def outputs(self, *, show_secrets: bool = False) -> dict[str, Any]:
        """``pulumi stack output --json`` (secrets shown as ``[secret]`` unless asked)."""
        args = ["stack", "output", "--json"]
        if show_secrets:
            args.append("--show-secrets")
        data = json.loads(self.run(*args).stdout or "{}")
        if not isinstance(data, dict):
            raise TypeError(f"stack output is not an object: {data!r}")
        return data

    def export(self) -> dict[str, Any]:
        """``pulumi stack export``: the checkpoint (resources with their inputs and outputs)."""
        data = json.loads(self.run("stack", "export").stdout)
        if not isinstance(data, dict):
            raise TypeError(f"stack export is not an object: {data!r}")
        return data

    def resources(self) -> list[dict[str, Any]]:
        """The resources of the exported checkpoint."""
        deployment = self.export().get("deployment", {})
        return list(deployment.get("resources") or [])

    def remove(self, *, check: bool = True) -> CommandResult:
        """``pulumi stack rm --yes --remove-backups``: the stack, its backups and its
        ``Pulumi.<stack>.yaml``. Refuses (fails) while the stack still has resources."""
        return self.run("stack", "rm", "--yes", "--remove-backups", check=check)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def unique_stack_name(prefix: str = "e2e") -> str:
    """A stack name no other run uses (parallel runs share the file backend)."""
    return f"{prefix}-{int(time.time())}-{secrets.token_hex(3)}"


@contextmanager
def temporary_stack(
    project_dir: Path,
    *,
    prefix: str = "e2e",
    config: Mapping[str, str] | None = None,
    secret_config: Mapping[str, str] | None = None,
    path_config: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    destroy_on_exit: bool = True,
) -> Iterator[PulumiStack]:
    """A fresh stack of ``project_dir`` for the duration of the ``with`` block.

    ``config`` values are set in plain text, ``secret_config`` with ``--secret`` and
    ``path_config`` with ``--path`` (keys like ``'vllm:hosts[0].address'``). On exit the
    stack's resources are destroyed and the stack is removed (with its backups and its
    ``Pulumi.<stack>.yaml``), whatever happened inside. A failing cleanup is raised only when
    the block itself succeeded, so the first error stays the one reported. If ``destroy``
    itself fails the stack is kept, so that its state still names what is left behind.
    """
    run_env = pulumi_env(env)
    pulumi = find_binary("pulumi", run_env)
    if pulumi is None:
        raise FileNotFoundError("pulumi is not on the toolchain PATH: run `make toolchain`")
    stack = PulumiStack(
        project_dir.resolve(),
        unique_stack_name(prefix),
        env=run_env,
        pulumi=pulumi,
        timeout_s=timeout_s,
    )
    # `stack init` takes --stack as the name of the stack to create.
    stack.run("stack", "init")
    try:
        stack.set_config_many(config or {})
        stack.set_config_many(secret_config or {}, secret=True)
        stack.set_config_many(path_config or {}, path=True)
        yield stack
    except BaseException:
        _cleanup(stack, destroy=destroy_on_exit, check=False)
        raise
    _cleanup(stack, destroy=destroy_on_exit, check=True)


def _cleanup(stack: PulumiStack, *, destroy: bool, check: bool) -> None:
    destroyed_ok = True
    if destroy:
        destroyed_ok = stack.destroy(check=check).returncode == 0
    # After a failed destroy, keep the stack (and its Pulumi.<stack>.yaml): its state still
    # points at whatever is left, for a person to inspect and destroy.
    if destroyed_ok:
        stack.remove(check=check)
