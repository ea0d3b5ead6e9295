"""Per-resource timing of one `pulumi up`, from the engine's event log (`--event-log FILE`).

Pulumi writes one JSON engine event per line to the file as it happens (unbuffered), but
stamps each with whole seconds only. :class:`EventTail` reads the file while the command
runs and stamps every line with this process's monotonic clock, so step durations are
sub-second; the engine's own `timestamp` is kept as a cross-check.

A resource step runs from its `resourcePreEvent` (the engine starts the step, its
dependencies are done) to its `resOutputsEvent` (done) or `resOpFailedEvent`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.e2e.pulumi_cli import CommandResult, PulumiStack

POLL_S = 0.02


@dataclass(frozen=True)
class Stamped:
    """One engine event and when it was read, in seconds since the command started."""

    at_s: float
    event: dict[str, Any]


class EventTail:
    """Follows an event-log file from a thread; :meth:`stop` returns every event read."""

    def __init__(self, path: Path, started: float) -> None:
        self.path = path
        self.started = started
        self.events: list[Stamped] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-tail", daemon=True)

    def start(self) -> EventTail:
        self._thread.start()
        return self

    def stop(self) -> list[Stamped]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.events

    def _run(self) -> None:
        while not self.path.exists():
            if self._stop.wait(POLL_S):
                return
        buffer = b""
        with self.path.open("rb") as f:
            while True:
                chunk = f.read()
                if chunk:
                    now = time.monotonic() - self.started
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self.events.append(Stamped(now, json.loads(line)))
                elif self._stop.is_set():
                    # Stopped and nothing more to read: the command has exited.
                    return
                else:
                    time.sleep(POLL_S)


def up_with_event_log(
    stack: PulumiStack, events_path: Path, started: float, extra_args: tuple[str, ...] = ()
) -> tuple[CommandResult, list[Stamped]]:
    """`pulumi up --yes --skip-preview [extra_args]` on `stack` with the engine's event log
    followed as it is written (times relative to `started`); the events are returned even
    when up fails (the PulumiCommandError then propagates)."""
    events_path.unlink(missing_ok=True)
    tail = EventTail(events_path, started).start()
    # `--event-log` is offered only with PULUMI_DEBUG_COMMANDS (it changes nothing else).
    stack.env["PULUMI_DEBUG_COMMANDS"] = "true"
    events: list[Stamped] = []
    try:
        result = stack.run(
            "up", "--yes", "--skip-preview", *extra_args, "--event-log", str(events_path)
        )
    finally:
        events[:] = tail.stop()
        del stack.env["PULUMI_DEBUG_COMMANDS"]
    return result, events


@dataclass(frozen=True)
class StepTiming:
    name: str  # the URN's resource name (e.g. `weights-lab-2-fetch`)
    type: str
    op: str  # create, update, replace, delete, same, ...
    start_s: float  # since the command started
    end_s: float
    failed: bool = False
    # False for the stack and component resources: their span covers their children's
    # steps, so they are left out of the slowest-steps table.
    custom: bool = True

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duration_s": round(self.duration_s, 3)}


def _metadata(event: dict[str, Any], kind: str) -> dict[str, Any] | None:
    body = event.get(kind)
    if not isinstance(body, dict):
        return None
    meta = body.get("metadata")
    return meta if isinstance(meta, dict) else None


def step_timings(events: list[Stamped]) -> list[StepTiming]:
    """Every resource step that started and finished, in the order they started."""
    open_steps: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
    done: list[StepTiming] = []
    for stamped in events:
        pre = _metadata(stamped.event, "resourcePreEvent")
        if pre is not None:
            open_steps[(pre["urn"], pre["op"])] = (stamped.at_s, pre)
            continue
        for kind, failed in (("resOutputsEvent", False), ("resOpFailedEvent", True)):
            meta = _metadata(stamped.event, kind)
            if meta is None:
                continue
            started = open_steps.pop((meta["urn"], meta["op"]), None)
            if started is None:
                continue
            start_s, pre_meta = started
            done.append(
                StepTiming(
                    name=str(pre_meta["urn"]).split("::")[-1],
                    type=str(pre_meta.get("type", "")),
                    op=str(pre_meta["op"]),
                    start_s=start_s,
                    end_s=stamped.at_s,
                    failed=failed,
                    custom=bool(pre_meta.get("provider"))
                    or str(pre_meta.get("type", "")).startswith("pulumi:providers:"),
                )
            )
    return sorted(done, key=lambda s: s.start_s)


def phases(events: list[Stamped], total_s: float) -> dict[str, float]:
    """Where the command's wall time went outside resource steps: until the first resource
    step started (CLI start, plugins, the program's own run-up) and after the last ended."""
    starts = [e.at_s for e in events if "resourcePreEvent" in e.event]
    ends = [e.at_s for e in events if "resOutputsEvent" in e.event or "resOpFailedEvent" in e.event]
    if not starts or not ends:
        return {"total_s": round(total_s, 3)}
    return {
        "total_s": round(total_s, 3),
        "before_first_step_s": round(min(starts), 3),
        "steps_span_s": round(max(ends) - min(starts), 3),
        "after_last_step_s": round(total_s - max(ends), 3),
    }


def slowest_table(steps: list[StepTiming], limit: int = 10) -> str:
    """The `limit` slowest resource steps (stack and components left out) as aligned text:
    duration, start..end offsets since the command started, op, name."""
    rows = sorted((s for s in steps if s.custom), key=lambda s: s.duration_s, reverse=True)
    rows = rows[:limit]
    lines = [f"{'seconds':>8}  {'from':>6} .. {'to':>6}  {'op':<8} resource"]
    for s in rows:
        flag = "  FAILED" if s.failed else ""
        lines.append(
            f"{s.duration_s:8.2f}  {s.start_s:6.2f} .. {s.end_s:6.2f}  {s.op:<8} {s.name}"
            f" ({s.type}){flag}"
        )
    return "\n".join(lines)


def critical_path(steps: list[StepTiming], slack_s: float = 0.1) -> list[StepTiming]:
    """The chain of resource steps that ended last, walked backwards: from the step that
    ended last, each time the step that ended latest before the current one started (within
    `slack_s`). An approximation from timing alone (the engine does not log dependencies),
    good enough to see which host's step held the rest up."""
    # Steps of a few ms (providers, checks that found nothing to do) hold nothing up.
    custom = [s for s in steps if s.custom and s.duration_s >= 0.05]
    if not custom:
        return []
    chain = [max(custom, key=lambda s: s.end_s)]
    while True:
        before = [s for s in custom if s.end_s <= chain[-1].start_s + slack_s and s not in chain]
        if not before:
            break
        chain.append(max(before, key=lambda s: s.end_s))
    return list(reversed(chain))


def path_line(chain: list[StepTiming]) -> str:
    return " -> ".join(f"{s.name} {s.duration_s:.1f}s" for s in chain)
