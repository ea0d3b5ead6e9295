"""Reads a model's Hugging Face `config.json` into the few numbers the memory planner needs.

One job: turn the loosely-typed JSON of the supported families into a frozen, normalised
`ModelConfig` (shapes, MoE and MLA fields, quantization) and say clearly what is missing.
Shapes become tensors in `model_shapes.py`; layouts and budgets are `sizing.py`'s job.

Supported families (vLLM loads them with the shapes modelled in model_shapes.py):
llama, mistral, qwen2, qwen3, qwen3_moe, mixtral, deepseek_v2, deepseek_v3.
Anything else parses as an *unknown* family: its KV cache can still be sized from the
generic attention fields, but its weights must come from a checkpoint size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Family = Literal[
    "llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral", "deepseek_v2", "deepseek_v3"
]
FAMILIES: tuple[Family, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "mixtral",
    "deepseek_v2",
    "deepseek_v3",
)
# config.json `architectures[0]` -> family, for configs whose model_type is unusual.
_ARCHITECTURES: dict[str, Family] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "MixtralForCausalLM": "mixtral",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
}

QuantMethod = Literal["none", "fp8", "int8", "awq", "gptq", "unknown"]

# Name of the weight index the planner reads next to config.json (metadata.total_size).
INDEX_FILE = "model.safetensors.index.json"


class ModelConfigError(ValueError):
    """config.json (or its index) cannot be used for planning; the message says why."""


@dataclass(frozen=True)
class Quantization:
    """How linear-layer weights are stored. Embeddings, lm_head, norms and MoE routers are
    never quantized by these schemes (they stay in the model dtype)."""

    method: QuantMethod = "none"
    # Bits per quantized weight: 16 (none), 8 (fp8/int8), 4 or 8 (awq/gptq).
    weight_bits: int = 16
    # FP8 block quantization: (block_n over output rows, block_k over input columns),
    # one fp32 scale per block (`weight_scale_inv`). None = per-tensor / per-channel scale.
    block: tuple[int, int] | None = None
    # Per-output-channel fp32 scale (fp8/int8 "channel" strategy) instead of per-tensor.
    per_channel: bool = False
    # AWQ/GPTQ: input columns per scale/zero group; None = one group over the whole row.
    group_size: int | None = None
    # GPTQ stores g_idx (one int32 per input column); AWQ does not.
    has_g_idx: bool = False
    # Quantization has zero points (AWQ, asymmetric int): packed like the weights.
    has_zeros: bool = False
    # Original quant_method string, for messages.
    source: str = "none"

    @property
    def is_quantized(self) -> bool:
        return self.method != "none"

    def describe(self) -> str:
        if self.method == "none":
            return "none (16-bit weights)"
        if self.method == "fp8":
            if self.block:
                return f"fp8 (block {self.block[0]}x{self.block[1]} scales)"
            return "fp8 (per-channel scales)" if self.per_channel else "fp8 (per-tensor scale)"
        if self.method in ("awq", "gptq"):
            group = f"group {self.group_size}" if self.group_size else "per-channel"
            return f"{self.method} {self.weight_bits}-bit ({group})"
        if self.method == "int8":
            return "int8 (per-channel scales)" if self.per_channel else "int8"
        return f"unknown ({self.source})"

    @property
    def seed_bytes_per_param(self) -> float:
        """Bytes per parameter in the manual's seed formula (params x bytes x 1.2)."""
        if self.method == "none":
            return 2.0
        return self.weight_bits / 8


@dataclass(frozen=True)
class ModelConfig:
    """The planner's view of config.json. Shapes are for the model as vLLM loads it."""

    architecture: str
    model_type: str
    family: Family | None  # None: architecture the planner does not model
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    # The longest context vLLM accepts for this config (max_position_embeddings, scaled
    # like vLLM does for yarn/linear/dynamic rope scaling); None when config.json has none.
    max_position_embeddings: int | None
    # Bytes per value of unquantized tensors in the checkpoint (4 for float32 checkpoints);
    # vLLM loads them as 16-bit either way.
    checkpoint_dtype_bytes: int
    quantization: Quantization
    # MoE (0 experts = dense model)
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    first_k_dense: int = 0
    moe_layer_freq: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    decoder_sparse_step: int = 1
    router_bias: bool = False  # DeepSeek-V3 e_score_correction_bias (noaux_tc routing)
    # MLA (DeepSeek-V2/V3)
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # Multi-token-prediction layers: in the checkpoint, not loaded by vLLM unless
    # speculative decoding is on.
    num_mtp_layers: int = 0

    @property
    def uses_mla(self) -> bool:
        return self.family in ("deepseek_v2", "deepseek_v3")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def known(self) -> bool:
        return self.family is not None

    def is_moe_layer(self, index: int) -> bool:
        """Whether decoder layer `index` has routed experts (per the family's rule)."""
        if not self.is_moe:
            return False
        if self.family in ("deepseek_v2", "deepseek_v3"):
            return index >= self.first_k_dense and index % self.moe_layer_freq == 0
        if self.family == "qwen3_moe":
            return index not in self.mlp_only_layers and (index + 1) % self.decoder_sparse_step == 0
        return True  # mixtral: every layer

    def kv_bytes_per_token_per_layer(self, kv_dtype_bytes: int, tp: int = 1) -> int:
        """KV-cache bytes one token takes in one layer on one GPU.

        GQA/MHA: K and V for the KV heads this GPU holds (heads are split by TP down to one
        head per GPU, then replicated). MLA: one compressed latent (kv_lora_rank) plus the
        shared rope key per token, identical on every TP rank (not split)."""
        if self.uses_mla:
            return (self.kv_lora_rank + self.qk_rope_head_dim) * kv_dtype_bytes
        heads_per_gpu = max(1, self.num_kv_heads // tp)
        return 2 * heads_per_gpu * self.head_dim * kv_dtype_bytes

    def describe(self) -> str:
        family = self.family or "unknown family"
        moe = (
            f", MoE {self.num_experts} experts (top {self.experts_per_token})"
            if self.is_moe
            else ""
        )
        attn = (
            f"MLA kv_lora_rank {self.kv_lora_rank} + rope {self.qk_rope_head_dim}"
            if self.uses_mla
            else f"{self.num_heads} heads / {self.num_kv_heads} KV heads x {self.head_dim}"
        )
        return f"{self.architecture} ({family}): {self.num_layers} layers, {attn}{moe}"


def _get(
    data: Mapping[str, Any], key: str, kind: type, *, required: bool, default: Any = None
) -> Any:
    value = data.get(key)
    if value is None:
        if required:
            raise ModelConfigError(f"config.json has no `{key}` (needed for planning)")
        return default
    if kind is int:
        # JSON has no int/float distinction for 4096.0; bools are not sizes.
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ModelConfigError(f"config.json `{key}` must be an integer, got {value!r}")
        return int(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ModelConfigError(f"config.json `{key}` must be true or false, got {value!r}")
        return value
    return value


def _positive(data: Mapping[str, Any], key: str, *, required: bool = True, default: int = 0) -> int:
    """A size or step: positive when config.json has it; `default` when an optional one is
    absent (vLLM divides by steps such as decoder_sparse_step, so 0 cannot mean "unset")."""
    value = int(_get(data, key, int, required=required, default=default))
    if data.get(key) is not None and value <= 0:
        raise ModelConfigError(f"config.json `{key}` must be positive, got {value}")
    return value


def _dtype_bytes(data: Mapping[str, Any]) -> int:
    dtype = data.get("torch_dtype", data.get("dtype", "bfloat16"))
    if dtype in ("float32", "float"):
        return 4
    return 2


def parse_quantization(data: Mapping[str, Any]) -> Quantization:
    """`quantization_config` -> Quantization. Unmodelled methods become method="unknown"
    (the planner then needs the checkpoint size)."""
    qc = data.get("quantization_config")
    if not qc:
        return Quantization()
    if not isinstance(qc, Mapping):
        raise ModelConfigError("config.json `quantization_config` must be an object")
    method = str(qc.get("quant_method", "")).lower()
    if method == "fp8":
        block = qc.get("weight_block_size")
        if block is not None:
            if (
                not isinstance(block, list)
                or len(block) != 2
                or not all(isinstance(b, int) and b > 0 for b in block)
            ):
                raise ModelConfigError(
                    f"quantization_config.weight_block_size must be [n, k], got {block!r}"
                )
            return Quantization("fp8", 8, block=(block[0], block[1]), source=method)
        return Quantization("fp8", 8, source=method)
    if method in ("awq", "gptq"):
        bits = int(qc.get("bits", qc.get("w_bit", 4)))
        group = int(qc.get("group_size", qc.get("q_group_size", 128)))
        if bits not in (4, 8):
            return Quantization("unknown", bits, source=f"{method} {bits}-bit")
        return Quantization(
            method,  # type: ignore[arg-type]  # narrowed by the `in` test above
            bits,
            group_size=group if group > 0 else None,
            has_g_idx=method == "gptq",
            has_zeros=True,
            source=method,
        )
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    return Quantization("unknown", 16, source=method or "unnamed")


def _compressed_tensors(qc: Mapping[str, Any]) -> Quantization:
    groups = qc.get("config_groups") or {}
    weights: Mapping[str, Any] = {}
    if isinstance(groups, Mapping):
        for group in groups.values():
            if isinstance(group, Mapping) and isinstance(group.get("weights"), Mapping):
                weights = group["weights"]
                break
    bits = weights.get("num_bits")
    kind = weights.get("type")
    strategy = weights.get("strategy")
    if bits == 8 and kind == "float":
        block = weights.get("block_structure")
        if strategy == "block" and isinstance(block, list) and len(block) == 2:
            return Quantization(
                "fp8", 8, block=(int(block[0]), int(block[1])), source="compressed-tensors"
            )
        return Quantization(
            "fp8", 8, per_channel=strategy == "channel", source="compressed-tensors"
        )
    if bits == 8 and kind == "int":
        return Quantization(
            "int8", 8, per_channel=strategy == "channel", source="compressed-tensors"
        )
    if bits == 4 and kind == "int":
        group = weights.get("group_size")
        return Quantization(
            "gptq",
            4,
            group_size=int(group) if isinstance(group, int) and group > 0 else None,
            has_zeros=not weights.get("symmetric", True),
            source="compressed-tensors",
        )
    return Quantization("unknown", 16, source=f"compressed-tensors {kind}{bits}")


def _family(data: Mapping[str, Any]) -> tuple[str, str, Family | None]:
    model_type = str(data.get("model_type", ""))
    archs = data.get("architectures") or []
    arch = str(archs[0]) if isinstance(archs, list) and archs else model_type or "unknown"
    if model_type in FAMILIES:
        return arch, model_type, model_type  # type: ignore[return-value]
    return arch, model_type, _ARCHITECTURES.get(arch)


def _derived_max_len(data: Mapping[str, Any]) -> int | None:
    """vLLM's derived max_model_len: max_position_embeddings, times the rope scaling factor
    for scaling types that extend the context (yarn scales original_max_position_embeddings;
    llama3/longrope/su already state the extended length)."""
    max_pos = _get(data, "max_position_embeddings", int, required=False)
    rope = data.get("rope_scaling")
    if not isinstance(rope, Mapping):
        return None if max_pos is None else int(max_pos)
    kind = rope.get("rope_type", rope.get("type"))
    factor = rope.get("factor")
    if kind in ("llama3", "longrope", "su", "mrope", "default") or not isinstance(
        factor, int | float
    ):
        return None if max_pos is None else int(max_pos)
    base = rope.get("original_max_position_embeddings") if kind == "yarn" else None
    base = base if isinstance(base, int) else max_pos
    return None if base is None else int(base * factor)


def parse_model_config(data: Mapping[str, Any]) -> ModelConfig:
    """Normalise a config.json mapping. Raises ModelConfigError naming the missing field."""
    if not isinstance(data, Mapping):
        raise ModelConfigError("config.json must hold a JSON object")
    arch, model_type, family = _family(data)
    quant = parse_quantization(data)

    num_layers = _positive(data, "num_hidden_layers")
    num_heads = _positive(data, "num_attention_heads")
    num_kv_heads = int(_get(data, "num_key_value_heads", int, required=False, default=num_heads))
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ModelConfigError(
            f"config.json num_key_value_heads {num_kv_heads} must divide "
            f"num_attention_heads {num_heads}"
        )
    # Unknown families: only the attention shape is needed (KV cache); the rest is optional.
    hidden = _positive(data, "hidden_size", required=family is not None)
    head_dim_raw = _get(data, "head_dim", int, required=False)
    if head_dim_raw is None:
        if not hidden:
            raise ModelConfigError("config.json has neither `head_dim` nor `hidden_size`")
        head_dim_raw = hidden // num_heads
    max_pos = _derived_max_len(data)

    common: dict[str, Any] = {
        "architecture": arch,
        "model_type": model_type,
        "family": family,
        "num_layers": num_layers,
        "hidden_size": hidden,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": int(head_dim_raw),
        "max_position_embeddings": max_pos,
        "checkpoint_dtype_bytes": _dtype_bytes(data),
        "quantization": quant,
        "tie_word_embeddings": bool(data.get("tie_word_embeddings", False)),
    }
    if family is None:
        return ModelConfig(
            **common,
            vocab_size=int(_get(data, "vocab_size", int, required=False, default=0)),
            intermediate_size=int(_get(data, "intermediate_size", int, required=False, default=0)),
            qkv_bias=False,
            qk_norm=False,
        )

    common["vocab_size"] = _positive(data, "vocab_size")
    if family in ("llama", "mistral", "qwen2", "qwen3"):
        return ModelConfig(
            **common,
            intermediate_size=_positive(data, "intermediate_size"),
            # Qwen2 always has q/k/v biases; Llama has them when attention_bias is set.
            qkv_bias=family == "qwen2" or bool(data.get("attention_bias", False)),
            qk_norm=family == "qwen3",
        )
    if family == "mixtral":
        return ModelConfig(
            **common,
            intermediate_size=_positive(data, "intermediate_size"),
            qkv_bias=False,
            qk_norm=False,
            num_experts=_positive(data, "num_local_experts"),
            experts_per_token=_positive(data, "num_experts_per_tok"),
            moe_intermediate_size=_positive(data, "intermediate_size"),
        )
    if family == "qwen3_moe":
        mlp_only = data.get("mlp_only_layers") or []
        if not isinstance(mlp_only, list) or not all(isinstance(i, int) for i in mlp_only):
            raise ModelConfigError("config.json `mlp_only_layers` must be a list of layer indices")
        return ModelConfig(
            **common,
            intermediate_size=_positive(data, "intermediate_size"),
            qkv_bias=bool(data.get("attention_bias", False)),
            qk_norm=True,
            num_experts=_positive(data, "num_experts"),
            experts_per_token=_positive(data, "num_experts_per_tok"),
            moe_intermediate_size=_positive(data, "moe_intermediate_size"),
            mlp_only_layers=tuple(mlp_only),
            decoder_sparse_step=_positive(data, "decoder_sparse_step", required=False, default=1),
        )
    # deepseek_v2 / deepseek_v3: MLA attention, DeepSeekMoE with shared experts.
    q_lora = _get(data, "q_lora_rank", int, required=False)
    experts = int(_get(data, "n_routed_experts", int, required=False, default=0))
    return ModelConfig(
        **common,
        intermediate_size=_positive(data, "intermediate_size"),
        qkv_bias=False,
        qk_norm=False,
        num_experts=experts,
        experts_per_token=int(_get(data, "num_experts_per_tok", int, required=False, default=0)),
        moe_intermediate_size=_positive(data, "moe_intermediate_size") if experts else 0,
        num_shared_experts=int(_get(data, "n_shared_experts", int, required=False, default=0)),
        first_k_dense=int(_get(data, "first_k_dense_replace", int, required=False, default=0)),
        moe_layer_freq=_positive(data, "moe_layer_freq", required=False, default=1),
        router_bias=data.get("topk_method") == "noaux_tc",
        q_lora_rank=int(q_lora) if q_lora else None,
        kv_lora_rank=_positive(data, "kv_lora_rank"),
        qk_nope_head_dim=_positive(data, "qk_nope_head_dim"),
        qk_rope_head_dim=_positive(data, "qk_rope_head_dim"),
        v_head_dim=_positive(data, "v_head_dim"),
        num_mtp_layers=int(_get(data, "num_nextn_predict_layers", int, required=False, default=0)),
    )


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and parse config.json at `path` (ModelConfigError names the file on failure)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelConfigError(f"cannot read {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ModelConfigError(f"{p} is not UTF-8 text: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{p} is not valid JSON: {exc}") from exc
    try:
        return parse_model_config(data)
    except ModelConfigError as exc:
        raise ModelConfigError(f"{p}: {exc}") from exc


def read_index_total_size(config_path: str | Path) -> int | None:
    """`metadata.total_size` of model.safetensors.index.json next to config.json, if any.

    That is the checkpoint's size on disk (it includes MTP layers vLLM does not load)."""
    index = Path(config_path).parent / INDEX_FILE
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"cannot read {index}: {exc}") from exc
    total = data.get("metadata", {}).get("total_size") if isinstance(data, dict) else None
    if total is None:
        return None
    if isinstance(total, bool) or not isinstance(total, int | float) or total <= 0:
        raise ModelConfigError(f"{index}: metadata.total_size must be a positive number")
    return math.ceil(total)
