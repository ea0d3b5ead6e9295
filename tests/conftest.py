"""Session-wide test setup.

`lab` (session): the running lab's inventory, one fixture for tests/lab and tests/e2e (a
fixture imported into two conftests is two fixtures, set up twice). A lab that is already up
is reused as it is and left up; when none is up, the fixture brings one up with 2 hosts and
brings it down at the end of the session (set LAB_KEEP=1 to keep it).

Under CI (`CI` set to anything but empty/0/false/no), a skipped test is a failed test.

A skip on a developer machine says "a prerequisite is missing here"; in CI, `.ci/run` installs
every prerequisite, so a skip there would hide a test that never ran behind a green build.
The only skips allowed under CI are the documented opt-ins, whose reason starts with
"opt-in:" (none is taken by `make test`, which opts in to everything).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import labutil as lu

OPT_IN_PREFIX = "opt-in:"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if reason.startswith(OPT_IN_PREFIX):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true, which must run every test: {reason}\n"
        "(.ci/run installs every prerequisite; a skip here means one is missing)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under a mutmut mutant run, fastest tests first.

    mutmut runs each mutant's covering tests with `-x` in the order it lists them (a set, so
    any order); most mutants are killed by a fast unit test, so running those before the
    slow script and Pulumi-mock tests cuts the time per killed mutant. Durations come from
    mutmut's own stats run (mutants/mutmut-stats.json; mutmut runs pytest inside mutants/).
    Outside a mutant run the order is untouched.
    """
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    durations: dict[str, float] = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


@pytest.fixture(scope="session")
def lab() -> Iterator[lu.Inventory]:
    before = lu.read_inventory()
    owned = before is None
    if before is not None and lu.lab_is_up():
        inventory = before
    else:
        # Down (we own what we bring up) or broken (repair it with the same size, not ours).
        count = str(len(before["hosts"])) if before else "2"
        env = {k: str(v) for k, v in (before or {}).get("settings", {}).items()}
        proc = lu.lab_cmd("up", count, env=env)
        if proc.returncode != 0:
            pytest.fail(f"`lab/lab up {count}` failed:\n{proc.stdout}\n{proc.stderr}")
        found = lu.read_inventory()
        assert found is not None, "lab up succeeded but wrote no inventory"
        inventory = found
    if len(inventory["hosts"]) < 2:
        pytest.fail(
            f"the running lab has {len(inventory['hosts'])} host(s); the lab tests need 2: "
            "run `make lab-up LAB_HOSTS=2` (or `make lab-down` and let the tests bring it up)"
        )
    yield inventory
    if owned and os.environ.get("LAB_KEEP") != "1":
        proc = lu.lab_cmd("down")
        assert proc.returncode == 0, f"lab down failed:\n{proc.stdout}\n{proc.stderr}"
