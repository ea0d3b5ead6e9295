"""`pulumi preview --stack h20` on a machine that cannot reach the manual's hosts: it shows
the memory plan and the whole resource graph, and touches nothing.

The preview runs in a fresh network namespace with only loopback up (`unshare -n`), so it is
proven not to need 192.168.0.2/.3 — and cannot send them a single packet.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.lab_stack import REPO
from tests.e2e.pulumi_cli import temporary_stack

pytestmark = pytest.mark.e2e


def operator_home(tmp_path: Path) -> Path:
    """A HOME with the files Pulumi.h20.yaml names: ~/.ssh/id_ed25519 and a known_hosts
    pinning both H20 hosts (keys made here: the hosts are never contacted)."""
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    key = ssh / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = " ".join(key.with_suffix(".pub").read_text().split()[:2])
    (ssh / "known_hosts").write_text(f"192.168.0.2 {pub}\n192.168.0.3 {pub}\n")
    return tmp_path / "home"


def test_h20_preview_offline_shows_plan_and_graph(
    tmp_path: Path, toolchain_env: dict[str, str]
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is missing")
    env = {**toolchain_env, "HOME": str(operator_home(tmp_path))}
    doc = yaml.safe_load((REPO / "Pulumi.h20.yaml").read_text())
    with temporary_stack(REPO, prefix="e2e-h20", env=env) as stack:
        (REPO / f"Pulumi.{stack.name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        stack.set_config("apiKey", "h20-preview-key", secret=True)
        preview = " ".join(
            [str(stack.pulumi), "preview", "--stack", stack.name, "--non-interactive", "--json"]
        )
        proc = subprocess.run(
            ["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {preview}"],
            cwd=REPO,
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        result: dict[str, Any] = json.loads(proc.stdout)
    steps = result["steps"]
    assert {s["op"] for s in steps} == {"create"}
    names = {s["urn"].split("::")[-1]: s["urn"].split("::")[-2] for s in steps}
    # Both hosts checked and given the image; weights fetched once, fanned out over the LAN.
    for host in ("h20-1", "h20-2"):
        assert names[host].endswith("vllm-cluster:index:GpuHost")
        assert f"{host}-preflight" in names and f"{host}-image-pull" in names
        assert f"{host}-image" in names and f"weights-{host}-fetch" in names
    # The manual's path: Ray, whose presence in the image is checked on the head first.
    assert names["serving"].endswith("vllm-cluster:index:RayVllmCluster")
    assert "h20-1-image-fit" in names and "h20-2-image-fit" not in names
    assert names["serving-head"].endswith("docker:index/container:Container")
    assert names["serving-worker-h20-2"].endswith("docker:index/container:Container")
    assert "serving-ready" in names

    # The plan is printed in the preview (and exported as the `plan` output on up).
    messages = " ".join(d.get("message", "") for d in result.get("diagnostics", []))
    assert "plan: TP 8 x PP 2 on 2 node(s)" in messages, messages
    assert "the manual's estimate: 805 GB -> 2 node(s)" in messages, messages

    head = next(s for s in steps if s["urn"].endswith("::serving-head"))
    script = head["newState"]["inputs"]["command"][1]
    assert "--served-model-name DeepSeek-R1" in script
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2" in script
    assert "--max-model-len 2048" in script and "--gpu-memory-utilization 0.9" in script
    assert "--trust-remote-code" in script and "/data01/deepseek-r1" in script
    assert "h20-preview-key" not in proc.stdout
