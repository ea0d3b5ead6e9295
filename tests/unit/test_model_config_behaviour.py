"""What the planner reads from a model's config.json, and how it refuses one it cannot use
(found by `make mutation` on components/plan/model_config.py):

- each refusal names the config.json key (or file) at fault and the value found;
- the shapes, MoE layout, context length and quantization scheme it parses, against the
  published configs' own numbers and the Hugging Face / vLLM meaning of each key;
- the checkpoint size read from model.safetensors.index.json, and its refusals;
- the plan's summary of the model and of its quantization says what was parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components.plan.model_config import (
    ModelConfig,
    ModelConfigError,
    Quantization,
    load_model_config,
    parse_model_config,
    read_index_total_size,
)
from components.plan.sizing import PlanError, plan_for_config_file

FIXTURES = Path(__file__).parent / "fixtures" / "model_configs"
R1_CONFIG = Path(__file__).resolve().parents[2] / "models" / "deepseek-r1" / "config.json"


def _raw(name: str) -> dict[str, Any]:
    path = R1_CONFIG if name == "deepseek-r1" else FIXTURES / f"{name}.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _with(name: str, **changes: Any) -> dict[str, Any]:
    """The published config `name` with keys changed (None: key removed)."""
    data = _raw(name)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


# ---------------------------------------------------------------------------------------
# Refusals name the key and the value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["not", "an", "object"], "config.json must hold a JSON object"),
        (
            _with("llama-3-8b", num_hidden_layers=None),
            "config.json has no `num_hidden_layers` (needed for planning)",
        ),
        (
            _with("llama-3-8b", num_attention_heads=0),
            "config.json `num_attention_heads` must be positive, got 0",
        ),
        (
            _with("llama-3-8b", num_hidden_layers=-2),
            "config.json `num_hidden_layers` must be positive, got -2",
        ),
        (
            _with("llama-3-8b", num_hidden_layers=32.5),
            "config.json `num_hidden_layers` must be an integer, got 32.5",
        ),
        (
            _with("llama-3-8b", num_hidden_layers=True),
            "config.json `num_hidden_layers` must be an integer, got True",
        ),
        (
            _with("llama-3-8b", hidden_size="4096"),
            "config.json `hidden_size` must be an integer, got '4096'",
        ),
        (
            _with("llama-3-8b", num_key_value_heads=5),
            "config.json num_key_value_heads 5 must divide num_attention_heads 32",
        ),
        (
            _with("llama-3-8b", num_key_value_heads=0),
            "config.json num_key_value_heads 0 must divide num_attention_heads 32",
        ),
        (
            _with("llama-3-8b", hidden_size=None),
            "config.json has no `hidden_size` (needed for planning)",
        ),
        (
            _with("llama-3-8b", vocab_size=None),
            "config.json has no `vocab_size` (needed for planning)",
        ),
        (
            _with("llama-3-8b", intermediate_size=None),
            "config.json has no `intermediate_size` (needed for planning)",
        ),
        (
            _with(
                "llama-3-8b",
                model_type="gemma2",
                architectures=["Gemma2ForCausalLM"],
                hidden_size=None,
            ),
            "config.json has neither `head_dim` nor `hidden_size`",
        ),
        (
            _with("mixtral-8x7b", num_local_experts=None),
            "config.json has no `num_local_experts` (needed for planning)",
        ),
        (
            _with("mixtral-8x7b", num_experts_per_tok=None),
            "config.json has no `num_experts_per_tok` (needed for planning)",
        ),
        (
            _with("mixtral-8x7b", intermediate_size=None),
            "config.json has no `intermediate_size` (needed for planning)",
        ),
        (
            _with("qwen3-30b-a3b", num_experts=None),
            "config.json has no `num_experts` (needed for planning)",
        ),
        (
            _with("qwen3-30b-a3b", num_experts_per_tok=None),
            "config.json has no `num_experts_per_tok` (needed for planning)",
        ),
        (
            _with("qwen3-30b-a3b", moe_intermediate_size=None),
            "config.json has no `moe_intermediate_size` (needed for planning)",
        ),
        (
            _with("qwen3-30b-a3b", intermediate_size=None),
            "config.json has no `intermediate_size` (needed for planning)",
        ),
        (
            _with("qwen3-30b-a3b", mlp_only_layers="0,1"),
            "config.json `mlp_only_layers` must be a list of layer indices",
        ),
        (
            _with("qwen3-30b-a3b", mlp_only_layers=[0, "1"]),
            "config.json `mlp_only_layers` must be a list of layer indices",
        ),
        (
            _with("deepseek-r1", moe_intermediate_size=None),
            "config.json has no `moe_intermediate_size` (needed for planning)",
        ),
        (
            _with("deepseek-r1", intermediate_size=None),
            "config.json has no `intermediate_size` (needed for planning)",
        ),
        (
            _with("deepseek-r1", kv_lora_rank=None),
            "config.json has no `kv_lora_rank` (needed for planning)",
        ),
        (
            _with("deepseek-r1", qk_nope_head_dim=None),
            "config.json has no `qk_nope_head_dim` (needed for planning)",
        ),
        (
            _with("deepseek-r1", qk_rope_head_dim=None),
            "config.json has no `qk_rope_head_dim` (needed for planning)",
        ),
        (
            _with("deepseek-r1", v_head_dim=None),
            "config.json has no `v_head_dim` (needed for planning)",
        ),
        (
            _with("deepseek-r1", q_lora_rank=1536.5),
            "config.json `q_lora_rank` must be an integer, got 1536.5",
        ),
        # an optional size or step, when present, is still a positive integer
        (
            _with("qwen3-30b-a3b", decoder_sparse_step=0),
            "config.json `decoder_sparse_step` must be positive, got 0",
        ),
        (
            _with("deepseek-r1", moe_layer_freq=0),
            "config.json `moe_layer_freq` must be positive, got 0",
        ),
        (
            _with("deepseek-r1", moe_layer_freq=-1),
            "config.json `moe_layer_freq` must be positive, got -1",
        ),
        (
            _with("llama-3-8b", model_type="gemma2", architectures=None, hidden_size=0),
            "config.json `hidden_size` must be positive, got 0",
        ),
        (
            _with("llama-3-8b", num_key_value_heads=8.5),
            "config.json `num_key_value_heads` must be an integer, got 8.5",
        ),
        (
            _with("llama-3-8b", head_dim=64.5),
            "config.json `head_dim` must be an integer, got 64.5",
        ),
        (
            _with("llama-3-8b", max_position_embeddings="8192"),
            "config.json `max_position_embeddings` must be an integer, got '8192'",
        ),
        (
            _with("llama-3-8b", model_type="gemma2", architectures=None, vocab_size=1000.5),
            "config.json `vocab_size` must be an integer, got 1000.5",
        ),
        (
            _with("llama-3-8b", model_type="gemma2", architectures=None, intermediate_size="big"),
            "config.json `intermediate_size` must be an integer, got 'big'",
        ),
        (
            _with("deepseek-r1", n_routed_experts=256.5),
            "config.json `n_routed_experts` must be an integer, got 256.5",
        ),
        (
            _with("deepseek-r1", num_experts_per_tok=8.5),
            "config.json `num_experts_per_tok` must be an integer, got 8.5",
        ),
        (
            _with("deepseek-r1", n_shared_experts=1.5),
            "config.json `n_shared_experts` must be an integer, got 1.5",
        ),
        (
            _with("deepseek-r1", first_k_dense_replace=3.5),
            "config.json `first_k_dense_replace` must be an integer, got 3.5",
        ),
        (
            _with("deepseek-r1", num_nextn_predict_layers=1.5),
            "config.json `num_nextn_predict_layers` must be an integer, got 1.5",
        ),
        (
            _with("llama-3-8b", quantization_config="fp8"),
            "config.json `quantization_config` must be an object",
        ),
        (
            _with(
                "llama-3-8b",
                quantization_config={"quant_method": "fp8", "weight_block_size": [128]},
            ),
            "quantization_config.weight_block_size must be [n, k], got [128]",
        ),
        (
            _with(
                "llama-3-8b",
                quantization_config={"quant_method": "fp8", "weight_block_size": "128x128"},
            ),
            "quantization_config.weight_block_size must be [n, k], got '128x128'",
        ),
        (
            _with(
                "llama-3-8b",
                quantization_config={"quant_method": "fp8", "weight_block_size": [128, 0]},
            ),
            "quantization_config.weight_block_size must be [n, k], got [128, 0]",
        ),
        (
            _with(
                "llama-3-8b",
                quantization_config={"quant_method": "fp8", "weight_block_size": [128.0, 128]},
            ),
            "quantization_config.weight_block_size must be [n, k], got [128.0, 128]",
        ),
    ],
)
def test_a_config_the_planner_cannot_use_is_refused_by_key(raw: Any, message: str) -> None:
    with pytest.raises(ModelConfigError) as err:
        parse_model_config(raw)
    assert str(err.value) == message


def test_the_smallest_legal_sizes_are_accepted() -> None:
    """One layer, one head, one KV head: positive is enough (4096.0 is the integer 4096)."""
    model = parse_model_config(
        _with(
            "llama-3-8b",
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
            hidden_size=4096.0,
            vocab_size=1,
            intermediate_size=1,
        )
    )
    assert (model.num_layers, model.num_heads, model.num_kv_heads) == (1, 1, 1)
    assert (model.hidden_size, model.head_dim, model.vocab_size) == (4096, 4096, 1)
    assert isinstance(model.hidden_size, int)


# ---------------------------------------------------------------------------------------
# Load errors name the file


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(ModelConfigError) as err:
        load_model_config(missing)
    assert str(err.value) == f"cannot read {missing}: No such file or directory"

    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ModelConfigError) as err:
        load_model_config(broken)
    assert str(err.value).startswith(f"{broken} is not valid JSON: ")

    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(_with("llama-3-8b", vocab_size=None)), encoding="utf-8")
    with pytest.raises(ModelConfigError) as err:
        load_model_config(partial)
    assert str(err.value) == f"{partial}: config.json has no `vocab_size` (needed for planning)"

    accented = tmp_path / "accented.json"
    accented.write_text(
        json.dumps({**_raw("llama-3-8b"), "_name_or_path": "modèle"}, ensure_ascii=False),
        encoding="utf-8",
    )
    assert load_model_config(accented).num_layers == 32


# ---------------------------------------------------------------------------------------
# Parsed shapes, against the published numbers and the keys' meaning


def _shape(model: ModelConfig) -> dict[str, Any]:
    return {
        "architecture": model.architecture,
        "family": model.family,
        "layers": model.num_layers,
        "heads": model.num_heads,
        "kv_heads": model.num_kv_heads,
        "head_dim": model.head_dim,
        "qkv_bias": model.qkv_bias,
        "qk_norm": model.qk_norm,
        "tied": model.tie_word_embeddings,
        "dtype_bytes": model.checkpoint_dtype_bytes,
    }


_LLAMA_8B = {
    "architecture": "LlamaForCausalLM",
    "family": "llama",
    "layers": 32,
    "heads": 32,
    "kv_heads": 8,
    "head_dim": 128,  # no head_dim key: hidden 4096 / 32 heads
    "qkv_bias": False,
    "qk_norm": False,
    "tied": False,
    "dtype_bytes": 2,
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_raw("llama-3-8b"), _LLAMA_8B),
        # no num_key_value_heads: multi-head attention, one KV head per head
        (_with("llama-3-8b", num_key_value_heads=None), {**_LLAMA_8B, "kv_heads": 32}),
        (_with("llama-3-8b", attention_bias=True), {**_LLAMA_8B, "qkv_bias": True}),
        (_with("llama-3-8b", tie_word_embeddings=True), {**_LLAMA_8B, "tied": True}),
        (_with("llama-3-8b", tie_word_embeddings=None), _LLAMA_8B),
        (_with("llama-3-8b", torch_dtype="float32"), {**_LLAMA_8B, "dtype_bytes": 4}),
        (_with("llama-3-8b", torch_dtype="float"), {**_LLAMA_8B, "dtype_bytes": 4}),
        (_with("llama-3-8b", torch_dtype="float16"), _LLAMA_8B),
        # newer transformers write `dtype`; `torch_dtype` wins when both are there
        (_with("llama-3-8b", torch_dtype=None, dtype="float32"), {**_LLAMA_8B, "dtype_bytes": 4}),
        (_with("llama-3-8b", torch_dtype="bfloat16", dtype="float32"), _LLAMA_8B),
        (_with("llama-3-8b", torch_dtype=None), _LLAMA_8B),
        # an unusual model_type is recognised by its architecture
        (_with("llama-3-8b", model_type="llama-custom"), _LLAMA_8B),
        (
            _raw("mistral-7b-v0.1"),
            {**_LLAMA_8B, "architecture": "MistralForCausalLM", "family": "mistral"},
        ),
        (
            _raw("mixtral-8x7b"),
            {**_LLAMA_8B, "architecture": "MixtralForCausalLM", "family": "mixtral"},
        ),
        # Qwen2 always has q/k/v biases, hidden 3584 / 28 heads = 128
        (
            _raw("qwen2-7b"),
            {
                **_LLAMA_8B,
                "architecture": "Qwen2ForCausalLM",
                "family": "qwen2",
                "layers": 28,
                "heads": 28,
                "kv_heads": 4,
                "qkv_bias": True,
            },
        ),
        # Qwen3: q/k norms; head_dim 128 is stated (hidden 2048 / 32 heads would be 64)
        (
            _raw("qwen3-30b-a3b"),
            {
                **_LLAMA_8B,
                "architecture": "Qwen3MoeForCausalLM",
                "family": "qwen3_moe",
                "layers": 48,
                "heads": 32,
                "kv_heads": 4,
                "qk_norm": True,
            },
        ),
        (
            _with("qwen3-30b-a3b", attention_bias=True),
            {
                **_LLAMA_8B,
                "architecture": "Qwen3MoeForCausalLM",
                "family": "qwen3_moe",
                "layers": 48,
                "heads": 32,
                "kv_heads": 4,
                "qk_norm": True,
                "qkv_bias": True,
            },
        ),
        (
            _with("qwen3-30b-a3b", attention_bias=None),
            {
                **_LLAMA_8B,
                "architecture": "Qwen3MoeForCausalLM",
                "family": "qwen3_moe",
                "layers": 48,
                "heads": 32,
                "kv_heads": 4,
                "qk_norm": True,
            },
        ),
        (
            _with("qwen3-8b", attention_bias=None),
            {
                **_LLAMA_8B,
                "architecture": "Qwen3ForCausalLM",
                "family": "qwen3",
                "layers": 36,
                "kv_heads": 8,
                "qk_norm": True,
            },
        ),
        # not modelled: the attention shape is still read, the family is None
        (
            _with("llama-3-8b", model_type="gemma2", architectures=["Gemma2ForCausalLM"]),
            {**_LLAMA_8B, "architecture": "Gemma2ForCausalLM", "family": None},
        ),
        (
            _with("llama-3-8b", model_type="gemma2", architectures=None),
            {**_LLAMA_8B, "architecture": "gemma2", "family": None},
        ),
        (
            _with("llama-3-8b", model_type=None, architectures=[]),
            {**_LLAMA_8B, "architecture": "unknown", "family": None},
        ),
    ],
)
def test_parsed_attention_shape(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    assert _shape(parse_model_config(raw)) == expected


def test_an_unmodelled_family_needs_only_the_attention_shape() -> None:
    """Its vocabulary and MLP sizes are optional (0 when absent); head_dim may replace
    hidden_size."""
    bare = {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
    }
    model = parse_model_config(bare)
    assert (model.family, model.head_dim, model.hidden_size) == (None, 256, 0)
    assert (model.vocab_size, model.intermediate_size) == (0, 0)
    assert (model.qkv_bias, model.qk_norm) == (False, False)
    sized = parse_model_config({**bare, "vocab_size": 256000, "intermediate_size": 9216})
    assert (sized.vocab_size, sized.intermediate_size) == (256000, 9216)


# ---------------------------------------------------------------------------------------
# Mixture of experts: which layers have experts, per family


def _moe(model: ModelConfig) -> dict[str, Any]:
    return {
        "experts": model.num_experts,
        "top": model.experts_per_token,
        "expert_size": model.moe_intermediate_size,
        "shared": model.num_shared_experts,
        "router_bias": model.router_bias,
        "mtp": model.num_mtp_layers,
        "moe_layers": [i for i in range(model.num_layers) if model.is_moe_layer(i)],
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            _raw("llama-3-8b"),
            dict(
                experts=0, top=0, expert_size=0, shared=0, router_bias=False, mtp=0, moe_layers=[]
            ),
        ),
        # Mixtral: 8 experts of intermediate_size 14336, top 2, in every layer
        (
            _raw("mixtral-8x7b"),
            {
                "experts": 8,
                "top": 2,
                "expert_size": 14336,
                "shared": 0,
                "router_bias": False,
                "mtp": 0,
                "moe_layers": list(range(32)),
            },
        ),
        # Qwen3-30B-A3B: 128 experts of 768, top 8, every layer (sparse step 1, no MLP-only)
        (
            _raw("qwen3-30b-a3b"),
            {
                "experts": 128,
                "top": 8,
                "expert_size": 768,
                "shared": 0,
                "router_bias": False,
                "mtp": 0,
                "moe_layers": list(range(48)),
            },
        ),
        # layers 0..8, experts every 3rd layer counting from 1 (layer i when (i+1) % 3 == 0:
        # 2, 5, 8), layer 5 MLP-only: 2 and 8
        (
            _with(
                "qwen3-30b-a3b", num_hidden_layers=9, decoder_sparse_step=3, mlp_only_layers=[0, 5]
            ),
            {
                "experts": 128,
                "top": 8,
                "expert_size": 768,
                "shared": 0,
                "router_bias": False,
                "mtp": 0,
                "moe_layers": [2, 8],
            },
        ),
        # no decoder_sparse_step / mlp_only_layers keys: every layer
        (
            _with(
                "qwen3-30b-a3b",
                num_hidden_layers=4,
                decoder_sparse_step=None,
                mlp_only_layers=None,
            ),
            {
                "experts": 128,
                "top": 8,
                "expert_size": 768,
                "shared": 0,
                "router_bias": False,
                "mtp": 0,
                "moe_layers": [0, 1, 2, 3],
            },
        ),
        # DeepSeek-R1: first 3 layers dense, then 256 routed (top 8) + 1 shared expert of
        # 2048; noaux_tc routing has the e_score_correction_bias; one MTP layer
        (
            _raw("deepseek-r1"),
            {
                "experts": 256,
                "top": 8,
                "expert_size": 2048,
                "shared": 1,
                "router_bias": True,
                "mtp": 1,
                "moe_layers": list(range(3, 61)),
            },
        ),
        # experts from layer 1, every 2nd layer: 2 and 4 of 0..5; greedy routing, no MTP
        (
            _with(
                "deepseek-r1",
                num_hidden_layers=6,
                first_k_dense_replace=1,
                moe_layer_freq=2,
                topk_method="greedy",
                num_nextn_predict_layers=None,
            ),
            {
                "experts": 256,
                "top": 8,
                "expert_size": 2048,
                "shared": 1,
                "router_bias": False,
                "mtp": 0,
                "moe_layers": [2, 4],
            },
        ),
        # no first_k_dense_replace / moe_layer_freq / n_shared_experts keys: every layer
        (
            _with(
                "deepseek-r1",
                num_hidden_layers=3,
                first_k_dense_replace=None,
                moe_layer_freq=None,
                n_shared_experts=None,
            ),
            {
                "experts": 256,
                "top": 8,
                "expert_size": 2048,
                "shared": 0,
                "router_bias": True,
                "mtp": 1,
                "moe_layers": [0, 1, 2],
            },
        ),
        # without routed experts a DeepSeek config is dense: no expert size is needed
        (
            _with(
                "deepseek-r1",
                n_routed_experts=None,
                moe_intermediate_size=None,
                num_experts_per_tok=None,
            ),
            dict(experts=0, top=0, expert_size=0, shared=1, router_bias=True, mtp=1, moe_layers=[]),
        ),
    ],
)
def test_parsed_experts_and_moe_layers(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    assert _moe(parse_model_config(raw)) == expected


@pytest.mark.parametrize(
    ("name", "size"), [("mixtral-8x7b", 14336), ("qwen3-30b-a3b", 6144), ("deepseek-r1", 18432)]
)
def test_the_dense_mlp_width_of_a_moe_model(name: str, size: int) -> None:
    """intermediate_size, as published (Mixtral's experts have that width too)."""
    assert parse_model_config(_raw(name)).intermediate_size == size


@pytest.mark.parametrize(
    ("q_lora_rank", "expected"), [(1536, 1536), (None, None), (0, None), (1536.0, 1536)]
)
def test_mla_shape(q_lora_rank: Any, expected: int | None) -> None:
    """DeepSeek-R1's MLA numbers; no (or zero) q_lora_rank means a plain q_proj."""
    model = parse_model_config(_with("deepseek-r1", q_lora_rank=q_lora_rank))
    assert model.q_lora_rank == expected
    assert (model.kv_lora_rank, model.qk_nope_head_dim, model.qk_rope_head_dim) == (512, 128, 64)
    assert model.v_head_dim == 128
    assert model.uses_mla


# ---------------------------------------------------------------------------------------
# Context length: vLLM's derived max_model_len


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, 8192),
        ({"max_position_embeddings": 8192.0}, 8192),
        ({"max_position_embeddings": None}, None),
        # linear / dynamic scaling stretch the trained context by the factor
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, 16384),
        ({"rope_scaling": {"type": "dynamic", "factor": 4}}, 32768),
        ({"rope_scaling": {"type": "linear", "factor": 1.5}}, 12288),
        # yarn scales original_max_position_embeddings
        (
            {
                "rope_scaling": {
                    "rope_type": "yarn",
                    "factor": 4,
                    "original_max_position_embeddings": 2048,
                }
            },
            8192,
        ),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4}}, 32768),
        # only yarn reads original_max_position_embeddings
        (
            {
                "rope_scaling": {
                    "rope_type": "dynamic",
                    "factor": 2,
                    "original_max_position_embeddings": 4096,
                }
            },
            16384,
        ),
        (
            {
                "max_position_embeddings": None,
                "rope_scaling": {
                    "type": "yarn",
                    "factor": 40,
                    "original_max_position_embeddings": 4096,
                },
            },
            163840,
        ),
        ({"max_position_embeddings": None, "rope_scaling": {"type": "linear", "factor": 2}}, None),
        # these types already state the extended length (or do not extend it)
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, 8192),
        ({"rope_scaling": {"rope_type": "longrope", "factor": 4}}, 8192),
        ({"rope_scaling": {"type": "su", "factor": 4}}, 8192),
        ({"rope_scaling": {"type": "mrope", "factor": 4}}, 8192),
        ({"rope_scaling": {"rope_type": "default", "factor": 4}}, 8192),
        # no usable factor, or no mapping at all: the context as stated
        ({"rope_scaling": {"rope_type": "linear"}}, 8192),
        ({"rope_scaling": {"rope_type": "linear", "factor": "2"}}, 8192),
        ({"rope_scaling": "linear"}, 8192),
        ({"max_position_embeddings": None, "rope_scaling": "linear"}, None),
        ({"max_position_embeddings": None, "rope_scaling": {"rope_type": "llama3"}}, None),
    ],
)
def test_context_length_follows_rope_scaling(changes: dict[str, Any], expected: int | None) -> None:
    raw = {**_raw("llama-3-8b"), **changes}
    raw = {k: v for k, v in raw.items() if v is not None}
    assert parse_model_config(raw).max_position_embeddings == expected


def test_published_context_lengths() -> None:
    # DeepSeek-V2-Lite: yarn 40 x 4096; R1 the same
    assert load_model_config(FIXTURES / "deepseek-v2-lite.json").max_position_embeddings == 163840
    assert load_model_config(R1_CONFIG).max_position_embeddings == 163840


# ---------------------------------------------------------------------------------------
# Quantization schemes


def _quant(qc: Any) -> Quantization:
    return parse_model_config(_with("llama-3-8b", quantization_config=qc)).quantization


@pytest.mark.parametrize(
    ("qc", "expected"),
    [
        ({}, Quantization()),
        ({"quant_method": "fp8"}, Quantization("fp8", 8, source="fp8")),
        ({"quant_method": "FP8"}, Quantization("fp8", 8, source="fp8")),
        (
            {"quant_method": "fp8", "weight_block_size": [128, 64]},
            Quantization("fp8", 8, block=(128, 64), source="fp8"),
        ),
        (
            {"quant_method": "fp8", "weight_block_size": [1, 128]},
            Quantization("fp8", 8, block=(1, 128), source="fp8"),
        ),
        # AutoAWQ's keys (w_bit, q_group_size) and the HF ones (bits, group_size)
        (
            {"quant_method": "awq", "bits": 4, "group_size": 128},
            Quantization("awq", 4, group_size=128, has_zeros=True, source="awq"),
        ),
        (
            {"quant_method": "awq", "w_bit": 8, "q_group_size": 64},
            Quantization("awq", 8, group_size=64, has_zeros=True, source="awq"),
        ),
        # AWQ defaults: 4 bits in groups of 128
        (
            {"quant_method": "awq"},
            Quantization("awq", 4, group_size=128, has_zeros=True, source="awq"),
        ),
        # GPTQ keeps g_idx; group_size -1 is one group per row
        (
            {"quant_method": "gptq", "bits": 8, "group_size": -1},
            Quantization("gptq", 8, has_g_idx=True, has_zeros=True, source="gptq"),
        ),
        # a group of 0 columns is no grouping; a group of 1 is a scale per weight
        (
            {"quant_method": "gptq", "bits": 4, "group_size": 0},
            Quantization("gptq", 4, has_g_idx=True, has_zeros=True, source="gptq"),
        ),
        (
            {"quant_method": "awq", "bits": 4, "group_size": 1},
            Quantization("awq", 4, group_size=1, has_zeros=True, source="awq"),
        ),
        (
            {"quant_method": "gptq", "bits": 4, "group_size": 32},
            Quantization("gptq", 4, group_size=32, has_g_idx=True, has_zeros=True, source="gptq"),
        ),
        ({"quant_method": "gptq", "bits": 3}, Quantization("unknown", 3, source="gptq 3-bit")),
        ({"quant_method": "awq", "bits": 2}, Quantization("unknown", 2, source="awq 2-bit")),
        ({"quant_method": "bitsandbytes"}, Quantization("unknown", 16, source="bitsandbytes")),
        ({"load_in_4bit": True}, Quantization("unknown", 16, source="unnamed")),
    ],
)
def test_parsed_quantization(qc: dict[str, Any], expected: Quantization) -> None:
    assert _quant(qc) == expected


# ---------------------------------------------------------------------------------------
# The plan's one-line summaries say what was parsed


@pytest.mark.parametrize(
    ("quant", "summary"),
    [
        (Quantization(), "none (16-bit weights)"),
        (Quantization("fp8", 8, block=(128, 64)), "fp8 (block 128x64 scales)"),
        (Quantization("fp8", 8, per_channel=True), "fp8 (per-channel scales)"),
        (Quantization("fp8", 8), "fp8 (per-tensor scale)"),
        (Quantization("awq", 4, group_size=128), "awq 4-bit (group 128)"),
        (Quantization("gptq", 8, group_size=None), "gptq 8-bit (per-channel)"),
        (Quantization("int8", 8, per_channel=True), "int8 (per-channel scales)"),
        (Quantization("int8", 8), "int8"),
        (Quantization("unknown", 16, source="bitsandbytes"), "unknown (bitsandbytes)"),
    ],
)
def test_quantization_summary_names_the_scheme_and_its_scales(
    quant: Quantization, summary: str
) -> None:
    assert quant.describe() == summary


@pytest.mark.parametrize(
    ("name", "summary"),
    [
        ("llama-3-8b", "LlamaForCausalLM (llama): 32 layers, 32 heads / 8 KV heads x 128"),
        (
            "mixtral-8x7b",
            "MixtralForCausalLM (mixtral): 32 layers, 32 heads / 8 KV heads x 128, "
            "MoE 8 experts (top 2)",
        ),
        (
            "deepseek-r1",
            "DeepseekV3ForCausalLM (deepseek_v3): 61 layers, MLA kv_lora_rank 512 + rope 64, "
            "MoE 256 experts (top 8)",
        ),
    ],
)
def test_model_summary_states_the_parsed_shape(name: str, summary: str) -> None:
    assert parse_model_config(_raw(name)).describe() == summary


def test_model_summary_of_an_unmodelled_architecture_says_so() -> None:
    raw = _with("llama-3-8b", model_type="gemma2", architectures=["Gemma2ForCausalLM"])
    assert parse_model_config(raw).describe() == (
        "Gemma2ForCausalLM (unknown family): 32 layers, 32 heads / 8 KV heads x 128"
    )


# ---------------------------------------------------------------------------------------
# The checkpoint size from model.safetensors.index.json


def _index_dir(tmp_path: Path, index: Any) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(_raw("llama-3-8b")), encoding="utf-8")
    if index is not None:
        text = index if isinstance(index, str) else json.dumps(index)
        (tmp_path / "model.safetensors.index.json").write_text(text, encoding="utf-8")
    return config


@pytest.mark.parametrize(
    ("index", "size"),
    [
        (None, None),  # no index: sized from the shapes
        ({"metadata": {"total_size": 16060522496}, "weight_map": {}}, 16060522496),
        ({"metadata": {"total_size": 1}}, 1),  # the smallest positive size
        ({"metadata": {"total_size": 1234.2}}, 1235),  # whole bytes, rounded up
        ({"weight_map": {}}, None),  # no metadata
        ({"metadata": {}}, None),
        (["not", "an", "object"], None),
    ],
)
def test_checkpoint_size_from_the_index(tmp_path: Path, index: Any, size: int | None) -> None:
    assert read_index_total_size(_index_dir(tmp_path, index)) == size


@pytest.mark.parametrize("total", [0, -5, True, "16 GB", [1]])
def test_a_checkpoint_size_that_is_not_a_positive_number_is_refused(
    tmp_path: Path, total: Any
) -> None:
    config = _index_dir(tmp_path, {"metadata": {"total_size": total}})
    with pytest.raises(ModelConfigError) as err:
        read_index_total_size(config)
    index = tmp_path / "model.safetensors.index.json"
    assert str(err.value) == f"{index}: metadata.total_size must be a positive number"


def test_an_index_that_is_not_json_is_refused_by_path(tmp_path: Path) -> None:
    config = _index_dir(tmp_path, "{not json")
    index = tmp_path / "model.safetensors.index.json"
    with pytest.raises(ModelConfigError) as err:
        read_index_total_size(config)
    assert str(err.value).startswith(f"cannot read {index}: ")


def test_a_config_or_index_that_is_not_utf8_is_refused_by_path(tmp_path: Path) -> None:
    """A Latin-1 byte in config.json or the index is a ModelConfigError naming the file (the
    planner's PlanError on `config_file`), not a UnicodeDecodeError traceback."""
    config = tmp_path / "config.json"
    config.write_bytes(json.dumps(_raw("llama-3-8b"))[:-1].encode() + b', "note": "\xe9"}')
    with pytest.raises(ModelConfigError) as err:
        load_model_config(config)
    assert str(err.value).startswith(f"{config} is not UTF-8 text: ")
    with pytest.raises(PlanError) as plan_err:
        plan_for_config_file(config, gpu_memory_gib=80, gpus_per_node=1)
    assert plan_err.value.field == "config_file"
    assert str(plan_err.value).startswith(f"{config} is not UTF-8 text: ")

    config = _index_dir(tmp_path, None)
    index = tmp_path / "model.safetensors.index.json"
    index.write_bytes(b'{"metadata": {"total_size": 1, "note": "\xe9"}}')
    with pytest.raises(ModelConfigError) as err:
        read_index_total_size(config)
    assert str(err.value).startswith(f"cannot read {index}: ")


def test_config_and_index_are_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """Under a C locale without Python's UTF-8 mode the default encoding is ASCII: a
    config.json and index with non-ASCII text (a model card name in Chinese) still load."""
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({**_raw("llama-3-8b"), "_name_or_path": "通义千问"}, ensure_ascii=False),
        encoding="utf-8",
    )
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 16060522496, "note": "模型"}}, ensure_ascii=False),
        encoding="utf-8",
    )
    code = (
        "import sys\n"
        "from components.plan.model_config import load_model_config, read_index_total_size\n"
        "print(load_model_config(sys.argv[1]).num_layers, read_index_total_size(sys.argv[1]))\n"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    assert (out.returncode, out.stdout) == (0, "32 16060522496\n"), out.stderr
