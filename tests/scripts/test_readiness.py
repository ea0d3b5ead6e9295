"""The readiness gate script, run for real with a fake `docker` on PATH: when the engine
container has exited, the gate fails at once and quotes the root cause from the whole log
(vLLM's tail only says "See root cause above"), not just the last lines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from components.readiness import ReadinessGate, readiness_script

FAKE_DOCKER = """#!/bin/sh
case "$*" in
  *State.Status*RestartCount*)
    state="${FAKE_STATE-exited 0}"
    [ -n "$state" ] || { echo "Error: No such object: $4" >&2; exit 1; }
    echo "$state" ;;
  logs*)
    echo 'INFO starting engine'
    echo 'ValueError: current platform cpu does not support ray.'
    i=0; while [ $i -lt 60 ]; do echo "INFO filler $i"; i=$((i+1)); done
    echo 'RuntimeError: Engine core initialization failed. See root cause above.' ;;
esac
"""


def run_gate(tmp_path: Path, fake_state: str | None = None) -> subprocess.CompletedProcess[str]:
    """The gate against a fake docker; FAKE_STATE is what `docker inspect` prints ('' makes
    it fail as for a missing container)."""
    (tmp_path / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    if fake_state is not None:
        env["FAKE_STATE"] = fake_state
    # Port 9 (discard) on loopback: nothing listens, so /health never answers.
    script = readiness_script(ReadinessGate("vllm-ray-head", 9, "m", timeout_s=300))
    return subprocess.run(
        ["bash", "-c", script],
        input="sk-test\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_gate_fails_fast_and_quotes_the_root_cause(tmp_path: Path) -> None:
    proc = run_gate(tmp_path)
    assert proc.returncode == 1
    assert "container vllm-ray-head is exited" in proc.stderr
    first_errors = proc.stderr.split("first error lines")[1].split("last log lines")[0]
    assert "current platform cpu does not support ray" in first_errors
    assert "See root cause above" in proc.stderr
    assert "sk-test" not in proc.stdout + proc.stderr


def test_gate_fails_on_a_restarted_or_missing_container(tmp_path: Path) -> None:
    restarted = run_gate(tmp_path, "running 2")
    assert restarted.returncode == 1
    assert "container vllm-ray-head is running after 2 restart(s)" in restarted.stderr
    missing = run_gate(tmp_path, "")
    assert missing.returncode == 1
    assert "container vllm-ray-head does not exist" in missing.stderr
