"""`lab down` leaves nothing behind: no container, network, volume, loop device or cgroup of
the lab. Runs last (marker lab_lifecycle) and restores the lab that was up before it.

It also exercises the optional spare disk (LAB_SPARE_DISK_MB): a loop device passed into the
host, partitioned, formatted and mounted there as storage preparation does on a server; and
the CPU budget (LAB_HOST_CPUS): a host kept busy gets no more CPU than its budget."""

from __future__ import annotations

import glob
import time
from pathlib import Path

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


def host_cpu_s(container_id: str) -> float:
    """CPU seconds used so far by a lab host's cgroup (cgroup v1 or v2)."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    stat = Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat")
    usage = dict(line.split() for line in stat.read_text().splitlines())
    return int(usage["usage_usec"]) / 1e6


def test_down_leaves_nothing_behind() -> None:
    before = lu.read_inventory()
    restore_count = len(before["hosts"]) if before else 0
    settings = (before or {}).get("settings", {})
    restore_env = {k: str(v) for k, v in settings.items() if v is not None}
    try:
        env = {"LAB_SPARE_DISK_MB": "512", "LAB_HOST_CPUS": "0.5"}
        up = lu.lab_cmd("up", "1", "--no-engine", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        inventory = lu.read_inventory()
        assert inventory is not None and len(inventory["hosts"]) == 1
        host = inventory["hosts"][0]
        spare = host["spare_disk"]
        assert spare and spare["size_mb"] == 512 and spare["device"].startswith("/dev/loop")
        mounted = prepare_storage(inventory, host, spare["device"])
        assert mounted.split() == [f"{spare['device']}p1", "xfs"]
        host_id = lu.docker_outer("inspect", "-f", "{{.Id}}", host["container"]).strip()
        # Two busy loops for 4 s in a host capped at 0.5 CPU (this machine has 2 cores):
        # uncapped they would take ~2 CPU-s a second, capped ~0.5.
        assert inventory["settings"]["LAB_HOST_CPUS"] == 0.5
        before_cpu, t = host_cpu_s(host_id), time.monotonic()
        busy = "for i in 1 2; do timeout 4 sh -c 'while :; do :; done' & done; wait"
        lu.docker_outer("exec", host["container"], "sh", "-c", busy)
        used, wall = host_cpu_s(host_id) - before_cpu, time.monotonic() - t
        assert used <= 0.5 * wall * 1.2 + 0.2, f"{used:.2f} CPU-s in {wall:.2f} s at 0.5 CPU"
        assert used >= 0.5 * 4 * 0.5, f"the loops hardly ran: {used:.2f} CPU-s"

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
