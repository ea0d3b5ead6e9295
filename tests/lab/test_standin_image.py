"""The stand-in engine image (LAB TEST FIXTURE) on this machine's docker engine, no lab hosts.

Builds it with lab/engine/build.sh (the tarball goes to $LAB_DIR/images, where `lab up` takes
it), then runs containers from it on the default bridge network with the port published on
127.0.0.1 only: `vllm serve`, the `python3 -m vllm.entrypoints.openai.api_server` form, and a
container running `ray start --head --num-gpus=2` plus a TP=2 server on the Ray executor.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.lab.test_standin import API_KEY, make_tiny_model, write_fake_nvidia_smi

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
WITH_ENV = REPO / "tools" / "with-env"
BUILD = REPO / "lab" / "engine" / "build.sh"
TAG = "vllm-standin:lab"
MODEL_IN_CONTAINER = "/models/tiny-llama"
GPU_MSG = (
    "The number of required GPUs exceeds the total number of available GPUs in the placement group"
)


def lab_dir() -> Path:
    return Path(os.environ.get("LAB_DIR") or REPO / ".lab")


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def run_build() -> tuple[float, str]:
    start = time.monotonic()
    result = subprocess.run(
        [str(WITH_ENV), str(BUILD)], capture_output=True, text=True, timeout=1800, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return time.monotonic() - start, result.stderr


@pytest.fixture(scope="module")
def engine_image() -> tuple[float, str]:
    subprocess.run([str(REPO / "tools" / "ensure-docker.sh")], check=True, timeout=300)
    return run_build()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("img-model") / "tiny-llama")


class Container:
    """A container of this test, removed at the end (by its own name)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = ""

    def start(self, *args: str) -> Container:
        docker("run", "-d", "--pull=never", "--name", self.name,
               "-p", "127.0.0.1::8000", *args)  # fmt: skip
        port = docker("port", self.name, "8000/tcp").stdout.split()[0].rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def logs(self) -> str:
        r = docker("logs", self.name, check=False)
        return r.stdout + r.stderr

    def running(self) -> bool:
        r = docker("inspect", "-f", "{{.State.Running}}", self.name, check=False)
        return r.stdout.strip() == "true"

    def ip(self) -> str:
        return docker(
            "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", self.name
        ).stdout.strip()

    def wait_healthy(self, timeout_s: float = 120) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if not self.running():
                raise AssertionError(f"{self.name} stopped:\n{self.logs()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not healthy after {timeout_s} s:\n{self.logs()}")

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


@pytest.fixture
def container() -> Iterator[Container]:
    c = Container(f"vllm-standin-test-{uuid.uuid4().hex[:8]}")
    try:
        yield c
    finally:
        c.remove()


def chat(url: str, model: str) -> dict[str, object]:
    r = requests.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "who answers?"}]},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def answer(body: dict[str, object]) -> str:
    choices = body["choices"]
    assert isinstance(choices, list)
    return str(choices[0]["message"]["content"])


def common_run_args(model_dir: Path) -> list[str]:
    return [
        "-v", f"{model_dir}:{MODEL_IN_CONTAINER}:ro",
        "-e", f"VLLM_API_KEY={API_KEY}",
        "-e", "VLLM_STANDIN_LOAD_S=1",
    ]  # fmt: skip


def test_build_produces_the_tarball_and_skips_when_unchanged(
    engine_image: tuple[float, str],
) -> None:
    tarball = lab_dir() / "images" / "vllm-standin.tar"
    meta = json.loads(tarball.with_name("vllm-standin.tar.json").read_text())
    image_id = docker("image", "inspect", "-f", "{{.Id}}", TAG).stdout.strip()
    assert meta["id"] == image_id and meta["tag"] == TAG
    assert meta["size_bytes"] == tarball.stat().st_size
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", TAG).stdout)
    assert labels["org.vllm-cluster.lab.recipe"] == meta["recipe"]
    assert "not vLLM" in labels["org.vllm-cluster.lab.fixture"]
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)
    assert manifest[0]["RepoTags"] == [TAG]
    # Same recipe: nothing is rebuilt.
    seconds, log = run_build()
    assert "up to date" in log
    assert seconds < 15
    print(f"build: first call {engine_image[0]:.1f} s, unchanged recipe {seconds:.1f} s")


def test_vllm_serve_in_the_image(
    engine_image: tuple[float, str], model_dir: Path, container: Container, tmp_path: Path
) -> None:
    smi = write_fake_nvidia_smi(tmp_path, 2)
    container.start(
        *common_run_args(model_dir),
        "-v", f"{smi}:/usr/local/bin/nvidia-smi:ro",
        TAG, "vllm", "serve", MODEL_IN_CONTAINER, "--served-model-name", "tiny",
        "--tensor-parallel-size", "2", "--max-model-len", "512",
    )  # fmt: skip
    started = container.wait_healthy()
    print(f"vllm serve (local, TP=2): healthy {started:.1f} s after docker run")
    assert requests.get(container.url + "/v1/models", timeout=5).status_code == 401
    text = answer(chat(container.url, "tiny"))
    assert "model=tiny" in text and "tp=2" in text and "nodes=local" in text
    version = requests.get(container.url + "/version", timeout=5).json()
    assert version["version"].endswith("-lab-standin")
    logs = container.logs()
    assert "Local GPUs (nvidia-smi -L): 2; TP x PP = 2" in logs
    assert API_KEY not in logs
    # docker stop sends SIGTERM: a clean shutdown, exit code 0.
    docker("stop", "-t", "20", container.name)
    assert docker("inspect", "-f", "{{.State.ExitCode}}", container.name).stdout.strip() == "0"


def test_api_server_module_form_in_the_image(
    engine_image: tuple[float, str], model_dir: Path, container: Container, tmp_path: Path
) -> None:
    smi = write_fake_nvidia_smi(tmp_path, 1)
    container.start(
        *common_run_args(model_dir),
        "-v", f"{smi}:/usr/local/bin/nvidia-smi:ro",
        TAG, "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", MODEL_IN_CONTAINER, "--served-model-name", "tiny-module",
        "--host", "0.0.0.0", "--port", "8000",
    )  # fmt: skip
    container.wait_healthy()
    models = requests.get(
        container.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5
    ).json()
    assert [m["id"] for m in models["data"]] == ["tiny-module"]
    text = answer(chat(container.url, "tiny-module"))
    assert "tp=1" in text and "pp=1" in text


def test_ray_executor_in_one_container(
    engine_image: tuple[float, str], model_dir: Path, container: Container
) -> None:
    serve = (
        "ray start --head --num-gpus=2 --disable-usage-stats >/tmp/ray-start.log 2>&1 && "
        "exec python3 -m vllm.entrypoints.openai.api_server --model "
        f"{MODEL_IN_CONTAINER} --served-model-name tiny "
        "--distributed-executor-backend ray --tensor-parallel-size 2"
    )
    # No nvidia-smi here: the GPUs exist only as the Ray resources `ray start` advertises.
    container.start(*common_run_args(model_dir), "--shm-size=512m", TAG, "bash", "-c", serve)
    started = container.wait_healthy()
    print(f"ray start + serve (Ray executor, TP=2): healthy {started:.1f} s after docker run")
    ip = container.ip()
    text = answer(chat(container.url, "tiny"))
    assert "tp=2" in text and "pp=1" in text and f"nodes={ip}" in text
    logs = container.logs()
    assert f"Ray worker rank 1 (pp stage 0, tp rank 1) on {ip}" in logs
    # The workers hold their GPUs, as vLLM's do (`ray status` needs a few seconds at first).
    deadline = time.monotonic() + 30
    status = ""
    while "2.0/2.0 GPU" not in status and time.monotonic() < deadline:
        time.sleep(1)
        status = docker("exec", container.name, "ray", "status", check=False).stdout
    assert "2.0/2.0 GPU" in status, status

    # TP=4 on a 2-GPU Ray cluster: fails with vLLM's message after VLLM_STANDIN_RAY_WAIT_S.
    start = time.monotonic()
    r = docker(
        "exec", "-e", "VLLM_STANDIN_RAY_WAIT_S=5", container.name,
        "vllm", "serve", MODEL_IN_CONTAINER, "--distributed-executor-backend", "ray",
        "-tp", "4", "--port", "8001",
        timeout=90, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert r.returncode == 1, r.stdout + r.stderr
    assert GPU_MSG in r.stderr
    assert "Required GPUs: 4" in r.stderr and "2 total" in r.stderr
    assert f"{ip} (GPU 2)" in r.stderr  # the alive nodes are named
    assert 5 <= elapsed < 60, elapsed
    # The first server is untouched by the failed one.
    assert "tp=2" in answer(chat(container.url, "tiny"))

    # A lost Ray worker kills the engine, and the server exits non-zero (as vLLM does).
    ps = docker("exec", container.name, "ps", "-eo", "pid=,args=").stdout
    pid = next(line.split()[0] for line in ps.splitlines() if "StandinWorker" in line)
    docker("exec", container.name, "kill", "-9", pid)
    assert docker("wait", container.name, timeout=60).stdout.strip() == "1"
    assert "Engine is dead: Ray worker lost" in container.logs()
