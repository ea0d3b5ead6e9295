"""serving.extra_args against the spellings vLLM's parser accepts.

The tables below are what components/settings_checks.py refuses and lets through.
tests/lab/test_vllm_real_parser.py holds them to the facts: every refused word, run through
the real vLLM parser (in the lab's vllm-cpu image) in the place the program puts extra args,
changes a value the program owns, makes the engine exit, or is refused by vLLM; every accepted
word parses and leaves them alone.
"""

from __future__ import annotations

import pytest

from components.settings_checks import check_extra_arg

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
    (["--device_memory_utilization=0.7"], 0),  # an alias of --gpu-memory-utilization
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


# Printable ids (a NUL in a test id is escaped differently between runs, which breaks
# selecting the test by id, as `make mutation` does).
@pytest.mark.parametrize(
    ("words", "bad"), REFUSED, ids=[" ".join(w).replace("\0", "<NUL>") for w, _ in REFUSED]
)
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
