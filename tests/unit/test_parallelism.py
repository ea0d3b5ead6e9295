"""The warning about `pulumi up --parallel` (components/parallelism.py)."""

from __future__ import annotations

from components.parallelism import STEPS_PER_HOST, parallelism_advice


def test_enough_slots_or_one_host_or_unknown_says_nothing() -> None:
    assert parallelism_advice(1, 1) is None
    assert parallelism_advice(2, 2 * STEPS_PER_HOST) is None
    assert parallelism_advice(8, 64) is None
    assert parallelism_advice(8, None) is None
    assert parallelism_advice(8, 0) is None


def test_too_few_slots_name_the_flag_and_the_variable_with_the_count_needed() -> None:
    advice = parallelism_advice(8, 8)
    assert advice is not None
    need = 8 * STEPS_PER_HOST
    assert f"--parallel {need}" in advice and f"PULUMI_PARALLEL={need}" in advice
    assert "runs 8 operations" in advice
    # One slot short is still short.
    assert parallelism_advice(3, 3 * STEPS_PER_HOST - 1) is not None
