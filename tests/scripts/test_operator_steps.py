"""The operator-side steps render_deployment builds, run for real.

- Local weights: the fetch step (claim, rsync, manifest push, claim end) and the verify
  step, through a private sshd on 127.0.0.1 (tests/scripts/conftest.py) standing in for the
  host: the files arrive, the manifest lists them, verify passes, and the retention step
  (model.keep_on_destroy: false) removes only what the stack wrote.
- The Docker .deb copy, with a stand-in `ssh` that records what it is sent: nothing when
  the host has dockerd, exactly the .deb files otherwise, and a failure when a file cannot
  be read (never a silent partial copy).
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from components.plan.sizing import plan_from_settings
from components.render.deployment import Deployment, render_deployment
from components.render.operator_files import OperatorFiles
from components.render.shell import MANIFEST
from components.settings import load_settings
from tests.tiny_model import TINY_CONFIG

from .conftest import Sshd, needs_tools, run_script, sha256_file, write_exe

pytestmark = pytest.mark.scripts

OWNER = "vllm-cluster/op-steps"


def _render(tmp: Path, config: dict[str, Any], key: str, known_hosts: str) -> Deployment:
    settings = load_settings(config, {"apiKey": True}, base_dir=tmp)
    plan = plan_from_settings(settings, base_dir=tmp)
    files = OperatorFiles(
        private_key_file=key,
        known_hosts_file=known_hosts,
        host_keys={h.name: "unused-here" for h in settings.hosts},
    )
    return render_deployment(settings, plan, files, tmp, OWNER)


def _config(tmp: Path, *, address: str, port: int, key: str, known_hosts: str) -> dict[str, Any]:
    model = tmp / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_CONFIG))
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (model / "tokenizer.json").write_text('{"version": "1.0"}')
    return {
        "hosts": [
            {
                "name": "n1",
                "address": address,
                "port": port,
                "gpus": {"count": 1, "model": "NVIDIA H20", "memory_gib": 96},
            }
        ],
        "ssh": {"private_key_file": key, "known_hosts_file": known_hosts},
        "model": {
            "source": "local",
            "local_dir": "model",
            "path": str(tmp / "host" / "models" / "tiny"),
            "served_name": "tiny",
            "verify": "sha256",
            "keep_on_destroy": False,
        },
        "image": {"name": "eng:1"},
        "serving": {"max_model_len": 1024, "max_num_seqs": 4},
    }


def test_local_weights_are_copied_claimed_verified_and_removed_through_ssh(
    sshd: Sshd, tmp_path: Path
) -> None:
    needs_tools("rsync", "python3")
    key, kh = str(sshd.dir / "op"), str(sshd.dir / "known_hosts")
    config = _config(tmp_path, address="127.0.0.1", port=sshd.port, key=key, known_hosts=kh)
    dep = _render(tmp_path, config, key, kh)
    steps = dep.hosts[0].weights
    assert steps.fetch_local is not None
    dest = tmp_path / "host" / "models" / "tiny"
    (tmp_path / "host").mkdir()

    proc = run_script(steps.fetch_local)
    assert proc.returncode == 0, proc.stderr
    source = tmp_path / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert sha256_file(dest / name) == sha256_file(source / name), name
    # The manifest the fetch pushed names every file with its size and (verify: sha256)
    # its SHA-256.
    manifest = json.loads((dest / MANIFEST).read_text())
    text = json.dumps(manifest)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert name in text and sha256_file(source / name) in text, name

    ssh = shlex.join([*dep.hosts[0].ssh.ssh_command(), "bash", "-s"])
    verify = run_script(f"{ssh} <<'EOF'\n{steps.verify}\nEOF\n")
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout.strip().splitlines()[-1])["checked"] == "sha256"

    # A file changed on the host after the copy: verify (sha256) refuses it.
    (dest / "tokenizer.json").write_text('{"version": "2.0"}')
    assert run_script(f"{ssh} <<'EOF'\n{steps.verify}\nEOF\n").returncode != 0

    # Destroy with keep_on_destroy: false removes what the stack wrote, and only that.
    (dest / "operator-notes.txt").write_text("not the stack's")
    (retention,) = dep.retention
    assert retention.delete is not None
    gone = run_script(f"{ssh} <<'EOF'\n{retention.delete}\nEOF\n")
    assert gone.returncode == 0, gone.stderr
    assert not (dest / "model.safetensors").exists()
    assert (dest / "operator-notes.txt").read_text() == "not the stack's"


def _fake_ssh(bin_dir: Path, log: Path, *, dockerd: bool) -> None:
    """`ssh [options] destination command`: records each call's command and stdin."""
    write_exe(
        bin_dir / "ssh",
        "#!/bin/bash\n"
        f"log={shlex.quote(str(log))}\n"
        'n=$(ls "$log" | wc -l); mkdir -p "$log/$n"\n'
        'printf "%s\\n" "${@: -1}" >"$log/$n/command"\n'
        'cat >"$log/$n/stdin"\n'
        'if [ "${@: -1}" = "command -v dockerd >/dev/null 2>&1" ]; then exit '
        + ("0" if dockerd else "1")
        + "; fi\n",
    )


def _debs_config(tmp: Path) -> dict[str, Any]:
    (tmp / "id").write_text("key")
    (tmp / "kh").write_text("")
    config = _config(tmp, address="192.0.2.10", port=22, key="id", known_hosts="kh")
    config["docker"] = {"install": True, "deb_dir": "debs"}
    debs = tmp / "debs"
    debs.mkdir()
    (debs / "containerd_1.7_amd64.deb").write_bytes(b"containerd package")
    (debs / "docker.io_26.1_amd64.deb").write_bytes(b"docker package")
    (debs / "README").write_text("not a package")
    return config


def _run_deb_copy(
    tmp_path: Path, fake_bin: Path, *, dockerd: bool, lose: str | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Render the .deb copy step, optionally delete the .deb `lose` (gone between preview
    and up), run it with the recording ssh; (process, directory of recorded calls)."""
    dep = _render(tmp_path, _debs_config(tmp_path), "id", "kh")
    script = dep.hosts[0].scripts.deb_copy_local
    assert script is not None
    if lose:
        (tmp_path / "debs" / lose).unlink()
    log = tmp_path / "ssh-log"
    log.mkdir()
    _fake_ssh(fake_bin, log, dockerd=dockerd)
    return run_script(script, path_prefix=fake_bin), log


def test_deb_copy_sends_nothing_to_a_host_that_has_docker(tmp_path: Path, fake_bin: Path) -> None:
    proc, log = _run_deb_copy(tmp_path, fake_bin, dockerd=True)
    assert proc.returncode == 0, proc.stderr
    assert "[n1] docker: present, the .deb files are not sent" in proc.stderr
    assert sorted(p.name for p in log.iterdir()) == ["0"]  # only the check ran


def test_deb_copy_sends_exactly_the_deb_files_to_a_host_without_docker(
    tmp_path: Path, fake_bin: Path
) -> None:
    proc, log = _run_deb_copy(tmp_path, fake_bin, dockerd=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in log.iterdir()) == ["0", "1"]
    with tarfile.open(fileobj=io.BytesIO((log / "1" / "stdin").read_bytes())) as tar:
        sent = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert sent == {
        "containerd_1.7_amd64.deb": b"containerd package",
        "docker.io_26.1_amd64.deb": b"docker package",
    }
    # The host side installs only files with these checksums (run for real in
    # tests/scripts/test_docker_debs.py): the command carries both.
    command = (log / "1" / "command").read_text()
    assert command.startswith("bash -c ")
    for name in sent:
        assert sha256_file(tmp_path / "debs" / name) in command


def test_deb_copy_fails_when_a_deb_file_cannot_be_read(tmp_path: Path, fake_bin: Path) -> None:
    proc, _ = _run_deb_copy(tmp_path, fake_bin, dockerd=False, lose="docker.io_26.1_amd64.deb")
    assert proc.returncode != 0, "a partial .deb copy was reported as success"


def test_a_failed_copy_fails_the_local_weights_step(sshd: Sshd, tmp_path: Path) -> None:
    """rsync fails (the model directory went away after `preview`): the step fails there,
    before the manifest and the claim end are written as if the copy were complete."""
    needs_tools("rsync", "python3")
    key, kh = str(sshd.dir / "op"), str(sshd.dir / "known_hosts")
    config = _config(tmp_path, address="127.0.0.1", port=sshd.port, key=key, known_hosts=kh)
    dep = _render(tmp_path, config, key, kh)
    (tmp_path / "host").mkdir()
    (tmp_path / "model").rename(tmp_path / "model-moved")
    fetch = dep.hosts[0].weights.fetch_local
    assert fetch is not None
    proc = run_script(fetch)
    assert proc.returncode != 0
    assert not (tmp_path / "host" / "models" / "tiny" / MANIFEST).exists()
