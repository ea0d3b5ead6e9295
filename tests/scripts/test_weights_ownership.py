"""Weights deletion for real: only what this stack wrote goes, on real directories with other
people's files beside ours (model.keep_on_destroy: false).

Every write into the model path is wrapped in claim begin/end (the hub download does it
itself; the operator's rsync and the fan-out copy run weights_ensure_dir before and
weights_claim_end after), which record on the host, outside the model directory, what this
stack added. weights_delete removes only that."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.render.shell import (
    MANIFEST,
    DownloadSpec,
    weights_claim_end,
    weights_delete,
    weights_download,
    weights_ensure_dir,
    write_manifest,
)
from components.render.shell import _weights_tool as tool

from .conftest import needs_tools, run_script
from .test_weights import fake_hf, make_model

pytestmark = pytest.mark.scripts

OWNER = "vllm-cluster/lab"


@pytest.fixture(autouse=True)
def _python() -> None:
    needs_tools("python3")


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def foreign_files(shared: Path) -> dict[str, bytes]:
    """Another model and a note somebody keeps in the shared models directory."""
    other = shared / "other-model"
    other.mkdir(parents=True)
    (other / "config.json").write_text('{"model_type": "qwen2"}')
    (other / "model.safetensors").write_bytes(b"q" * 3000)
    (shared / "NOTES.txt").write_text("do not delete")
    (shared / "tokenizer.json").write_text('{"theirs": true}')  # same name as one of ours
    return tree(shared)


def download(fake_bin: Path, tmp_path: Path, path: Path, owner: str = OWNER) -> str:
    fake_hf(fake_bin, tmp_path / "cli.log")
    script = weights_download(
        DownloadSpec(
            "lab-1",
            "huggingface",
            "org/tiny-llama",
            str(path),
            owner=owner,
            state_dir=str(tmp_path / "state"),
        )
    )
    proc = run_script(script, path_prefix=fake_bin)
    assert proc.returncode == 0, proc.stderr
    return script


def delete(tmp_path: Path, path: Path, owner: str = OWNER) -> str:
    return weights_delete("lab-1", str(path), owner, state_dir=str(tmp_path / "state"))


def test_download_into_a_shared_directory_then_delete_keeps_every_foreign_file(
    fake_bin: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "data" / "models"
    before = foreign_files(shared)
    download(fake_bin, tmp_path, shared)
    assert (shared / "model.safetensors").exists() and (shared / MANIFEST).exists()
    # The verify manifest lists the whole directory; the ownership record only ours.
    record = json.loads(
        Path(tool.record_path(str(tmp_path / "state"), OWNER, str(shared))).read_text()
    )
    assert record["owner"] == OWNER and record["pending"] is None
    assert sorted(record["files"]) == [
        ".cache/huggingface/x.lock",
        ".vllm-cluster-download.json",
        MANIFEST,
        "config.json",
        "model.safetensors",
    ]
    assert record["created_dirs"] == []  # the shared directory was there before

    proc = run_script(delete(tmp_path, shared))
    assert proc.returncode == 0, proc.stderr
    assert "removed 5 file(s) that vllm-cluster/lab wrote" in proc.stderr
    assert tree(shared) == before  # every foreign file, byte for byte
    assert not (shared / ".cache").exists()  # a directory we made, now empty
    again = run_script(delete(tmp_path, shared))
    assert again.returncode == 0, again.stderr
    assert "no record of files written by vllm-cluster/lab" in again.stderr
    assert tree(shared) == before


def test_delete_removes_the_directories_it_created_once_empty(
    fake_bin: Path, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("keep")
    path = tmp_path / "data" / "new" / "tiny"
    download(fake_bin, tmp_path, path)
    late = tmp_path / "data" / "new" / "sibling.txt"  # written by somebody else afterwards
    late.write_text("theirs")
    proc = run_script(delete(tmp_path, path))
    assert proc.returncode == 0, proc.stderr
    assert not path.exists()
    assert late.read_text() == "theirs"  # so data/new stays
    assert "kept" in proc.stderr and "data/new/ (not empty)" in proc.stderr
    assert (tmp_path / "data" / "keep.txt").read_text() == "keep"


def test_a_file_added_later_or_changed_since_is_kept(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "data" / "tiny"
    download(fake_bin, tmp_path, path)
    (path / "mine-by-hand.txt").write_text("added by a person")
    (path / "config.json").write_text('{"model_type": "llama", "edited": "by hand"}')
    proc = run_script(delete(tmp_path, path))
    assert proc.returncode == 0, proc.stderr
    assert "kept config.json (changed since this stack wrote it)" in proc.stderr
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "mine-by-hand.txt"]


def test_no_record_deletes_nothing_even_with_a_manifest(tmp_path: Path) -> None:
    """The old delete trusted any manifest in the directory: a model directory somebody
    else completed (or copied, manifest included) was removed whole."""
    model = make_model(tmp_path / "data")
    write_manifest(str(model))
    before = tree(model)
    proc = run_script(delete(tmp_path, model))
    assert proc.returncode == 0, proc.stderr
    assert "deleting nothing" in proc.stderr
    assert tree(model) == before


def test_foreign_or_mismatched_record_is_refused(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "data" / "tiny"
    download(fake_bin, tmp_path, path)
    before = tree(path)
    rec_file = Path(tool.record_path(str(tmp_path / "state"), OWNER, str(path)))
    ours = rec_file.read_text()

    # Another stack's record, under our key (copied or planted): refused.
    rec = json.loads(ours)
    rec["owner"] = "vllm-cluster/other"
    rec_file.write_text(json.dumps(rec))
    proc = run_script(delete(tmp_path, path))
    assert proc.returncode == 1
    assert "refusing to delete anything" in proc.stderr
    assert "not 'vllm-cluster/lab'" in proc.stderr
    assert tree(path) == before

    # A record whose entries climb out of the directory: refused as a whole.
    rec = json.loads(ours)
    rec["files"]["../../escape.txt"] = 3
    rec_file.write_text(json.dumps(rec))
    proc = run_script(delete(tmp_path, path))
    assert proc.returncode == 1
    assert "does not match the ownership record format" in proc.stderr
    assert tree(path) == before

    # The path now resolves elsewhere (replaced by a link to another copy): refused.
    rec_file.write_text(ours)
    moved = tmp_path / "data" / "moved"
    path.rename(moved)
    path.symlink_to(moved)
    proc = run_script(delete(tmp_path, path))
    assert proc.returncode == 1
    assert f"now resolves to {moved}" in proc.stderr
    assert tree(moved) == before


def test_rsync_style_copy_records_only_what_it_added(tmp_path: Path) -> None:
    """The operator's rsync and the fan-out copy: claim begin, copy, claim end."""
    shared = tmp_path / "srv" / "models"
    before = foreign_files(shared)
    state = str(tmp_path / "state")
    begin = run_script(weights_ensure_dir("lab-1", str(shared), OWNER, state_dir=state))
    assert begin.returncode == 0, begin.stderr
    source = make_model(tmp_path / "local")
    shutil.copytree(source, shared, dirs_exist_ok=True)  # overwrites their tokenizer.json
    end = run_script(weights_claim_end("lab-1", str(shared), OWNER, state_dir=state))
    assert end.returncode == 0, end.stderr
    rec = json.loads(Path(tool.record_path(state, OWNER, str(shared))).read_text())
    assert "tokenizer.json" not in rec["files"]  # it was there before: never ours
    assert sorted(rec["files"]) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    proc = run_script(weights_delete("lab-1", str(shared), OWNER, state_dir=state))
    assert proc.returncode == 0, proc.stderr
    after = tree(shared)
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k != "tokenizer.json"} == {
        k: v for k, v in before.items() if k != "tokenizer.json"
    }


def test_an_interrupted_copy_is_kept_on_destroy_or_claimed_by_the_next_run(
    tmp_path: Path,
) -> None:
    state = str(tmp_path / "state")

    def begin(path: Path) -> None:
        proc = run_script(weights_ensure_dir("lab-1", str(path), OWNER, state_dir=state))
        assert proc.returncode == 0, proc.stderr

    # Destroyed after a copy stopped half-way: what it wrote is not recorded, so it stays.
    stopped = tmp_path / "data" / "stopped"
    begin(stopped)
    (stopped / "part-1.safetensors").write_bytes(b"1" * 100)
    proc = run_script(weights_delete("lab-1", str(stopped), OWNER, state_dir=state))
    assert proc.returncode == 0, proc.stderr
    assert "a fetch did not finish" in proc.stderr
    assert (stopped / "part-1.safetensors").exists()

    # The next up copies again: its begin keeps the first note, so both parts are ours.
    resumed = tmp_path / "data" / "resumed"
    begin(resumed)
    (resumed / "part-1.safetensors").write_bytes(b"1" * 100)
    begin(resumed)
    (resumed / "part-2.safetensors").write_bytes(b"2" * 100)
    end = run_script(weights_claim_end("lab-1", str(resumed), OWNER, state_dir=state))
    assert end.returncode == 0, end.stderr
    proc = run_script(weights_delete("lab-1", str(resumed), OWNER, state_dir=state))
    assert proc.returncode == 0, proc.stderr
    assert not resumed.exists()


@pytest.mark.parametrize(
    "path",
    ["/usr/share/models", "/var/lib/models", "/etc/models", "/home/alice", "/root", "/lib64/x"],
)
def test_system_directories_are_refused_by_the_renderer(path: str) -> None:
    with pytest.raises(ValueError, match=r"model\.path"):
        weights_delete("lab-1", path, OWNER)


def test_system_directories_are_refused_on_the_host(tmp_path: Path) -> None:
    """Defence in depth: the tool itself, called with a system path, or with a record whose
    path resolves into one, deletes nothing."""
    tool_py = Path(tool.__file__)
    state = tmp_path / "state"
    for path in ("/usr/share/doc", "/var/lib/dpkg", "/home/nobody", "/"):
        proc = run_script(
            f"python3 {tool_py} release {path} --owner {OWNER} --state-dir {state} --host lab-1"
        )
        assert proc.returncode == 1, path
        assert "refusing to delete anything" in proc.stderr
    # A link in a data directory that points into /usr, with a record claiming it.
    link = tmp_path / "data" / "link"
    link.parent.mkdir()
    link.symlink_to("/usr/share/doc")
    rec: dict[str, object] = {
        "format": tool.OWNER_FORMAT,
        "owner": OWNER,
        "path": str(link),
        "real_path": "/usr/share/doc",
        "created_dirs": [],
        "dirs": [],
        "files": {"x": 1},
        "pending": None,
    }
    rec_file = Path(tool.record_path(str(state), OWNER, str(link)))
    rec_file.parent.mkdir(parents=True)
    rec_file.write_text(json.dumps(rec))
    proc = run_script(weights_delete("lab-1", str(link), OWNER, state_dir=str(state)))
    assert proc.returncode == 1
    assert "/usr/share/doc is inside /usr" in proc.stderr
    assert Path("/usr/share/doc").is_dir()


def test_a_model_path_in_a_new_top_level_directory_is_claimed(tmp_path: Path) -> None:
    """A fresh server has no /data: making /data/models/<m> is making a directory right under
    /, which is fine (the lab e2e caught the first version refusing it). Its release removes
    what it made, /data included, once empty."""
    top = Path(f"/vllm-cluster-claim-test-{tmp_path.name}")
    path = top / "models" / "m"
    tool_py = Path(tool.__file__)
    state = tmp_path / "state"
    assert not top.exists()
    try:
        begin = run_script(
            f"python3 {tool_py} claim-begin {path} --owner {OWNER} --state-dir {state} --host lab-1"
        )
        assert begin.returncode == 0, begin.stderr
        assert path.is_dir()
        (path / "model.safetensors").write_bytes(b"w" * 10)
        end = run_script(
            f"python3 {tool_py} claim-end {path} --owner {OWNER} --state-dir {state} --host lab-1"
        )
        assert end.returncode == 0, end.stderr
        release = run_script(weights_delete("lab-1", str(path), OWNER, state_dir=str(state)))
        assert release.returncode == 0, release.stderr
        assert not top.exists()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_model_path_under_a_link_into_a_system_tree_is_not_claimed(tmp_path: Path) -> None:
    link = tmp_path / "data"
    link.symlink_to("/usr/share")
    path = link / "models" / "m"
    proc = run_script(
        f"python3 {Path(tool.__file__)} claim-begin {path} --owner {OWNER} "
        f"--state-dir {tmp_path / 'state'} --host lab-1"
    )
    assert proc.returncode == 1
    assert "would be created as /usr/share/models/m" in proc.stderr
    assert not Path("/usr/share/models").exists()
