"""Module paths of earlier releases, kept importable for the state those releases wrote.

A Pulumi dynamic resource keeps its provider in state, pickled by reference: module path and
class name. Earlier releases ran host steps as their own dynamic resources (module
`components.commands`) and kept the drift check at `components.remote_check`. The engine
unpickles those references to act on such resources: when the first `pulumi up` of this
release deletes the old steps (their pulumi-command successors have another type), on
`pulumi refresh`, and on `pulumi destroy` of a stack not yet upgraded.

components/__init__.py maps those two paths (an import hook, so the provider host finds
them on any `components.*` import, and nothing is loaded until the engine asks):
- `components.remote_check` -> components.resources.remote_check, which only moved;
- `components.commands` -> this module: any class name pickled from there resolves to
  `RetiredStepProvider`, which reads state as it is and deletes by forgetting. It never
  runs an old step's `delete` script: the one such script removed the weights
  (`model.keep_on_destroy: false`), and the upgrade itself deletes the old steps, which
  must not remove the weights the new steps just verified. A stack destroyed before its
  first `up` with this release therefore keeps its weights; remove them by hand if needed.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import ReadResult, ResourceProvider


class RetiredStepProvider(ResourceProvider):
    """Reads the host steps an earlier release created, and lets the engine forget them."""

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Nothing runs on the host (see the module docstring)."""


def __getattr__(name: str) -> type[RetiredStepProvider]:
    """Any class that an earlier release pickled from `components.commands`."""
    if name.startswith("__"):
        raise AttributeError(name)
    return RetiredStepProvider
