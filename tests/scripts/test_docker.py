"""The Docker step for real on this machine: daemon.json merge with a temporary path and a
reload hook (the machine's own dockerd is never reloaded or restarted by these tests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import pytest

from components.render.shell import DockerSpec, docker_install

from .conftest import needs_root, needs_tools, run_script, sha256_file

pytestmark = pytest.mark.scripts


@pytest.fixture(autouse=True)
def _needs() -> None:
    needs_root()
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd not installed on this machine (tools/ensure-docker.sh installs it)")


def render(tmp_path: Path, tool: Literal["auto", "python3", "jq"], mirrors: tuple[str, ...]) -> str:
    return docker_install(
        DockerSpec(
            host="lab-1",
            registry_mirrors=mirrors,
            daemon_json=str(tmp_path / "docker" / "daemon.json"),
            reload_command=f"echo reload >> {tmp_path / 'reloads'}",
            json_tool=tool,
        )
    )


def reloads(tmp_path: Path) -> int:
    path = tmp_path / "reloads"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("tool", ["python3", "jq"])
def test_merge_keeps_other_keys_and_reloads_only_on_change(
    tmp_path: Path, tool: Literal["python3", "jq"]
) -> None:
    needs_tools(tool)
    daemon = tmp_path / "docker" / "daemon.json"
    daemon.parent.mkdir()
    original = {
        "log-driver": "json-file",
        "log-opts": {"max-size": "100m"},
        "registry-mirrors": ["https://a.example"],
        "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
    }
    daemon.write_text(json.dumps(original, indent=4))
    daemon.chmod(0o600)
    script = render(tmp_path, tool, ("https://b.example", "https://a.example"))

    first = run_script(script)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["daemon_json"] == "changed"
    assert out["reloaded"] is True
    assert out["installed"] is False
    assert reloads(tmp_path) == 1
    merged = json.loads(daemon.read_text())
    assert merged["registry-mirrors"] == ["https://a.example", "https://b.example"]
    for key in ("log-driver", "log-opts", "runtimes"):
        assert merged[key] == original[key]
    assert daemon.stat().st_mode & 0o777 == 0o600  # mode kept
    digest = sha256_file(daemon)

    second = run_script(script)
    assert second.returncode == 0, second.stderr
    out2 = json.loads(second.stdout)
    assert out2["daemon_json"] == "unchanged"
    assert out2["reloaded"] is False
    assert reloads(tmp_path) == 1  # no second reload
    assert sha256_file(daemon) == digest  # not rewritten
    assert "[lab-1] docker: docker present" in second.stderr


def test_missing_file_is_created(tmp_path: Path) -> None:
    proc = run_script(render(tmp_path, "auto", ("https://m.example",)))
    assert proc.returncode == 0, proc.stderr
    daemon = tmp_path / "docker" / "daemon.json"
    assert json.loads(daemon.read_text()) == {"registry-mirrors": ["https://m.example"]}
    assert reloads(tmp_path) == 1


@pytest.mark.parametrize("tool", ["python3", "jq"])
def test_invalid_json_is_left_alone(tmp_path: Path, tool: Literal["python3", "jq"]) -> None:
    needs_tools(tool)
    daemon = tmp_path / "docker" / "daemon.json"
    daemon.parent.mkdir()
    daemon.write_text('{"log-driver": "json-file",,}')
    proc = run_script(render(tmp_path, tool, ("https://m.example",)))
    assert proc.returncode != 0
    assert "not touching it" in proc.stderr
    assert daemon.read_text() == '{"log-driver": "json-file",,}'
    assert reloads(tmp_path) == 0


def test_no_mirrors_touches_nothing(tmp_path: Path) -> None:
    proc = run_script(render(tmp_path, "auto", ()))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["daemon_json"] == "untouched"
    assert not (tmp_path / "docker").exists()
