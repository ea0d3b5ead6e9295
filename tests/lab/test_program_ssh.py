"""The program's own SSH options (components.render.ssh) against a real lab sshd: they connect with
the pinned key, and bulk streams get AES-GCM rather than OpenSSH's default chacha20."""

from __future__ import annotations

import re
import subprocess

import pytest

from components.render.ssh import SshTarget
from tests.lab import labutil as lu

pytestmark = pytest.mark.lab


def target_of(lab: lu.Inventory, host: lu.HostEntry) -> SshTarget:
    return SshTarget(
        address=host["address"],
        user=host["user"],
        port=host["port"],
        private_key_file=lab["ssh_private_key"],
        known_hosts_file=lab["known_hosts"],
    )


def test_program_ssh_negotiates_aes_gcm_and_streams(lab: lu.Inventory) -> None:
    host = lab["hosts"][0]
    payload = b"x" * (4 << 20)
    ssh, *options = target_of(lab, host).ssh_command()
    proc = subprocess.run(
        [ssh, "-v", *options, "wc", "-c"],
        input=payload,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert proc.stdout.decode().strip() == str(len(payload))
    ciphers = re.findall(r"kex: \S+ cipher: (\S+)", proc.stderr.decode(errors="replace"))
    assert ciphers == ["aes128-gcm@openssh.com", "aes128-gcm@openssh.com"], ciphers
