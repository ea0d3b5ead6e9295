"""The benchmark's arithmetic (bench/harness.py), on made-up runs: medians, ratios, growth,
target verdicts, and the CPU floor that says when a time target is below what the measured
work can take on this machine."""

from __future__ import annotations

from typing import Any

from bench.harness import cpu_floor_s, markdown, summarize, verdicts


def run(kind: str, hosts: int, seconds: float, hosts_cpu: float, op_cpu: float) -> dict[str, Any]:
    cpu = {
        "hosts_cpu_s": hosts_cpu,
        "operator_cpu_s": op_cpu,
        "machine_cpu_s": hosts_cpu + op_cpu,
        "machine_busy_cores": 1.5,
    }
    if kind == "manual":
        return {
            "kind": kind,
            "hosts": hosts,
            "round": 1,
            "seconds": seconds,
            "steps": [],
            "cpu": cpu,
        }
    return {
        "kind": kind,
        "hosts": hosts,
        "round": 1,
        "up_s": seconds,
        "noop_up_s": 3.0,
        "destroy_s": 7.0,
        "cpu": cpu,
    }


def test_cpu_floor_is_the_work_spread_over_every_core() -> None:
    assert cpu_floor_s({"hosts_cpu_s": 55.0, "operator_cpu_s": 9.0}, 2) == 32.0
    assert cpu_floor_s({"hosts_cpu_s": None, "operator_cpu_s": 9.0}, 2) is None


def test_summary_ratios_growth_and_floor_notes() -> None:
    runs = [
        run("manual", 1, 14.0, 10.0, 1.5),
        run("pulumi", 1, 12.0, 9.0, 4.0),
        run("pulumi", 1, 13.0, 9.0, 4.0),
        run("pulumi", 1, 50.0, 9.0, 4.0),  # the median ignores one outlier
        run("manual", 2, 30.0, 30.0, 3.0),
        run("pulumi", 2, 24.0, 28.0, 6.0),
        run("manual", 4, 42.0, 46.0, 6.0),
        run("pulumi", 4, 40.0, 55.0, 9.0),
    ]
    summary = summarize(runs, [1, 2, 4], cores=2)
    per = summary["per_hosts"]
    assert per["1"]["up_s"] == 13.0
    assert per["2"]["ratio"] == 0.8
    assert per["4"]["ratio"] == round(40 / 42, 3)
    assert per["4"]["cpu_floor_s"] == {"manual": 26.0, "pulumi": 32.0}
    assert summary["growth_up_4_over_1"] == round(40 / 13, 3)
    lines = verdicts(summary)
    assert lines[0].startswith("(b)/(a) on 2 hosts <= 1.0: 0.8 -> met")
    assert "below this machine's floor" not in lines[0]
    # 0.6 x 42 s = 25.2 s allowed, but 55 + 9 CPU-s need 32 s on 2 cores.
    assert "-> MISSED; below this machine's floor: the target allows 25.2 s" in lines[1]
    assert ">= 32.0 s on 2 cores (the manual's own work, >= 26.0 s)" in lines[1]
    # 1.3 x 13 s = 16.9 s allowed at 4 hosts, below the 32 s floor too.
    assert "the target allows 16.9 s" in lines[2]
    assert lines[3] == "no-change up on 4 hosts < 20 s: 3.0 -> met"
    text = markdown({"run_id": "t", "started": "s", "rounds": 1}, runs, summary)
    assert "| 4 | 42.00 s | 40.00 s | 0.952 |" in text
    assert "| 26.00 s | 32.00 s |" in text


def test_a_missed_target_above_the_floor_gets_no_excuse() -> None:
    runs = [run("manual", 4, 42.0, 20.0, 2.0), run("pulumi", 4, 30.0, 20.0, 4.0)]
    line = verdicts(summarize(runs, [4], cores=2))[1]
    assert line == "(b)/(a) on 4 hosts <= 0.6: 0.714 -> MISSED"
