"""How the program reaches a host: one description, rendered for each client that needs it.

Every client of the program talks to hosts with the OpenSSH client: the command resources,
the docker provider (docker's ssh:// helper), rsync and the drift checks. One `SshTarget`
renders their options, so the host key pin, port and bastion can never disagree between
them. The options come from components.render.shell.weights.ssh_options (pinned, no prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

from components.render.shell.weights import SshEndpoint, ssh_options


@dataclass(frozen=True)
class Bastion:
    address: str
    user: str = "root"
    port: int = 22


@dataclass(frozen=True)
class SshTarget:
    """One host as the SSH clients see it.

    `private_key_file` is the key on the operator machine; `known_hosts_file` pins the
    host keys (StrictHostKeyChecking=yes).
    """

    address: str
    user: str
    port: int
    private_key_file: str
    known_hosts_file: str
    bastion: Bastion | None = None
    connect_timeout_s: int = 10

    def endpoint(self) -> SshEndpoint:
        jump = None
        if self.bastion:
            b = self.bastion
            # An IPv6 address in brackets: `user@fd00::1:22` would read as another address.
            host = f"[{b.address}]" if ":" in b.address else b.address
            jump = f"{b.user}@{host}:{b.port}"
        return SshEndpoint(
            address=self.address,
            user=self.user,
            port=self.port,
            key_file=self.private_key_file,
            known_hosts_file=self.known_hosts_file,
            connect_timeout_s=self.connect_timeout_s,
            proxy_jump=jump,
        )

    def openssh_options(self) -> list[str]:
        """Options for an OpenSSH client, `-p PORT` included."""
        return ssh_options(self.endpoint())

    def ssh_command(self) -> list[str]:
        """argv prefix for running a command on the host with OpenSSH (`+ [remote cmd]`)."""
        return ["ssh", *self.openssh_options(), f"{self.user}@{self.address}"]

    def docker_host(self) -> str:
        """The docker provider's `host`: docker's own ssh:// connection helper."""
        return f"ssh://{self.user}@{self.address}:{self.port}"

    def docker_ssh_opts(self) -> list[str]:
        """The docker provider's `ssh_opts`: the OpenSSH options without `-p` (docker's
        helper takes the port from the ssh:// URL)."""
        opts = self.openssh_options()
        i = opts.index("-p")
        return opts[:i] + opts[i + 2 :]
