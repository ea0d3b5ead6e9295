"""Fixtures for the lab tests (marker `lab`).

`lab` (session): the running lab's inventory. A lab that is already up is reused as it is and
left up; when none is up, the fixture brings one up with 2 hosts and brings it down at the end
of the session (set LAB_KEEP=1 to keep it). Tests marked `lab_lifecycle` (which take the lab
down on purpose, then restore it) are moved to the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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
