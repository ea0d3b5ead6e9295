"""The storage script for real, on loop devices, with a temporary fstab."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from components.render.shell import StorageSpec, storage

from .conftest import LoopFactory, needs_tools, run_script, sha256_file

pytestmark = pytest.mark.scripts


@pytest.fixture(autouse=True)
def _tools() -> None:
    needs_tools("blkid", "wipefs", "partx", "mkfs.xfs", "mkfs.ext4", "sfdisk", "parted", "findmnt")


def render(dev: str, tmp_path: Path, **kw: Any) -> str:
    args: dict[str, Any] = {
        "host": "lab-1",
        "device": dev,
        "mount_point": str(tmp_path / "mnt"),
        "fstab_path": str(tmp_path / "fstab"),
        "state_dir": str(tmp_path / "state"),
        "allow_format": True,
    }
    args.update(kw)
    return storage(StorageSpec(**args))


def fstab_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "fstab"
    if not path.exists():
        return []
    return [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def mounted_source(mount_point: Path) -> str:
    return subprocess.run(
        ["findmnt", "-rn", "-o", "SOURCE,FSTYPE", "--mountpoint", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def blkid(dev: str, tag: str) -> str:
    return subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", tag, dev], capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.parametrize(
    ("fs", "tool"), [("xfs", "sfdisk"), ("ext4", "parted")], ids=["xfs-sfdisk", "ext4-parted"]
)
def test_blank_disk_prepared_once_then_left_alone(
    loop_device: LoopFactory, tmp_path: Path, fs: Literal["xfs", "ext4"], tool: str
) -> None:
    dev = loop_device()
    (tmp_path / "fstab").write_text("# test fstab\nproc /proc proc defaults 0 0\n")
    script = render(dev, tmp_path, filesystem=fs, partitioner=tool)
    results = []
    for _ in range(3):
        proc = run_script(script)
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(proc.stdout))
        assert "[lab-1] storage:" in proc.stderr
    assert [r["formatted"] for r in results] == [True, False, False]
    assert [r["fstab"] for r in results] == ["written", "unchanged", "unchanged"]
    uuid = results[0]["uuid"]
    part = results[0]["fs_device"]
    assert part == f"{dev}p1"
    assert blkid(part, "TYPE") == fs
    assert blkid(part, "PART_ENTRY_NAME") == "vllm-data"
    assert mounted_source(tmp_path / "mnt") == f"{part} {fs}"
    lines = fstab_lines(tmp_path)
    ours = [ln for ln in lines if str(tmp_path / "mnt") in ln]
    passno = 0 if fs == "xfs" else 2
    assert ours == [f"UUID={uuid} {tmp_path / 'mnt'} {fs} defaults,nofail 0 {passno}"]
    assert "proc /proc proc defaults 0 0" in lines  # other lines kept


def test_prepared_disk_is_remounted_after_unmount(loop_device: LoopFactory, tmp_path: Path) -> None:
    dev = loop_device()
    script = render(dev, tmp_path)
    first = run_script(script)
    assert first.returncode == 0, first.stderr
    (tmp_path / "mnt" / "weights.bin").write_bytes(b"w" * 4096)
    subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    again = run_script(script)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["formatted"] is False
    assert (tmp_path / "mnt" / "weights.bin").read_bytes() == b"w" * 4096
    assert len(fstab_lines(tmp_path)) == 1


def make_foreign_ext4(dev: str, tmp_path: Path) -> tuple[Path, str]:
    """A disk somebody else formatted and filled: ext4 on the whole device with a file."""
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "theirs", dev], check=True)
    other = tmp_path / "theirs"
    other.mkdir()
    subprocess.run(["mount", dev, str(other)], check=True)
    data = other / "precious.dat"
    data.write_bytes(bytes(range(256)) * 1000)
    digest = sha256_file(data)
    subprocess.run(["umount", str(other)], check=True)
    return other, digest


def data_digest(dev: str, where: Path) -> str:
    subprocess.run(["mount", "-o", "ro", dev, str(where)], check=True)
    try:
        return sha256_file(where / "precious.dat")
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_foreign_filesystem_refused_without_allow_format(
    loop_device: LoopFactory, tmp_path: Path
) -> None:
    dev = loop_device()
    other, digest = make_foreign_ext4(dev, tmp_path)
    proc = run_script(render(dev, tmp_path, filesystem="ext4", allow_format=False))
    assert proc.returncode == 1
    assert "refusing to format it" in proc.stderr
    assert "ext4 filesystem labelled 'theirs'" in proc.stderr
    assert "Fix: choose another storage.device" in proc.stderr
    assert data_digest(dev, other) == digest
    assert fstab_lines(tmp_path) == []
    assert blkid(dev, "LABEL") == "theirs"


def test_allow_format_refused_while_mounted(loop_device: LoopFactory, tmp_path: Path) -> None:
    dev = loop_device()
    other, digest = make_foreign_ext4(dev, tmp_path)
    subprocess.run(["mount", dev, str(other)], check=True)
    try:
        proc = run_script(render(dev, tmp_path, allow_format=True))
        assert proc.returncode == 1
        assert f"is mounted at {other}" in proc.stderr
        assert "allow_format does not override this" in proc.stderr
    finally:
        subprocess.run(["umount", str(other)], check=True)
    assert data_digest(dev, other) == digest


def test_allow_format_never_erases_a_filesystem_holding_a_file(
    loop_device: LoopFactory, tmp_path: Path
) -> None:
    """allow_format used to wipe any device that was not mounted; it formats blanks only."""
    dev = loop_device()
    other, digest = make_foreign_ext4(dev, tmp_path)
    for _ in range(2):
        proc = run_script(render(dev, tmp_path, allow_format=True))
        assert proc.returncode == 1
        assert "holds a ext4 filesystem labelled 'theirs'; refusing to format it" in proc.stderr
        assert "it never erases data" in proc.stderr
        assert "wipefs -a" in proc.stderr  # how to do it by hand, if really meant
    assert data_digest(dev, other) == digest
    assert blkid(dev, "LABEL") == "theirs"
    assert fstab_lines(tmp_path) == []
    assert not (tmp_path / "state").exists()  # nothing recorded: nothing was done


def test_device_held_open_by_a_process_is_refused(loop_device: LoopFactory, tmp_path: Path) -> None:
    """A blank device that no mount, swap or holder uses, but a process has open (a dd, a
    VM, a database on the raw device): not ours to format."""
    dev = loop_device()
    holder = subprocess.Popen(["bash", "-c", f"exec 3<>{dev}; exec sleep 300"])
    try:
        for _ in range(50):  # until bash has opened fd 3 and become sleep
            if Path(f"/proc/{holder.pid}/comm").read_text().strip() == "sleep":
                break
            time.sleep(0.1)
        proc = run_script(render(dev, tmp_path, allow_format=True))
        assert proc.returncode == 1
        assert f"is open in process {holder.pid} (sleep)" in proc.stderr
        assert "refusing to touch a device in use" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    assert blkid(dev, "PTTYPE") == ""  # untouched
    assert not (tmp_path / "state").exists()
    # Once the process is gone, the same run formats it.
    again = run_script(render(dev, tmp_path, allow_format=True))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["formatted"] is True


def test_blank_device_needs_allow_format(loop_device: LoopFactory, tmp_path: Path) -> None:
    dev = loop_device()
    proc = run_script(render(dev, tmp_path, allow_format=False))
    assert proc.returncode == 1
    assert "is blank; refusing to format it without permission" in proc.stderr
    assert "Fix: set storage.allow_format: true for host lab-1" in proc.stderr
    assert blkid(dev, "PTTYPE") == ""


def test_allow_format_is_one_shot(loop_device: LoopFactory, tmp_path: Path) -> None:
    """Formatted once; a later up with allow_format still set never formats it again, even
    when the disk has become blank (erased by someone, or another disk now answers to the
    same name)."""
    dev = loop_device()
    first = run_script(render(dev, tmp_path))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["formatted"] is True
    record = next((tmp_path / "state").iterdir())
    assert "state=formatted" in record.read_text()
    second = run_script(render(dev, tmp_path))
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["formatted"] is False
    subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    subprocess.run(["wipefs", "-a", "-q", f"{dev}p1"], check=True)
    subprocess.run(["wipefs", "-a", "-q", dev], check=True)
    subprocess.run(["partx", "-d", dev], check=False)
    third = run_script(render(dev, tmp_path))
    assert third.returncode == 1
    assert "formatted it once already" in third.stderr
    assert f"remove {record}" in third.stderr
    assert blkid(dev, "PTTYPE") == ""  # not formatted again


@pytest.mark.parametrize("device", ["/dev/sdb", "/dev/nvme1n1", "/dev/vdb1", "/dev/disk/by-id/"])
def test_kernel_names_are_refused(device: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"storage\.device: .* kernel name"):
        render(device, tmp_path)


@pytest.mark.parametrize(
    "device",
    [
        "/dev/disk/by-id/nvme-SAMSUNG_MZQL27T6HBLA-00A07_S6CKNE0R123456",
        "/dev/disk/by-uuid/0b6f3d2e-1c1d-4c6a-9f5e-8b0d6f1a2b3c",
        "/dev/disk/by-path/pci-0000:3b:00.0-nvme-1",
        "/dev/mapper/data-weights",
        "/dev/loop3",
        "/dev/loop3p1",
    ],
)
def test_stable_names_are_accepted(device: str, tmp_path: Path) -> None:
    assert "DEVICE=" in render(device, tmp_path)


def test_foreign_partition_table_refused(loop_device: LoopFactory, tmp_path: Path) -> None:
    dev = loop_device()
    table = "label: gpt\nsize=100MiB, name=a\nsize=100MiB, name=b\n"
    subprocess.run(["sfdisk", "-q", dev], input=table, text=True, check=True)
    proc = run_script(render(dev, tmp_path))
    assert proc.returncode == 1
    assert "a gpt partition table with 2 partition(s)" in proc.stderr


def test_blank_partition_given_directly(loop_device: LoopFactory, tmp_path: Path) -> None:
    dev = loop_device()
    table = "label: gpt\nsize=350MiB, name=a\nname=b\n"
    subprocess.run(["sfdisk", "-q", dev], input=table, text=True, check=True)
    subprocess.run(["partx", "-u", dev], check=False)
    part = f"{dev}p1"
    proc = run_script(render(part, tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fs_device"] == part
    assert out["formatted"] is True
    assert mounted_source(tmp_path / "mnt") == f"{part} xfs"


def test_mount_point_taken_by_another_device(loop_device: LoopFactory, tmp_path: Path) -> None:
    first, second = loop_device(), loop_device()
    assert run_script(render(first, tmp_path)).returncode == 0
    proc = run_script(render(second, tmp_path))
    assert proc.returncode == 1
    assert "already has another filesystem mounted" in proc.stderr
    assert blkid(second, "PTTYPE") == ""  # the second disk was not touched


def test_not_a_block_device(tmp_path: Path) -> None:
    proc = run_script(render("/dev/disk/by-id/vllm-cluster-no-such-disk", tmp_path))
    assert proc.returncode == 1
    assert "is not a block device" in proc.stderr


def test_missing_and_stale_partition_nodes_are_recreated(
    loop_device: LoopFactory, tmp_path: Path
) -> None:
    """No udev: the script makes /dev/<part> from sysfs, and replaces a node that points
    at another device number."""
    dev = loop_device()
    script = render(dev, tmp_path)
    assert run_script(script).returncode == 0
    subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    node = Path(f"{dev}p1")
    want = Path(f"/sys/class/block/{node.name}/dev").read_text().strip()
    node.unlink()
    proc = run_script(script)
    assert proc.returncode == 0, proc.stderr
    assert f"creating device node {node}" in proc.stderr
    subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    node.unlink()
    major = int(want.split(":")[0])
    subprocess.run(["mknod", str(node), "b", str(major), "4095"], check=True)
    proc = run_script(script)
    assert proc.returncode == 0, proc.stderr
    assert f"replacing stale device node {node}" in proc.stderr
    assert mounted_source(tmp_path / "mnt") == f"{node} xfs"
