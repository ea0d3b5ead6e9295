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
    with pytest.raises(ValueError, match=r"no image tagged missing:3 among its 2 image\(s\) "):
        tarball_image_id(tar, "missing:3")


@pytest.mark.parametrize(("tags", "listed"), [(["other:1"], "other:1"), (None, "none")])
def test_a_single_image_without_the_tag_is_refused(
    tmp_path: Path, tags: list[str] | None, listed: str
) -> None:
    """docker load restores only the recorded tags: `vllm:2` would not exist after it."""
    tar = make_tar(tmp_path / "x.tar", [{"Config": f"{HEX_A}.json", "RepoTags": tags}])
    with pytest.raises(ValueError) as info:
        tarball_image_id(tar, "vllm:2")
    assert str(info.value) == (
        f"{tar}: no image tagged vllm:2 among its 1 image(s) (tags: {listed})"
    )
    assert tarball_image_id(tar) == f"sha256:{HEX_A}"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ([], "manifest.json lists no image"),
        ({}, "manifest.json lists no image"),
        ([{"Config": "nothex.json"}], "manifest entry has no sha256 Config: 'nothex.json'"),
        ([{"RepoTags": ["a:b"]}], "manifest entry has no sha256 Config: None"),
    ],
)
def test_bad_manifests_are_named(tmp_path: Path, manifest: object, message: str) -> None:
    tar = make_tar(tmp_path / "x.tar", manifest)
    with pytest.raises(ValueError) as info:
        tarball_image_id(tar)
    assert str(info.value) == f"{tar}: {message}"


def test_manifest_json_that_is_not_a_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    with pytest.raises(ValueError) as err:
        tarball_image_id(path)
    assert str(err.value) == f"{path}: manifest.json is not a regular file"


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
