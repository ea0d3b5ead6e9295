"""A dynamic resource that sleeps in create and records when: for counting how many creates
the dynamic-provider host serves at once (engine_program's `parallel` part)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pulumi.dynamic import CreateResult, Resource, ResourceProvider


class _NapProvider(ResourceProvider):
    """Sleeps in create and writes `<start> <end>` (monotonic clock) to a file."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        start = time.monotonic()
        time.sleep(float(props["seconds"]))
        path = Path(str(props["dir"])) / str(props["label"])
        path.write_text(f"{start} {time.monotonic()}\n")
        return CreateResult(id_=str(props["label"]), outs=props)


class Nap(Resource):
    def __init__(self, name: str, directory: str, seconds: float) -> None:
        props = {"label": name, "dir": directory, "seconds": seconds}
        super().__init__(_NapProvider(), name, props)
