"""RemoteCheck's dynamic provider, driven directly.

`ssh_argv=[]` runs the check with bash on this machine, so these are real runs, not mocks;
the SSH path is the same code with an OpenSSH argv in front (exercised by the lab e2e
tests: drift of weights and images)."""

from __future__ import annotations

from pathlib import Path

from components.resources.remote_check import RemoteCheckProvider, run_check


def test_remote_check_reports_change_only_when_the_check_fails(tmp_path: Path) -> None:
    present = tmp_path / "weights"
    present.write_text("x")
    check = {"label": "w", "ssh_argv": [], "script": f"test -s {present}"}
    p = RemoteCheckProvider()
    olds = p.create(dict(check)).outs or {}
    assert olds["generation"] == 1
    assert p.diff("w", olds, dict(check)).changes is False
    present.unlink()
    assert p.diff("w", olds, dict(check)).changes is True
    assert (p.update("w", olds, dict(check)).outs or {})["generation"] == 2


def test_changed_inputs_report_a_change_without_running_the_check(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    old = {"label": "w", "ssh_argv": [], "script": f"touch {ran}", "generation": 1}
    new = {**old, "script": f"touch {ran}; true"}
    assert RemoteCheckProvider().diff("w", old, new).changes is True
    assert not ran.exists()


def test_check_needs_bash_and_fails_on_timeout_or_missing_client() -> None:
    assert run_check([], "set -o pipefail; [[ -n x ]]") is True
    assert run_check([], "exit 3") is False
    assert run_check([], "sleep 5", timeout_s=0.5) is False
    assert run_check(["/nonexistent/ssh"], "true") is False
