"""Memory planner: parameter counts against published totals, KV-cache math by hand, TP/PP
legality, fit and no-fit, explicit layouts, and DeepSeek-R1 against real vLLM figures."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from components.plan.model_config import (
    ModelConfig,
    ModelConfigError,
    Quantization,
    load_model_config,
    parse_model_config,
)
from components.plan.model_shapes import build_inventory, matrix_bytes, tp_problems
from components.plan.sizing import (
    GIB,
    USABLE_FRACTION,
    PlanError,
    make_plan,
    plan_for_config_file,
    plan_from_settings,
    pp_partition,
)
from components.settings import load_settings
from tests.unit.test_settings import valid_raw

FIXTURES = Path(__file__).parent / "fixtures" / "model_configs"
REPO = Path(__file__).resolve().parents[2]
R1_CONFIG = REPO / "models" / "deepseek-r1" / "config.json"
# deepseek-ai/DeepSeek-R1 model.safetensors.index.json metadata.total_size
R1_TOTAL_SIZE = 688_586_727_753


def cfg(name: str) -> ModelConfig:
    return load_model_config(FIXTURES / f"{name}.json")


def raw(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


# ---------------------------------------------------------------------------------------
# Parameter counts: the published totals (model cards / hub "params") within 1%.

PUBLISHED = [
    ("llama-3-8b", 8.03e9),
    ("llama-3-70b", 70.6e9),
    ("qwen2-7b", 7.62e9),
    ("qwen2.5-72b", 72.7e9),
    ("qwen3-8b", 8.2e9),
    ("qwen3-30b-a3b", 30.5e9),
    ("mistral-7b-v0.1", 7.24e9),
    ("mixtral-8x7b", 46.7e9),
    ("deepseek-v2-lite", 15.7e9),
    ("deepseek-r1", 671e9),
]


@pytest.mark.parametrize(("name", "published"), PUBLISHED)
def test_parameters_match_published_totals(name: str, published: float) -> None:
    params = build_inventory(cfg(name)).parameters
    assert abs(params - published) / published < 0.01, f"{name}: {params:,} vs {published:,.0f}"


def test_deepseek_r1_parameters_without_and_with_mtp() -> None:
    inv = build_inventory(load_model_config(R1_CONFIG))
    # 671B as vLLM loads it; the hub's "685B" includes the MTP module (num_nextn_predict_layers).
    assert inv.parameters == 671_026_419_200
    assert abs(inv.checkpoint_parameters - 685e9) / 685e9 < 0.01


def test_exact_dense_formula_llama_3_8b() -> None:
    # facts.md: L*(2h^2 + 2*h*kv*d + 3*h*I + 2h) + V*h*2 + h
    L, h, kv, d, inter, v = 32, 4096, 8, 128, 14336, 128256
    expected = L * (2 * h * h + 2 * h * kv * d + 3 * h * inter + 2 * h) + v * h * 2 + h
    assert build_inventory(cfg("llama-3-8b")).parameters == expected == 8_030_261_248


def test_qkv_bias_counted_for_qwen2() -> None:
    c = cfg("qwen2-7b")
    L, h, kv, d = 28, 3584, 4, 128
    no_bias = parse_model_config({**raw("qwen2-7b"), "model_type": "llama"})
    assert build_inventory(c).parameters - build_inventory(no_bias).parameters == L * (
        h + 2 * kv * d
    )


def test_tied_embeddings_counted_once() -> None:
    tied = parse_model_config({**raw("llama-3-8b"), "tie_word_embeddings": True})
    untied = cfg("llama-3-8b")
    diff = build_inventory(untied).parameters - build_inventory(tied).parameters
    assert diff == 128256 * 4096


@pytest.mark.parametrize(
    ("name", "total_size"),
    # bf16 checkpoints: safetensors total_size is exactly 2 bytes per parameter.
    [("llama-3-8b", 16_060_522_496), ("mistral-7b-v0.1", 14_483_464_192)],
)
def test_bf16_weight_bytes_match_checkpoint_size(name: str, total_size: int) -> None:
    c = cfg(name)
    inv = build_inventory(c)
    assert inv.loaded_bytes(c.quantization) == total_size
    assert inv.checkpoint_bytes(c.quantization, c.checkpoint_dtype_bytes) == total_size


def test_r1_fp8_checkpoint_model_matches_published_total_size() -> None:
    c = load_model_config(R1_CONFIG)
    modelled = build_inventory(c).checkpoint_bytes(c.quantization, c.checkpoint_dtype_bytes)
    # FP8 weights + fp32 block scales + bf16 embeddings/norms/routers + the MTP layer.
    assert abs(modelled - R1_TOTAL_SIZE) / R1_TOTAL_SIZE < 1e-4


# ---------------------------------------------------------------------------------------
# Bytes per quantization scheme (hand-computed)


def test_matrix_bytes_by_scheme() -> None:
    rows, cols = 4096, 4096
    assert matrix_bytes(rows, cols, "linear", Quantization(), 2) == rows * cols * 2
    fp8 = Quantization("fp8", 8, block=(128, 128))
    # 1 byte per weight + 32 x 32 blocks x 4 bytes of fp32 scale
    assert matrix_bytes(rows, cols, "linear", fp8, 2) == rows * cols + 32 * 32 * 4
    # ragged blocks round up (R1's kv_a_proj_with_mqa: 576 x 7168 -> 5 x 56 blocks)
    assert matrix_bytes(576, 7168, "linear", fp8, 2) == 576 * 7168 + 5 * 56 * 4
    awq = Quantization("awq", 4, group_size=128, has_zeros=True)
    # packed 4-bit weights + fp16 scale and 4-bit zero per (group, output row)
    assert (
        matrix_bytes(rows, cols, "linear", awq, 2)
        == rows * cols // 2 + 32 * rows * 2 + 32 * rows // 2
    )
    gptq = Quantization("gptq", 4, group_size=128, has_zeros=True, has_g_idx=True)
    assert matrix_bytes(rows, cols, "linear", gptq, 2) == (
        rows * cols // 2 + 32 * rows * 2 + 32 * rows // 2 + cols * 4
    )
    int8 = Quantization("int8", 8, per_channel=True)
    assert matrix_bytes(rows, cols, "linear", int8, 2) == rows * cols + rows * 4
    # embeddings / norms / routers are never quantized
    assert matrix_bytes(rows, cols, "dense", fp8, 2) == rows * cols * 2


def test_parse_quantization_configs() -> None:
    r1 = load_model_config(R1_CONFIG).quantization
    assert (r1.method, r1.block) == ("fp8", (128, 128))
    awq = parse_model_config(
        {
            **raw("qwen2.5-72b"),
            "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128},
        }
    ).quantization
    assert (awq.method, awq.weight_bits, awq.group_size) == ("awq", 4, 128)
    unknown = parse_model_config(
        {**raw("llama-3-8b"), "quantization_config": {"quant_method": "bitsandbytes"}}
    ).quantization
    assert unknown.method == "unknown"


# ---------------------------------------------------------------------------------------
# KV cache per token (hand-computed)


def test_kv_bytes_gqa() -> None:
    c = cfg("llama-3-8b")  # 32 layers, 8 KV heads x 128
    assert 32 * c.kv_bytes_per_token_per_layer(2) == 2 * 32 * 8 * 128 * 2 == 131_072
    assert 32 * c.kv_bytes_per_token_per_layer(1) == 65_536  # fp8 KV halves it
    assert 32 * c.kv_bytes_per_token_per_layer(2, tp=2) == 65_536  # 4 heads per GPU
    # TP 16 > 8 KV heads: one (replicated) head per GPU, not half a head
    assert 32 * c.kv_bytes_per_token_per_layer(2, tp=16) == 2 * 32 * 1 * 128 * 2
    assert 28 * cfg("qwen2-7b").kv_bytes_per_token_per_layer(2) == 2 * 28 * 4 * 128 * 2


def test_kv_bytes_mla_not_split_by_tp() -> None:
    c = load_model_config(R1_CONFIG)
    per_layer = (512 + 64) * 2
    assert c.kv_bytes_per_token_per_layer(2) == per_layer
    assert c.kv_bytes_per_token_per_layer(2, tp=8) == per_layer
    assert 61 * c.kv_bytes_per_token_per_layer(2) == 70_272
    assert 61 * c.kv_bytes_per_token_per_layer(1) == 35_136
    assert 27 * cfg("deepseek-v2-lite").kv_bytes_per_token_per_layer(2) == 27 * 576 * 2


def test_plan_kv_per_token_is_whole_model_at_kv_dtype() -> None:
    plan = plan_for_config_file(
        R1_CONFIG,
        gpu_memory_gib=96,
        gpus_per_node=8,
        max_nodes=2,
        max_model_len=2048,
        kv_cache_dtype="fp8",
    )
    assert plan.kv_cache_bytes_per_token == 35_136
    # per GPU: stage layers x 576 bytes (fp8), not divided by TP
    assert [s.kv_bytes_per_token for s in plan.stages] == [31 * 576, 30 * 576]


# ---------------------------------------------------------------------------------------
# Layout rules


def test_pp_partition_matches_vllm() -> None:
    assert pp_partition(61, 2) == [(0, 31), (31, 61)]
    assert pp_partition(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert pp_partition(80, 2) == [(0, 40), (40, 80)]


def test_tp_legality_heads_and_kv_heads() -> None:
    assert tp_problems(cfg("qwen2-7b"), 8) == ["num_attention_heads 28 is not divisible by TP 8"]
    assert tp_problems(cfg("qwen2-7b"), 4) == []
    assert tp_problems(cfg("llama-3-8b"), 16) == []  # 16 is a multiple of 8 KV heads
    odd = parse_model_config(
        {**raw("llama-3-8b"), "num_attention_heads": 24, "num_key_value_heads": 6}
    )
    assert tp_problems(odd, 4) == ["num_key_value_heads 6 is not divisible by TP 4"]
    few_kv = parse_model_config(
        {**raw("llama-3-8b"), "num_attention_heads": 48, "num_key_value_heads": 8}
    )
    assert "not a multiple of num_key_value_heads 8" in tp_problems(few_kv, 12)[0]


def test_tp_legality_fp8_block() -> None:
    r1 = load_model_config(R1_CONFIG)
    assert tp_problems(r1, 8) == [] and tp_problems(r1, 16) == []
    problems = tp_problems(r1, 32)
    assert (
        "moe_intermediate_size 2048 / TP 32 = 64 is not a multiple of the FP8 block 128"
        in " ".join(problems)
    )
    assert any(p.startswith("intermediate_size 18432 / TP 32 = 576") for p in problems)


def test_tp_legality_awq_group() -> None:
    qc = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}
    # Qwen2.5-72B's intermediate 29568 / 8 = 3696 is not a multiple of 128: the published
    # AWQ checkpoint pads intermediate_size to 29696 for exactly this reason.
    unpadded = parse_model_config({**raw("qwen2.5-72b"), "quantization_config": qc})
    assert (
        "intermediate_size 29568 / TP 8 = 3696 is not a multiple of the AWQ group_size 128"
        in tp_problems(unpadded, 8)
    )
    padded = parse_model_config(
        {**raw("qwen2.5-72b"), "intermediate_size": 29696, "quantization_config": qc}
    )
    assert tp_problems(padded, 8) == []


# ---------------------------------------------------------------------------------------
# Plans: fit, no fit, auto and explicit layouts


def test_fit_by_hand_llama_3_8b_on_one_80gib_gpu() -> None:
    plan = make_plan(
        cfg("llama-3-8b"), gpu_memory_gib=80, gpus_per_node=1, max_model_len=8192, max_num_seqs=16
    )
    budget = int(80 * 0.99 * 0.9 * GIB)
    weights = 16_060_522_496  # bf16, vocab 128256 is already a multiple of 64
    kv_cache = budget - weights - 5 * GIB
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.nodes) == (1, 1, 1)
    assert plan.stages[0].weights_bytes == weights
    assert plan.kv_cache_tokens == kv_cache // 131_072
    assert plan.max_concurrency == round(plan.kv_cache_tokens / 8192, 2)
    assert plan.stages[0].kv_needed_bytes == 16 * 8192 * 131_072


def test_no_fit_names_the_numbers_and_the_fix() -> None:
    with pytest.raises(PlanError) as err:
        make_plan(cfg("llama-3-8b"), gpu_memory_gib=24, gpus_per_node=1, max_model_len=2048)
    msg = str(err.value)
    assert "does not fit on 1 node(s)" in msg
    assert "14.96 GiB weights" in msg and "5.00 GiB reserve" in msg
    assert "64.00 GiB KV cache for max_num_seqs 256 x max_model_len 2048" in msg
    assert "lower max_num_seqs to" in msg
    assert err.value.field is None


def test_fp8_kv_cache_doubles_tokens() -> None:
    kw: dict[str, Any] = {
        "gpu_memory_gib": 24,
        "gpus_per_node": 1,
        "max_model_len": 2048,
        "max_num_seqs": 4,
    }
    auto = make_plan(cfg("llama-3-8b"), **kw)
    fp8 = make_plan(cfg("llama-3-8b"), kv_cache_dtype="fp8", **kw)
    assert fp8.kv_cache_bytes_per_token * 2 == auto.kv_cache_bytes_per_token
    assert abs(fp8.kv_cache_tokens - 2 * auto.kv_cache_tokens) <= 1


def test_auto_layout_uses_largest_legal_tp_and_pp_inside_the_node() -> None:
    plan = make_plan(cfg("qwen2-7b"), gpu_memory_gib=80, gpus_per_node=8, max_model_len=4096)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.nodes) == (4, 2, 1)
    assert any("TP 8 (all GPUs of a node) is not allowed" in n for n in plan.notes)


def test_auto_layout_fewest_nodes() -> None:
    kw: dict[str, Any] = {
        "gpu_memory_gib": 80,
        "gpus_per_node": 8,
        "max_nodes": 4,
        "max_model_len": 8192,
    }
    plan = make_plan(cfg("llama-3-70b"), max_num_seqs=64, **kw)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.nodes) == (8, 1, 1)
    # 256 x 8192 tokens x 40 KiB per token and GPU do not fit one node: PP across two
    full = make_plan(cfg("llama-3-70b"), **kw)
    assert (full.tensor_parallel_size, full.pipeline_parallel_size, full.nodes) == (8, 2, 2)
    small = make_plan(
        cfg("llama-3-70b"),
        gpu_memory_gib=24,
        gpus_per_node=8,
        max_nodes=4,
        max_model_len=4096,
        max_num_seqs=32,
    )
    assert small.nodes > 1 and small.tensor_parallel_size == 8
    assert small.pipeline_parallel_size == small.nodes


def test_explicit_layout_honoured() -> None:
    plan = make_plan(
        cfg("llama-3-70b"),
        gpu_memory_gib=80,
        gpus_per_node=8,
        max_nodes=2,
        max_model_len=4096,
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
    )
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.nodes) == (4, 2, 1)
    two = make_plan(
        cfg("llama-3-8b"),
        gpu_memory_gib=80,
        gpus_per_node=8,
        max_model_len=4096,
        max_num_seqs=32,
        tensor_parallel_size=2,
        pipeline_parallel_size=1,
    )
    assert two.gpus_used == 2 and any("uses 2 of the node's 8 GPUs" in n for n in two.notes)
    tp_only = make_plan(
        cfg("llama-3-70b"),
        gpu_memory_gib=80,
        gpus_per_node=8,
        max_nodes=2,
        max_model_len=4096,
        tensor_parallel_size=4,
    )
    assert (tp_only.tensor_parallel_size, tp_only.pipeline_parallel_size) == (4, 2)
    pp_only = make_plan(
        cfg("llama-3-70b"),
        gpu_memory_gib=80,
        gpus_per_node=8,
        max_nodes=2,
        max_model_len=4096,
        pipeline_parallel_size=2,
    )
    assert (pp_only.tensor_parallel_size, pp_only.pipeline_parallel_size, pp_only.nodes) == (
        4,
        2,
        1,
    )


@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        (
            {"tensor_parallel_size": 8},
            "tensor_parallel_size",
            "num_attention_heads 28 is not divisible by TP 8",
        ),
        (
            {"tensor_parallel_size": 4, "pipeline_parallel_size": 3},
            "tensor_parallel_size",
            "not a whole number of 8-GPU nodes",
        ),
        (
            {"tensor_parallel_size": 4, "pipeline_parallel_size": 4},
            "tensor_parallel_size",
            "needs 2 nodes of 8 GPUs, but only 1 host(s)",
        ),
        ({"pipeline_parallel_size": 40}, "pipeline_parallel_size", "exceeds num_hidden_layers 28"),
        ({"max_model_len": 200_000}, "max_model_len", "exceeds the model's context of 131072"),
    ],
)
def test_explicit_layout_refused_with_reason(kwargs: dict[str, Any], field: str, text: str) -> None:
    base: dict[str, Any] = {"gpu_memory_gib": 80, "gpus_per_node": 8, "max_model_len": 4096}
    with pytest.raises(PlanError) as err:
        make_plan(cfg("qwen2-7b"), **{**base, **kwargs})
    assert err.value.field == field
    assert text in str(err.value)


def test_refusal_lists_legal_tp_sizes() -> None:
    with pytest.raises(PlanError) as err:
        make_plan(
            cfg("qwen2-7b"),
            gpu_memory_gib=80,
            gpus_per_node=8,
            max_model_len=4096,
            tensor_parallel_size=8,
        )
    assert "legal sizes dividing 8 GPUs per node: [1, 2, 4]" in str(err.value)


def test_default_max_model_len_is_the_model_context() -> None:
    plan = make_plan(cfg("llama-3-8b"), gpu_memory_gib=80, gpus_per_node=1, max_num_seqs=4)
    assert plan.max_model_len == 8192
    # R1 yarn: original_max_position_embeddings 4096 x factor 40
    assert load_model_config(R1_CONFIG).max_position_embeddings == 163_840


# ---------------------------------------------------------------------------------------
# The manual's example: DeepSeek-R1 FP8 on 2 x 8 x 96 GB H20, and real vLLM figures


def r1_plan(**kw: Any) -> Any:
    args: dict[str, Any] = {
        "gpu_memory_gib": 96,
        "gpus_per_node": 8,
        "max_nodes": 2,
        "max_model_len": 2048,
    }
    return plan_for_config_file(R1_CONFIG, **{**args, **kw})


def test_manual_example_r1_on_two_h20_nodes() -> None:
    plan = r1_plan()
    assert abs(plan.seed_estimate_gb - 805) < 1  # 671e9 x 1 byte / 1e9 x 1.2
    assert plan.seed_nodes == 2
    assert (plan.nodes, plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 8, 2)
    assert plan.checkpoint_bytes == R1_TOTAL_SIZE  # read from models/deepseek-r1's index
    assert "index" in plan.weight_bytes_source
    assert all(s.fits for s in plan.stages)
    assert plan.kv_cache_tokens >= 256 * 2048


def test_r1_does_not_fit_one_h20_node() -> None:
    with pytest.raises(PlanError) as err:
        r1_plan(max_nodes=1)
    assert "79.29 GiB weights" in str(err.value)
    assert "The weights alone do not fit" in str(err.value)


def test_r1_weights_per_gpu_against_real_vllm_figures() -> None:
    # vllm-project/vllm#13074: R1 at TP8 x PP2 logged "model weights take 39.66GiB".
    plan = r1_plan()
    per_stage = [s.weights_bytes / GIB for s in plan.stages]
    mean = sum(per_stage) / len(per_stage)
    assert abs(mean - 39.66) / 39.66 < 0.01
    # The fullest stage (the last: lm_head) is planned 3% above that figure: conservative.
    assert 0 < max(per_stage) - 39.66 < 0.04 * 39.66
    # Single node TP8: HabanaAI/vllm-fork#809 logged 79.41 GiB per device.
    single = build_inventory(load_model_config(R1_CONFIG))
    one_node = single.gpu_bytes(load_model_config(R1_CONFIG).quantization, 8, 1, 0, 61) / GIB
    assert abs(one_node - 79.41) / 79.41 < 0.01


def test_r1_kv_tokens_by_hand() -> None:
    plan = r1_plan()
    budget = int(96 * USABLE_FRACTION * 0.9 * GIB)
    tokens = []
    for s, layers in zip(plan.stages, (31, 30), strict=True):
        assert s.kv_bytes_per_token == layers * 576 * 2
        tokens.append((budget - s.weights_bytes - 8 * GIB) // s.kv_bytes_per_token)
    assert plan.kv_cache_tokens == min(tokens)
    assert plan.max_concurrency == round(min(tokens) / 2048, 2)


def test_weights_bytes_override_beats_index() -> None:
    plan = r1_plan(weights_bytes=2 * R1_TOTAL_SIZE, max_nodes=4)
    assert (plan.nodes, plan.pipeline_parallel_size) == (3, 3)  # doubled weights need a third node
    assert plan.weight_bytes_source == "weights_bytes"
    assert any("differs from the config.json estimate" in n for n in plan.notes)
    base = r1_plan()
    assert math.isclose(plan.weight_bytes, 2 * base.weight_bytes, rel_tol=1e-6)


def test_plan_to_dict_and_engine_args() -> None:
    plan = r1_plan()
    d = json.loads(json.dumps(plan.to_dict()))
    for key in (
        "parameters",
        "weight_bytes",
        "kv_cache_bytes_per_token",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "nodes",
        "kv_cache_tokens",
        "max_concurrency",
        "seed_estimate_gb",
        "seed_nodes",
        "per_gpu",
        "ready_timeout_s",
    ):
        assert key in d
    assert len(d["per_gpu"]) == 16
    assert set(d["per_gpu"][0]) >= {
        "weights_gib",
        "reserve_gib",
        "kv_gib",
        "budget_gib",
        "free_gib",
    }
    g = d["per_gpu"][15]
    assert (g["node"], g["gpu"], g["stage"]) == (1, 7, 1)
    assert (
        abs(g["weights_gib"] + g["reserve_gib"] + g["kv_gib"] + g["free_gib"] - g["budget_gib"])
        < 0.05
    )
    assert plan.engine_args()[:4] == [
        "--tensor-parallel-size",
        "8",
        "--pipeline-parallel-size",
        "2",
    ]
    # 600 s + 2 s per GiB on the fullest node (8 x 40.88 GiB), rounded up to 30 s
    assert plan.ready_timeout_s == 1260
    with pytest.raises(AttributeError):
        plan.nodes = 3  # type: ignore[misc]  # frozen


# ---------------------------------------------------------------------------------------
# Unknown architectures and unmodelled quantization


GEMMA2 = {
    "architectures": ["Gemma2ForCausalLM"],
    "model_type": "gemma2",
    "hidden_size": 3584,
    "num_hidden_layers": 42,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "max_position_embeddings": 8192,
    "vocab_size": 256000,
}


def test_unknown_architecture_needs_weights_bytes() -> None:
    model = parse_model_config(GEMMA2)
    with pytest.raises(PlanError) as err:
        make_plan(model, gpu_memory_gib=80, gpus_per_node=1, max_num_seqs=8)
    assert err.value.field == "weights_bytes"
    assert "Gemma2ForCausalLM" in str(err.value) and "not modelled" in str(err.value)
    plan = make_plan(
        model, gpu_memory_gib=80, gpus_per_node=1, max_num_seqs=8, checkpoint_bytes=18_000_000_000
    )
    assert plan.parameters is None and plan.weight_bytes == 18_000_000_000
    assert plan.kv_cache_bytes_per_token == 2 * 42 * 8 * 256 * 2


def test_unknown_architecture_without_attention_shape_is_an_error(tmp_path: Path) -> None:
    broken = copy.deepcopy(GEMMA2)
    del broken["num_attention_heads"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(PlanError) as err:
        plan_for_config_file(path, weights_bytes=10**10, gpu_memory_gib=80, gpus_per_node=1)
    assert err.value.field == "config_file"
    assert "num_attention_heads" in str(err.value)


def test_unmodelled_quantization_needs_a_size() -> None:
    bnb = parse_model_config(
        {**raw("llama-3-8b"), "quantization_config": {"quant_method": "bitsandbytes"}}
    )
    with pytest.raises(PlanError, match="bitsandbytes"):
        make_plan(bnb, gpu_memory_gib=80, gpus_per_node=1, max_num_seqs=4)
    plan = make_plan(
        bnb, gpu_memory_gib=80, gpus_per_node=1, max_num_seqs=4, checkpoint_bytes=6 * 10**9
    )
    assert abs(plan.weight_bytes - 6 * 10**9) < 10**6


def test_missing_required_field_names_it() -> None:
    broken = raw("deepseek-v2-lite")
    del broken["kv_lora_rank"]
    with pytest.raises(ModelConfigError, match="kv_lora_rank"):
        parse_model_config(broken)


# ---------------------------------------------------------------------------------------
# From settings


def test_plan_from_settings_h20(tmp_path: Path) -> None:
    raw_settings = valid_raw()
    raw_settings["model"]["config_file"] = str(R1_CONFIG)
    raw_settings["hosts"].append(
        {
            "name": "h20-3",
            "address": "192.168.0.4",
            "gpus": {"count": 8, "model": "NVIDIA H20", "memory_gib": 96},
        }
    )
    settings = load_settings(raw_settings, {"apiKey": True})
    plan = plan_from_settings(settings)
    assert (plan.nodes, plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 8, 2)
    assert any("not serving: h20-3" in n for n in plan.notes)

    raw_settings["serving"]["tensor_parallel_size"] = 32
    raw_settings["serving"]["pipeline_parallel_size"] = 1
    raw_settings["hosts"].append(
        {
            "name": "h20-4",
            "address": "192.168.0.5",
            "gpus": {"count": 8, "model": "NVIDIA H20", "memory_gib": 96},
        }
    )
    with pytest.raises(PlanError) as err:
        plan_from_settings(load_settings(raw_settings, {"apiKey": True}))
    assert str(err.value).startswith(
        "serving.tensor_parallel_size: tensor_parallel_size 32 is not allowed"
    )
    assert "FP8 block 128" in str(err.value)


def test_plan_from_settings_relative_config_and_missing_file(tmp_path: Path) -> None:
    raw_settings = valid_raw()
    raw_settings["model"]["config_file"] = "models/deepseek-r1/config.json"
    settings = load_settings(raw_settings, {"apiKey": True})
    assert plan_from_settings(settings, base_dir=REPO).nodes == 2
    with pytest.raises(PlanError) as err:
        plan_from_settings(settings, base_dir=tmp_path)
    assert str(err.value).startswith("model.config_file: cannot read")


# ---------------------------------------------------------------------------------------
# Expert parallelism (--enable-expert-parallel): whole experts over the TP group.


def test_r1_expert_parallel_places_whole_experts_over_each_tp_group() -> None:
    model = load_model_config(R1_CONFIG)
    inv = build_inventory(model)
    experts = next(t for t in inv.layers[-1] if t.name == "experts.gate_proj")
    assert experts.routed_expert and experts.copies == 256
    # Without EP every GPU holds 1/8 of each of the 256 experts; with EP 32 whole ones.
    assert (experts.shape_on_gpu(8), experts.copies_on_gpu(8)) == ((256, 7168), 256)
    assert (experts.shape_on_gpu(8, ep=True), experts.copies_on_gpu(8, ep=True)) == (
        (2048, 7168),
        32,
    )
    shared = next(t for t in inv.layers[-1] if t.name == "shared_experts.gate_proj")
    assert shared.shape_on_gpu(8, ep=True) == (256, 7168)  # still TP-sharded
    # 256 experts divide the group of 8 and the FP8 blocks (128) divide both splits, so the
    # bytes per GPU are the same either way; the plan says EP and vLLM gets the flag.
    plan, ep_plan = r1_plan(), r1_plan(expert_parallel=True)
    assert [s.weights_bytes for s in ep_plan.stages] == [s.weights_bytes for s in plan.stages]
    assert (ep_plan.tensor_parallel_size, ep_plan.pipeline_parallel_size) == (8, 2)
    assert ep_plan.to_dict()["expert_parallel"] is True
    assert "expert parallel: whole experts over each TP group of 8" in ep_plan.table()


def test_mixtral_expert_parallel_needs_the_experts_to_divide_the_group() -> None:
    """8 experts: TP 16 is legal when each expert is split 16 ways (14336 / 16), but not when
    experts are placed whole: 8 cannot be shared by 16 GPUs."""
    model = cfg("mixtral-8x7b")
    assert tp_problems(model, 16) == []
    assert tp_problems(model, 16, ep=True) == [
        "num_local_experts 8 is not divisible by the expert-parallel group of TP 16 "
        "(each GPU holds whole experts)"
    ]
    common: dict[str, Any] = {"gpu_memory_gib": 80, "gpus_per_node": 8, "max_nodes": 2}
    common |= {"max_model_len": 4096, "tensor_parallel_size": 16}
    assert make_plan(model, **common).tensor_parallel_size == 16
    with pytest.raises(PlanError, match="num_local_experts 8 is not divisible") as err:
        make_plan(model, expert_parallel=True, **common)
    assert err.value.field == "tensor_parallel_size"
    # TP 8: one whole expert per GPU, the same bytes as an eighth of each of the eight.
    common["tensor_parallel_size"] = 8
    inv = build_inventory(model)
    split = inv.gpu_bytes(model.quantization, 8, 1, 0, model.num_layers)
    whole = inv.gpu_bytes(model.quantization, 8, 1, 0, model.num_layers, ep=True)
    assert split == whole
    assert make_plan(model, expert_parallel=True, **common).expert_parallel is True


def test_expert_parallel_on_a_dense_model_is_refused_by_its_key() -> None:
    with pytest.raises(PlanError) as err:
        make_plan(cfg("llama-3-8b"), gpu_memory_gib=80, gpus_per_node=1, expert_parallel=True)
    assert err.value.field == "expert_parallel"
    assert "LlamaForCausalLM has no experts" in str(err.value)
