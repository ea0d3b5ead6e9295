"""The fan-out driver: order of the steps, the trap, and the nested quoting."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import replace

import pytest

from components.render.shell import (
    FanoutSpec,
    SshEndpoint,
    fanout_driver,
    fanout_grant,
    fanout_pull,
    remote_command,
)

SPEC = FanoutSpec(
    "h20-1", "h20-2", "192.168.0.2", "/data01/m", marker="h20-2", from_address="192.168.0.3"
)
SRC = SshEndpoint("10.1.0.2", key_file="/op/key", known_hosts_file="/op/kh")
TGT = SshEndpoint("10.1.0.3", key_file="/op/key", known_hosts_file="/op/kh")


def assignments(script: str) -> dict[str, str]:
    """The R_* values, as bash itself parses the (multi-line, nested-quoted) assignments."""
    head = script[: script.index("SOURCE_NAME=")]
    names = ["R_VERIFY_SRC", "R_VERIFY_TGT", "R_KEYGEN", "R_GRANT", "R_PULL", "R_REVOKE"]
    dump = head + "".join(f'printf "%s\\0" "${n}"\n' for n in names)
    out = subprocess.run(["bash", "-c", dump], capture_output=True, text=True, check=True)
    return dict(zip(names, out.stdout.split("\0")[:-1], strict=True))


def test_driver_order_trap_before_grant() -> None:
    script = fanout_driver(SPEC, SRC, TGT)
    order = [
        'SRC_SUM=$("${SSH_SRC[@]}" "$R_VERIFY_SRC"',
        "nothing to copy",
        "trap cleanup EXIT",
        'PUB=$("${SSH_TGT[@]}" "$R_KEYGEN"',
        '"${SSH_SRC[@]}" "$R_GRANT"',
        '"${SSH_TGT[@]}" "$R_PULL"',
    ]
    pos = 0
    for frag in order:
        found = script.find(frag, pos)
        assert found >= 0, frag
        pos = found
    cleanup = script[script.find("cleanup() {") : script.find("trap cleanup EXIT")]
    assert '"$R_REVOKE"' in cleanup
    assert '"$R_CLEANUP"' in cleanup


def test_driver_embeds_the_host_scripts_exactly() -> None:
    values = assignments(fanout_driver(SPEC, SRC, TGT))
    assert values["R_GRANT"] == remote_command(fanout_grant(SPEC))
    assert values["R_PULL"] == remote_command(fanout_pull(SPEC))
    assert shlex.split(values["R_GRANT"]) == ["bash", "-c", fanout_grant(SPEC)]
    sudo = assignments(fanout_driver(SPEC, SRC, TGT, sudo=True))
    assert shlex.split(sudo["R_REVOKE"])[:3] == ["sudo", "-n", "bash"]


def test_driver_ssh_arrays_pin_host_keys() -> None:
    script = fanout_driver(SPEC, SRC, TGT)
    src_line = next(line for line in script.splitlines() if line.startswith("SSH_SRC=("))
    words = shlex.split(src_line[len("SSH_SRC=(") : -1])
    assert words[0] == "ssh"
    assert words[-1] == "root@10.1.0.2"
    assert "StrictHostKeyChecking=yes" in words
    assert "UserKnownHostsFile=/op/kh" in words


def test_a_grant_without_a_lifetime_is_refused() -> None:
    """The granted key expires ttl_minutes after the grant (TTL_S seconds in the script); 0
    would grant a key that expires as it is made: refused, naming the field."""
    assert "TTL_S=60\n" in fanout_grant(replace(SPEC, ttl_minutes=1))
    with pytest.raises(ValueError, match=r"^ttl_minutes must be >= 1$"):
        fanout_grant(replace(SPEC, ttl_minutes=0))
