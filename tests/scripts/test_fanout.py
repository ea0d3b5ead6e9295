"""Fan-out between two directories on this machine through a private sshd on 127.0.0.1
(its own host key, config and authorized_keys in a temporary directory; the machine's
~/.ssh and any system sshd are not touched). The "source" and "target" hosts are both this
machine, reached as root@127.0.0.1:<port> by the operator and by the target's rsync."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from components.render.shell import (
    MANIFEST,
    FanoutSpec,
    fanout_driver,
    fanout_grant,
    fanout_keygen,
    fanout_pull,
    fanout_revoke,
    verify_dir,
    write_manifest,
)

from .conftest import Sshd, run_script, write_exe

pytestmark = pytest.mark.scripts


def make_source(root: Path) -> Path:
    model = root / "src" / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"\x01" * 300_000)
    (model / "sub" / "tokenizer.json").write_text("{}")
    write_manifest(str(model))
    return model


def spec_for(s: Sshd, src: Path, dst: Path) -> FanoutSpec:
    return FanoutSpec(
        source_host="src",
        target_host="dst",
        source_address="127.0.0.1",
        source_port=s.port,
        path=str(src),
        target_path=str(dst),
        marker="test-dst",
        from_address="127.0.0.1",
        authorized_keys=str(s.authorized_keys),
        host_key_files=(str(s.host_key_pub),),
        state_dir=str(s.dir / "state"),
    )


def test_driver_copies_verifies_and_revokes(sshd: Sshd, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    dst = tmp_path / "dst" / "model"
    before = sshd.authorized_keys.read_text()
    script = fanout_driver(spec_for(sshd, src, dst), sshd.endpoint, sshd.endpoint)
    proc = run_script(script, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["manifest"] is True
    assert verify_dir(str(dst), "sizes", require_manifest=True)[1] == []
    assert (dst / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (dst / MANIFEST).read_bytes() == (src / MANIFEST).read_bytes()
    assert sshd.authorized_keys.read_text() == before  # grant revoked
    assert not (sshd.dir / "state" / "test-dst").exists()  # temporary key removed
    assert "[dst] fanout: copying the weights from src" in proc.stderr
    # The pull really went through sshd with the temporary key (a second key was accepted).
    log = (sshd.dir / "sshd.log").read_text()
    accepted = {ln.split("ED25519 ")[-1] for ln in log.splitlines() if "Accepted publickey" in ln}
    assert len(accepted) == 2, log

    again = run_script(script, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "nothing to copy" in again.stderr
    assert sshd.authorized_keys.read_text() == before


def test_driver_revokes_on_failure(sshd: Sshd, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    (tmp_path / "dst").write_text("a file where the target's parent directory should be")
    before = sshd.authorized_keys.read_text()
    script = fanout_driver(
        spec_for(sshd, src, tmp_path / "dst" / "model"), sshd.endpoint, sshd.endpoint
    )
    proc = run_script(script, timeout=60)
    assert proc.returncode != 0
    assert sshd.authorized_keys.read_text() == before
    assert not (sshd.dir / "state" / "test-dst").exists()


@pytest.mark.parametrize("damage", ["short file", "no manifest"])
def test_driver_refuses_a_source_it_cannot_prove_complete(
    sshd: Sshd, tmp_path: Path, damage: str
) -> None:
    """A file shorter than the manifest says, or no manifest at all (a half-finished copy
    looks like a model without it): the driver grants nothing and copies nothing."""
    src = make_source(tmp_path)
    if damage == "short file":
        (src / "model.safetensors").write_bytes(b"short")
    else:
        (src / MANIFEST).unlink()
    before = sshd.authorized_keys.read_text()
    script = fanout_driver(
        spec_for(sshd, src, tmp_path / "dst" / "model"), sshd.endpoint, sshd.endpoint
    )
    proc = run_script(script, timeout=60)
    assert proc.returncode == 1
    assert "the weights on src are not complete" in proc.stderr
    assert sshd.authorized_keys.read_text() == before
    assert not (tmp_path / "dst").exists()


def test_host_scripts_step_by_step(sshd: Sshd, tmp_path: Path) -> None:
    """The wiring as separate remote commands: stdout of one is stdin of the next."""
    src = make_source(tmp_path)
    dst = tmp_path / "dst" / "model"
    spec = spec_for(sshd, src, dst)
    before = sshd.authorized_keys.read_text()

    key = run_script(fanout_keygen(spec))
    assert key.returncode == 0, key.stderr
    pub, server_cmd = key.stdout.strip().splitlines()
    assert pub.startswith("ssh-ed25519 ") and pub.endswith("vllm-cluster-fanout:test-dst")
    assert server_cmd.startswith("rsync --server --sender -")
    assert server_cmd.endswith(f" . {src}/")
    assert run_script(fanout_keygen(spec)).stdout == key.stdout  # reused: idempotent

    grant = run_script(fanout_grant(spec), stdin=key.stdout)
    assert grant.returncode == 0, grant.stderr
    granted = sshd.authorized_keys.read_text()
    line = granted.splitlines()[-1]
    assert line.startswith(f'command="{server_cmd}",restrict,from="127.0.0.1",expiry-time="'), line
    assert line.endswith(" vllm-cluster-fanout:test-dst")
    # Granting twice keeps one line.
    assert run_script(fanout_grant(spec), stdin=key.stdout).returncode == 0
    assert sshd.authorized_keys.read_text().count("vllm-cluster-fanout:test-dst") == 1
    assert sshd.authorized_keys.read_text().startswith(before)

    pull = run_script(fanout_pull(spec), stdin=grant.stdout)
    assert pull.returncode == 0, pull.stderr
    assert json.loads(pull.stdout)["files"] == 3

    bad = run_script(fanout_grant(spec), stdin=f"ssh-ed25519 AAAA; rm -rf /\n{server_cmd}\n")
    assert bad.returncode == 1
    assert "expected an ssh-ed25519 public key" in bad.stderr

    for _ in range(2):  # idempotent
        revoke = run_script(fanout_revoke(spec))
        assert revoke.returncode == 0, revoke.stderr
    assert sshd.authorized_keys.read_text() == before


def _granted(sshd: Sshd, tmp_path: Path) -> tuple[FanoutSpec, Path, Path, str]:
    """Keygen + grant (no pull yet): the spec, the source dir, the temporary key, and the
    forced server command."""
    src = make_source(tmp_path)
    spec = spec_for(sshd, src, tmp_path / "dst" / "model")
    key = run_script(fanout_keygen(spec))
    assert key.returncode == 0, key.stderr
    grant = run_script(fanout_grant(spec), stdin=key.stdout)
    assert grant.returncode == 0, grant.stderr
    lines = key.stdout.splitlines()
    return spec, src, sshd.dir / "state" / "test-dst" / "id_ed25519", lines[-1]


def _ssh_with(sshd: Sshd, key: Path, *extra: str) -> list[str]:
    assert sshd.endpoint.known_hosts_file
    return [
        "ssh",
        "-i",
        str(key),
        "-p",
        str(sshd.port),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={sshd.endpoint.known_hosts_file}",
        *extra,
    ]


def test_grant_key_runs_only_the_read_only_copy(sshd: Sshd, tmp_path: Path) -> None:
    """The temporary key is no shell: another command, another path, an upload, a port
    forward all get the forced rsync sender of the weights path, or nothing."""
    _spec, src, key, _cmd = _granted(sshd, tmp_path)
    ssh = _ssh_with(sshd, key)
    # Another command (`id`): sshd runs the forced rsync instead, which prints no uid.
    other = subprocess.run(
        [*ssh, "root@127.0.0.1", "id; echo SHELL-RAN"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "uid=" not in other.stdout and "SHELL-RAN" not in other.stdout, other.stdout
    # Another path (/etc/): what arrives is the weights, never /etc.
    outside = tmp_path / "outside"
    rsync_e = " ".join(ssh)
    etc = ["rsync", "-a", "--partial", "--info=progress2", "-e", rsync_e, "root@127.0.0.1:/etc/"]
    subprocess.run(
        [*etc, f"{outside}/"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert not (outside / "passwd").exists()
    assert not (outside / "hostname").exists()
    # A write to the source (the client as sender): refused, nothing created there.
    planted = tmp_path / "planted"
    planted.write_text("x")
    up = subprocess.run(
        ["rsync", "-a", "-e", rsync_e, str(planted), f"root@127.0.0.1:{src}/planted"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert up.returncode != 0
    assert not (src / "planted").exists()
    # No port forwarding (restrict).
    fwd = subprocess.run(
        [*ssh, "-o", "ExitOnForwardFailure=yes", "-N", "-L", "0:127.0.0.1:22", "root@127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert fwd.returncode != 0


def test_grant_key_works_only_from_the_target_address(sshd: Sshd, tmp_path: Path) -> None:
    _spec, src, key, _cmd = _granted(sshd, tmp_path)  # from="127.0.0.1"
    for bind, ok in (("127.0.0.2", False), ("127.0.0.1", True)):
        dest = tmp_path / f"from-{bind}"
        rsync_e = " ".join(_ssh_with(sshd, key, "-o", f"BindAddress={bind}"))
        proc = subprocess.run(
            ["rsync", "-a", "-e", rsync_e, f"root@127.0.0.1:{src}/", f"{dest}/"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (proc.returncode == 0) is ok, (bind, proc.stderr)
        assert (dest / "model.safetensors").exists() is ok


@pytest.mark.parametrize(
    "command",
    [
        "id",
        "rsync --server --sender -logDtpre.iLsfxCIvu . /etc/",
        "rsync --server -logDtpre.iLsfxCIvu . {src}/",  # receiver: writes to the source
        "rsync --server --sender -logDtprfmerge.iLsfxCIvu . {src}/",  # a filter argument
        "rsync --server --sender -logDtpre.iLsfxCIvu --log-file=/tmp/x . {src}/",
        "rsync  --server --sender -logDtpre.iLsfxCIvu . {src}/",
    ],
)
def test_grant_refuses_any_other_forced_command(sshd: Sshd, tmp_path: Path, command: str) -> None:
    src = make_source(tmp_path)
    spec = spec_for(sshd, src, tmp_path / "dst" / "model")
    pub = run_script(fanout_keygen(spec)).stdout.splitlines()[0]
    before = sshd.authorized_keys.read_text()
    proc = run_script(fanout_grant(spec), stdin=f"{pub}\n{command.format(src=src)}\n")
    assert proc.returncode == 1
    assert "refusing to grant: expected the rsync sender command" in proc.stderr
    assert sshd.authorized_keys.read_text() == before


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("Sun_SSH_1.0, something else", "cannot tell this host's OpenSSH version"),
        ("OpenSSH_7.4p1, OpenSSL 1.0.2k-fips", "OpenSSH 7.4 here cannot expire"),
    ],
)
def test_grant_refuses_without_expiry(
    sshd: Sshd, tmp_path: Path, fake_bin: Path, version: str, message: str
) -> None:
    src = make_source(tmp_path)
    spec = spec_for(sshd, src, tmp_path / "dst" / "model")
    keygen = run_script(fanout_keygen(spec))
    for tool in ("ssh", "sshd"):
        write_exe(fake_bin / tool, f"#!/bin/sh\necho '{version}' >&2\n")
    before = sshd.authorized_keys.read_text()
    proc = run_script(fanout_grant(spec), stdin=keygen.stdout, path_prefix=fake_bin)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Fix:" in proc.stderr
    assert sshd.authorized_keys.read_text() == before


def test_driver_fails_when_revoke_fails(sshd: Sshd, tmp_path: Path) -> None:
    """The copy succeeds but the source cannot be reached for the revoke: the step fails,
    naming the marker to remove."""
    src = make_source(tmp_path)
    dst = tmp_path / "dst" / "model"
    wrapper = write_exe(
        tmp_path / "ssh-no-revoke",
        '#!/bin/bash\ncase "$*" in *"Fragment (fanout_revoke)"*) exit 255 ;; esac\nexec ssh "$@"\n',
    )
    script = fanout_driver(spec_for(sshd, src, dst), sshd.endpoint, sshd.endpoint, ssh=str(wrapper))
    proc = run_script(script, timeout=120)
    assert (dst / "model.safetensors").exists()  # the copy itself went through
    assert proc.returncode == 1, proc.stderr
    assert "could not revoke the temporary key on src" in proc.stderr
    assert "vllm-cluster-fanout:test-dst" in proc.stderr
    assert os.path.exists(sshd.authorized_keys)


def test_driver_with_sha256_checks_content_not_only_sizes(sshd: Sshd, tmp_path: Path) -> None:
    """model.verify: sha256 reaches both checks: a source file changed in place (same size)
    is refused, and an intact copy is verified by content on the target."""
    src = tmp_path / "src" / "model"
    src.mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "model.safetensors").write_bytes(b"\x01" * 300_000)
    write_manifest(str(src), sha256=True)
    spec = replace(spec_for(sshd, src, tmp_path / "dst" / "model"), verify="sha256")
    script = fanout_driver(spec, sshd.endpoint, sshd.endpoint)
    proc = run_script(script, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["checked"] == "sha256"

    (src / "model.safetensors").write_bytes(b"\x02" * 300_000)  # same size, other bytes
    spec2 = replace(spec, target_path=str(tmp_path / "dst2" / "model"), marker="test-dst2")
    proc = run_script(fanout_driver(spec2, sshd.endpoint, sshd.endpoint), timeout=60)
    assert proc.returncode == 1
    assert "the weights on src are not complete" in proc.stderr
    assert not (tmp_path / "dst2").exists()
