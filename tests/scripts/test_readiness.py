"""The readiness gate script, run for real with a fake `docker` on PATH: when the engine
container has exited, the gate fails at once and quotes the root cause from the whole log
(vLLM's tail only says "See root cause above"), not just the last lines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from components.render.readiness import ReadinessGate, readiness_script

FAKE_DOCKER = """#!/bin/sh
case "$*" in
  *State.Status*RestartCount*)
    # FAKE_STATE: one state per inspect call, separated by ';' (the last one sticks).
    n=$(cat "$0.calls" 2>/dev/null || echo 0); echo $((n + 1)) >"$0.calls"
    state=$(printf '%s' "${FAKE_STATE-exited 0}" | awk -F';' -v i=$((n + 1)) \
      '{ print (i <= NF ? $i : $NF) }')
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
    tmp_path.mkdir(parents=True, exist_ok=True)
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
    restarted = run_gate(tmp_path / "a", "running 0;running 1")
    assert restarted.returncode == 1
    assert "container vllm-ray-head is running after 1 restart(s)" in restarted.stderr
    missing = run_gate(tmp_path / "b", "")
    assert missing.returncode == 1
    assert "container vllm-ray-head does not exist" in missing.stderr


def test_an_engine_regated_after_losing_a_worker_may_restart_once(tmp_path: Path) -> None:
    """Restarted twice before the gate (its Ray worker's host lost it): one more restart,
    through `restarting`, is the cluster re-forming; a second one is a crash loop."""
    again = run_gate(tmp_path / "a", "running 2;restarting 2;running 3;exited 3")
    assert again.returncode == 1
    assert "container vllm-ray-head is exited after 3 restart(s)" in again.stderr
    looping = run_gate(tmp_path / "b", "running 2;running 3;restarting 3;running 4")
    assert looping.returncode == 1
    assert "container vllm-ray-head is running after 4 restart(s)" in looping.stderr
