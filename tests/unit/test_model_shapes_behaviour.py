"""What the planner says about a model's tensors, checked against config.json by hand (found
by `make mutation` on components/plan/model_shapes.py):

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
