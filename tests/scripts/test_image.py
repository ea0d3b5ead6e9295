"""The image step for real against this machine's Docker engine, with a tiny image made
locally (``docker import`` of a one-file tar; no registry is reachable here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.render.shell import (
    ImageLoadSpec,
    image_check,
    image_has_ray,
    image_load,
    image_present,
    tarball_image_id,
)

from .conftest import needs_root, run_script

pytestmark = pytest.mark.scripts


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def saved_image(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(name:tag, tarball made by docker save); the image is removed afterwards."""
    needs_root()
    if shutil.which("docker") is None or docker("version", check=False).returncode != 0:
        pytest.skip("no Docker engine answering (start it with tools/ensure-docker.sh)")
    name = f"vllm-cluster-test/shell-image:{uuid.uuid4().hex[:12]}"
    src = tmp_path / "rootfs.tar"
    payload = tmp_path / "hello.txt"
    payload.write_text(name)
    with tarfile.open(src, "w") as tar:
        tar.add(payload, arcname="hello.txt")
    docker("import", str(src), name)
    tarball = tmp_path / "image.tar"
    try:
        docker("save", "-o", str(tarball), name)
        yield name, tarball
    finally:
        docker("rmi", "-f", name, check=False)


def test_load_skipped_when_present_then_loaded_when_absent(
    saved_image: tuple[str, Path],
) -> None:
    name, tarball = saved_image
    image_id = tarball_image_id(tarball, name)
    assert docker("image", "inspect", "--format", "{{.Id}}", name).stdout.strip() == image_id

    script = image_load(ImageLoadSpec("lab-1", name, str(tarball), image_id=image_id))
    skipped = run_script(script)
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(skipped.stdout) == {"image": name, "id": image_id, "loaded": False}
    assert "skipping docker load" in skipped.stderr
    assert run_script(image_check("lab-1", name, image_id)).stdout == "present\n"

    docker("rmi", "-f", name)
    assert run_script(image_check("lab-1", name, image_id)).stdout == "absent\n"
    loaded = run_script(script)
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout) == {"image": name, "id": image_id, "loaded": True}
    assert docker("image", "inspect", "--format", "{{.Id}}", name).stdout.strip() == image_id


def test_id_read_from_the_tarball_on_the_host(saved_image: tuple[str, Path]) -> None:
    name, tarball = saved_image
    script = image_load(ImageLoadSpec("lab-1", name, str(tarball)))
    proc = run_script(script)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == tarball_image_id(tarball)
    assert json.loads(proc.stdout)["loaded"] is False


def test_missing_tarball_is_an_error_only_when_needed(
    saved_image: tuple[str, Path], tmp_path: Path
) -> None:
    name, tarball = saved_image
    image_id = tarball_image_id(tarball)
    missing = str(tmp_path / "not-copied.tar")
    ok = run_script(image_load(ImageLoadSpec("lab-1", name, missing, image_id=image_id)))
    assert ok.returncode == 0, ok.stderr  # present: the copy was rightly skipped
    docker("rmi", "-f", name)
    fail = run_script(image_load(ImageLoadSpec("lab-1", name, missing, image_id=image_id)))
    assert fail.returncode == 1
    assert "not-copied.tar not found" in fail.stderr


def test_present_check_fails_when_the_image_is_gone_or_another(
    saved_image: tuple[str, Path],
) -> None:
    """The drift check behind `<host>-image-check`: 0 when in place, 1 naming the cause."""
    name, tarball = saved_image
    image_id = tarball_image_id(tarball, name)
    assert run_script(image_present("lab-1", name, image_id)).returncode == 0
    assert run_script(image_present("lab-1", name)).returncode == 0
    other = "sha256:" + "0" * 64
    wrong = run_script(image_present("lab-1", name, other))
    # the cause, on a progress line naming the host and the step
    assert wrong.returncode == 1
    assert f"[lab-1] image: {name} is {image_id}, not {other}" in wrong.stderr
    docker("rmi", "-f", name)
    gone = run_script(image_present("lab-1", name, image_id))
    assert gone.returncode == 1 and f"[lab-1] image: {name} is missing" in gone.stderr


def test_ray_backend_refuses_an_image_without_ray(saved_image: tuple[str, Path]) -> None:
    """The image here has no Python, let alone Ray: the check fails, naming the setting and
    the fix, and leaves no container behind. (An image with Ray passes it in the lab e2e
    test of the Ray backend.)"""
    name, _ = saved_image
    before = docker("ps", "-aq").stdout.split()
    proc = run_script(image_has_ray("lab-1", name))
    assert proc.returncode == 1
    assert f"image.name: {name} has no Ray, which serving.distributed_backend: ray needs" in (
        proc.stderr
    )
    assert "Fix: set serving.distributed_backend: mp" in proc.stderr
    assert f"[lab-1] image: {name} cannot import Ray" in proc.stderr
    assert docker("ps", "-aq").stdout.split() == before
