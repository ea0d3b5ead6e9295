"""Storage: one data disk -> GPT partition -> xfs/ext4 -> mounted, in fstab by UUID.

The device is named by a stable id (``/dev/disk/by-id/...``, by-uuid, by-partuuid, by-path,
``/dev/mapper/...``): kernel names such as ``/dev/sdb`` can name another disk after a
reboot, so they are refused (``/dev/loopN`` is accepted: loop devices have no by-id link,
and they are what the lab and the tests attach).

Safety rules, in the order the script applies them:

1. The mount point already has *this* device mounted -> leave it alone (only make sure the
   fstab line is there). Another device mounted there -> refuse.
2. The device (or one of its partitions) is in use: mounted elsewhere, swap, held by
   LVM/md/dm (sysfs holders), the backing file of a loop device, or open in any process
   (``/proc/<pid>/fd``, compared by device number) -> refuse, whatever the settings.
3. The device holds *our* filesystem (label ``vllm-data`` on our ``vllm-data`` GPT partition,
   or on the partition given) of the configured type -> mount it, no format (a re-run after
   a reboot, or after a mount failure).
4. A blank device (no partition table, no filesystem or RAID/LVM signature, no partitions),
   or our own partition that has no filesystem yet (a run that stopped between partitioning
   and mkfs) -> partition / format, only with ``allow_format`` and only once: a record on
   the host (``<state_dir>/formatted-<device id>``) is written before the first write to the
   disk and marked done after mkfs; once done, no later run formats that device again, even
   if it is blank again (the message names the record to remove).
5. Anything else (a foreign filesystem, a foreign partition table, our label with the
   wrong type, old signatures on a new partition) -> refuse, with or without
   ``allow_format``: it never erases data. Whoever wants that data gone erases it by hand.

Whole disks get a GPT with one partition spanning the disk; a partition given as device is
formatted directly. Partition nodes are located through sysfs (``/sys/block/<disk>/<part>``),
never by guessing names (``nvme1n1`` -> ``nvme1n1p1``, ``sdb`` -> ``sdb1``,
``loop3`` -> ``loop3p1``), and created with ``mknod`` when no udev made them.

The fstab line is written right after mkfs and before mounting, so a failed mount is
retried on the next run instead of looking like foreign data. Delete never touches the
disk: data stays, and the filesystem stays mounted (see :func:`storage_delete`).
"""

from __future__ import annotations

import re
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


STATE_DIR = "/var/lib/vllm-cluster/storage"
"""Where the host records which devices this program formatted (one-shot allow_format)."""

STABLE_DEVICE_PREFIXES = (
    "/dev/disk/by-id/",
    "/dev/disk/by-uuid/",
    "/dev/disk/by-partuuid/",
    "/dev/disk/by-path/",
    "/dev/mapper/",
)
_LOOP = re.compile(r"^/dev/loop[0-9]+(p[0-9]+)?$")


def stable_device_problem(device: str) -> str | None:
    """Why ``device`` is not a name that survives reboots, or None when it is."""
    for prefix in STABLE_DEVICE_PREFIXES:
        if (
            device.startswith(prefix)
            and len(device) > len(prefix)
            and "/" not in device[len(prefix) :]
        ):
            return None
    if _LOOP.match(device):
        return None  # loop devices have no by-id link; the lab and the tests attach them
    return (
        f"{device} is a kernel name, which can name another disk after a reboot (/dev/sdb "
        "may come back as /dev/sdc); give the disk's stable name: its link under "
        "/dev/disk/by-id/ (`ls -l /dev/disk/by-id/` on the host shows which one points at "
        f"{device.rsplit('/', 1)[-1]}), or /dev/disk/by-uuid/, by-partuuid/, by-path/, "
        "/dev/mapper/<name>"
    )


def _record_key(device: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", device.removeprefix("/dev/"))


@dataclass(frozen=True)
class StorageSpec:
    host: str
    device: str
    """Whole disk or partition by a stable name (``/dev/disk/by-id/nvme-...``, see
    :func:`stable_device_problem`); resolved on the host."""
    mount_point: str
    filesystem: Literal["xfs", "ext4"] = "xfs"
    allow_format: bool = False
    fstab_path: str = "/etc/fstab"
    """Tests point this at a temporary file; the real /etc/fstab is the default."""
    mount_options: str = "defaults,nofail"
    """``nofail``: a missing data disk must not stop the host from booting."""
    partitioner: Literal["auto", "sfdisk", "parted"] = "auto"
    state_dir: str = STATE_DIR
    """Where the one-shot format record lives (tests point it at a temporary directory)."""


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
    problem = stable_device_problem(device)
    if problem:
        raise ValueError(f"storage.device: {problem}")
    mount_point = check_abs_path(spec.mount_point, "storage.mount_point")
    if mount_point in FORBIDDEN_MOUNT_POINTS:
        raise ValueError(f"storage.mount_point would shadow a system directory: {mount_point}")
    fstab = check_abs_path(spec.fstab_path, "fstab_path", min_components=1)
    if not spec.mount_options or any(c.isspace() for c in spec.mount_options):
        raise ValueError(f"mount_options must be one word: {spec.mount_options!r}")
    record = f"{check_abs_path(spec.state_dir, 'state_dir')}/formatted-{_record_key(device)}"
    lines = [
        f"DEVICE={q(device)}",
        f"MP={q(mount_point)}",
        f"FSTYPE={q(spec.filesystem)}",
        f"ALLOW_FORMAT={1 if spec.allow_format else 0}",
        f"FSTAB={q(fstab)}",
        f"OPTS={q(spec.mount_options)}",
        f"LABEL={q(FS_LABEL)}",
        f"PARTITIONER={q(spec.partitioner)}",
        f"RECORD={q(record)}",
        # xfs is not checked by fsck at boot (fsck.xfs is a no-op): pass 0; ext4: 2.
        f"PASSNO={0 if spec.filesystem == 'xfs' else 2}",
        fragment("storage"),
    ]
    return render(spec.host, "storage", "\n".join(lines))


def storage_delete(host: str, device: str, mount_point: str) -> str:
    """Delete step: deliberately does nothing to the disk.

    Destroying the stack must not lose weights that took hours to download, and unmounting
    would break anything else using the disk; the fstab line stays so the data comes back
    after a reboot. To reuse the disk for something else, unmount it and erase it by hand.
    """
    body = f"log {q(f'keeping {device} mounted at {mount_point} with its data and fstab line')}\n"
    return render(host, "storage", body)
