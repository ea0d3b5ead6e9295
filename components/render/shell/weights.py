"""Model weights on a host: hub download, completeness check, sync from the operator, delete.

The same absolute path holds identical weights on every node. What makes a directory
"complete" is decided by one piece of code (``_weights_tool.py``): config.json, every shard
named in the safetensors index, and — when the manifest ``.vllm-cluster-manifest.json`` is
there — every listed file at its listed size (or sha256).

Ownership: every step that writes into the model directory runs ``claim-begin`` before and
``claim-end`` after (``_weights_tool.py``), which record on the host, outside the model
directory, exactly which files and directories this stack (``owner``: ``<project>/<stack>``)
wrote. Deletion (:func:`weights_delete`) removes only those.

Secrets: the hub token reaches the host on the command's standard input (or from a 0600
file already on the host); the script puts it into the CLI's environment (``HF_TOKEN``,
``MODELSCOPE_API_TOKEN``) — never into a command line, so ``ps`` does not show it. Without a
CLI on the host, the engine image's client runs (``docker run``; the token on the container's
stdin, so neither ``ps`` nor ``docker inspect`` shows it).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import _weights_tool
from ._common import check_abs_path, fragment, heredoc, q, render

MANIFEST = _weights_tool.MANIFEST
OWNER_DIR = _weights_tool.OWNER_DIR
system_path_problem = _weights_tool.system_path_problem
DOWNLOAD_MARKER = ".vllm-cluster-download.json"
build_manifest = _weights_tool.build_manifest
write_manifest = _weights_tool.write_manifest
verify_dir = _weights_tool.verify_dir

_TOOL_SOURCE = Path(_weights_tool.__file__).read_text(encoding="utf-8")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")

VerifyMode = Literal["sizes", "sha256"]


def _tool_function() -> str:
    """Bash function ``wtool ARGS...`` that runs the embedded checker with python3."""
    open_tag, body = heredoc(_TOOL_SOURCE, "VLLM_CLUSTER_WEIGHTS_TOOL")
    return "\n".join(
        [
            "wtool() {",
            '  command -v python3 >/dev/null 2>&1 || die "python3 not found (needed to check the'
            ' weights). Fix: install python3"',
            f'  python3 - "$@" {open_tag}',
            body.rstrip("\n"),
            "}",
        ]
    )


def _check_mode(mode: str) -> str:
    if mode not in ("sizes", "sha256"):
        raise ValueError(f"model.verify must be sizes or sha256: {mode!r}")
    return mode


def _check_model_path(path: str) -> str:
    # Two components at least: /data01/model, never /data01 itself (deletion safety).
    p = check_abs_path(path, "model.path", min_components=2)
    problem = system_path_problem(p)
    if problem:
        raise ValueError(f"model.path: {problem}; keep the weights on a data disk (e.g. /data01/x)")
    return p


_OWNER = re.compile(r"^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+$")


def _check_owner(owner: str) -> str:
    if not _OWNER.match(owner):
        raise ValueError(f"owner must be <project>/<stack>: {owner!r}")
    return owner


def _claim_lines(
    path: str, owner: str, state_dir: str, mount_point: str | None = None
) -> list[str]:
    """Variables and the tool for ``wclaim begin|end`` (record what this stack writes).

    ``mount_point``: the host's storage.mount_point when the model path is on it. ``wclaim
    begin`` (which every writer runs first) then refuses to write while it is not mounted: a
    data disk that did not mount at boot would otherwise get its weights re-fetched onto the
    root disk under the empty directory (the drift check finds them missing)."""
    mp = check_abs_path(mount_point, "storage.mount_point") if mount_point else ""
    return [
        f"WPATH={q(_check_model_path(path))}",
        f"OWNER={q(_check_owner(owner))}",
        f"OWNER_DIR={q(check_abs_path(state_dir, 'state_dir', min_components=1))}",
        f"REQUIRE_MOUNT={q(mp)}",
        _tool_function(),
        "wclaim() {",
        '  if [ "$1" = begin ] && [ -n "$REQUIRE_MOUNT" ] \\',
        '    && ! mountpoint -q -- "$REQUIRE_MOUNT"; then',
        '    die "$REQUIRE_MOUNT (storage.mount_point of host $HOST) is not mounted: the data disk'
        " did not mount (at boot?); refusing to write the weights onto the disk under it. Fix:"
        ' mount it (mount $REQUIRE_MOUNT, see /etc/fstab), then run pulumi up again"',
        "  fi",
        '  wtool "claim-$1" "$WPATH" --owner "$OWNER" --state-dir "$OWNER_DIR" --host "$HOST"',
        "}",
    ]


def weights_verify(
    host: str, path: str, mode: VerifyMode = "sizes", *, require_manifest: bool = False
) -> str:
    """Render the completeness check. Exit 1 listing missing/short files
    (``verify <host>: missing file X``); on success one JSON line on stdout:
    ``{"path", "files", "bytes", "manifest", "manifest_sha256"?, "checked"}``."""
    body = "\n".join(
        [
            f"WPATH={q(_check_model_path(path))}",
            f"MODE={q(_check_mode(mode))}",
            f"REQUIRE_MANIFEST={1 if require_manifest else 0}",
            _tool_function(),
            'log "checking $WPATH ($MODE)"',
            'args=(verify "$WPATH" --mode "$MODE" --host "$HOST")',
            '[ "$REQUIRE_MANIFEST" = 0 ] || args+=(--require-manifest)',
            'wtool "${args[@]}"',
            'log "complete"',
        ]
    )
    return render(host, "weights", body)


@dataclass(frozen=True)
class DownloadSpec:
    host: str
    source: Literal["modelscope", "huggingface"]
    model_id: str
    path: str
    revision: str | None = None
    endpoint: str | None = None
    """Hub mirror URL: ``HF_ENDPOINT``, or for ModelScope ``MODELSCOPE_ENDPOINT`` (and
    ``MODELSCOPE_DOMAIN`` without the scheme, for older releases)."""
    token: Literal["none", "stdin", "file"] = "none"
    """``stdin``: the first line of standard input (give the secret as the remote
    command's ``stdin``); ``file``: read from ``token_file`` on the host (must be 0600)."""
    token_file: str | None = None
    verify: VerifyMode = "sizes"
    manifest_sha256: bool = False
    """Record sha256 in the manifest written after the download (slow for big models)."""
    owner: str = ""
    """``<project>/<stack>``: the files the download writes are recorded as this owner's."""
    state_dir: str = OWNER_DIR
    """Where the ownership records live on the host (tests point it elsewhere)."""
    mount_point: str | None = None
    """storage.mount_point when ``path`` is on the host's data disk: no download while it is
    not mounted."""
    engine_image: str | None = None
    """The engine image (``image.name``), on the host once the image step ran: its hub
    client (vLLM images ship huggingface_hub) runs the download when the host has no CLI."""
    attempts: int = 3
    retry_delay_s: int = 15
    """Wait before retry n is n x this. A retry keeps the files already complete (a file
    that was part-way starts over with huggingface_hub >= 1.18). A refused token (HTTP
    401/403) is not retried: the step stops naming ``vllm-cluster:hubToken``."""


# Run inside the engine image (`sh -c` with the source and the CLI's arguments): the token is
# the first line of stdin, put into the client's environment only; then the client, or 127
# when the image has none.
_IN_IMAGE = """\
IFS= read -r t || true
src=$1
shift
if [ -n "$t" ]; then
  case "$src" in
    huggingface) HF_TOKEN=$t; export HF_TOKEN ;;
    modelscope) MODELSCOPE_API_TOKEN=$t; export MODELSCOPE_API_TOKEN ;;
  esac
fi
unset t
exec </dev/null
case "$src" in
  huggingface)
    if command -v hf >/dev/null 2>&1; then exec hf download "$@"; fi
    if command -v huggingface-cli >/dev/null 2>&1; then exec huggingface-cli download "$@"; fi ;;
  modelscope)
    if command -v modelscope >/dev/null 2>&1; then exec modelscope download "$@"; fi ;;
esac
echo "no $src client in this image" >&2
exit 127
"""


def _marker(spec: DownloadSpec) -> str:
    return json.dumps(
        {"id": spec.model_id, "revision": spec.revision or "", "source": spec.source},
        sort_keys=True,
        separators=(",", ":"),
    )


def weights_download(spec: DownloadSpec) -> str:
    """Render the hub download: skipped when the marker of this (source, id, revision) is
    there and the directory verifies; else the hub CLI runs, up to ``attempts``
    times, then the manifest is written, the directory verified and the marker written.
    Prints the verify JSON line on stdout."""
    if spec.source not in ("modelscope", "huggingface"):
        raise ValueError(f"download source must be modelscope or huggingface: {spec.source!r}")
    if not _MODEL_ID.match(spec.model_id):
        raise ValueError(f"model.id is not a hub id: {spec.model_id!r}")
    if spec.revision is not None and not _REVISION.match(spec.revision):
        raise ValueError(f"model.revision is not a revision: {spec.revision!r}")
    if spec.endpoint is not None and (any(c.isspace() for c in spec.endpoint) or not spec.endpoint):
        raise ValueError(f"model.hub_endpoint must be one word: {spec.endpoint!r}")
    if spec.token not in ("none", "stdin", "file"):
        raise ValueError(f"token must be none, stdin or file: {spec.token!r}")
    token_file = ""
    if spec.token == "file":
        if not spec.token_file:
            raise ValueError("token='file' needs token_file")
        token_file = check_abs_path(spec.token_file, "token_file")
    if spec.attempts < 1 or spec.retry_delay_s < 0:
        raise ValueError("attempts must be >= 1 and retry_delay_s >= 0")
    if spec.engine_image is not None and (
        not spec.engine_image or any(c.isspace() for c in spec.engine_image)
    ):
        raise ValueError(f"engine image must be one word: {spec.engine_image!r}")
    lines = [
        *_claim_lines(spec.path, spec.owner, spec.state_dir, spec.mount_point),
        f"SOURCE={q(spec.source)}",
        f"MODEL_ID={q(spec.model_id)}",
        f"REVISION={q(spec.revision or '')}",
        f"ENDPOINT={q(spec.endpoint or '')}",
        f"TOKEN_MODE={q(spec.token)}",
        f"TOKEN_FILE={q(token_file)}",
        f"MODE={q(_check_mode(spec.verify))}",
        f"MANIFEST_SHA={1 if spec.manifest_sha256 else 0}",
        f"ATTEMPTS={int(spec.attempts)}",
        f"RETRY_DELAY={int(spec.retry_delay_s)}",
        f"ENGINE_IMAGE={q(spec.engine_image or '')}",
        f"IN_IMAGE={q(_IN_IMAGE)}",
        f"MARKER={q(DOWNLOAD_MARKER)}",
        f"MARKER_TEXT={q(_marker(spec))}",
        fragment("weights_download"),
    ]
    return render(spec.host, "weights", "\n".join(lines))


def weights_ensure_dir(
    host: str,
    path: str,
    owner: str,
    state_dir: str = OWNER_DIR,
    mount_point: str | None = None,
) -> str:
    """Before anything writes into the model path (an rsync from the operator machine, a
    copy from the head): create it (the directories created are recorded) and note what is
    already there, so only what the copy adds counts as this stack's."""
    body = "\n".join(
        [
            *_claim_lines(path, owner, state_dir, mount_point),
            "wclaim begin",
            'log "directory $WPATH ready"',
        ]
    )
    return render(host, "weights", body)


def weights_claim_end(host: str, path: str, owner: str, state_dir: str = OWNER_DIR) -> str:
    """After a copy into the model path: record what it added as this stack's."""
    body = "\n".join([*_claim_lines(path, owner, state_dir), "wclaim end"])
    return render(host, "weights", body)


@dataclass(frozen=True)
class SshEndpoint:
    """How the operator machine (or a node) reaches a host with OpenSSH."""

    address: str
    user: str = "root"
    port: int = 22
    key_file: str | None = None
    known_hosts_file: str | None = None
    """Pinned host keys; required (StrictHostKeyChecking=yes)."""
    connect_timeout_s: int = 10
    proxy_jump: str | None = None
    """Bastion as ``user@host:port`` (``ssh -J``); it is checked against the same
    known_hosts file."""


_SSH_WORD = re.compile(r"^[A-Za-z0-9._:@%\[\]-]+$")

# Bulk streams (the image into `docker load`, weights over rsync) are bound by the SSH
# cipher: OpenSSH's first default, chacha20-poly1305, cost 1.78 CPU-s per 470 MB here
# (client + server), AES-GCM with AES-NI 1.15 CPU-s. An explicit list rather than the
# `^` prefix so that old OpenSSH on nodes accepts it; it still holds every default cipher,
# so any server the defaults reach is reached.
SSH_CIPHERS = (
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
    "aes128-ctr,aes192-ctr,aes256-ctr"
)


def ssh_options(ep: SshEndpoint) -> list[str]:
    """OpenSSH client options: pinned host keys, no prompts, only the given key."""
    if not ep.known_hosts_file:
        raise ValueError(f"{ep.address}: a known_hosts file is required (host keys are pinned)")
    for word, what in ((ep.address, "address"), (ep.user, "user")):
        if not _SSH_WORD.match(word) or word.startswith("-"):
            raise ValueError(f"ssh {what} is not a plain word: {word!r}")
    if not 0 < ep.port < 65536:
        raise ValueError(f"ssh port out of range: {ep.port}")
    opts = [
        "-p",
        str(ep.port),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={ep.known_hosts_file}",
        "-o",
        f"ConnectTimeout={int(ep.connect_timeout_s)}",
        "-o",
        "ServerAliveInterval=30",
        "-o",
        f"Ciphers={SSH_CIPHERS}",
    ]
    if ep.key_file:
        opts[0:0] = ["-i", ep.key_file, "-o", "IdentitiesOnly=yes"]
    if ep.proxy_jump:
        if not _SSH_WORD.match(ep.proxy_jump) or ep.proxy_jump.startswith("-"):
            raise ValueError(f"ssh bastion is not a plain word: {ep.proxy_jump!r}")
        # Not `-J`: the hop's ssh would get none of these options (default keys, the
        # user's own known_hosts, prompts). ProxyCommand runs it with the same key and the
        # same pinned known_hosts.
        opts += ["-o", f"ProxyCommand={_bastion_proxy_command(ep)}"]
    return opts


def _bastion_proxy_command(ep: SshEndpoint) -> str:
    """The bastion hop as a ProxyCommand: ``ssh <pinned options> -W '[%h]:%p' user@bastion``.
    ssh runs it through a shell after expanding ``%`` tokens: every word is shell-quoted
    and every literal ``%`` doubled."""
    assert ep.proxy_jump and ep.known_hosts_file
    user, _, hostport = ep.proxy_jump.rpartition("@")
    if hostport.startswith("["):  # [IPv6]:port or [IPv6]
        host, _, rest = hostport[1:].partition("]")
        port = rest.removeprefix(":")
    elif hostport.count(":") == 1:  # host:port
        host, _, port = hostport.partition(":")
    else:  # host, or a bare IPv6 address (no port can follow it unbracketed)
        host, port = hostport, ""
    words = ["ssh"]
    if ep.key_file:
        words += ["-i", ep.key_file, "-o", "IdentitiesOnly=yes"]
    words += [
        *("-p", port or "22", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"),
        *("-o", f"UserKnownHostsFile={ep.known_hosts_file}"),
        *("-o", f"ConnectTimeout={int(ep.connect_timeout_s)}"),
    ]
    quoted = [shlex.quote(w.replace("%", "%%")) for w in words]
    dest = shlex.quote(f"{user or 'root'}@{host}".replace("%", "%%"))
    return " ".join([*quoted, "-W", "'[%h]:%p'", dest])


def _rsync_e_word(word: str) -> str:
    """Quote one word for rsync's ``-e`` splitter (spaces and quotes, no backslashes)."""
    if word and all(c.isalnum() or c in "-_./=:@%,+[]~" for c in word):
        return word
    if "'" not in word:
        return f"'{word}'"
    if '"' not in word:
        return f'"{word}"'
    raise ValueError(f"cannot pass {word!r} through rsync -e")


def rsync_argv(local_dir: str, dest: SshEndpoint, path: str, *, rsync: str = "rsync") -> list[str]:
    """The operator-side command (an argv list, run without a shell) that copies a local
    model directory to ``path`` on a host: archive mode, resumable (``--partial``), one
    progress line (``--info=progress2``), pinned host key. The destination directory's
    parent must exist (see :func:`weights_ensure_dir`)."""
    target = _check_model_path(path)
    if not local_dir:
        raise ValueError("model.local_dir is empty")
    ssh_cmd = " ".join(_rsync_e_word(w) for w in ["ssh", *ssh_options(dest)])
    host = f"[{dest.address}]" if ":" in dest.address else dest.address
    return [
        rsync,
        "-a",
        "--partial",
        "--info=progress2",
        # Paths reach the remote rsync unmangled by its shell (spaces, quotes).
        "--protect-args",
        "-e",
        ssh_cmd,
        local_dir.rstrip("/") + "/",
        f"{dest.user}@{host}:{target}/",
    ]


def weights_delete(host: str, path: str, owner: str, state_dir: str = OWNER_DIR) -> str:
    """Delete step when ``keep_on_destroy`` is false: removes only what ``owner`` wrote.

    The files listed in this owner's record for this path (each only while it has the
    recorded size), then the directories it created once empty. No record: nothing is
    deleted (exit 0, logged). A record of another owner or path, a path that now resolves
    elsewhere, or a system directory (``/usr``, ``/var/lib``, home directories, ...):
    refused, nothing deleted (exit 1). Idempotent: the record goes with the files.
    """
    body = "\n".join([*_claim_lines(path, owner, state_dir), fragment("weights_delete")])
    return render(host, "weights", body)


def weights_keep(host: str, path: str) -> str:
    """Delete step when ``keep_on_destroy`` is true (the default): a logged no-op."""
    return render(host, "weights", f"log {q(f'keeping the weights at {path}')}\n")
