"""From bare servers to a serving endpoint with `pulumi up`, for real in the bare lab.

`lab/lab bare up 2` (lab/host/bare.py) makes two hosts as a server is after the OS install:
systemd as PID 1, no Docker, a blank spare disk, no hub client; beside them the lab hub
(a fixture serving the tiny model over the Hugging Face API) and the docker.io .deb files
resolved for the hosts' release. The stack is Pulumi.bare.yaml's. Only the GPUs and the
engine are simulated: systemd, SSH, the disk, dpkg, Docker, the real huggingface_hub client
(inside the engine image) and HTTP are real.

The tests are one scenario, in file order on one module fixture (the first `up`): the data-
safety drill and the first `up` happen in the fixture; then a second `up` changes nothing, a
reboot of both hosts comes back by itself, a data disk that did not mount stops the weights step
instead of filling the root disk, and `destroy` keeps the disk, the fstab line,
Docker and the weights. The bare hosts are their own (bare-N, 172.31.250.22N): the GPU lab's
hosts and stacks are not touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bench.events import StepTiming, step_timings, up_with_event_log
from tests.e2e.lab_stack import REPO, chat, write_stack_config
from tests.e2e.pulumi_cli import PulumiCommandError, PulumiStack, temporary_stack
from tests.lab.labutil import LAB_DIR, lab_cmd

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

NS = "vllm-cluster"
BARE_INVENTORY = LAB_DIR / "bare-inventory.json"
HOSTS = ("bare-1", "bare-2")
DRILL_FILE = "keep-me.txt"
DRILL_TEXT = "team data that no tool may erase\n"


@dataclass
class FirstUp:
    stack: PulumiStack
    inventory: dict[str, Any]
    outputs: dict[str, Any]
    steps: list[StepTiming]
    seconds: float
    output_text: str
    lab_up_s: float


def host_exec(host: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command inside a bare host (the outer container) as root."""
    return subprocess.run(
        ["docker", "exec", f"vllm-lab-{host}", *argv], capture_output=True, text=True, check=check
    )


def sh(host: str, script: str, check: bool = True) -> str:
    return host_exec(host, "bash", "-c", script, check=check).stdout


def bare_config(inventory: dict[str, Any], hosts: tuple[str, ...] = HOSTS) -> dict[str, Any]:
    """Pulumi.bare.yaml with the running bare lab's operator-side files (absolute paths, so a
    LAB_DIR elsewhere works) and only the named hosts."""
    doc = yaml.safe_load((REPO / "Pulumi.bare.yaml").read_text())
    config = doc["config"]
    config[f"{NS}:hosts"] = [h for h in config[f"{NS}:hosts"] if h["name"] in hosts]
    config[f"{NS}:ssh"] = {
        "private_key_file": inventory["ssh_private_key"],
        "known_hosts_file": inventory["known_hosts"],
    }
    config[f"{NS}:docker"]["deb_dir"] = inventory["debs"]["dir"]
    config[f"{NS}:model"]["config_file"] = str(Path(inventory["model_dir"]) / "config.json")
    config[f"{NS}:image"]["tarball"] = inventory["engine_image"]["tarball"]
    if len(hosts) == 1:
        config[f"{NS}:serving"]["pipeline_parallel_size"] = 1
    return dict(doc)


def spare_device(inventory: dict[str, Any], host: str) -> str:
    entry = next(h for h in inventory["hosts"] if h["name"] == host)
    return str(entry["spare_disk"]["device"])


def data_safety_drill(inventory: dict[str, Any]) -> None:
    """A spare disk that already holds a filesystem with a file (someone's data): `pulumi up`
    with allow_format refuses it, naming the key and the fix, and the file is intact."""
    dev = spare_device(inventory, "bare-2")
    # On this machine (the disk is a loop device here): what a previous owner left.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "team-data", dev], check=True)
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(["mount", dev, mnt], check=True)
        try:
            (Path(mnt) / DRILL_FILE).write_text(DRILL_TEXT)
        finally:
            subprocess.run(["umount", mnt], check=True)
    with temporary_stack(REPO, prefix="e2e-bare-drill") as drill:
        write_stack_config(drill, bare_config(inventory, hosts=("bare-2",)))
        with pytest.raises(PulumiCommandError) as refused:
            drill.up()
        text = refused.value.result.output
        assert (
            "holds a ext4 filesystem labelled 'team-data'; refusing to format it "
            "(storage.allow_format formats only a blank device; it never erases data). "
            "Fix: choose another storage.device"
        ) in text, text[-3000:]
        # Nothing after storage ran: no Docker was installed on the host.
        assert sh("bare-2", "command -v dockerd || echo none").strip() == "none"
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(["mount", "-o", "ro", dev, mnt], check=True)
        try:
            assert (Path(mnt) / DRILL_FILE).read_text() == DRILL_TEXT
        finally:
            subprocess.run(["umount", mnt], check=True)
    # The operator decides the data is unwanted and erases it (the fix the message names).
    subprocess.run(["wipefs", "-q", "-a", dev], check=True)


@pytest.fixture(scope="module")
def first_up() -> Iterator[FirstUp]:
    # Fresh bare hosts: blank disks, no Docker (a `bare down` first drops earlier ones).
    assert lab_cmd("bare", "down").returncode == 0
    started = time.monotonic()
    up = lab_cmd("bare", "up", "2", timeout=1800)
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    lab_up_s = time.monotonic() - started
    inventory = json.loads(BARE_INVENTORY.read_text())
    try:
        data_safety_drill(inventory)
        with (
            temporary_stack(REPO, prefix="e2e-bare") as stack,
            tempfile.TemporaryDirectory(prefix="e2e-bare-events-") as tmp,
        ):
            write_stack_config(stack, bare_config(inventory))
            t0 = time.monotonic()
            result, events = up_with_event_log(stack, Path(tmp) / "events.jsonl", t0)
            seconds = time.monotonic() - t0
            yield FirstUp(
                stack,
                inventory,
                stack.outputs(show_secrets=True),
                step_timings(events),
                seconds,
                result.output,
                lab_up_s,
            )
    finally:
        lab_cmd("bare", "down")


def step(first: FirstUp, name: str) -> StepTiming:
    return next(s for s in first.steps if s.name == name)


def test_first_up_takes_bare_hosts_to_a_serving_endpoint(first_up: FirstUp) -> None:
    out = first_up.outputs
    print(
        f"\nbare lab up (2 hosts): {first_up.lab_up_s:.1f} s; first pulumi up: "
        f"{first_up.seconds:.1f} s"
    )
    for s in first_up.steps:
        if s.custom and s.name.startswith(("bare-", "weights-", "serving-")):
            print(
                f"  {s.name:28} {s.op:7} {s.start_s:6.1f} s -> {s.end_s:6.1f} s "
                f"({s.duration_s:5.1f} s)"
            )
    for host in HOSTS:
        for role in ("preflight", "storage", "deb-copy", "docker-install", "image-load"):
            assert not step(first_up, f"{host}-{role}").failed
    # Preflight (read-only) before storage, storage before Docker, on each host.
    for host in HOSTS:
        pre, sto = step(first_up, f"{host}-preflight"), step(first_up, f"{host}-storage")
        install = step(first_up, f"{host}-deb-copy")
        assert pre.end_s <= sto.start_s and sto.end_s <= install.start_s

    ok = chat(out["endpoint"], out["api_key"], out["served_model_name"])
    assert ok.status_code == 200, ok.text
    answer = ok.json()["choices"][0]["message"]["content"]
    assert "172.31.250.221" in answer and "172.31.250.222" in answer, answer
    assert chat(out["endpoint"], None, out["served_model_name"]).status_code == 401

    text = first_up.output_text
    assert "[bare-1] weights: no hub CLI on bare-1: running the one in the engine image" in text
    token = (LAB_DIR / "hub" / "token").read_text().strip()
    state = json.dumps(first_up.stack.export())
    assert token not in text and token not in state, "the hub token is in the output or state"

    debs = {p for p, _ in first_up.inventory["debs"]["packages"]}
    assert "docker.io" in debs
    for host in HOSTS:
        # The disk: one GPT partition, xfs, mounted, one fstab line by UUID.
        dev = spare_device(first_up.inventory, host)
        uuid = sh(host, f"blkid -o value -s UUID {dev}p1").strip()
        fstab = [ln for ln in sh(host, "cat /etc/fstab").splitlines() if "/data01" in ln]
        assert fstab == [f"UUID={uuid} /data01 xfs defaults,nofail 0 0"], fstab
        assert sh(host, "findmnt -n -o FSTYPE /data01").strip() == "xfs"
        # Docker from exactly the carried .debs, started by systemd and enabled.
        installed = sh(host, "dpkg-query -W -f '${Package}\\n' " + " ".join(sorted(debs)))
        assert set(installed.split()) == debs
        assert sh(host, "systemctl is-enabled docker; systemctl is-active docker").split() == [
            "enabled",
            "active",
        ]
        daemon = json.loads(sh(host, "cat /etc/docker/daemon.json"))
        assert daemon["registry-mirrors"] == ["https://registry-mirror.lab.invalid"]
        assert "nvidia" in daemon["runtimes"]  # what was there before is kept
        assert "docker" in sh(host, "id -nG ops").split()
        weights = json.loads(sh(host, "cat /data01/models/tiny-llama/.vllm-cluster-manifest.json"))
        assert "model.safetensors" in json.dumps(weights)


def test_second_up_changes_nothing(first_up: FirstUp) -> None:
    t0 = time.monotonic()
    first_up.stack.up(expect_no_changes=True)
    print(f"\nsecond up (no change): {time.monotonic() - t0:.1f} s")


def test_reboot_drill_everything_comes_back_by_itself(first_up: FirstUp) -> None:
    """Restart both hosts (their containers: systemd shuts down and boots again). The data
    mount (fstab), Docker (enabled unit), the serving containers (restart policy) and the
    endpoint come back with no one acting; `pulumi up --refresh` then finds nothing to do."""
    out = first_up.outputs
    t0 = time.monotonic()
    subprocess.run(
        ["docker", "restart", *(f"vllm-lab-{h}" for h in HOSTS)], check=True, capture_output=True
    )
    restarted = time.monotonic() - t0
    deadline = t0 + 180
    while True:
        try:
            ok = chat(out["endpoint"], out["api_key"], out["served_model_name"])
            if ok.status_code == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the endpoint did not come back in 180 s"
        time.sleep(0.5)
    back = time.monotonic() - t0
    print(f"\nreboot drill: docker restart {restarted:.1f} s; chat answered {back:.1f} s after")
    for host in HOSTS:
        assert sh(host, "findmnt -n -o FSTYPE /data01").strip() == "xfs"
        assert sh(host, "systemctl is-active docker").strip() == "active"
    first_up.stack.up(expect_no_changes=True, refresh=True)


def test_a_data_disk_that_did_not_mount_is_not_filled_from_under_it(first_up: FirstUp) -> None:
    """The disk did not mount (at boot, say): the drift check finds the weights missing and
    `up --refresh` fetches again. The fetch stops naming storage.mount_point instead of
    writing the weights onto the root disk under the empty mount point; once the disk is
    mounted again, `up` converges and serves."""
    out = first_up.outputs
    sh("bare-1", "umount -l /data01")  # lazily: the serving engine keeps its own view
    with pytest.raises(PulumiCommandError) as stopped:
        first_up.stack.up(refresh=True)
    text = stopped.value.result.output
    assert (
        "/data01 (storage.mount_point of host bare-1) is not mounted: the data disk did not "
        "mount (at boot?); refusing to write the weights onto the disk under it. Fix: mount it"
    ) in text, text[-3000:]
    assert sh("bare-1", "ls -A /data01") == ""  # nothing written under the mount point
    sh("bare-1", "mount /data01")  # the fix the message names (fstab has the line)
    first_up.stack.up(refresh=True)
    ok = chat(out["endpoint"], out["api_key"], out["served_model_name"])
    assert ok.status_code == 200, ok.text


def test_destroy_keeps_disk_fstab_docker_image_and_weights(first_up: FirstUp) -> None:
    first_up.stack.destroy()
    for host in HOSTS:
        assert sh(host, "findmnt -n -o FSTYPE /data01").strip() == "xfs"
        assert "/data01 xfs" in sh(host, "cat /etc/fstab")
        assert sh(host, "systemctl is-active docker").strip() == "active"
        assert sh(host, "docker ps -aq").strip() == ""  # the serving containers are gone
        assert "vllm-standin:lab" in sh(host, "docker images --format '{{.Repository}}:{{.Tag}}'")
        assert sh(host, "test -f /data01/models/tiny-llama/config.json && echo kept") == "kept\n"


RESUME_HUB = "vllm-lab-hub-resume"
RESUME_URL = "http://172.31.250.6:8080"
MIB = 1024 * 1024


def hub_sent(repo_id: str) -> dict[str, int]:
    with requests.get(f"{RESUME_URL}/_hubd/stats", timeout=5) as r:
        sent: dict[str, int] = r.json()["bytes_sent"]
    return {k.removeprefix(repo_id + "/"): v for k, v in sent.items() if k.startswith(repo_id)}


def test_a_download_the_hub_dropped_is_finished_by_the_next_up(
    first_up: FirstUp, tmp_path: Path
) -> None:
    """The hub goes away mid-download (a second fixture hub, throttled, whose server is
    killed): that `up` fails after its retries, naming the fix; when the hub is back, the
    next `up` finishes the download without fetching the completed files again. The file
    that was part-way starts over: huggingface_hub >= 1.18 keeps no partial file across
    processes (tests/scripts/test_hub_download.py measures it at the step level)."""
    repo_id = "lab/tiny-big"
    repo = tmp_path / "repo"
    shutil.copytree(first_up.inventory["model_dir"], repo)
    for name in ("big-a.bin", "big-b.bin"):
        (repo / name).write_bytes(os.urandom(3 * MIB))
    image = subprocess.run(
        ["docker", "inspect", "--format", "{{.Config.Image}}", "vllm-lab-bare-1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(["docker", "rm", "-f", RESUME_HUB], capture_output=True, check=False)
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            f"--name={RESUME_HUB}",
            "--network=vllm-lab",
            "--ip=172.31.250.6",
            "--label=vllm-lab.managed=1",
            f"--volume={REPO / 'lab/hub/hubd.py'}:/opt/hubd.py:ro",
            f"--volume={repo}:/srv/repo:ro",
            f"--volume={LAB_DIR / 'hub/token'}:/run/hub-token:ro",
            "--entrypoint=sleep",
            image,
            "infinity",
        ],
        capture_output=True,
        check=True,
    )

    def start_hub() -> None:
        subprocess.run(
            [
                "docker",
                "exec",
                "-d",
                RESUME_HUB,
                "python3",
                "/opt/hubd.py",
                "--repo",
                f"{repo_id}=/srv/repo",
                "--bind",
                "0.0.0.0",
                "--port",
                "8080",
                "--token-file",
                "/run/hub-token",
                "--throttle",
                f"big-b.bin={MIB // 2}",
            ],
            check=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                hub_sent(repo_id)
                return
            except requests.RequestException:
                assert time.monotonic() < deadline, "the resume hub did not start"
                time.sleep(0.2)

    overrides = {
        "id": repo_id,
        "hub_endpoint": RESUME_URL,
        "path": "/data01/models/tiny-big",
    }
    doc = bare_config(first_up.inventory, hosts=("bare-1",))
    doc["config"][f"{NS}:model"].update(overrides)
    try:
        start_hub()
        with temporary_stack(REPO, prefix="e2e-bare-resume") as stack:
            write_stack_config(stack, doc)
            failure: list[BaseException] = []
            done: list[str] = []

            def first() -> None:
                try:
                    done.append(stack.up().output)
                except BaseException as e:  # reported by the test thread below
                    failure.append(e)

            runner = threading.Thread(target=first)
            runner.start()
            deadline = time.monotonic() + 300
            while True:
                sent = hub_sent(repo_id)
                if sent.get("big-a.bin") == 3 * MIB and sent.get("big-b.bin", 0) >= MIB:
                    break
                assert runner.is_alive(), f"up ended before the hub went away: {failure}"
                assert time.monotonic() < deadline, f"no download progress: {sent}"
                time.sleep(0.1)
            before = sent
            subprocess.run(["docker", "exec", RESUME_HUB, "pkill", "-f", "hubd.py"], check=True)
            runner.join(timeout=600)
            assert failure and isinstance(failure[0], PulumiCommandError), (failure, done)
            text = failure[0].result.output
            assert "download of lab/tiny-big failed 3 times" in text, text[-3000:]
            assert "files already complete are kept" in text
            start_hub()  # fresh counters: what the next up fetches
            stack.up()
            again = {k: v for k, v in hub_sent(repo_id).items() if v}
            print(f"\nhub dropped after {json.dumps(before)}; the next up fetched {again}")
            assert again == {"big-b.bin": 3 * MIB}, again
            out = stack.outputs(show_secrets=True)
            ok = chat(out["endpoint"], out["api_key"], out["served_model_name"])
            assert ok.status_code == 200, ok.text
            for name in ("big-a.bin", "big-b.bin", "config.json"):
                theirs = hashlib.sha256((repo / name).read_bytes()).hexdigest()
                ours = sh("bare-1", f"sha256sum /data01/models/tiny-big/{name}").split()[0]
                assert ours == theirs, name
    finally:
        subprocess.run(["docker", "rm", "-f", RESUME_HUB], capture_output=True, check=False)
