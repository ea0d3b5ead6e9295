"""The image step the program runs (`image_stream_load`: operator-side, streams the tarball
over SSH into `docker load`), for real against this machine's Docker engine.

The "host" is this machine: a stand-in `ssh` first on PATH checks that it was called with
the target's own options, records what it was asked to run and how many bytes it carried
on stdin, and runs the command here as sshd would (its words joined, through the shell).
So the test sees every byte that would cross the network: with the same image ID on the
host nothing but the check scripts goes over, and with another image exactly one stream of
the whole tarball goes to `docker load`. Images are tiny (`docker import` of a one-file
tar; no registry is reachable) and removed afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.render.deployment import image_stream_load
from components.render.shell import tarball_image_id
from components.render.ssh import SshTarget

from .conftest import needs_root, run_script, write_exe

pytestmark = pytest.mark.scripts

TARGET = SshTarget(
    address="192.0.2.10",  # TEST-NET-1: never reached, the stand-in ssh runs everything here
    user="root",
    port=2222,
    private_key_file="/nonexistent/id_ed25519",
    known_hosts_file="/nonexistent/known_hosts",
)

FAKE_SSH = f"""#!{sys.executable}
import json, subprocess, sys
from pathlib import Path

here = Path(__file__).parent
prefix = json.loads((here / "ssh.prefix").read_text())
argv = sys.argv[1:]
if argv[: len(prefix)] != prefix:
    sys.exit(f"fake ssh: not the target's options: {{argv!r}}")
command = " ".join(argv[len(prefix) :])  # as sshd: the words joined, run by the shell
data = sys.stdin.buffer.read()
with open(here / "ssh.log", "a") as log:
    log.write(json.dumps({{"command": command, "bytes": len(data)}}) + "\\n")
sys.exit(subprocess.run(["bash", "-c", command], input=data).returncode)
"""


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def image_id_of(ref: str) -> str:
    """The ID `ref` names on this machine's engine ('' when absent)."""
    out = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


@dataclass
class Images:
    name: str
    """name:tag the step loads."""
    tarball: Path
    """`docker save` of `wanted`, tagged `name`."""
    wanted: str
    """The image ID in the tarball."""
    other: str
    """Another image's ID (different content), not tagged."""

    def tag(self, image_id: str) -> None:
        docker("tag", image_id, self.name)


@pytest.fixture
def images(tmp_path: Path) -> Iterator[Images]:
    """Two tiny images: `wanted` (saved to a tarball under `name`) and `other`; neither is
    tagged `name` when the test starts. Both are removed afterwards."""
    needs_root()
    if shutil.which("docker") is None or docker("version", check=False).returncode != 0:
        pytest.skip("no Docker engine answering (start it with tools/ensure-docker.sh)")
    name = f"vllm-cluster-test/stream-image:{uuid.uuid4().hex[:12]}"
    ids: list[str] = []
    try:
        for which in ("wanted", "other"):
            payload = tmp_path / f"{which}.txt"
            payload.write_text(f"{name} {which}\n")
            src = tmp_path / f"{which}-rootfs.tar"
            with tarfile.open(src, "w") as tar:
                tar.add(payload, arcname="hello.txt")
            ids.append(docker("import", str(src), f"{name}-{which}").stdout.strip())
        tarball = tmp_path / "image.tar"
        docker("tag", ids[0], name)
        docker("save", "-o", str(tarball), name)
        docker("rmi", name)  # untags only: both images keep their -wanted/-other tags
        assert tarball_image_id(tarball, name) == ids[0]
        assert image_id_of(name) == ""
        yield Images(name, tarball, wanted=ids[0], other=ids[1])
    finally:
        for ref in (name, f"{name}-wanted", f"{name}-other", *ids):
            docker("rmi", "-f", ref, check=False)


@pytest.fixture
def ssh_bin(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    write_exe(d / "ssh", FAKE_SSH)
    (d / "ssh.prefix").write_text(json.dumps(TARGET.ssh_command()[1:]))
    return d


Calls = list[dict[str, object]]


def run_step(
    images: Images, ssh_bin: Path, image_id: str | None = None
) -> tuple[subprocess.CompletedProcess[str], Calls]:
    """Run the rendered step; returns it and what went over ssh (one entry per connection)."""
    log = ssh_bin / "ssh.log"
    log.unlink(missing_ok=True)
    script = image_stream_load(
        TARGET, "lab-1", images.name, image_id or images.wanted, str(images.tarball)
    )
    proc = run_script(script, path_prefix=ssh_bin, timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def loads(calls: Calls) -> Calls:
    return [c for c in calls if c["command"] == "docker load"]


def test_same_image_id_on_the_host_streams_nothing(images: Images, ssh_bin: Path) -> None:
    images.tag(images.wanted)
    proc, calls = run_step(images, ssh_bin)
    assert proc.returncode == 0, proc.stderr
    assert loads(calls) == []
    # Only the read-only check crossed: one connection, carrying the check script alone.
    assert [c["command"] for c in calls] == ["bash -s"]
    assert int(str(calls[0]["bytes"])) < 4096 < images.tarball.stat().st_size
    assert "already loaded, nothing copied" in proc.stderr
    assert image_id_of(images.name) == images.wanted


@pytest.mark.parametrize("on_host", ["other-image", "absent"])
def test_another_image_is_streamed_once_then_present(
    images: Images, ssh_bin: Path, on_host: str
) -> None:
    """The host has the name under another image ID (or not at all): exactly one stream of
    the whole tarball into `docker load`, the image is there afterwards, and running the
    step again streams nothing."""
    if on_host == "other-image":
        images.tag(images.other)
        assert image_id_of(images.name) == images.other
    proc, calls = run_step(images, ssh_bin)
    assert proc.returncode == 0, proc.stderr
    assert loads(calls) == [{"command": "docker load", "bytes": images.tarball.stat().st_size}]
    assert [c["command"] for c in calls] == ["bash -s", "docker load", "bash -s"]
    assert "image: streaming" in proc.stderr
    assert image_id_of(images.name) == images.wanted

    proc, again = run_step(images, ssh_bin)
    assert proc.returncode == 0, proc.stderr
    assert loads(again) == []
    assert "already loaded, nothing copied" in proc.stderr


def test_a_load_that_does_not_give_the_expected_id_fails(images: Images, ssh_bin: Path) -> None:
    """The tarball holds another image than the expected ID (a stale tarball): the step
    streams it once, sees the host still lacks that ID, and fails saying so."""
    proc, calls = run_step(images, ssh_bin, image_id=images.other)
    assert proc.returncode == 1
    assert len(loads(calls)) == 1
    assert f"image: {images.name} is not {images.other} after loading" in proc.stderr
