"""The .deb install step for real (stand-in apt-get; this machine's Docker is untouched):
only the files the program sent, each with its checksum, from a fresh root-only directory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from components.render.shell import DebFile, DebsSpec, docker_debs_install

from .conftest import needs_root, write_exe

pytestmark = pytest.mark.scripts

DEBS = {"containerd.io_1.7_amd64.deb": b"containerd", "docker-ce_27.0_amd64.deb": b"docker-ce"}


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def env(tmp_path: Path, fake_bin: Path) -> dict[str, Path]:
    needs_root()
    # The stand-in apt-get copies the files it is given (to compare) and "installs" Docker.
    write_exe(
        fake_bin / "apt-get",
        "#!/bin/bash\n"
        f'out={tmp_path}/apt\nmkdir -p "$out"\n'
        'for a in "$@"; do case "$a" in\n'
        '  /*) cp -- "$a" "$out/"; echo "$a" >>"$out/args" ;;\n'
        "esac; done\n"
        f"touch {tmp_path}/installed\n",
    )
    return {"parent": tmp_path / "state" / "debs", "tmp": tmp_path, "bin": fake_bin}


def script(env: dict[str, Path], files: dict[str, bytes] | None = None) -> str:
    files = DEBS if files is None else files
    return docker_debs_install(
        DebsSpec(
            host="h1",
            debs=tuple(DebFile(n, hashlib.sha256(d).hexdigest()) for n, d in files.items()),
            parent=str(env["parent"]),
            dockerd_check=f"[ -e {env['tmp']}/installed ]",
            start_command=f"touch {env['tmp']}/started",
        )
    )


def run(env: dict[str, Path], text: str, stdin: bytes) -> tuple[int, str, str]:
    proc = subprocess.run(
        ["bash", "-c", text],
        input=stdin,
        capture_output=True,
        env={**os.environ, "PATH": f"{env['bin']}:{os.environ['PATH']}"},
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def installed(env: dict[str, Path]) -> dict[str, bytes]:
    apt = env["tmp"] / "apt"
    if not apt.exists():
        return {}
    return {p.name: p.read_bytes() for p in apt.iterdir() if p.name != "args"}


def test_installs_only_the_listed_verified_files_and_removes_the_directory(
    env: dict[str, Path],
) -> None:
    env["parent"].mkdir(parents=True, mode=0o700)
    # A file planted where an earlier release kept the .debs, and one sent but not listed.
    (env["parent"] / "evil.deb").write_bytes(b"evil")
    stream = tar_of({**DEBS, "extra.deb": b"not listed"})
    rc, out, err = run(env, script(env), stream)
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"installed": True}
    assert installed(env) == DEBS
    assert (env["tmp"] / "started").exists()
    args = (env["tmp"] / "apt" / "args").read_text().split()
    assert all(a.startswith(f"{env['parent']}/run.") for a in args)
    # The per-run directory is gone; only the planted file is left in the parent.
    assert sorted(p.name for p in env["parent"].iterdir()) == ["evil.deb"]
    assert (env["parent"].stat().st_mode & 0o777) == 0o700


def test_checksum_mismatch_installs_nothing(env: dict[str, Path]) -> None:
    tampered = {**DEBS, "docker-ce_27.0_amd64.deb": b"docker-ce, tampered"}
    rc, _out, err = run(env, script(env), tar_of(tampered))
    assert rc == 1
    assert "docker-ce_27.0_amd64.deb: SHA-256" in err and "refusing to install" in err
    assert installed(env) == {}
    assert list(env["parent"].iterdir()) == []


def test_missing_file_installs_nothing(env: dict[str, Path]) -> None:
    only_one = tar_of({"containerd.io_1.7_amd64.deb": b"containerd"})
    rc, _out, err = run(env, script(env), only_one)
    assert rc == 1, err
    assert installed(env) == {}


@pytest.mark.parametrize(("owner", "mode"), [(0, 0o777), (0, 0o720), (65534, 0o700)])
def test_refuses_a_directory_others_could_write(
    env: dict[str, Path], owner: int, mode: int
) -> None:
    env["parent"].mkdir(parents=True)
    os.chown(env["parent"], owner, 0)
    env["parent"].chmod(mode)
    rc, _out, err = run(env, script(env), tar_of(DEBS))
    assert rc == 1
    assert "refusing to install .deb files from it" in err
    assert installed(env) == {}


def test_docker_present_sends_nothing_to_install(env: dict[str, Path]) -> None:
    (env["tmp"] / "installed").touch()
    rc, out, err = run(env, script(env), tar_of(DEBS))
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"installed": False}
    assert installed(env) == {}
    assert not env["parent"].exists()


def test_renderer_refuses_odd_names() -> None:
    for name in ("../x.deb", "a b.deb", "x.deb; reboot", "-x.deb", "x.tar"):
        with pytest.raises(ValueError, match=r"plain \.deb file name"):
            docker_debs_install(DebsSpec("h", (DebFile(name, "0" * 64),)))
