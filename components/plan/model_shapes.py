"""Every weight tensor a supported model has, as vLLM shards it, and what it costs in bytes.

One job: from a `ModelConfig`, list the tensors of the embedding, each decoder layer, the
final norm/lm_head and (checkpoint only) the MTP layers, each tagged with how tensor
parallelism splits it. From that single inventory come the parameter count, the weight
bytes per quantization scheme, the weight bytes on each GPU for a TP x PP layout, and the
TP-legality rules (divisibility, FP8 block and AWQ/GPTQ group alignment).

Sharding follows vLLM's layers:
- "col"   ColumnParallelLinear/QKV q part/MergedColumn (gate/up): output rows / TP
- "row"   RowParallelLinear (o_proj, down_proj): input columns / TP
- "kv"    QKV k/v part: KV heads / TP, but at least one head per GPU (replicated beyond)
- "vocab" Vocab-parallel embedding / lm_head: vocab padded to 64, split by TP
- "rep"   Replicated on every TP rank: norms, MoE routers, and MLA's q_a_proj and
          kv_a_proj_with_mqa (ReplicatedLinear in vLLM's DeepSeek-V2/V3 attention)
Routed experts are split like the dense MLP (vLLM's FusedMoE shards their intermediate size
by TP); with expert parallelism (`--enable-expert-parallel`) they are placed whole instead,
num_experts / EP of them on each GPU of the EP group (here the TP group: one data-parallel
rank), and only the expert count must divide the group. Shared experts stay TP-sharded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from components.plan.model_config import ModelConfig, Quantization

Shard = Literal["col", "row", "kv", "vocab", "rep"]
# linear: stored per the quantization scheme; dense: model dtype; fp32: always 4 bytes.
Kind = Literal["linear", "dense", "fp32"]

# vLLM pads vocabularies to a multiple of 64 before splitting them across TP ranks.
VOCAB_PADDING = 64
# Unquantized weights are loaded as bf16/fp16, also for float32 checkpoints.
LOADED_DTYPE_BYTES = 2


@dataclass(frozen=True)
class Tensor:
    name: str
    rows: int  # output features (vector length for norms and biases)
    cols: int  # input features (1 for vectors)
    kind: Kind
    shard: Shard
    copies: int = 1  # routed experts share one shape
    heads: int = 0  # "kv" shard: number of KV heads along `rows`
    dim_name: str = ""  # config.json field behind the split dimension (for messages)
    routed_expert: bool = False  # placed whole per GPU under expert parallelism
    # One part of a merged weight (QKVParallelLinear's q/k/v, MergedColumnParallelLinear's
    # and FusedMoE's gate/up): vLLM places each part's FP8 block scales from the part's
    # offset rounded up to a block, so a part must be whole blocks even without TP.
    merged: bool = False

    @property
    def params(self) -> int:
        return self.rows * self.cols * self.copies

    def copies_on_gpu(self, tp: int, ep: bool = False) -> int:
        """Copies one GPU holds: routed experts are spread over the EP group (the fullest
        GPU's share when they do not divide it), everything else is on every GPU."""
        if ep and self.routed_expert:
            return -(-self.copies // tp)
        return self.copies

    def shape_on_gpu(self, tp: int, ep: bool = False) -> tuple[int, int]:
        """(rows, cols) one TP rank holds (ceil for the padded vocabulary); a routed expert
        under expert parallelism is whole."""
        if ep and self.routed_expert:
            return self.rows, self.cols
        if self.shard == "col":
            return self.rows // tp, self.cols
        if self.shard == "row":
            return self.rows, self.cols // tp
        if self.shard == "kv":
            per_head = self.rows // self.heads
            return max(1, self.heads // tp) * per_head, self.cols
        if self.shard == "vocab":
            padded = -(-self.rows // VOCAB_PADDING) * VOCAB_PADDING
            return -(-padded // tp), self.cols
        return self.rows, self.cols


def matrix_bytes(rows: int, cols: int, kind: Kind, quant: Quantization, dense_bytes: int) -> int:
    """Bytes of one rows x cols tensor (scales, zero points and g_idx included).

    FP8 block: 1 byte per weight + one fp32 scale per block_n x block_k block
    (`weight_scale_inv`). AWQ/GPTQ: packed weights (bits/8 per weight) + one fp16 scale and
    one packed zero point per output row and group of `group_size` input columns, + GPTQ's
    int32 g_idx per input column. Unknown methods are counted as 16-bit: the checkpoint
    size then calibrates them (sizing.py)."""
    n = rows * cols
    if kind == "fp32":
        return 4 * n
    if kind == "dense" or quant.method in ("none", "unknown"):
        return dense_bytes * n
    if quant.method in ("fp8", "int8"):
        if quant.block:
            bn, bk = quant.block
            return n + math.ceil(rows / bn) * math.ceil(cols / bk) * 4
        return n + (rows * 4 if quant.per_channel else 4)
    # awq / gptq
    bits = quant.weight_bits
    groups = math.ceil(cols / quant.group_size) if quant.group_size else 1
    total = n * bits // 8 + groups * rows * 2
    if quant.has_zeros:
        total += groups * rows * bits // 8
    if quant.has_g_idx:
        total += cols * 4
    return total


@dataclass(frozen=True)
class Inventory:
    """Tensors by pipeline position. `mtp` is in the checkpoint but not loaded."""

    embed: tuple[Tensor, ...]
    layers: tuple[tuple[Tensor, ...], ...]
    head: tuple[Tensor, ...]  # final norm + lm_head (lm_head last)
    mtp: tuple[Tensor, ...]
    tied: bool  # lm_head shares the embedding matrix

    def _head(self, pp: int) -> tuple[Tensor, ...]:
        # Tied embeddings share one matrix when one stage holds both; with PP the last
        # stage gets its own lm_head (vLLM loads it from the embedding weights).
        if self.tied and pp == 1:
            return tuple(t for t in self.head if t.name != "lm_head")
        return self.head

    def loaded_tensors(self) -> list[Tensor]:
        out = list(self.embed)
        for layer in self.layers:
            out.extend(layer)
        out.extend(self._head(1))
        return out

    @property
    def parameters(self) -> int:
        """Parameters vLLM loads (MTP layers excluded; a tied lm_head counted once)."""
        return sum(t.params for t in self.loaded_tensors())

    @property
    def checkpoint_parameters(self) -> int:
        return self.parameters + sum(t.params for t in self.mtp)

    def loaded_bytes(self, quant: Quantization) -> int:
        return sum(
            matrix_bytes(t.rows, t.cols, t.kind, quant, LOADED_DTYPE_BYTES) * t.copies
            for t in self.loaded_tensors()
        )

    def checkpoint_bytes(self, quant: Quantization, dtype_bytes: int) -> int:
        tensors = self.loaded_tensors() + list(self.mtp)
        return sum(
            matrix_bytes(t.rows, t.cols, t.kind, quant, dtype_bytes) * t.copies for t in tensors
        )

    def gpu_bytes(
        self, quant: Quantization, tp: int, pp: int, start: int, end: int, ep: bool = False
    ) -> int:
        """Weight bytes on one GPU of the pipeline stage holding layers [start, end); `ep`:
        expert parallelism over the TP group."""
        tensors: list[Tensor] = []
        if start == 0:
            tensors.extend(self.embed)
        for layer in self.layers[start:end]:
            tensors.extend(layer)
        if end == len(self.layers):
            tensors.extend(self._head(pp))
        total = 0
        for t in tensors:
            rows, cols = t.shape_on_gpu(tp, ep)
            total += matrix_bytes(rows, cols, t.kind, quant, LOADED_DTYPE_BYTES) * (
                t.copies_on_gpu(tp, ep)
            )
        return total


def _norm(name: str, size: int) -> Tensor:
    return Tensor(name, size, 1, "dense", "rep")


def _mlp(
    prefix: str, hidden: int, inter: int, dim_name: str, copies: int = 1, routed: bool = False
) -> list[Tensor]:
    def t(name: str, rows: int, cols: int, shard: Shard) -> Tensor:
        return Tensor(
            f"{prefix}.{name}",
            rows,
            cols,
            "linear",
            shard,
            copies,
            dim_name=dim_name,
            routed_expert=routed,
            merged=shard == "col",  # gate_proj + up_proj
        )

    return [
        t("gate_proj", inter, hidden, "col"),
        t("up_proj", inter, hidden, "col"),
        t("down_proj", hidden, inter, "row"),
    ]


def _gqa_attention(cfg: ModelConfig) -> list[Tensor]:
    h, d = cfg.hidden_size, cfg.head_dim
    q_rows, kv_rows = cfg.num_heads * d, cfg.num_kv_heads * d
    # The split dimension is heads x head_dim rows: messages name both keys, not a head count.
    heads, kvh = "num_attention_heads x head_dim", "num_key_value_heads x head_dim"
    out = [
        Tensor("q_proj", q_rows, h, "linear", "col", dim_name=heads, merged=True),
        Tensor(
            "k_proj", kv_rows, h, "linear", "kv", heads=cfg.num_kv_heads, dim_name=kvh, merged=True
        ),
        Tensor(
            "v_proj", kv_rows, h, "linear", "kv", heads=cfg.num_kv_heads, dim_name=kvh, merged=True
        ),
        Tensor("o_proj", h, q_rows, "linear", "row", dim_name=heads),
    ]
    if cfg.qkv_bias:
        out += [
            Tensor("q_proj.bias", q_rows, 1, "dense", "col", dim_name=heads),
            Tensor("k_proj.bias", kv_rows, 1, "dense", "kv", heads=cfg.num_kv_heads, dim_name=kvh),
            Tensor("v_proj.bias", kv_rows, 1, "dense", "kv", heads=cfg.num_kv_heads, dim_name=kvh),
        ]
    if cfg.qk_norm:
        out += [_norm("q_norm", d), _norm("k_norm", d)]
    return out


def _mla_attention(cfg: ModelConfig) -> list[Tensor]:
    h, n = cfg.hidden_size, cfg.num_heads
    qk_head = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    # Each projection splits heads x its own head width: messages name the keys of both.
    q_dim = "num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim)"
    kv_b_dim = "num_attention_heads x (qk_nope_head_dim + v_head_dim)"
    o_dim = "num_attention_heads x v_head_dim"
    out: list[Tensor] = []
    if cfg.q_lora_rank:
        out += [
            Tensor("q_a_proj", cfg.q_lora_rank, h, "linear", "rep"),
            _norm("q_a_layernorm", cfg.q_lora_rank),
            Tensor("q_b_proj", n * qk_head, cfg.q_lora_rank, "linear", "col", dim_name=q_dim),
        ]
    else:
        out.append(Tensor("q_proj", n * qk_head, h, "linear", "col", dim_name=q_dim))
    out += [
        Tensor("kv_a_proj_with_mqa", cfg.kv_lora_rank + cfg.qk_rope_head_dim, h, "linear", "rep"),
        _norm("kv_a_layernorm", cfg.kv_lora_rank),
        Tensor(
            "kv_b_proj",
            n * (cfg.qk_nope_head_dim + cfg.v_head_dim),
            cfg.kv_lora_rank,
            "linear",
            "col",
            dim_name=kv_b_dim,
        ),
        Tensor("o_proj", h, n * cfg.v_head_dim, "linear", "row", dim_name=o_dim),
    ]
    return out


def _moe(cfg: ModelConfig) -> list[Tensor]:
    h, e = cfg.hidden_size, cfg.num_experts
    inter_name = "intermediate_size" if cfg.family == "mixtral" else "moe_intermediate_size"
    out = [Tensor("router", e, h, "dense", "rep")]
    if cfg.router_bias:
        out.append(Tensor("router.e_score_correction_bias", e, 1, "fp32", "rep"))
    out += _mlp("experts", h, cfg.moe_intermediate_size, inter_name, copies=e, routed=True)
    if cfg.num_shared_experts:
        out += _mlp(
            "shared_experts",
            h,
            cfg.moe_intermediate_size * cfg.num_shared_experts,
            "moe_intermediate_size x n_shared_experts",
        )
    return out


def _layer(cfg: ModelConfig, index: int) -> tuple[Tensor, ...]:
    h = cfg.hidden_size
    attn = _mla_attention(cfg) if cfg.uses_mla else _gqa_attention(cfg)
    if cfg.is_moe_layer(index):
        mlp = _moe(cfg)
    else:
        mlp = _mlp("mlp", h, cfg.intermediate_size, "intermediate_size")
    return (_norm("input_layernorm", h), *attn, _norm("post_attention_layernorm", h), *mlp)


def build_inventory(cfg: ModelConfig) -> Inventory:
    """The tensor inventory of a supported family (ValueError for unknown ones)."""
    if cfg.family is None:
        raise ValueError(f"architecture {cfg.architecture} is not modelled")
    h, v = cfg.hidden_size, cfg.vocab_size
    # Layers of the same kind share one tuple: R1's 58 MoE layers are one object.
    cache: dict[bool, tuple[Tensor, ...]] = {}
    layers = []
    for i in range(cfg.num_layers):
        moe = cfg.is_moe_layer(i)
        if moe not in cache:
            cache[moe] = _layer(cfg, i)
        layers.append(cache[moe])
    embed = (Tensor("embed_tokens", v, h, "dense", "vocab"),)
    head = (_norm("norm", h), Tensor("lm_head", v, h, "dense", "vocab"))
    mtp: list[Tensor] = []
    for i in range(cfg.num_mtp_layers):
        # DeepSeek-V3's MTP module: one full decoder layer plus its own embedding copy,
        # enorm/hnorm, the 2h -> h eh_proj (unquantized) and a shared head.
        mtp += list(_layer(cfg, cfg.num_layers + i))
        mtp += [
            Tensor("mtp.embed_tokens", v, h, "dense", "vocab"),
            _norm("mtp.enorm", h),
            _norm("mtp.hnorm", h),
            Tensor("mtp.eh_proj", h, 2 * h, "dense", "rep"),
            _norm("mtp.shared_head.norm", h),
            Tensor("mtp.shared_head.head", v, h, "dense", "vocab"),
        ]
    return Inventory(embed, tuple(layers), head, tuple(mtp), cfg.tie_word_embeddings)


def expert_name(cfg: ModelConfig) -> str:
    """The config.json key that holds the expert count for this family."""
    if cfg.family == "mixtral":
        return "num_local_experts"
    if cfg.family == "qwen3_moe":
        return "num_experts"
    return "n_routed_experts"


def tp_problems(cfg: ModelConfig, tp: int, ep: bool = False) -> list[str]:
    """Why vLLM would refuse tensor-parallel size `tp` for this model (empty: legal); `ep`:
    with expert parallelism over the TP group."""
    problems: list[str] = []
    if tp < 1:
        return [f"TP {tp} must be at least 1"]
    if ep and cfg.num_experts % tp:
        problems.append(
            f"{expert_name(cfg)} {cfg.num_experts} is not divisible by the expert-parallel "
            f"group of TP {tp} (each GPU holds whole experts)"
        )
    if cfg.num_heads % tp:
        problems.append(f"num_attention_heads {cfg.num_heads} is not divisible by TP {tp}")
    if not cfg.uses_mla:
        kv = cfg.num_kv_heads
        if kv >= tp and kv % tp:
            problems.append(f"num_key_value_heads {kv} is not divisible by TP {tp}")
        elif kv < tp and tp % kv:
            problems.append(
                f"TP {tp} is not a multiple of num_key_value_heads {kv} "
                "(vLLM replicates KV heads only in whole copies)"
            )
    if cfg.family is None or problems:
        return problems
    quant = cfg.quantization
    # One message per config field: gate/up/down of one MLP share the same reason.
    seen: set[str] = set()
    for layer in {id(layer): layer for layer in build_inventory(cfg).layers}.values():
        for t in layer:
            if t.shard not in ("col", "row", "kv") or t.kind != "linear":
                continue
            if ep and t.routed_expert:
                continue  # whole experts: their dimensions are not split
            name = t.dim_name or t.name
            if name in seen:
                continue
            if t.shard == "kv":
                msg = _kv_block_problem(name, t, tp, quant)
            else:
                size = t.rows if t.shard == "col" else t.cols
                msg = _shard_problem(name, size, tp, t.shard, quant, t.merged)
            if msg:
                seen.add(name)
                problems.append(msg)
    return problems


def _kv_block_problem(name: str, t: Tensor, tp: int, quant: Quantization) -> str:
    """The K and V parts of the merged QKV weight under FP8 blocks. vLLM's QKVParallelLinear
    passes [q, k, v] rows per GPU as its output partitions, and every one of them must be
    whole block_n rows, with or without TP: vLLM before the merged-layer allowance (v0.8.5
    among them) refuses to start, later versions skip the check and place K's and V's
    scales from offsets rounded up to a block (linear.py adjust_block_scale_shard), which
    gives V rows K's scale. KV heads are split by TP, or replicated one per GPU beyond it."""
    if quant.method != "fp8" or not quant.block:
        return ""
    part = t.shape_on_gpu(tp)[0]
    block = quant.block[0]
    if part % block == 0:
        return ""
    split = f"/ TP {tp}" if t.heads >= tp else f"over TP {tp} (one replicated KV head per GPU)"
    return (
        f"{name} {t.rows} {split} = {part} is not a multiple of the FP8 block "
        f"{block} (quantization_config.weight_block_size)"
    )


def _shard_problem(
    name: str, size: int, tp: int, shard: Shard, quant: Quantization, merged: bool
) -> str:
    if size % tp:
        return f"{name} {size} is not divisible by TP {tp}"
    part = size // tp
    # Unsplit and unmerged, a ragged last block is fine (its scale covers the remainder).
    if (tp > 1 or merged) and quant.method == "fp8" and quant.block:
        block = quant.block[0] if shard == "col" else quant.block[1]
        if part % block:
            return (
                f"{name} {size} / TP {tp} = {part} is not a multiple of the FP8 block "
                f"{block} (quantization_config.weight_block_size)"
            )
    if (
        tp > 1
        and shard == "row"
        and quant.method in ("awq", "gptq")
        and quant.group_size
        and part % quant.group_size
    ):
        return (
            f"{name} {size} / TP {tp} = {part} is not a multiple of the "
            f"{quant.method.upper()} group_size {quant.group_size}"
        )
    return ""
