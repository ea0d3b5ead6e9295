"""How the program reaches a host: one description, rendered for each client that needs it.

Three clients talk SSH to every host: pulumi-command (Go, in-process, key as a secret string),
the docker provider (runs the OpenSSH client, key as a file) and rsync (OpenSSH client again).
Keeping one `SshTarget` and rendering each client's options from it means the host key pin,
port and bastion can never disagree between them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bastion:
    address: str
    user: str = "root"
    port: int = 22


@dataclass(frozen=True)
class SshTarget:
    """One host as the SSH clients see it.

    `private_key_file` is the key on the operator machine (OpenSSH clients need a file);
    `known_hosts_file` holds the pinned host keys for OpenSSH clients; `host_key` is the same
    pin in authorized_keys form for pulumi-command (None: not pinned).
    """

    address: str
    user: str
    port: int
    private_key_file: str
    known_hosts_file: str | None
    host_key: str | None
    bastion: Bastion | None = None
    connect_timeout_s: int = 10

    def openssh_options(self) -> list[str]:
        """Options for an OpenSSH client (`ssh`, `rsync -e`, docker's ssh:// helper)."""
        opts = [
            "-i",
            self.private_key_file,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout_s}",
            # No ControlMaster/ControlPersist on purpose: a backgrounded master keeps the
            # caller's output pipes open, and pulumi-command waits for their EOF.
        ]
        if self.known_hosts_file:
            opts += [
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={self.known_hosts_file}",
            ]
        else:
            # No pin configured: accept the key on first use and refuse if it changes later.
            opts += ["-o", "StrictHostKeyChecking=accept-new"]
        if self.bastion:
            opts += ["-J", f"{self.bastion.user}@{self.bastion.address}:{self.bastion.port}"]
        return opts

    def docker_host(self) -> str:
        """The docker provider's `host`: docker's own ssh:// connection helper."""
        return f"ssh://{self.user}@{self.address}:{self.port}"

    def docker_ssh_opts(self) -> list[str]:
        """The docker provider's `ssh_opts` (it adds user, host and port itself)."""
        return self.openssh_options()

    def ssh_command(self) -> list[str]:
        """argv prefix for running a command on the host with OpenSSH (`+ [remote cmd]`)."""
        return ["ssh", *self.openssh_options(), "-p", str(self.port), f"{self.user}@{self.address}"]
