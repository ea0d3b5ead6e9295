"""`python -m components.sizing` as a user runs it: exit codes, the table, --json, and short
reasons on stderr (never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
R1 = "models/deepseek-r1/config.json"
FIXTURES = Path(__file__).parent / "fixtures" / "model_configs"
H20 = ["--gpu-memory-gib", "96", "--gpus-per-node", "8", "--max-model-len", "2048"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "components.sizing", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_table_for_the_manuals_h20_cluster() -> None:
    res = run("--model-config", R1, *H20, "--max-nodes", "2")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "TP 8 x PP 2 on 2 node(s) x 8 GPUs" in out
    assert "671.03 B loaded" in out
    assert "805.2 GB" in out and "-> 2 node(s)" in out
    assert "70,272 B whole model" in out
    assert "Max concurrency" in out and "Ready timeout" in out
    assert res.stderr == ""


def test_json_output_keys() -> None:
    res = run("--model-config", R1, *H20, "--json")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
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
    ):
        assert key in plan
    # default --max-nodes searches for the minimum
    assert (plan["nodes"], plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (
        2,
        8,
        2,
    )
    assert plan["checkpoint_bytes"] == 688_586_727_753  # index next to config.json
    gpu = plan["per_gpu"][0]
    assert {"weights_gib", "reserve_gib", "kv_gib", "budget_gib", "free_gib"} <= set(gpu)


def test_weights_bytes_flag() -> None:
    res = run(
        "--model-config",
        str(FIXTURES / "llama-3-8b.json"),
        "--weights-bytes",
        "16060522496",
        "--gpu-memory-gib",
        "80",
        "--gpus-per-node",
        "1",
        "--max-num-seqs",
        "16",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["weight_bytes_source"] == "weights_bytes"


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--model-config", R1, *H20, "--max-nodes", "1"], "79.29 GiB weights"),
        (
            [
                "--model-config",
                R1,
                *H20,
                "--tensor-parallel-size",
                "32",
                "--pipeline-parallel-size",
                "1",
            ],
            "--tensor-parallel-size: tensor_parallel_size 32 is not allowed",
        ),
        (
            [
                "--model-config",
                str(FIXTURES / "qwen2-7b.json"),
                "--gpu-memory-gib",
                "80",
                "--gpus-per-node",
                "8",
                "--max-model-len",
                "4096",
                "--tensor-parallel-size",
                "8",
            ],
            "num_attention_heads 28 is not divisible by TP 8",
        ),
        (["--model-config", "no/such/config.json", *H20], "--model-config: cannot read"),
        (["--model-config", R1, *H20, "--max-model-len", "999999"], "--max-model-len:"),
        (
            ["--model-config", R1, *H20, "--gpu-memory-utilization", "1.5"],
            "--gpu-memory-utilization:",
        ),
    ],
)
def test_failures_exit_1_with_a_short_reason(args: list[str], phrase: str) -> None:
    res = run(*args)
    assert res.returncode == 1
    assert res.stdout == ""
    assert phrase in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("sizing: ") and res.stderr.count("\n") == 1


def test_invalid_json_config(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    res = run("--model-config", str(bad), *H20)
    assert res.returncode == 1 and "is not valid JSON" in res.stderr
    assert "Traceback" not in res.stderr


def test_usage_error_is_argparse_exit_2() -> None:
    res = run("--model-config", R1)  # --gpu-memory-gib / --gpus-per-node missing
    assert res.returncode == 2 and "required" in res.stderr
