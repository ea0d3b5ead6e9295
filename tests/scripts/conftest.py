"""Shared fixtures for running the rendered scripts for real on this machine.

These tests need root (loop devices, mount, mknod). They skip — with the reason — only when
not root or when losetup is missing; any other missing tool is a failure that names
``tests/scripts/install-deps.sh``, which installs them (Debian packages).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.render.shell import SshEndpoint

INSTALL_HINT = "install the tools with: bash tests/scripts/install-deps.sh"


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount, mknod, /etc-like files)")


def needs_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}; {INSTALL_HINT}")


def run_script(
    script: str,
    *,
    stdin: str = "",
    env: dict[str, str] | None = None,
    path_prefix: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a rendered script with bash, as the remote side would (``bash -c``)."""
    full_env = dict(os.environ)
    if path_prefix is not None:
        full_env["PATH"] = f"{path_prefix}:{full_env.get('PATH', '/usr/bin:/bin')}"
    full_env.update(env or {})
    return subprocess.run(
        ["bash", "-c", script],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session", autouse=True)
def real_fstab_untouched() -> Iterator[None]:
    """Guard: no test may change this machine's /etc/fstab (they use a temporary one)."""
    fstab = Path("/etc/fstab")
    before = sha256_file(fstab) if fstab.exists() else None
    yield
    after = sha256_file(fstab) if fstab.exists() else None
    assert before == after, "/etc/fstab was modified by a test"


def _mounts_of(dev: str) -> list[str]:
    """Mount points of a device and its partitions (deepest first)."""
    name = os.path.basename(dev)
    out = subprocess.run(
        ["findmnt", "-rn", "-o", "SOURCE,TARGET"], capture_output=True, text=True, check=False
    ).stdout
    targets = []
    for line in out.splitlines():
        source, _, target = line.partition(" ")
        if os.path.basename(source).startswith(name):
            targets.append(target.replace("\\x20", " "))
    return sorted(targets, key=len, reverse=True)


LoopFactory = Callable[..., str]


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[LoopFactory]:
    """Factory: a sparse image file attached as a loop device with partition scanning.
    Everything is undone afterwards: mounts, partitions, the loop device, stray nodes."""
    needs_root()
    if shutil.which("losetup") is None:
        pytest.skip("losetup not available")
    created: list[str] = []

    def make(size_mib: int = 512) -> str:
        image = tmp_path / f"disk{len(created)}.img"
        with image.open("wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        dev = subprocess.run(
            ["losetup", "-f", "--show", "-P", str(image)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        created.append(dev)
        return dev

    try:
        yield make
    finally:
        for dev in created:
            for target in _mounts_of(dev):
                subprocess.run(["umount", "-l", target], check=False)
            subprocess.run(["partx", "-d", dev], capture_output=True, check=False)
            subprocess.run(["losetup", "-d", dev], check=False)
            name = os.path.basename(dev)
            for node in Path("/dev").glob(f"{name}p*"):
                # Nodes the script made with mknod (devtmpfs removes its own).
                if not Path(f"/sys/class/block/{node.name}").exists():
                    node.unlink(missing_ok=True)


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A directory put first on PATH for test doubles (fake nvidia-smi, hub CLIs)."""
    d = tmp_path / "bin"
    d.mkdir()
    return d


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    port: int
    dir: Path
    authorized_keys: Path
    host_key_pub: Path
    endpoint: SshEndpoint


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    needs_root()
    if not Path(SSHD).exists():
        pytest.skip(
            "openssh-server not installed (tests/scripts/install-deps.sh);"
            " the lab e2e covers fan-out"
        )
    needs_tools("ssh", "ssh-keygen", "rsync")
    d = tmp_path / "sshd"
    d.mkdir(mode=0o700)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True
    )
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "op")], check=True)
    ak = d / "authorized_keys"
    ak.write_text((d / "op.pub").read_text())
    ak.chmod(0o600)
    port = _free_port()
    (d / "config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {d / 'host'}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {ak}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "",
            ]
        )
    )
    kh = d / "known_hosts"
    host_pub = (d / "host.pub").read_text().split()
    kh.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "config")],
        stdout=subprocess.DEVNULL,
        stderr=(d / "sshd.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
                time.sleep(0.1)
        yield Sshd(
            port=port,
            dir=d,
            authorized_keys=ak,
            host_key_pub=d / "host.pub",
            endpoint=SshEndpoint(
                "127.0.0.1", port=port, key_file=str(d / "op"), known_hosts_file=str(kh)
            ),
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
