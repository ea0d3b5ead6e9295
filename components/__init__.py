"""The vLLM cluster program, in the order data flows through it.

1. `settings` - the stack config, validated (errors name the key path).
2. `plan` - the memory plan from the model's config.json (pure; `python -m components.sizing`).
3. `render` - settings + plan -> scripts, command lines, SSH options (pure).
4. `resources` - how one resource is declared: pulumi-command steps, engine containers,
   drift checks.

Then the four components that wire them, one module each at this level: `GpuHost`
(gpu_host), `ModelWeights` (model_weights), `VllmService` (vllm_service) and
`RayVllmCluster` (ray_cluster).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

# Module paths that state written by earlier releases refers to (dynamic providers are
# pickled by module path) -> where that code lives now. components/resources/retired.py
# says why; the target is imported only when the engine unpickles such a provider.
_RETIRED_PATHS = {
    "components.commands": "components.resources.retired",
    "components.remote_check": "components.resources.remote_check",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the target module is already executed


class _RetiredPathFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = _RETIRED_PATHS.get(fullname)
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new)) if new else None


if not any(isinstance(f, _RetiredPathFinder) for f in sys.meta_path):
    sys.meta_path.append(_RetiredPathFinder())
