"""Fan-out between two directories on this machine through a private sshd on 127.0.0.1
(its own host key, config and authorized_keys in a temporary directory; the machine's
~/.ssh and any system sshd are not touched). The "source" and "target" hosts are both this
machine, reached as root@127.0.0.1:<port> by the operator and by the target's rsync."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.render.shell import (
    MANIFEST,
    FanoutSpec,
    SshEndpoint,
    fanout_driver,
    fanout_grant,
    fanout_keygen,
    fanout_pull,
    fanout_revoke,
    verify_dir,
    write_manifest,
)

from .conftest import needs_root, needs_tools, run_script

pytestmark = pytest.mark.scripts

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    port: int
    dir: Path
    authorized_keys: Path
    host_key_pub: Path
    endpoint: SshEndpoint


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    needs_root()
    if not Path(SSHD).exists():
        pytest.skip(
            "openssh-server not installed (tests/scripts/install-deps.sh);"
            " the lab e2e covers fan-out"
        )
    needs_tools("ssh", "ssh-keygen", "rsync")
    d = tmp_path / "sshd"
    d.mkdir(mode=0o700)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True
    )
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "op")], check=True)
    ak = d / "authorized_keys"
    ak.write_text((d / "op.pub").read_text())
    ak.chmod(0o600)
    port = _free_port()
    (d / "config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {d / 'host'}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {ak}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "",
            ]
        )
    )
    kh = d / "known_hosts"
    host_pub = (d / "host.pub").read_text().split()
    kh.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "config")],
        stdout=subprocess.DEVNULL,
        stderr=(d / "sshd.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
                time.sleep(0.1)
        yield Sshd(
            port=port,
            dir=d,
            authorized_keys=ak,
            host_key_pub=d / "host.pub",
            endpoint=SshEndpoint(
                "127.0.0.1", port=port, key_file=str(d / "op"), known_hosts_file=str(kh)
            ),
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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


def test_driver_refuses_incomplete_source(sshd: Sshd, tmp_path: Path) -> None:
    src = make_source(tmp_path)
    (src / "model.safetensors").write_bytes(b"short")
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
    pub = key.stdout.strip()
    assert pub.startswith("ssh-ed25519 ") and pub.endswith("vllm-cluster-fanout:test-dst")
    assert run_script(fanout_keygen(spec)).stdout.strip() == pub  # reused: idempotent

    grant = run_script(fanout_grant(spec), stdin=pub + "\n")
    assert grant.returncode == 0, grant.stderr
    granted = sshd.authorized_keys.read_text()
    line = granted.splitlines()[-1]
    assert line.startswith('restrict,from="127.0.0.1",expiry-time="')
    assert line.endswith(" vllm-cluster-fanout:test-dst")
    # Granting twice keeps one line.
    assert run_script(fanout_grant(spec), stdin=pub + "\n").returncode == 0
    assert sshd.authorized_keys.read_text().count("vllm-cluster-fanout:test-dst") == 1
    assert sshd.authorized_keys.read_text().startswith(before)

    pull = run_script(fanout_pull(spec), stdin=grant.stdout)
    assert pull.returncode == 0, pull.stderr
    assert json.loads(pull.stdout)["files"] == 3

    bad = run_script(fanout_grant(spec), stdin="ssh-ed25519 AAAA; rm -rf /\n")
    assert bad.returncode == 1
    assert "expected an ssh-ed25519 public key" in bad.stderr

    for _ in range(2):  # idempotent
        revoke = run_script(fanout_revoke(spec))
        assert revoke.returncode == 0, revoke.stderr
    assert sshd.authorized_keys.read_text() == before
