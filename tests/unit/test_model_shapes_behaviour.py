"""What the planner says about a model's tensors, checked against hand arithmetic (found by
`make mutation` on components/plan/model_shapes.py):

- the weight bytes one GPU holds, for tiny FP8 (per-tensor scale) models of each attention kind
  (GQA with and without q/k/v biases or q/k norms, MLA with and without q_lora_rank, a
  DeepSeek MoE layer with its router and correction bias), worked out tensor by tensor from
  the config numbers and vLLM's sharding;
- a TP refusal names keys of the model's own config.json, and the size it quotes is what
  those keys give.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from components.plan.model_config import parse_model_config
from components.plan.model_shapes import tp_problems
from components.plan.sizing import make_plan

FIXTURES = Path(__file__).parent / "fixtures" / "model_configs"
FP8_BLOCK_128 = {"quant_method": "fp8", "weight_block_size": [128, 128]}


def _fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def _tiny_gqa(model_type: str, **extra: Any) -> dict[str, Any]:
    """hidden 256, 4 heads of 64 (no head_dim key), 2 KV heads, MLP 512, vocab 1000, 2 layers."""
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    return {
        "architectures": [arch[model_type]],
        "model_type": model_type,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "vocab_size": 1000,
        "num_hidden_layers": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "quantization_config": FP8_BLOCK_128,
        **extra,
    }


def _tiny_mla(**extra: Any) -> dict[str, Any]:
    """DeepSeek-V3 shaped: hidden 256, 4 heads, layer 0 dense (MLP 512), layer 1 MoE with 4
    routed experts + 1 shared expert of 128, noaux_tc routing, one MTP layer."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 512,
        "moe_intermediate_size": 128,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "topk_method": "noaux_tc",
        "q_lora_rank": 128,
        "kv_lora_rank": 128,
        "qk_nope_head_dim": 64,
        "qk_rope_head_dim": 32,
        "v_head_dim": 64,
        "vocab_size": 1000,
        "num_hidden_layers": 2,
        "num_nextn_predict_layers": 1,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "quantization_config": FP8_BLOCK_128,
        **extra,
    }


# ---------------------------------------------------------------------------------------
# Weight bytes on one GPU, by hand
#
# FP8 with a per-tensor scale: a linear weight of r x c is r*c bytes plus one 4-byte fp32
# scale. Embeddings, lm_head, norms, biases and routers stay bf16 (2 bytes); DeepSeek's
# e_score_correction_bias is fp32. vLLM pads the vocabulary to a multiple of 64 (1000 ->
# 1024) and splits it; column-parallel weights split their output rows, row-parallel ones
# their input columns; KV heads split down to one head per GPU; q_a_proj and
# kv_a_proj_with_mqa are replicated.

# TP 2, tiny GQA, per GPU:
_EMBED_TP2 = 512 * 256 * 2  # 1024 padded rows / 2, bf16
_GQA_LAYER_TP2 = (
    2 * 256 * 2  # input and post-attention norms
    + (128 * 256 + 4)  # q_proj: 4 x 64 = 256 rows / 2
    + 2 * (64 * 256 + 4)  # k_proj, v_proj: 2 KV heads / 2 = one head of 64 rows
    + (256 * 128 + 4)  # o_proj: 256 input columns / 2
    + 2 * (256 * 256 + 4)  # gate_proj, up_proj: 512 rows / 2
    + (256 * 256 + 4)  # down_proj: 512 input columns / 2
)
_QKV_BIAS_TP2 = (128 + 64 + 64) * 2  # q/k/v biases follow their weights' rows, bf16
_QK_NORM = 2 * 64 * 2  # q_norm and k_norm: one head_dim each, replicated
# TP 4: q/o/MLP split 4 ways; 2 KV heads cannot be split 4 ways: one whole head per GPU.
_GQA_LAYER_TP4 = (
    2 * 256 * 2
    + (64 * 256 + 4)  # q_proj: 256 / 4 rows
    + 2 * (64 * 256 + 4)  # k_proj, v_proj: one replicated head of 64 rows
    + (256 * 64 + 4)  # o_proj
    + 2 * (128 * 256 + 4)  # gate_proj, up_proj: 512 / 4 rows
    + (256 * 128 + 4)  # down_proj
)
_EMBED_TP4 = 256 * 256 * 2

# TP 2, tiny MLA (q_lora_rank 128, kv_lora_rank 128, qk_nope 64, rope 32, v 64), per GPU:
_Q_LORA_TP2 = (
    (128 * 256 + 4)  # q_a_proj: q_lora_rank x hidden, replicated
    + 128 * 2  # q_a_layernorm
    + (192 * 128 + 4)  # q_b_proj: 4 x (64 + 32) = 384 rows / 2
)
_MLA_ATTN_TP2 = (
    _Q_LORA_TP2
    + (160 * 256 + 4)  # kv_a_proj_with_mqa: 128 + 32 rows, replicated
    + 128 * 2  # kv_a_layernorm
    + (256 * 128 + 4)  # kv_b_proj: 4 x (64 + 64) = 512 rows / 2
    + (256 * 128 + 4)  # o_proj: 4 x 64 = 256 input columns / 2
)
# without q_lora_rank: one q_proj of 384 x hidden, split by rows, instead of q_a/q_b
_MLA_Q_PROJ_TP2 = 192 * 256 + 4
_NORMS = 2 * 256 * 2
_DENSE_MLP_TP2 = 3 * (256 * 256 + 4)  # 512 rows or columns / 2
_MOE_MLP_TP2 = (
    4 * 256 * 2  # router: 4 experts x hidden, bf16, replicated
    + 4 * 4  # e_score_correction_bias: 4 fp32
    + 4 * 3 * (64 * 256 + 4)  # 4 routed experts: gate/up 64 rows, down 64 columns
    + 3 * (64 * 256 + 4)  # the shared expert, split the same way
)
FP8_PER_TENSOR = {"quant_method": "fp8"}


@pytest.mark.parametrize(
    ("raw", "tp", "pp", "expected"),
    [
        pytest.param(
            _tiny_gqa("llama"),
            2,
            1,
            [_EMBED_TP2 + 2 * _GQA_LAYER_TP2 + 512 + _EMBED_TP2],
            id="llama-tp2",
        ),
        pytest.param(
            _tiny_gqa("llama"),
            2,
            2,
            [_EMBED_TP2 + _GQA_LAYER_TP2, _GQA_LAYER_TP2 + 512 + _EMBED_TP2],
            id="llama-tp2-pp2",
        ),
        pytest.param(
            _tiny_gqa("llama"),
            4,
            1,
            [_EMBED_TP4 + 2 * _GQA_LAYER_TP4 + 512 + _EMBED_TP4],
            id="llama-tp4-kv-heads-replicated",
        ),
        pytest.param(
            _tiny_gqa("qwen2"),
            2,
            1,
            [_EMBED_TP2 + 2 * (_GQA_LAYER_TP2 + _QKV_BIAS_TP2) + 512 + _EMBED_TP2],
            id="qwen2-qkv-bias",
        ),
        pytest.param(
            _tiny_gqa("qwen3"),
            2,
            1,
            [_EMBED_TP2 + 2 * (_GQA_LAYER_TP2 + _QK_NORM) + 512 + _EMBED_TP2],
            id="qwen3-qk-norm",
        ),
        pytest.param(
            _tiny_mla(),
            2,
            1,
            [
                _EMBED_TP2
                + (_NORMS + _MLA_ATTN_TP2 + _DENSE_MLP_TP2)
                + (_NORMS + _MLA_ATTN_TP2 + _MOE_MLP_TP2)
                + 512
                + _EMBED_TP2
            ],
            id="deepseek-v3-q-lora",
        ),
        pytest.param(
            _tiny_mla(q_lora_rank=None),
            2,
            1,
            [
                _EMBED_TP2
                + 2 * (_NORMS + _MLA_ATTN_TP2 - _Q_LORA_TP2 + _MLA_Q_PROJ_TP2)
                + _DENSE_MLP_TP2
                + _MOE_MLP_TP2
                + 512
                + _EMBED_TP2
            ],
            id="deepseek-v3-no-q-lora",
        ),
    ],
)
def test_fp8_weights_per_gpu_add_up_tensor_by_tensor(
    raw: dict[str, Any], tp: int, pp: int, expected: list[int]
) -> None:
    plan = make_plan(
        parse_model_config({**raw, "quantization_config": FP8_PER_TENSOR}),
        gpu_memory_gib=80,
        gpus_per_node=tp * pp,
        max_model_len=4096,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
    )
    assert [s.weights_bytes for s in plan.stages] == expected


# ---------------------------------------------------------------------------------------
# TP refusals name config.json keys, with the value those keys give


_QUOTED = re.compile(r"^(?P<keys>[a-z_][a-z_ x()+]*?) (?P<size>\d+) (?:/ TP|is not divisible)")


def _value_of(keys: str, raw: dict[str, Any]) -> int:
    """Evaluate `a x (b + c)` over config.json; head_dim defaults to hidden / heads (HF)."""
    values = dict(raw)
    values.setdefault("head_dim", raw["hidden_size"] // raw["num_attention_heads"])
    names = re.findall(r"[a-z_]+", keys.replace(" x ", " * "))
    missing = [n for n in names if not isinstance(values.get(n), int)]
    assert not missing, f"{keys!r} names {missing}, which config.json does not have"
    expr = re.sub(r"[a-z_]+", lambda m: str(values[m.group()]), keys.replace(" x ", " * "))
    assert re.fullmatch(r"[\d\s()+*]+", expr), expr
    result = eval(expr, {"__builtins__": {}})  # digits, +, * and brackets only (checked)
    assert isinstance(result, int)
    return result


@pytest.mark.parametrize(
    ("raw", "tp", "ep", "named"),
    [
        # 6 heads x 64 / TP 2 = 192 rows per GPU: not a multiple of the 128 block
        pytest.param(
            _tiny_gqa("llama", hidden_size=384, num_attention_heads=6),
            2,
            False,
            ["num_attention_heads x head_dim"],
            id="gqa-q-rows",
        ),
        # blocks of 128 output rows x 64 input columns: q_proj's 192 rows per GPU do not
        # fill whole blocks, o_proj's 192 input columns do; 64 x 128 the other way round
        pytest.param(
            _tiny_gqa(
                "llama",
                hidden_size=384,
                num_attention_heads=6,
                quantization_config={"quant_method": "fp8", "weight_block_size": [128, 64]},
            ),
            2,
            False,
            ["num_attention_heads x head_dim"],
            id="gqa-q-rows-only",
        ),
        pytest.param(
            _tiny_gqa(
                "llama",
                hidden_size=384,
                num_attention_heads=6,
                quantization_config={"quant_method": "fp8", "weight_block_size": [64, 128]},
            ),
            2,
            False,
            ["num_attention_heads x head_dim"],
            id="gqa-o-columns-only",
        ),
        # q_b_proj 4 x (64 + 32) / 2 = 192; kv_b 4 x 128 / 2 = 256 and o 4 x 64 / 2 = 128 fit;
        # the experts' 128 / 2 = 64 rows do not, routed or shared
        pytest.param(
            _tiny_mla(),
            2,
            False,
            [
                "num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim)",
                "moe_intermediate_size",
                "moe_intermediate_size x n_shared_experts",
            ],
            id="mla-q-lora",
        ),
        pytest.param(
            _tiny_mla(q_lora_rank=None, moe_intermediate_size=256),
            2,
            False,
            ["num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim)"],
            id="mla-q-proj",
        ),
        # qk_nope 32, v 64: q 4 x 64 / 2 = 128 fits, kv_b 4 x 96 / 2 = 192 does not
        pytest.param(
            _tiny_mla(qk_nope_head_dim=32, moe_intermediate_size=256),
            2,
            False,
            ["num_attention_heads x (qk_nope_head_dim + v_head_dim)"],
            id="mla-kv-b",
        ),
        # qk_nope 96, v 32: q and kv_b 4 x 128 / 2 = 256 fit, o 4 x 32 / 2 = 64 does not
        pytest.param(
            _tiny_mla(qk_nope_head_dim=96, v_head_dim=32, moe_intermediate_size=256),
            2,
            False,
            ["num_attention_heads x v_head_dim"],
            id="mla-o",
        ),
        # Mixtral's experts are intermediate_size wide: 14336 / 32 = 448 = 3.5 blocks
        pytest.param(
            {**_fixture("mixtral-8x7b"), "quantization_config": FP8_BLOCK_128},
            32,
            False,
            ["intermediate_size"],
            id="mixtral-experts",
        ),
        pytest.param(
            _fixture("deepseek-v2-lite"),
            3,
            True,
            ["n_routed_experts", "num_attention_heads"],
            id="deepseek-expert-count",
        ),
    ],
)
def test_tp_refusals_quote_config_keys_with_their_values(
    raw: dict[str, Any], tp: int, ep: bool, named: list[str]
) -> None:
    problems = tp_problems(parse_model_config(raw), tp, ep)
    quoted = []
    for problem in problems:
        m = _QUOTED.match(problem)
        assert m, problem
        assert _value_of(m["keys"], raw) == int(m["size"]), problem
        if "/ TP" in problem:  # "<keys> <size> / TP <tp> = <size / tp> is not a multiple"
            assert f"/ TP {tp} = {int(m['size']) // tp} " in problem, problem
        quoted.append(m["keys"])
    assert quoted == named
