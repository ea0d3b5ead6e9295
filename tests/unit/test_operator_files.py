"""known_hosts parsing and writing for the pinned host keys (pure text functions)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from components.render.operator_files import host_key_from_known_hosts, write_private

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAA"
KEY_B = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAB"


def test_finds_plain_comma_separated_and_bracketed_port_entries() -> None:
    text = "\n".join(
        [
            "# a comment 10.0.0.1 ssh-rsa nope",
            f"h1.example,10.0.0.1 {KEY_A} comment",
            f"[10.0.0.2]:2222 {KEY_B}",
            "@cert-authority 10.0.0.3 ssh-ed25519 AAAA",
        ]
    )
    assert host_key_from_known_hosts(text, "10.0.0.1", 22) == KEY_A
    assert host_key_from_known_hosts(text, "h1.example", 22) == KEY_A
    assert host_key_from_known_hosts(text, "10.0.0.2", 2222) == KEY_B
    # Same address on another port is a different host key entry.
    assert host_key_from_known_hosts(text, "10.0.0.2", 22) is None
    # Markers (@cert-authority / @revoked) and comments never pin a host.
    assert host_key_from_known_hosts(text, "10.0.0.3", 22) is None


def test_write_private_creates_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "d" / "id_ssh"
        write_private(path, "KEY")
    finally:
        os.umask(old)
    assert path.read_text() == "KEY\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_write_private_tightens_an_existing_loose_file(tmp_path: Path) -> None:
    path = tmp_path / "id_ssh"
    path.write_text("OLD KEY, longer than the new one\n")
    path.chmod(0o644)
    write_private(path, "NEW")
    assert path.read_text() == "NEW\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id_ssh"]  # no temporary left


def test_write_private_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    path = tmp_path / "id_ssh"
    path.symlink_to(victim)
    write_private(path, "KEY")
    assert victim.read_text() == "untouched\n"
    assert not path.is_symlink() and path.read_text() == "KEY\n"
