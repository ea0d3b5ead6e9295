"""Fixtures for end-to-end tests through the real ``pulumi`` CLI (``tools/build-toolchain.sh``).

Missing pieces skip a test with the reason only on a developer machine. When ``CI`` is set
(CI runs ``.ci/run`` with ``CI=true``), a missing toolchain, plugin or Docker engine FAILS the
test instead: a green CI must mean the engine really ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.e2e.pulumi_cli import (
    CORE_BINARIES,
    installed_plugins,
    missing_binaries,
    pulumi_env,
    sdk_plugin_versions,
)

#: The tiny image the engine test runs: a static busybox, imported (no registry here).
BUSYBOX_IMAGE = "vllm-e2e-busybox:1"
BUSYBOX_APPLETS = ("sh", "sleep", "echo", "cat", "ls", "true", "hostname", "id")


def in_ci() -> bool:
    """True when running under CI (``CI=true``, as .ci/run is started)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer machine; fail under CI, where nothing may be silently missing."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def toolchain_env() -> dict[str, str]:
    """The environment of tools/env.sh, once the CLI and the Python language host are found."""
    env = pulumi_env()
    missing = missing_binaries(CORE_BINARIES, env)
    if missing:
        unavailable(
            f"Pulumi toolchain not built: {', '.join(missing)} missing; run `make toolchain`"
        )
    return env


@pytest.fixture(scope="session")
def require_plugins(toolchain_env: dict[str, str]) -> Callable[..., None]:
    """Call with provider names (``"docker"``, ``"command"``) the test needs: each must be
    installed in PULUMI_HOME at the version its PyPI SDK asks for (make toolchain does it)."""

    def check(*names: str) -> None:
        installed = installed_plugins(toolchain_env)
        missing = [
            f"{name} {version}"
            for name, version in sdk_plugin_versions(names).items()
            if version not in installed.get(("resource", name), set())
        ]
        if missing:
            unavailable(
                f"provider plugin(s) not installed: {', '.join(missing)}; run `make toolchain` "
                "(tools/build-toolchain.sh says why a plugin cannot be built)"
            )

    return check


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The ``docker`` CLI, once the local Docker engine answers (tools/ensure-docker.sh)."""
    docker = shutil.which("docker")
    if docker is None:
        unavailable("docker CLI not installed; run `make docker`")
    probe = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        reason = probe.stderr.strip()[-200:]
        unavailable(f"Docker engine not answering ({reason}); run `make docker`")
    return docker


def _static_busybox(workdir: Path) -> Path:
    """A statically linked busybox from Debian's busybox-static package (fetched with apt)."""
    download = ["apt-get", "download", "-q", "busybox-static"]
    got = subprocess.run(download, cwd=workdir, capture_output=True, text=True, timeout=300)
    if got.returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
        subprocess.run(download, cwd=workdir, check=True, capture_output=True, timeout=300)
    deb = next(workdir.glob("busybox-static_*.deb"))
    unpacked = workdir / "pkg"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, timeout=120)
    return unpacked / "bin" / "busybox"


@pytest.fixture(scope="session")
def busybox_image(docker_engine: str) -> Iterator[str]:
    """A minimal local image (static busybox only), made with ``docker import`` if absent.

    The image is kept after the session: it is 2 MB and makes the next run faster.
    """
    present = subprocess.run(
        [docker_engine, "image", "inspect", BUSYBOX_IMAGE], capture_output=True, timeout=60
    )
    if present.returncode != 0:
        with tempfile.TemporaryDirectory(prefix="e2e-busybox-") as tmp:
            workdir = Path(tmp)
            busybox = _static_busybox(workdir)
            tarball = workdir / "rootfs.tar"
            with tarfile.open(tarball, "w") as tar:
                tar.add(busybox, arcname="bin/busybox")
                for applet in BUSYBOX_APPLETS:
                    link = tarfile.TarInfo(f"bin/{applet}")
                    link.type = tarfile.SYMTYPE
                    link.linkname = "busybox"
                    tar.addfile(link)
            subprocess.run(
                [
                    docker_engine,
                    "import",
                    "--change",
                    'CMD ["/bin/sleep", "86400"]',
                    str(tarball),
                    BUSYBOX_IMAGE,
                ],
                check=True,
                capture_output=True,
                timeout=300,
            )
    yield BUSYBOX_IMAGE
