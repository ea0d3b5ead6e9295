"""known_hosts parsing and writing for the pinned host keys (pure text functions)."""

from __future__ import annotations

from components.render.operator_files import host_key_from_known_hosts

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
