"""HTTP side of the LAB STAND-IN (test fixture, not vLLM): vLLM's OpenAI-compatible routes on
the standard library's ThreadingHTTPServer.

Routes: ``/health``, ``/ping``, ``/version``, ``/metrics`` (no key, as in vLLM) and
``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` (``Authorization: Bearer <key>``
when a key is set). Answers are fixed sentences naming the served model, TP, PP and the Ray
nodes the workers were placed on; token counts are estimates (words and punctuation), good
enough for vLLM's context-length check and for usage figures, not a tokenizer.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vllm import __version__
from vllm.args import ServeConfig
from vllm.logger import init_logger
from vllm.placement import Placement

logger = init_logger(__name__)
access_logger = init_logger("vllm.access")

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Tokens the chat template adds per message and per conversation (role markers, BOS).
_PER_MESSAGE_TOKENS = 4
_PER_CHAT_TOKENS = 3


def estimate_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


class HTTPError(Exception):
    """An OpenAI-style error answer (``{"error": {...}}``, as vLLM sends)."""

    def __init__(self, status: int, message: str, err_type: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.err_type = err_type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }


class Metrics:
    """The few vLLM Prometheus series a dashboard or a test looks at first."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.lock = threading.Lock()
        self.model = cfg.served_model_names[0]
        self.cfg = cfg
        self.running = 0
        self.waiting = 0
        self.success: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.http: Counter[tuple[str, str, str]] = Counter()

    def render(self) -> str:
        m = f'model_name="{self.model}"'
        cfg = self.cfg
        with self.lock:
            lines = [
                "# HELP vllm:lab_standin_info The lab stand-in engine (not vLLM) serves here.",
                "# TYPE vllm:lab_standin_info gauge",
                f'vllm:lab_standin_info{{version="{__version__}"}} 1.0',
                "# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{{{m}}} {float(self.running)}",
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
                "# TYPE vllm:num_requests_waiting gauge",
                f"vllm:num_requests_waiting{{{m}}} {float(self.waiting)}",
                "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
                "# TYPE vllm:kv_cache_usage_perc gauge",
                f"vllm:kv_cache_usage_perc{{{m}}} "
                f"{min(1.0, self.running / max(1, cfg.max_num_seqs))}",
                "# HELP vllm:request_success_total Count of successfully processed requests.",
                "# TYPE vllm:request_success_total counter",
            ]
            for reason in ("stop", "length"):
                lines.append(
                    f'vllm:request_success_total{{finished_reason="{reason}",{m}}} '
                    f"{float(self.success[reason])}"
                )
            lines += [
                "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
                "# TYPE vllm:prompt_tokens_total counter",
                f"vllm:prompt_tokens_total{{{m}}} {float(self.prompt_tokens)}",
                "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
                "# TYPE vllm:generation_tokens_total counter",
                f"vllm:generation_tokens_total{{{m}}} {float(self.generation_tokens)}",
                "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
                "# TYPE vllm:cache_config_info gauge",
                f'vllm:cache_config_info{{cache_dtype="{cfg.kv_cache_dtype}",'
                f'gpu_memory_utilization="{cfg.gpu_memory_utilization}"}} 1.0',
                "# HELP http_requests_total Total number of requests by method, status and "
                "handler.",
                "# TYPE http_requests_total counter",
            ]
            for (handler, method, status), n in sorted(self.http.items()):
                lines.append(
                    f'http_requests_total{{handler="{handler}",method="{method}",'
                    f'status="{status}"}} {float(n)}'
                )
        return "\n".join(lines) + "\n"


class Engine:
    """The fake engine: admission (max_num_seqs), the fixed answer and token accounting."""

    def __init__(self, cfg: ServeConfig, placement: Placement, token_delay_s: float) -> None:
        self.cfg = cfg
        self.placement = placement
        self.metrics = Metrics(cfg)
        self.slots = threading.BoundedSemaphore(cfg.max_num_seqs)
        self.token_delay_s = token_delay_s
        self.created = int(time.time())

    def answer_words(self, model: str) -> list[str]:
        cfg = self.cfg
        text = (
            f"lab stand-in answer: model={model} tp={cfg.tensor_parallel_size} "
            f"pp={cfg.pipeline_parallel_size} nodes={self.placement.describe()}"
        )
        return text.split(" ")

    def check_model(self, requested: Any) -> str:
        if requested is None:
            return self.cfg.served_model_names[0]
        if requested not in self.cfg.served_model_names:
            raise HTTPError(404, f"The model `{requested}` does not exist.", "NotFoundError")
        return str(requested)

    def budget(self, prompt_tokens: int, body: dict[str, Any], what: str) -> int:
        """vLLM's context-length check; returns the max tokens to generate."""
        limit = self.cfg.max_model_len
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise HTTPError(
                400,
                f"max_tokens must be at least 1, got {max_tokens}.",
                "BadRequestError",
                "max_tokens",
            )
        if prompt_tokens >= limit:
            raise HTTPError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your request "
                f"has {prompt_tokens} input tokens. Please reduce the length of the input "
                f"{what}.",
                "BadRequestError",
            )
        if max_tokens is None:
            return limit - prompt_tokens
        if prompt_tokens + max_tokens > limit:
            raise HTTPError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {what}, "
                f"{max_tokens} in the completion). Please reduce the length of the {what} or "
                "completion.",
                "BadRequestError",
            )
        return int(max_tokens)

    def generate(self, words: list[str], max_tokens: int) -> Iterator[str]:
        """Yield the answer word by word (a word counts as one generated token), holding one
        of max_num_seqs slots like a running sequence; the rest wait, as in vLLM."""
        with self.metrics.lock:
            self.metrics.waiting += 1
        self.slots.acquire()
        with self.metrics.lock:
            self.metrics.waiting -= 1
            self.metrics.running += 1
        try:
            for i, word in enumerate(words[:max_tokens]):
                if self.token_delay_s:
                    time.sleep(self.token_delay_s)
                yield word if i == 0 else " " + word
        finally:
            with self.metrics.lock:
                self.metrics.running -= 1
            self.slots.release()

    def account(self, prompt_tokens: int, completion_tokens: int, finish: str) -> None:
        with self.metrics.lock:
            self.metrics.prompt_tokens += prompt_tokens
            self.metrics.generation_tokens += completion_tokens
            self.metrics.success[finish] += 1


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vllm-lab-standin"
    engine: Engine  # set on the subclass made by activate()
    _body: bytes = b""

    # ---- plumbing -------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        """Quiet the default stderr log; access lines go through log_request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = int(code) if str(code).isdigit() else 0
        phrase = self.responses.get(status, ("",))[0] if status else ""
        # A malformed request line leaves command/path unset.
        command = getattr(self, "command", None) or "-"
        path = (getattr(self, "path", None) or "-").split("?", 1)[0]
        # uvicorn's access line; headers (and so the API key) are never logged.
        access_logger.info(
            '%s:%d - "%s %s %s" %s %s',
            self.client_address[0],
            self.client_address[1],
            command,
            path,
            getattr(self, "request_version", "-"),
            code,
            phrase,
        )
        with self.engine.metrics.lock:
            self.engine.metrics.http[(path, command, f"{str(code)[:1]}xx")] += 1

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _read_json(self) -> dict[str, Any]:
        try:
            body = json.loads(self._body or b"null")
        except json.JSONDecodeError as exc:
            raise HTTPError(400, f"Invalid JSON body: {exc}", "BadRequestError") from exc
        if not isinstance(body, dict):
            raise HTTPError(400, "The request body must be a JSON object.", "BadRequestError")
        return body

    def _authorized(self) -> bool:
        key = self.engine.cfg.api_key
        if not key:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {key}".encode())

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        # Read the whole body first, whatever the answer: on a kept-alive connection an unread
        # body would be parsed as the next request.
        self._body = self._read_body()
        routes = {
            ("GET", "/health"): self._health,
            ("GET", "/ping"): self._health,
            ("POST", "/ping"): self._health,
            ("GET", "/version"): self._version,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
        }
        try:
            if path.startswith("/v1") and not self._authorized():
                raise HTTPError(
                    401, "Unauthorized: missing or invalid API key.", "AuthenticationError"
                )
            route = routes.get((method, path))
            if route is None:
                if any(p == path for _, p in routes):
                    self._json(405, {"detail": "Method Not Allowed"})
                else:
                    self._json(404, {"detail": "Not Found"})
                return
            route()
        except HTTPError as err:
            self._json(err.status, err.body())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # ---- routes ---------------------------------------------------------------------------
    def _health(self) -> None:
        self._send(200, b"", "application/json")

    def _version(self) -> None:
        cfg = self.engine.cfg
        p = self.engine.placement
        self._json(
            200,
            {
                "version": __version__,
                "engine": "vllm-cluster lab stand-in (LAB TEST FIXTURE, not vLLM)",
                "model": cfg.model,
                "served_model_names": list(cfg.served_model_names),
                "tensor_parallel_size": cfg.tensor_parallel_size,
                "pipeline_parallel_size": cfg.pipeline_parallel_size,
                "placement": p.mode,
                "nodes": p.node_ips if p.spans_nodes else [],
                "args": cfg.non_default_args,
            },
        )

    def _metrics(self) -> None:
        self._send(
            200, self.engine.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8"
        )

    def _models(self) -> None:
        e = self.engine
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": e.created,
                "owned_by": "vllm",
                "root": e.cfg.model,
                "parent": None,
                "max_model_len": e.cfg.max_model_len,
                "permission": [],
            }
            for name in e.cfg.served_model_names
        ]
        self._json(200, {"object": "list", "data": data})

    def _chat(self) -> None:
        body = self._read_json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPError(
                400, "`messages` must be a non-empty list.", "BadRequestError", "messages"
            )
        prompt_tokens = _PER_CHAT_TOKENS + sum(
            _PER_MESSAGE_TOKENS + estimate_tokens(_message_text(m.get("content")))
            for m in messages
            if isinstance(m, dict)
        )
        self._complete(body, prompt_tokens, chat=True)

    def _completions(self) -> None:
        body = self._read_json()
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = " ".join(str(p) for p in prompt)
        if not isinstance(prompt, str):
            raise HTTPError(400, "`prompt` must be a string.", "BadRequestError", "prompt")
        self._complete(body, 1 + estimate_tokens(prompt), chat=False)

    def _complete(self, body: dict[str, Any], prompt_tokens: int, chat: bool) -> None:
        e = self.engine
        model = e.check_model(body.get("model"))
        max_tokens = e.budget(prompt_tokens, body, "messages" if chat else "prompt")
        words = e.answer_words(model)
        reply = _Reply(
            request_id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            created=int(time.time()),
            model=model,
            chat=chat,
            words=words,
            max_tokens=max_tokens,
            prompt_tokens=prompt_tokens,
            finish="length" if max_tokens < len(words) else "stop",
        )
        if e.cfg.log_requests:
            logger.info(
                "Received request %s: prompt_tokens=%d, max_tokens=%d (prompt not logged)",
                reply.request_id,
                prompt_tokens,
                max_tokens,
            )
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            self._stream(reply, include_usage=bool(opts.get("include_usage")))
            return
        text = "".join(e.generate(words, max_tokens))
        completion_tokens = min(max_tokens, len(words))
        e.account(prompt_tokens, completion_tokens, reply.finish)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reply.finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        self._json(200, reply.envelope([choice], reply.usage(completion_tokens)))

    def _stream(self, reply: _Reply, include_usage: bool) -> None:
        """Server-sent events in chunked transfer encoding, ending with ``data: [DONE]``."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(payload: str) -> None:
            data = f"data: {payload}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def chunk(delta: dict[str, Any] | str, reason: str | None) -> str:
            c: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reason}
            c["delta" if reply.chat else "text"] = delta
            return json.dumps(reply.envelope([c], None, stream=True))

        if reply.chat:
            event(chunk({"role": "assistant", "content": ""}, None))
        n = 0
        for piece in self.engine.generate(reply.words, reply.max_tokens):
            n += 1
            event(chunk({"content": piece} if reply.chat else piece, None))
        event(chunk({} if reply.chat else "", reply.finish))
        self.engine.account(reply.prompt_tokens, n, reply.finish)
        if include_usage:
            event(json.dumps(reply.envelope([], reply.usage(n), stream=True)))
        event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@dataclass(frozen=True)
class _Reply:
    request_id: str
    created: int
    model: str
    chat: bool
    words: list[str]
    max_tokens: int
    prompt_tokens: int
    finish: str

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def envelope(
        self, choices: list[dict[str, Any]], usage: dict[str, int] | None, stream: bool = False
    ) -> dict[str, Any]:
        obj = "chat.completion" if self.chat else "text_completion"
        if stream and self.chat:
            obj += ".chunk"
        out: dict[str, Any] = {
            "id": self.request_id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage
        return out


class StandinHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def bind_server(cfg: ServeConfig) -> StandinHTTPServer:
    """Bind now (a port in use fails at start, as in vLLM) but listen only when ready, so the
    port refuses connections while the weights "load"."""
    server = StandinHTTPServer((cfg.host, cfg.port), Handler, bind_and_activate=False)
    try:
        server.server_bind()
    except OSError:
        server.server_close()
        raise
    return server


def activate(server: StandinHTTPServer, engine: Engine) -> None:
    """Attach the ready engine and start listening."""
    server.RequestHandlerClass = type("BoundHandler", (Handler,), {"engine": engine})
    server.server_activate()
