"""Pulumi mocks that record every resource the program declares (for wiring tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi.runtime.mocks

from components.resources.steps import LOCAL_SCRIPT_RUNNER

SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE


def reveal(value: Any) -> Any:
    """The plain value of a (possibly secret-wrapped) mock input."""
    return value["value"] if is_secret(value) else value


DYNAMIC = "pulumi-python:dynamic:Resource"
REMOTE = "command:remote:Command"
LOCAL = "command:local:Command"


@dataclass
class Recorded:
    type_: str
    name: str
    inputs: dict[str, Any]
    provider: str | None
    # Names of the resources it depends on (depends_on and property dependencies), when the
    # mocks run under DependencyMonitor.
    depends_on: list[str] = field(default_factory=list)

    @property
    def script(self) -> str:
        """What a command step runs: a local step's script is its stdin (bash -s), a remote
        step's is its `create`."""
        if self.type_ == LOCAL:
            assert self.inputs["create"] == LOCAL_SCRIPT_RUNNER, self.inputs["create"]
            return str(self.inputs["stdin"])
        return str(reveal(self.inputs["create"]))


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    resources: list[Recorded] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(Recorded(args.typ, args.name, dict(args.inputs), args.provider))
        outputs = dict(args.inputs)
        if args.typ == "docker:index/remoteImage:RemoteImage":
            outputs["imageId"] = f"sha256:{args.name}"
        if args.typ in (REMOTE, LOCAL):
            # A command's stdout (preflight facts are one JSON line); the real provider
            # computes it by running the script.
            outputs["stdout"] = "{}"
        if args.typ == DYNAMIC:
            # RemoteCheck's generation; the real provider runs the check.
            outputs["generation"] = 1
            if "purpose" in outputs:
                # GeneratedSecret's value; the real provider draws it with secrets.token_hex.
                outputs["value"] = f"generated-{args.name}"
        return f"{args.name}-id", outputs

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        return {}, []

    def of_type(self, type_: str) -> list[Recorded]:
        return [r for r in self.resources if r.type_ == type_]

    def named(self, name: str) -> Recorded:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"{name}: {[r.name for r in self.resources]}"
        return matches[0]


class DependencyMonitor(pulumi.runtime.mocks.MockMonitor):
    """The mock monitor, also recording each resource's dependencies (by name) into the
    RecordingMocks: `pulumi.runtime.set_mocks(m, monitor=DependencyMonitor(m))`."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recording = mocks

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        names = {u.rsplit("::", 1)[-1] for u in request.dependencies}
        for deps in request.propertyDependencies.values():
            names |= {u.rsplit("::", 1)[-1] for u in deps.urns}
        # By name, not "the last one recorded": registrations run on several threads, and
        # another resource may have been recorded in between (its deps were then lost).
        for recorded in reversed(self.recording.resources):
            if recorded.name == request.name:
                recorded.depends_on = sorted(names)
                break
        return response
