"""The benchmark's plot (bench/results/bench.png), drawn from results.json.

Left: wall time against host count, (a) the manual and (b) `pulumi up`, on budgeted hosts
(solid) and unbudgeted ones (dashed), with the budgeted hosts' CPU floor of (b) (dotted: the
busiest host's CPU at its budget). Right: every step of the largest budgeted `pulumi up`
on a timeline, the critical path in colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or over SSH
import matplotlib.pyplot as plt

from bench.events import StepTiming, critical_path

STYLE = {"budgeted": "-", "unbudgeted": "--"}


def _series(summary: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    points = [
        (int(n), row[key]) for n, row in summary["per_hosts"].items() if row.get(key) is not None
    ]
    return [n for n, _ in points], [v for _, v in points]


def _floor(summary: dict[str, Any]) -> tuple[list[int], list[float]]:
    points = [
        (int(n), row["cpu_floor_s"]["pulumi"])
        for n, row in summary["per_hosts"].items()
        if row.get("cpu_floor_s", {}).get("pulumi") is not None
    ]
    return [n for n, _ in points], [v for _, v in points]


def largest_budgeted_up(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last successful budgeted `pulumi up` at the largest host count that has one."""
    ups = [
        r
        for r in runs
        if r["kind"] == "pulumi" and "up_steps" in r and r.get("budget") == "budgeted"
    ]
    if not ups:
        return None
    largest = max(r["hosts"] for r in ups)
    return [r for r in ups if r["hosts"] == largest][-1]


def plot_results(doc: dict[str, Any], path: Path) -> None:
    summaries: dict[str, Any] = doc["summary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5), width_ratios=(1, 1.4))
    for budget, summary in summaries.items():
        style = STYLE.get(budget, ":")
        for key, label, colour in (
            ("manual_s", "(a) manual", "tab:red"),
            ("up_s", "(b) pulumi up", "tab:blue"),
        ):
            xs, ys = _series(summary, key)
            if xs:
                left.plot(xs, ys, style, marker="o", color=colour, label=f"{label}, {budget}")
        if summary.get("host_cpus"):
            xs, ys = _floor(summary)
            if xs:
                left.plot(
                    xs, ys, ":", color="tab:blue",
                    label=f"(b) CPU floor at {summary['host_cpus']:g} CPU/host",
                )  # fmt: skip
        xs, ys = _series(summary, "noop_up_s")
        if xs:
            left.plot(
                xs, ys, style, marker="s", color="tab:green", label=f"(c) no-change up, {budget}"
            )
    left.set_xscale("log", base=2)
    counts = sorted({int(n) for summary in summaries.values() for n in summary["per_hosts"]})
    left.set_xticks(counts, [str(n) for n in counts])
    left.minorticks_off()
    left.set_xlabel("hosts")
    left.set_ylabel("seconds (median)")
    left.set_title("Wall time against host count")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    run = largest_budgeted_up(doc["runs"])
    if run is not None:
        steps = [
            StepTiming(**{k: v for k, v in s.items() if k != "duration_s"}) for s in run["up_steps"]
        ]
        steps = sorted(
            (s for s in steps if s.custom and s.duration_s >= 0.05), key=lambda s: s.start_s
        )
        on_path = {s.name for s in critical_path(steps)}
        for row, s in enumerate(steps):
            colour = "tab:orange" if s.name in on_path else "lightgrey"
            right.barh(row, s.duration_s, left=s.start_s, color=colour)
        right.set_yticks(range(len(steps)), [s.name for s in steps], fontsize=6)
        right.invert_yaxis()
        right.set_xlabel("seconds since `pulumi up` started")
        right.set_title(
            f"Steps of one `pulumi up`, {run['hosts']} budgeted hosts "
            f"({run['up_s']:.0f} s; critical path in orange)"
        )
        right.grid(True, axis="x", alpha=0.3)
    else:
        right.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
