"""Command line and start-up checks of the LAB STAND-IN (test fixture, not vLLM).

The flags carry vLLM's names, choices and defaults, and the checks below are the ones vLLM makes
before it loads weights, with vLLM's wording, so a command line or model directory that the real
server would refuse is refused here too. Flags the stand-in accepts but cannot simulate (dtype,
quantization, prefix caching, ...) are parsed, validated and shown in ``/version``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
BLOCK_SIZES = (1, 8, 16, 32, 64, 128)
EXECUTOR_BACKENDS = ("ray", "mp", "uni")
# The quantization methods vLLM users pass most; a name outside this list is refused, as vLLM
# refuses names outside its own (longer) list.
QUANTIZATIONS = (
    "awq",
    "awq_marlin",
    "bitsandbytes",
    "compressed-tensors",
    "experts_int8",
    "fbgemm_fp8",
    "fp8",
    "gguf",
    "gptq",
    "gptq_marlin",
    "marlin",
    "modelopt",
    "modelopt_fp4",
    "mxfp4",
)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class StartupError(Exception):
    """A start-up failure the real server would also have; ``kind`` is the exception name vLLM
    prints on its last line (``ValueError: ...``)."""

    def __init__(self, message: str, kind: str = "ValueError") -> None:
        super().__init__(message)
        self.kind = kind


class FlexibleArgumentParser(argparse.ArgumentParser):
    """Like vLLM's parser: ``--flag_name`` is the same as ``--flag-name``, and long options are
    never abbreviated, so a typo is an error instead of a silent match."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        raw = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(_dashes(raw), namespace)


def _dashes(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("--"):
            name, sep, value = arg.partition("=")
            arg = name.replace("_", "-") + sep + value
        out.append(arg)
    return out


def _human_int(text: str) -> int:
    """vLLM accepts ``32k`` (x1000) and ``32K`` (x1024) for token counts."""
    multipliers = {"k": 1000, "m": 1000**2, "K": 1024, "M": 1024**2}
    if text and text[-1] in multipliers:
        return int(float(text[:-1]) * multipliers[text[-1]])
    return int(text)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The flags shared by ``vllm serve`` and ``python3 -m vllm.entrypoints.openai.api_server``."""
    parser.add_argument("--model", type=str, default=None, help="Model directory (local only).")
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--tokenizer", type=str, default=None)
    parser.add_argument("--revision", type=str, default=None)
    parser.add_argument("--host", type=str, default=None, help="Default: all interfaces.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", type=str, default=None)
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    parser.add_argument("--distributed-executor-backend", choices=EXECUTOR_BACKENDS, default=None)
    # vLLM's own multi-node launcher (mp executor): the same command on every node.
    parser.add_argument("--enable-expert-parallel", action="store_true")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--master-addr", type=str, default="127.0.0.1")
    parser.add_argument("--master-port", type=int, default=29501)
    parser.add_argument("--max-model-len", type=_human_int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=_human_int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto")
    parser.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=None)
    parser.add_argument("--swap-space", type=float, default=4.0, help="GiB of CPU swap per GPU.")
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--quantization", "-q", choices=QUANTIZATIONS, default=None)
    parser.add_argument("--load-format", type=str, default="auto")
    parser.add_argument("--download-dir", type=str, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--disable-custom-all-reduce", action="store_true")
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction)
    parser.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction)
    parser.add_argument("--disable-log-requests", action="store_true")
    parser.add_argument("--enable-log-requests", action="store_true")
    parser.add_argument("--disable-log-stats", action="store_true")
    parser.add_argument("--uvicorn-log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument("--chat-template", type=str, default=None)
    parser.add_argument("--generation-config", type=str, default="auto")


@dataclass(frozen=True)
class ServeConfig:
    """What the server runs with, after vLLM's checks."""

    model: str
    served_model_names: tuple[str, ...]
    host: str
    port: int
    api_key: str | None
    tensor_parallel_size: int
    pipeline_parallel_size: int
    distributed_executor_backend: str | None
    max_model_len: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    # `vllm serve --headless`: this node runs its ranks only, no API server.
    headless: bool
    max_num_seqs: int
    gpu_memory_utilization: float
    kv_cache_dtype: str
    log_requests: bool
    hf_config: dict[str, Any] = field(repr=False)
    # Every flag the user set, the API key redacted: logged at start-up and shown in /version.
    non_default_args: dict[str, Any] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


def non_default_args(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> dict[str, Any]:
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    out: dict[str, Any] = {}
    for key, value in sorted(vars(ns).items()):
        if key in defaults and value != defaults[key]:
            # The key must never reach a log line or an HTTP answer.
            out[key] = "<redacted>" if key == "api_key" else value
    return out


def build_config(ns: argparse.Namespace, shown_args: dict[str, Any]) -> ServeConfig:
    """Apply vLLM's start-up checks; raise StartupError with vLLM's wording on failure."""
    model = ns.model
    if not model:
        raise StartupError("No model given: pass a model directory (`--model PATH`).")
    if not 0.0 < ns.gpu_memory_utilization <= 1.0:
        raise StartupError(
            f"GPU memory utilization must be within (0, 1]. Got {ns.gpu_memory_utilization}."
        )
    for name in ("tensor_parallel_size", "pipeline_parallel_size", "max_num_seqs"):
        if getattr(ns, name) < 1:
            raise StartupError(f"{name} must be a positive integer, got {getattr(ns, name)}.")
    if ns.swap_space < 0:
        raise StartupError(f"swap_space must be non-negative, got {ns.swap_space}.")
    if ns.max_model_len is not None and ns.max_model_len < 1:
        raise StartupError(f"max_model_len must be a positive integer, got {ns.max_model_len}.")
    world = ns.tensor_parallel_size * ns.pipeline_parallel_size
    if ns.nnodes < 1:
        raise StartupError(f"nnodes must be a positive integer, got {ns.nnodes}.")
    if not 0 <= ns.node_rank < ns.nnodes:
        raise StartupError(
            "Invalid data-parallel launch options: `--node-rank` must be between 0 and "
            f"{ns.nnodes - 1}; got `--node-rank {ns.node_rank}`. Set it to this node's "
            "zero-based index."
        )
    if ns.nnodes > 1:
        if ns.distributed_executor_backend not in (None, "mp"):
            raise StartupError(
                f"nnodes > 1 is vLLM's own multi-node launcher (the mp executor); "
                f"distributed_executor_backend={ns.distributed_executor_backend} cannot use it."
            )
        if world % ns.nnodes != 0:
            raise StartupError(
                f"Invalid data-parallel launch options: `--nnodes {ns.nnodes}` must evenly "
                f"divide the total world size ({world}). Adjust `--nnodes`, "
                "`--pipeline-parallel-size` or `--tensor-parallel-size`."
            )

    hf_config = load_model_dir(Path(model), trust_remote_code=ns.trust_remote_code)
    max_model_len = _verify_max_model_len(hf_config, ns.max_model_len)
    heads = int(hf_config.get("num_attention_heads", 0) or 0)
    if heads and heads % ns.tensor_parallel_size != 0:
        raise StartupError(
            f"Total number of attention heads ({heads}) must be divisible by tensor "
            f"parallel size ({ns.tensor_parallel_size})."
        )

    api_key = ns.api_key or os.environ.get("VLLM_API_KEY") or None
    return ServeConfig(
        model=model,
        served_model_names=tuple(ns.served_model_name or [model]),
        host=ns.host or "0.0.0.0",
        port=ns.port,
        api_key=api_key,
        tensor_parallel_size=ns.tensor_parallel_size,
        pipeline_parallel_size=ns.pipeline_parallel_size,
        distributed_executor_backend=ns.distributed_executor_backend,
        max_model_len=max_model_len,
        nnodes=ns.nnodes,
        node_rank=ns.node_rank,
        master_addr=ns.master_addr,
        master_port=ns.master_port,
        headless=bool(getattr(ns, "headless", False)),
        max_num_seqs=ns.max_num_seqs,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        kv_cache_dtype=ns.kv_cache_dtype,
        log_requests=ns.enable_log_requests or not ns.disable_log_requests,
        hf_config=hf_config,
        non_default_args=shown_args,
    )


def load_model_dir(path: Path, *, trust_remote_code: bool) -> dict[str, Any]:
    """The model directory checks vLLM makes: a config.json (or it is not a model), weights it
    can find, every shard named by the index present, custom code only when trusted."""
    if not path.is_dir() or not (path / "config.json").is_file():
        # vLLM's message (transformers_utils/config.py); the stand-in never downloads.
        raise StartupError(
            f"Invalid repository ID or local directory specified: '{path}'.\n"
            "Please verify the following requirements:\n"
            "1. Provide a valid Hugging Face repository ID.\n"
            "2. Specify a local directory that contains a recognized configuration file.\n"
            "   - For Hugging Face models: ensure the presence of a 'config.json'.\n"
            "   - For Mistral models: ensure the presence of a 'params.json'.\n"
            "(lab stand-in: only local directories are served; nothing is downloaded)"
        )
    try:
        hf_config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StartupError(f"Failed to read {path / 'config.json'}: {exc}") from exc
    if not isinstance(hf_config, dict):
        raise StartupError(f"{path / 'config.json'} is not a JSON object.")
    if "auto_map" in hf_config and not trust_remote_code:
        raise StartupError(
            f"The repository {path} contains custom code which must be executed to correctly "
            "load the model. Please pass the argument `trust_remote_code=True` to allow custom "
            "code to be run."
        )
    weights = [p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        raise StartupError(f"Cannot find any model weights with `{path}`", kind="RuntimeError")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except (OSError, json.JSONDecodeError) as exc:
            raise StartupError(f"Failed to read {index}: {exc}") from exc
        missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing:
            raise StartupError(
                f"No such file or directory: '{path / missing[0]}' "
                f"({len(missing)} shard(s) named in {index.name} are missing)",
                kind="FileNotFoundError",
            )
    return hf_config


def _verify_max_model_len(hf_config: dict[str, Any], requested: int | None) -> int:
    derived = int(hf_config.get("max_position_embeddings", 0) or 0)
    scaling = hf_config.get("rope_scaling")
    if derived and isinstance(scaling, dict) and "factor" in scaling:
        derived = int(derived * float(scaling["factor"]))
    if not derived:
        derived = 2048
    if requested is None:
        return derived
    if requested > derived and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") != "1":
        raise StartupError(
            f"User-specified max_model_len ({requested}) is greater than the derived "
            f"max_model_len (max_position_embeddings={derived} in model's config.json). This "
            "may lead to incorrect model outputs or CUDA errors. To allow overriding this "
            "maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"
        )
    return requested
