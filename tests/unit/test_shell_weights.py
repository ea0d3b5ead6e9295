"""Weights helpers that run on the operator machine: manifest, verify, rsync argv."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from components.render.shell import (
    MANIFEST,
    DownloadSpec,
    SshEndpoint,
    build_manifest,
    rsync_argv,
    ssh_options,
    verify_dir,
    weights_download,
    write_manifest,
)
from components.render.shell.weights import SSH_CIPHERS, _rsync_e_word
from components.render.ssh import Bastion, SshTarget


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


@pytest.mark.parametrize(
    ("jump", "port", "dest"),
    [
        ("j@1.2.3.4:2200", "2200", "j@1.2.3.4"),
        ("j@bastion.example", "22", "j@bastion.example"),
        ("bastion.example", "22", "root@bastion.example"),
        ("j@[fd00::1]:2200", "2200", "j@fd00::1"),
        ("j@[fd00::1]", "22", "j@fd00::1"),
        ("j@fd00::1", "22", "j@fd00::1"),
        # A link-local address with its zone: ssh would expand a single % as a token.
        ("j@[fe80::1%eth0]:22", "22", "j@fe80::1%%eth0"),
    ],
)
def test_the_bastion_hop_connects_to_the_bastions_address_and_port(
    jump: str, port: str, dest: str
) -> None:
    ep = SshEndpoint("10.0.0.2", known_hosts_file="/k/kh", proxy_jump=jump)
    proxy = ssh_options(ep)[-1].removeprefix("ProxyCommand=")
    words = shlex.split(proxy)
    assert words[words.index("-p") + 1] == port
    assert words[-1] == dest and words[-2] == "[%h]:%p"


def test_an_ipv6_bastion_is_written_so_its_port_is_not_read_as_part_of_the_address() -> None:
    target = SshTarget(
        "10.0.0.2", "root", 22, "/k/id", "/k/kh", bastion=Bastion("fd00::1", "jump", 2200)
    )
    proxy = ssh_options(target.endpoint())[-1].removeprefix("ProxyCommand=")
    words = shlex.split(proxy)
    assert words[words.index("-p") + 1] == "2200" and words[-1] == "jump@fd00::1"


def test_literal_percent_signs_reach_ssh_as_percent_signs() -> None:
    """ssh expands %-tokens in a ProxyCommand: a literal % (here in a key file name) is
    doubled so that ssh hands back the name as written."""
    ep = SshEndpoint("10.0.0.2", key_file="/k/id%1", known_hosts_file="/k/kh%2", proxy_jump="j@b")
    proxy = ssh_options(ep)[-1].removeprefix("ProxyCommand=")
    assert "-i /k/id%%1" in proxy and "UserKnownHostsFile=/k/kh%%2" in proxy
    # Every other % is one of ssh's own tokens (the hop's %h and %p).
    assert "%" not in proxy.replace("%%", "").replace("%h", "").replace("%p", "")


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


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (SshEndpoint("-oProxyCommand=x", known_hosts_file="/k"), "ssh address is not a plain"),
        (SshEndpoint("-x", known_hosts_file="/k"), "ssh address is not a plain word: '-x'"),
        (SshEndpoint("h", "-l", known_hosts_file="/k"), "ssh user is not a plain word: '-l'"),
        (SshEndpoint("h", "a b", known_hosts_file="/k"), "ssh user is not a plain word"),
        (SshEndpoint("h", port=0, known_hosts_file="/k"), "ssh port out of range: 0"),
        (SshEndpoint("h", port=65536, known_hosts_file="/k"), "ssh port out of range: 65536"),
        (
            SshEndpoint("h", known_hosts_file="/k", proxy_jump="-oX=y"),
            "ssh bastion is not a plain word: '-oX=y'",
        ),
        (
            SshEndpoint("h", known_hosts_file="/k", proxy_jump="-x@b"),
            "ssh bastion is not a plain word: '-x@b'",
        ),
    ],
)
def test_ssh_words_that_could_be_read_as_options_are_refused(
    endpoint: SshEndpoint, message: str
) -> None:
    """Every word reaches ssh's command line: one starting with '-' would be an option."""
    with pytest.raises(ValueError) as info:
        ssh_options(endpoint)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("port", [1, 65535])
def test_ssh_ports_at_the_edges_are_accepted(port: int) -> None:
    assert ssh_options(SshEndpoint("h", port=port, known_hosts_file="/k"))[:2] == ["-p", str(port)]


def _dl(**kw: object) -> DownloadSpec:
    args: dict[str, object] = {
        "host": "n1",
        "source": "huggingface",
        "model_id": "org/m",
        "path": "/data01/m/x",
        "owner": "p/s",
    }
    args.update(kw)
    return DownloadSpec(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"endpoint": "http://h x"}, "model.hub_endpoint must be one word: 'http://h x'"),
        ({"endpoint": ""}, "model.hub_endpoint must be one word: ''"),
        ({"token": "env"}, "token must be none, stdin or file: 'env'"),
        ({"token": "file"}, "token='file' needs token_file"),
        ({"token": "file", "token_file": "rel/tok"}, "token_file"),
        ({"attempts": 0}, "attempts must be >= 1 and retry_delay_s >= 0"),
        ({"retry_delay_s": -1}, "attempts must be >= 1 and retry_delay_s >= 0"),
        ({"engine_image": "eng 1"}, "engine image must be one word: 'eng 1'"),
        ({"engine_image": ""}, "engine image must be one word: ''"),
    ],
)
def test_download_inputs_are_refused_by_name(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        weights_download(_dl(**kw))
    assert str(info.value).startswith(message), str(info.value)


def test_download_edges_are_accepted() -> None:
    assert weights_download(_dl(attempts=1, retry_delay_s=0, engine_image="eng:1"))
