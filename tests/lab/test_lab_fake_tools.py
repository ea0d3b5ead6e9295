"""The lab's fake NVIDIA tools as plain programs (no lab needed): what they print for each
form deployment code uses, and how the hook and runtime treat a container bundle."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

IMAGE_DIR = Path(__file__).resolve().parents[2] / "lab" / "host" / "image"
MARKER = "SIMULATED (vllm-cluster lab)"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"lab_image_{name}", IMAGE_DIR / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve annotations through sys.modules: register before executing.
    sys.modules[f"lab_image_{name}"] = module
    spec.loader.exec_module(module)
    return module


smi = load("fake_nvidia_smi")
hook = load("fake_nvidia_hook")
runtime = load("fake_nvidia_runtime")


@pytest.fixture(autouse=True)
def _config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smi, "CONFIG_PATH", str(tmp_path / "gpus.json"))


def run_smi(config: dict[str, Any], tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    (tmp_path / "gpus.json").write_text(json.dumps(config))
    out: list[str] = []
    err: list[str] = []
    code = smi.run(list(argv), out.append, err.append)
    return code, "".join(out), "".join(err)


H20 = {
    "model": "NVIDIA H20",
    "count": 8,
    "memory_mib": 97871,
    "driver": "550.54.15",
    "cuda": "12.4",
    "host": "h",
}


def test_list_and_csv(tmp_path: Path) -> None:
    code, out, err = run_smi(H20, tmp_path, "-L")
    assert code == 0 and len(out.splitlines()) == 8 and MARKER in err
    assert out.splitlines()[7].startswith("GPU 7: NVIDIA H20 (UUID: GPU-")
    code, out, _ = run_smi(
        H20, tmp_path, "--query-gpu", "name,memory.total,compute_cap", "--format=csv,noheader"
    )
    assert out.splitlines() == ["NVIDIA H20, 97871 MiB, 9.0"] * 8
    code, out, _ = run_smi(H20, tmp_path, "--query-gpu=count", "--format=csv,noheader", "-i", "3")
    assert out == "1\n"


def test_uuids_are_stable_and_distinct(tmp_path: Path) -> None:
    _, a, _ = run_smi(H20, tmp_path, "--query-gpu=uuid", "--format=csv,noheader")
    _, b, _ = run_smi(H20, tmp_path, "--query-gpu=uuid", "--format=csv,noheader")
    _, c, _ = run_smi(
        {**H20, "host": "other"}, tmp_path, "--query-gpu=uuid", "--format=csv,noheader"
    )
    assert a == b and len(set(a.split())) == 8 and set(a.split()).isdisjoint(c.split())


def test_visible_devices_and_no_gpus(tmp_path: Path) -> None:
    _, out, _ = run_smi({**H20, "visible_devices": "2,5"}, tmp_path, "-L")
    assert [line.split(":")[0] for line in out.splitlines()] == ["GPU 0", "GPU 1"]
    code, out, _ = run_smi({**H20, "count": 0}, tmp_path, "-L")
    assert code == 6 and out == "No devices were found\n"
    code, _, err = run_smi({**H20, "visible_devices": "9"}, tmp_path, "-L")
    assert code == 9 and MARKER in err


def test_errors_like_the_real_tool(tmp_path: Path) -> None:
    code, _, err = run_smi(H20, tmp_path, "--query-gpu=nope", "--format=csv")
    assert code == 2 and 'Field "nope" is not a valid field to query.' in err
    code, _, err = run_smi(H20, tmp_path, "--query-gpu=name")
    assert code == 2
    code, _, err = run_smi(H20, tmp_path, "-q")
    assert code == 2 and MARKER in err
    (tmp_path / "gpus.json").unlink()
    err_lines: list[str] = []
    assert smi.run(["-L"], print, err_lines.append) == 9
    assert "NVIDIA-SMI has failed" in "".join(err_lines)


def make_bundle(tmp_path: Path, env: list[str], rootfs_links: dict[str, str]) -> Path:
    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    (rootfs / "usr").mkdir(parents=True)
    for name, target in rootfs_links.items():
        os.symlink(target, rootfs / name)
    config = {"root": {"path": "rootfs"}, "process": {"env": env}}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def test_hook_injects_nvidia_smi_and_narrowed_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gpus.json").write_text(json.dumps(H20))
    monkeypatch.setattr(hook, "GPUS_CONFIG", str(tmp_path / "gpus.json"))
    monkeypatch.setattr(hook, "NVIDIA_SMI", str(IMAGE_DIR / "fake_nvidia_smi.py"))
    # A hostile image: /etc is an absolute symlink that must not lead out of the rootfs.
    bundle = make_bundle(tmp_path, ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=0,1"], {"etc": "/tmp/x"})
    hook.prestart({"bundle": str(bundle)})
    rootfs = bundle / "rootfs"
    assert os.access(rootfs / "usr/bin/nvidia-smi", os.X_OK)
    injected = json.loads((rootfs / "tmp/x/lab/gpus.json").read_text())
    assert injected["visible_devices"] == "0,1" and injected["count"] == 8
    assert not (rootfs / "etc").resolve().exists(), "wrote outside the container's rootfs"


def test_hook_leaves_containers_without_gpus_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = make_bundle(tmp_path, ["NVIDIA_VISIBLE_DEVICES=void"], {})
    hook.prestart({"bundle": str(bundle)})
    assert not (bundle / "rootfs/usr/bin").exists()


def test_runtime_adds_the_hook_once(tmp_path: Path) -> None:
    config: dict[str, Any] = {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}
    assert runtime.add_hook(config, "/usr/bin/nvidia-container-runtime-hook")
    assert not runtime.add_hook(config, "/usr/bin/nvidia-container-runtime-hook")
    assert len(config["hooks"]["prestart"]) == 1
    assert not runtime.add_hook({"process": {"env": []}}, "/x")
    args = ["--root", "/run/r", "--log", "l.json", "create", "--bundle", "/b", "id1"]
    assert runtime.command_and_bundle(args) == ("create", "/b")
