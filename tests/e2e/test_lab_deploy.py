"""End to end on the lab through the real `pulumi` CLI: the README's promise, checked on
what actually exists on the hosts. One 2-host stack (TP 2 x PP 2 across both) is brought up
once and taken through re-run, drift, a config change and destroy, in order; once for each
multi-node backend: vLLM's own launcher (mp, the default) and Ray.

The GPUs and the engine are simulated (lab fixtures); SSH, Docker, Ray and HTTP are real.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bench.events import StepTiming, step_timings, up_with_event_log
from tests.e2e.lab_stack import REPO, chat, containers_on, host_exec, lab_config, lab_stack
from tests.e2e.pulumi_cli import PulumiStack

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

MODEL_PATH = "/data/models/tiny-llama"
HOSTS = ("1", "2")
# Local weights default to a push from the operator to every host; this stack takes the
# fan-out path (head first, then lab-2 copies from it) so it is exercised end to end.
FANOUT = {"model": {"distribute": "fanout"}}


@dataclass(frozen=True)
class Backend:
    name: str
    head_container: str
    worker_container: str
    head_resource: str
    worker_resource: str


BACKENDS = {
    "mp": Backend("mp", "vllm-server", "vllm-headless", "serving-server", "serving-headless-lab-2"),
    "ray": Backend(
        "ray", "vllm-ray-head", "vllm-ray-worker", "serving-head", "serving-worker-lab-2"
    ),
}
BACKEND = Backend("", "", "", "", "")  # the module's current one (set by `deployed`)
# The steps of the first `up` of the current `deployed` stack, from its event log.
FIRST_UP_STEPS: list[StepTiming] = []


def overrides(backend: str, **serving: Any) -> dict[str, Any]:
    return {**FANOUT, "serving": {"distributed_backend": backend, **serving}}


@pytest.fixture(scope="module", params=list(BACKENDS))
def deployed(
    lab: Any, request: pytest.FixtureRequest
) -> Iterator[tuple[PulumiStack, dict[str, Any]]]:
    global BACKEND
    BACKEND = BACKENDS[request.param]
    with (
        lab_stack(f"e2e-{BACKEND.name}", overrides(BACKEND.name)) as stack,
        tempfile.TemporaryDirectory(prefix="e2e-events-") as tmp,
    ):
        started = time.monotonic()
        _, events = up_with_event_log(stack, Path(tmp) / "events.jsonl", started)
        FIRST_UP_STEPS[:] = step_timings(events)
        print(f"\nfull up (2 hosts, TP2 x PP2, {BACKEND.name}): {time.monotonic() - started:.1f} s")
        yield stack, stack.outputs(show_secrets=True)


def test_hosts_converge_in_parallel(deployed: tuple[PulumiStack, dict[str, Any]]) -> None:
    """From the engine's event log of the first `up`: each host's own steps (preflight,
    image check and load, ...) run at the same time as the other host's, not one host after
    the other (as the README and the benchmark claim)."""
    spans = {}
    for h in HOSTS:
        own = [s for s in FIRST_UP_STEPS if s.custom and s.name.startswith(f"lab-{h}-")]
        names = {s.name for s in own}
        assert {f"lab-{h}-preflight", f"lab-{h}-image-load"} <= names, sorted(names)
        spans[h] = (min(s.start_s for s in own), max(s.end_s for s in own))
    (a_start, a_end), (b_start, b_end) = spans.values()
    overlap = min(a_end, b_end) - max(a_start, b_start)
    assert overlap > 0, f"host steps ran one host after the other: {spans}"
    first = {h: next(s for s in FIRST_UP_STEPS if s.name == f"lab-{h}-preflight") for h in HOSTS}
    assert abs(first["1"].start_s - first["2"].start_s) < 1.0, first


def test_up_serves_across_both_hosts_with_key_and_401_without(
    deployed: tuple[PulumiStack, dict[str, Any]],
) -> None:
    _, out = deployed
    assert out["endpoint"] == "http://172.31.250.11:8000/v1"
    assert out["plan"]["tensor_parallel_size"] == 2
    assert out["plan"]["pipeline_parallel_size"] == 2
    ok = chat(out["endpoint"], out["api_key"], out["served_model_name"])
    assert ok.status_code == 200, ok.text
    answer = ok.json()["choices"][0]["message"]["content"]
    assert "172.31.250.11" in answer and "172.31.250.12" in answer, answer
    assert chat(out["endpoint"], None, out["served_model_name"]).status_code == 401
    assert chat(out["endpoint"], "wrong-key", out["served_model_name"]).status_code == 401
    assert containers_on("1") == [BACKEND.head_container]
    assert containers_on("2") == [BACKEND.worker_container]


def test_weights_identical_at_the_same_path_on_every_host(
    deployed: tuple[PulumiStack, dict[str, Any]], lab: Any
) -> None:
    stack, _ = deployed
    # lab-2's copy is the fan-out step (from lab-1), not a push from this machine.
    fetch = next(r for r in stack.resources() if r["urn"].endswith("::weights-lab-2-fetch"))
    assert "copying the weights from" in fetch["inputs"]["stdin"]  # a local step: bash -s
    local = Path(lab["model_dir"])
    for path in sorted(local.iterdir()):
        want = hashlib.sha256(path.read_bytes()).hexdigest()
        for h in HOSTS:
            got = host_exec(h, "sha256sum", f"{MODEL_PATH}/{path.name}").stdout.split()[0]
            assert got == want, f"lab-{h}:{MODEL_PATH}/{path.name}"


def test_second_up_changes_nothing(deployed: tuple[PulumiStack, dict[str, Any]]) -> None:
    stack, _ = deployed
    since = host_exec("1", "date", "+%s").stdout.strip()
    started = time.monotonic()
    stack.preview(expect_no_changes=True)
    stack.up(expect_no_changes=True)
    print(f"\nno-change preview + up: {time.monotonic() - started:.1f} s")
    # Not a byte of the image was sent again: no host's Docker logged a `docker load` (a
    # reload of the same image changes neither its tags nor its ID, but it is an event).
    until = str(int(host_exec("1", "date", "+%s").stdout) + 1)
    for h in HOSTS:
        loads = host_exec(
            h, "docker", "events", "--since", since, "--until", until,
            "--filter", "type=image", "--filter", "event=load", "--format", "{{.Actor.ID}}",
        )  # fmt: skip
        assert loads.stdout.split() == [], f"lab-{h} loaded an image again: {loads.stdout}"


def test_too_few_parallel_operations_are_named_with_the_fix(
    deployed: tuple[PulumiStack, dict[str, Any]],
) -> None:
    stack, _ = deployed
    # 2 hosts run up to 8 operations at once; with 4 they would wait for each other.
    try:
        stack.env["PULUMI_PARALLEL"] = "4"
        few = stack.preview(expect_no_changes=True)
        stack.env["PULUMI_PARALLEL"] = "8"
        enough = stack.preview(expect_no_changes=True)
    finally:
        del stack.env["PULUMI_PARALLEL"]
    assert "pulumi runs 4 operations at a time" in few.output, few.output
    assert "--parallel 8" in few.output and "PULUMI_PARALLEL=8" in few.output
    assert "operations at a time" not in enough.output, enough.output


def test_removed_weight_file_is_restored_by_next_up(
    deployed: tuple[PulumiStack, dict[str, Any]],
) -> None:
    stack, _ = deployed
    host_exec("2", "rm", f"{MODEL_PATH}/model.safetensors")
    preview = stack.preview()
    assert "weights-lab-2-check" in preview.stdout, preview.stdout
    stack.up()
    assert (
        host_exec("2", "test", "-s", f"{MODEL_PATH}/model.safetensors", check=False).returncode == 0
    )
    stack.preview(expect_no_changes=True)


def test_drift_removed_head_container_is_restored_by_up_refresh(
    deployed: tuple[PulumiStack, dict[str, Any]],
) -> None:
    stack, out = deployed
    worker_id = host_exec("2", "docker", "inspect", "-f", "{{.Id}}", BACKEND.worker_container)
    host_exec("1", "docker", "rm", "-f", BACKEND.head_container)
    with pytest.raises(requests.ConnectionError):
        chat(out["endpoint"], out["api_key"], out["served_model_name"])
    stack.up(refresh=True)
    ok = chat(out["endpoint"], out["api_key"], out["served_model_name"])
    assert ok.status_code == 200, ok.text
    if BACKEND.name == "mp":
        # Only rank 0 was recreated: the headless rank kept its container and rejoined. Its
        # watcher stopped it once rank 0 was gone (vLLM's own headless ranks never notice),
        # and the restart policy brought it back. (Ray workers carry the head's ID, so the
        # Ray backend replaces them instead.)
        after = host_exec(
            "2", "docker", "inspect", "-f", "{{.Id}} {{.RestartCount}}", BACKEND.worker_container
        ).stdout.split()
        assert after[0] == worker_id.stdout.strip() and int(after[1]) >= 1, after
        logs = host_exec("2", "docker", "logs", BACKEND.worker_container)
        assert "multi-node: lost rank 0 at 172.31.250.11:" in logs.stdout + logs.stderr


def test_host_that_lost_its_engine_and_image_is_restored_by_up_refresh(
    deployed: tuple[PulumiStack, dict[str, Any]],
) -> None:
    """What a rebuilt or wiped host looks like: no worker container, no image. The image
    check notices, the image is streamed again, and the worker comes back."""
    stack, out = deployed

    def head_restarts() -> int:
        inspect = ["docker", "inspect", "-f", "{{.RestartCount}}", BACKEND.head_container]
        return int(host_exec("1", *inspect).stdout)

    before = head_restarts()
    host_exec("2", "docker", "rm", "-f", BACKEND.worker_container)
    host_exec("2", "docker", "rmi", "-f", "vllm-standin:lab")
    # As after a host loss: the engine noticed its lost worker and restarted before the up.
    deadline = time.monotonic() + 120
    while head_restarts() == before:
        assert time.monotonic() < deadline, "the head never noticed its lost worker"
        time.sleep(0.5)
    result = stack.up(refresh=True)
    assert "[lab-2] image: streaming" in result.output, result.output[-3000:]
    assert "[lab-1] image: streaming" not in result.output
    assert containers_on("2") == [BACKEND.worker_container]
    ok = chat(out["endpoint"], out["api_key"], out["served_model_name"])
    assert ok.status_code == 200, ok.text
    assert "172.31.250.12" in ok.json()["choices"][0]["message"]["content"]


def test_max_model_len_change_replaces_only_serving(
    deployed: tuple[PulumiStack, dict[str, Any]],
) -> None:
    stack, _ = deployed
    config_file = REPO / f"Pulumi.{stack.name}.yaml"
    original = config_file.read_text()
    doc = lab_config(overrides(BACKEND.name, max_model_len=1024))
    config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        result = stack.run("preview", "--json")
    finally:
        config_file.write_text(original)
    steps = json.loads(result.stdout)["steps"]
    changed = {s["urn"].split("::")[-1]: s["op"] for s in steps if s["op"] != "same"}
    assert changed, "changing max_model_len must change the serving containers"
    replaced = {name for name, op in changed.items() if "replace" in op}
    assert {BACKEND.head_resource, BACKEND.worker_resource, "serving-ready"} <= replaced, changed
    untouched = [n for n in changed if "image" in n or "weights" in n or "preflight" in n]
    assert not untouched, changed


def test_api_key_never_in_state_or_ps(deployed: tuple[PulumiStack, dict[str, Any]]) -> None:
    stack, out = deployed
    key = out["api_key"]
    exported = stack.run("stack", "export").stdout
    assert key not in exported
    for h in HOSTS:
        ps = host_exec(h, "ps", "-eo", "args", "ww").stdout
        assert "vllm" in ps or "ray" in ps  # the engine runs here
        assert key not in ps


def listeners(host: str) -> list[tuple[str, int, str]]:
    """(address, port, process) of every TCP socket listening on a lab host (`ss -ltnp`)."""
    found = []
    for line in host_exec(host, "ss", "-ltnpH").stdout.splitlines():
        fields = line.split()
        address, _, port = fields[3].rpartition(":")
        process = re.search(r'users:\(\("([^"]+)"', line)
        found.append((address.strip("[]"), int(port), process.group(1) if process else ""))
    return found


# Listeners of the lab host itself, not of the cluster: its sshd (the "server's" SSH) and
# Docker's embedded DNS of the lab network (on 127.0.0.11, the lab host being a container).
LAB_HOST_OWN = ("sshd",)
RAY_PROCESSES = ("gcs_server", "raylet")


def test_what_each_node_listens_on_is_what_the_security_model_lists(
    deployed: tuple[PulumiStack, dict[str, Any]],
) -> None:
    """`ss -ltnp` on every host against README's "What the cluster opens": the API on the
    head, the rendezvous or Ray ports, Ray's own processes on the Ray backend, nothing else."""
    readme = (REPO / "README.md").read_text()
    security = readme.split("## Security model", 1)[1].split("\n## ", 1)[0]
    for key in ("serving.port", "serving.master_port", "serving.ray_port"):
        assert key in security, key
    head_ports = {port for _, port, _ in listeners("1")}
    assert 8000 in head_ports, head_ports  # the stack is up: the API listens
    if BACKEND.name == "ray":
        assert 6379 in head_ports, head_ports
    unexpected = []
    for h in HOSTS:
        for address, port, process in listeners(h):
            if process in LAB_HOST_OWN or address == "127.0.0.11":
                continue
            if h == "1" and port == 8000 and address == "0.0.0.0":
                continue  # serving.port, --host 0.0.0.0 (the API key guards /v1)
            if BACKEND.name == "mp" and h == "1" and port == 29501:
                continue  # serving.master_port: torch's store (real vLLM keeps it open)
            if BACKEND.name == "ray":
                if h == "1" and port == 6379 and process == "gcs_server":
                    continue  # serving.ray_port
                if (
                    process in RAY_PROCESSES
                    or process.startswith("ray::")
                    or (
                        h == "1" and process == "python3"  # the head's driver (vLLM) talking to Ray
                    )
                ):
                    continue  # Ray's own ports: random, token-authenticated
            unexpected.append((f"lab-{h}", address, port, process))
    assert unexpected == [], f"listening, but not in the security model: {unexpected}"


def test_ray_refuses_a_client_without_the_clusters_token(
    deployed: tuple[PulumiStack, dict[str, Any]],
) -> None:
    """The Ray backend runs with Ray's token authentication (Ray 2.60 in the stand-in image):
    a client on a cluster node with a wrong token is refused by the head's GCS; the same
    client with the node's own token connects. The API key never reaches the workers' Ray
    actors (vLLM copies the driver's environment into them but for the names the head script
    excludes). On the mp backend nothing listens on the Ray port."""
    if BACKEND.name == "mp":
        assert not [x for x in listeners("1") if x[1] == 6379]
        return
    connect = "import ray; ray.init(address='172.31.250.11:6379'); print('connected')"
    worker = ("docker", "exec", BACKEND.worker_container)
    refused = host_exec(
        "2", *worker, "env", "RAY_AUTH_TOKEN=not-the-token", "timeout", "90", "python3", "-c",
        connect, check=False,
    )  # fmt: skip
    assert refused.returncode != 0, refused.stdout
    assert "Authentication token is missing or incorrect" in refused.stderr, refused.stderr[-2000:]
    # The token stays in the container's environment: it is never on a command line here.
    admitted = host_exec("2", *worker, "timeout", "90", "python3", "-c", connect, check=False)
    assert admitted.returncode == 0 and "connected" in admitted.stdout, admitted.stderr[-2000:]
    head_logs = host_exec("1", "docker", "logs", BACKEND.head_container)
    copied = re.search(r"secrets in the last worker's environment: (.*)", head_logs.stdout)
    assert copied is not None, head_logs.stdout[-2000:]
    assert "VLLM_API_KEY" not in copied.group(1), copied.group(0)


# Last in the module: it takes the stack down (each test above needs it up).
def test_destroy_removes_serving_and_keeps_weights(
    deployed: tuple[PulumiStack, dict[str, Any]],
) -> None:
    stack, _ = deployed
    started = time.monotonic()
    stack.destroy()
    print(f"\ndestroy: {time.monotonic() - started:.1f} s")
    for h in HOSTS:
        assert containers_on(h) == []
        assert host_exec(h, "test", "-s", f"{MODEL_PATH}/config.json", check=False).returncode == 0
