"""Pulumi's Python dynamic-provider host, serving more than 4 calls at a time.

`pulumi/dynamic/__main__.py` (pulumi 3.272) serves its gRPC API from
`futures.ThreadPoolExecutor(max_workers=4)`, and one provider process serves every dynamic
resource of a `pulumi up`. This program's host steps are dynamic resources (ShellCommand,
RemoteCheck), so with more than 4 hosts their image loads ran in batches of 4, and with 4
hosts the first weights copy took a thread from an image load (measured: a 3.1 s late start
and a 15 s late weights fan-out at 4 lab hosts). This runs the SDK's own provider module
unchanged, with its pool raised to VLLM_CLUSTER_PROVIDER_THREADS (default 64).

Installed by tools/build-toolchain.sh next to the `pulumi-resource-pulumi-python` shim,
which runs it instead of `python -m pulumi.dynamic`.
"""

from __future__ import annotations

import os
import runpy
import sys
from concurrent import futures
from typing import Any

THREADS = int(os.environ.get("VLLM_CLUSTER_PROVIDER_THREADS") or 64)
_ThreadPoolExecutor = futures.ThreadPoolExecutor


class _WiderThreadPoolExecutor(_ThreadPoolExecutor):
    """Never fewer than THREADS workers; the SDK module creates exactly one pool."""

    def __init__(self, max_workers: int | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(max(max_workers or 0, THREADS), *args, **kwargs)


if __name__ == "__main__":
    # As under `python -m pulumi.dynamic`: the working directory (the project), not this
    # file's directory, leads sys.path, so provider classes pickled by reference
    # (components.commands.ShellCommand's provider) import.
    sys.path[0] = os.getcwd()
    futures.ThreadPoolExecutor = _WiderThreadPoolExecutor  # type: ignore[misc]
    runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)
