#!/usr/bin/env python3
"""The lab: simulated GPU hosts on this machine (implementation of `lab/lab`).

Each host is a container on the bridge network `vllm-lab` with its own IP, running sshd and
its own dockerd (Docker in Docker) plus the fake NVIDIA tools from lab/host/image/. Only the
GPUs are simulated; SSH, Docker, networking and disks are real.

    lab/lab up [N]          bring the lab to exactly N hosts (default 2), idempotent
    lab/lab down [--purge]  remove every container, network, volume and loop device of the lab
                            (--purge also removes the cached images, tarballs and keys)
    lab/lab status          show each host and whether it answers (exit 0 only when all do)
    lab/lab ssh HOST [CMD]  ssh to lab-N with the pinned host key
    lab/lab probe-image     build the small image the lab tests run with --gpus; print its tarball
    lab/lab bare up [N] | bare down
                            freshly installed hosts (no Docker, a blank disk), the lab hub and
                            the Docker .debs, for the `bare` stack (lab/host/bare.py)

Settings (environment): LAB_GPUS (2), LAB_GPU_MODEL ("NVIDIA H20"), LAB_GPU_MEMORY_MIB
(97871), LAB_GPU_DRIVER ("550.54.15"), LAB_GPU_CUDA ("12.4"), LAB_SPARE_DISK_MB (0: none),
LAB_SHM_MB (4096, the hosts' /dev/shm), LAB_READY_TIMEOUT_S (180), LAB_HOST_CPUS (unset or 0:
no limit; else each host's CPU budget in cores, `docker run --cpus`, charged to everything in the
host, its dockerd and engine containers included: hosts that do not lend each other CPU, as
separate servers do not). Stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = Path(os.environ.get("REPO_ROOT") or HERE.parent.parent).resolve()
LAB_DIR = Path(os.environ.get("LAB_DIR") or REPO_ROOT / ".lab").resolve()
SSH_DIR = LAB_DIR / "ssh"
KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
INVENTORY = LAB_DIR / "inventory.json"
IMAGES_DIR = LAB_DIR / "images"
DISKS_DIR = LAB_DIR / "disks"
ENGINE_TARBALL = IMAGES_DIR / "vllm-standin.tar"
ENGINE_TAG = "vllm-standin:lab"
MODEL_DIR = LAB_DIR / "model" / "tiny-llama"
PROBE_TARBALL = IMAGES_DIR / "lab-probe.tar"

NETWORK = "vllm-lab"
SUBNET = "172.31.250.0/24"
GATEWAY = "172.31.250.1"
LABEL = "vllm-lab.managed"
# What the program's serving containers carry (components/resources/containers.py).
SERVING_LABEL = "managed-by=vllm-cluster"
HOST_IMAGE_REPO = "vllm-lab-host"
PROBE_IMAGE_REPO = "vllm-lab-probe"
MAX_HOSTS = 200  # addresses .11 ... .210

# What a host needs to run its own dockerd and inner containers, without --privileged (which
# this machine refuses: it withholds CAP_SYS_RESOURCE). Verified in shared/facts.md.
DIND_FLAGS = [
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
    "--security-opt=systempaths=unconfined",
    "--device-cgroup-rule=a *:* rwm",
    "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs=/run",
]

_T0 = time.monotonic()
_print_lock = threading.Lock()
_losetup_lock = threading.Lock()


class LabError(Exception):
    """A failure with a message meant for the person running the lab."""


def log(msg: str, who: str = "lab") -> None:
    with _print_lock:
        print(f"[{time.monotonic() - _T0:6.1f}s] {who}: {msg}", flush=True)


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {detail}")
    return proc


def docker(*args: str, check: bool = True, timeout: float | None = None) -> str:
    return run(["docker", *args], check=check, timeout=timeout).stdout.strip()


@contextlib.contextmanager
def lab_lock() -> Iterator[None]:
    """One `lab up`/`lab down` at a time (tests and people may call them concurrently)."""
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    with open(LAB_DIR / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another lab up/down is running; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------- settings


def host_cpus_from_env() -> float | None:
    """LAB_HOST_CPUS: None (unset, empty or 0: no limit) or cores in [0.05, this machine's]."""
    raw = os.environ.get("LAB_HOST_CPUS", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise LabError(f"LAB_HOST_CPUS={raw!r}: expected a number of cores, e.g. 0.5") from None
    if value == 0:
        return None
    cores = os.cpu_count() or 1
    # Docker's own floor is 0.01 core; below ~0.05 sshd alone misses the readiness timeout.
    if not 0.05 <= value <= cores:
        raise LabError(
            f"LAB_HOST_CPUS={raw!r}: must be between 0.05 and this machine's {cores} cores "
            "(0 or unset: no limit)"
        )
    return value


@dataclass(frozen=True)
class Settings:
    gpus: int
    gpu_model: str
    gpu_memory_mib: int
    gpu_driver: str
    gpu_cuda: str
    spare_disk_mb: int
    shm_mb: int
    ready_timeout_s: float
    host_cpus: float | None = None

    @staticmethod
    def from_env() -> Settings:
        def num(key: str, default: int) -> int:
            raw = os.environ.get(key, "") or str(default)
            try:
                value = int(raw)
            except ValueError:
                raise LabError(f"{key}={raw!r}: expected an integer") from None
            if value < 0:
                raise LabError(f"{key}={raw!r}: must not be negative")
            return value

        return Settings(
            gpus=num("LAB_GPUS", 2),
            gpu_model=os.environ.get("LAB_GPU_MODEL") or "NVIDIA H20",
            gpu_memory_mib=num("LAB_GPU_MEMORY_MIB", 97871),
            gpu_driver=os.environ.get("LAB_GPU_DRIVER") or "550.54.15",
            gpu_cuda=os.environ.get("LAB_GPU_CUDA") or "12.4",
            spare_disk_mb=num("LAB_SPARE_DISK_MB", 0),
            shm_mb=num("LAB_SHM_MB", 4096),
            ready_timeout_s=float(num("LAB_READY_TIMEOUT_S", 180)),
            host_cpus=host_cpus_from_env(),
        )

    def gpus_json(self) -> dict[str, Any]:
        return {
            "model": self.gpu_model,
            "count": self.gpus,
            "memory_mib": self.gpu_memory_mib,
            "driver": self.gpu_driver,
            "cuda": self.gpu_cuda,
        }


@dataclass(frozen=True)
class Host:
    index: int

    @property
    def name(self) -> str:
        return f"lab-{self.index}"

    @property
    def container(self) -> str:
        return f"vllm-lab-{self.index}"

    @property
    def volume(self) -> str:
        return f"vllm-lab-{self.index}-docker"

    @property
    def address(self) -> str:
        return f"172.31.250.{10 + self.index}"

    @property
    def disk_file(self) -> Path:
        return DISKS_DIR / f"{self.name}.img"


@dataclass
class HostReady:
    host: Host
    host_key: str
    storage_driver: str
    backing_fs: str
    docker_version: str
    runtimes: list[str]
    spare_disk: dict[str, Any] | None
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------- images


def debian_mirror() -> tuple[str, str]:
    """(mirror URL, suite) of this machine's own Debian apt source, read at run time so that
    no mirror name lives in the repository."""
    codename = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                codename = line.split("=", 1)[1].strip().strip('"')
    stanzas: list[dict[str, str]] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        current: dict[str, str] = {}
        for line in [*Path(path).read_text().splitlines(), ""]:
            if not line.strip():
                if current:
                    stanzas.append(current)
                current = {}
            elif not line.startswith("#") and ":" in line and not line[0].isspace():
                key, value = line.split(":", 1)
                current[key.strip().lower()] = value.strip()
    for st in stanzas:
        suites = st.get("suites", "").split()
        uris = st.get("uris", "").split()
        if "deb" in st.get("types", "").split() and uris and (codename in suites or not codename):
            return uris[0], codename or suites[0]
    # One-line format as a fallback (older machines).
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                parts = [p for p in line.split() if not p.startswith("[")]
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == codename:
                    return parts[1], codename
    raise LabError("no Debian apt source for this release in /etc/apt/sources.list.d/*.sources")


def recipe_hash(*paths: Path) -> str:
    """Hash of the recipe files (names, exec bits, contents): the image tag."""
    h = hashlib.sha256()
    for base in paths:
        files = sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for p in files:
            h.update(str(p.relative_to(base.parent)).encode() + b"\0")
            h.update(b"x" if os.access(p, os.X_OK) else b"-")
            h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def image_exists(tag: str) -> bool:
    return run(["docker", "image", "inspect", tag], check=False).returncode == 0


def ensure_mmdebstrap() -> None:
    if shutil.which("mmdebstrap"):
        return
    log("installing mmdebstrap with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "mmdebstrap"], env=env)


def build_rootfs_image(kind: str, recipe: Path, repo: str, *shared: Path) -> str:
    """The image of a recipe directory (its build.sh TAG MIRROR SUITE), tagged by the hash of
    the recipe and of the `shared` directories its build also reads."""
    tag = f"{repo}:{recipe_hash(recipe, *shared)}"
    if image_exists(tag):
        log(f"{kind} image {tag} is up to date")
        return tag
    ensure_mmdebstrap()
    mirror, suite = debian_mirror()
    log(f"building {kind} image {tag} with mmdebstrap ({suite}, main suite only)")
    t = time.monotonic()
    proc = subprocess.run(
        ["bash", str(recipe / "build.sh"), tag, mirror, suite],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise LabError(f"building {tag} failed:\n{tail}")
    size = int(docker("image", "inspect", "--format", "{{.Size}}", tag))
    log(f"built {tag} in {time.monotonic() - t:.0f}s ({size / 1e6:.0f} MB)")
    # Older builds of the same recipe family are superseded: drop them (not in use by hosts,
    # which are recreated when their image changes).
    for old in docker("images", "--format", "{{.Repository}}:{{.Tag}}", repo).splitlines():
        if old != tag and old.startswith(f"{repo}:"):
            run(["docker", "rmi", old], check=False)
    return tag


def ensure_host_image() -> str:
    return build_rootfs_image("host", HERE / "image", HOST_IMAGE_REPO)


def ensure_probe_image() -> tuple[str, Path]:
    """The small image (Debian essential + python3) the tests run with --gpus; saved as a
    tarball because lab hosts have no registry either: tests `docker load` it over SSH."""
    tag = build_rootfs_image("probe", HERE / "probe", PROBE_IMAGE_REPO)
    stamp = PROBE_TARBALL.with_suffix(".tag")
    if not PROBE_TARBALL.exists() or not stamp.exists() or stamp.read_text().strip() != tag:
        IMAGES_DIR.mkdir(parents=True, exist_ok=True)
        tmp = PROBE_TARBALL.with_suffix(".tmp")
        run(["docker", "save", "-o", str(tmp), tag])
        tmp.replace(PROBE_TARBALL)
        stamp.write_text(tag + "\n")
    return tag, PROBE_TARBALL


def tarball_image(path: Path) -> dict[str, Any] | None:
    """Image ID and tags of a `docker save` tarball, read from its manifest (what a host gets
    after `docker load`)."""
    try:
        with tarfile.open(path) as tar:
            member = tar.getmember("manifest.json")
            f = tar.extractfile(member)
            if f is None:
                return None
            manifest = json.load(f)
    except (OSError, KeyError, tarfile.TarError, ValueError):
        return None
    if not manifest:
        return None
    config = str(manifest[0].get("Config", ""))
    digest = os.path.basename(config).removesuffix(".json")
    return {"id": f"sha256:{digest}", "tags": list(manifest[0].get("RepoTags") or [])}


# ---------------------------------------------------------------------------- ssh


def ensure_ssh_key() -> str:
    SSH_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(SSH_DIR, 0o700)
    if not KEY.exists():
        log(f"generating the lab SSH key {KEY}")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vllm-lab", "-f", str(KEY)])
    return (KEY.with_suffix(".pub")).read_text().strip()


def ssh_cmd(address: str, known_hosts: Path, *, timeout_s: int = 5) -> list[str]:
    return [
        "ssh",
        "-i",
        str(KEY),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        f"ConnectTimeout={timeout_s}",
        "-o",
        "LogLevel=ERROR",
        f"root@{address}",
    ]


# ---------------------------------------------------------------------------- network, disks


def ensure_network() -> None:
    found = run(["docker", "network", "inspect", NETWORK], check=False)
    if found.returncode == 0:
        info = json.loads(found.stdout)[0]
        subnets = [c.get("Subnet") for c in (info.get("IPAM", {}).get("Config") or [])]
        if SUBNET in subnets:
            return
        if info.get("Containers"):
            raise LabError(f"network {NETWORK} exists with subnet {subnets}, in use")
        docker("network", "rm", NETWORK)
    docker(
        "network",
        "create",
        "--driver=bridge",
        f"--subnet={SUBNET}",
        f"--gateway={GATEWAY}",
        f"--label={LABEL}=1",
        NETWORK,
    )
    log(f"created network {NETWORK} ({SUBNET})")


def loop_devices_of(path: Path) -> list[str]:
    out = run(["losetup", "-j", str(path), "-O", "NAME", "-n"], check=False).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def ensure_spare_disk(host: Host, size_mb: int) -> dict[str, Any]:
    """A sparse file attached as a loop device (with partition scanning) for storage tests."""
    DISKS_DIR.mkdir(parents=True, exist_ok=True)
    path = host.disk_file
    size = size_mb * 1024 * 1024
    with _losetup_lock:  # `losetup -f` picks the first free device: one at a time
        devices = loop_devices_of(path)
        if path.exists() and path.stat().st_size != size:
            for dev in devices:
                run(["losetup", "-d", dev])
            devices = []
            path.unlink()
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(size)  # sparse: takes no space until written
        if not devices:
            # Reattaching an existing file (e.g. after a reboot) keeps what was written on it.
            devices = [run(["losetup", "-f", "--show", "-P", str(path)]).stdout.strip()]
    return {"device": devices[0], "size_mb": size_mb}


def release_spare_disk(path: Path) -> list[str]:
    released = loop_devices_of(path)
    for dev in released:
        run(["losetup", "-d", dev], check=False)
    path.unlink(missing_ok=True)
    return released


# ---------------------------------------------------------------------------- hosts


def container_state(name: str) -> dict[str, Any] | None:
    proc = run(["docker", "container", "inspect", name], check=False)
    if proc.returncode != 0:
        return None
    data: list[dict[str, Any]] = json.loads(proc.stdout)
    return data[0]


def remove_host(index: int) -> None:
    host = Host(index)
    state = container_state(host.container)
    if state is not None:
        # A graceful stop lets the host's dockerd stop its own containers first.
        run(["docker", "stop", "-t", "30", host.container], check=False, timeout=90)
        run(["docker", "rm", "-f", "-v", host.container], check=False)
    run(["docker", "volume", "rm", "-f", host.volume], check=False)
    released = release_spare_disk(host.disk_file)
    log("removed" + (f" (detached {', '.join(released)})" if released else ""), host.name)


def host_config(host: Host, image: str, settings: Settings, pubkey: str) -> dict[str, Any]:
    return {
        "image": image,
        "gpus_json": json.dumps(settings.gpus_json(), sort_keys=True),
        "authorized_key": pubkey,
        "shm_mb": settings.shm_mb,
        "spare_disk_mb": settings.spare_disk_mb,
        "cpus": settings.host_cpus,
    }


def run_args(host: Host, config: dict[str, Any], spare: dict[str, Any] | None) -> list[str]:
    """`docker run` arguments of a host; their hash labels the container, so any change of
    image, settings or these flags makes `lab up` recreate it."""
    args = [
        "--detach",
        "--init",
        f"--name={host.container}",
        f"--hostname={host.name}",
        f"--network={NETWORK}",
        f"--ip={host.address}",
        # Hosts resolve each other by name (lab-2 -> 172.31.250.12), as servers in a cluster do.
        f"--network-alias={host.name}",
        f"--label={LABEL}=1",
        f"--label=vllm-lab.host={host.index}",
        "--stop-timeout=30",
        f"--shm-size={config['shm_mb']}m",
        # Inner Docker data on disk (a volume), not in RAM: real engine images are several GB.
        f"--volume={host.volume}:/var/lib/docker",
        *DIND_FLAGS,
        f"--env=LAB_AUTHORIZED_KEY={config['authorized_key']}",
        f"--env=LAB_GPUS_JSON={config['gpus_json']}",
    ]
    if config.get("cpus"):
        args.append(f"--cpus={config['cpus']:g}")
    if spare:
        args += [
            f"--device={spare['device']}:{spare['device']}",
            f"--env=LAB_SPARE_DISK={spare['device']}",
        ]
    return [*args, config["image"]]


def ensure_container(name: str, run_args: list[str], inputs: object = None) -> str:
    """Make container `name` run as `docker run <run_args>` says, declaratively.

    The container carries a digest of its run arguments (and of `inputs`: anything else it
    depends on, such as files it mounts) as a label: when the digest changed it is stopped
    (30 s for a clean shutdown) and recreated; when it is only stopped it is started again;
    when it runs as wanted it is left alone. Volumes named in `run_args` are the caller's and
    are kept. Returns what was done: "started", "recreated", "restarted" or "running".
    """
    digest = hashlib.sha256(json.dumps([run_args, inputs]).encode()).hexdigest()[:16]
    state = container_state(name)
    action = "started"
    if state is not None and state["Config"]["Labels"].get("vllm-lab.config") != digest:
        run(["docker", "stop", "-t", "30", name], check=False, timeout=90)
        docker("rm", "-f", name)
        state, action = None, "recreated"
    if state is None:
        docker("run", f"--label=vllm-lab.config={digest}", *run_args)
        return action
    if not state["State"]["Running"]:
        docker("start", name)
        return "restarted"
    return "running"


def host_key_of(container: str) -> str | None:
    """The host's SSH host key (`ssh-ed25519 <base64>`), once its first boot generated it."""
    out = run(
        ["docker", "exec", container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"], check=False
    )
    if out.returncode == 0 and out.stdout.startswith("ssh-ed25519 "):
        return " ".join(out.stdout.split()[:2])
    return None


def wait_host(host: Host, settings: Settings, t0: float) -> HostReady:
    deadline = time.monotonic() + settings.ready_timeout_s
    timings: dict[str, float] = {}

    def elapsed() -> float:
        return time.monotonic() - t0

    # 1. The host key, generated by the entrypoint at first boot.
    while not (host_key := host_key_of(host.container)):
        if time.monotonic() > deadline:
            raise LabError(f"{host.name}: no host key after {settings.ready_timeout_s:.0f}s")
        time.sleep(0.3)
    # 2. sshd answers with exactly that key (StrictHostKeyChecking=yes against it alone),
    #    and 3. the host's own dockerd answers over that SSH connection.
    pinned = LAB_DIR / "tmp" / f"known_hosts.{host.name}"
    pinned.parent.mkdir(parents=True, exist_ok=True)
    pinned.write_text(f"{host.address} {host_key}\n")
    ssh = ssh_cmd(host.address, pinned, timeout_s=3)
    info: dict[str, Any] | None = None
    last = ""
    while info is None:
        proc = run([*ssh, "docker info --format '{{json .}}'"], check=False, timeout=30)
        if proc.returncode == 0:
            info = json.loads(proc.stdout)
            break
        if proc.returncode == 255:
            last = proc.stderr.strip() or "ssh failed"
        else:
            timings.setdefault("ssh", elapsed())
            last = (proc.stderr or proc.stdout).strip()
        if time.monotonic() > deadline:
            logs = run(
                ["docker", "exec", host.container, "tail", "-n", "20", "/var/log/dockerd.log"],
                check=False,
            ).stdout
            raise LabError(
                f"{host.name}: not ready after {settings.ready_timeout_s:.0f}s: {last}\n{logs}"
            )
        time.sleep(0.5)
    timings.setdefault("ssh", elapsed())
    timings["docker"] = elapsed()
    pinned.unlink(missing_ok=True)
    driver_status = dict(info.get("DriverStatus") or [])
    return HostReady(
        host=host,
        host_key=host_key,
        storage_driver=str(info.get("Driver")),
        backing_fs=str(driver_status.get("Backing Filesystem", "?")),
        docker_version=str(info.get("ServerVersion")),
        runtimes=sorted((info.get("Runtimes") or {}).keys()),
        spare_disk=None,
        timings=timings,
    )


def ensure_host(host: Host, image: str, settings: Settings, pubkey: str) -> HostReady:
    t0 = time.monotonic()
    config = host_config(host, image, settings, pubkey)
    spare = ensure_spare_disk(host, settings.spare_disk_mb) if settings.spare_disk_mb else None
    docker(
        "volume", "create", f"--label={LABEL}=1", f"--label=vllm-lab.host={host.index}", host.volume
    )
    action = ensure_container(host.container, run_args(host, config, spare))
    if action == "recreated":
        log("configuration or image changed: recreated (its Docker volume is kept)", host.name)
    if action != "running":
        log(f"{action} {host.container} at {host.address}", host.name)
    if not spare:
        release_spare_disk(host.disk_file)  # after the host stopped using it, if it did
    ready = wait_host(host, settings, t0)
    # `up` is declarative: reset the simulated GPUs even if someone changed them live.
    run(
        [
            "docker",
            "exec",
            host.container,
            "sh",
            "-c",
            'printf "%s\\n" "$LAB_GPUS_JSON" > /etc/lab/gpus.json',
        ],
    )
    ready.spare_disk = spare
    note = "" if ready.storage_driver == "overlay2" else " (overlay2 unavailable: fell back)"
    log(
        f"ready in {time.monotonic() - t0:.1f}s (sshd {ready.timings['ssh']:.1f}s); "
        f"docker {ready.docker_version}, {ready.storage_driver} on {ready.backing_fs}{note}, "
        f"runtimes {','.join(ready.runtimes)}"
        + (f", spare disk {spare['device']}" if spare else "")
        + (f", CPU budget {settings.host_cpus:g} core(s)" if settings.host_cpus else ""),
        host.name,
    )
    if "nvidia" not in ready.runtimes:
        raise LabError(f"{host.name}: dockerd does not list the nvidia runtime")
    return ready


def known_host_names() -> set[str]:
    """Hosts this checkout's inventory lists: the only ones its stacks can have served on."""
    try:
        inventory = json.loads(INVENTORY.read_text())
    except (OSError, ValueError):
        return set()
    return {h["name"] for h in inventory.get("hosts", [])}


def clear_stale_serving(host: Host) -> None:
    """Remove the program's serving containers (label managed-by=vllm-cluster) from a host this
    checkout's inventory did not list. A host's Docker volume outlives the host container, and
    host names are the same for every checkout on the machine: a lab made by another checkout
    (its `make demo`, say) leaves engines that restart with the host's dockerd, hold the ports
    and GPUs, and belong to a Pulumi state this checkout cannot see, so none of its stacks
    could ever destroy them."""
    out = docker(
        "exec", host.container, "docker", "ps", "-a",
        "--filter", f"label={SERVING_LABEL}",
        "--format", '{{.Names}} ({{.Label "vllm-cluster.stack"}})',
    )  # fmt: skip
    found = out.splitlines()
    if not found:
        return
    names = [line.split(" ", 1)[0] for line in found]
    docker("exec", host.container, "docker", "rm", "-f", *names)
    log(f"removed serving containers no stack of this checkout owns: {', '.join(found)}", host.name)


def lab_hosts() -> dict[int, str]:
    """Index -> container name of every lab host container that exists."""
    out = docker(
        "ps",
        "-a",
        "--filter",
        f"label={LABEL}",
        "--format",
        '{{.Names}} {{.Label "vllm-lab.host"}}',
    )
    found: dict[int, str] = {}
    for line in out.splitlines():
        name, _, index = line.partition(" ")
        if index.isdigit():
            found[int(index)] = name
    return found


# ---------------------------------------------------------------------------- engine


def run_engine_steps() -> None:
    """The stand-in engine image and tiny model (owned by lab/engine/). Built here so that
    `lab up` leaves every fixture ready; loading the image into hosts is the program's job."""
    build = REPO_ROOT / "lab" / "engine" / "build.sh"
    maker = REPO_ROOT / "lab" / "engine" / "make_tiny_model.py"
    env = {**os.environ, "LAB_DIR": str(LAB_DIR), "REPO_ROOT": str(REPO_ROOT)}
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    steps = [
        (build, ["bash", str(build)], "stand-in engine image"),
        (maker, [python, str(maker)], "tiny model"),
    ]
    for path, cmd, what in steps:
        rel = path.relative_to(REPO_ROOT)
        if not path.exists():
            log(f"{rel} does not exist yet: skipping the {what}", "engine")
            continue
        t = time.monotonic()
        log(f"{rel}: building/refreshing the {what}", "engine")
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log(line.rstrip(), f"engine/{path.name}")
        if proc.wait() != 0:
            raise LabError(f"{rel} failed ({proc.returncode})")
        log(f"{what} ready ({time.monotonic() - t:.0f}s)", "engine")


# ---------------------------------------------------------------------------- inventory


def write_inventory(ready: list[HostReady], settings: Settings) -> dict[str, Any]:
    engine: dict[str, Any] | None = None
    if ENGINE_TARBALL.exists():
        meta = tarball_image(ENGINE_TARBALL)
        engine = {"tag": ENGINE_TAG, "tarball": str(ENGINE_TARBALL), "id": meta and meta["id"]}
    complete = MODEL_DIR.is_dir() and (MODEL_DIR / "config.json").exists()
    inventory = {
        "network": NETWORK,
        "subnet": SUBNET,
        "ssh_private_key": str(KEY),
        "known_hosts": str(KNOWN_HOSTS),
        "engine_image": engine,
        "model_dir": str(MODEL_DIR) if complete else None,
        # The settings this lab was brought up with: `lab up` is declarative, so re-running it
        # with other LAB_* values recreates hosts; these let callers repeat it exactly.
        "settings": {
            "LAB_GPUS": settings.gpus,
            "LAB_GPU_MODEL": settings.gpu_model,
            "LAB_GPU_MEMORY_MIB": settings.gpu_memory_mib,
            "LAB_GPU_DRIVER": settings.gpu_driver,
            "LAB_GPU_CUDA": settings.gpu_cuda,
            "LAB_SPARE_DISK_MB": settings.spare_disk_mb,
            "LAB_SHM_MB": settings.shm_mb,
            "LAB_HOST_CPUS": settings.host_cpus or 0,
        },
        "hosts": [
            {
                "name": r.host.name,
                "container": r.host.container,
                "address": r.host.address,
                "nic": "eth0",
                "user": "root",
                "port": 22,
                "host_key": r.host_key,
                "gpu": {
                    "model": settings.gpu_model,
                    "count": settings.gpus,
                    "memory_mib": settings.gpu_memory_mib,
                },
                "spare_disk": r.spare_disk,
                "docker": {
                    "version": r.docker_version,
                    "storage_driver": r.storage_driver,
                    "runtimes": r.runtimes,
                },
            }
            for r in ready
        ],
    }
    atomic_write(KNOWN_HOSTS, "".join(f"{r.host.address} {r.host_key}\n" for r in ready))
    atomic_write(
        SSH_DIR / "config",
        "".join(
            f"Host {r.host.name}\n  HostName {r.host.address}\n  User root\n"
            f"  IdentityFile {KEY}\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n"
            f"  UserKnownHostsFile {KNOWN_HOSTS}\n"
            for r in ready
        ),
    )
    atomic_write(INVENTORY, json.dumps(inventory, indent=2) + "\n")
    return inventory


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------------------- commands


def ensure_docker() -> None:
    script = REPO_ROOT / "tools" / "ensure-docker.sh"
    proc = subprocess.run(["bash", str(script)], check=False)
    if proc.returncode != 0:
        raise LabError("tools/ensure-docker.sh failed: no Docker engine on this machine")


def cmd_up(count: int, *, engine: bool = True) -> int:
    if not 1 <= count <= MAX_HOSTS:
        raise LabError(f"host count must be 1..{MAX_HOSTS}, got {count}")
    settings = Settings.from_env()
    ensure_docker()
    with lab_lock():
        log(f"bringing the lab to {count} host(s), {settings.gpus} x {settings.gpu_model} each")
        pubkey = ensure_ssh_key()
        image = ensure_host_image()
        ensure_network()
        for index in sorted(i for i in lab_hosts() if i > count):
            remove_host(index)
        hosts = [Host(i) for i in range(1, count + 1)]
        known = known_host_names()
        try:
            with ThreadPoolExecutor(max_workers=count) as pool:
                ready = list(pool.map(lambda h: ensure_host(h, image, settings, pubkey), hosts))
            for host in hosts:
                if host.name not in known:
                    clear_stale_serving(host)
        except BaseException:
            INVENTORY.unlink(missing_ok=True)  # the lab is not in a known-good state
            raise
        write_inventory(ready, settings)
        log(f"{count} host(s) ready; inventory {INVENTORY}")
        if engine:
            run_engine_steps()
            write_inventory(ready, settings)
        log(f"lab up done in {time.monotonic() - _T0:.1f}s")
    return 0


def cmd_down(purge: bool) -> int:
    if run(["docker", "info"], check=False).returncode != 0:
        raise LabError("no Docker engine answers (tools/ensure-docker.sh starts one)")
    import bare  # the bare hosts and the hub share the network, disks and lock

    with lab_lock():
        bare.remove_all()
        hosts = lab_hosts()
        with ThreadPoolExecutor(max_workers=max(len(hosts), 1)) as pool:
            list(pool.map(remove_host, sorted(hosts)))
        # Leftovers of interrupted runs: volumes, disks, the network.
        for vol in docker("volume", "ls", "-q", "--filter", f"label={LABEL}").splitlines():
            run(["docker", "volume", "rm", "-f", vol], check=False)
        for disk in sorted(DISKS_DIR.glob("*.img")) if DISKS_DIR.exists() else []:
            released = release_spare_disk(disk)
            if released:
                log(f"detached {', '.join(released)} ({disk.name})")
        if run(["docker", "network", "inspect", NETWORK], check=False).returncode == 0:
            docker("network", "rm", NETWORK)
            log(f"removed network {NETWORK}")
        for path in (INVENTORY, KNOWN_HOSTS, SSH_DIR / "config"):
            path.unlink(missing_ok=True)
        shutil.rmtree(LAB_DIR / "tmp", ignore_errors=True)
        if purge:
            removed = purge_images()
            for sub in ("images", "model", "disks", "ssh", "cache"):
                shutil.rmtree(LAB_DIR / sub, ignore_errors=True)
            log(f"purged {removed} cached image(s) and {LAB_DIR}")
        log("lab is down")
    return 0


def purge_images() -> int:
    """Remove the lab's host/probe images and the stand-in engine images (lab/engine labels
    them org.vllm-cluster.lab.fixture), tagged or left dangling by rebuilds."""
    refs = {
        ref
        for ref in docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()
        if ref.startswith(("vllm-lab-", "vllm-standin"))
    }
    for label in ("vllm-lab.cache", "org.vllm-cluster.lab.fixture"):
        refs.update(docker("images", "-aq", "--no-trunc", "--filter", f"label={label}").split())
    removed = 0
    # Children first: an image other images were committed on top of refuses removal until
    # they are gone, so retry the rest while something could be removed.
    while refs:
        gone = {
            ref for ref in refs if run(["docker", "rmi", "-f", ref], check=False).returncode == 0
        }
        if not gone:
            break
        removed += len(gone)
        refs -= gone
    return removed


def host_status(entry: dict[str, Any]) -> tuple[bool, str]:
    state = container_state(str(entry["container"]))
    if state is None:
        return False, "no container"
    if not state["State"]["Running"]:
        return False, f"container {state['State']['Status']}"
    proc = run(
        [
            *ssh_cmd(str(entry["address"]), KNOWN_HOSTS, timeout_s=3),
            "docker info --format '{{.Driver}}' && nvidia-smi -L 2>/dev/null | wc -l",
        ],
        check=False,
        timeout=20,
    )
    if proc.returncode != 0:
        return False, f"ssh/docker not answering: {(proc.stderr or proc.stdout).strip()[:200]}"
    driver, gpus = [*proc.stdout.split(), "?", "?"][:2]
    return True, f"ssh ok, docker ok ({driver}), {gpus} simulated GPU(s)"


def cmd_status() -> int:
    if not INVENTORY.exists():
        print(f"lab is down (no {INVENTORY})")
        return 3
    inventory = json.loads(INVENTORY.read_text())
    hosts = inventory["hosts"]
    with ThreadPoolExecutor(max_workers=max(len(hosts), 1)) as pool:
        results = list(pool.map(host_status, hosts))
    for entry, (ok, detail) in zip(hosts, results, strict=True):
        print(f"{entry['name']:8} {entry['address']:15} {'up ' if ok else 'DOWN'}  {detail}")
    engine = inventory.get("engine_image")
    print(f"engine image: {engine['tarball'] if engine else 'not built'}")
    print(f"model dir:    {inventory.get('model_dir') or 'not made'}")
    return 0 if all(ok for ok, _ in results) else 1


def cmd_ssh(name: str, command: list[str]) -> int:
    if not INVENTORY.exists():
        raise LabError("lab is down")
    hosts = {h["name"]: h for h in json.loads(INVENTORY.read_text())["hosts"]}
    if name not in hosts:
        raise LabError(f"no host {name}; hosts: {', '.join(hosts)}")
    argv = [*ssh_cmd(str(hosts[name]["address"]), KNOWN_HOSTS), *command]
    os.execvp(argv[0], argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab/lab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring the lab to N hosts (default 2)")
    up.add_argument("count", nargs="?", type=int, default=int(os.environ.get("LAB_HOSTS") or 2))
    up.add_argument("--no-engine", action="store_true", help="skip lab/engine steps")
    down = sub.add_parser("down", help="remove everything the lab made")
    down.add_argument("--purge", action="store_true", help="also drop cached images and keys")
    sub.add_parser("status", help="show the hosts")
    ssh = sub.add_parser("ssh", help="ssh to a host with the pinned key")
    ssh.add_argument("host")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("probe-image", help="build the test image; print its tarball path")
    bare_cmd = sub.add_parser("bare", help="bare hosts (no Docker), the lab hub and the .debs")
    bare_sub = bare_cmd.add_subparsers(dest="bare_command", required=True)
    bare_up = bare_sub.add_parser("up", help="bring the bare hosts to N (default 1)")
    bare_up.add_argument("count", nargs="?", type=int, default=1)
    bare_sub.add_parser("down", help="remove the bare hosts and the hub")
    args = parser.parse_args(argv)
    try:
        if args.command == "bare":
            import bare

            if args.bare_command == "up":
                return bare.cmd_bare_up(args.count)
            return bare.cmd_bare_down()
        if args.command == "up":
            return cmd_up(args.count, engine=not args.no_engine)
        if args.command == "down":
            return cmd_down(args.purge)
        if args.command == "status":
            return cmd_status()
        if args.command == "ssh":
            return cmd_ssh(args.host, args.cmd)
        if args.command == "probe-image":
            ensure_docker()
            with lab_lock():
                _tag, path = ensure_probe_image()
            print(path)
            return 0
    except LabError as e:
        log(f"ERROR: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
