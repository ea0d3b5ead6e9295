"""The example CI workflow parses, has the jobs it promises, and its shell steps are valid
bash that use only files and commands this repository provides."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "examples" / "ci" / "vllm-cluster.yml"


def load() -> dict[Any, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(doc, dict)
    return doc


def test_workflow_has_preview_on_prs_and_up_plus_smoke_on_main() -> None:
    doc = load()
    # PyYAML reads the bare key `on` as the boolean True (YAML 1.1).
    triggers = doc["on"] if "on" in doc else doc[True]
    assert set(triggers) == {"pull_request", "push"}
    jobs = doc["jobs"]
    assert "pull_request" in jobs["preview"]["if"]
    assert "refs/heads/main" in jobs["deploy"]["if"]
    preview = " ".join(s.get("run", "") for s in jobs["preview"]["steps"])
    deploy = " ".join(s.get("run", "") for s in jobs["deploy"]["steps"])
    assert "pulumi preview" in preview and "pulumi up" not in preview
    assert "pulumi up" in deploy and "tools/smoke.py" in deploy


def test_every_run_step_is_valid_bash_using_repo_files() -> None:
    for job in load()["jobs"].values():
        for step in job["steps"]:
            assert "uses" in step or "run" in step, step
            script = step.get("run")
            if script is None:
                continue
            subprocess.run(["bash", "-n"], input=script, text=True, check=True)
            for path in re.findall(r"\b(?:tools|components)/[\w./-]+\.py\b", script):
                assert (REPO / path).is_file(), path
            for req in re.findall(r"-r (\S+)", script):
                assert (REPO / req).is_file(), req
