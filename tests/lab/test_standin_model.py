"""The lab's tiny Llama (lab/engine/make_tiny_model.py), checked against Llama's shapes computed
here independently from config.json, by reading the files back with the safetensors and
tokenizers libraries and by parsing the safetensors header by hand."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[2]
MAKE_TINY_MODEL = REPO / "lab" / "engine" / "make_tiny_model.py"
# hidden 256, 4 heads x 64, 2 KV heads, 2 layers, intermediate 512, vocab 512, untied head:
# embed 131072 + 2 x (q 65536 + k 32768 + v 32768 + o 65536 + 3 x 131072 mlp + 512 norms)
# + final norm 256 + lm_head 131072.
EXPECTED_PARAMS = 1_443_072


def make(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAKE_TINY_MODEL), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m") / "tiny-llama"
    make(out)
    return out


def expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, n_h, n_kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d, inter, vocab = cfg["head_dim"], cfg["intermediate_size"], cfg["vocab_size"]
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(cfg["num_hidden_layers"]):
        layer = {
            "self_attn.q_proj.weight": (n_h * d, h),
            "self_attn.k_proj.weight": (n_kv * d, h),
            "self_attn.v_proj.weight": (n_kv * d, h),
            "self_attn.o_proj.weight": (h, n_h * d),
            "mlp.gate_proj.weight": (inter, h),
            "mlp.up_proj.weight": (inter, h),
            "mlp.down_proj.weight": (h, inter),
            "input_layernorm.weight": (h,),
            "post_attention_layernorm.weight": (h,),
        }
        shapes.update({f"model.layers.{i}.{k}": v for k, v in layer.items()})
    shapes["lm_head.weight"] = (vocab, h)
    return shapes


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


def test_config_is_the_agreed_tiny_llama(model: Path) -> None:
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["head_dim"]) == (256, 4, 64)
    assert (cfg["num_key_value_heads"], cfg["num_hidden_layers"]) == (2, 2)
    assert (cfg["intermediate_size"], cfg["vocab_size"]) == (512, 512)
    assert cfg["max_position_embeddings"] == 2048
    assert cfg["torch_dtype"] == "bfloat16"
    assert cfg["tie_word_embeddings"] is False
    gen = json.loads((model / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (cfg["bos_token_id"], cfg["eos_token_id"])


def test_weights_have_exactly_the_shapes_the_config_implies(model: Path) -> None:
    cfg = json.loads((model / "config.json").read_text())
    want = expected_shapes(cfg)
    n, header = read_header(model / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}  # transformers insists on it
    assert {k: tuple(v["shape"]) for k, v in header.items()} == want
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    params = sum(int(np.prod(s)) for s in want.values())
    assert params == EXPECTED_PARAMS
    # Tensors are packed back to back, 2 bytes each, and nothing else is in the file.
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert spans[-1][1] == 2 * params
    assert (model / "model.safetensors").stat().st_size == 8 + n + 2 * params
    # The library reads it back the same way.
    with safe_open(str(model / "model.safetensors"), framework="numpy") as f:
        assert set(f.keys()) == set(want)
        for name in want:
            assert tuple(f.get_slice(name).get_shape()) == want[name]
            assert f.get_slice(name).get_dtype() == "BF16"


def test_index_total_size_is_the_tensor_bytes(model: Path) -> None:
    index = json.loads((model / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 2 * EXPECTED_PARAMS
    _, header = read_header(model / "model.safetensors")
    header.pop("__metadata__")
    assert set(index["weight_map"]) == set(header)
    assert set(index["weight_map"].values()) == {"model.safetensors"}


def test_weight_values_are_a_plausible_init(model: Path) -> None:
    n, header = read_header(model / "model.safetensors")
    raw = (model / "model.safetensors").read_bytes()[8 + n :]

    def tensor(name: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        start, end = header[name]["data_offsets"]
        bits = np.frombuffer(raw[start:end], dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32)

    assert np.all(tensor("model.norm.weight") == 1.0)
    assert np.all(tensor("model.layers.1.input_layernorm.weight") == 1.0)
    q = tensor("model.layers.0.self_attn.q_proj.weight")
    assert np.all(np.isfinite(q))
    assert 0.015 < float(q.std()) < 0.025 and abs(float(q.mean())) < 0.002


def test_tokenizer_round_trips_and_matches_the_config(model: Path) -> None:
    cfg = json.loads((model / "config.json").read_text())
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    assert tok.get_vocab_size() <= cfg["vocab_size"]
    assert tok.token_to_id("<s>") == cfg["bos_token_id"]
    assert tok.token_to_id("</s>") == cfg["eos_token_id"]
    text = "Which node answered? The head node, on port 8000."
    enc = tok.encode(text)
    assert enc.ids[0] == cfg["bos_token_id"]
    assert all(0 <= i < cfg["vocab_size"] for i in enc.ids)
    assert tok.decode(enc.ids) == text
    tcfg = json.loads((model / "tokenizer_config.json").read_text())
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tcfg["bos_token"], tcfg["eos_token"]) == ("<s>", "</s>")
    assert "add_generation_prompt" in tcfg["chat_template"]
    assert "message['content']" in tcfg["chat_template"]


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_deterministic_and_idempotent(model: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    make(other)
    assert digest(other) == digest(model)
    mtime = (other / "model.safetensors").stat().st_mtime_ns
    result = make(other)
    assert "nothing to do" in result.stdout
    assert (other / "model.safetensors").stat().st_mtime_ns == mtime
    # An incomplete directory is rebuilt, whole.
    (other / "tokenizer.json").unlink()
    result = make(other)
    assert "wrote" in result.stdout
    assert digest(other) == digest(model)
