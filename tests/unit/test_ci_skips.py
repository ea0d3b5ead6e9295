"""tests/conftest.py: under CI a skip fails, except a documented opt-in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_inner(tmp_path: Path, reason: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(
        f"import pytest\n\ndef test_x():\n    pytest.skip({reason!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_skip_fails_under_ci(tmp_path: Path, ci: str) -> None:
    done = run_inner(tmp_path, "docker missing", ci)
    assert done.returncode == 1, done.stdout
    assert "skipped under CI=true, which must run every test: docker missing" in done.stdout


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_a_skip_stays_a_skip_outside_ci(tmp_path: Path, ci: str | None) -> None:
    done = run_inner(tmp_path, "docker missing", ci)
    assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout


def test_an_opt_in_skip_stays_a_skip_under_ci(tmp_path: Path) -> None:
    done = run_inner(tmp_path, "opt-in: needs REAL_ENGINE=1", "true")
    assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout
