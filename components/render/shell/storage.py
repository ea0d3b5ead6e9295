"""Storage: one data disk -> GPT partition -> xfs/ext4 -> mounted, in fstab by UUID.

Safety rules, in the order the script applies them:

1. The mount point already has *this* device mounted -> leave it alone (only make sure the
   fstab line is there). Another device mounted there -> refuse.
2. The device (or one of its partitions) is in use: mounted elsewhere, swap, or held by
   LVM/md/dm -> refuse, even with ``allow_format``.
3. The device holds *our* filesystem (label ``vllm-data`` on our ``vllm-data`` GPT partition,
   or on the partition given) of the configured type -> mount it, no format (a re-run after
   a reboot, or after a mount failure).
4. A blank device (no partition table, no filesystem signature), or our own partition that
   has no filesystem yet (a run that stopped between partitioning and mkfs) -> partition /
   format.
5. Anything else (a foreign filesystem, a foreign partition table, our label with the
   wrong type) -> refuse, unless ``allow_format`` is set; then wipe and format.

Whole disks get a GPT with one partition spanning the disk; a partition given as device is
formatted directly. Partition nodes are located through sysfs (``/sys/block/<disk>/<part>``),
never by guessing names (``nvme1n1`` -> ``nvme1n1p1``, ``sdb`` -> ``sdb1``,
``loop3`` -> ``loop3p1``), and created with ``mknod`` when no udev made them.

The fstab line is written right after mkfs and before mounting, so a failed mount is
retried on the next run instead of looking like foreign data. Delete never touches the
disk: data stays, and the filesystem stays mounted (see :func:`storage_delete`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._common import check_abs_path, fragment, q, render

FS_LABEL = "vllm-data"
"""Filesystem label and GPT partition name that mark a disk as prepared by us."""

# Mount points that would hide or shadow the operating system (the settings check uses this
# set too, so a bad mount_point is reported with its config key before anything renders).
FORBIDDEN_MOUNT_POINTS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/var/lib",
        "/var/lib/docker",
    }
)


@dataclass(frozen=True)
class StorageSpec:
    host: str
    device: str
    """Whole disk (``/dev/nvme1n1``) or partition (``/dev/sdb1``); symlinks such as
    ``/dev/disk/by-id/...`` are resolved on the host."""
    mount_point: str
    filesystem: Literal["xfs", "ext4"] = "xfs"
    allow_format: bool = False
    fstab_path: str = "/etc/fstab"
    """Tests point this at a temporary file; the real /etc/fstab is the default."""
    mount_options: str = "defaults,nofail"
    """``nofail``: a missing data disk must not stop the host from booting."""
    partitioner: Literal["auto", "sfdisk", "parted"] = "auto"


def storage(spec: StorageSpec) -> str:
    """Render the idempotent storage script. Prints one JSON line on success:
    ``{"device", "fs_device", "uuid", "filesystem", "mount_point", "formatted", "fstab"}``.
    """
    if spec.filesystem not in ("xfs", "ext4"):
        raise ValueError(f"storage.filesystem must be xfs or ext4: {spec.filesystem!r}")
    if spec.partitioner not in ("auto", "sfdisk", "parted"):
        raise ValueError(f"partitioner must be auto, sfdisk or parted: {spec.partitioner!r}")
    device = check_abs_path(spec.device, "storage.device", min_components=2)
    if not device.startswith("/dev/"):
        raise ValueError(f"storage.device must be under /dev: {spec.device!r}")
    mount_point = check_abs_path(spec.mount_point, "storage.mount_point")
    if mount_point in FORBIDDEN_MOUNT_POINTS:
        raise ValueError(f"storage.mount_point would shadow a system directory: {mount_point}")
    fstab = check_abs_path(spec.fstab_path, "fstab_path", min_components=1)
    if not spec.mount_options or any(c.isspace() for c in spec.mount_options):
        raise ValueError(f"mount_options must be one word: {spec.mount_options!r}")
    lines = [
        f"DEVICE={q(device)}",
        f"MP={q(mount_point)}",
        f"FSTYPE={q(spec.filesystem)}",
        f"ALLOW_FORMAT={1 if spec.allow_format else 0}",
        f"FSTAB={q(fstab)}",
        f"OPTS={q(spec.mount_options)}",
        f"LABEL={q(FS_LABEL)}",
        f"PARTITIONER={q(spec.partitioner)}",
        # xfs is not checked by fsck at boot (fsck.xfs is a no-op): pass 0; ext4: 2.
        f"PASSNO={0 if spec.filesystem == 'xfs' else 2}",
        fragment("storage"),
    ]
    return render(spec.host, "storage", "\n".join(lines))


def storage_delete(host: str, device: str, mount_point: str) -> str:
    """Delete step: deliberately does nothing to the disk.

    Destroying the stack must not lose weights that took hours to download, and unmounting
    would break anything else using the disk; the fstab line stays so the data comes back
    after a reboot. To reuse the disk, unmount it and set ``allow_format``.
    """
    body = f"log {q(f'keeping {device} mounted at {mount_point} with its data and fstab line')}\n"
    return render(host, "storage", body)
