"""The memory planner as a command (components.plan.sizing is the planner itself):

    python -m components.sizing --model-config models/deepseek-r1/config.json \\
        --gpu-memory-gib 96 --gpus-per-node 8 --max-nodes 2 --max-model-len 2048

prints the layout, weights / reserve / KV cache per GPU and stage, KV-cache tokens and max
concurrency, and the manual's estimate for comparison (`--json` for machines).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from components.plan.sizing import (
    DEFAULT_MAX_NUM_SEQS,
    KV_CACHE_DTYPES,
    PlanError,
    plan_for_config_file,
)

_CLI_FLAGS = {
    "tensor_parallel_size": "--tensor-parallel-size",
    "pipeline_parallel_size": "--pipeline-parallel-size",
    "max_model_len": "--max-model-len",
    "max_num_seqs": "--max-num-seqs",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "kv_cache_dtype": "--kv-cache-dtype",
    "expert_parallel": "--expert-parallel",
    "reserve_gib": "--reserve-gib",
    "weights_bytes": "--weights-bytes",
    "config_file": "--model-config",
    "gpu_memory_gib": "--gpu-memory-gib",
    "gpus_per_node": "--gpus-per-node",
    "max_nodes": "--max-nodes",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.sizing",
        description=(
            "Plan vLLM serving for a model on identical GPU nodes: parameters, weights, KV "
            "cache, the TP x PP layout on the fewest nodes that fit, and max concurrency."
        ),
    )
    p.add_argument("--model-config", required=True, help="the model's config.json")
    p.add_argument(
        "--weights-bytes",
        type=int,
        help="checkpoint size in bytes (default: model.safetensors.index.json next to the config)",
    )
    p.add_argument(
        "--gpu-memory-gib",
        type=float,
        required=True,
        help="memory per GPU (label or nvidia-smi GiB)",
    )
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument(
        "--max-nodes",
        type=int,
        default=64,
        help="most nodes to consider (default 64: find the minimum)",
    )
    p.add_argument("--max-model-len", type=int, help="default: the model's context length")
    p.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto")
    p.add_argument("--tensor-parallel-size", type=int, help="default: auto")
    p.add_argument("--pipeline-parallel-size", type=int, help="default: auto")
    p.add_argument(
        "--reserve-gib", type=float, help="non-KV reserve per GPU (default 5 dense / 8 MoE)"
    )
    p.add_argument(
        "--expert-parallel",
        action="store_true",
        help="MoE: place whole experts over the TP group (vLLM's --enable-expert-parallel)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        plan = plan_for_config_file(
            args.model_config,
            weights_bytes=args.weights_bytes,
            gpu_memory_gib=args.gpu_memory_gib,
            gpus_per_node=args.gpus_per_node,
            max_nodes=args.max_nodes,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            gpu_memory_utilization=args.gpu_memory_utilization,
            kv_cache_dtype=args.kv_cache_dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            pipeline_parallel_size=args.pipeline_parallel_size,
            reserve_gib=args.reserve_gib,
            expert_parallel=args.expert_parallel,
        )
    except PlanError as exc:
        flag = _CLI_FLAGS.get(exc.field or "")
        prefix = f"{flag}: " if flag else ""
        print(f"sizing: {prefix}{exc.reason}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(plan.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
