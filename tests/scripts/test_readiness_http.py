"""The readiness gate script, run for real (bash, curl, python3) against an HTTP server in
this test process (127.0.0.1, an ephemeral port), with a fake `docker` first on PATH that
reports the engine container: what the gate accepts, what it waits out, and what it
fails on, and how fast. No engine is needed; every case runs in a few seconds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.render.readiness import ReadinessGate, readiness_script

from .conftest import write_exe
from .test_readiness import FAKE_DOCKER

pytestmark = pytest.mark.scripts

KEY = "sk-gate-test"
MODEL = "tiny"
CONTAINER = "vllm-ray-head"
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "ready"},
            "finish_reason": "stop",
        }
    ],
}
MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
# "Fails at once" means well inside a long timeout, however loaded the machine is (CI runs this
# beside the lab); a gate that waited for the timeout would take AT_ONCE_TIMEOUT_S.
AT_ONCE_TIMEOUT_S = 60
AT_ONCE_S = 30

# An answer: (status, body); a str body is sent as is, anything else as JSON.
Answer = tuple[int, object]
# What the server answers on one path, given the seconds since it started and the number
# of requests that path has had before this one.
Route = Callable[[float, int], Answer]


def always(status: int, body: object) -> Route:
    return lambda _t, _n: (status, body)


def ok_routes() -> dict[str, Route]:
    return {
        "/health": always(200, ""),
        "/v1/models": always(200, MODELS),
        "/v1/chat/completions": always(200, COMPLETION),
    }


@dataclass
class FakeServer:
    routes: dict[str, Route]
    address: str = "127.0.0.1"
    port: int = 0
    started: float = field(default_factory=time.monotonic)
    # (path, Authorization header, request body) of every request, in order.
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def count(self, path: str) -> int:
        return sum(1 for p, _, _ in self.requests if p == path)


class _Http6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture(params=["127.0.0.1"])
def server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    """The fake vLLM server on `request.param` (parametrize indirectly for ::1)."""
    fake = FakeServer(ok_routes(), address=request.param)

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            route = fake.routes.get(self.path)
            n = fake.count(self.path)
            fake.requests.append((self.path, self.headers.get("Authorization", ""), body))
            status, payload = (
                route(time.monotonic() - fake.started, n) if route else (404, "not found")
            )
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = answer
        do_POST = answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server_class = _Http6Server if ":" in fake.address else ThreadingHTTPServer
    httpd = server_class((fake.address, 0), Handler)
    httpd.daemon_threads = True
    fake.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass
class GateRun:
    proc: subprocess.CompletedProcess[str]
    seconds: float


def run_gate(
    tmp_path: Path, server: FakeServer, *, timeout_s: int = 2, state: str = "running 0"
) -> GateRun:
    """The rendered gate against `server`; `state` is what the fake `docker inspect` prints
    (one state per call, ';'-separated, the last one sticks)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    write_exe(bin_dir / "docker", FAKE_DOCKER)
    gate = ReadinessGate(
        CONTAINER,
        server.port,
        MODEL,
        timeout_s=timeout_s,
        progress_every_s=1,
        poll_s=0.2,
        address=server.address,
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_STATE": state}
    server.started = time.monotonic()
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", "-c", readiness_script(gate)],
        input=f"{KEY}\n",
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    run = GateRun(proc, time.monotonic() - t0)
    assert KEY not in proc.stdout + proc.stderr
    return run


def test_the_happy_path_passes_and_prints_the_completion(
    tmp_path: Path, server: FakeServer
) -> None:
    run = run_gate(tmp_path, server)
    assert run.proc.returncode == 0, run.proc.stderr
    assert json.loads(run.proc.stdout) == COMPLETION
    assert [p for p, _, _ in server.requests] == ["/health", "/v1/models", "/v1/chat/completions"]
    # The key goes to both /v1 endpoints (and only as a header); the chat asks the served model.
    assert [auth for _, auth, _ in server.requests[1:]] == [f"Bearer {KEY}"] * 2
    assert json.loads(server.requests[2][2])["model"] == MODEL
    assert "readiness: endpoint answers after" in run.proc.stderr


@pytest.mark.parametrize("server", ["::1"], indirect=True)
def test_the_gate_reaches_an_ipv6_engine_address(tmp_path: Path, server: FakeServer) -> None:
    """An IPv6 host address goes into the URL in brackets (http://[::1]:port/...)."""
    run = run_gate(tmp_path, server)
    assert run.proc.returncode == 0, run.proc.stderr
    assert [p for p, _, _ in server.requests] == ["/health", "/v1/models", "/v1/chat/completions"]


def test_a_slow_start_is_waited_out(tmp_path: Path, server: FakeServer) -> None:
    """/health answers 503 for its first 2 seconds (the engine loading), then 200."""
    server.routes["/health"] = lambda t, _n: (503, "loading") if t < 2 else (200, "")
    run = run_gate(tmp_path, server, timeout_s=10)
    assert run.proc.returncode == 0, run.proc.stderr
    assert json.loads(run.proc.stdout) == COMPLETION
    assert run.seconds >= 2
    assert server.count("/health") >= 3
    assert server.count("/v1/chat/completions") == 1


def test_a_500_while_warming_is_retried_then_passes(tmp_path: Path, server: FakeServer) -> None:
    """The design choice: a 500 from the chat completion is retried, not fatal."""
    error = {"object": "error", "message": "engine warming", "code": 500}
    server.routes["/v1/chat/completions"] = lambda _t, n: (
        (500, error) if n < 2 else (200, COMPLETION)
    )
    run = run_gate(tmp_path, server, timeout_s=10)
    assert run.proc.returncode == 0, run.proc.stderr
    assert json.loads(run.proc.stdout) == COMPLETION
    assert server.count("/v1/chat/completions") == 3


@pytest.mark.parametrize(
    "body",
    [
        {"object": "error", "message": "EngineCore died: CUDA error", "code": 500},
        # A completion sent with status 500 (a proxy's mangled status): the status decides.
        COMPLETION,
    ],
    ids=["error-body", "completion-body"],
)
def test_a_500_fails_at_the_timeout_with_the_last_status_and_body(
    tmp_path: Path, server: FakeServer, body: object
) -> None:
    server.routes["/v1/chat/completions"] = always(500, body)
    run = run_gate(tmp_path, server, timeout_s=4)
    err = run.proc.stderr
    assert run.proc.returncode == 1, err
    assert run.proc.stdout == ""
    assert "readiness: a chat completion not ready after 4s" in err
    assert "last answer: HTTP 500 from /v1/chat/completions: " + json.dumps(body)[:40] in err
    assert server.count("/v1/chat/completions") >= 2  # retried, not failed at once
    # Bash's $SECONDS ticks on whole wall-clock seconds: a 4 s limit ends after 3 to 4 s
    # (plus a probe in flight, slow on a loaded machine).
    assert 3 <= run.seconds < AT_ONCE_S


@pytest.mark.parametrize(
    "body",
    [
        {**COMPLETION, "choices": []},
        {**COMPLETION, "choices": [{"index": 0, "finish_reason": "stop"}]},
        {**COMPLETION, "choices": [{"index": 0, "message": None}]},
        {**COMPLETION, "choices": [{"index": 0, "message": {"content": "no role"}}]},
        {**COMPLETION, "choices": [{"index": 0, "message": "ready"}]},
        {**COMPLETION, "choices": {"message": {"role": "assistant"}}},
        'not json, though it says "choices": [{"message": {"role": "assistant"}}]',
        "",
    ],
    ids=[
        "empty",
        "no-message",
        "null-message",
        "no-role",
        "string-message",
        "not-a-list",
        "not-json",
        "empty-body",
    ],
)
def test_a_200_without_a_completion_fails_at_once(
    tmp_path: Path, server: FakeServer, body: object
) -> None:
    server.routes["/v1/chat/completions"] = always(200, body)
    run = run_gate(tmp_path, server, timeout_s=AT_ONCE_TIMEOUT_S)
    err = run.proc.stderr
    assert run.proc.returncode == 1, err
    assert run.proc.stdout == ""
    assert "readiness: the chat completion answered HTTP 200 without a completion" in err
    assert server.count("/v1/chat/completions") == 1
    assert run.seconds < AT_ONCE_S  # at once, not at the timeout


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions"])
def test_a_401_fails_at_once_naming_the_key(tmp_path: Path, server: FakeServer, path: str) -> None:
    server.routes[path] = always(401, {"error": "Unauthorized"})
    run = run_gate(tmp_path, server, timeout_s=AT_ONCE_TIMEOUT_S)
    err = run.proc.stderr
    assert run.proc.returncode == 1, err
    assert (
        f"readiness: the server rejected the API key on {path} (check vllm-cluster:apiKey)" in err
    )
    assert server.count(path) == 1
    assert run.seconds < AT_ONCE_S


def test_models_must_list_the_served_name_exactly(tmp_path: Path, server: FakeServer) -> None:
    """`tiny-chat` is not `tiny`: the gate waits for its own model, then fails naming it."""
    server.routes["/v1/models"] = always(200, {"object": "list", "data": [{"id": "tiny-chat"}]})
    run = run_gate(tmp_path, server, timeout_s=2)
    err = run.proc.stderr
    assert run.proc.returncode == 1, err
    assert "readiness: /v1/models not ready after 2s" in err
    assert "last answer: /v1/models does not list tiny yet" in err
    assert server.count("/v1/chat/completions") == 0


def test_an_exited_container_fails_naming_its_state(tmp_path: Path, server: FakeServer) -> None:
    """The server never gets healthy and the engine container exits meanwhile: the gate
    fails at the next poll (not at the timeout), naming the state and quoting the logs."""
    server.routes["/health"] = always(503, "loading")
    run = run_gate(
        tmp_path, server, timeout_s=AT_ONCE_TIMEOUT_S, state="running 0;running 0;exited 0"
    )
    err = run.proc.stderr
    assert run.proc.returncode == 1, err
    assert f"readiness: container {CONTAINER} is exited after 0 restart(s)" in err
    assert "current platform cpu does not support ray" in err  # the root cause, quoted
    assert server.count("/health") == 2
    assert run.seconds < AT_ONCE_S


def _openai_chat_route(t: float, n: int, requests: list[tuple[str, str, str]]) -> Answer:
    """Answers like an OpenAI-compatible server: 400 for a request it would not accept."""
    try:
        body = json.loads(requests[-1][2])
        messages = body["messages"]
        ok = (
            set(body) <= {"model", "messages", "max_tokens", "temperature"}
            and body["model"] == MODEL
            and isinstance(messages, list)
            and messages
            and all(
                set(m) == {"role", "content"}
                and m["role"] in ("system", "user", "assistant")
                and isinstance(m["content"], str)
                and m["content"]
                for m in messages
            )
            and isinstance(body.get("max_tokens", 1), int)
            and 0 < body.get("max_tokens", 1) <= 64
            and 0 <= body.get("temperature", 1) <= 2
        )
    except (ValueError, LookupError, TypeError):
        ok = False
    return (200, COMPLETION) if ok else (400, {"error": {"message": "invalid request"}})


def test_the_chat_request_is_one_an_openai_server_accepts(
    tmp_path: Path, server: FakeServer
) -> None:
    """A short, deterministic chat request for the served model: a server that validates
    requests as the OpenAI API does answers it."""
    server.routes["/v1/chat/completions"] = lambda t, n: _openai_chat_route(t, n, server.requests)
    run = run_gate(tmp_path, server)
    assert run.proc.returncode == 0, run.proc.stderr
    body = json.loads(server.requests[-1][2])
    assert body["max_tokens"] <= 16 and body["temperature"] == 0
