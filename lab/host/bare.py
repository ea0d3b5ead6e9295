"""The bare lab: freshly installed servers, for the program's first `pulumi up` on them.

    lab/lab bare up [N]   bring the bare hosts to exactly N (default 1), the hub and the .debs
    lab/lab bare down     remove the bare hosts, the hub and their disks (the .debs stay cached)

A bare host (`bare-N`, container `vllm-lab-bare-N`, 172.31.250.(220+N)) is what a server has
right after the OS install (lab/host/bare/packages.txt): systemd as PID 1, sshd, python3,
the disk tools, the simulated NVIDIA driver tools, and NO Docker engine. It gets a blank spare
disk (a loop device, LAB_SPARE_DISK_MB, default 1024), linked as /dev/disk/by-id/lab-spare-disk
as udev would on a server, and its own Docker data volume for /var/lib/docker (the server's
root disk: overlayfs cannot sit on the container's own overlay).

Beside them this brings up, as fixtures:
- the lab hub (`vllm-lab-hub`, http://172.31.250.5:8080): lab/hub/hubd.py serving the tiny
  model as `lab/tiny-llama`, with a token generated once into .lab/hub/token (0600);
- the .deb files a user would carry in (.lab/debs): docker.io and exactly the packages it
  needs that the bare image lacks, resolved by apt against the bare image's own dpkg status
  and fetched with `apt-get download` from this machine's Debian mirror (same release),
  cached under ~/.cache/vllm-cluster-lab/debs.

Their inventory is .lab/bare-inventory.json (the GPU lab's .lab/inventory.json is untouched);
their host keys are pinned in .lab/ssh/known_hosts.bare. Stdlib only, like labctl.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import labctl as lc

BARE_IMAGE_REPO = "vllm-lab-bare-host"
BARE_RECIPE = lc.HERE / "bare"
MAX_BARE = 30  # addresses .221 ... .250
INVENTORY = lc.LAB_DIR / "bare-inventory.json"
KNOWN_HOSTS = lc.SSH_DIR / "known_hosts.bare"
HUB_CONTAINER = "vllm-lab-hub"
HUB_ADDRESS = "172.31.250.5"
HUB_PORT = 8080
HUB_DIR = lc.LAB_DIR / "hub"
HUB_TOKEN = HUB_DIR / "token"
HUB_REPO_ID = "lab/tiny-llama"
# The lab hub's token: lab-only, like the lab API key. Pulumi.bare.yaml holds it as the secret
# vllm-cluster:hubToken (encrypted with the lab-only passphrase of tools/env.sh), so the bare
# stack needs no setup; it opens nothing but the fixture hub on the lab's private network.
HUB_TOKEN_VALUE = "hf_lab_only_bare_stack_token_4c1d"
DEBS_LINK = lc.LAB_DIR / "debs"
DEB_CACHE = (
    Path(
        os.environ.get("VLLM_LAB_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vllm-cluster-lab"
    )
    / "debs"
)
SPARE_LINK = "/dev/disk/by-id/lab-spare-disk"
BARE_LABEL = "vllm-lab.bare-host"
# systemd as PID 1 in a container (no --privileged here): its own /run and /run/lock, the
# container signal systemd takes as "power off", and `container=docker` so it skips what a
# container cannot do (lab/host/bare/README.md).
SYSTEMD_FLAGS = [
    "--tmpfs=/run/lock",
    "--stop-signal=SIGRTMIN+3",
    "--env=container=docker",
]


@dataclass(frozen=True)
class BareHost(lc.Host):
    @property
    def name(self) -> str:
        return f"bare-{self.index}"

    @property
    def container(self) -> str:
        return f"vllm-lab-bare-{self.index}"

    @property
    def volume(self) -> str:
        return f"vllm-lab-bare-{self.index}-docker"

    @property
    def address(self) -> str:
        return f"172.31.250.{220 + self.index}"


# ---------------------------------------------------------------------------- image, debs


def ensure_bare_image() -> str:
    return lc.build_rootfs_image("bare host", BARE_RECIPE, BARE_IMAGE_REPO, lc.HERE / "image")


def dpkg_status_of(image: str) -> str:
    return lc.docker(
        "run", "--rm", "--network=none", "--entrypoint=cat", image, "/var/lib/dpkg/status"
    )


_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ")


def resolve_debs(image: str) -> list[tuple[str, str]]:
    """(package, version) that `apt-get install --no-install-recommends docker.io` would
    install on a host of `image`: apt resolves against the image's own dpkg status with this
    machine's package lists (same Debian release as the image)."""
    with tempfile.TemporaryDirectory() as tmp:
        status = Path(tmp) / "status"
        status.write_text(dpkg_status_of(image))
        argv = [
            "apt-get",
            "-s",
            "-q",
            "-o",
            f"Dir::State::status={status}",
            "-o",
            "APT::Install-Recommends=false",
            "-o",
            "APT::Install-Suggests=false",
            "install",
            "docker.io",
        ]
        proc = lc.run(argv, check=False)
        if proc.returncode != 0:
            lc.log("apt-get could not resolve docker.io: updating the package lists", "debs")
            lc.run(["apt-get", "update", "-qq"])
            proc = lc.run(argv)
    found = [(m[1], m[2]) for m in map(_INST.match, proc.stdout.splitlines()) if m]
    if not any(name == "docker.io" for name, _ in found):
        raise lc.LabError(f"apt-get would not install docker.io:\n{proc.stdout[-2000:]}")
    return sorted(found)


def ensure_debs(image: str) -> Path:
    """.lab/debs -> the cached directory holding exactly the resolved .deb files."""
    wanted = resolve_debs(image)
    digest = hashlib.sha256(json.dumps(wanted).encode()).hexdigest()[:12]
    _, suite = lc.debian_mirror()
    cache = DEB_CACHE / f"{suite}-{digest}"
    if not (cache / ".complete").exists():
        shutil.rmtree(cache, ignore_errors=True)
        part = cache.with_name(cache.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        lc.log(
            f"apt-get download of {len(wanted)} package(s): "
            + " ".join(f"{n}={v}" for n, v in wanted),
            "debs",
        )
        proc = lc.run(
            ["apt-get", "download", "-q", *(f"{n}={v}" for n, v in wanted)], check=False, cwd=part
        )
        if proc.returncode != 0:
            lc.run(["apt-get", "update", "-qq"])
            lc.run(["apt-get", "download", "-q", *(f"{n}={v}" for n, v in wanted)], cwd=part)
        got = sorted(p.name for p in part.glob("*.deb"))
        if len(got) != len(wanted):
            raise lc.LabError(f"apt-get download gave {len(got)} files for {len(wanted)}: {got}")
        (part / "packages.json").write_text(json.dumps(wanted, indent=1) + "\n")
        (part / ".complete").touch()
        part.rename(cache)
    size = sum(p.stat().st_size for p in cache.glob("*.deb"))
    if not (DEBS_LINK.is_symlink() and DEBS_LINK.readlink() == cache):
        if DEBS_LINK.is_dir() and not DEBS_LINK.is_symlink():
            shutil.rmtree(DEBS_LINK)
        DEBS_LINK.unlink(missing_ok=True)
        DEBS_LINK.parent.mkdir(parents=True, exist_ok=True)
        DEBS_LINK.symlink_to(cache)
    lc.log(f"{DEBS_LINK} -> {cache}: {len(wanted)} .deb files, {size / 1e6:.1f} MB", "debs")
    return cache


# ---------------------------------------------------------------------------- hub


def ensure_hub(image: str) -> dict[str, Any]:
    """The lab hub on the lab network, serving the tiny model; recreated when its inputs change."""
    model = lc.MODEL_DIR
    if not (model / "config.json").exists():
        raise lc.LabError(f"no tiny model at {model} (lab/engine/make_tiny_model.py makes it)")
    HUB_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(HUB_DIR, 0o700)
    if not HUB_TOKEN.exists() or HUB_TOKEN.read_text().strip() != HUB_TOKEN_VALUE:
        HUB_TOKEN.unlink(missing_ok=True)
        fd = os.open(HUB_TOKEN, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(HUB_TOKEN_VALUE + "\n")
    hubd = lc.REPO_ROOT / "lab" / "hub" / "hubd.py"
    args = [
        "--detach",
        f"--name={HUB_CONTAINER}",
        f"--network={lc.NETWORK}",
        f"--ip={HUB_ADDRESS}",
        f"--label={lc.LABEL}=1",
        "--label=vllm-lab.hub=1",
        "--restart=unless-stopped",
        f"--volume={hubd}:/opt/hubd.py:ro",
        f"--volume={model}:/srv/{HUB_REPO_ID}:ro",
        f"--volume={HUB_TOKEN}:/run/hub-token:ro",
        "--entrypoint=python3",
        image,
        "/opt/hubd.py",
        "--repo",
        f"{HUB_REPO_ID}=/srv/{HUB_REPO_ID}",
        "--bind",
        "0.0.0.0",
        "--port",
        str(HUB_PORT),
        "--token-file",
        "/run/hub-token",
    ]
    token_hash = hashlib.sha256(HUB_TOKEN.read_bytes()).hexdigest()
    inputs = [
        token_hash,
        lc.recipe_hash(hubd.parent),
        sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model.iterdir()),
    ]
    lc.ensure_container(HUB_CONTAINER, args, inputs)
    url = f"http://{HUB_ADDRESS}:{HUB_PORT}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_hubd/stats", timeout=3):
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            logs = lc.docker("logs", "--tail", "20", HUB_CONTAINER, check=False)
            raise lc.LabError(f"the lab hub does not answer at {url}:\n{logs}")
        time.sleep(0.3)
    lc.log(f"serving {HUB_REPO_ID} at {url} (token in {HUB_TOKEN})", "hub")
    return {"url": url, "repo_id": HUB_REPO_ID, "token_file": str(HUB_TOKEN)}


# ---------------------------------------------------------------------------- hosts


def run_args(
    host: BareHost, image: str, pubkey: str, spare: dict[str, Any], settings: lc.Settings
) -> list[str]:
    args = [
        "--detach",
        f"--name={host.container}",
        f"--hostname={host.name}",
        f"--network={lc.NETWORK}",
        f"--ip={host.address}",
        f"--network-alias={host.name}",
        f"--label={lc.LABEL}=1",
        f"--label={BARE_LABEL}={host.index}",
        "--stop-timeout=30",
        f"--shm-size={settings.shm_mb}m",
        f"--volume={host.volume}:/var/lib/docker",
        *lc.DIND_FLAGS,
        *SYSTEMD_FLAGS,
        f"--env=LAB_AUTHORIZED_KEY={pubkey}",
        f"--env=LAB_GPUS_JSON={json.dumps(settings.gpus_json(), sort_keys=True)}",
        f"--device={spare['device']}:{spare['device']}",
        f"--env=LAB_SPARE_DISK={spare['device']}",
    ]
    if settings.host_cpus:
        args.append(f"--cpus={settings.host_cpus:g}")
    return [*args, image]


def wait_ssh(host: BareHost, settings: lc.Settings) -> tuple[str, float]:
    """(host key, seconds): sshd answers with the key the host generated at first boot."""
    t0 = time.monotonic()
    deadline = t0 + settings.ready_timeout_s
    pinned = lc.LAB_DIR / "tmp" / f"known_hosts.{host.name}"
    pinned.parent.mkdir(parents=True, exist_ok=True)
    last = ""
    while time.monotonic() < deadline:
        key = lc.host_key_of(host.container)
        if key:
            pinned.write_text(f"{host.address} {key}\n")
            proc = lc.run(
                [
                    *lc.ssh_cmd(host.address, pinned, timeout_s=3),
                    "systemctl is-system-running --wait >/dev/null; true",
                ],
                check=False,
                timeout=60,
            )
            if proc.returncode == 0:
                pinned.unlink(missing_ok=True)
                return key, time.monotonic() - t0
            last = proc.stderr.strip()
        time.sleep(0.5)
    raise lc.LabError(
        f"{host.name}: sshd not answering after {settings.ready_timeout_s:.0f}s: {last}"
    )


def ensure_bare_host(
    host: BareHost, image: str, pubkey: str, settings: lc.Settings, spare_mb: int
) -> dict[str, Any]:
    spare = lc.ensure_spare_disk(host, spare_mb)
    lc.docker(
        "volume",
        "create",
        f"--label={lc.LABEL}=1",
        f"--label={BARE_LABEL}={host.index}",
        host.volume,
    )
    action = lc.ensure_container(host.container, run_args(host, image, pubkey, spare, settings))
    if action == "recreated":
        lc.log("configuration or image changed: recreated (volume and disk kept)", host.name)
    if action != "running":
        lc.log(f"{action} {host.container} at {host.address} (systemd, no Docker)", host.name)
    key, took = wait_ssh(host, settings)
    lc.log(f"ready in {took:.1f}s; spare disk {spare['device']} as {SPARE_LINK}", host.name)
    return {
        "name": host.name,
        "container": host.container,
        "address": host.address,
        "nic": "eth0",
        "user": "root",
        "port": 22,
        "host_key": key,
        "spare_disk": {**spare, "link": SPARE_LINK},
        "gpu": {
            "model": settings.gpu_model,
            "count": settings.gpus,
            "memory_mib": settings.gpu_memory_mib,
        },
    }


def bare_hosts() -> dict[int, str]:
    out = lc.docker(
        "ps",
        "-a",
        "--filter",
        f"label={BARE_LABEL}",
        "--format",
        '{{.Names}} {{.Label "' + BARE_LABEL + '"}}',
    )
    found: dict[int, str] = {}
    for line in out.splitlines():
        name, _, index = line.partition(" ")
        if index.isdigit():
            found[int(index)] = name
    return found


def remove_bare_host(index: int) -> None:
    host = BareHost(index)
    if lc.container_state(host.container) is not None:
        lc.run(["docker", "stop", "-t", "30", host.container], check=False, timeout=90)
        lc.run(["docker", "rm", "-f", "-v", host.container], check=False)
    lc.run(["docker", "volume", "rm", "-f", host.volume], check=False)
    released = lc.release_spare_disk(host.disk_file)
    lc.log("removed" + (f" (detached {', '.join(released)})" if released else ""), host.name)


def remove_all() -> None:
    """Every bare host and the hub (called by `lab down` too)."""
    hosts = bare_hosts()
    with ThreadPoolExecutor(max_workers=max(len(hosts), 1)) as pool:
        list(pool.map(remove_bare_host, sorted(hosts)))
    if lc.container_state(HUB_CONTAINER) is not None:
        lc.docker("rm", "-f", HUB_CONTAINER)
        lc.log(f"removed {HUB_CONTAINER}", "hub")
    for path in (INVENTORY, KNOWN_HOSTS):
        path.unlink(missing_ok=True)


def cmd_bare_up(count: int) -> int:
    if not 1 <= count <= MAX_BARE:
        raise lc.LabError(f"bare host count must be 1..{MAX_BARE}, got {count}")
    settings = lc.Settings.from_env()
    spare_mb = settings.spare_disk_mb or 1024
    lc.ensure_docker()
    with lc.lab_lock():
        lc.log(f"bringing the bare lab to {count} host(s) (no Docker, {spare_mb} MB blank disk)")
        pubkey = lc.ensure_ssh_key()
        image = ensure_bare_image()
        lc.ensure_network()
        lc.run_engine_steps()  # the stand-in engine tarball and the tiny model the hub serves
        hub = ensure_hub(image)
        debs = ensure_debs(image)
        for index in sorted(i for i in bare_hosts() if i > count):
            remove_bare_host(index)
        hosts = [BareHost(i) for i in range(1, count + 1)]
        try:
            with ThreadPoolExecutor(max_workers=count) as pool:
                ready = list(
                    pool.map(
                        lambda h: ensure_bare_host(h, image, pubkey, settings, spare_mb), hosts
                    )
                )
        except BaseException:
            INVENTORY.unlink(missing_ok=True)
            raise
        lc.atomic_write(KNOWN_HOSTS, "".join(f"{h['address']} {h['host_key']}\n" for h in ready))
        engine = lc.tarball_image(lc.ENGINE_TARBALL)
        inventory = {
            "network": lc.NETWORK,
            "ssh_private_key": str(lc.KEY),
            "known_hosts": str(KNOWN_HOSTS),
            "hub": hub,
            "debs": {
                "dir": str(DEBS_LINK),
                "cache": str(debs),
                "packages": json.loads((debs / "packages.json").read_text()),
            },
            "engine_image": {
                "tag": lc.ENGINE_TAG,
                "tarball": str(lc.ENGINE_TARBALL),
                "id": engine and engine["id"],
            },
            "model_dir": str(lc.MODEL_DIR),
            "hosts": ready,
        }
        lc.atomic_write(INVENTORY, json.dumps(inventory, indent=2) + "\n")
        lc.log(f"bare lab: {count} host(s) ready; inventory {INVENTORY}")
    return 0


def cmd_bare_down() -> int:
    with lc.lab_lock():
        remove_all()
        lc.log("bare hosts and hub removed (the cached .debs stay)")
    return 0
