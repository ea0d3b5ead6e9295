"""The engine image: ``docker load`` of a copied tarball, or ``docker pull``.

Identity is the image ID (``sha256:`` of the image config), which ``docker save`` records in
the tarball's ``manifest.json`` (``Config``: ``<hex>.json`` in the classic layout,
``blobs/sha256/<hex>`` in the OCI layout of Docker 25+) and which ``docker image inspect
--format '{{.Id}}' name:tag`` reports on the host. When they match, the host already has
exactly this image and nothing is loaded — and with :func:`tarball_image_id` computed on the
operator machine plus :func:`image_check` run first, even the multi-GB copy can be skipped.

Delete: nothing (the image stays on the host; removing it would only force a re-copy).
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ._common import check_abs_path, fragment, q, render

_HEX64 = re.compile(r"[0-9a-f]{64}")
_IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


def tarball_image_id(path: str | Path, image: str | None = None) -> str:
    """The image ID (``sha256:<hex>``) of the image in a ``docker save`` tarball.

    Reads only ``manifest.json`` (the tar is not extracted). With several images in one
    tarball, ``image`` (``name:tag``) selects the entry whose RepoTags contain it.
    """
    with tarfile.open(path, "r:*") as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise ValueError(f"{path}: manifest.json is not a regular file")
        manifest = json.load(member)
    if not isinstance(manifest, list) or not manifest:
        raise ValueError(f"{path}: manifest.json lists no image")
    entry = manifest[0]
    if image is not None:
        # `docker load` restores the tags the tarball records, and the engine runs `image`:
        # a tarball without that tag would be streamed (GBs) and then fail the image check.
        tagged = [e for e in manifest if image in (e.get("RepoTags") or [])]
        if not tagged:
            tags = [t for e in manifest for t in (e.get("RepoTags") or [])]
            raise ValueError(
                f"{path}: no image tagged {image} among its {len(manifest)} image(s) "
                f"(tags: {', '.join(tags) or 'none'})"
            )
        entry = tagged[0]
    found = _HEX64.findall(str(entry.get("Config", "")))
    if not found:
        raise ValueError(f"{path}: manifest entry has no sha256 Config: {entry.get('Config')!r}")
    return f"sha256:{found[-1]}"


def tarball_repo_tags(path: str | Path) -> list[str]:
    """All ``name:tag`` references recorded in the tarball (may be empty)."""
    with tarfile.open(path, "r:*") as tar:
        member = tar.extractfile("manifest.json")
        manifest = json.load(member) if member else []
    return [t for e in manifest for t in (e.get("RepoTags") or [])]


def _check_image(image: str) -> str:
    if not _IMAGE_REF.match(image):
        raise ValueError(f"image.name is not an image reference: {image!r}")
    return image


def _check_id(image_id: str | None) -> str:
    if image_id and not _IMAGE_ID.match(image_id):
        raise ValueError(f"image id must be sha256:<64 hex>: {image_id!r}")
    return image_id or ""


@dataclass(frozen=True)
class ImageLoadSpec:
    host: str
    image: str
    """``name:tag`` the engine containers use."""
    tarball: str
    """Path of the copied tarball on the host."""
    image_id: str | None = None
    """Expected ID (from :func:`tarball_image_id`); when None the script reads it from the
    tarball's manifest.json on the host."""
    remove_tarball: bool = False
    """Delete the tarball after a successful load (it can be tens of GB)."""


def image_check(host: str, image: str, image_id: str) -> str:
    """A read-only check: prints ``present`` when the host has ``image`` with exactly
    ``image_id``, else ``absent`` (exit 0 either way; nonzero only when docker fails)."""
    _check_image(image)
    if not image_id:
        raise ValueError("image_check needs the expected image id")
    body = f"""
IMAGE={q(image)}
WANT={q(_check_id(image_id))}
command -v docker >/dev/null 2>&1 || {{ echo absent; exit 0; }}
HAVE=$(docker image inspect --format '{{{{.Id}}}}' "$IMAGE" 2>/dev/null || true)
if [ "$HAVE" = "$WANT" ]; then echo present; else echo absent; fi
"""
    return render(host, "image", body)


def image_present(host: str, image: str, image_id: str | None = None) -> str:
    """A read-only check, for drift: exits 1 (saying why) when the host lacks ``image``, or
    holds it under another ID than ``image_id`` when given; exits 0 when it is in place."""
    _check_image(image)
    body = f"""
IMAGE={q(image)}
WANT={q(_check_id(image_id))}
HAVE=$(docker image inspect --format '{{{{.Id}}}}' "$IMAGE" 2>/dev/null || true)
if [ -z "$HAVE" ]; then log "$IMAGE is missing"; exit 1; fi
if [ -n "$WANT" ] && [ "$HAVE" != "$WANT" ]; then log "$IMAGE is $HAVE, not $WANT"; exit 1; fi
"""
    return render(host, "image", body)


def image_has_ray(host: str, image: str) -> str:
    """Fails (naming image.name and the fix) when ``image`` cannot import Ray: the Ray
    backend needs Ray inside the image, and current vLLM images have none (v0.18 and later).
    Runs the image once, offline, without GPUs; before any engine container starts."""
    _check_image(image)
    body = f"""
IMAGE={q(image)}
log "checking that $IMAGE carries Ray (serving.distributed_backend: ray)"
if ! out=$(docker run --rm --network none --entrypoint python3 "$IMAGE" \\
    -c 'import ray; print(ray.__version__)' 2>&1); then
  log "$IMAGE cannot import Ray: $(printf '%s\\n' "$out" | tail -n 1)"
  echo "image.name: $IMAGE has no Ray, which serving.distributed_backend: ray needs (vLLM" \\
    "images have none since v0.18). Fix: set serving.distributed_backend: mp (vLLM's own" \\
    "multi-node launcher), or use an image that carries Ray" >&2
  exit 1
fi
log "Ray $out in $IMAGE"
"""
    return render(host, "image", body)


def image_load(spec: ImageLoadSpec) -> str:
    """Render copy-and-load: skip when the host has this exact image, else ``docker load``.
    Prints one JSON line ``{"image", "id", "loaded"}``."""
    _check_image(spec.image)
    tarball = check_abs_path(spec.tarball, "image tarball")
    body = f"""
IMAGE={q(spec.image)}
TARBALL={q(tarball)}
WANT={q(_check_id(spec.image_id))}
REMOVE_TARBALL={1 if spec.remove_tarball else 0}
{fragment("image_load")}"""
    return render(spec.host, "image", body)


def image_pull(host: str, image: str, image_id: str | None = None, attempts: int = 3) -> str:
    """Render ``docker pull`` (registry mirrors come from daemon.json), skipped when the
    image is present (and, when ``image_id`` is given, has that ID). Retries with backoff.
    Prints one JSON line ``{"image", "id", "pulled"}``."""
    _check_image(image)
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    body = f"""
IMAGE={q(image)}
WANT={q(_check_id(image_id))}
ATTEMPTS={int(attempts)}
{fragment("image_pull")}"""
    return render(host, "image", body)


def image_delete(host: str, image: str) -> str:
    """Delete step: keeps the image (documented no-op)."""
    _check_image(image)
    return render(host, "image", f"log {q(f'keeping image {image} on the host')}\n")
