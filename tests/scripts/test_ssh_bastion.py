"""The bastion hop for real: a private sshd on 127.0.0.1 is both the bastion and the host.
The hop must use the stack's key and pinned known_hosts, not ~/.ssh (where `ssh -J` looks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components.render.shell.weights import rsync_argv
from components.render.ssh import Bastion, SshTarget

from .conftest import Sshd

pytestmark = pytest.mark.scripts


def target(sshd: Sshd) -> SshTarget:
    """The host as 127.0.0.1, the bastion as `localhost` (same sshd, another name, so that
    ssh sees two hops); the stack's known_hosts pins both names."""
    ep = sshd.endpoint
    assert ep.key_file
    key = sshd.host_key_pub.read_text().split()
    known = sshd.dir / "stack_known_hosts"
    known.write_text(
        "".join(f"[{name}]:{sshd.port} {key[0]} {key[1]}\n" for name in ("127.0.0.1", "localhost"))
    )
    return SshTarget(
        address="127.0.0.1",
        user="root",
        port=sshd.port,
        private_key_file=ep.key_file,
        known_hosts_file=str(known),
        bastion=Bastion("localhost", "root", sshd.port),
    )


def test_ssh_through_the_bastion_with_pinned_key_and_known_hosts(sshd: Sshd) -> None:
    proc = subprocess.run(
        [*target(sshd).ssh_command(), "echo", "through-the-bastion"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "through-the-bastion"
    # Two logins with the stack's key: the hop, then the host through it.
    log = (sshd.dir / "sshd.log").read_text()
    assert log.count("Accepted publickey for root") == 2, log


def test_bastion_with_another_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    """The hop checks the bastion against the pinned file: a wrong pin for the bastion
    (the host's own pin is right) stops it."""
    t = target(sshd)
    wrong = tmp_path / "known_hosts"
    other = Path(t.known_hosts_file).read_text().split()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")])
    fake = (tmp_path / "k.pub").read_text().split()
    bastion_line = f"[localhost]:{sshd.port} {fake[0]} {fake[1]}"
    wrong.write_text(f"{other[0]} {other[1]} {other[2]}\n{bastion_line}\n")
    bad = SshTarget(t.address, t.user, t.port, t.private_key_file, str(wrong), t.bastion)
    proc = subprocess.run(
        [*bad.ssh_command(), "true"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "Host key verification failed" in proc.stderr


def test_rsync_through_the_bastion(sshd: Sshd, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    dest = tmp_path / "dest"
    dest.mkdir()
    argv = rsync_argv(str(src), target(sshd).endpoint(), str(dest / "m"))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "m" / "f").read_text() == "data"
