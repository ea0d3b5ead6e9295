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
from components.plan.model_shapes import build_inventory, tp_problems
from components.plan.sizing import PlanError, make_plan

FIXTURES = Path(__file__).parent / "fixtures" / "model_configs"
FP8_BLOCK_128 = {"quant_method": "fp8", "weight_block_size": [128, 128]}
AWQ_128 = {"quant_method": "awq", "bits": 4, "group_size": 128}


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

# TP 3, tiny GQA widened to hidden 384 (6 heads of 64, 3 KV heads, MLP 768): the padded
# vocabulary (1024 rows) does not split evenly, the fullest rank holds ceil(1024 / 3) = 342.
_EMBED_TP3 = 342 * 384 * 2
_GQA_LAYER_TP3 = (
    2 * 384 * 2
    + (128 * 384 + 4)  # q_proj: 384 / 3 rows
    + 2 * (64 * 384 + 4)  # k_proj, v_proj: 3 KV heads / 3
    + (384 * 128 + 4)  # o_proj
    + 2 * (256 * 384 + 4)  # gate_proj, up_proj: 768 / 3 rows
    + (384 * 256 + 4)  # down_proj
)

# TP 2, tiny GQA as GPTQ 4-bit with group_size -1 (one group per row): per linear weight of
# r x c, packed weights r*c/2, one fp16 scale and one 4-bit zero per row, an int32 g_idx
# per input column.
_GPTQ_LAYER_TP2 = (
    2 * 256 * 2
    + (128 * 256 // 2 + 128 * 2 + 128 // 2 + 256 * 4)  # q_proj 128 x 256
    + 2 * (64 * 256 // 2 + 64 * 2 + 64 // 2 + 256 * 4)  # k_proj, v_proj 64 x 256
    + (256 * 128 // 2 + 256 * 2 + 256 // 2 + 128 * 4)  # o_proj 256 x 128
    + 3 * (256 * 256 // 2 + 256 * 2 + 256 // 2 + 256 * 4)  # gate, up, down 256 x 256
)
GPTQ_PER_ROW = {"quant_method": "gptq", "bits": 4, "group_size": -1}

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


def _fp8(raw: dict[str, Any]) -> dict[str, Any]:
    return {**raw, "quantization_config": FP8_PER_TENSOR}


@pytest.mark.parametrize(
    ("raw", "tp", "pp", "expected"),
    [
        pytest.param(
            _fp8(_tiny_gqa("llama")),
            2,
            1,
            [_EMBED_TP2 + 2 * _GQA_LAYER_TP2 + 512 + _EMBED_TP2],
            id="llama-tp2",
        ),
        pytest.param(
            _fp8(
                _tiny_gqa(
                    "llama",
                    hidden_size=384,
                    num_attention_heads=6,
                    num_key_value_heads=3,
                    intermediate_size=768,
                )
            ),
            3,
            1,
            [_EMBED_TP3 + 2 * _GQA_LAYER_TP3 + 768 + _EMBED_TP3],
            id="llama-tp3-vocab-rounds-up",
        ),
        pytest.param(
            _tiny_gqa("llama", quantization_config=GPTQ_PER_ROW),
            2,
            1,
            [_EMBED_TP2 + 2 * _GPTQ_LAYER_TP2 + 512 + _EMBED_TP2],
            id="llama-gptq-per-row",
        ),
        pytest.param(
            _fp8(_tiny_gqa("llama")),
            2,
            2,
            [_EMBED_TP2 + _GQA_LAYER_TP2, _GQA_LAYER_TP2 + 512 + _EMBED_TP2],
            id="llama-tp2-pp2",
        ),
        pytest.param(
            _fp8(_tiny_gqa("llama")),
            4,
            1,
            [_EMBED_TP4 + 2 * _GQA_LAYER_TP4 + 512 + _EMBED_TP4],
            id="llama-tp4-kv-heads-replicated",
        ),
        pytest.param(
            _fp8(_tiny_gqa("qwen2")),
            2,
            1,
            [_EMBED_TP2 + 2 * (_GQA_LAYER_TP2 + _QKV_BIAS_TP2) + 512 + _EMBED_TP2],
            id="qwen2-qkv-bias",
        ),
        pytest.param(
            _fp8(_tiny_gqa("qwen3")),
            2,
            1,
            [_EMBED_TP2 + 2 * (_GQA_LAYER_TP2 + _QK_NORM) + 512 + _EMBED_TP2],
            id="qwen3-qk-norm",
        ),
        pytest.param(
            _fp8(_tiny_mla()),
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
            _fp8(_tiny_mla(q_lora_rank=None)),
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
def test_weights_per_gpu_add_up_tensor_by_tensor(
    raw: dict[str, Any], tp: int, pp: int, expected: list[int]
) -> None:
    plan = make_plan(
        parse_model_config(raw),
        gpu_memory_gib=80,
        gpus_per_node=tp * pp,
        max_model_len=4096,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
    )
    assert [s.weights_bytes for s in plan.stages] == expected


# ---------------------------------------------------------------------------------------
# The whole model and its checkpoint, by hand (tiny MLA, TP 1 shapes, fp8 per-tensor)
#
# Parameters per decoder layer: attention q_a 128x256 + q_a_layernorm 128 + q_b 384x128 +
# kv_a 160x256 + kv_a_layernorm 128 + kv_b 512x128 + o 256x256 = 254208; two norms 512;
# dense MLP 3 x 512x256 = 393216; MoE: router 4x256 + 4 correction biases + 4 experts x 3 x
# 128x256 + 1 shared x 3 x 128x256 = 492548. The vocabulary is not padded on disk.
_ATTN_PARAMS = 32768 + 128 + 49152 + 40960 + 128 + 65536 + 65536
_DENSE_LAYER_PARAMS = 512 + _ATTN_PARAMS + 3 * 512 * 256
_MOE_LAYER_PARAMS = 512 + _ATTN_PARAMS + 1024 + 4 + 4 * 3 * 128 * 256 + 3 * 128 * 256
_EMBED_PARAMS = 1000 * 256
# DeepSeek-V3's MTP module (checkpoint only): a decoder layer plus its own embedding,
# enorm, hnorm, eh_proj (2h -> h), shared_head norm and head.
_MTP_EXTRA_PARAMS = _EMBED_PARAMS + 256 + 256 + 256 * 512 + 256 + _EMBED_PARAMS
# Bytes: fp8 linear weights 1 byte + one 4-byte scale each; everything else bf16 (2 bytes),
# the 4 correction biases fp32. Per layer 5 (+3 +3 per MLP) linear weights.
_ATTN_BYTES = (32768 + 49152 + 40960 + 65536 + 65536) + 5 * 4 + (128 + 128) * 2
_DENSE_LAYER_BYTES = 512 * 2 + _ATTN_BYTES + 3 * (512 * 256 + 4)
_MOE_LAYER_BYTES = 512 * 2 + _ATTN_BYTES + 1024 * 2 + 4 * 4 + 5 * 3 * (128 * 256 + 4)
_EMBED_BYTES = _EMBED_PARAMS * 2
_MTP_EXTRA_BYTES = _EMBED_BYTES + 3 * 256 * 2 + 256 * 512 * 2 + _EMBED_BYTES
_LOADED_BYTES = _EMBED_BYTES + _DENSE_LAYER_BYTES + _MOE_LAYER_BYTES + 256 * 2 + _EMBED_BYTES
# layer 2 (the MTP layer) is a MoE layer like layer 1
_CHECKPOINT_BYTES = _LOADED_BYTES + _MOE_LAYER_BYTES + _MTP_EXTRA_BYTES


def test_parameters_as_loaded_and_in_the_checkpoint() -> None:
    plan = make_plan(parse_model_config(_fp8(_tiny_mla())), gpu_memory_gib=80, gpus_per_node=1)
    loaded = _EMBED_PARAMS + _DENSE_LAYER_PARAMS + _MOE_LAYER_PARAMS + 256 + _EMBED_PARAMS
    assert plan.parameters == loaded
    assert plan.parameters_checkpoint == loaded + _MOE_LAYER_PARAMS + _MTP_EXTRA_PARAMS
    assert plan.weight_bytes == _LOADED_BYTES


def test_mtp_layers_take_the_layer_index_after_the_last_decoder_layer() -> None:
    """Two MTP layers after 2 decoder layers are layers 2 and 3: with experts on every 3rd
    layer from 0, layer 0 and MTP layer 3 have experts, layer 1 and MTP layer 2 do not."""
    raw = _fp8(_tiny_mla(first_k_dense_replace=0, moe_layer_freq=3, num_nextn_predict_layers=2))
    plan = make_plan(parse_model_config(raw), gpu_memory_gib=80, gpus_per_node=1)
    loaded = _EMBED_PARAMS + _MOE_LAYER_PARAMS + _DENSE_LAYER_PARAMS + 256 + _EMBED_PARAMS
    mtp = (_DENSE_LAYER_PARAMS + _MTP_EXTRA_PARAMS) + (_MOE_LAYER_PARAMS + _MTP_EXTRA_PARAMS)
    assert (plan.parameters, plan.parameters_checkpoint) == (loaded, loaded + mtp)


def test_a_checkpoint_of_the_modelled_size_plans_the_modelled_bytes() -> None:
    """Given the checkpoint's true size (MTP included), the plan needs no calibration: the
    weights per GPU are the hand-computed TP 2 bytes and no note says the size differs."""
    model = parse_model_config(_fp8(_tiny_mla()))
    kw: dict[str, Any] = {"gpu_memory_gib": 80, "gpus_per_node": 2, "tensor_parallel_size": 2}
    plan = make_plan(model, checkpoint_bytes=_CHECKPOINT_BYTES, **kw)
    per_gpu = (
        _EMBED_TP2
        + (_NORMS + _MLA_ATTN_TP2 + _DENSE_MLP_TP2)
        + (_NORMS + _MLA_ATTN_TP2 + _MOE_MLP_TP2)
        + 512
        + _EMBED_TP2
    )
    assert [s.weights_bytes for s in plan.stages] == [per_gpu]
    assert plan.weight_bytes == _LOADED_BYTES
    assert not [n for n in plan.notes if "differs" in n]


def test_an_unmodelled_scheme_is_planned_as_16_bit_weights_scaled_to_the_checkpoint() -> None:
    """Same checkpoint size, same model: an unknown quantization plans exactly like the
    unquantized model (the checkpoint size calibrates both the same way)."""
    size = 6_600_000  # about 2 bytes x 3.3 M parameters
    kw: dict[str, Any] = {"gpu_memory_gib": 80, "gpus_per_node": 2, "checkpoint_bytes": size}
    plain = make_plan(parse_model_config(_tiny_mla(quantization_config=None)), **kw)
    unknown = make_plan(
        parse_model_config(_tiny_mla(quantization_config={"quant_method": "bitsandbytes"})),
        **kw,
    )
    assert unknown.quantization == "unknown (bitsandbytes)"
    assert [s.weights_bytes for s in unknown.stages] == [s.weights_bytes for s in plain.stages]
    assert unknown.weight_bytes == plain.weight_bytes


def test_only_modelled_families_have_an_inventory() -> None:
    raw = {**_fixture("llama-3-8b"), "model_type": "gemma2", "architectures": ["Gemma2"]}
    with pytest.raises(ValueError, match=r"^architecture Gemma2 is not modelled$"):
        build_inventory(parse_model_config(raw))


def test_whole_experts_that_do_not_divide_the_group_count_the_fullest_gpu() -> None:
    """8 experts over 3 GPUs: the fullest GPU holds 3 of them (the planner refuses such a
    group, but the count per GPU is the conservative one)."""
    experts = next(
        t
        for t in build_inventory(parse_model_config(_fixture("mixtral-8x7b"))).layers[0]
        if t.routed_expert
    )
    assert (experts.copies, experts.copies_on_gpu(3, ep=True), experts.copies_on_gpu(3)) == (
        8,
        3,
        8,
    )


# ---------------------------------------------------------------------------------------
# TP refusals name config.json keys, with the value those keys give


_QUOTED = re.compile(
    r"^(?P<keys>[a-z_][a-z_ x()+]*?) (?P<size>\d+) (?:/ TP|over TP|is not divisible)"
)


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
        # 6 heads x 64 / TP 2 = 192 rows per GPU: not a multiple of the 128 block; nor are
        # the K and V parts of the merged QKV weight, 2 KV heads x 64 / TP 2 = 64 rows
        pytest.param(
            _tiny_gqa("llama", hidden_size=384, num_attention_heads=6),
            2,
            False,
            ["num_attention_heads x head_dim", "num_key_value_heads x head_dim"],
            id="gqa-q-rows",
        ),
        # blocks of 128 output rows x 64 input columns: q_proj's 192 rows and k/v's 64 per
        # GPU do not fill whole blocks, o_proj's 192 input columns do; 64 x 128 the other
        # way round (64-row blocks: q 192 and k/v 64 are whole, o's 192 columns are not)
        pytest.param(
            _tiny_gqa(
                "llama",
                hidden_size=384,
                num_attention_heads=6,
                quantization_config={"quant_method": "fp8", "weight_block_size": [128, 64]},
            ),
            2,
            False,
            ["num_attention_heads x head_dim", "num_key_value_heads x head_dim"],
            id="gqa-q-rows-only",
        ),
        # vLLM's QKVParallelLinear checks every partition of the merged weight, K and V too:
        # q 8 x 64 / TP 2 = 256 rows and o's 256 columns fit the 128 block, but the 2 KV
        # heads x 64 / TP 2 = 64 rows per GPU do not
        pytest.param(
            _tiny_gqa("llama", hidden_size=512, num_attention_heads=8),
            2,
            False,
            ["num_key_value_heads x head_dim"],
            id="gqa-kv-rows",
        ),
        # KV heads replicated beyond TP: head_dim 192 (MiMo-V2-Flash's), 16 heads, 2 KV heads,
        # TP 4: q 16 x 192 / 4 = 768 rows = 6 blocks, o 768 columns, MLP 1024 / 4 = 256 fit;
        # each GPU holds one whole KV head, 192 rows = 1.5 blocks
        pytest.param(
            _tiny_gqa(
                "llama",
                hidden_size=1024,
                num_attention_heads=16,
                head_dim=192,
                intermediate_size=1024,
            ),
            4,
            False,
            ["num_key_value_heads x head_dim"],
            id="gqa-kv-replicated-head",
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
        # Blocks of 64 output rows x 128 input columns: the column-parallel q_b (192 rows)
        # and kv_b (256) fit, so do the experts' gate/up (64 rows); the row-parallel
        # down_proj of the experts (64 input columns) does not
        pytest.param(
            _tiny_mla(quantization_config={"quant_method": "fp8", "weight_block_size": [64, 128]}),
            2,
            False,
            ["moe_intermediate_size", "moe_intermediate_size x n_shared_experts"],
            id="mla-rows-and-columns-have-their-own-block",
        ),
        # Under expert parallelism routed experts are whole, but the shared expert is still
        # split: 128 / 2 = 64 rows
        pytest.param(
            _tiny_mla(),
            2,
            True,
            [
                "num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim)",
                "moe_intermediate_size x n_shared_experts",
            ],
            id="mla-ep-shared-expert",
        ),
        # Without TP a single weight's ragged last block is fine (its scale covers the rest):
        # MLA's kv_b_proj, 4 x (32 + 48) = 320 rows, and o_proj's 4 x 48 = 192 columns
        pytest.param(
            _tiny_mla(qk_nope_head_dim=32, v_head_dim=48), 1, False, [], id="fp8-tp1-single"
        ),
        # but the parts of a merged weight are not: gate_proj and up_proj are one weight in
        # vLLM, and up's scales start at gate's 320 rows rounded up to 384 (MLP 320)
        pytest.param(
            _tiny_gqa("llama", intermediate_size=320), 1, False, ["intermediate_size"], id="fp8-tp1"
        ),
        # nor are q, k and v: one KV head of 64 rows leaves V's rows under K's scale
        pytest.param(
            _tiny_gqa("llama", num_key_value_heads=1),
            1,
            False,
            ["num_key_value_heads x head_dim"],
            id="fp8-tp1-kv",
        ),
        pytest.param(
            _tiny_gqa("llama", intermediate_size=320, quantization_config=AWQ_128),
            1,
            False,
            [],
            id="awq-tp1",
        ),
        # AWQ/GPTQ groups run along the input columns of row-parallel weights: down_proj's
        # 320 / 2 = 160 columns per GPU are not whole groups of 128
        pytest.param(
            _tiny_gqa("llama", intermediate_size=320, quantization_config=AWQ_128),
            2,
            False,
            ["intermediate_size"],
            id="awq-down-proj",
        ),
        pytest.param(
            _tiny_gqa(
                "llama",
                intermediate_size=320,
                quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128},
            ),
            2,
            False,
            ["intermediate_size"],
            id="gptq-down-proj",
        ),
        # MLA's o_proj (row) has 4 x 32 / 2 = 64 input columns; q_b and kv_b (column) split
        # rows, which AWQ groups do not constrain
        pytest.param(
            _tiny_mla(
                qk_nope_head_dim=96,
                v_head_dim=32,
                moe_intermediate_size=256,
                quantization_config=AWQ_128,
            ),
            2,
            False,
            ["num_attention_heads x v_head_dim"],
            id="awq-mla-o",
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


def test_fp8_block_gqa_whose_kv_rows_per_gpu_are_not_whole_blocks_is_refused_that_tp() -> None:
    """vLLM's QKVParallelLinear gives the FP8 block check one output partition per part of the
    merged weight, [q, k, v] rows per GPU, and every one must be whole block_n rows, with or
    without TP (fp8_utils.validate_fp8_block_shape). 8 heads x 64, 2 KV heads, 128 x 128 blocks:
    at TP 2, q is 8 x 64 / 2 = 256 rows (2 blocks) but k and v are 2 x 64 / 2 = 64 rows each
    (half a block), so vLLM refuses TP 2; at TP 1 all three are whole blocks."""
    raw = _tiny_gqa("llama", hidden_size=512, num_attention_heads=8)
    cfg = parse_model_config(raw)
    assert tp_problems(cfg, 1) == []  # q 512, k and v 128 rows each: whole blocks
    assert tp_problems(cfg, 2) == [
        "num_key_value_heads x head_dim 128 / TP 2 = 64 is not a multiple of the FP8 block 128 "
        "(quantization_config.weight_block_size)"
    ]
    with pytest.raises(PlanError) as err:
        make_plan(cfg, gpu_memory_gib=80, gpus_per_node=2, tensor_parallel_size=2)
    assert "(legal sizes dividing 2 GPUs per node: [1])" in str(err.value)
    # Beyond the KV head count each GPU holds one whole KV head: head_dim 192 is 1.5 blocks
    wide = parse_model_config(
        _tiny_gqa(
            "llama", hidden_size=1024, num_attention_heads=16, head_dim=192, intermediate_size=1024
        )
    )
    assert tp_problems(wide, 4) == [
        "num_key_value_heads x head_dim 384 over TP 4 (one replicated KV head per GPU) = 192 "
        "is not a multiple of the FP8 block 128 (quantization_config.weight_block_size)"
    ]
    # A single KV head of 64 rows is half a block even without TP (V's scales would start
    # at K's offset rounded up); blocks of 64 rows make 64 KV rows per GPU one whole block
    one_kv = parse_model_config({**raw, "num_key_value_heads": 1})
    assert tp_problems(one_kv, 1) == [
        "num_key_value_heads x head_dim 64 / TP 1 = 64 is not a multiple of the FP8 block 128 "
        "(quantization_config.weight_block_size)"
    ]
    narrow = {"quant_method": "fp8", "weight_block_size": [64, 128]}
    assert tp_problems(parse_model_config({**raw, "quantization_config": narrow}), 2) == []


def test_without_tp_only_merged_projections_must_be_whole_fp8_blocks() -> None:
    """At TP 1 an unmerged linear (o_proj, down_proj) may end in a ragged block (its last
    scale covers the rest), but each part of a merged one (gate_proj + up_proj) must be whole
    blocks. Blocks of 64 output x 128 input: gate/up have 320 output rows (5 blocks of 64),
    down_proj has 320 input columns (2.5 blocks of 128) and is not merged: vLLM loads it."""
    quant = {"quant_method": "fp8", "weight_block_size": [64, 128]}
    cfg = parse_model_config(_tiny_gqa("llama", intermediate_size=320, quantization_config=quant))
    assert tp_problems(cfg, 1) == []
    # 288 rows are 4.5 blocks of 64: the merged gate/up part is refused even without TP.
    ragged = parse_model_config(
        _tiny_gqa("llama", intermediate_size=288, quantization_config=quant)
    )
    assert tp_problems(ragged, 1) == [
        "intermediate_size 288 / TP 1 = 288 is not a multiple of the FP8 block 64 "
        "(quantization_config.weight_block_size)"
    ]
