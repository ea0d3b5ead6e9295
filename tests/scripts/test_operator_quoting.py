"""Operator-side lines with hostile paths and names: run by bash, they pass the literal
string (spaces, quotes, ``$(...)``) and never run what it contains."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from components.render.deployment import image_stream_load
from components.render.operator_files import curl_line
from components.render.ssh import SshTarget

from .conftest import run_script, write_exe

pytestmark = pytest.mark.scripts


def hostile(tmp_path: Path) -> str:
    """A name that runs `touch <tmp>/PWNED` if any shell evaluates it."""
    return f"a b'c\"d $(touch {tmp_path}/PWNED) `touch {tmp_path}/PWNED` ;e"


def test_curl_line_passes_a_hostile_model_name_literally(tmp_path: Path, fake_bin: Path) -> None:
    name = hostile(tmp_path)
    write_exe(fake_bin / "curl", '#!/bin/bash\nprintf "%s\\0" "$@"\n')
    write_exe(fake_bin / "pulumi", "#!/bin/sh\necho sk-from-stack\n")
    line = curl_line("http://10.0.0.1:8000/v1", name)
    proc = run_script(line, path_prefix=fake_bin)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split("\0")[:-1]
    assert args[0:2] == ["-s", "http://10.0.0.1:8000/v1/chat/completions"]
    assert "Authorization: Bearer sk-from-stack" in args
    assert len(args) == 8, args  # one command, exactly the intended words
    body = args[args.index("-d") + 1]
    assert json.loads(body)["model"] == name
    assert not (tmp_path / "PWNED").exists()
    assert "sk-" not in line  # the key is looked up when the line runs, never in it


def test_image_stream_load_with_a_hostile_tarball_path(tmp_path: Path, fake_bin: Path) -> None:
    tar = tmp_path / hostile(tmp_path).replace("/", "_")
    tar.write_bytes(b"image bytes")
    # A stand-in ssh: the first check says the image is absent, `docker load` records what
    # it received, the second check says present.
    write_exe(
        fake_bin / "ssh",
        "#!/bin/bash\n"
        f"state={shlex.quote(str(tmp_path / 'calls'))}\n"
        'n=$(( $(cat "$state" 2>/dev/null || echo 0) + 1 )); echo "$n" >"$state"\n'
        'case "$n" in 1) cat >/dev/null; echo absent ;;\n'
        f"  2) cat >{shlex.quote(str(tmp_path / 'loaded'))} ;;\n"
        "  *) cat >/dev/null; echo present ;; esac\n",
    )
    target = SshTarget("192.0.2.10", "root", 22, "/nonexistent/key", "/nonexistent/kh")
    script = image_stream_load(target, "n1", "eng:1", "sha256:" + "ab" * 32, str(tar))
    proc = run_script(script, path_prefix=fake_bin)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "loaded").read_bytes() == b"image bytes"
    assert f"[n1] image: streaming {tar} (" in proc.stderr
    assert not (tmp_path / "PWNED").exists()
