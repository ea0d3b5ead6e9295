"""Settings that could lose data, refused by key path before any host is touched: a
model.path or mount point in a system directory, and a storage.device by a kernel name that
can name another disk after a reboot (issue 14, data safety)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from components.settings import SettingsError, load_settings
from tests.unit.test_program import write_project
from tests.unit.test_settings_hardening import (
    API_KEY,
    STORAGE,
    _assert_refused_before_anything,
    _declare_nothing_run,
    _set,
    project,
)

__all__ = ["project"]  # the fixture, used by name

CASES = [
    ("model.path", "/usr/local/models/tiny", "inside /usr"),
    ("model.path", "/usr/share/models", "inside /usr"),
    ("model.path", "/var/lib/models", "inside /var/lib"),
    ("model.path", "/var/lib/docker/volumes", "inside /var/lib"),
    ("model.path", "/etc/models", "inside /etc"),
    ("model.path", "/lib64/models", "inside /lib64"),
    ("model.path", "/libx32/models", "inside /libx32"),
    ("model.path", "/bin/models", "inside /bin"),
    ("model.path", "/sbin/models", "inside /sbin"),
    ("model.path", "/boot/models", "inside /boot"),
    ("model.path", "/proc/models", "inside /proc"),
    ("model.path", "/sys/models", "inside /sys"),
    ("model.path", "/dev/models", "inside /dev"),
    ("model.path", "/run/models", "inside /run"),
    ("model.path", "/home/alice", "is a home directory"),
    ("hosts[0].storage.mount_point", "/home/alice", "is a home directory"),
    ("hosts[0].storage.mount_point", "/usr/local/data", "inside /usr"),
    ("hosts[0].storage.mount_point", "/var/lib/data", "inside /var/lib"),
    ("hosts[0].storage.mount_point", "/etc/data", "inside /etc"),
    ("hosts[0].storage.mount_point", "/lib32", "inside /lib32"),
    ("hosts[0].storage.device", "/dev/sdb", "kernel name"),
    ("hosts[0].storage.device", "/dev/nvme1n1", "kernel name"),
    ("hosts[0].storage.device", "/dev/vdb1", "kernel name"),
]


@pytest.mark.parametrize(("path", "value", "phrase"), CASES)
def test_refused_by_key_before_any_resource(
    project: Path, path: str, value: str, phrase: str
) -> None:
    config = write_project(project, hosts=2)
    if path == "model.path":
        _set("model.path", value)(config, project)
    else:
        key = path.rsplit(".", 1)[1]
        _set("hosts.0.storage", {**STORAGE, key: value})(config, project)
    with pytest.raises(SettingsError) as err:
        load_settings(copy.deepcopy(config), {"apiKey": True}, base_dir=project)
    assert err.value.paths == [path], str(err.value)
    assert phrase in err.value.problems[0].message, str(err.value)
    mocks, exc = _declare_nothing_run(config, API_KEY)
    _assert_refused_before_anything(mocks, exc, path, phrase)


@pytest.mark.parametrize(
    "device",
    [
        "/dev/disk/by-id/nvme-SAMSUNG_MZQL27T6HBLA-00A07_S6CKNE0R123456",
        "/dev/disk/by-uuid/0b6f3d2e-1c1d-4c6a-9f5e-8b0d6f1a2b3c",
        "/dev/disk/by-partuuid/6e1f6f43-01",
        "/dev/disk/by-path/pci-0000:3b:00.0-nvme-1",
        "/dev/mapper/data-weights",
        "/dev/loop3",
    ],
)
def test_stable_device_names_are_accepted(project: Path, device: str) -> None:
    config = write_project(project, hosts=2)
    _set("hosts.0.storage", {**STORAGE, "device": device})(config, project)
    settings = load_settings(config, {"apiKey": True}, base_dir=project)
    assert settings.hosts[0].storage is not None
    assert settings.hosts[0].storage.device == device


@pytest.mark.parametrize("path", ["/data/models/tiny", "/root/models/tiny", "/home/alice/models"])
def test_data_directories_are_accepted(project: Path, path: str) -> None:
    config = write_project(project, hosts=2)
    _set("model.path", path)(config, project)
    assert load_settings(config, {"apiKey": True}, base_dir=project).model.path == path
