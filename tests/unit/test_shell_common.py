"""Quoting, the prelude, remote_command, and hostile values staying inert when run."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import components.render.shell as shell
from components.render.shell._common import check_abs_path, check_name, heredoc, q, render

HOSTILE = 'a\'b; touch {marker}; echo $(touch {marker}) `touch {marker}` "x" \\ $HOME'


def run(script: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], input=stdin, capture_output=True, text=True, check=False
    )


def test_q_makes_one_inert_word() -> None:
    value = "a'b; rm -rf / $(x) `y`"
    assert shlex.split(q(value)) == [value]


def test_prelude_first_line_and_log_format() -> None:
    script = render("h20-1", "storage", 'log "hello"\n')
    assert script.splitlines()[0] == "set -euo pipefail"
    proc = run(script)
    assert proc.returncode == 0
    assert proc.stderr == "[h20-1] storage: hello\n"
    assert proc.stdout == ""


def test_die_exits_1_with_prefixed_message() -> None:
    proc = run(render("h", "image", 'die "boom"\necho never\n'))
    assert proc.returncode == 1
    assert proc.stderr == "[h] image: error: boom\n"
    assert "never" not in proc.stdout


def test_jstr_escapes_for_json() -> None:
    import json

    value = 'quote" back\\slash\ttab\nline'
    proc = run(render("h", "x", f"jstr {q(value)}\n"))
    assert json.loads(proc.stdout) == value


def test_hostile_values_stay_inert_when_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = HOSTILE.format(marker=marker)
    scripts: list[Callable[[], str]] = [
        lambda: shell.storage_delete(hostile, "/dev/sdb", "/data01"),
        lambda: shell.weights_keep(hostile, "/data01/model"),
        lambda: shell.image_delete(hostile, "vllm/vllm-openai:v1"),
        lambda: render("h", "x", f"log {q(hostile)}\n"),
    ]
    for make in scripts:
        proc = run(make())
        assert proc.returncode == 0, proc.stderr
        assert hostile in proc.stderr
    assert not marker.exists()


def test_hostile_path_in_verify_stays_inert(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # No whitespace (refused), but quotes, ';', '$(...)' and ${IFS} tricks.
    path = f"{tmp_path}/a'b;touch${{IFS}}{marker};$(touch${{IFS}}{marker})"
    proc = run(shell.weights_verify("h", path))
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr
    assert not marker.exists()


def test_remote_command_runs_the_script_through_a_posix_shell() -> None:
    script = render("h", "x", 'printf \'%s|\' "$HOST" "$STEP"\nread -r secret\necho "$secret"\n')
    cmd = shell.remote_command(script)
    assert cmd.startswith("bash -c ")
    # The remote login shell may be dash: it must parse the quoting.
    proc = subprocess.run(
        ["sh", "-c", cmd], input="s3cret\n", capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "h|x|s3cret\n"
    assert shell.remote_command(script, sudo=True).startswith("sudo -n bash -c ")


def test_heredoc_refuses_its_own_tag() -> None:
    with pytest.raises(ValueError):
        heredoc("a\nEOF\nb", "EOF")
    opening, body = heredoc("x = 1", "PY")
    assert opening == "<<'PY'"
    assert body == "x = 1\nPY\n"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("/data01/model", True),
        ("/data01//model/", True),
        ("data01", False),
        ("/data 01", False),
        ("/a/../b", False),
        ("/a/./b", False),
        ("/a\nb", False),
    ],
)
def test_check_abs_path(value: str, ok: bool) -> None:
    if ok:
        assert check_abs_path(value, "p") == "/data01/model"
    else:
        with pytest.raises(ValueError):
            check_abs_path(value, "p")


def test_check_name() -> None:
    assert check_name("h20-2", "m") == "h20-2"
    for bad in ("", "../x", "a b", "-x", "a/b"):
        with pytest.raises(ValueError):
            check_name(bad, "m")


def _all_scripts() -> dict[str, str]:
    fs = shell.FanoutSpec("h1", "h2", "10.0.0.1", "/data/m", marker="h2", from_address="10.0.0.2")
    ep = shell.SshEndpoint("10.0.0.1", key_file="/k", known_hosts_file="/kh")
    return {
        "preflight": shell.preflight(
            shell.PreflightSpec(
                host="h",
                weights_path="/data/m",
                gpus=shell.GpuExpectation(8, "H20", 96),
                ports=(8000, 6379),
                own_containers=("a",),
                owner="p/s",
                required_commands=("python3",),
            )
        ),
        "storage": shell.storage(shell.StorageSpec("h", "/dev/disk/by-id/nvme-data-1", "/data01")),
        "storage_delete": shell.storage_delete("h", "/dev/sdb", "/data01"),
        "docker": shell.docker_install(
            shell.DockerSpec("h", install=True, registry_mirrors=("https://m.example",))
        ),
        "docker_debs": shell.docker_debs_install(
            shell.DebsSpec("h", (shell.DebFile("docker-ce_1_amd64.deb", "0" * 64),))
        ),
        "image_load": shell.image_load(shell.ImageLoadSpec("h", "v/v:1", "/srv/x.tar")),
        "image_pull": shell.image_pull("h", "v/v:1"),
        "image_check": shell.image_check("h", "v/v:1", "sha256:" + "a" * 64),
        "image_delete": shell.image_delete("h", "v/v:1"),
        "download": shell.weights_download(
            shell.DownloadSpec("h", "huggingface", "org/m", "/data/m", token="stdin", owner="p/s")
        ),
        "verify": shell.weights_verify("h", "/data/m"),
        "ensure_dir": shell.weights_ensure_dir("h", "/data/m", "p/s"),
        "claim_end": shell.weights_claim_end("h", "/data/m", "p/s"),
        "delete": shell.weights_delete("h", "/data/m", "p/s"),
        "keep": shell.weights_keep("h", "/data/m"),
        "keygen": shell.fanout_keygen(fs),
        "grant": shell.fanout_grant(fs),
        "pull": shell.fanout_pull(fs),
        "revoke": shell.fanout_revoke(fs),
        "cleanup": shell.fanout_cleanup(fs),
        "driver": shell.fanout_driver(fs, ep, ep),
    }


@pytest.mark.parametrize("name", sorted(_all_scripts()))
def test_every_script_starts_strict_and_parses(name: str) -> None:
    script = _all_scripts()[name]
    assert script.startswith("set -euo pipefail\n")
    assert script.endswith("\n")
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("name", sorted(_all_scripts()))
def test_shellcheck_warnings(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.sh"
    path.write_text(_all_scripts()[name])
    # SC2034: variables set for a fragment that this particular script does not use.
    proc = subprocess.run(
        ["shellcheck", "-s", "bash", "-S", "warning", "-e", "SC2034", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


IMAGE_ID = "sha256:" + "ab" * 32
FANOUT = shell.FanoutSpec(
    source_host="n1",
    target_host="n2",
    source_address="10.0.0.1",
    path="/data01/models/tiny",
    marker="n1-to-n2",
    from_address="10.0.0.2",
)
SRC = shell.SshEndpoint("10.0.0.1")
DST = shell.SshEndpoint("10.0.0.2")
STEP_SCRIPTS: list[tuple[str, str, Callable[[], str]]] = [
    ("n1", "docker", lambda: shell.docker_install(shell.DockerSpec(host="n1", install=True))),
    (
        "n1",
        "docker",
        lambda: shell.docker_debs_install(
            shell.DebsSpec(host="n1", debs=(shell.DebFile("a.deb", "0" * 64),))
        ),
    ),
    ("n2", "fanout", lambda: shell.fanout_keygen(FANOUT)),
    ("n1", "fanout", lambda: shell.fanout_grant(FANOUT)),
    ("n1", "fanout", lambda: shell.fanout_revoke(FANOUT)),
    ("n2", "fanout", lambda: shell.fanout_pull(FANOUT)),
    ("n2", "fanout", lambda: shell.fanout_cleanup(FANOUT)),
    ("n1", "image", lambda: shell.image_check("n1", "eng:1", IMAGE_ID)),
    ("n1", "image", lambda: shell.image_present("n1", "eng:1", IMAGE_ID)),
    ("n1", "image", lambda: shell.image_has_ray("n1", "eng:1")),
    (
        "n1",
        "image",
        lambda: shell.image_load(shell.ImageLoadSpec("n1", "eng:1", "/data01/eng.tar")),
    ),
    ("n1", "image", lambda: shell.image_pull("n1", "eng:1")),
    ("n1", "image", lambda: shell.image_delete("n1", "eng:1")),
    ("n1", "preflight", lambda: shell.preflight(shell.PreflightSpec("n1", "/data01/m/x"))),
    (
        "n1",
        "storage",
        lambda: shell.storage(shell.StorageSpec("n1", "/dev/disk/by-id/nvme-a", "/data01", "xfs")),
    ),
    ("n1", "storage", lambda: shell.storage_delete("n1", "/dev/disk/by-id/nvme-a", "/data01")),
    ("n1", "weights", lambda: shell.weights_verify("n1", "/data01/m/x")),
    (
        "n1",
        "weights",
        lambda: shell.weights_download(
            shell.DownloadSpec("n1", "huggingface", "org/m", "/data01/m/x", owner="p/s")
        ),
    ),
    ("n1", "weights", lambda: shell.weights_ensure_dir("n1", "/data01/m/x", "p/s")),
    ("n1", "weights", lambda: shell.weights_claim_end("n1", "/data01/m/x", "p/s")),
    ("n1", "weights", lambda: shell.weights_delete("n1", "/data01/m/x", "p/s")),
    ("n1", "weights", lambda: shell.weights_keep("n1", "/data01/m/x")),
]


@pytest.mark.parametrize(("host", "step", "make"), STEP_SCRIPTS)
def test_every_step_labels_its_messages_with_host_and_step(
    host: str, step: str, make: Callable[[], str]
) -> None:
    """What the operator reads in `pulumi up`: `[n1] image: ...` / `[n1] image: error: ...`.
    The script's own log and die functions are run (the lines before its body)."""
    script = make()
    head = script[: script.index("\ndie() ") + 1]
    head += script[len(head) :].split("\n", 1)[0] + "\n"
    proc = subprocess.run(
        ["bash", "-c", head + "log probe; die broken"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr == f"[{host}] {step}: probe\n[{host}] {step}: error: broken\n"


@pytest.mark.parametrize(
    ("device", "key"),
    [
        ("/dev/disk/by-id/nvme-Samsung_SSD_990_S7:1", "disk_by-id_nvme-Samsung_SSD_990_S7_1"),
        ("/dev/mapper/vg0-data", "mapper_vg0-data"),
        ("/dev/loop7p1", "loop7p1"),
    ],
)
def test_the_storage_record_of_a_device_keeps_its_name(device: str, key: str) -> None:
    """The record `storage` writes after formatting a disk is named by this key: a prepared
    host is recognised by it on every later `up` (and after an upgrade of this program)."""
    from components.render.shell.storage import _record_key

    assert _record_key(device) == key


@pytest.mark.parametrize(
    ("device", "leaf"),
    [("/dev/sdb", "sdb"), ("/dev/nvme0n1p1", "nvme0n1p1"), ("/dev/disk/by-id/", "")],
)
def test_a_kernel_device_name_is_refused_with_how_to_find_the_stable_one(
    device: str, leaf: str
) -> None:
    from components.render.shell.storage import stable_device_problem

    assert stable_device_problem(device) == (
        f"{device} is a kernel name, which can name another disk after a reboot (/dev/sdb "
        "may come back as /dev/sdc); give the disk's stable name: its link under "
        f"/dev/disk/by-id/ (`ls -l /dev/disk/by-id/` on the host shows which one points at "
        f"{leaf}), or /dev/disk/by-uuid/, by-partuuid/, by-path/, /dev/mapper/<name>"
    )
    assert stable_device_problem(f"/dev/disk/by-id/nvme-{leaf or 'x'}") is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: shell.storage(shell.StorageSpec("n1", "/dev/x", "/data01", "xfs")),
            "storage.device",
        ),
        (
            lambda: shell.storage(shell.StorageSpec("n1", "/dev/disk/by-id/a", "data01", "xfs")),
            "storage.mount_point",
        ),
        (
            lambda: shell.storage(
                shell.StorageSpec("n1", "/dev/disk/by-id/a", "/data01", "xfs", fstab_path="x")
            ),
            "fstab_path",
        ),
        (
            lambda: shell.storage(
                shell.StorageSpec("n1", "/dev/disk/by-id/a", "/data01", "xfs", state_dir="x")
            ),
            "state_dir",
        ),
        (lambda: shell.preflight(shell.PreflightSpec("n1", "models")), "model.path"),
        (
            lambda: shell.preflight(
                shell.PreflightSpec("n1", "/data01/m/x", storage_mount_point="data01")
            ),
            "storage.mount_point",
        ),
        (
            lambda: shell.image_load(shell.ImageLoadSpec("n1", "eng:1", "eng.tar")),
            "image tarball",
        ),
        (
            lambda: shell.docker_install(shell.DockerSpec("n1", daemon_json="daemon.json")),
            "daemon_json",
        ),
        (
            lambda: shell.docker_debs_install(
                shell.DebsSpec("n1", (shell.DebFile("a.deb", "0" * 64),), parent="/var")
            ),
            "deb parent directory",
        ),
    ],
)
def test_renderer_guards_name_what_they_refuse(make: Callable[[], str], message: str) -> None:
    """The renderers check their inputs again (the settings validated them first): a
    programming error is reported by the name of what was wrong."""
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(f"{message} ") or str(info.value).startswith(f"{message}:"), (
        str(info.value)
    )


def test_every_step_finds_sbin_tools_and_parses_c_locale_output() -> None:
    """Non-login SSH sessions of non-root users often lack the sbin directories (blkid, mkfs,
    losetup, ip, ss); tools' output is parsed in the C locale."""
    script = shell.image_delete("n1", "eng:1")
    head = script[: script.index("\ndie() ") + 1]
    proc = subprocess.run(
        ["bash", "-c", head + 'printf "%s\\n%s\\n" "$PATH" "$LC_ALL"'],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "de_DE.UTF-8"},
    )
    path, lc_all = proc.stdout.splitlines()
    assert path.split(":")[:2] == ["/usr/bin", "/bin"]  # the user's PATH first
    assert {"/usr/sbin", "/sbin"} <= set(path.split(":"))
    assert lc_all == "C"


def test_a_heredoc_refuses_text_that_would_end_it_early() -> None:
    with pytest.raises(ValueError, match=r"^heredoc tag VLLM_CLUSTER_EOF occurs in the text$"):
        heredoc("a\nVLLM_CLUSTER_EOF\nb")
    assert heredoc("a\n  b\n\n") == ("<<'VLLM_CLUSTER_EOF'", "a\n  b\nVLLM_CLUSTER_EOF\n")
