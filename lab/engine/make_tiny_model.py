#!/usr/bin/env python3
"""Make the lab's tiny Llama model directory (LAB TEST FIXTURE), locally, downloading nothing.

    make_tiny_model.py [OUT_DIR]        default: $LAB_DIR/model/tiny-llama

It is a valid checkpoint for transformers' LlamaForCausalLM (and so for the real vLLM CPU build
later): config.json, a byte-level BPE tokenizer trained here on a built-in text with a chat
template, random bf16 weights (fixed seed) of exactly the shapes the config implies in
``model.safetensors``, ``model.safetensors.index.json`` whose ``metadata.total_size`` is the
tensors' byte count, and generation_config.json. The weights are random: the model "works" but
says nothing sensible. The stand-in engine and the planner only read config.json and the index.

The directory is written beside the target and renamed into place, so it is either complete or
absent; a complete directory of the same recipe version is left alone (the run is a no-op).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import TensorSpec, serialize_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Bump when the output changes, so existing directories are rebuilt.
RECIPE_VERSION = "1"
MARKER = ".lab-tiny-model"
SEED = 20240601

CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    # 256 / 4; explicit because vLLM's CPU attention kernels reject small head sizes.
    "head_dim": 64,
    "num_hidden_layers": 2,
    "vocab_size": 512,
    "max_position_embeddings": 2048,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "pretraining_tp": 1,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2: the trainer puts them first
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Training text for the tokenizer: enough distinct words for a few hundred BPE merges.
CORPUS = """\
The lab serves a tiny model so that every part of the deployment can be tested without a GPU.
A cluster of servers runs one container per node; the head node starts Ray and the workers join
it. Tensor parallelism splits each layer across the GPUs of one node, and pipeline parallelism
splits the layers across nodes. The engine loads the weights, reserves memory for the key value
cache and then answers requests on an OpenAI compatible endpoint. Every request carries a bearer
token; health checks and metrics need none. When a worker is lost, the engine stops and the
service is restarted by the deployment. Operators read the logs, the metrics and the status of
each node. Users send chat messages: system, user and assistant roles alternate, and the model
replies with a short answer. Numbers such as 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024
2048 4096 appear in configurations, in sizes and in ports like 8000 and 6379.
Questions: what is the capital of France? how many layers does the model have? which node
answered? Answers: Paris. Two layers. The head node answered, with help from the workers.
"""


def llama_tensor_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a Llama checkpoint, in transformers' naming."""
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg["num_key_value_heads"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    inter = int(cfg["intermediate_size"])
    vocab = int(cfg["vocab_size"])
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
                p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
                p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                p + "mlp.gate_proj.weight": (inter, hidden),
                p + "mlp.up_proj.weight": (inter, hidden),
                p + "mlp.down_proj.weight": (hidden, inter),
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
            }
        )
    shapes["model.norm.weight"] = (hidden,)
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def to_bf16_bits(x: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, np.dtype[np.uint16]]:
    """float32 -> bfloat16 bit patterns (round to nearest even); numpy has no bf16 dtype."""
    bits = x.astype(np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def make_weights(cfg: dict[str, Any]) -> dict[str, np.ndarray[Any, np.dtype[np.uint16]]]:
    rng = np.random.default_rng(SEED)
    std = float(cfg["initializer_range"])
    out = {}
    for name, shape in llama_tensor_shapes(cfg).items():
        if name.endswith("norm.weight"):
            values = np.ones(shape, dtype=np.float32)  # RMSNorm scales start at 1
        else:
            values = rng.normal(0.0, std, size=shape).astype(np.float32)
        out[name] = np.ascontiguousarray(to_bf16_bits(values))
    return out


def write_weights(out: Path, cfg: dict[str, Any]) -> int:
    tensors = make_weights(cfg)
    # The arrays must stay alive while serialize_file reads their memory.
    specs = {
        name: TensorSpec(
            dtype="bfloat16", shape=arr.shape, data_ptr=arr.ctypes.data, data_len=arr.nbytes
        )
        for name, arr in tensors.items()
    }
    # transformers refuses safetensors files without format metadata.
    serialize_file(specs, str(out / "model.safetensors"), metadata={"format": "pt"})
    total = sum(arr.nbytes for arr in tensors.values())
    index = {
        "metadata": {"total_size": total},
        "weight_map": {name: "model.safetensors" for name in sorted(tensors)},
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


def write_tokenizer(out: Path, cfg: dict[str, Any]) -> int:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(cfg["vocab_size"]),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bos, eos = SPECIAL_TOKENS[1], SPECIAL_TOKENS[2]
    if tok.token_to_id(bos) != cfg["bos_token_id"] or tok.token_to_id(eos) != cfg["eos_token_id"]:
        raise RuntimeError("special token ids do not match config.json")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)]
    )
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    if vocab > int(cfg["vocab_size"]):
        raise RuntimeError(f"tokenizer has {vocab} tokens, more than vocab_size")
    special = {"bos_token": bos, "eos_token": eos, "unk_token": SPECIAL_TOKENS[0]}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "pad_token": eos,
        "model_max_length": cfg["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({**special, "pad_token": eos}, indent=2) + "\n"
    )
    return vocab


REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
    "model.safetensors.index.json",
)


def is_complete(out: Path) -> bool:
    marker = out / MARKER
    return (
        marker.is_file()
        and marker.read_text().strip() == RECIPE_VERSION
        and all((out / name).is_file() for name in REQUIRED_FILES)
    )


def build(out: Path) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
        generation = {
            "bos_token_id": CONFIG["bos_token_id"],
            "eos_token_id": CONFIG["eos_token_id"],
            "do_sample": False,
            "max_new_tokens": 64,
        }
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        vocab = write_tokenizer(tmp, CONFIG)
        total = write_weights(tmp, CONFIG)
        (tmp / "README.md").write_text(
            "# tiny-llama (LAB TEST FIXTURE)\n\nRandom bf16 weights made by "
            "lab/engine/make_tiny_model.py; not a trained model.\n"
        )
        (tmp / MARKER).write_text(RECIPE_VERSION + "\n")
        # Containers mount this read-only under other users: make it world-readable.
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dir": str(out), "total_size": total, "tokenizer_vocab": vocab}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    lab_dir = os.environ.get("LAB_DIR") or Path(__file__).resolve().parents[2] / ".lab"
    default = Path(lab_dir) / "model" / "tiny-llama"
    parser.add_argument("out_dir", nargs="?", type=Path, default=default)
    args = parser.parse_args(argv)
    out: Path = args.out_dir.resolve()
    if is_complete(out):
        print(f"make_tiny_model: {out} is complete (recipe {RECIPE_VERSION}); nothing to do")
        return 0
    info = build(out)
    print(
        f"make_tiny_model: wrote {info['dir']} (weights {info['total_size']} bytes, "
        f"tokenizer vocab {info['tokenizer_vocab']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
