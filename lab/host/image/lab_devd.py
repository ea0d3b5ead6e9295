#!/usr/bin/env python3
"""lab-devd: keeps partition device nodes of the lab host's spare disk in /dev.

On a real server udev creates /dev/sdb1 when `parted` adds a partition to /dev/sdb. Lab
hosts have no udev (their /dev is a container's tmpfs), so after `parted /dev/loop3 mkpart ...`
the kernel knows loop3p1 (/sys/class/block/loop3/loop3p1) but /dev/loop3p1 never appears.
This small daemon plays udev's part for the one disk passed to it: every 0.2 s it creates the
block nodes of the disk's partitions from sysfs and removes nodes of vanished partitions, so
storage code sees the same behaviour (nodes appear shortly after partitioning) as on a server.
"""

from __future__ import annotations

import contextlib
import grp
import os
import stat
import sys
import time


def partitions(disk: str) -> dict[str, tuple[int, int]]:
    """Partition name -> (major, minor) from sysfs for block device `disk` (e.g. loop3)."""
    base = f"/sys/class/block/{disk}"
    found: dict[str, tuple[int, int]] = {}
    try:
        entries = os.listdir(base)
    except OSError:
        return found
    for name in entries:
        if not name.startswith(disk) or not os.path.exists(f"{base}/{name}/partition"):
            continue
        try:
            with open(f"{base}/{name}/dev", encoding="ascii") as f:
                major, minor = f.read().strip().split(":")
        except (OSError, ValueError):
            continue
        found[name] = (int(major), int(minor))
    return found


def sync(disk: str) -> None:
    wanted = partitions(disk)
    for name, (major, minor) in wanted.items():
        node = f"/dev/{name}"
        rdev = os.makedev(major, minor)
        try:
            st = os.stat(node)
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev:
                continue
            os.unlink(node)
        except FileNotFoundError:
            pass
        os.mknod(node, stat.S_IFBLK | 0o660, rdev)
        os.chmod(node, 0o660)  # mknod honours the umask; udev's default is root:disk 0660
        with contextlib.suppress(KeyError, OSError):
            os.chown(node, 0, grp.getgrnam("disk").gr_gid)
        print(f"lab-devd: created {node} ({major}:{minor})", flush=True)
    prefix = f"{disk}p" if disk[-1].isdigit() else disk
    for name in os.listdir("/dev"):
        if name.startswith(prefix) and name != disk and name not in wanted:
            try:
                if stat.S_ISBLK(os.stat(f"/dev/{name}").st_mode):
                    os.unlink(f"/dev/{name}")
                    print(f"lab-devd: removed /dev/{name}", flush=True)
            except FileNotFoundError:
                pass


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: lab-devd /dev/DISK", file=sys.stderr)
        return 2
    disk = os.path.basename(argv[1])
    while True:
        sync(disk)
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
