"""RemoteCheck's dynamic provider, driven directly.

`ssh_argv=[]` runs the checks with bash on this machine, so these are real runs, not mocks;
the SSH path is the same code with an OpenSSH argv in front (exercised by the lab e2e
tests: drift of weights and images)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from components.resources import remote_check
from components.resources.remote_check import RemoteCheckProvider, run_checks


def host_checks(tmp_path: Path, counter: Path) -> dict[str, str]:
    """Two checks of one host; each run of the host's checks appends a line to `counter`."""
    for part in ("image", "weights"):
        (tmp_path / part).write_text("x")
    return {
        "image": f"echo run >> {counter}; test -s {tmp_path / 'image'}",
        "weights": f"test -s {tmp_path / 'weights'}",
    }


def props(checks: dict[str, str], part: str) -> dict[str, Any]:
    return {"label": f"h1:{part}", "ssh_argv": [], "checks": checks, "part": part}


def test_each_check_reports_only_its_own_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_check, "HOST_RESULTS", remote_check._HostResults())
    checks = host_checks(tmp_path, tmp_path / "runs")
    p = RemoteCheckProvider()
    image, weights = props(checks, "image"), props(checks, "weights")
    olds = {
        part: p.create(dict(q)).outs or {} for part, q in (("image", image), ("weights", weights))
    }
    assert olds["image"]["generation"] == 1
    monkeypatch.setattr(remote_check, "RESULT_TTL_S", 0.0)  # every diff looks again
    assert p.diff("i", olds["image"], dict(image)).changes is False
    assert p.diff("w", olds["weights"], dict(weights)).changes is False
    (tmp_path / "weights").unlink()
    assert p.diff("i", olds["image"], dict(image)).changes is False
    assert p.diff("w", olds["weights"], dict(weights)).changes is True
    assert (p.update("w", olds["weights"], dict(weights)).outs or {})["generation"] == 2


def test_one_round_trip_answers_every_check_of_a_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_check, "HOST_RESULTS", remote_check._HostResults())
    runs = tmp_path / "runs"
    checks = host_checks(tmp_path, runs)
    p = RemoteCheckProvider()
    image, weights = props(checks, "image"), props(checks, "weights")
    old_image = p.create(dict(image)).outs or {}
    old_weights = p.create(dict(weights)).outs or {}
    # Asked at once, as the engine does with PULUMI_PARALLEL_DIFF: one run answers both.
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda args: p.diff(*args).changes,
                [("i", old_image, dict(image)), ("w", old_weights, dict(weights))] * 3,
            )
        )
    assert answers == [False] * 6
    assert runs.read_text() == "run\n"
    # Another host (another argv: here a shell standing in for ssh) is its own round
    # trip; so is a later operation.
    other = {**image, "ssh_argv": ["bash", "-c"]}
    p.diff("i", {**old_image, "ssh_argv": ["bash", "-c"]}, other)
    assert runs.read_text() == "run\n" * 2
    monkeypatch.setattr(remote_check, "RESULT_TTL_S", 0.0)
    p.diff("i", old_image, dict(image))
    assert runs.read_text() == "run\n" * 3


def test_changed_inputs_report_a_change_without_running_the_checks(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    old = props({"image": f"touch {ran}"}, "image") | {"generation": 1}
    new = props({"image": f"touch {ran}; true"}, "image")
    assert RemoteCheckProvider().diff("i", old, new).changes is True
    assert not ran.exists()


def test_a_sibling_script_changing_is_not_this_checks_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_check, "HOST_RESULTS", remote_check._HostResults())
    checks = host_checks(tmp_path, tmp_path / "runs")
    old = props(checks, "image") | {"generation": 3}
    new = props({**checks, "weights": checks["weights"] + " && true"}, "image")
    assert RemoteCheckProvider().diff("i", old, new).changes is False


def test_state_of_an_earlier_release_is_read_as_the_same_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_check, "HOST_RESULTS", remote_check._HostResults())
    monkeypatch.setattr(remote_check, "RESULT_TTL_S", 0.0)  # every diff looks again
    # Earlier releases stored one `script` and no `checks`/`part`: the same script is no
    # change (an upgrade re-runs nothing), another one is.
    checks = host_checks(tmp_path, tmp_path / "runs")
    earlier = {"label": "h1:image", "ssh_argv": [], "script": checks["image"], "generation": 2}
    p = RemoteCheckProvider()
    assert p.diff("i", earlier, props(checks, "image")).changes is False
    changed = props({**checks, "image": "true"}, "image")
    assert p.diff("i", earlier, changed).changes is True
    assert (p.update("i", earlier, changed).outs or {})["generation"] == 3
    # `pulumi refresh` before the first `up` of this release diffs such state against
    # itself: the one script is run and answers (state found by a real refresh, in CI).
    assert p.diff("i", earlier, dict(earlier)).changes is False
    (tmp_path / "image").unlink()
    assert p.diff("i", earlier, dict(earlier)).changes is True


def test_checks_run_in_one_bash_and_report_each_status(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    checks = {
        "ok": f"echo x >> {counter}",
        "exits": "exit 3",
        "set-e": "set -e; false; true",
        "reads-stdin": "read -r line",  # no input: fails instead of hanging
        "quoted 'name'": '[[ -n "$HOME" ]]',
    }
    assert run_checks([], checks) == {"exits", "set-e", "reads-stdin"}
    assert counter.read_text() == "x\n"


def test_check_needs_bash_and_fails_on_timeout_or_missing_client() -> None:
    assert run_checks([], {"c": "set -o pipefail; [[ -n x ]]"}) == set()
    assert run_checks([], {"c": "exit 3"}) == {"c"}
    assert run_checks([], {"c": "sleep 5"}, timeout_s=0.5) == {"c"}
    assert run_checks(["/nonexistent/ssh"], {"c": "true"}) == {"c"}
    assert run_checks(["/nonexistent/ssh"], {"a": "true", "b": "true"}) == {"a", "b"}
    assert run_checks([], {}) == set()


def test_prefetch_runs_every_host_at_once_and_the_checks_answer_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_check, "HOST_RESULTS", remote_check._HostResults())
    hosts: dict[str, Any] = {}
    for name in ("h1", "h2", "h3"):
        runs = tmp_path / f"runs-{name}"
        # A round trip of 1 s per host (a shell standing in for ssh: the argv differs per host).
        checks = {"image": f"sleep 1; echo run >> {runs}", "weights": "true"}
        hosts[name] = {"ssh_argv": ["bash", "-c", f': {name}; exec bash -c "$1"', "-"]}
        hosts[name]["checks"] = checks
    prefetch = remote_check.DriftPrefetchProvider()
    olds = prefetch.create({"hosts": hosts}).outs or {}
    t = time.monotonic()
    assert prefetch.diff("p", olds, {"hosts": hosts}).changes is False
    assert time.monotonic() - t < 2.5, "the hosts were checked one after another"
    p = RemoteCheckProvider()
    for name, host in hosts.items():
        for part in ("image", "weights"):
            check = {"label": f"{name}:{part}", **host, "part": part}
            assert p.diff(part, {**check, "generation": 1}, check).changes is False
        # One round trip per host: the prefetch's, none by the checks.
        assert (tmp_path / f"runs-{name}").read_text() == "run\n"
    # New hosts or scripts are its only change (stored, nothing runs again because of it).
    more = {**hosts, "h4": hosts["h1"]}
    assert prefetch.diff("p", olds, {"hosts": more}).changes is True


def test_drift_checks_are_the_parts_a_host_has() -> None:
    assert remote_check.drift_checks("img", "w") == {"image": "img", "weights": "w"}
    assert remote_check.drift_checks(None, "w") == {"weights": "w"}
    assert remote_check.drift_checks("", None) == {}
