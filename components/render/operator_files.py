"""Files on the operator machine that every SSH client of the program needs.

The operator-side clients (the docker provider's ssh:// helper, rsync, the image stream, the
drift checks) are OpenSSH, which wants the private key as a file and the pinned host keys as
a known_hosts file. This module produces both from the settings: the key file as configured
(or written 0600 from the `sshPrivateKey` secret into the operator's own per-stack
directory, never the project or the state) and a known_hosts file pinning every host (from
`hosts[].host_key` and/or `ssh.known_hosts_file`). A host without a pinned key is refused,
and so is an unpinned `ssh.bastion`. The same pinned keys go to pulumi-command's
connections (`OperatorFiles.host_keys`).
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.settings import Host, Settings


class HostKeysNotPinned(ValueError):
    """Some hosts have no pinned host key; the message names each `hosts[i].host_key`."""


@dataclass(frozen=True)
class OperatorFiles:
    """Files on the operator machine that OpenSSH clients need."""

    private_key_file: str
    known_hosts_file: str
    # host name -> pinned key (`<type> <base64>`), as written to known_hosts_file; the
    # same keys pin pulumi-command's connections (`connection.host_key`)
    host_keys: dict[str, str]
    # the bastion's pinned key, when ssh.bastion is set
    bastion_host_key: str | None = None


def host_key_from_known_hosts(text: str, address: str, port: int) -> str | None:
    """The `<type> <base64>` key for `address` (port 22) or `[address]:port` in a
    known_hosts text; None when absent (hashed entries are not matched)."""
    wanted = address if port == 22 else f"[{address}]:{port}"
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or line.lstrip().startswith(("#", "@")):
            continue
        if wanted in parts[0].split(","):
            return f"{parts[1]} {parts[2]}"
    return None


def known_hosts_text(
    hosts: tuple[Host, ...],
    keys: dict[str, str],
    bastion: tuple[str, int, str] | None = None,
) -> str:
    """known_hosts lines pinning every host and, given as (address, port, key), the bastion:
    the bastion hop (a ProxyCommand ssh) checks its key against this same file."""
    entries = [(h.address, h.port, keys[h.name]) for h in hosts]
    if bastion is not None:
        entries.append(bastion)
    lines = [
        f"{address if port == 22 else f'[{address}]:{port}'} {key}"
        for address, port, key in entries
    ]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write `text` readable by the owner only: into a new file created 0600 (O_EXCL) next
    to `path`, synced, then renamed over it. The result is 0600 even when `path` existed
    with a looser mode, and a reader never sees a half-written key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkstemp: O_CREAT | O_EXCL, mode 0600, a name nobody else can have taken.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def curl_line(url: str, served_model_name: str) -> str:
    """The exported smoke-test command: every value a single inert shell word (the model
    name inside a JSON body); only the key lookup is a command substitution, so the key is
    read when the line runs, never stored in the line."""
    body = json.dumps(
        {"model": served_model_name, "messages": [{"role": "user", "content": "Hello"}]}
    )
    return shlex.join(
        ["curl", "-s", f"{url}/chat/completions", "-H", "Content-Type: application/json"]
    ) + (
        ' -H "Authorization: Bearer $(pulumi stack output api_key --show-secrets)"'
        f" -d {shlex.quote(body)}"
    )


def prepare_operator_files(
    settings: Settings, project_dir: Path, stack_dir: Path, secret_key: str | None
) -> OperatorFiles:
    """The key file and a known_hosts file pinning every host; relative paths in the settings
    resolve against `project_dir`, files this function writes go to `stack_dir`."""
    if settings.ssh.private_key_file:
        key_path = (project_dir / Path(settings.ssh.private_key_file).expanduser()).resolve()
    else:
        if secret_key is None:
            raise ValueError("no SSH key: set ssh.private_key_file or vllm-cluster:sshPrivateKey")
        key_path = stack_dir / "id_ssh"
        write_private(key_path, secret_key)

    known_text = ""
    known_path: Path | None = None
    if settings.ssh.known_hosts_file:
        known_path = (project_dir / Path(settings.ssh.known_hosts_file).expanduser()).resolve()
        known_text = known_path.read_text()
    keys: dict[str, str] = {}
    unpinned = []
    for index, host in enumerate(settings.hosts):
        key = host.host_key or host_key_from_known_hosts(known_text, host.address, host.port)
        if key:
            keys[host.name] = key
        else:
            unpinned.append(
                f"hosts[{index}].host_key: no pinned host key for {host.address}; set it "
                f"(ssh-keyscan -t ed25519 {host.address}) or list the host in "
                "ssh.known_hosts_file"
            )
    bastion = settings.ssh.bastion
    bastion_key = None
    if bastion is not None:
        bastion_key = bastion.host_key or host_key_from_known_hosts(
            known_text, bastion.address, bastion.port
        )
        if not bastion_key:
            unpinned.append(
                f"ssh.bastion.host_key: no pinned host key for the bastion {bastion.address}; "
                f"set it (ssh-keyscan -t ed25519 {bastion.address}) or list the bastion in "
                "ssh.known_hosts_file"
            )
    if unpinned:
        raise HostKeysNotPinned("host keys must be pinned:\n  - " + "\n  - ".join(unpinned))
    explicit = [h.host_key for h in settings.hosts] + [bastion.host_key if bastion else None]
    if known_path is not None and all(k is None for k in explicit):
        known_file = known_path
    else:
        known_file = stack_dir / "known_hosts"
        stack_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pinned_bastion = None
        if bastion is not None and bastion_key is not None:
            pinned_bastion = (bastion.address, bastion.port, bastion_key)
        known_file.write_text(known_hosts_text(settings.hosts, keys, pinned_bastion))
    return OperatorFiles(str(key_path), str(known_file), keys, bastion_key)
