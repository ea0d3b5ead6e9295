"""The previous release of this program, runnable beside the current one, for upgrade tests.

`PREVIOUS_RELEASE` is the last commit whose host steps were the program's own dynamic
resources (module `components.commands`) and whose docker provider was the project's own
bridge (plugin version 5.2.0). Upgrading a stack it deployed is what every existing user does next.

The release is unpacked from this repository's history (`git archive`, no network) into the
toolchain cache, outside the repository, with its own virtualenv (its requirements.txt) and
its own docker provider built by its own tools/build-toolchain.sh; all three are cached, so
only the first run pays for them (cold: a few minutes, mostly the provider build).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREVIOUS_RELEASE = "806891f2457b883e84d1708c787ee9b791cebeb3"
# The docker provider version the previous release's SDK pin asks for.
PREVIOUS_DOCKER_VERSION = "5.2.0"


@dataclass(frozen=True)
class PreviousRelease:
    root: Path  # the unpacked project (Pulumi.yaml, __main__.py, components/, .venv)
    docker_provider: Path  # its pulumi-resource-docker, to register in a PULUMI_HOME


def _cache_dir() -> Path:
    cache = os.environ.get("TOOLCHAIN_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vllm-cluster-toolchain"
    )
    return Path(cache) / "previous-release" / PREVIOUS_RELEASE[:12]


def _run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-3000:]}"
        )


def _unpack(root: Path) -> None:
    if (root / "Pulumi.yaml").exists():
        return
    known = subprocess.run(
        ["git", "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"], cwd=REPO, check=False
    )
    if known.returncode != 0:
        raise RuntimeError(
            f"commit {PREVIOUS_RELEASE} is not in this clone's history (a shallow clone?); "
            "the upgrade test needs it: git fetch --unshallow"
        )
    partial = root.with_name(root.name + ".partial")
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    partial.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "archive", "--format=tar", PREVIOUS_RELEASE], cwd=REPO, stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-f", "-"], cwd=partial, stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {PREVIOUS_RELEASE} failed")
    partial.rename(root)


def _virtualenv(root: Path) -> None:
    marker = root / ".venv" / ".installed"
    if marker.exists():
        return
    _run([sys.executable, "-m", "venv", str(root / ".venv")], cwd=root)
    pip = [str(root / ".venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "--disable-pip-version-check", "-r", "requirements.txt"], cwd=root)
    marker.touch()


def _docker_provider(root: Path, base_env: dict[str, str]) -> Path:
    """Its own tools/build-toolchain.sh builds its docker provider into its own .toolchain
    (the script skips the build when that exact build is there)."""
    env = {
        k: v
        for k, v in base_env.items()
        if k not in ("TOOLCHAIN_DIR", "STATE_DIR", "PULUMI_HOME", "LAB_DIR", "REPO_ROOT")
    }
    # Its PULUMI_HOME must not have a docker 5.2.0 registered, or the script would skip.
    env["PULUMI_HOME"] = str(root / ".state" / "build-home")
    # Its Go caches (a few GB) in a cache of its own, dropped once the binary is built: that
    # script predates the pruning of tools/build-toolchain.sh.
    go_cache = root / ".toolchain-cache"
    env["TOOLCHAIN_CACHE"] = str(go_cache)
    try:
        _run(["bash", "tools/build-toolchain.sh", "docker"], cwd=root, env=env)
    finally:
        if go_cache.exists():
            subprocess.run(["chmod", "-R", "u+w", str(go_cache)], check=False)
            shutil.rmtree(go_cache, ignore_errors=True)
    binary = root / ".toolchain" / "bin" / "pulumi-resource-docker"
    if not binary.is_file():
        raise RuntimeError(f"the previous release's toolchain built no {binary}")
    return binary


def previous_release(base_env: dict[str, str]) -> PreviousRelease:
    """The previous release, unpacked, with its virtualenv and docker provider (cached)."""
    root = _cache_dir()
    _unpack(root)
    _virtualenv(root)
    return PreviousRelease(root=root, docker_provider=_docker_provider(root, base_env))
