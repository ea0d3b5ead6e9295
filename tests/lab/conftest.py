"""Fixtures for the lab tests (marker `lab`).

`lab` (session, defined once in tests/conftest.py for tests/lab and tests/e2e alike). Tests
marked `lab_lifecycle` (which take the lab
down on purpose, then restore it) are moved to the end of the session.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.lab import labutil as lu


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab_lifecycle: takes the lab down and restores it; runs last in a session"
    )


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    last = [item for item in items if item.get_closest_marker("lab_lifecycle")]
    if last:
        items[:] = [item for item in items if item not in last] + last


@pytest.fixture(scope="session")
def probe_image(lab: lu.Inventory) -> str:
    """Tag of the small python3 image (lab/host/probe) loaded into every host, for
    `docker run --gpus` tests. Made locally: no registry is reachable from the lab."""
    proc = lu.lab_cmd("probe-image")
    assert proc.returncode == 0, f"lab/lab probe-image failed:\n{proc.stdout}\n{proc.stderr}"
    tarball = Path(proc.stdout.strip().splitlines()[-1])
    tag = tarball.with_suffix(".tag").read_text().strip()
    with ThreadPoolExecutor(max_workers=len(lab["hosts"])) as pool:
        list(pool.map(lambda h: lu.load_image(lab, h, tarball, tag), lab["hosts"]))
    return tag
