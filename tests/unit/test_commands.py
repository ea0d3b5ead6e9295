"""The dynamic providers behind ShellCommand and RemoteCheck, driven directly.

`target=[]` runs scripts on this machine, so these are real runs of bash, not mocks; the
SSH path is the same code with an ssh argv in front (exercised by the lab e2e tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.commands import ShellCommandProvider
from components.remote_check import RemoteCheckProvider


def props(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "label": "t",
        "target": [],
        "create": "echo created; echo progress >&2",
        "update": None,
        "delete": None,
        "stdin": None,
        "triggers": [],
    }
    base.update(kw)
    return base


def test_create_runs_and_keeps_stdout_but_never_stdin() -> None:
    p = ShellCommandProvider()
    result = p.create(props(create="cat", stdin="sk-secret"))
    outs = result.outs or {}
    assert outs["stdout"] == "sk-secret"
    assert "stdin" not in outs
    assert "sk-secret" not in str(outs["stdin_sha256"])


def test_failure_names_the_step_and_shows_the_output_tail() -> None:
    with pytest.raises(RuntimeError, match=r"t: exited with 3:\nwhy it failed"):
        ShellCommandProvider().create(props(create="echo 'why it failed' >&2; exit 3"))


def test_diff_rerun_on_script_or_stdin_change_replace_on_triggers() -> None:
    p = ShellCommandProvider()
    olds = p.create(props(stdin="a", triggers=[1])).outs or {}
    same = p.diff("t", olds, props(stdin="a", triggers=[1]))
    assert same.changes is False
    stdin = p.diff("t", olds, props(stdin="b", triggers=[1]))
    assert stdin.changes is True and stdin.replaces == []
    script = p.diff("t", olds, props(create="echo other", stdin="a", triggers=[1]))
    assert script.changes is True and script.replaces == []
    trig = p.diff("t", olds, props(stdin="a", triggers=[2]))
    assert trig.changes is True and trig.replaces == ["triggers"]


def test_update_runs_the_update_script_and_delete_runs_delete(tmp_path: Path) -> None:
    p = ShellCommandProvider()
    marker = tmp_path / "m"
    olds = p.create(props()).outs or {}
    news = props(create="echo v2", update=f"echo updated > {marker}")
    p.update("t", olds, news)
    assert marker.read_text() == "updated\n"
    p.delete("t", props(delete=f"rm {marker}"))
    assert not marker.exists()


def test_timeout_is_reported() -> None:
    from components.commands import run_script

    with pytest.raises(RuntimeError, match="no answer within 1s"):
        run_script([], "sleep 5", None, "slow", timeout_s=1)


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


def test_progress_lines_are_echoed_unless_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    from components.commands import run_script

    result = run_script(
        [], "echo '[h] step: one' >&2; echo out; echo '[h] step: two' >&2", None, "p"
    )
    assert result["stdout"] == "out\n"
    assert capfd.readouterr().err == "[h] step: one\n[h] step: two\n"
    run_script([], "echo '[h] step: hidden' >&2", None, "p", quiet=True)
    assert capfd.readouterr().err == ""
