"""Fan-out: copy the weights from hosts[0] (source) to another node (target) over the LAN.

The target *pulls* with rsync over SSH from the source, using a temporary key that exists
only for this copy:

====  ======  =====================================================================
step  where   what
====  ======  =====================================================================
1     target  :func:`fanout_keygen`: make (or reuse) an ed25519 key in a 0700 state dir;
              print its public key, then the exact command this host's rsync will ask
              the source to run for the pull (``rsync --server --sender -<flags> .
              <path>/``: its flags depend on the rsync version)
2     source  :func:`fanout_grant`: read both lines on stdin, check that the command is
              rsync's read-only sender for exactly ``<path>/``, and append the key to
              the source user's authorized_keys as ``command="<that command>",restrict,
              from="<target>",expiry-time="<now+ttl>" ... vllm-cluster-fanout:<marker>``
              (the old line with the same marker is replaced, so it is idempotent); no
              OpenSSH that can enforce ``expiry-time`` (>= 8.2): no grant. Print the
              source's host keys
3     target  :func:`fanout_pull`: read those host keys on stdin (pinned known_hosts),
              ``rsync -a --partial`` from the source, then verify with the manifest
4     source  :func:`fanout_revoke`: remove every line with the marker
5     target  :func:`fanout_cleanup`: remove the state dir (the private key)
====  ======  =====================================================================

The grant is therefore a read-only copy of the weights path, from the target's address,
for at most ``ttl_minutes``: the key cannot open a shell, run another command, forward
ports or read another path (sshd runs the forced command whatever the client asks).

:func:`fanout_driver` renders one bash script for the *operator machine* (run it with
``pulumi_command.local.Command``) that does all five over the operator's own SSH access,
with steps 4 and 5 in an EXIT trap, so the grant is removed on success and on failure (a
revoke that fails fails the step), and skips everything when the target already verifies
with the same manifest as the source. The ``expiry-time`` bound covers the case where even
the trap cannot run (the operator machine dies mid-copy). The host-side scripts can also
be wired as separate ``remote.Command`` resources (stdout of one as ``stdin`` of the
next); then only the expiry bounds the grant on failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._common import (
    bash_array,
    check_abs_path,
    check_name,
    fragment,
    q,
    remote_command,
    render,
)
from .weights import (
    SSH_CIPHERS,
    SshEndpoint,
    VerifyMode,
    _check_mode,
    _check_model_path,
    _tool_function,
    ssh_options,
    weights_verify,
)

MARK_PREFIX = "vllm-cluster-fanout:"
# rsync options of the pull, shared by the keygen probe: the grant forces exactly the server
# command they produce (no protected arguments: the path must be on that command line).
RSYNC_OPTS = ("-a", "--partial", "--info=progress2")
# The source path goes verbatim into the forced command (authorized_keys, then sshd's shell).
_FORCED_PATH = re.compile(r"^/[A-Za-z0-9._/+@=,-]+$")
DEFAULT_HOST_KEYS = (
    "/etc/ssh/ssh_host_ed25519_key.pub",
    "/etc/ssh/ssh_host_ecdsa_key.pub",
    "/etc/ssh/ssh_host_rsa_key.pub",
)


@dataclass(frozen=True)
class FanoutSpec:
    source_host: str
    """Name of hosts[0] (messages)."""
    target_host: str
    source_address: str
    """Address the *target* uses to reach the source (its LAN/NIC IP)."""
    path: str
    """The model path on the source; also on the target unless target_path is set."""
    marker: str
    """Unique per (source, target, path), e.g. the target's name: ``[A-Za-z0-9._-]``."""
    source_user: str = "root"
    source_port: int = 22
    target_path: str | None = None
    from_address: str | None = None
    """Target address as the source sees it, for ``from=``; required (a name is resolved to
    its IPv4 addresses on the source)."""
    authorized_keys: str | None = None
    """Default: ``~source_user/.ssh/authorized_keys`` on the source."""
    host_key_files: tuple[str, ...] = DEFAULT_HOST_KEYS
    state_dir: str = "/var/lib/vllm-cluster/fanout"
    ttl_minutes: int = 360
    verify: VerifyMode = "sizes"

    @property
    def dest_path(self) -> str:
        return self.target_path or self.path


def _validated(spec: FanoutSpec) -> FanoutSpec:
    check_name(spec.marker, "fan-out marker")
    _check_model_path(spec.path)
    _check_model_path(spec.dest_path)
    check_abs_path(spec.state_dir, "state_dir", min_components=2)
    if spec.authorized_keys:
        check_abs_path(spec.authorized_keys, "authorized_keys", min_components=2)
    for f in spec.host_key_files:
        check_abs_path(f, "host key file")
    _check_mode(spec.verify)
    if spec.ttl_minutes < 1:
        raise ValueError("ttl_minutes must be >= 1")
    # The address, user and from= pattern end up in ssh arguments and authorized_keys.
    ssh_options(
        SshEndpoint(spec.source_address, spec.source_user, spec.source_port, known_hosts_file="/x")
    )
    if spec.from_address is None:
        raise ValueError("fan-out: from_address (the target's address) is required for from=")
    ssh_options(SshEndpoint(spec.from_address, known_hosts_file="/x"))
    if not _FORCED_PATH.match(spec.path):
        raise ValueError(
            f"model.path {spec.path!r}: fan-out needs a path of letters, digits and . _ / + @ = , -"
            " (it is the one command the temporary key may run)"
        )
    return spec


def _key_dir(spec: FanoutSpec) -> str:
    return f"{spec.state_dir.rstrip('/')}/{spec.marker}"


def fanout_keygen(spec: FanoutSpec) -> str:
    """Target: ensure the temporary keypair; print the public key line on stdout."""
    _validated(spec)
    body = "\n".join(
        [
            f"KDIR={q(_key_dir(spec))}",
            f"COMMENT={q(MARK_PREFIX + spec.marker)}",
            f"SRC_PATH={q(spec.path)}",
            bash_array("RSYNC_OPTS", RSYNC_OPTS),
            fragment("fanout_keygen"),
        ]
    )
    return render(spec.target_host, "fanout", body)


def _ak_vars(spec: FanoutSpec) -> list[str]:
    return [
        f"MARK={q(MARK_PREFIX + spec.marker)}",
        f"SRC_USER={q(spec.source_user)}",
        f"AK={q(spec.authorized_keys or '')}",
        fragment("fanout_authorized_keys"),
    ]


def fanout_grant(spec: FanoutSpec) -> str:
    """Source: read the target's public key and its rsync server command on stdin (the
    output of :func:`fanout_keygen`), authorize the key for that one read-only command of
    ``path`` (forced command, ``restrict``, ``from=``, ``expiry-time=``, marked); print this
    host's public host keys (``type base64`` lines) on stdout."""
    _validated(spec)
    body = "\n".join(
        [
            f"FROM={q(spec.from_address or '')}",
            f"WPATH={q(spec.path)}",
            f"TTL_S={int(spec.ttl_minutes) * 60}",
            bash_array("HOST_KEYS", spec.host_key_files),
            *_ak_vars(spec),
            fragment("fanout_grant"),
        ]
    )
    return render(spec.source_host, "fanout", body)


def fanout_revoke(spec: FanoutSpec) -> str:
    """Source: remove every authorized_keys line carrying this marker (idempotent)."""
    _validated(spec)
    body = "\n".join([*_ak_vars(spec), fragment("fanout_revoke")])
    return render(spec.source_host, "fanout", body)


def fanout_pull(spec: FanoutSpec) -> str:
    """Target: read the source's host keys on stdin, rsync the weights from the source,
    verify them (manifest required). Prints the verify JSON line on stdout."""
    _validated(spec)
    port = spec.source_port
    host_pattern = spec.source_address if port == 22 else f"[{spec.source_address}]:{port}"
    remote_host = f"[{spec.source_address}]" if ":" in spec.source_address else spec.source_address
    body = "\n".join(
        [
            f"KDIR={q(_key_dir(spec))}",
            f"SRC={q(f'{spec.source_user}@{remote_host}:{spec.path}/')}",
            f"SRC_PORT={int(port)}",
            f"SSH_CIPHERS={q(SSH_CIPHERS)}",
            f"HOST_PATTERN={q(host_pattern)}",
            f"WPATH={q(spec.dest_path)}",
            f"MODE={q(spec.verify)}",
            bash_array("RSYNC_OPTS", RSYNC_OPTS),
            _tool_function(),
            fragment("fanout_pull"),
        ]
    )
    return render(spec.target_host, "fanout", body)


def fanout_cleanup(spec: FanoutSpec) -> str:
    """Target: remove the temporary key and known_hosts (idempotent)."""
    _validated(spec)
    body = f"""
KDIR={q(_key_dir(spec))}
if [ -d "$KDIR" ]; then rm -rf -- "$KDIR"; log "removed $KDIR"; else log "$KDIR already gone"; fi
"""
    return render(spec.target_host, "fanout", body)


def fanout_driver(
    spec: FanoutSpec,
    source: SshEndpoint,
    target: SshEndpoint,
    *,
    sudo: bool = False,
    ssh: str = "ssh",
) -> str:
    """Operator-machine script that runs the whole fan-out for one target (see the module
    doc). ``source``/``target`` are how the *operator* reaches the two hosts. Prints the
    target's verify JSON line on stdout."""
    _validated(spec)

    def remote(script: str) -> str:
        return q(remote_command(script, sudo=sudo))

    verify_src = weights_verify(spec.source_host, spec.path, spec.verify, require_manifest=True)
    verify_tgt = weights_verify(
        spec.target_host, spec.dest_path, spec.verify, require_manifest=True
    )
    src_dest = f"{source.user}@{source.address}"
    tgt_dest = f"{target.user}@{target.address}"
    lines = [
        bash_array("SSH_SRC", [ssh, *ssh_options(source), src_dest]),
        bash_array("SSH_TGT", [ssh, *ssh_options(target), tgt_dest]),
        f"R_VERIFY_SRC={remote(verify_src)}",
        f"R_VERIFY_TGT={remote(verify_tgt)}",
        f"R_KEYGEN={remote(fanout_keygen(spec))}",
        f"R_GRANT={remote(fanout_grant(spec))}",
        f"R_PULL={remote(fanout_pull(spec))}",
        f"R_REVOKE={remote(fanout_revoke(spec))}",
        f"R_CLEANUP={remote(fanout_cleanup(spec))}",
        f"SOURCE_NAME={q(spec.source_host)}",
        f"MARK={q(MARK_PREFIX + spec.marker)}",
        fragment("fanout_driver"),
    ]
    return render(spec.target_host, "fanout", "\n".join(lines))
