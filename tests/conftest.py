"""Under CI (`CI` set to anything but empty/0/false/no), a skipped test is a failed test.

A skip on a developer machine says "a prerequisite is missing here"; in CI, `.ci/run` installs
every prerequisite, so a skip there would hide a test that never ran behind a green build.
The only skips allowed under CI are the documented opt-ins, whose reason starts with
"opt-in:" (none is taken by `make test`, which opts in to everything).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

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
