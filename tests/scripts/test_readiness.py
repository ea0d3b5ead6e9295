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
  *State.Status*) echo exited ;;
  *RestartCount*) echo 0 ;;
  logs*)
    echo 'INFO starting engine'
    echo 'ValueError: current platform cpu does not support ray.'
    i=0; while [ $i -lt 60 ]; do echo "INFO filler $i"; i=$((i+1)); done
    echo 'RuntimeError: Engine core initialization failed. See root cause above.' ;;
esac
"""


def test_gate_fails_fast_and_quotes_the_root_cause(tmp_path: Path) -> None:
    (tmp_path / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    # Port 9 (discard) on loopback: nothing listens, so /health never answers.
    script = readiness_script(ReadinessGate("vllm-ray-head", 9, "m", timeout_s=300))
    proc = subprocess.run(
        ["bash", "-c", script],
        input="sk-test\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 1
    assert "container vllm-ray-head is exited" in proc.stderr
    first_errors = proc.stderr.split("first error lines")[1].split("last log lines")[0]
    assert "current platform cpu does not support ray" in first_errors
    assert "See root cause above" in proc.stderr
    assert "sk-test" not in proc.stdout + proc.stderr
