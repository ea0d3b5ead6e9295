"""RemoteCheck: a resource that notices drift on a host that plain commands cannot see.

Why a dynamic resource and not pulumi-command: a `remote.Command` runs when its inputs
change and never looks again, and pulumi-command has no read, so `pulumi refresh` cannot
see drift either (pulumi-command issue 20, open). A weight file deleted on a host after
`pulumi up` would stay missing forever. A RemoteCheck runs a read-only check script over SSH
in `diff` (on every preview and up): when the check fails it reports a change, its
`generation` output goes up, and the commands that list that output in their `triggers` run
again. When everything is in place it changes nothing.

One SSH round trip per host, not per check: every check of a host (its engine image, its
weights) carries all of that host's check scripts (`checks`) and its own name (`part`). The
first diff of a host runs all of them in one bash and the provider process keeps the result
for a few seconds, so the host's other checks answer from it. Each check stays its own
resource, so a preview still names exactly which step runs again (one resource's outputs
are unknown in a preview as a whole).

All hosts at once: the engine asks one diff at a time unless PULUMI_PARALLEL_DIFF is set,
this provider answers at most 4 at once, and a host's checks register only after its
preflight, so on many hosts a no-change `up` would wait for the round trips in waves. A
DriftPrefetch, registered first and depending on nothing, carries every host's checks; its
diff starts all hosts' round trips together (one thread each) into the same results, so the
checks find their answer ready or on its way.

The class names and module path are kept: state of earlier releases pickled
`RemoteCheckProvider` from here with a single `script`; diff reads that as the part's script.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
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
from components.render.shell._common import q

CHECK_TIMEOUT_S = 120
# How long one host's results answer its other checks: the diffs of one `preview` or `up`
# come within a second or two of each other; a later operation looks again.
RESULT_TTL_S = 10.0


def combined_script(checks: Mapping[str, str]) -> str:
    """One bash script that runs every check in its own bash (so `exit`, `set -e` and traps
    stay inside it), with no input, and prints `<name> <exit status>` per check."""
    lines = ["set +e"]
    for name in sorted(checks):
        lines.append(f"bash -c {q(checks[name])} </dev/null >/dev/null 2>&1; echo {q(name)} $?")
    return "\n".join(lines) + "\n"


def run_checks(
    ssh_argv: list[str], checks: Mapping[str, str], timeout_s: float = CHECK_TIMEOUT_S
) -> set[str]:
    """The names of the `checks` that failed, run in one bash on the host behind the OpenSSH
    argv `ssh_argv` (locally when it is empty). A check that did not report exit status 0
    within `timeout_s` failed; so does every check of an unreachable host (the guarded steps
    then run, and say why they cannot)."""
    if not checks:
        return set()
    script = combined_script(checks)
    argv = [*ssh_argv, remote_command(script)] if ssh_argv else ["bash", "-c", script]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return set(checks)
    passed = set()
    for line in done.stdout.decode(errors="replace").splitlines():
        name, _, status = line.rpartition(" ")
        if name in checks and status == "0":
            passed.add(name)
    return set(checks) - passed


class _HostResults:
    """Failed-check sets per (host argv, checks), shared by the diffs in this process. A
    diff that finds a result being computed waits for it instead of asking the host too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[str, tuple[float, Future[set[str]]]] = {}

    def failed(self, ssh_argv: list[str], checks: Mapping[str, str]) -> set[str]:
        key = hashlib.sha256(json.dumps([ssh_argv, dict(checks)], sort_keys=True).encode())
        now = time.monotonic()
        with self._lock:
            cached = self._results.get(key.hexdigest())
            if cached is not None and now - cached[0] < RESULT_TTL_S:
                future, mine = cached[1], False
            else:
                future, mine = Future(), True
                self._results[key.hexdigest()] = (now, future)
        if mine:
            try:
                future.set_result(run_checks(ssh_argv, checks))
            except BaseException as exc:  # never leave a waiter hanging
                future.set_exception(exc)
        return set(future.result())


HOST_RESULTS = _HostResults()


def drift_checks(image_present: str | None, weights_verify: str | None) -> dict[str, str]:
    """A host's drift check scripts by part: what its RemoteChecks and the DriftPrefetch
    carry (the same dict, so they share one result)."""
    parts = (("image", image_present), ("weights", weights_verify))
    return {part: script for part, script in parts if script}


def _host_checks(props: Mapping[str, Any]) -> tuple[dict[str, str], str]:
    """All of the host's checks and this check's name. State of an earlier release (which
    `pulumi refresh` diffs against itself before the first `up` of this one) has its one
    `script` only."""
    checks = props.get("checks")
    if isinstance(checks, Mapping):
        return {str(k): str(v) for k, v in checks.items()}, str(props["part"])
    return {"check": str(props.get("script") or "")}, "check"


class RemoteCheckProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        # A new check starts at generation 1; the commands it guards run anyway on create.
        return CreateResult(id_=str(props["label"]), outs={**props, "generation": 1})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # Only this check's own inputs count: another part's script changing is that
        # part's change, not this one's.
        old_checks, old_part = _host_checks(olds)
        checks, part = _host_checks(news)
        inputs_changed = old_checks.get(old_part) != checks.get(part) or any(
            olds.get(k) != news.get(k) for k in ("ssh_argv", "label")
        )
        if inputs_changed:
            return DiffResult(changes=True)
        failed = HOST_RESULTS.failed(list(news["ssh_argv"]), checks)
        return DiffResult(changes=part in failed)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, "generation": int(olds.get("generation", 0)) + 1})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)


class DriftPrefetchProvider(ResourceProvider):
    """Runs every host's checks at once in diff, for the RemoteChecks to find; changes
    nothing and guards nothing itself."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_="drift-prefetch", outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        hosts: Mapping[str, Mapping[str, Any]] = news["hosts"]
        threads = [
            threading.Thread(
                target=HOST_RESULTS.failed,
                args=(list(host["ssh_argv"]), dict(host["checks"])),
                daemon=True,
            )
            for host in hosts.values()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CHECK_TIMEOUT_S + 5)
        # Its own inputs are all it may change: new hosts or scripts are stored, no more.
        return DiffResult(changes=olds.get("hosts") != news["hosts"])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=news)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)


class DriftPrefetch(Resource):
    """Every host's drift checks, run together at the start of each preview and up."""

    def __init__(
        self,
        name: str,
        hosts: Mapping[str, tuple[list[str], Mapping[str, str]]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            DriftPrefetchProvider(),
            name,
            {
                "hosts": {
                    host: {"ssh_argv": list(ssh_argv), "checks": dict(checks)}
                    for host, (ssh_argv, checks) in hosts.items()
                }
            },
            opts,
        )


class RemoteCheck(Resource):
    """`generation` changes whenever check `part` failed at the last preview/up."""

    generation: pulumi.Output[int]

    def __init__(
        self,
        name: str,
        label: str,
        ssh_argv: list[str],
        checks: Mapping[str, str],
        part: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        if part not in checks:
            raise ValueError(f"check {name}: {part!r} is not among the host's checks")
        super().__init__(
            RemoteCheckProvider(),
            name,
            {
                "label": label,
                "ssh_argv": ssh_argv,
                "checks": dict(checks),
                "part": part,
                "generation": None,
            },
            opts,
        )
