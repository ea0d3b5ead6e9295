"""Weights manifest and completeness check — one file, used in two places.

* On the operator machine it is imported (``build_manifest``, ``write_manifest``,
  ``verify_dir``) to describe a local model directory before it is synced.
* On GPU hosts its *source text* is embedded in the rendered scripts and run with
  ``python3 - <command> ...`` (standard library only, Python 3.7+), so the host and the
  operator check weights with exactly the same code.

Manifest (``.vllm-cluster-manifest.json`` in the model directory)::

    {"format": "vllm-cluster-manifest/1",
     "files": {"config.json": {"size": 1234, "sha256": "..."}, ...}}

Files and directories whose name starts with "." are not part of the model (hub CLIs keep
their caches and locks there: ``.cache/huggingface``, ``._____temp``) and are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

MANIFEST = ".vllm-cluster-manifest.json"
FORMAT = "vllm-cluster-manifest/1"
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_CHUNK = 8 * 1024 * 1024


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(_CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def model_files(directory: str) -> list[str]:
    """Relative paths (POSIX separators) of the model's files, sorted."""
    out = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            rel = os.path.relpath(os.path.join(root, name), directory)
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def build_manifest(directory: str, sha256: bool = False) -> dict[str, object]:
    """Describe every model file in ``directory``: size, and sha256 when asked."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"not a directory: {directory}")
    files: dict[str, dict[str, object]] = {}
    for rel in model_files(directory):
        path = os.path.join(directory, rel)
        entry: dict[str, object] = {"size": os.path.getsize(path)}
        if sha256:
            entry["sha256"] = sha256_file(path)
        files[rel] = entry
    return {"format": FORMAT, "files": files}


def manifest_text(manifest: dict[str, object]) -> str:
    """Canonical text (sorted keys): equal manifests have equal bytes and sha256."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n"


def write_manifest(directory: str, sha256: bool = False) -> str:
    """Build and atomically write the manifest into ``directory``; returns its path."""
    text = manifest_text(build_manifest(directory, sha256=sha256))
    path = os.path.join(directory, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def _load_json(path: str) -> object:
    with open(path) as f:
        return json.load(f)


def verify_dir(
    directory: str, mode: str = "sizes", require_manifest: bool = False
) -> tuple[dict[str, object], list[str]]:
    """Check a model directory. Returns (summary, problems); no problems means complete.

    Always: the directory and ``config.json`` exist, every file named in a
    ``*.index.json`` weight_map exists. With a manifest: every listed file exists with the
    listed size (``mode="sha256"``: and hash). Without index or manifest: at least one
    ``*.safetensors``/``*.bin`` file.
    """
    if mode not in ("sizes", "sha256"):
        raise ValueError(f"mode must be sizes or sha256: {mode!r}")
    problems: list[str] = []
    summary: dict[str, object] = {"path": directory, "checked": mode, "manifest": False}
    if not os.path.isdir(directory):
        return summary, [f"directory {directory} does not exist"]
    if not os.path.isfile(os.path.join(directory, "config.json")):
        problems.append("missing file config.json")
    indexed = False
    for index in _INDEXES:
        ipath = os.path.join(directory, index)
        if not os.path.isfile(ipath):
            continue
        indexed = True
        try:
            data = _load_json(ipath)
            weight_map = data["weight_map"] if isinstance(data, dict) else None
            if not isinstance(weight_map, dict):
                raise ValueError("no weight_map object")
        except (ValueError, KeyError) as e:
            problems.append(f"unreadable {index}: {e}")
            continue
        for shard in sorted(set(str(v) for v in weight_map.values())):
            if not os.path.isfile(os.path.join(directory, shard)):
                problems.append(f"missing file {shard} (named in {index})")
    mpath = os.path.join(directory, MANIFEST)
    listed: dict[str, object] = {}
    if os.path.isfile(mpath):
        summary["manifest"] = True
        with open(mpath, "rb") as f:
            raw = f.read()
        summary["manifest_sha256"] = hashlib.sha256(raw).hexdigest()
        try:
            manifest = json.loads(raw.decode("utf-8"))
            files = manifest.get("files") if isinstance(manifest, dict) else None
            if not isinstance(files, dict):
                raise ValueError("no files object")
            listed = files
        except ValueError as e:
            problems.append(f"unreadable {MANIFEST}: {e}")
    elif require_manifest:
        problems.append(f"missing file {MANIFEST} (not completed by vllm-cluster)")
    for rel in sorted(listed):
        entry = listed[rel]
        path = os.path.join(directory, rel)
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
            problems.append(f"manifest entry for {rel} has no size")
            continue
        if not os.path.isfile(path):
            problems.append(f"missing file {rel} (listed in the manifest)")
            continue
        size = os.path.getsize(path)
        if size != entry["size"]:
            kind = "short" if size < entry["size"] else "long"
            problems.append(f"{kind} file {rel}: {size} bytes, manifest says {entry['size']}")
            continue
        if mode == "sha256":
            want = entry.get("sha256")
            if not want:
                problems.append(f"manifest has no sha256 for {rel} (rebuild it with sha256)")
            elif sha256_file(path) != want:
                problems.append(f"sha256 mismatch for {rel}")
    if not indexed and not listed:
        weights = [f for f in model_files(directory) if f.endswith((".safetensors", ".bin"))]
        if not weights:
            problems.append("no weight files (*.safetensors, *.bin) and no index")
    present = model_files(directory)
    summary["files"] = len(present)
    summary["bytes"] = sum(os.path.getsize(os.path.join(directory, f)) for f in present)
    return summary, problems


def main(argv: list[str]) -> int:
    """``build DIR [--sha256]`` | ``verify DIR [--mode M] [--host H] [--require-manifest]``."""
    if len(argv) < 2 or argv[0] not in ("build", "verify"):
        sys.stderr.write("usage: build DIR [--sha256] | verify DIR [--mode M] [--host H]\n")
        return 2
    command, directory, rest = argv[0], argv[1], argv[2:]
    if command == "build":
        path = write_manifest(directory, sha256="--sha256" in rest)
        sys.stdout.write(json.dumps({"manifest": path}) + "\n")
        return 0
    mode = rest[rest.index("--mode") + 1] if "--mode" in rest else "sizes"
    host = rest[rest.index("--host") + 1] if "--host" in rest else "local"
    summary, problems = verify_dir(directory, mode, "--require-manifest" in rest)
    for p in problems:
        sys.stderr.write(f"verify {host}: {p}\n")
    if problems:
        sys.stderr.write(f"verify {host}: {directory} is incomplete ({len(problems)} problem(s))\n")
        return 1
    sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
