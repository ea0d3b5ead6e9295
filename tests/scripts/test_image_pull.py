"""The registry path of the image step (image_pull: no image.tarball) against this machine's
Docker engine. No registry is reachable here, so `docker pull` alone is a stand-in: it
fails as many times as a test asks, then "pulls" by loading a `docker save` tarball into
the real engine. Every other docker call (image inspect) is the real CLI; `sleep` is a
stand-in that records the backoff instead of waiting it out."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from components.render.shell import image_pull, tarball_image_id

from .conftest import run_script, write_exe
from .test_image import docker, saved_image  # noqa: F401  (fixture)

pytestmark = pytest.mark.scripts


def stand_ins(fake_bin: Path, tmp: Path, tarball: Path, fail_pulls: int) -> Path:
    real = shutil.which("docker")
    assert real is not None
    state = tmp / "pull-state"
    state.mkdir()
    write_exe(
        fake_bin / "docker",
        "#!/bin/bash\n"
        'if [ "$1" = pull ]; then\n'
        f'  echo "$2" >>{shlex.quote(str(state / "pulls"))}\n'
        f"  n=$(wc -l <{shlex.quote(str(state / 'pulls'))})\n"
        f'  if [ "$n" -le {fail_pulls} ]; then\n'
        '    echo "stand-in: registry unreachable" >&2; exit 1\n'
        "  fi\n"
        f"  exec {shlex.quote(real)} load -i {shlex.quote(str(tarball))}\n"
        "fi\n"
        f'exec {shlex.quote(real)} "$@"\n',
    )
    write_exe(fake_bin / "sleep", f'#!/bin/sh\necho "$1" >>{shlex.quote(str(state / "sleeps"))}\n')
    return state


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_present_image_is_not_pulled(
    saved_image: tuple[str, Path],  # noqa: F811
    fake_bin: Path,
    tmp_path: Path,
) -> None:
    name, tarball = saved_image
    state = stand_ins(fake_bin, tmp_path, tarball, fail_pulls=0)
    proc = run_script(image_pull("n1", name), path_prefix=fake_bin)
    assert proc.returncode == 0, proc.stderr
    assert lines(state / "pulls") == []
    assert json.loads(proc.stdout) == {
        "image": name,
        "id": tarball_image_id(tarball, name),
        "pulled": False,
    }


def test_absent_image_is_pulled_after_a_failed_attempt(
    saved_image: tuple[str, Path],  # noqa: F811
    fake_bin: Path,
    tmp_path: Path,
) -> None:
    name, tarball = saved_image
    docker("rmi", "-f", name)
    state = stand_ins(fake_bin, tmp_path, tarball, fail_pulls=1)
    image_id = tarball_image_id(tarball, name)
    proc = run_script(image_pull("n1", name, image_id), path_prefix=fake_bin)
    assert proc.returncode == 0, proc.stderr
    assert lines(state / "pulls") == [name, name]
    assert lines(state / "sleeps") == ["10"]
    assert "[n1] image: pull failed (attempt 1/3); retrying in 10 s" in proc.stderr
    assert json.loads(proc.stdout) == {"image": name, "id": image_id, "pulled": True}


def test_pull_gives_up_after_three_attempts_naming_the_fix(
    saved_image: tuple[str, Path],  # noqa: F811
    fake_bin: Path,
    tmp_path: Path,
) -> None:
    name, tarball = saved_image
    docker("rmi", "-f", name)
    state = stand_ins(fake_bin, tmp_path, tarball, fail_pulls=99)
    proc = run_script(image_pull("n1", name), path_prefix=fake_bin)
    assert proc.returncode == 1
    assert lines(state / "pulls") == [name] * 3
    assert lines(state / "sleeps") == ["10", "20"]
    assert f"[n1] image: error: docker pull {name} failed 3 times" in proc.stderr
    assert "image.tarball" in proc.stderr


def test_a_pulled_image_with_another_id_is_refused(
    saved_image: tuple[str, Path],  # noqa: F811
    fake_bin: Path,
    tmp_path: Path,
) -> None:
    name, tarball = saved_image
    docker("rmi", "-f", name)
    stand_ins(fake_bin, tmp_path, tarball, fail_pulls=0)
    other = "sha256:" + "cd" * 32
    proc = run_script(image_pull("n1", name, other), path_prefix=fake_bin)
    assert proc.returncode == 1
    assert f"expected {other}" in proc.stderr


def test_a_present_image_with_another_id_is_pulled_again(
    saved_image: tuple[str, Path],  # noqa: F811
    fake_bin: Path,
    tmp_path: Path,
) -> None:
    """The tag moved on the registry: the host's older image is not taken for it."""
    name, tarball = saved_image
    state = stand_ins(fake_bin, tmp_path, tarball, fail_pulls=0)
    proc = run_script(image_pull("n1", name, "sha256:" + "cd" * 32), path_prefix=fake_bin)
    assert lines(state / "pulls") == [name]
    assert proc.returncode == 1  # the stand-in registry still has the old image
