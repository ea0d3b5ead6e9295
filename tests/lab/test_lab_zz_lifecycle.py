"""`lab down` leaves nothing behind: no container, network, volume, loop device or cgroup of
the lab. Runs last (marker lab_lifecycle) and restores the lab that was up before it.

It also exercises the optional spare disk (LAB_SPARE_DISK_MB): a loop device passed into the
host, partitioned, formatted and mounted there as storage preparation does on a server."""

from __future__ import annotations

import glob
import time

import pytest

from tests.lab import labutil as lu

pytestmark = [pytest.mark.lab, pytest.mark.lab_lifecycle]


def prepare_storage(inventory: lu.Inventory, host: lu.HostEntry, device: str) -> str:
    script = f"""set -e
parted -s {device} mklabel gpt mkpart data xfs 1MiB 100%
partprobe {device} || true
for _ in $(seq 50); do [ -b {device}p1 ] && break; sleep 0.1; done
mkfs.xfs -q -f {device}p1
mkdir -p /data01
mount {device}p1 /data01
echo hello > /data01/probe
findmnt -n -o SOURCE,FSTYPE /data01
umount /data01
"""
    return lu.ssh(inventory, host, script, timeout=120).stdout


def test_down_leaves_nothing_behind() -> None:
    before = lu.read_inventory()
    restore_count = len(before["hosts"]) if before else 0
    restore_env = {k: str(v) for k, v in (before or {}).get("settings", {}).items()}
    try:
        up = lu.lab_cmd("up", "1", "--no-engine", env={"LAB_SPARE_DISK_MB": "512"})
        assert up.returncode == 0, up.stdout + up.stderr
        inventory = lu.read_inventory()
        assert inventory is not None and len(inventory["hosts"]) == 1
        host = inventory["hosts"][0]
        spare = host["spare_disk"]
        assert spare and spare["size_mb"] == 512 and spare["device"].startswith("/dev/loop")
        mounted = prepare_storage(inventory, host, spare["device"])
        assert mounted.split() == [f"{spare['device']}p1", "xfs"]
        host_id = lu.docker_outer("inspect", "-f", "{{.Id}}", host["container"]).strip()

        t = time.monotonic()
        down = lu.lab_cmd("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert lu.lab_leftovers() == []
        assert not lu.INVENTORY.exists()
        cgroups = glob.glob(f"/sys/fs/cgroup/*/docker/{host_id}")
        assert cgroups == [], f"cgroups of the removed host remain: {cgroups}"
        assert time.monotonic() - t < 120
        again = lu.lab_cmd("down")
        assert again.returncode == 0, "lab down must be idempotent"
    finally:
        if restore_count:
            proc = lu.lab_cmd("up", str(restore_count), env=restore_env)
            assert proc.returncode == 0, f"could not restore the lab:\n{proc.stdout}{proc.stderr}"
