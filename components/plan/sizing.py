"""GPU memory planner: which TP x PP layout on how many nodes serves a model, and how much
KV cache that leaves. Pure (reads only config.json and its index); its command line is
`python -m components.sizing` (components/sizing.py).

Memory rules (facts.md section 5, and vLLM's own budget):
- GPU memory. `memory_gib` (hosts[].gpus.memory_gib, --gpu-memory-gib) is the memory per
  GPU as the operator knows it: the card's label (96 for a "96 GB" H20) or nvidia-smi's
  memory.total / 1024 (97871 MiB = 95.6 for the same card). Either way CUDA reports a
  little less as the device total that vLLM multiplies by gpu_memory_utilization (H20
  ~95.0 GiB, H100 80 GB ~79.2 GiB), so the planner counts USABLE_FRACTION (99%) of it:
  96 -> 95.04 GiB, 80 -> 79.2 GiB. Budget per GPU = memory_gib x 0.99 x utilization.
- Weights per GPU: the tensors of that GPU's pipeline stage (layers by vLLM's own
  partition rule; embedding on the first stage, final norm + lm_head on the last), each
  split the way vLLM splits it across TP ranks (model_shapes.py). When the checkpoint size
  is known (model.weights_bytes, or metadata.total_size of model.safetensors.index.json next
  to config.json) the modelled bytes are scaled to it; MTP layers are in that size but not
  loaded.
- Reserve per GPU for activations, CUDA graphs, NCCL buffers and the CUDA context: 5 GiB for
  dense models, 8 GiB for MoE models, or serving.reserve_gib / --reserve-gib.
- KV cache per GPU: GQA keeps K and V of the KV heads it holds (split by TP, at least one
  head per GPU); MLA keeps one latent of kv_lora_rank + qk_rope_head_dim per token and layer,
  *not* split by TP; each stage only for its layers. fp8 KV cache = 1 byte per value.
- A layout fits when every GPU covers weights + reserve + KV cache for max_num_seqs full
  sequences of max_model_len tokens. KV tokens = min over GPUs of what is left after weights
  and reserve divided by that GPU's KV bytes per token; max concurrency = KV tokens /
  max_model_len (what vLLM logs as "Maximum concurrency").

Layout policy (auto TP/PP): serve on the fewest nodes that fit, using all GPUs of those
nodes. TP = GPUs per node (vLLM's multi-node guidance: tensor parallel inside a node,
pipeline parallel across nodes) unless the model forbids it; then the largest legal TP that
divides the GPUs per node, and PP also runs inside nodes. PP = nodes x GPUs per node / TP.
An explicit TP and/or PP is honoured (the other is derived the same way) or refused with
the reason; TP x PP must fill whole nodes unless it fits in one node.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.plan.model_config import (
    ModelConfig,
    ModelConfigError,
    load_model_config,
    read_index_total_size,
)
from components.plan.model_shapes import Inventory, build_inventory, tp_problems

if TYPE_CHECKING:
    from components.settings import Settings

GIB = 1024**3
# Share of memory_gib that CUDA reports as device total (see module docstring).
USABLE_FRACTION = 0.99
RESERVE_GIB_DENSE = 5.0
RESERVE_GIB_MOE = 8.0
# The manual's seed formula: GB = params x bytes_per_param / 1e9 x 1.2.
SEED_OVERHEAD = 1.2
# Readiness: vLLM's own engine start-up budget (VLLM_ENGINE_READY_TIMEOUT_S defaults to 600 s:
# torch.compile, CUDA graphs, Ray) plus reading each node's share of the weights at a
# conservative 0.5 GiB/s from local disk.
READY_BASE_S = 600
READY_S_PER_NODE_GIB = 2.0
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
DEFAULT_MAX_NUM_SEQS = 256


class PlanError(ValueError):
    """No layout serves the model (or a requested one is illegal). `field` names the input
    the reason is about (e.g. "tensor_parallel_size"), None for a capacity problem."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class StagePlan:
    """One pipeline stage; every GPU of a stage holds the same amounts (bytes per GPU)."""

    stage: int
    layer_start: int
    layer_end: int  # exclusive
    weights_bytes: int
    reserve_bytes: int
    kv_bytes_per_token: int
    kv_needed_bytes: int  # max_num_seqs x max_model_len tokens
    budget_bytes: int  # memory_gib x USABLE_FRACTION x gpu_memory_utilization

    @property
    def layers(self) -> int:
        return self.layer_end - self.layer_start

    @property
    def kv_cache_bytes(self) -> int:
        """What vLLM would give the KV cache on this GPU (budget - weights - reserve)."""
        return self.budget_bytes - self.weights_bytes - self.reserve_bytes

    @property
    def free_bytes(self) -> int:
        """Headroom after the KV cache for max_num_seqs x max_model_len (negative: short)."""
        return self.kv_cache_bytes - self.kv_needed_bytes

    @property
    def kv_tokens(self) -> int:
        return max(0, self.kv_cache_bytes) // self.kv_bytes_per_token

    @property
    def fits(self) -> bool:
        return self.free_bytes >= 0


@dataclass(frozen=True)
class GpuBudget:
    node: int  # index into the plan's nodes (hosts[node])
    gpu: int  # GPU index on that node
    stage: StagePlan
    tp_rank: int


def _gib(n: float) -> float:
    return round(n / GIB, 2)


@dataclass(frozen=True)
class Plan:
    """The memory plan: exported as a stack output (to_dict) and used to launch vLLM."""

    architecture: str
    family: str | None
    model_summary: str
    quantization: str
    parameters: int | None  # as vLLM loads them (no MTP); None for unmodelled families
    parameters_checkpoint: int | None
    weight_bytes: int  # loaded, whole model (not counting TP replication)
    checkpoint_bytes: int | None
    weight_bytes_source: str
    kv_cache_dtype: str
    kv_cache_bytes_per_token: int  # whole model, at the KV dtype
    tensor_parallel_size: int
    pipeline_parallel_size: int
    nodes: int
    max_nodes: int
    gpus_per_node: int
    gpu_memory_gib: float
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    reserve_gib: float
    stages: tuple[StagePlan, ...]
    seed_estimate_gb: float
    seed_nodes: int
    layout_reason: str
    # Routed experts placed whole over the TP group (vLLM's --enable-expert-parallel).
    expert_parallel: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def gpu_memory_gib_effective(self) -> float:
        return self.gpu_memory_gib * USABLE_FRACTION

    @property
    def gpus_used(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def kv_cache_tokens(self) -> int:
        return min(s.kv_tokens for s in self.stages)

    @property
    def max_concurrency(self) -> float:
        return round(self.kv_cache_tokens / self.max_model_len, 2)

    @property
    def per_gpu(self) -> tuple[GpuBudget, ...]:
        out = []
        tp = self.tensor_parallel_size
        for stage in self.stages:
            for rank in range(tp):
                global_rank = stage.stage * tp + rank
                out.append(
                    GpuBudget(
                        global_rank // self.gpus_per_node,
                        global_rank % self.gpus_per_node,
                        stage,
                        rank,
                    )
                )
        return tuple(out)

    @property
    def ready_timeout_s(self) -> int:
        """Suggested readiness timeout: 600 s + 2 s per GiB of weights on the fullest node,
        rounded up to 30 s (R1 on 2 x 8 H20: ~1260 s)."""
        per_node: dict[int, int] = {}
        for g in self.per_gpu:
            per_node[g.node] = per_node.get(g.node, 0) + g.stage.weights_bytes
        seconds = READY_BASE_S + READY_S_PER_NODE_GIB * max(per_node.values()) / GIB
        return int(math.ceil(seconds / 30) * 30)

    def engine_args(self) -> list[str]:
        """The vLLM flags this plan decides (what the engine must be started with)."""
        return [
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--pipeline-parallel-size",
            str(self.pipeline_parallel_size),
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:g}",
            "--kv-cache-dtype",
            self.kv_cache_dtype,
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (bytes as ints, GiB rounded to 0.01)."""
        return {
            "architecture": self.architecture,
            "family": self.family,
            "model": self.model_summary,
            "quantization": self.quantization,
            "parameters": self.parameters,
            "parameters_checkpoint": self.parameters_checkpoint,
            "weight_bytes": self.weight_bytes,
            "checkpoint_bytes": self.checkpoint_bytes,
            "weight_bytes_source": self.weight_bytes_source,
            "kv_cache_dtype": self.kv_cache_dtype,
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "nodes": self.nodes,
            "max_nodes": self.max_nodes,
            "gpus_per_node": self.gpus_per_node,
            "gpus_used": self.gpus_used,
            "gpu_memory_gib": self.gpu_memory_gib,
            "gpu_memory_gib_effective": round(self.gpu_memory_gib_effective, 2),
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "reserve_gib": self.reserve_gib,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrency": self.max_concurrency,
            "seed_estimate_gb": self.seed_estimate_gb,
            "seed_nodes": self.seed_nodes,
            "ready_timeout_s": self.ready_timeout_s,
            "layout": self.layout_reason,
            "expert_parallel": self.expert_parallel,
            "notes": list(self.notes),
            "stages": [
                {
                    "stage": s.stage,
                    "layers": [s.layer_start, s.layer_end],
                    "weights_gib": _gib(s.weights_bytes),
                    "kv_bytes_per_token": s.kv_bytes_per_token,
                    "kv_tokens": s.kv_tokens,
                }
                for s in self.stages
            ],
            "per_gpu": [
                {
                    "node": g.node,
                    "gpu": g.gpu,
                    "stage": g.stage.stage,
                    "tp_rank": g.tp_rank,
                    "weights_gib": _gib(g.stage.weights_bytes),
                    "reserve_gib": _gib(g.stage.reserve_bytes),
                    "kv_gib": _gib(g.stage.kv_needed_bytes),
                    "free_gib": _gib(g.stage.free_bytes),
                    "budget_gib": _gib(g.stage.budget_bytes),
                    "kv_cache_gib": _gib(g.stage.kv_cache_bytes),
                }
                for g in self.per_gpu
            ],
        }

    def table(self) -> str:
        """The plan as a readable text table (the CLI's default output)."""
        params = (
            f"{self.parameters / 1e9:.2f} B loaded"
            + (
                f" ({self.parameters_checkpoint / 1e9:.2f} B in the checkpoint)"
                if self.parameters_checkpoint and self.parameters_checkpoint != self.parameters
                else ""
            )
            if self.parameters
            else "unknown (architecture not modelled)"
        )
        ckpt = f", checkpoint {self.checkpoint_bytes / 1e9:.2f} GB" if self.checkpoint_bytes else ""
        rows = [
            ("Model", self.model_summary),
            ("Quantization", self.quantization),
            ("Parameters", params),
            (
                "Weights",
                f"{self.weight_bytes / GIB:.2f} GiB loaded{ckpt} "
                f"(size from {self.weight_bytes_source})",
            ),
            (
                "KV cache / token",
                f"{self.kv_cache_bytes_per_token:,} B whole model "
                f"(kv_cache_dtype {self.kv_cache_dtype})",
            ),
            (
                "Layout",
                f"TP {self.tensor_parallel_size} x PP {self.pipeline_parallel_size} on "
                f"{self.nodes} node(s) x {self.gpus_per_node} GPUs ({self.layout_reason})"
                + (
                    f"; expert parallel: whole experts over each TP group of "
                    f"{self.tensor_parallel_size}"
                    if self.expert_parallel
                    else ""
                ),
            ),
            (
                "GPU budget",
                f"{self.gpu_memory_gib:g} GiB x {USABLE_FRACTION} usable x "
                f"{self.gpu_memory_utilization:g} utilization = "
                f"{self.stages[0].budget_bytes / GIB:.2f} GiB",
            ),
            (
                "Seed estimate",
                f"{self.seed_estimate_gb:.1f} GB (params x bytes/param / 1e9 x {SEED_OVERHEAD}) "
                f"-> {self.seed_nodes} node(s) of {self.gpus_per_node} x "
                f"{self.gpu_memory_gib:g} GB",
            ),
        ]
        width = max(len(k) for k, _ in rows)
        out = [f"{k.ljust(width)}  {v}" for k, v in rows]
        out.append("")
        header = (
            "stage  layers   GPUs (node:gpu)     weights  reserve  kv_need  budget   free"
            "     kv_cache  kv_tokens"
        )
        out.append("Per GPU (GiB, every GPU of a stage holds the same):")
        out.append(header)
        for s in self.stages:
            gpus = [g for g in self.per_gpu if g.stage.stage == s.stage]
            where = f"{gpus[0].node}:{gpus[0].gpu}-{gpus[-1].node}:{gpus[-1].gpu}"
            out.append(
                f"{s.stage:>5}  {s.layer_start:>3}-{s.layer_end - 1:<3}  {where:<18}  "
                f"{s.weights_bytes / GIB:>7.2f}  {s.reserve_bytes / GIB:>7.2f}  "
                f"{s.kv_needed_bytes / GIB:>7.2f}  {s.budget_bytes / GIB:>6.2f}  "
                f"{s.free_bytes / GIB:>6.2f}  {s.kv_cache_bytes / GIB:>8.2f}  {s.kv_tokens:>9,}"
            )
        out.append("")
        out.append(
            f"KV cache tokens  {self.kv_cache_tokens:,} (max_num_seqs {self.max_num_seqs} x "
            f"max_model_len {self.max_model_len} = "
            f"{self.max_num_seqs * self.max_model_len:,} needed)"
        )
        out.append(
            f"Max concurrency  {self.max_concurrency:g} x {self.max_model_len}-token requests"
        )
        out.append(f"Ready timeout    {self.ready_timeout_s} s (suggested)")
        for note in self.notes:
            out.append(f"Note: {note}")
        return "\n".join(out)


def pp_partition(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """vLLM's get_pp_indices: equal shares; leftover layers go to the stages before the
    last one, starting from the second-to-last (the last stage also holds lm_head)."""
    sizes = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        sizes[-i] += 1
    out, start = [], 0
    for size in sizes:
        out.append((start, start + size))
        start += size
    return out


class _Weights:
    """Weight bytes per GPU for any layout, calibrated to the checkpoint size when known."""

    def __init__(self, model: ModelConfig, checkpoint_bytes: int | None, source: str) -> None:
        self.model = model
        self.checkpoint_bytes = checkpoint_bytes
        self.source = source
        self.notes: list[str] = []
        self.inventory: Inventory | None = None
        self.scale = 1.0
        quant = model.quantization
        if model.family is None:
            if checkpoint_bytes is None:
                raise PlanError(
                    f"architecture {model.architecture} (model_type {model.model_type!r}) is not "
                    "modelled by the planner (llama, mistral, qwen2, qwen3, qwen3_moe, mixtral, "
                    "deepseek_v2, deepseek_v3); give the checkpoint size as weights_bytes "
                    "(safetensors metadata.total_size) to plan it anyway",
                    field="weights_bytes",
                )
            self.loaded = checkpoint_bytes
            self.notes.append(
                f"{model.architecture} is not modelled: its {checkpoint_bytes / 1e9:.2f} GB are "
                "spread evenly over layers and TP ranks, and pipeline-parallel support is unchecked"
            )
            return
        if quant.method == "unknown" and checkpoint_bytes is None:
            raise PlanError(
                f"quantization {quant.source!r} is not modelled; give the checkpoint size as "
                "weights_bytes (or put model.safetensors.index.json next to config.json)",
                field="weights_bytes",
            )
        self.inventory = build_inventory(model)
        modelled_ckpt = self.inventory.checkpoint_bytes(quant, model.checkpoint_dtype_bytes)
        if checkpoint_bytes is not None:
            self.scale = checkpoint_bytes / modelled_ckpt
            if abs(self.scale - 1) > 0.05:
                self.notes.append(
                    f"checkpoint size {checkpoint_bytes / 1e9:.2f} GB differs from the "
                    f"config.json estimate {modelled_ckpt / 1e9:.2f} GB by "
                    f"{(self.scale - 1) * 100:+.1f}%; planning with the checkpoint size"
                )
        self.loaded = round(self.inventory.loaded_bytes(quant) * self.scale)

    def per_gpu(self, tp: int, pp: int, start: int, end: int, ep: bool = False) -> int:
        if self.inventory is None:
            share = self.loaded * (end - start) / self.model.num_layers / tp
            return math.ceil(share)
        raw = self.inventory.gpu_bytes(self.model.quantization, tp, pp, start, end, ep)
        return math.ceil(raw * self.scale)


@dataclass(frozen=True)
class _Inputs:
    model: ModelConfig
    weights: _Weights
    gpu_memory_gib: float
    gpus_per_node: int
    max_nodes: int
    max_model_len: int
    max_num_seqs: int
    utilization: float
    kv_dtype_bytes: int
    reserve_bytes: int
    expert_parallel: bool = False

    def tp_problems(self, tp: int) -> list[str]:
        return tp_problems(self.model, tp, self.expert_parallel)

    @property
    def budget_bytes(self) -> int:
        return int(self.gpu_memory_gib * USABLE_FRACTION * self.utilization * GIB)

    def stages(self, tp: int, pp: int) -> tuple[StagePlan, ...]:
        out = []
        for i, (start, end) in enumerate(pp_partition(self.model.num_layers, pp)):
            per_token = (end - start) * self.model.kv_bytes_per_token_per_layer(
                self.kv_dtype_bytes, tp
            )
            out.append(
                StagePlan(
                    stage=i,
                    layer_start=start,
                    layer_end=end,
                    weights_bytes=self.weights.per_gpu(tp, pp, start, end, self.expert_parallel),
                    reserve_bytes=self.reserve_bytes,
                    kv_bytes_per_token=per_token,
                    kv_needed_bytes=per_token * self.max_num_seqs * self.max_model_len,
                    budget_bytes=self.budget_bytes,
                )
            )
        return tuple(out)


def _pp_problems(model: ModelConfig, pp: int) -> list[str]:
    if pp < 1:
        return [f"PP {pp} must be at least 1"]
    if pp > model.num_layers:
        return [f"PP {pp} exceeds num_hidden_layers {model.num_layers} (each stage needs a layer)"]
    return []


def _shortfall_message(
    inp: _Inputs, tp: int, pp: int, nodes: int, stages: Sequence[StagePlan]
) -> str:
    worst = min(stages, key=lambda s: s.free_bytes)
    need = worst.weights_bytes + worst.reserve_bytes + worst.kv_needed_bytes
    msg = (
        f"does not fit on {nodes} node(s) of {inp.gpus_per_node} GPUs with TP {tp} x PP {pp}: "
        f"the fullest GPU (stage {worst.stage}, layers {worst.layer_start}-{worst.layer_end - 1}) "
        f"needs {worst.weights_bytes / GIB:.2f} GiB weights + {worst.reserve_bytes / GIB:.2f} GiB "
        f"reserve + {worst.kv_needed_bytes / GIB:.2f} GiB KV cache for max_num_seqs "
        f"{inp.max_num_seqs} x max_model_len {inp.max_model_len} = {need / GIB:.2f} GiB, but has "
        f"{inp.gpu_memory_gib:g} GiB x {USABLE_FRACTION} usable x {inp.utilization:g} "
        f"gpu_memory_utilization = {worst.budget_bytes / GIB:.2f} GiB."
    )
    if worst.weights_bytes + worst.reserve_bytes > worst.budget_bytes:
        return (
            msg + " The weights alone do not fit: add nodes or use a smaller/quantized checkpoint."
        )
    tokens = min(s.kv_tokens for s in stages)
    seqs = tokens // inp.max_model_len
    if seqs >= 1:
        return msg + (
            f" Its KV cache would hold {tokens:,} tokens: lower max_num_seqs to {seqs}, lower "
            "max_model_len, use kv_cache_dtype fp8, or add nodes."
        )
    return msg + (
        f" Its KV cache would hold {tokens:,} tokens, not one max_model_len sequence: lower "
        "max_model_len, raise gpu_memory_utilization, or add nodes."
    )


def _choose_layout(
    inp: _Inputs, tp_req: int | None, pp_req: int | None
) -> tuple[int, int, int, tuple[StagePlan, ...], str, list[str]]:
    model, gpn = inp.model, inp.gpus_per_node
    notes: list[str] = []
    if tp_req is not None:
        problems = inp.tp_problems(tp_req)
        if problems:
            legal = [t for t in range(1, gpn + 1) if gpn % t == 0 and not inp.tp_problems(t)]
            raise PlanError(
                f"tensor_parallel_size {tp_req} is not allowed for {model.architecture}: "
                f"{'; '.join(problems)} (legal sizes dividing {gpn} GPUs per node: {legal})",
                field="tensor_parallel_size",
            )
    if pp_req is not None:
        problems = _pp_problems(model, pp_req)
        if problems:
            raise PlanError(
                f"pipeline_parallel_size {pp_req} is not allowed: {'; '.join(problems)}",
                field="pipeline_parallel_size",
            )

    if tp_req is not None and pp_req is not None:
        total = tp_req * pp_req
        if total <= gpn:
            nodes = 1
            if total < gpn:
                notes.append(f"TP x PP = {total} uses {total} of the node's {gpn} GPUs")
        elif total % gpn:
            raise PlanError(
                f"tensor_parallel_size {tp_req} x pipeline_parallel_size {pp_req} = {total} GPUs "
                f"is not a whole number of {gpn}-GPU nodes",
                field="tensor_parallel_size",
            )
        else:
            nodes = total // gpn
        if nodes > inp.max_nodes:
            raise PlanError(
                f"tensor_parallel_size {tp_req} x pipeline_parallel_size {pp_req} = {total} GPUs "
                f"needs {nodes} nodes of {gpn} GPUs, but only {inp.max_nodes} host(s) "
                "are configured",
                field="tensor_parallel_size",
            )
        stages = inp.stages(tp_req, pp_req)
        if not all(s.fits for s in stages):
            raise PlanError(_shortfall_message(inp, tp_req, pp_req, nodes, stages))
        return tp_req, pp_req, nodes, stages, "TP and PP as configured", notes

    # Auto TP: the largest legal divisor of the GPUs per node.
    if tp_req is None and pp_req is None:
        tp_auto = next(t for t in range(gpn, 0, -1) if gpn % t == 0 and not inp.tp_problems(t))
        if tp_auto != gpn:
            notes.append(
                f"TP {gpn} (all GPUs of a node) is not allowed: "
                f"{'; '.join(inp.tp_problems(gpn))}; using TP {tp_auto} with PP inside nodes"
            )
    skipped: list[str] = []
    last: tuple[int, int, int, tuple[StagePlan, ...]] | None = None
    for nodes in range(1, inp.max_nodes + 1):
        gpus = nodes * gpn
        if tp_req is not None:
            if gpus % tp_req:
                skipped.append(f"{nodes} node(s): {gpus} GPUs are not a multiple of TP {tp_req}")
                continue
            tp, pp = tp_req, gpus // tp_req
        elif pp_req is not None:
            if gpus % pp_req:
                skipped.append(f"{nodes} node(s): {gpus} GPUs are not a multiple of PP {pp_req}")
                continue
            tp, pp = gpus // pp_req, pp_req
            problems = inp.tp_problems(tp)
            if problems:
                skipped.append(f"{nodes} node(s): TP {tp} not allowed ({'; '.join(problems)})")
                continue
        else:
            tp, pp = tp_auto, gpus // tp_auto
        problems = _pp_problems(model, pp)
        if problems:
            skipped.append(f"{nodes} node(s): {'; '.join(problems)}")
            continue
        stages = inp.stages(tp, pp)
        if all(s.fits for s in stages):
            if tp_req is not None:
                reason = "TP as configured; PP fills the nodes"
            elif pp_req is not None:
                reason = "PP as configured; TP fills the nodes"
            else:
                reason = f"fewest nodes that fit; TP {tp} inside nodes, PP {pp}"
            return tp, pp, nodes, stages, reason, notes
        last = (tp, pp, nodes, stages)
    if last is None:
        raise PlanError(
            "no layout is possible on up to "
            f"{inp.max_nodes} node(s) of {gpn} GPUs: {'; '.join(skipped)}",
            field="tensor_parallel_size" if tp_req is not None else "pipeline_parallel_size",
        )
    tp, pp, nodes, stages = last
    raise PlanError(_shortfall_message(inp, tp, pp, nodes, stages))


def make_plan(
    model: ModelConfig,
    *,
    gpu_memory_gib: float,
    gpus_per_node: int,
    max_nodes: int = 1,
    max_model_len: int | None = None,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    gpu_memory_utilization: float = 0.9,
    kv_cache_dtype: str = "auto",
    tensor_parallel_size: int | None = None,
    pipeline_parallel_size: int | None = None,
    reserve_gib: float | None = None,
    checkpoint_bytes: int | None = None,
    checkpoint_source: str | None = None,
    expert_parallel: bool = False,
) -> Plan:
    """Plan `model` on up to `max_nodes` identical nodes. None for TP/PP means auto.

    `checkpoint_bytes` is the checkpoint's size on disk (weights_bytes, or the index's
    metadata.total_size; `checkpoint_source` says which). Raises PlanError."""
    for name, value in (
        ("gpu_memory_gib", gpu_memory_gib),
        ("gpus_per_node", gpus_per_node),
        ("max_nodes", max_nodes),
        ("max_num_seqs", max_num_seqs),
    ):
        if value <= 0:
            raise PlanError(f"{name} must be positive, got {value}", field=name)
    if not 0 < gpu_memory_utilization <= 1:
        raise PlanError(
            f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}",
            field="gpu_memory_utilization",
        )
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise PlanError(
            f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}",
            field="kv_cache_dtype",
        )
    if checkpoint_bytes is not None and checkpoint_bytes <= 0:
        raise PlanError(
            f"weights_bytes must be positive, got {checkpoint_bytes}", field="weights_bytes"
        )
    if expert_parallel and not model.is_moe:
        raise PlanError(
            f"expert parallelism needs a mixture-of-experts model; {model.architecture} has no "
            "experts: remove it",
            field="expert_parallel",
        )

    limit = model.max_position_embeddings
    if max_model_len is None:
        if limit is None:
            raise PlanError(
                "max_model_len is required: config.json has no max_position_embeddings",
                field="max_model_len",
            )
        max_model_len = limit
    elif max_model_len <= 0:
        raise PlanError(
            f"max_model_len must be positive, got {max_model_len}", field="max_model_len"
        )
    elif limit is not None and max_model_len > limit:
        raise PlanError(
            f"max_model_len {max_model_len} exceeds the model's context of {limit} tokens "
            "(config.json); vLLM refuses it",
            field="max_model_len",
        )

    source = checkpoint_source or ("weights_bytes" if checkpoint_bytes else "config.json")
    weights = _Weights(model, checkpoint_bytes, source)
    if reserve_gib is None:
        reserve_gib = RESERVE_GIB_MOE if model.is_moe else RESERVE_GIB_DENSE
    if reserve_gib < 0:
        raise PlanError(f"reserve_gib must not be negative, got {reserve_gib}", field="reserve_gib")
    kv_bytes = 1 if kv_cache_dtype.startswith("fp8") else 2
    inp = _Inputs(
        model=model,
        weights=weights,
        gpu_memory_gib=gpu_memory_gib,
        gpus_per_node=gpus_per_node,
        max_nodes=max_nodes,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        utilization=gpu_memory_utilization,
        kv_dtype_bytes=kv_bytes,
        reserve_bytes=int(reserve_gib * GIB),
        expert_parallel=expert_parallel,
    )
    tp, pp, nodes, stages, reason, notes = _choose_layout(
        inp, tensor_parallel_size, pipeline_parallel_size
    )

    inv = weights.inventory
    params = inv.parameters if inv else None
    params_ckpt = inv.checkpoint_parameters if inv else None
    quant = model.quantization
    if params is not None:
        seed_gb = params * quant.seed_bytes_per_param / 1e9 * SEED_OVERHEAD
    else:
        seed_gb = weights.loaded / 1e9 * SEED_OVERHEAD
    seed_nodes = max(1, math.ceil(seed_gb / (gpus_per_node * gpu_memory_gib)))
    if model.num_mtp_layers and params_ckpt and params:
        notes.append(
            f"{model.num_mtp_layers} MTP layer(s) ({(params_ckpt - params) / 1e9:.2f} B params) "
            "are in the checkpoint but vLLM loads them only for speculative decoding: left out"
        )
    notes.extend(weights.notes)
    return Plan(
        architecture=model.architecture,
        family=model.family,
        model_summary=model.describe(),
        quantization=quant.describe(),
        parameters=params,
        parameters_checkpoint=params_ckpt,
        weight_bytes=weights.loaded,
        checkpoint_bytes=checkpoint_bytes,
        weight_bytes_source=weights.source,
        kv_cache_dtype=kv_cache_dtype,
        kv_cache_bytes_per_token=model.num_layers * model.kv_bytes_per_token_per_layer(kv_bytes),
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        nodes=nodes,
        max_nodes=max_nodes,
        gpus_per_node=gpus_per_node,
        gpu_memory_gib=gpu_memory_gib,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        reserve_gib=reserve_gib,
        stages=stages,
        seed_estimate_gb=round(seed_gb, 1),
        seed_nodes=seed_nodes,
        layout_reason=reason,
        expert_parallel=expert_parallel,
        notes=tuple(notes),
    )


def plan_for_config_file(
    config_file: str | Path, *, weights_bytes: int | None = None, **kwargs: Any
) -> Plan:
    """make_plan for a config.json on disk; an index next to it supplies the checkpoint
    size unless weights_bytes is given. ModelConfigError becomes PlanError(field="config_file")."""
    try:
        model = load_model_config(config_file)
        index_size = None if weights_bytes is not None else read_index_total_size(config_file)
    except ModelConfigError as exc:
        raise PlanError(str(exc), field="config_file") from exc
    if weights_bytes is not None:
        size, source = weights_bytes, "weights_bytes"
    elif index_size is not None:
        size, source = index_size, "model.safetensors.index.json metadata.total_size"
    else:
        size, source = None, "config.json shapes"
    return make_plan(model, checkpoint_bytes=size, checkpoint_source=source, **kwargs)


# PlanError.field -> the stack-config key path a user edits.
_SETTINGS_KEYS = {
    "tensor_parallel_size": "serving.tensor_parallel_size",
    "pipeline_parallel_size": "serving.pipeline_parallel_size",
    "max_model_len": "serving.max_model_len",
    "max_num_seqs": "serving.max_num_seqs",
    "gpu_memory_utilization": "serving.gpu_memory_utilization",
    "kv_cache_dtype": "serving.kv_cache_dtype",
    "reserve_gib": "serving.reserve_gib",
    "expert_parallel": "serving.expert_parallel",
    "weights_bytes": "model.weights_bytes",
    "config_file": "model.config_file",
    "gpu_memory_gib": "hosts[0].gpus.memory_gib",
    "gpus_per_node": "hosts[0].gpus.count",
}


def plan_from_settings(settings: Settings, base_dir: str | Path | None = None) -> Plan:
    """The plan for a validated stack config. Relative model.config_file paths resolve
    against `base_dir` (the project directory; default: the working directory). Raises
    PlanError whose message starts with the key path to change (or "plan:")."""
    config_file = Path(settings.model.config_path).expanduser()
    if base_dir is not None and not config_file.is_absolute():
        config_file = Path(base_dir) / config_file
    serving = settings.serving
    try:
        plan = plan_for_config_file(
            config_file,
            weights_bytes=settings.model.weights_bytes,
            gpu_memory_gib=settings.gpu_memory_gib,
            gpus_per_node=settings.gpus_per_node,
            max_nodes=len(settings.hosts),
            max_model_len=serving.max_model_len,
            max_num_seqs=serving.max_num_seqs,
            gpu_memory_utilization=serving.gpu_memory_utilization,
            kv_cache_dtype=serving.kv_cache_dtype,
            tensor_parallel_size=serving.tp,
            pipeline_parallel_size=serving.pp,
            reserve_gib=serving.reserve_gib,
            expert_parallel=serving.expert_parallel,
        )
    except PlanError as exc:
        key = _SETTINGS_KEYS.get(exc.field or "", "plan")
        raise PlanError(f"{key}: {exc.reason}", field=exc.field) from exc
    if plan.nodes < len(settings.hosts):
        unused = ", ".join(h.name for h in settings.hosts[plan.nodes :])
        plan = replace(
            plan,
            notes=(
                *plan.notes,
                f"serving uses the first {plan.nodes} of {len(settings.hosts)} hosts "
                f"(fewest nodes that fit); not serving: {unused}",
            ),
        )
    return plan
