"""Weights helpers that run on the operator machine: manifest, verify, rsync argv."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from components.render.shell import (
    MANIFEST,
    SshEndpoint,
    build_manifest,
    rsync_argv,
    ssh_options,
    verify_dir,
    write_manifest,
)
from components.render.shell.weights import SSH_CIPHERS, _rsync_e_word


def make_model(root: Path) -> Path:
    model = root / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "a.safetensors").write_bytes(b"A" * 100)
    (model / "b.safetensors").write_bytes(b"B" * 50)
    (model / "sub" / "tokenizer.json").write_text("{}")
    (model / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {"total_size": 150},
                "weight_map": {"x": "a.safetensors", "y": "b.safetensors"},
            }
        )
    )
    # Hub CLI caches and locks are not part of the model.
    (model / ".cache" / "huggingface").mkdir(parents=True)
    (model / ".cache" / "huggingface" / "lock").write_text("x")
    (model / ".gitattributes").write_text("x")
    return model


def test_build_manifest_sizes_and_sha(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    m = build_manifest(str(model))
    files = m["files"]
    assert isinstance(files, dict)
    assert sorted(files) == [
        "a.safetensors",
        "b.safetensors",
        "config.json",
        "model.safetensors.index.json",
        "sub/tokenizer.json",
    ]
    assert files["a.safetensors"] == {"size": 100}
    with_sha = build_manifest(str(model), sha256=True)["files"]
    assert isinstance(with_sha, dict)
    import hashlib

    assert with_sha["a.safetensors"]["sha256"] == hashlib.sha256(b"A" * 100).hexdigest()


def test_verify_complete_then_missing_short_and_sha(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    summary, problems = verify_dir(str(model))
    assert problems == []
    assert summary["manifest"] is False
    write_manifest(str(model), sha256=True)
    summary, problems = verify_dir(str(model), "sha256", require_manifest=True)
    assert problems == []
    assert summary["files"] == 5
    assert summary["bytes"] == sum(
        p.stat().st_size
        for p in model.rglob("*")
        if p.is_file() and ".cache" not in p.parts and not p.name.startswith(".")
    )
    assert len(str(summary["manifest_sha256"])) == 64

    (model / "b.safetensors").write_bytes(b"B" * 49)
    (model / "sub" / "tokenizer.json").unlink()
    _, problems = verify_dir(str(model))
    assert "short file b.safetensors: 49 bytes, manifest says 50" in problems
    assert "missing file sub/tokenizer.json (listed in the manifest)" in problems

    (model / "b.safetensors").write_bytes(b"C" * 50)
    _, problems = verify_dir(str(model), "sizes")
    assert not any("b.safetensors" in p for p in problems)
    _, problems = verify_dir(str(model), "sha256")
    assert "sha256 mismatch for b.safetensors" in problems


def test_verify_index_names_missing_shard_without_manifest(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    (model / "a.safetensors").unlink()
    _, problems = verify_dir(str(model))
    assert problems == ["missing file a.safetensors (named in model.safetensors.index.json)"]
    _, problems = verify_dir(str(model), require_manifest=True)
    assert any(MANIFEST in p for p in problems)


def test_verify_without_config_or_weights(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    _, problems = verify_dir(str(tmp_path / "m"))
    assert "missing file config.json" in problems
    assert any("no weight files" in p for p in problems)
    _, problems = verify_dir(str(tmp_path / "absent"))
    assert problems == [f"directory {tmp_path / 'absent'} does not exist"]


def test_ssh_options_pin_and_batch() -> None:
    ep = SshEndpoint(
        "192.168.0.2",
        port=2222,
        key_file="/k/id",
        known_hosts_file="/k/kh",
        proxy_jump="j@1.2.3.4:22",
    )
    opts = ssh_options(ep)
    assert opts[:4] == ["-i", "/k/id", "-o", "IdentitiesOnly=yes"]
    joined = " ".join(opts)
    for want in (
        "-p 2222",
        "-o BatchMode=yes",
        "-o StrictHostKeyChecking=yes",
        "-o UserKnownHostsFile=/k/kh",
        "-o ConnectTimeout=10",
    ):
        assert want in joined
    # The bastion hop: a ProxyCommand with the same key and pinned known_hosts, not -J.
    assert "-J" not in opts
    assert opts[-2] == "-o"
    assert opts[-1] == (
        "ProxyCommand=ssh -i /k/id -o IdentitiesOnly=yes -p 22 -o BatchMode=yes"
        " -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/k/kh -o ConnectTimeout=10"
        " -W '[%h]:%p' j@1.2.3.4"
    )
    with pytest.raises(ValueError, match="known_hosts"):
        ssh_options(SshEndpoint("h"))
    with pytest.raises(ValueError, match="plain word"):
        ssh_options(SshEndpoint("-oProxyCommand=x", known_hosts_file="/kh"))


def test_rsync_argv_exact() -> None:
    ep = SshEndpoint("192.168.0.2", key_file="/home/op/.ssh/id ed", known_hosts_file="/kh")
    argv = rsync_argv("./models/x/", ep, "/data01/x")
    assert argv == [
        "rsync",
        "-a",
        "--partial",
        "--info=progress2",
        "--protect-args",
        "-e",
        "ssh -i '/home/op/.ssh/id ed' -o IdentitiesOnly=yes -p 22 -o BatchMode=yes"
        " -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/kh -o ConnectTimeout=10"
        " -o ServerAliveInterval=30 -o Ciphers=" + SSH_CIPHERS,
        "./models/x/",
        "root@192.168.0.2:/data01/x/",
    ]
    # rsync splits -e like a shell without backslashes: the key path stays one word.
    assert shlex.split(argv[6])[2] == "/home/op/.ssh/id ed"
    v6 = rsync_argv("/m", SshEndpoint("fd00::2", known_hosts_file="/kh"), "/data/m")
    assert v6[-1] == "root@[fd00::2]:/data/m/"
    with pytest.raises(ValueError):
        rsync_argv("/m", ep, "/data")


def test_rsync_e_word_quoting() -> None:
    assert _rsync_e_word("plain-word_1.2") == "plain-word_1.2"
    assert _rsync_e_word("a b") == "'a b'"
    assert _rsync_e_word("it's") == '"it\'s"'
    with pytest.raises(ValueError):
        _rsync_e_word("'\"")
