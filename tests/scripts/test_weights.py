"""Weights scripts for real: verify on a real tree, hub download through stand-in CLIs (no
hub is reachable here; the stand-ins record argv, environment and what ps shows), and the
guarded delete."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from components.render.shell import (
    MANIFEST,
    DownloadSpec,
    weights_download,
    weights_ensure_dir,
    weights_verify,
    write_manifest,
)

from .conftest import LoopFactory, needs_root, needs_tools, run_script, write_exe

pytestmark = pytest.mark.scripts

TOKEN = "hf_SeCrEt_t0ken_4_test"
OWNER = "vllm-cluster/lab"


def make_model(root: Path) -> Path:
    model = root / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    for i in (1, 2):
        (model / f"model-0000{i}-of-00002.safetensors").write_bytes(bytes([i]) * (1000 * i))
    (model / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {"total_size": 3000},
                "weight_map": {
                    "a": "model-00001-of-00002.safetensors",
                    "b": "model-00002-of-00002.safetensors",
                },
            }
        )
    )
    (model / "tokenizer.json").write_text("{}")
    return model


@pytest.fixture(autouse=True)
def _python() -> None:
    needs_tools("python3")


def test_verify_complete_then_removed_and_short_files(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    write_manifest(str(model))
    script = weights_verify("lab-2", str(model), require_manifest=True)
    ok = run_script(script)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["files"] == 5
    assert summary["bytes"] == sum(p.stat().st_size for p in model.iterdir() if p.name != MANIFEST)
    assert summary["manifest"] is True

    (model / "model-00002-of-00002.safetensors").unlink()
    (model / "tokenizer.json").write_text("")
    bad = run_script(script)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert (
        "verify lab-2: missing file model-00002-of-00002.safetensors "
        "(named in model.safetensors.index.json)"
    ) in bad.stderr
    assert "verify lab-2: short file tokenizer.json: 0 bytes, manifest says 2" in bad.stderr


def fake_hf(bin_dir: Path, log: Path, fail_first: bool = False) -> None:
    """Stands in for `hf download`: records argv/env/ps, writes a small model."""
    write_exe(
        bin_dir / "hf",
        f"""#!/bin/bash
set -eu
log={log}
printf 'argv:%s\\n' "$*" >>"$log"
printf 'env_token:%s\\n' "${{HF_TOKEN:-}}" >>"$log"
printf 'env_endpoint:%s\\n' "${{HF_ENDPOINT:-}}" >>"$log"
ps -eo args >>"$log.ps"
if [ {1 if fail_first else 0} = 1 ] && [ ! -e "$log.failed" ]; then
  touch "$log.failed"; echo "simulated network error" >&2; exit 1
fi
dir=""
while [ $# -gt 0 ]; do [ "$1" = --local-dir ] && dir=$2; shift; done
mkdir -p "$dir/.cache/huggingface"
echo '{{"model_type":"llama"}}' >"$dir/config.json"
head -c 5000 /dev/zero >"$dir/model.safetensors"
echo lock >"$dir/.cache/huggingface/x.lock"
""",
    )


def test_hf_download_token_stays_off_command_lines(fake_bin: Path, tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    fake_hf(fake_bin, log, fail_first=True)
    path = tmp_path / "data" / "models" / "tiny"
    script = weights_download(
        DownloadSpec(
            host="lab-1",
            source="huggingface",
            model_id="org/tiny-llama",
            revision="main",
            path=str(path),
            endpoint="http://127.0.0.1:9/hf",
            token="stdin",
            attempts=2,
            retry_delay_s=0,
            owner=OWNER,
            state_dir=str(tmp_path / "state"),
        )
    )
    assert TOKEN not in script
    proc = run_script(script, stdin=TOKEN + "\n", path_prefix=fake_bin)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["manifest"] is True
    assert summary["files"] == 2  # .cache is not part of the model
    assert "download attempt 1/2 failed" in proc.stderr
    lines = log.read_text().splitlines()
    argv = f"argv:download org/tiny-llama --local-dir {path} --revision main"
    assert lines.count(argv) == 2
    assert f"env_token:{TOKEN}" in lines
    assert "env_endpoint:http://127.0.0.1:9/hf" in lines
    assert TOKEN not in Path(f"{log}.ps").read_text()  # not in any process's argv
    assert TOKEN not in proc.stderr
    assert (path / MANIFEST).exists()

    again = run_script(script, stdin=TOKEN + "\n", path_prefix=fake_bin)
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stderr
    assert len([ln for ln in log.read_text().splitlines() if ln.startswith("argv:")]) == 2

    # Another revision is another download.
    other = weights_download(
        DownloadSpec(
            "lab-1",
            "huggingface",
            "org/tiny-llama",
            str(path),
            revision="v2",
            owner=OWNER,
            state_dir=str(tmp_path / "state"),
        )
    )
    third = run_script(other, path_prefix=fake_bin)
    assert third.returncode == 0, third.stderr
    tokens = [ln for ln in log.read_text().splitlines() if ln.startswith("env_token:")]
    assert tokens[-1] == "env_token:"  # no token given this time, none inherited


def test_modelscope_download_from_token_file(fake_bin: Path, tmp_path: Path) -> None:
    log = tmp_path / "ms.log"
    write_exe(
        fake_bin / "modelscope",
        f"""#!/bin/bash
printf 'argv:%s\\n' "$*" >>{log}
printf 'env_token:%s\\n' "${{MODELSCOPE_API_TOKEN:-}}" >>{log}
dir=""
while [ $# -gt 0 ]; do [ "$1" = --local_dir ] && dir=$2; shift; done
mkdir -p "$dir"
echo '{{}}' >"$dir/config.json"
head -c 100 /dev/zero >"$dir/model.safetensors"
""",
    )
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    spec = DownloadSpec(
        "lab-1",
        "modelscope",
        "Qwen/Qwen2.5-0.5B-Instruct",
        str(tmp_path / "m" / "qwen"),
        token="file",
        token_file=str(token_file),
        verify="sha256",
        manifest_sha256=True,
        owner=OWNER,
        state_dir=str(tmp_path / "state"),
    )
    loose = run_script(weights_download(spec), path_prefix=fake_bin)
    assert loose.returncode == 1
    assert "has mode 644. Fix: chmod 600" in loose.stderr
    token_file.chmod(0o600)
    proc = run_script(weights_download(spec), path_prefix=fake_bin)
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    assert f"argv:download --model Qwen/Qwen2.5-0.5B-Instruct --local_dir {tmp_path}/m/qwen" in text
    assert f"env_token:{TOKEN}" in text
    manifest = json.loads((tmp_path / "m" / "qwen" / MANIFEST).read_text())
    assert len(manifest["files"]["model.safetensors"]["sha256"]) == 64


def test_missing_cli_fails_at_once(tmp_path: Path) -> None:
    spec = DownloadSpec(
        "lab-1",
        "modelscope",
        "a/b",
        str(tmp_path / "m" / "x"),
        owner=OWNER,
        state_dir=str(tmp_path),
    )
    proc = run_script(weights_download(spec), env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert "modelscope not found. Fix: pip install -U modelscope" in proc.stderr


def test_nothing_is_written_under_a_data_mount_point_that_is_not_mounted(
    fake_bin: Path, tmp_path: Path, loop_device: LoopFactory
) -> None:
    """The data disk did not mount (at boot, say): the drift check finds the weights missing
    and the download runs again. It must stop, naming storage.mount_point, instead of filling
    the root disk under the empty directory; once the disk is mounted it proceeds."""
    needs_root()
    needs_tools("mountpoint", "mkfs.ext4")
    log = tmp_path / "cli.log"
    fake_hf(fake_bin, log)
    mp = tmp_path / "data01"
    path = mp / "models" / "tiny"
    script = weights_download(
        DownloadSpec(
            host="lab-1",
            source="huggingface",
            model_id="org/tiny-llama",
            path=str(path),
            retry_delay_s=0,
            owner=OWNER,
            state_dir=str(tmp_path / "state"),
            mount_point=str(mp),
        )
    )
    mp.mkdir()
    proc = run_script(script, path_prefix=fake_bin)
    assert proc.returncode == 1
    assert (
        f"{mp} (storage.mount_point of host lab-1) is not mounted: the data disk did not mount"
    ) in proc.stderr
    assert f"Fix: mount it (mount {mp}, see /etc/fstab)" in proc.stderr
    assert list(mp.iterdir()) == [] and not log.exists()  # nothing written, no CLI run

    dev = loop_device(64)
    subprocess.run(["mkfs.ext4", "-q", dev], check=True)
    subprocess.run(["mount", dev, str(mp)], check=True)
    proc = run_script(script, path_prefix=fake_bin)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"] == 2
    # The ensure-dir step (rsync and fan-out) takes the same guard.
    subprocess.run(["umount", str(mp)], check=True)
    ensure = weights_ensure_dir(
        "lab-1", str(path), OWNER, state_dir=str(tmp_path / "state"), mount_point=str(mp)
    )
    proc = run_script(ensure)
    assert proc.returncode == 1 and "is not mounted" in proc.stderr
    assert list(mp.iterdir()) == []
