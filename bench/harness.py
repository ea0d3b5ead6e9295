"""`make bench`: the manual's procedure against `pulumi up`, side by side on the lab.

The lab is brought to the largest host count (`lab/lab up`), then for R rounds (BENCH_ROUNDS,
default 3), for each CPU budget (BENCH_BUDGETS: "budgeted" hosts, each capped at the same
LAB_HOST_CPUS = (cores - BENCH_OPERATOR_CPUS) / largest N, as separate servers each have
their own CPU; then "unbudgeted" hosts that share the machine's cores), for each host count N
(default 1, 2, 4, 8), alternating which goes first:

  (a) bench/manual.sh N from clean hosts until a chat completion answers;
  (b) `pulumi up` of a throwaway stack (Pulumi.lab.yaml on hosts 1..N, TP from the stack,
      PP = N) from clean hosts until the endpoint is exported, with the engine's event log
      read live for a per-resource timing;
  (c) a no-change `pulumi up` of that stack (`--expect-no-changes`);
  (d) `pulumi destroy`.

Hosts are cleaned before (a) and (b) (containers, the loaded image, the weights:
`bench/manual.sh clean N`), so both do the same work. The machine is noisy, so the figures
that matter are medians and the ratio (b)/(a) measured in the same run.

Results: bench/results/results.json (every run, raw) and results.md (table, targets,
slowest steps), rewritten after every run so a cut-short run still leaves what it measured.
Event logs and manual step logs of each run go under .state/bench/<run id>/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from bench.events import (
    StepTiming,
    critical_path,
    path_line,
    phases,
    slowest_table,
    step_timings,
    up_with_event_log,
)
from bench.plot import plot_results
from components.parallelism import STEPS_PER_HOST
from tests.e2e.lab_stack import REPO, chat, lab_config, lab_serving_lock, write_stack_config
from tests.e2e.pulumi_cli import temporary_stack

LAB_DIR = Path(os.environ.get("LAB_DIR", REPO / ".lab"))
INVENTORY = LAB_DIR / "inventory.json"
MANUAL = REPO / "bench" / "manual.sh"
LAB = REPO / "lab" / "lab"
RESULTS = REPO / "bench" / "results"
STACK_PREFIX = "e2e-bench"  # Pulumi.e2e-*.yaml is gitignored: a killed run leaves no noise
PULUMI_OPS = ("up", "destroy", "preview", "refresh")
# Lab hosts are never removed by the benchmark (others may use them): N < 2 keeps 2 hosts.
MIN_LAB_HOSTS = 2
# The targets (issue 16), judged on budgeted hosts: (b)/(a) per host count, (b)@8 / (b)@1,
# the no-change up on 8 hosts and its growth from 1 host.
RATIO_MAX = {2: 1.0, 4: 0.6, 8: 0.4}
GROWTH_HOSTS = 8
GROWTH_MAX = 1.5
NOOP_HOSTS = 8
NOOP_MAX_S = 6.0
NOOP_GROWTH_MAX = 2.0
BUDGETS = ("budgeted", "unbudgeted")
# The operator side's share of the machine when hosts are budgeted: what is left for
# manual.sh, pulumi, its plugins and ssh while every host is busy.
OPERATOR_CPUS = 0.5


def log(msg: str) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
    print(f"[bench {stamp}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- the lab


def lab_up(count: int, host_cpus: float | None = None) -> None:
    """`lab/lab up count`, every host capped at `host_cpus` cores (None: no cap). A changed
    cap recreates the hosts (their Docker volumes are kept; clean() runs before each run)."""
    log(f"lab up {count}" + (f", {host_cpus:g} CPU per host" if host_cpus else ", no CPU cap"))
    env = {**os.environ, "LAB_HOST_CPUS": f"{host_cpus:g}" if host_cpus else ""}
    subprocess.run([str(LAB), "up", str(count)], check=True, cwd=REPO, env=env)


def host_cpu_budget(cores: int, largest: int, operator_cpus: float = OPERATOR_CPUS) -> float:
    """Each host's fixed CPU: the same for every host count, and small enough that the
    largest count of busy hosts still leaves the operator side its share."""
    budget = (cores - operator_cpus) / largest
    if budget < 0.05:
        raise SystemExit(
            f"bench: {largest} hosts on {cores} cores leave {budget:.3f} CPU per host "
            "(less than 0.05): use fewer hosts (BENCH_HOSTS) or BENCH_OPERATOR_CPUS"
        )
    return round(budget, 3)


def inventory() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(INVENTORY.read_text())
    return data


def pulumi_busy() -> list[str]:
    """Command lines of running `pulumi up|destroy|preview|refresh` (anyone's)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if len(words) > 1 and Path(words[0]).name == "pulumi" and words[1] in PULUMI_OPS:
            found.append(" ".join(words))
    return found


def host_containers(count: int) -> dict[str, list[str]]:
    """Running containers inside lab hosts 1..count that manual.sh did not start (only
    hosts that have some). After `pulumi destroy` none of them is ours."""
    busy: dict[str, list[str]] = {}
    for i in range(1, count + 1):
        out = subprocess.run(
            [
                "docker",
                "exec",
                f"vllm-lab-{i}",
                "docker",
                "ps",
                "--format",
                '{{.Names}} {{.Label "vllm-cluster.bench"}}',
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(
                f"bench: lab host lab-{i} does not answer ({out.stderr.strip()}). Fix: "
                f"`make lab-up LAB_HOSTS={count}`, or run without --no-lab"
            )
        names = [
            line.split()[0] for line in out.stdout.splitlines() if line.split()[1:] != ["manual"]
        ]
        if names:
            busy[f"lab-{i}"] = names
    return busy


def wait_idle(count: int, max_wait_s: float) -> None:
    """The lab is shared: wait until no `pulumi` operation runs and hosts 1..count run no
    container (ours are removed after each run, so anything left belongs to someone else)."""
    waited = 0.0
    while True:
        running = pulumi_busy()
        containers = host_containers(count)
        if not running and not containers:
            return
        if waited >= max_wait_s:
            raise RuntimeError(
                f"lab still busy after {waited:.0f}s: pulumi {running}, containers {containers}"
            )
        log(f"lab busy (pulumi: {len(running)}, containers: {containers}); waiting 30 s")
        time.sleep(30)
        waited += 30


def clean(count: int, max_wait_s: float) -> None:
    """`manual.sh clean N`; it refuses (exit 3) hosts that run someone else's container:
    then wait and retry, as for a busy lab."""
    waited = 0.0
    while True:
        rc = subprocess.run([str(MANUAL), "clean", str(count)], cwd=REPO, check=False).returncode
        if rc == 0:
            return
        if rc != 3:
            raise RuntimeError(f"manual.sh clean {count} exited {rc}")
        if waited >= max_wait_s:
            raise RuntimeError(f"hosts still in use by others after {waited:.0f}s; not cleaned")
        log("a host is in use by someone else; waiting 30 s before cleaning")
        time.sleep(30)
        waited += 30


# ------------------------------------------------------------------------------- model

# The lab's tiny model has 2 layers, so PP (= N hosts) stops at 2: the planner refuses PP 4
# ("each stage needs a layer"). The benchmark uses the same tiny Llama with 8 layers, made
# by the lab's own generator, for every host count (so N = 1, 2, 4, 8 move the same bytes).
BENCH_LAYERS = 8
BENCH_MODEL = REPO / ".state" / "bench" / "model" / f"tiny-llama-{BENCH_LAYERS}l"


def ensure_bench_model() -> Path:
    config = BENCH_MODEL / "config.json"
    if config.exists() and json.loads(config.read_text())["num_hidden_layers"] == BENCH_LAYERS:
        return BENCH_MODEL
    log(f"making the {BENCH_LAYERS}-layer tiny model in {BENCH_MODEL}")
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'lab/engine'); "
        "import make_tiny_model as m; "
        f"m.CONFIG['num_hidden_layers'] = {BENCH_LAYERS}; m.build(Path(sys.argv[1]))"
    )
    BENCH_MODEL.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", script, str(BENCH_MODEL)], check=True, cwd=REPO)
    return BENCH_MODEL


# ------------------------------------------------------------------------------- CPU


def _host_cpu_ns(index: int) -> int | None:
    """CPU time used so far by lab host `index` and everything in it (its dockerd and the
    engine containers are charged to the host's cgroup), in ns; None when not readable."""
    cid = subprocess.run(
        ["docker", "inspect", "-f", "{{.Id}}", f"vllm-lab-{index}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
    v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")
    if cid and v1.exists():
        return int(v1.read_text())
    if cid and v2.exists():
        for line in v2.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) * 1000
    return None


def _machine_busy_s() -> float:
    """CPU seconds spent busy by the whole machine since boot (/proc/stat, all CPUs)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used during one timed run: by lab hosts 1..N, by this process's children
    (manual.sh and its ssh/scp, or pulumi with its plugins, program and ssh), and by the
    whole machine (the rest is other people's load on the shared machine: noise)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __enter__(self) -> CpuMeter:
        self.hosts0 = [_host_cpu_ns(i) for i in range(1, self.count + 1)]
        self.children0 = self._children()
        self.machine0 = _machine_busy_s()
        self.wall0 = time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        wall = time.monotonic() - self.wall0
        hosts1 = [_host_cpu_ns(i) for i in range(1, self.count + 1)]
        pairs = list(zip(self.hosts0, hosts1, strict=True))
        per_host = (
            [(b - a) / 1e9 for a, b in pairs if a is not None and b is not None]
            if all(a is not None and b is not None for a, b in pairs)
            else None
        )
        hosts = None if per_host is None else sum(per_host)
        operator = self._children() - self.children0
        machine = _machine_busy_s() - self.machine0
        self.result = {
            "hosts_cpu_s": None if hosts is None else round(hosts, 2),
            # The busiest host bounds a parallel run on budgeted hosts.
            "max_host_cpu_s": None if not per_host else round(max(per_host), 2),
            "operator_cpu_s": round(operator, 2),
            "machine_cpu_s": round(machine, 2),
            "machine_busy_cores": round(machine / wall, 2) if wall > 0 else None,
        }

    @staticmethod
    def _children() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------- runs


def save_container_logs(count: int, path: Path) -> None:
    """`docker logs -t` of the engine containers on hosts 1..count, into one file (not timed;
    the timestamps show where the serving phase spends its time: Ray start, join, load)."""
    parts = []
    for i in range(1, count + 1):
        for name in ("vllm-server", "vllm-ray-head", "vllm-ray-worker"):
            proc = subprocess.run(
                ["docker", "exec", f"vllm-lab-{i}", "docker", "logs", "-t", name],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode == 0:
                parts.append(f"==== lab-{i} {name}\n{proc.stdout}{proc.stderr}")
        # manual.sh's API server runs by `docker exec` in the head and logs to a file there.
        inner = ["docker", "exec", "vllm-ray-head", "cat", "/tmp/api_server.log"]
        api = subprocess.run(
            ["docker", "exec", f"vllm-lab-{i}", *inner],
            capture_output=True,
            text=True,
            check=False,
        )
        if api.returncode == 0:
            parts.append(f"==== lab-{i} vllm-ray-head:/tmp/api_server.log\n{api.stdout}")
    path.write_text("\n".join(parts))


def run_manual(count: int, logdir: Path) -> dict[str, Any]:
    steps_file = logdir / f"manual-{count}-steps.tsv"
    steps_file.unlink(missing_ok=True)
    started = time.monotonic()
    with (logdir / f"manual-{count}.log").open("a") as out, CpuMeter(count) as cpu:
        proc = subprocess.run(
            [str(MANUAL), str(count)],
            cwd=REPO,
            env={
                **os.environ,
                "MANUAL_STEPS_FILE": str(steps_file),
                "MANUAL_LOCAL_MODEL": str(BENCH_MODEL),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.monotonic() - started
    save_container_logs(count, logdir / f"containers-manual-{count}-{time.time():.0f}.log")
    steps = []
    if steps_file.exists():
        for line in steps_file.read_text().splitlines():
            name, host, secs = line.split("\t")
            steps.append({"step": name, "host": host, "seconds": float(secs)})
    result: dict[str, Any] = {"seconds": round(seconds, 2), "cpu": cpu.result, "steps": steps}
    if proc.returncode != 0:
        result["error"] = f"manual.sh exited {proc.returncode} (log {out.name})"
    return result


def stack_hosts(count: int) -> list[dict[str, Any]]:
    """Pulumi.lab.yaml's host entries, extended to `count` lab hosts from the inventory
    (the stack file lists two; every lab host has the same simulated GPUs)."""
    doc = yaml.safe_load((REPO / "Pulumi.lab.yaml").read_text())
    template = doc["config"]["vllm-cluster:hosts"][0]
    hosts = []
    for host in inventory()["hosts"][:count]:
        entry = json.loads(json.dumps(template))
        entry.update(name=host["name"], address=host["address"], nic=host.get("nic", "eth0"))
        hosts.append(entry)
    if len(hosts) < count:
        raise RuntimeError(f"the lab has {len(hosts)} host(s), {count} needed")
    return hosts


def engine_env(count: int) -> dict[str, str]:
    """How the benchmark runs the Pulumi engine, as the README tells operators to: enough
    parallel operations for every host at once (what the program's warning asks for), and
    the drift checks' diffs asked in parallel (PULUMI_PARALLEL_DIFF; without it the engine
    asks them one at a time)."""
    return {
        "PULUMI_PARALLEL": str(max(8, STEPS_PER_HOST * count)),
        "PULUMI_PARALLEL_DIFF": "true",
    }


def run_pulumi(count: int, logdir: Path, tag: str) -> dict[str, Any]:
    """(b) up from clean hosts, (c) a no-change up, (d) destroy, on one throwaway stack."""
    overrides = {
        "hosts": stack_hosts(count),
        # Ray, as the manual (bench/manual.sh) starts the engine, so both sides do the same
        # host work; and the same path as the runs before vLLM's own launcher existed.
        "serving": {"pipeline_parallel_size": count, "distributed_backend": "ray"},
        "model": {"local_dir": str(BENCH_MODEL)},
    }
    result: dict[str, Any] = {"engine_env": engine_env(count)}
    # tests.e2e.lab_stack.lab_stack without its serving lock: the caller holds it already
    # for the whole run (clean, up, no-change up, destroy, clean).
    with temporary_stack(REPO, prefix=STACK_PREFIX) as stack:
        write_stack_config(stack, lab_config(overrides, count))
        stack.env.update(result["engine_env"])
        started = time.monotonic()
        with CpuMeter(count) as cpu:
            up, events = up_with_event_log(stack, logdir / f"events-{tag}.jsonl", started)
        result["up_s"] = round(time.monotonic() - started, 2)
        result["cpu"] = cpu.result
        (logdir / f"up-{tag}.log").write_text(up.output)
        steps = step_timings(events)
        result["up_steps"] = [s.to_dict() for s in steps]
        result["up_phases"] = phases(events, result["up_s"])
        # Not timed: the endpoint answers (the manual's run ends with an answer, too).
        out = stack.outputs(show_secrets=True)
        answer = chat(out["endpoint"], out["api_key"], out["served_model_name"])
        if answer.status_code != 200:
            raise RuntimeError(f"endpoint {out['endpoint']} answered {answer.status_code}")
        save_container_logs(count, logdir / f"containers-{tag}.log")

        started = time.monotonic()
        noop, noop_events = up_with_event_log(
            stack, logdir / f"events-{tag}-noop.jsonl", started, ("--expect-no-changes",)
        )
        result["noop_up_s"] = round(noop.duration_s, 2)
        # Where a no-change up spends its time: starting up, and when the last drift check
        # of any host answered (its diff is the only step that leaves this machine).
        result["noop_phases"] = phases(noop_events, result["noop_up_s"])
        checks = [s.end_s for s in step_timings(noop_events) if s.name.endswith("-check")]
        result["noop_checks_done_s"] = round(max(checks), 2) if checks else None
        # The same, with the engine asking the drift checks' diffs one at a time (its default).
        del stack.env["PULUMI_PARALLEL_DIFF"]
        serial = stack.up(expect_no_changes=True)
        result["noop_up_serial_diff_s"] = round(serial.duration_s, 2)
        destroy = stack.destroy()
        result["destroy_s"] = round(destroy.duration_s, 2)
    return result


# ------------------------------------------------------------------------------- summary


def steps_of(run: Mapping[str, Any]) -> list[StepTiming]:
    """The per-resource timing of a recorded `pulumi up` run."""
    return [
        StepTiming(**{k: v for k, v in s.items() if k != "duration_s"}) for s in run["up_steps"]
    ]


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def cpu_floor_s(
    cpu: Mapping[str, float | None], cores: int, host_cpus: float | None = None, kind: str = ""
) -> float | None:
    """The shortest wall time the measured work could take, whatever the order of steps.
    Unbudgeted hosts share the machine: the CPU the hosts and the operator side used, spread
    over every core. Budgeted hosts each have `host_cpus`: the busiest host's CPU at that
    budget (no host can go faster; the operator side runs beside them). For the manual this
    is a floor, not its own time: it copies and loads one host after another, but its Ray
    nodes then run on all hosts at once, so "all host CPU at one budget" is no bound."""
    hosts, operator = cpu.get("hosts_cpu_s"), cpu.get("operator_cpu_s")
    if host_cpus:
        busiest = cpu.get("max_host_cpu_s")
        return None if busiest is None else round(busiest / host_cpus, 2)
    if hosts is None or operator is None:
        return None
    return round((hosts + operator) / cores, 2)


def summarize(
    runs: list[dict[str, Any]], counts: list[int], cores: int, host_cpus: float | None = None
) -> dict[str, Any]:
    """Medians per host count of the runs of one CPU budget (`host_cpus` per host, or None:
    the hosts share the machine)."""
    per_n: dict[str, Any] = {}
    for n in counts:
        mine = [r for r in runs if r["hosts"] == n and "error" not in r]
        manual = [r["seconds"] for r in mine if r["kind"] == "manual"]
        pulumi = [r for r in mine if r["kind"] == "pulumi"]
        row: dict[str, Any] = {
            "rounds_manual": len(manual),
            "rounds_pulumi": len(pulumi),
            "manual_s": median(manual),
            "up_s": median([r["up_s"] for r in pulumi]),
            "noop_up_s": median([r["noop_up_s"] for r in pulumi]),
            "noop_up_serial_diff_s": median(
                [r["noop_up_serial_diff_s"] for r in pulumi if "noop_up_serial_diff_s" in r]
            ),
            "destroy_s": median([r["destroy_s"] for r in pulumi]),
            "noop_checks_done_s": median(
                [r["noop_checks_done_s"] for r in pulumi if r.get("noop_checks_done_s")]
            ),
        }
        row["ratio"] = (
            round(row["up_s"] / row["manual_s"], 3) if row["up_s"] and row["manual_s"] else None
        )
        # Manual steps: median seconds per step kind, summed over hosts within a run.
        totals: dict[str, list[float]] = {}
        for r in (x for x in mine if x["kind"] == "manual"):
            per_run: dict[str, float] = {}
            for s in r["steps"]:
                per_run[s["step"]] = per_run.get(s["step"], 0.0) + s["seconds"]
            for k, v in per_run.items():
                totals.setdefault(k, []).append(v)
        row["manual_steps_s"] = {k: median(v) for k, v in totals.items()}
        keys = ("hosts_cpu_s", "max_host_cpu_s", "operator_cpu_s", "machine_cpu_s")
        row["cpu"] = {
            kind: {
                key: median([r["cpu"][key] for r in runs_ if r.get("cpu", {}).get(key) is not None])
                for key in (*keys, "machine_busy_cores")
            }
            for kind, runs_ in (
                ("manual", [r for r in mine if r["kind"] == "manual"]),
                ("pulumi", pulumi),
            )
        }
        row["cpu_floor_s"] = {
            kind: cpu_floor_s(row["cpu"][kind], cores, host_cpus, kind) for kind in row["cpu"]
        }
        per_n[str(n)] = row

    def grown(key: str) -> float | None:
        first, last = per_n.get("1", {}).get(key), per_n.get(str(GROWTH_HOSTS), {}).get(key)
        return round(last / first, 3) if first and last else None

    return {
        "per_hosts": per_n,
        "growth_up": grown("up_s"),
        "growth_noop_up": grown("noop_up_s"),
        "cores": cores,
        "host_cpus": host_cpus,
    }


def summarize_budgets(
    runs: list[dict[str, Any]], counts: list[int], cores: int, host_cpus: float
) -> dict[str, Any]:
    """One summary per CPU budget that has runs."""
    return {
        budget: summarize(
            [r for r in runs if r.get("budget", "unbudgeted") == budget],
            counts,
            cores,
            host_cpus if budget == "budgeted" else None,
        )
        for budget in BUDGETS
        if any(r.get("budget", "unbudgeted") == budget for r in runs)
    }


def floor_note(row: Mapping[str, Any], target_s: float, summary: Mapping[str, Any]) -> str:
    """Why a missed time target cannot be met, when the CPU that (b) used already needs more
    wall time than the target allows; empty otherwise."""
    floor = row.get("cpu_floor_s", {}).get("pulumi")
    if floor is None or floor <= target_s:
        return ""
    cpu = row["cpu"]["pulumi"]
    if summary.get("host_cpus"):
        return (
            f"; below the hosts' floor: the target allows {target_s:.1f} s, the busiest host's "
            f"{cpu['max_host_cpu_s']:.1f} CPU-s need >= {floor:.1f} s at "
            f"{summary['host_cpus']:g} CPU per host"
        )
    note = (
        f"; below this machine's floor: the target allows {target_s:.1f} s, the "
        f"{cpu['hosts_cpu_s']:.1f} + {cpu['operator_cpu_s']:.1f} CPU-s (hosts + operator) "
        f"of (b) need >= {floor:.1f} s on {summary['cores']} cores"
    )
    manual_floor = row["cpu_floor_s"].get("manual")
    if manual_floor is not None:
        note += f" (the manual's own work, >= {manual_floor:.1f} s)"
    return note


def verdicts(summary: dict[str, Any]) -> list[str]:
    def mark(ok: bool | None) -> str:
        return "n/a (not measured)" if ok is None else ("met" if ok else "MISSED")

    per = summary["per_hosts"]
    lines = []
    for n, limit in RATIO_MAX.items():
        row = per.get(str(n), {})
        ratio = row.get("ratio")
        ok = None if ratio is None else ratio <= limit
        note = "" if ok in (None, True) else floor_note(row, limit * row["manual_s"], summary)
        lines.append(f"(b)/(a) on {n} hosts <= {limit}: {ratio} -> {mark(ok)}{note}")
    growth = summary["growth_up"]
    ok = None if growth is None else growth <= GROWTH_MAX
    note = ""
    if ok is False:
        note = floor_note(per[str(GROWTH_HOSTS)], GROWTH_MAX * per["1"]["up_s"], summary)
    lines.append(f"(b)@{GROWTH_HOSTS} / (b)@1 <= {GROWTH_MAX}: {growth} -> {mark(ok)}{note}")
    noop = per.get(str(NOOP_HOSTS), {}).get("noop_up_s")
    ok = None if noop is None else noop < NOOP_MAX_S
    lines.append(f"no-change up on {NOOP_HOSTS} hosts < {NOOP_MAX_S:.0f} s: {noop} -> {mark(ok)}")
    grown = summary["growth_noop_up"]
    ok = None if grown is None else grown <= NOOP_GROWTH_MAX
    lines.append(f"no-change up @{NOOP_HOSTS} / @1 <= {NOOP_GROWTH_MAX}: {grown} -> {mark(ok)}")
    return lines


def fmt(value: float | None, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.2f}{suffix}" if suffix else f"{value:.3g}"


def budget_section(name: str, summary: dict[str, Any]) -> list[str]:
    per = summary["per_hosts"]
    cap = summary.get("host_cpus")
    title = (
        f"## Budgeted hosts: {cap:g} CPU each (`docker --cpus`), as separate servers"
        if cap
        else f"## Unbudgeted hosts: all share this machine's {summary['cores']} cores"
    )
    out = [
        title,
        "",
        "| hosts | (a) manual | (b) `pulumi up` | (b)/(a) | (c) no-change up "
        "| (c) diffs one at a time | (d) destroy | rounds a/b |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, row in per.items():
        out.append(
            f"| {n} | {fmt(row['manual_s'], ' s')} | {fmt(row['up_s'], ' s')} | "
            f"{fmt(row['ratio'])} | {fmt(row['noop_up_s'], ' s')} | "
            f"{fmt(row.get('noop_up_serial_diff_s'), ' s')} | "
            f"{fmt(row['destroy_s'], ' s')} | {row['rounds_manual']}/{row['rounds_pulumi']} |"
        )
    out += [
        "",
        f"Growth from 1 to {GROWTH_HOSTS} hosts: (b) {fmt(summary['growth_up'])}, "
        f"(c) {fmt(summary['growth_noop_up'])}",
        "",
        "(c), when the last drift check answered (the one step of a no-change up that leaves "
        "this machine; median seconds since it started): "
        + (
            ", ".join(
                f"{n} host(s) {fmt(row.get('noop_checks_done_s'), ' s')}" for n, row in per.items()
            )
        ),
        "",
        "CPU seconds used during (a) and (b) (medians): by the lab hosts (their dockerd and "
        "engine containers; `busiest` is the host that used most), by the operator side "
        "(manual.sh with ssh/scp; pulumi with its plugins, the program and ssh), and how many "
        "of the machine's cores were busy (other load is other people's work). "
        + (
            "`floor`: the shortest wall time the host work could take at this budget, in any "
            "order: the busiest host's CPU at its budget."
            if cap
            else "`floor`: that CPU (hosts + operator) spread over every core: the shortest "
            "wall time the same work could take here."
        ),
        "",
        "| hosts | hosts CPU (a) | hosts CPU (b) | busiest (b) | operator CPU (a) "
        "| operator CPU (b) | busy cores (a) | busy cores (b) | floor (a) | floor (b) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, row in per.items():
        a, b = row["cpu"]["manual"], row["cpu"]["pulumi"]
        floor = row.get("cpu_floor_s", {})
        out.append(
            f"| {n} | {fmt(a['hosts_cpu_s'], ' s')} | {fmt(b['hosts_cpu_s'], ' s')} "
            f"| {fmt(b.get('max_host_cpu_s'), ' s')} "
            f"| {fmt(a['operator_cpu_s'], ' s')} | {fmt(b['operator_cpu_s'], ' s')} "
            f"| {fmt(a['machine_busy_cores'])} | {fmt(b['machine_busy_cores'])} "
            f"| {fmt(floor.get('manual'), ' s')} | {fmt(floor.get('pulumi'), ' s')} |"
        )
    out.append("")
    if cap:
        out += ["### Targets", ""] + [f"- {line}" for line in verdicts(summary)] + [""]
    out += ["### Manual steps (median seconds per run, summed over hosts)", ""]
    for n, row in per.items():
        steps = ", ".join(f"{k} {v:.1f}" for k, v in row["manual_steps_s"].items() if v)
        out.append(f"- {n} host(s): {steps or '—'}")
    out.append("")
    return out


def markdown(meta: Mapping[str, Any], runs: list[dict[str, Any]], summaries: dict[str, Any]) -> str:
    with_env = [r for r in runs if "engine_env" in r]
    largest = max(with_env, key=lambda r: r["hosts"], default=None)
    engine = largest["engine_env"] if largest else None
    out = [
        "# Benchmark: the manual's procedure vs `pulumi up` on the lab",
        "",
        f"Run `{meta['run_id']}` ({meta['started']} .. {meta.get('finished', 'in progress')}), "
        f"{meta['rounds']} round(s) per host count and budget"
        + (
            " planned, cut short by BENCH_DEADLINE (`rounds a/b` says how many ran)"
            if meta.get("complete") is False
            else ""
        )
        + ", (a) and (b) alternating, clean "
        "hosts before each. Lab: simulated GPUs (2 per host), stand-in engine, tiny model; "
        "SSH, Docker, `docker load`, Ray and HTTP are real. Medians in seconds. (b) runs with "
        f"{', '.join(f'`{k}={v}`' for k, v in (engine or {}).items()) or 'default flags'} "
        "at the largest host count (`PULUMI_PARALLEL` = 4 per host, at least 8), as the "
        "README tells operators; `(c) diffs one at a time` is the no-change up again without "
        "`PULUMI_PARALLEL_DIFF` (the engine's default).",
        "",
    ]
    for name in BUDGETS:
        if name in summaries:
            out += budget_section(name, summaries[name])
    errors = [r for r in runs if "error" in r]
    if errors:
        out += ["## Failed runs", ""]
        out += [
            f"- {r.get('budget', 'unbudgeted')}, {r['kind']} on {r['hosts']} host(s), round "
            f"{r['round']}: {r['error']}"
            for r in errors
        ]
        out.append("")
    shared = [r for r in runs if "lab_shared" in r]
    if shared:
        out += ["## Runs that ended with others on the lab (figures may be skewed)", ""]
        out += [
            f"- {r['kind']} on {r['hosts']} host(s), round {r['round']}: {r['lab_shared']}"
            for r in shared
        ]
        out.append("")
    out += ["## Slowest steps of one `pulumi up` (last successful round per host count)", ""]
    for name in BUDGETS:
        for n in summaries.get(name, {}).get("per_hosts", {}):
            last = [
                r
                for r in runs
                if r["hosts"] == int(n)
                and "up_steps" in r
                and r.get("budget", "unbudgeted") == name
            ]
            if not last:
                continue
            r = last[-1]
            out += [
                f"{name}, {n} host(s), round {r['round']}: up {r['up_s']:.2f} s; "
                f"phases {r['up_phases']}",
                "",
                "```",
                slowest_table(steps_of(r)),
                "```",
                "",
                f"Critical path (from timing): {path_line(critical_path(steps_of(r)))}",
                "",
            ]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", default=os.environ.get("BENCH_HOSTS", "1,2,4,8"))
    p.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    p.add_argument(
        "--budgets",
        default=os.environ.get("BENCH_BUDGETS", ",".join(BUDGETS)),
        help="which of budgeted,unbudgeted to measure (both by default)",
    )
    p.add_argument(
        "--operator-cpus",
        type=float,
        default=float(os.environ.get("BENCH_OPERATOR_CPUS", str(OPERATOR_CPUS))),
        help="cores left to the operator side when hosts are budgeted",
    )
    p.add_argument(
        "--deadline",
        default=os.environ.get("BENCH_DEADLINE"),
        help="HH:MM (UTC): start no new run after this; results stay partial",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=float(os.environ.get("BENCH_MAX_WAIT_S", "1800")),
        help="seconds to wait for a busy lab before giving up",
    )
    p.add_argument("--no-lab", action="store_true", help="do not run `lab up` (hosts exist)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--render",
        action="store_true",
        help="only rewrite results.md and the plot from the results.json in --out (no runs)",
    )
    args = p.parse_args(argv)
    args.budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    unknown = sorted(set(args.budgets) - set(BUDGETS))
    if unknown or not args.budgets:
        p.error(f"--budgets / BENCH_BUDGETS: {unknown or 'none'}; choose from {','.join(BUDGETS)}")
    return args


def write_results(out: Path, doc: dict[str, Any]) -> None:
    """results.json, results.md and the plot (bench/plot.py), from one document."""
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "results.md").write_text(markdown(doc["meta"], doc["runs"], doc["summary"]))
    plot_results(doc, out / "bench.png")


def deadline_passed(deadline: str | None) -> bool:
    if not deadline:
        return False
    now = dt.datetime.now(dt.UTC)
    hh, mm = (int(x) for x in deadline.split(":"))
    return now >= now.replace(hour=hh, minute=mm, second=0, microsecond=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render:
        doc = json.loads((args.out / "results.json").read_text())
        cores = int(doc["meta"].get("machine", {}).get("cpus") or os.cpu_count() or 1)
        doc["summary"] = summarize_budgets(
            doc["runs"], doc["meta"]["hosts"], cores, float(doc["meta"].get("host_cpus") or 0)
        )
        write_results(args.out, doc)
        print((args.out / "results.md").read_text())
        return 0
    counts = [int(x) for x in args.hosts.split(",")]
    cores = os.cpu_count() or 1
    host_cpus = host_cpu_budget(cores, max(counts), args.operator_cpus)
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    logdir = REPO / ".state" / "bench" / run_id
    logdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "run_id": run_id,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "hosts": counts,
        "budgets": args.budgets,
        "host_cpus": host_cpus,
        "operator_cpus": args.operator_cpus,
        "machine": {"cpus": cores},
        "logs": str(logdir),
    }
    runs: list[dict[str, Any]] = []

    def save() -> dict[str, Any]:
        summaries = summarize_budgets(runs, counts, cores, host_cpus)
        write_results(args.out, {"meta": meta, "summary": summaries, "runs": runs})
        return summaries

    kinds: dict[str, Callable[[int, int], dict[str, Any]]] = {
        "manual": lambda n, r: run_manual(n, logdir),
        "pulumi": lambda n, r: run_pulumi(n, logdir, f"{n}-{r}"),
    }
    if args.no_lab and args.budgets != ["unbudgeted"]:
        raise SystemExit("bench: --no-lab measures the lab as it is: use --budgets unbudgeted")
    meta["model"] = str(ensure_bench_model())
    # Rounds outermost: after round 1 every budget and host count has a figure, so a run cut
    # short by the deadline still fills both tables; later rounds add to the medians. Hosts
    # beyond N stay idle while N hosts are measured.
    schedule = [
        (r, budget, n, kind)
        for r in range(1, args.rounds + 1)
        for budget in args.budgets
        for n in counts
        for kind in (("manual", "pulumi") if r % 2 else ("pulumi", "manual"))
    ]
    stopped = False
    lab_budget: str | None = None
    for r, budget, n, kind in schedule:
        if deadline_passed(args.deadline):
            log(f"deadline {args.deadline} UTC passed: stopping (results are partial)")
            stopped = True
            break
        if not args.no_lab and budget != lab_budget:
            lab_up(max(*counts, MIN_LAB_HOSTS), host_cpus if budget == "budgeted" else None)
            lab_budget = budget
        record: dict[str, Any] = {"hosts": n, "round": r, "kind": kind, "budget": budget}
        if budget == "budgeted":
            record["host_cpus"] = host_cpus
        # The lab's serving lock (the e2e stacks take it too) for the whole run, and an idle
        # lab besides (someone may work on it without the lock).
        with lab_serving_lock(args.max_wait):
            wait_idle(n, args.max_wait)
            clean(n, args.max_wait)
            log(f"{budget}, {n} host(s), round {r}: {kind}")
            try:
                record.update(kinds[kind](n, r))
            except Exception as exc:  # recorded and reported; the next run goes on
                record["error"] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
            finally:
                # Someone else's work on the lab at the end of a run: the figure may be skewed.
                others = {"pulumi": pulumi_busy(), "containers": host_containers(n)}
                if others["pulumi"] or others["containers"]:
                    record["lab_shared"] = others
                clean(n, args.max_wait)
        runs.append(record)
        shown = {k: v for k, v in record.items() if k not in ("steps", "up_steps")}
        log(f"  -> {shown}")
        if kind == "pulumi" and "up_steps" in record:
            steps = steps_of(record)
            log("  slowest steps of this `pulumi up`:\n" + slowest_table(steps))
            log("  critical path: " + path_line(critical_path(steps)))
        save()
    if not args.no_lab:
        # Leave the shared lab as it is normally used: 2 hosts, no CPU cap.
        lab_up(MIN_LAB_HOSTS)
    meta["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    meta["complete"] = not stopped
    summaries = save()
    print(markdown(meta, runs, summaries))
    return 0
