"""tarball_image_id: the image ID from a docker-save tarball's manifest.json, both layouts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from components.render.shell import tarball_image_id, tarball_repo_tags

HEX_A = "a" * 64
HEX_B = "b" * 64


def make_tar(path: Path, manifest: object, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        files = {"manifest.json": json.dumps(manifest).encode(), **(extra or {})}
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_classic_layout(tmp_path: Path) -> None:
    tar = make_tar(
        tmp_path / "x.tar",
        [{"Config": f"{HEX_A}.json", "RepoTags": ["vllm/vllm-openai:v1"], "Layers": []}],
    )
    assert tarball_image_id(tar) == f"sha256:{HEX_A}"
    assert tarball_repo_tags(tar) == ["vllm/vllm-openai:v1"]


def test_oci_layout_of_docker_25(tmp_path: Path) -> None:
    tar = make_tar(
        tmp_path / "x.tar",
        [{"Config": f"blobs/sha256/{HEX_B}", "RepoTags": ["a:b"], "Layers": []}],
        {"index.json": b"{}", "oci-layout": b"{}"},
    )
    assert tarball_image_id(tar) == f"sha256:{HEX_B}"


def test_selects_the_tagged_image_among_several(tmp_path: Path) -> None:
    tar = make_tar(
        tmp_path / "x.tar",
        [
            {"Config": f"{HEX_A}.json", "RepoTags": ["other:1"]},
            {"Config": f"{HEX_B}.json", "RepoTags": ["vllm:2"]},
        ],
    )
    assert tarball_image_id(tar, "vllm:2") == f"sha256:{HEX_B}"
    assert tarball_image_id(tar) == f"sha256:{HEX_A}"
    with pytest.raises(ValueError, match="no image tagged"):
        tarball_image_id(tar, "missing:3")


def test_gzipped_tarball(tmp_path: Path) -> None:
    plain = make_tar(tmp_path / "x.tar", [{"Config": f"{HEX_A}.json"}])
    gz = tmp_path / "x.tar.gz"
    import gzip

    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert tarball_image_id(gz) == f"sha256:{HEX_A}"


@pytest.mark.parametrize("manifest", [[], {}, [{"Config": "nothex.json"}]])
def test_bad_manifests(tmp_path: Path, manifest: object) -> None:
    with pytest.raises(ValueError):
        tarball_image_id(make_tar(tmp_path / "x.tar", manifest))


def test_missing_manifest(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w"):
        pass
    with pytest.raises(KeyError):
        tarball_image_id(path)
