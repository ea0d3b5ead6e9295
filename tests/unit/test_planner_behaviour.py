"""The planner's outputs checked against what they claim, found by `make mutation`:

- the engine flags of a plan are accepted by vLLM's command line (the lab stand-in carries
  vLLM's parser) and give the engine the plan's numbers;
- a "does not fit" message adds up, names the fullest stage, and its suggested max_num_seqs
  is the largest that fits (re-planning with it succeeds, with one more fails);
- the text table (the CLI's default output) reports the same numbers as the plan itself;
- compressed-tensors checkpoints (llm-compressor's format) are read as the scheme they state.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from components.plan.model_config import (
    ModelConfig,
    Quantization,
    load_model_config,
    parse_model_config,
)
from components.plan.model_shapes import build_inventory, tp_problems
from components.plan.sizing import (
    GIB,
    USABLE_FRACTION,
    Plan,
    PlanError,
    make_plan,
    plan_for_config_file,
    plan_from_settings,
)
from components.settings import load_settings
from tests.unit.test_settings import ALL_SECRETS, valid_raw

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures" / "model_configs"
R1_CONFIG = REPO / "models" / "deepseek-r1" / "config.json"
STANDIN_ARGS = REPO / "lab" / "engine" / "standin" / "vllm" / "args.py"


def cfg(name: str) -> ModelConfig:
    return load_model_config(FIXTURES / f"{name}.json")


def _standin_args() -> ModuleType:
    spec = importlib.util.spec_from_file_location("standin_vllm_args", STANDIN_ARGS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------
# Engine flags


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_engine_args_parse_as_vllm_flags_with_the_plans_numbers(kv_cache_dtype: str) -> None:
    plan = make_plan(
        cfg("qwen2-7b"),
        gpu_memory_gib=80,
        gpus_per_node=8,
        max_model_len=4096,
        max_num_seqs=48,
        gpu_memory_utilization=0.85,
        kv_cache_dtype=kv_cache_dtype,
    )
    args = _standin_args()
    parser = args.FlexibleArgumentParser()
    args.add_engine_args(parser)
    # parse_args: an unknown or misspelt flag is an error, as in vLLM
    ns = parser.parse_args(plan.engine_args())
    assert ns.tensor_parallel_size == plan.tensor_parallel_size == 4
    assert ns.pipeline_parallel_size == plan.pipeline_parallel_size == 2
    assert ns.max_model_len == 4096
    assert ns.max_num_seqs == 48
    assert ns.gpu_memory_utilization == 0.85
    assert ns.kv_cache_dtype == kv_cache_dtype


def test_engine_args_are_refused_by_vllms_parser_when_misspelt() -> None:
    """The check above can fail: the parser refuses a flag it does not know."""
    args = _standin_args()
    parser = args.FlexibleArgumentParser()
    args.add_engine_args(parser)
    parser.error = lambda message: (_ for _ in ()).throw(ValueError(message))  # type: ignore[method-assign]
    with pytest.raises(ValueError):
        parser.parse_args(["--MAX-NUM-SEQS", "4"])


# ---------------------------------------------------------------------------------------
# "Does not fit": the numbers add up and the suggestion works


_NUM = r"([\d,]+(?:\.\d+)?)"


def _numbers(msg: str) -> dict[str, float]:
    m = re.search(
        rf"stage (\d+), layers (\d+)-(\d+)\) needs {_NUM} GiB weights \+ {_NUM} GiB reserve \+ "
        rf"{_NUM} GiB KV cache for max_num_seqs (\d+) x max_model_len (\d+) = {_NUM} GiB, but "
        rf"has {_NUM} GiB x {_NUM} usable x {_NUM} gpu_memory_utilization = {_NUM} GiB\.",
        msg,
    )
    assert m, msg
    keys = [
        "stage",
        "first",
        "last",
        "weights",
        "reserve",
        "kv",
        "seqs",
        "len",
        "need",
        "gpu_gib",
        "usable",
        "util",
        "budget",
    ]
    return {k: float(v.replace(",", "")) for k, v in zip(keys, m.groups(), strict=True)}


def _fits(model: ModelConfig, **kw: Any) -> Plan | None:
    try:
        return make_plan(model, **kw)
    except PlanError:
        return None


def test_kv_shortfall_message_adds_up_and_its_max_num_seqs_is_the_largest_that_fits() -> None:
    kw: dict[str, Any] = {"gpu_memory_gib": 24, "gpus_per_node": 1, "max_model_len": 2048}
    model = cfg("llama-3-8b")
    with pytest.raises(PlanError) as err:
        make_plan(model, **kw)
    msg = str(err.value)
    n = _numbers(msg)
    # the same GPU with one sequence: same weights, reserve and budget
    one = make_plan(model, max_num_seqs=1, **kw).stages[0]
    assert (n["stage"], n["first"], n["last"]) == (0, 0, 31)
    assert n["weights"] == round(one.weights_bytes / GIB, 2)
    assert n["reserve"] == round(one.reserve_bytes / GIB, 2)
    assert n["kv"] == round(256 * 2048 * one.kv_bytes_per_token / GIB, 2)
    assert (n["seqs"], n["len"]) == (256, 2048)
    assert abs(n["need"] - (n["weights"] + n["reserve"] + n["kv"])) <= 0.02
    assert (n["gpu_gib"], n["usable"], n["util"]) == (24, USABLE_FRACTION, 0.9)
    assert n["budget"] == round(one.budget_bytes / GIB, 2)
    tokens = int(re.search(r"would hold ([\d,]+) tokens", msg).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert tokens == one.kv_tokens
    # the fix it names, taken literally, works; one sequence more does not
    seqs = int(re.search(r"lower max_num_seqs to (\d+), lower max_model_len, use ", msg).group(1))  # type: ignore[union-attr]
    assert "use kv_cache_dtype fp8, or add nodes." in msg
    assert _fits(model, max_num_seqs=seqs, **kw) is not None
    assert _fits(model, max_num_seqs=seqs + 1, **kw) is None
    assert "The weights alone do not fit" not in msg


def test_shortfall_that_leaves_room_for_exactly_one_sequence_suggests_one() -> None:
    kw: dict[str, Any] = {"gpu_memory_gib": 24, "gpus_per_node": 1, "max_model_len": 8192}
    model = cfg("llama-3-8b")
    with pytest.raises(PlanError) as err:
        make_plan(model, **kw)
    assert "lower max_num_seqs to 1, lower max_model_len" in str(err.value)
    assert _fits(model, max_num_seqs=1, **kw) is not None


def test_shortfall_names_the_fullest_stage_of_a_pipeline() -> None:
    kw: dict[str, Any] = {
        "gpu_memory_gib": 24,
        "gpus_per_node": 2,
        "max_model_len": 8192,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 2,
    }
    model = cfg("llama-3-8b")
    with pytest.raises(PlanError) as err:
        make_plan(model, **kw)
    n = _numbers(str(err.value))
    stages = make_plan(model, max_num_seqs=1, **kw).stages
    fullest = max(stages, key=lambda s: s.weights_bytes + s.reserve_bytes)
    assert fullest.stage == 1  # the last stage also holds lm_head
    assert (n["stage"], n["first"], n["last"]) == (1, fullest.layer_start, fullest.layer_end - 1)
    assert n["weights"] == round(fullest.weights_bytes / GIB, 2)
    # the suggestion is judged by the fullest stage, and works
    seqs = int(re.search(r"lower max_num_seqs to (\d+)", str(err.value)).group(1))  # type: ignore[union-attr]
    assert _fits(model, max_num_seqs=seqs, **kw) is not None
    assert _fits(model, max_num_seqs=seqs + 1, **kw) is None


def test_shortfall_when_not_one_sequence_fits_suggests_a_shorter_context() -> None:
    kw: dict[str, Any] = {"gpu_memory_gib": 23, "gpus_per_node": 1, "max_model_len": 8192}
    model = cfg("llama-3-8b")
    with pytest.raises(PlanError) as err:
        make_plan(model, **kw)
    msg = str(err.value)
    assert "not one max_model_len sequence: lower max_model_len, raise " in msg
    assert "gpu_memory_utilization, or add nodes." in msg
    assert "lower max_num_seqs" not in msg
    tokens = int(re.search(r"would hold ([\d,]+) tokens", msg).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert 0 < tokens < 8192
    # the context it can hold does fit, one sequence at a time
    one = {**kw, "max_num_seqs": 1}
    assert _fits(model, **{**one, "max_model_len": tokens}) is not None
    assert _fits(model, **{**one, "max_model_len": tokens + 16}) is None


def test_shortfall_of_the_weights_alone_says_so() -> None:
    with pytest.raises(PlanError) as err:
        make_plan(load_model_config(R1_CONFIG), gpu_memory_gib=96, gpus_per_node=8)
    msg = str(err.value)
    assert msg.endswith(
        " The weights alone do not fit: add nodes or use a smaller/quantized checkpoint."
    )
    n = _numbers(msg)
    assert n["weights"] + n["reserve"] > n["budget"]


# ---------------------------------------------------------------------------------------
# The text table reports the plan's own numbers


def _table_rows(text: str) -> dict[str, str]:
    rows, starts = {}, set()
    for line in text.split("\n\n")[0].splitlines():
        m = re.fullmatch(r"(\S.*?)( {2,})(\S.*)", line)
        assert m, line
        rows[m.group(1)] = m.group(3)
        starts.add(m.start(3))
    assert len(starts) == 1, "values start in one column"
    return rows


def _gib(x: int) -> str:
    return f"{x / GIB:.2f}"


def test_table_reports_the_plans_numbers_r1_two_nodes_expert_parallel() -> None:
    plan = make_plan(
        load_model_config(R1_CONFIG),
        gpu_memory_gib=96,
        gpus_per_node=8,
        max_nodes=2,
        max_model_len=2048,
        expert_parallel=True,
        checkpoint_bytes=688_586_727_753,
        checkpoint_source="model.safetensors.index.json metadata.total_size",
    )
    text = plan.table()
    rows = _table_rows(text)
    assert plan.parameters and plan.parameters_checkpoint
    assert list(rows) == [
        "Model",
        "Quantization",
        "Parameters",
        "Weights",
        "KV cache / token",
        "Layout",
        "GPU budget",
        "Seed estimate",
    ]
    assert rows["Model"] == plan.model_summary
    assert rows["Quantization"] == plan.quantization == "fp8 (block 128x128 scales)"
    assert rows["Parameters"] == (
        f"{plan.parameters / 1e9:.2f} B loaded ({(plan.parameters_checkpoint or 0) / 1e9:.2f} B in "
        "the checkpoint)"
    )
    assert rows["Weights"] == (
        f"{_gib(plan.weight_bytes)} GiB loaded, checkpoint 688.59 GB (size from "
        "model.safetensors.index.json metadata.total_size)"
    )
    assert rows["KV cache / token"] == "70,272 B whole model (kv_cache_dtype auto)"
    assert rows["Layout"].startswith("TP 8 x PP 2 on 2 node(s) x 8 GPUs (")
    assert rows["Layout"].endswith("); expert parallel: whole experts over each TP group of 8")
    assert rows["GPU budget"] == (
        f"96 GiB x {USABLE_FRACTION} usable x 0.9 utilization = "
        f"{_gib(plan.stages[0].budget_bytes)} GiB"
    )
    assert rows["Seed estimate"] == (
        f"{plan.seed_estimate_gb:.1f} GB (params x bytes/param / 1e9 x 1.2) -> "
        f"{plan.seed_nodes} node(s) of 8 x 96 GB"
    )
    lines = text.splitlines()
    header = lines.index("Per GPU (GiB, every GPU of a stage holds the same):")
    assert lines[header + 1].split() == [
        "stage",
        "layers",
        "GPUs",
        "(node:gpu)",
        "weights",
        "reserve",
        "kv_need",
        "budget",
        "free",
        "kv_cache",
        "kv_tokens",
    ]
    stage_rows = lines[header + 2 : header + 2 + len(plan.stages)]
    for line, s, node in zip(stage_rows, plan.stages, (0, 1), strict=True):
        cells = line.split()
        assert cells[0] == str(s.stage)
        assert cells[1] == f"{s.layer_start}-{s.layer_end - 1}"
        assert cells[2] == f"{node}:0-{node}:7"
        assert cells[3:] == [
            _gib(s.weights_bytes),
            _gib(s.reserve_bytes),
            _gib(s.kv_needed_bytes),
            _gib(s.budget_bytes),
            _gib(s.free_bytes),
            _gib(s.kv_cache_bytes),
            f"{s.kv_tokens:,}",
        ]
    tail = lines[header + 2 + len(plan.stages) :]
    assert tail[0] == ""
    assert tail[1] == (
        f"KV cache tokens  {plan.kv_cache_tokens:,} (max_num_seqs 256 x max_model_len 2048 = "
        "524,288 needed)"
    )
    assert tail[2] == f"Max concurrency  {plan.max_concurrency:g} x 2048-token requests"
    assert tail[3] == f"Ready timeout    {plan.ready_timeout_s} s (suggested)"
    assert tail[4:] == [f"Note: {note}" for note in plan.notes]
    assert plan.notes


def test_table_of_a_dense_model_without_checkpoint_size() -> None:
    plan = make_plan(
        cfg("llama-3-8b"), gpu_memory_gib=80, gpus_per_node=1, max_model_len=2048, max_num_seqs=64
    )
    rows = _table_rows(plan.table())
    assert plan.parameters
    assert rows["Parameters"] == f"{plan.parameters / 1e9:.2f} B loaded"
    assert rows["Weights"] == f"{_gib(plan.weight_bytes)} GiB loaded (size from config.json)"
    assert rows["Layout"] == (
        "TP 1 x PP 1 on 1 node(s) x 1 GPUs (fewest nodes that fit; TP 1 inside nodes, PP 1)"
    )


def test_table_of_an_unmodelled_architecture_says_so() -> None:
    raw = _raw("llama-3-8b")
    raw["architectures"] = ["SomethingNewForCausalLM"]
    raw["model_type"] = "something_new"
    model = parse_model_config(raw)
    plan = make_plan(
        model,
        gpu_memory_gib=80,
        gpus_per_node=1,
        max_model_len=2048,
        max_num_seqs=8,
        checkpoint_bytes=16 * 10**9,
        checkpoint_source="serving.weights_bytes",
    )
    rows = _table_rows(plan.table())
    assert rows["Parameters"] == "unknown (architecture not modelled)"
    assert rows["Weights"].endswith(", checkpoint 16.00 GB (size from serving.weights_bytes)")


# ---------------------------------------------------------------------------------------
# compressed-tensors (llm-compressor) checkpoints


def _raw(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def _ct(weights: dict[str, Any], **qc: Any) -> Quantization:
    raw = _raw("llama-3-8b")
    raw["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}},
        **qc,
    }
    return parse_model_config(raw).quantization


def test_compressed_tensors_fp8_block() -> None:
    q = _ct(
        {
            "num_bits": 8,
            "type": "float",
            "strategy": "block",
            "block_structure": [128, 64],
        }
    )
    assert (q.method, q.weight_bits, q.block, q.per_channel) == ("fp8", 8, (128, 64), False)
    assert q.source == "compressed-tensors"
    assert q.describe() == "fp8 (block 128x64 scales)"


@pytest.mark.parametrize(
    ("strategy", "per_channel"), [("channel", True), ("tensor", False), ("block", False)]
)
def test_compressed_tensors_fp8_channel_or_tensor(strategy: str, per_channel: bool) -> None:
    # "block" without a 2-number block_structure falls back to a scale per tensor/channel
    q = _ct({"num_bits": 8, "type": "float", "strategy": strategy, "block_structure": [128]})
    assert (q.method, q.weight_bits, q.block, q.per_channel) == ("fp8", 8, None, per_channel)
    assert q.source == "compressed-tensors"


@pytest.mark.parametrize(("strategy", "per_channel"), [("channel", True), ("tensor", False)])
def test_compressed_tensors_int8(strategy: str, per_channel: bool) -> None:
    q = _ct({"num_bits": 8, "type": "int", "strategy": strategy})
    assert (q.method, q.weight_bits, q.per_channel) == ("int8", 8, per_channel)
    assert q.source == "compressed-tensors"


@pytest.mark.parametrize(
    ("weights", "group", "zeros"),
    [
        ({"group_size": 128, "symmetric": True}, 128, False),
        ({"group_size": 64, "symmetric": False}, 64, True),
        ({"group_size": 1}, 1, False),  # the smallest group: a scale per weight
        ({"group_size": 0}, None, False),
        ({"group_size": "128"}, None, False),
        ({}, None, False),
    ],
)
def test_compressed_tensors_int4(weights: dict[str, Any], group: int | None, zeros: bool) -> None:
    q = _ct({"num_bits": 4, "type": "int", "strategy": "group", **weights})
    assert (q.method, q.weight_bits, q.group_size, q.has_zeros) == ("gptq", 4, group, zeros)
    assert q.has_g_idx is False
    assert q.source == "compressed-tensors"


def test_compressed_tensors_unmodelled_scheme_is_unknown_and_named() -> None:
    q = _ct({"num_bits": 4, "type": "float"})
    assert (q.method, q.weight_bits) == ("unknown", 16)
    assert q.source == "compressed-tensors float4"


def test_compressed_tensors_takes_the_first_group_with_weights() -> None:
    raw = _raw("llama-3-8b")
    raw["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "config_groups": {
            "no_weights": {"targets": ["Linear"], "input_activations": {"num_bits": 8}},
            "bad": "not a group",
            "w8": {"weights": {"num_bits": 8, "type": "int", "strategy": "channel"}},
            "w4": {"weights": {"num_bits": 4, "type": "int"}},
        },
    }
    assert parse_model_config(raw).quantization.method == "int8"
    raw["quantization_config"]["config_groups"] = ["not", "a", "mapping"]
    assert parse_model_config(raw).quantization.source == "compressed-tensors NoneNone"


def test_compressed_tensors_weights_shrink_the_plan() -> None:
    """An fp8 compressed-tensors checkpoint plans like the same model in fp8."""
    raw = _raw("llama-3-8b")
    kw: dict[str, Any] = {"gpu_memory_gib": 80, "gpus_per_node": 1, "max_model_len": 2048}
    dense = make_plan(parse_model_config(raw), max_num_seqs=64, **kw)
    raw["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "config_groups": {
            "g": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}
        },
    }
    fp8 = make_plan(parse_model_config(raw), max_num_seqs=64, **kw)
    assert fp8.weight_bytes < 0.6 * dense.weight_bytes
    assert fp8.quantization == "fp8 (per-channel scales)"


# ---------------------------------------------------------------------------------------
# Expert parallel refusals name the config key of the model family


@pytest.mark.parametrize(
    ("name", "key"), [("mixtral-8x7b", "num_local_experts"), ("qwen3-30b-a3b", "num_experts")]
)
def test_expert_parallel_refusal_names_the_family_key(name: str, key: str) -> None:
    model = cfg(name)
    assert model.num_experts
    tp = next(t for t in (3, 5, 6, 7, 9) if model.num_experts % t)
    problems = tp_problems(model, tp, ep=True)
    assert any(p.startswith(f"{key} {model.num_experts} is not divisible") for p in problems), (
        problems
    )


# ---------------------------------------------------------------------------------------
# Every planning key of the stack config reaches the plan


def test_every_planning_setting_reaches_the_plan() -> None:
    raw = valid_raw()
    raw["model"]["config_file"] = str(R1_CONFIG)
    raw["model"]["weights_bytes"] = 700 * 10**9
    raw["serving"] = {
        "max_model_len": 4096,
        "max_num_seqs": 32,
        "gpu_memory_utilization": 0.85,
        "kv_cache_dtype": "fp8",
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 2,
        "reserve_gib": 6,
        "expert_parallel": True,
    }
    plan = plan_from_settings(load_settings(raw, ALL_SECRETS))
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.nodes) == (8, 2, 2)
    assert (plan.max_model_len, plan.max_num_seqs) == (4096, 32)
    assert (plan.gpu_memory_utilization, plan.kv_cache_dtype) == (0.85, "fp8")
    assert plan.expert_parallel is True
    assert plan.checkpoint_bytes == 700 * 10**9
    assert plan.weight_bytes_source == "weights_bytes"
    assert {s.reserve_bytes for s in plan.stages} == {6 * GIB}
    assert {s.budget_bytes for s in plan.stages} == {int(96 * USABLE_FRACTION * 0.85 * GIB)}


def test_the_exported_plan_carries_the_plans_own_values() -> None:
    """to_dict is the `plan` stack output and the CLI's --json: every value is the plan's."""
    plan = make_plan(
        load_model_config(R1_CONFIG),
        gpu_memory_gib=96,
        gpus_per_node=8,
        max_nodes=3,
        max_model_len=2048,
        expert_parallel=True,
        checkpoint_bytes=688_586_727_753,
        checkpoint_source="index",
    )
    d = json.loads(json.dumps(plan.to_dict()))
    same = [
        "architecture",
        "family",
        "quantization",
        "parameters",
        "parameters_checkpoint",
        "weight_bytes",
        "checkpoint_bytes",
        "weight_bytes_source",
        "kv_cache_dtype",
        "kv_cache_bytes_per_token",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "nodes",
        "max_nodes",
        "gpus_per_node",
        "gpus_used",
        "gpu_memory_gib",
        "gpu_memory_utilization",
        "max_model_len",
        "max_num_seqs",
        "reserve_gib",
        "kv_cache_tokens",
        "max_concurrency",
        "seed_estimate_gb",
        "seed_nodes",
        "ready_timeout_s",
        "expert_parallel",
    ]
    for key in same:
        assert d[key] == getattr(plan, key), key
    assert d["model"] == plan.model_summary
    assert d["layout"] == plan.layout_reason
    assert d["notes"] == list(plan.notes) and d["notes"]
    assert d["gpu_memory_gib_effective"] == round(plan.gpu_memory_gib_effective, 2)
    assert (d["max_nodes"], d["nodes"], d["gpus_used"]) == (3, 2, 16)
    assert d["stages"] == [
        {
            "stage": s.stage,
            "layers": [s.layer_start, s.layer_end],
            "weights_gib": round(s.weights_bytes / GIB, 2),
            "kv_bytes_per_token": s.kv_bytes_per_token,
            "kv_tokens": s.kv_tokens,
        }
        for s in plan.stages
    ]
    assert len(d["per_gpu"]) == 16
    for g, row in zip(plan.per_gpu, d["per_gpu"], strict=True):
        s = g.stage
        assert row == {
            "node": g.node,
            "gpu": g.gpu,
            "stage": s.stage,
            "tp_rank": g.tp_rank,
            "weights_gib": round(s.weights_bytes / GIB, 2),
            "reserve_gib": round(s.reserve_bytes / GIB, 2),
            "kv_gib": round(s.kv_needed_bytes / GIB, 2),
            "free_gib": round(s.free_bytes / GIB, 2),
            "budget_gib": round(s.budget_bytes / GIB, 2),
            "kv_cache_gib": round(s.kv_cache_bytes / GIB, 2),
        }
    # GPU 8 is the first GPU of node 1, stage 1, TP rank 0; and fractions are kept
    assert (d["per_gpu"][8]["node"], d["per_gpu"][8]["gpu"], d["per_gpu"][8]["tp_rank"]) == (
        1,
        0,
        0,
    )
    assert d["per_gpu"][0]["weights_gib"] != int(d["per_gpu"][0]["weights_gib"])


def _r1_settings(**serving: Any) -> Any:
    raw = valid_raw()
    raw["model"]["config_file"] = str(R1_CONFIG)
    raw["serving"] = {"max_model_len": 2048, **serving}
    return raw


def test_a_plan_error_from_settings_names_the_key_or_says_plan() -> None:
    raw = _r1_settings(tensor_parallel_size=3)
    with pytest.raises(PlanError) as err:
        plan_from_settings(load_settings(raw, ALL_SECRETS))
    assert str(err.value).startswith("serving.tensor_parallel_size: ")
    assert err.value.field == "tensor_parallel_size"
    raw = _r1_settings(max_num_seqs=100_000)
    with pytest.raises(PlanError) as err:
        plan_from_settings(load_settings(raw, ALL_SECRETS))
    assert str(err.value).startswith("plan: does not fit on 2 node(s) of 8 GPUs")
    assert err.value.field is None


def test_hosts_the_plan_leaves_out_are_named_and_none_when_all_serve() -> None:
    raw = _r1_settings()
    for n in (3, 4):
        raw["hosts"].append(
            {
                "name": f"h20-{n}",
                "address": f"192.168.0.{n + 1}",
                "gpus": {"count": 8, "model": "NVIDIA H20", "memory_gib": 96},
            }
        )
    plan = plan_from_settings(load_settings(raw, ALL_SECRETS))
    assert plan.nodes == 2
    assert plan.notes[-1] == (
        "serving uses the first 2 of 4 hosts (fewest nodes that fit); not serving: h20-3, h20-4"
    )
    all_serve = plan_from_settings(load_settings(_r1_settings(), ALL_SECRETS))
    assert all_serve.nodes == 2
    assert not any("not serving" in n for n in all_serve.notes)


def test_a_relative_config_file_resolves_against_the_working_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = _r1_settings()
    raw["model"]["config_file"] = "models/deepseek-r1/config.json"
    monkeypatch.chdir(REPO)
    assert plan_from_settings(load_settings(raw, ALL_SECRETS)).nodes == 2


# ---------------------------------------------------------------------------------------
# Where the weight size comes from, and models the planner does not model


def test_weight_size_source_index_then_shapes(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"gpu_memory_gib": 96, "gpus_per_node": 8, "max_nodes": 2}
    r1 = plan_for_config_file(R1_CONFIG, max_model_len=2048, **kw)
    assert r1.weight_bytes_source == "model.safetensors.index.json metadata.total_size"
    assert r1.checkpoint_bytes == 688_586_727_753
    llama = plan_for_config_file(FIXTURES / "llama-3-8b.json", max_model_len=2048, **kw)
    assert (llama.weight_bytes_source, llama.checkpoint_bytes) == ("config.json shapes", None)
    # weights_bytes wins, and an index it makes unnecessary is not even read
    (tmp_path / "config.json").write_text((FIXTURES / "llama-3-8b.json").read_text())
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    given = plan_for_config_file(
        tmp_path / "config.json", weights_bytes=16 * 10**9, max_model_len=2048, **kw
    )
    assert (given.weight_bytes_source, given.checkpoint_bytes) == ("weights_bytes", 16 * 10**9)


def _unmodelled() -> ModelConfig:
    raw = _raw("llama-3-8b")
    raw["architectures"] = ["SomethingNewForCausalLM"]
    raw["model_type"] = "something_new"
    return parse_model_config(raw)


def test_an_unmodelled_architecture_needs_its_size_and_spreads_it_evenly() -> None:
    kw: dict[str, Any] = {"gpu_memory_gib": 80, "gpus_per_node": 4, "max_model_len": 2048}
    with pytest.raises(PlanError) as err:
        make_plan(_unmodelled(), **kw)
    assert err.value.field == "weights_bytes"
    assert str(err.value) == (
        "architecture SomethingNewForCausalLM (model_type 'something_new') is not modelled by "
        "the planner (llama, mistral, qwen2, qwen3, qwen3_moe, mixtral, deepseek_v2, "
        "deepseek_v3); give the checkpoint size as weights_bytes (safetensors "
        "metadata.total_size) to plan it anyway"
    )
    size = 16 * 10**9
    plan = make_plan(
        _unmodelled(),
        checkpoint_bytes=size,
        checkpoint_source="weights_bytes",
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
        max_num_seqs=8,
        **kw,
    )
    # 32 layers over 2 stages of 16, each stage's share over 2 TP ranks
    assert [s.weights_bytes for s in plan.stages] == [math.ceil(size * 16 / 32 / 2)] * 2
    assert plan.notes[0] == (
        "SomethingNewForCausalLM is not modelled: its 16.00 GB are spread evenly over layers "
        "and TP ranks, and pipeline-parallel support is unchecked"
    )
    uneven = make_plan(
        _unmodelled(),
        checkpoint_bytes=size,
        checkpoint_source="weights_bytes",
        tensor_parallel_size=1,
        pipeline_parallel_size=3,
        max_num_seqs=8,
        gpu_memory_gib=80,
        gpus_per_node=3,
        max_model_len=2048,
    )
    assert [s.weights_bytes for s in uneven.stages] == [
        math.ceil(size * s.layers / 32) for s in uneven.stages
    ]
    assert sorted({s.layers for s in uneven.stages}) == [10, 11]


def test_an_unmodelled_quantization_needs_the_checkpoint_size() -> None:
    raw = _raw("llama-3-8b")
    raw["quantization_config"] = {"quant_method": "bitsandbytes"}
    with pytest.raises(PlanError) as err:
        make_plan(parse_model_config(raw), gpu_memory_gib=80, gpus_per_node=1)
    assert err.value.field == "weights_bytes"
    assert str(err.value) == (
        "quantization 'bitsandbytes' is not modelled; give the checkpoint size as weights_bytes "
        "(or put model.safetensors.index.json next to config.json)"
    )


def test_tied_embeddings_share_one_matrix_only_when_one_stage_holds_both() -> None:
    """vLLM: with PP the last stage loads its own lm_head from the embedding weights."""
    untied_raw = _raw("llama-3-8b")
    tied_raw = {**untied_raw, "tie_word_embeddings": True}
    kw: dict[str, Any] = {"gpu_memory_gib": 80, "max_model_len": 2048, "max_num_seqs": 8}
    lm_head = 128_256 * 4096 * 2
    one = {**kw, "gpus_per_node": 1}
    untied = make_plan(parse_model_config(untied_raw), **one).stages[0].weights_bytes
    tied = make_plan(parse_model_config(tied_raw), **one).stages[0].weights_bytes
    assert untied - tied == lm_head
    two = {**kw, "gpus_per_node": 2, "tensor_parallel_size": 1, "pipeline_parallel_size": 2}
    untied_last = make_plan(parse_model_config(untied_raw), **two).stages[-1].weights_bytes
    tied_last = make_plan(parse_model_config(tied_raw), **two).stages[-1].weights_bytes
    assert untied_last == tied_last


# ---------------------------------------------------------------------------------------
# Layout: each refusal names every reason, the legal sizes and the key; notes say what is used


_LAYOUT: dict[str, Any] = {"gpu_memory_gib": 80, "max_model_len": 2048, "max_num_seqs": 8}


def _layout_error(model: ModelConfig, **kw: Any) -> PlanError:
    with pytest.raises(PlanError) as err:
        make_plan(model, **{**_LAYOUT, **kw})
    return err.value


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "llama-3-8b",
            "tensor_parallel_size 3 is not allowed for LlamaForCausalLM: num_attention_heads 32 "
            "is not divisible by TP 3; num_key_value_heads 8 is not divisible by TP 3 (legal "
            "sizes dividing 8 GPUs per node: [1, 2, 4, 8])",
        ),
        (
            "qwen2-7b",
            "tensor_parallel_size 3 is not allowed for Qwen2ForCausalLM: num_attention_heads 28 "
            "is not divisible by TP 3; num_key_value_heads 4 is not divisible by TP 3 (legal "
            "sizes dividing 8 GPUs per node: [1, 2, 4])",
        ),
    ],
)
def test_an_illegal_tp_lists_every_reason_and_the_legal_sizes(name: str, message: str) -> None:
    err = _layout_error(cfg(name), gpus_per_node=8, tensor_parallel_size=3)
    assert (str(err), err.field) == (message, "tensor_parallel_size")


def test_auto_tp_note_gives_every_reason_tp_of_the_node_is_refused() -> None:
    plan = make_plan(cfg("llama-3-8b"), gpus_per_node=6, **_LAYOUT)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 3)
    assert plan.notes == (
        "TP 6 (all GPUs of a node) is not allowed: num_attention_heads 32 is not divisible by "
        "TP 6; num_key_value_heads 8 is not divisible by TP 6; using TP 2 with PP inside nodes",
    )


def test_a_configured_tp_gets_no_auto_tp_note() -> None:
    plan = make_plan(cfg("qwen2-7b"), gpus_per_node=8, tensor_parallel_size=4, **_LAYOUT)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (4, 2)
    assert plan.layout_reason == "TP as configured; PP fills the nodes"
    assert plan.notes == ()


@pytest.mark.parametrize(
    ("kw", "message", "field"),
    [
        (
            {"tensor_parallel_size": 16},
            "no layout is possible on up to 1 node(s) of 8 GPUs: 1 node(s): 8 GPUs are not a "
            "multiple of TP 16",
            "tensor_parallel_size",
        ),
        (
            {"pipeline_parallel_size": 3},
            "no layout is possible on up to 1 node(s) of 8 GPUs: 1 node(s): 8 GPUs are not a "
            "multiple of PP 3",
            "pipeline_parallel_size",
        ),
        (
            {"tensor_parallel_size": 8, "pipeline_parallel_size": 2},
            "tensor_parallel_size 8 x pipeline_parallel_size 2 = 16 GPUs needs 2 nodes of 8 "
            "GPUs, but only 1 host(s) are configured",
            "tensor_parallel_size",
        ),
        (
            {"pipeline_parallel_size": 40},
            "pipeline_parallel_size 40 is not allowed: PP 40 exceeds num_hidden_layers 32 (each "
            "stage needs a layer)",
            "pipeline_parallel_size",
        ),
    ],
)
def test_impossible_layouts_say_why(kw: dict[str, Any], message: str, field: str) -> None:
    err = _layout_error(cfg("llama-3-8b"), gpus_per_node=8, **kw)
    assert (str(err), err.field) == (message, field)


def test_a_configured_layout_that_fills_the_node_gets_no_note() -> None:
    full = make_plan(
        cfg("llama-3-8b"),
        gpus_per_node=8,
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
        **_LAYOUT,
    )
    assert (full.nodes, full.layout_reason, full.notes) == (1, "TP and PP as configured", ())
    part = make_plan(
        cfg("llama-3-8b"),
        gpus_per_node=8,
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
        **_LAYOUT,
    )
    assert part.notes == ("TP x PP = 4 uses 4 of the node's 8 GPUs",)


def test_a_configured_layout_that_does_not_fit_is_described_as_configured() -> None:
    err = _layout_error(
        cfg("llama-3-8b"),
        gpus_per_node=8,
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
        gpu_memory_gib=16,
        max_num_seqs=256,
    )
    assert str(err).startswith("does not fit on 1 node(s) of 8 GPUs with TP 2 x PP 2: ")


# ---------------------------------------------------------------------------------------
# make_plan's own input checks (the CLI reaches them without the settings in front)


@pytest.mark.parametrize(
    ("kw", "message", "field"),
    [
        ({"gpu_memory_gib": 0}, "gpu_memory_gib must be positive, got 0", "gpu_memory_gib"),
        ({"gpus_per_node": 0}, "gpus_per_node must be positive, got 0", "gpus_per_node"),
        ({"max_nodes": 0}, "max_nodes must be positive, got 0", "max_nodes"),
        ({"max_num_seqs": 0}, "max_num_seqs must be positive, got 0", "max_num_seqs"),
        (
            {"gpu_memory_utilization": 0},
            "gpu_memory_utilization must be in (0, 1], got 0",
            "gpu_memory_utilization",
        ),
        (
            {"gpu_memory_utilization": 1.5},
            "gpu_memory_utilization must be in (0, 1], got 1.5",
            "gpu_memory_utilization",
        ),
        (
            {"kv_cache_dtype": "int4"},
            "kv_cache_dtype must be one of auto, fp8, fp8_e4m3, fp8_e5m2, got 'int4'",
            "kv_cache_dtype",
        ),
        ({"checkpoint_bytes": 0}, "weights_bytes must be positive, got 0", "weights_bytes"),
        ({"max_model_len": 0}, "max_model_len must be positive, got 0", "max_model_len"),
        ({"reserve_gib": -1}, "reserve_gib must not be negative, got -1", "reserve_gib"),
    ],
)
def test_make_plan_refuses_bad_inputs_by_name(kw: dict[str, Any], message: str, field: str) -> None:
    args: dict[str, Any] = {"gpu_memory_gib": 80, "gpus_per_node": 1, "max_model_len": 2048}
    with pytest.raises(PlanError) as err:
        make_plan(cfg("llama-3-8b"), **{**args, **kw})
    assert (str(err.value), err.value.field) == (message, field)


def test_make_plan_accepts_the_edges_of_its_ranges() -> None:
    args: dict[str, Any] = {"gpus_per_node": 1, "max_num_seqs": 1}
    full = make_plan(
        cfg("llama-3-8b"), gpu_memory_gib=80, gpu_memory_utilization=1, max_model_len=1, **args
    )
    assert (full.gpu_memory_utilization, full.max_model_len) == (1, 1)
    tiny = make_plan(
        _unmodelled(),
        gpu_memory_gib=80,
        max_model_len=2048,
        checkpoint_bytes=1,
        checkpoint_source="weights_bytes",
        reserve_gib=0,
        **args,
    )
    assert tiny.checkpoint_bytes == 1
    assert tiny.stages[0].reserve_bytes == 0


def test_a_config_without_a_context_length_needs_max_model_len() -> None:
    raw = _raw("llama-3-8b")
    del raw["max_position_embeddings"]
    with pytest.raises(PlanError) as err:
        make_plan(parse_model_config(raw), gpu_memory_gib=80, gpus_per_node=1)
    assert (str(err.value), err.value.field) == (
        "max_model_len is required: config.json has no max_position_embeddings",
        "max_model_len",
    )
    plan = make_plan(
        parse_model_config(raw),
        gpu_memory_gib=80,
        gpus_per_node=1,
        max_model_len=4096,
        max_num_seqs=8,
    )
    assert plan.max_model_len == 4096


def test_pp_only_layouts_name_each_node_count_they_skip() -> None:
    err = _layout_error(cfg("qwen2-7b"), gpus_per_node=14, max_nodes=2, pipeline_parallel_size=1)
    assert (str(err), err.field) == (
        "no layout is possible on up to 2 node(s) of 14 GPUs: 1 node(s): TP 14 not allowed (TP "
        "14 is not a multiple of num_key_value_heads 4 (vLLM replicates KV heads only in whole "
        "copies)); 2 node(s): TP 28 not allowed (intermediate_size 18944 is not divisible by TP "
        "28)",
        "pipeline_parallel_size",
    )
    err = _layout_error(cfg("llama-3-8b"), gpus_per_node=6, pipeline_parallel_size=1)
    assert str(err) == (
        "no layout is possible on up to 1 node(s) of 6 GPUs: 1 node(s): TP 6 not allowed "
        "(num_attention_heads 32 is not divisible by TP 6; num_key_value_heads 8 is not "
        "divisible by TP 6)"
    )
    err = _layout_error(cfg("llama-3-8b"), gpus_per_node=8, max_nodes=2, pipeline_parallel_size=3)
    assert str(err) == (
        "no layout is possible on up to 2 node(s) of 8 GPUs: 1 node(s): 8 GPUs are not a "
        "multiple of PP 3; 2 node(s): 16 GPUs are not a multiple of PP 3"
    )


def test_a_pp_only_layout_fills_the_nodes_with_whole_tp() -> None:
    plan = make_plan(cfg("llama-3-8b"), gpus_per_node=8, pipeline_parallel_size=2, **_LAYOUT)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (4, 2)
    assert plan.layout_reason == "PP as configured; TP fills the nodes"
    assert plan.engine_args()[:4] == [
        "--tensor-parallel-size",
        "4",
        "--pipeline-parallel-size",
        "2",
    ]


def test_a_tp_whose_stages_would_outnumber_the_layers_is_skipped() -> None:
    err = _layout_error(cfg("llama-3-8b"), gpus_per_node=40, tensor_parallel_size=1)
    assert (str(err), err.field) == (
        "no layout is possible on up to 1 node(s) of 40 GPUs: 1 node(s): PP 40 exceeds "
        "num_hidden_layers 32 (each stage needs a layer)",
        "tensor_parallel_size",
    )


def test_an_auto_layout_that_does_not_fit_names_the_last_layout_tried() -> None:
    err = _layout_error(
        load_model_config(R1_CONFIG),
        gpus_per_node=8,
        max_nodes=2,
        gpu_memory_gib=96,
        max_num_seqs=100_000,
    )
    assert str(err).startswith("does not fit on 2 node(s) of 8 GPUs with TP 8 x PP 2: ")


def test_plan_values_independent_of_the_plan() -> None:
    """Values checked against the model and the manual's formula, not against the plan."""
    r1 = make_plan(
        load_model_config(R1_CONFIG),
        gpu_memory_gib=96,
        gpus_per_node=8,
        max_nodes=2,
        max_model_len=2048,
        checkpoint_bytes=688_586_727_753,
        checkpoint_source="index",
    )
    assert (r1.architecture, r1.family) == ("DeepseekV3ForCausalLM", "deepseek_v3")
    assert r1.reserve_gib == 8  # MoE default
    assert r1.seed_estimate_gb == 805.2  # 671.03e9 params x 1 byte / 1e9 x 1.2, one decimal
    assert r1.seed_nodes == 2
    assert r1.notes[0] == (
        "1 MTP layer(s) (13.46 B params) are in the checkpoint but vLLM loads them only for "
        "speculative decoding: left out"
    )
    llama = make_plan(cfg("llama-3-8b"), gpus_per_node=8, **_LAYOUT)
    assert (llama.reserve_gib, llama.seed_nodes, llama.weight_bytes_source) == (
        5,
        1,
        "config.json",
    )
    assert llama.seed_estimate_gb == 19.3  # 8.03e9 x 2 bytes / 1e9 x 1.2
    sized = make_plan(cfg("llama-3-8b"), gpus_per_node=8, checkpoint_bytes=16 * 10**9, **_LAYOUT)
    assert sized.weight_bytes_source == "weights_bytes"
    odd = make_plan(
        _unmodelled(),
        gpus_per_node=8,
        checkpoint_bytes=16 * 10**9,
        checkpoint_source="weights_bytes",
        **_LAYOUT,
    )
    assert odd.seed_estimate_gb == 19.2  # checkpoint bytes / 1e9 x 1.2


def test_a_checkpoint_size_far_from_the_estimate_is_noted() -> None:
    model = cfg("llama-3-8b")
    modelled = build_inventory(model).checkpoint_bytes(
        model.quantization, model.checkpoint_dtype_bytes
    )
    far = make_plan(model, gpus_per_node=8, checkpoint_bytes=round(modelled * 1.1), **_LAYOUT)
    assert far.notes == (
        f"checkpoint size {round(modelled * 1.1) / 1e9:.2f} GB differs from the config.json "
        f"estimate {modelled / 1e9:.2f} GB by +10.0%; planning with the checkpoint size",
    )
    near = make_plan(model, gpus_per_node=8, checkpoint_bytes=round(modelled * 1.04), **_LAYOUT)
    assert near.notes == ()
    exact = make_plan(model, gpus_per_node=8, checkpoint_bytes=modelled, **_LAYOUT)
    assert exact.notes == ()


def test_max_model_len_beyond_the_models_context_is_refused() -> None:
    err = _layout_error(cfg("llama-3-8b"), gpus_per_node=8, max_model_len=10_000)
    assert (str(err), err.field) == (
        "max_model_len 10000 exceeds the model's context of 8192 tokens (config.json); vLLM "
        "refuses it",
        "max_model_len",
    )
