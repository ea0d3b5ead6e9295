"""Shared fixtures for running the rendered scripts for real on this machine.

These tests need root (loop devices, mount, mknod). They skip — with the reason — only when
not root or when losetup is missing; any other missing tool is a failure that names
``tests/scripts/install-deps.sh``, which installs them (Debian packages).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
