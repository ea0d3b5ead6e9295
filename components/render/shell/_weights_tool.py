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

Ownership record (``claim-begin``, ``claim-end``, ``release``): what deletion may remove.
The manifest above says what a *complete* model directory holds; it says nothing about who
wrote the files (a directory shared with another model, or filled by hand, holds files that
are not ours). So every step that writes into the model directory first runs ``claim-begin``
(it creates the missing directories and notes what is already there) and afterwards
``claim-end`` (every file and directory that appeared since is ours). The record lives
outside the model directory, in a root-only state directory on the host
(``/var/lib/vllm-cluster/weights/<key>.json``, key = sha256 of owner and path), so a copy of
a model directory, or a file planted in it, never carries the right to delete::

    {"format": "vllm-cluster-weights-owner/1", "owner": "<project>/<stack>",
     "path": "/data/models/x", "real_path": "/data/models/x",
     "created_dirs": ["/data/models", "/data/models/x"],
     "dirs": ["sub"], "files": {"config.json": 1234, ...}, "pending": null}

``release`` (``model.keep_on_destroy: false`` on destroy) removes only the files listed,
each only while it still has the recorded size, then the listed directories and the created
ones once they are empty. It refuses (deletes nothing) when the record is missing, belongs
to another owner or path, or the path now resolves elsewhere, and it refuses system
directories (``system_path_problem``) however the path is reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time

MANIFEST = ".vllm-cluster-manifest.json"
FORMAT = "vllm-cluster-manifest/1"
OWNER_FORMAT = "vllm-cluster-weights-owner/1"
OWNER_DIR = "/var/lib/vllm-cluster/weights"
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


# --- system directories -------------------------------------------------------------------

# Directories that hold the operating system or its state: neither they nor anything below
# them may be a model directory or a mount point, and deletion never touches them.
SYSTEM_TREES = (
    "/usr",
    "/etc",
    "/bin",
    "/sbin",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/lib",
)
# Refused themselves (a directory of one's own below them is fine).
SYSTEM_DIRS = ("/", "/home", "/root", "/var", "/opt", "/srv", "/mnt", "/media", "/tmp")


def system_path_problem(path: str) -> str | None:
    """Why ``path`` (absolute, normalised) is a system directory, or None when it is not.

    Refused: ``/`` and the directories above themselves, anything at or below
    ``SYSTEM_TREES`` and ``/lib*`` (``/lib``, ``/lib64``, ``/libx32``, ...), and home
    directories themselves (``/root``, ``/home``, ``/home/<user>``)."""
    parts = [p for p in path.split("/") if p]
    norm = "/" + "/".join(parts)
    if norm in SYSTEM_DIRS:
        return f"{norm} is a system directory"
    for tree in SYSTEM_TREES:
        if norm == tree or norm.startswith(tree + "/"):
            return f"{norm} is inside {tree}, which belongs to the operating system"
    if parts and parts[0].startswith("lib"):
        return f"{norm} is inside /{parts[0]}, which belongs to the operating system"
    if len(parts) == 2 and parts[0] == "home":
        return f"{norm} is a home directory"
    return None


# --- ownership record: what this stack wrote into the model directory ----------------------


class OwnershipError(Exception):
    """A refusal: nothing was (or will be) deleted or claimed."""


def record_path(state_dir: str, owner: str, path: str) -> str:
    key = hashlib.sha256(f"{owner}\n{path}".encode()).hexdigest()[:32]
    return os.path.join(state_dir, key + ".json")


def snapshot(directory: str) -> tuple[dict[str, int], set[str]]:
    """Every file (dot files too; symlinks as files, never followed) with its size, and
    every directory, relative to ``directory``."""
    files: dict[str, int] = {}
    dirs: set[str] = set()
    for root, dnames, fnames in os.walk(directory):
        keep = []
        for d in dnames:
            full = os.path.join(root, d)
            rel = os.path.relpath(full, directory).replace(os.sep, "/")
            if os.path.islink(full):
                files[rel] = os.lstat(full).st_size
            else:
                dirs.add(rel)
                keep.append(d)
        dnames[:] = keep
        for name in fnames:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, directory).replace(os.sep, "/")
            files[rel] = os.lstat(full).st_size
    return files, dirs


def _safe_rel(rel: object) -> bool:
    if not isinstance(rel, str) or not rel or rel.startswith("/"):
        return False
    return all(p not in ("", ".", "..") for p in rel.split("/"))


def _depth(rel: str) -> int:
    return rel.count("/")


def _load_record(rec_path: str, owner: str, path: str) -> dict[str, object] | None:
    if not os.path.exists(rec_path):
        return None
    try:
        with open(rec_path) as f:
            rec = json.load(f)
    except ValueError as e:
        raise OwnershipError(f"the ownership record {rec_path} is unreadable ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != OWNER_FORMAT:
        raise OwnershipError(f"{rec_path} is not an ownership record of vllm-cluster")
    if rec.get("owner") != owner or rec.get("path") != path:
        raise OwnershipError(
            f"{rec_path} records {rec.get('owner')!r} at {rec.get('path')!r}, "
            f"not {owner!r} at {path!r}"
        )
    files, dirs, created = rec.get("files"), rec.get("dirs"), rec.get("created_dirs")
    if (
        not isinstance(files, dict)
        or not all(_safe_rel(k) and isinstance(v, int) for k, v in files.items())
        or not isinstance(dirs, list)
        or not all(_safe_rel(d) for d in dirs)
        or not isinstance(created, list)
        or not all(isinstance(d, str) and (path == d or path.startswith(d + "/")) for d in created)
        or not isinstance(rec.get("real_path"), str)
    ):
        raise OwnershipError(f"{rec_path} does not match the ownership record format")
    return rec


def _save_record(rec_path: str, rec: dict[str, object]) -> None:
    os.makedirs(os.path.dirname(rec_path), mode=0o700, exist_ok=True)
    tmp = rec_path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(rec, sort_keys=True, indent=1) + "\n")
    os.replace(tmp, rec_path)


def _check_path(path: str) -> None:
    if not path.startswith("/") or path != "/" + "/".join(p for p in path.split("/") if p):
        raise OwnershipError(f"{path!r} is not an absolute, normalised path")
    if len([p for p in path.split("/") if p]) < 2:
        raise OwnershipError(f"{path} is fewer than 2 levels below /")
    problem = system_path_problem(path)
    if problem:
        raise OwnershipError(problem)


def claim_begin(path: str, owner: str, state_dir: str) -> dict[str, object]:
    """Before writing into ``path``: create the missing directories (recording which) and
    note what is already there (``pending``); an unfinished earlier claim keeps its note."""
    _check_path(path)
    rec_path = record_path(state_dir, owner, path)
    rec = _load_record(rec_path, owner, path)
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = os.path.dirname(p)
    real_parent = os.path.realpath(p)
    # Where the directories will really be made: the existing part resolved (a symlinked
    # ancestor may point into /usr), the missing part as given. Making a new directory
    # right under / (/data) is fine; making it inside a system tree is not.
    would_be = os.path.normpath(os.path.join(real_parent, os.path.relpath(path, p)))
    problem = system_path_problem(would_be) if missing else None
    if problem:
        raise OwnershipError(f"{path} would be created as {would_be}: {problem}")
    created = []
    for d in reversed(missing):
        os.mkdir(d)
        created.append(d)
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise OwnershipError(f"{path} is not a directory")
    _check_path(real)
    if rec is None:
        rec = {
            "format": OWNER_FORMAT,
            "owner": owner,
            "path": path,
            "real_path": real,
            "created_dirs": [],
            "dirs": [],
            "files": {},
            "pending": None,
        }
    elif rec["real_path"] != real:
        raise OwnershipError(
            f"{path} now resolves to {real}, but this stack wrote to {rec['real_path']}"
        )
    rec["created_dirs"] = sorted(set(rec["created_dirs"]) | set(created))  # type: ignore[call-overload]
    if rec.get("pending") is None:
        files, dirs = snapshot(real)
        rec["pending"] = {"files": sorted(files), "dirs": sorted(dirs)}
    rec["updated"] = int(time.time())
    _save_record(rec_path, rec)
    return rec


def claim_end(path: str, owner: str, state_dir: str) -> dict[str, object]:
    """After writing into ``path``: every file and directory that appeared since
    ``claim_begin`` is ours; sizes of our files are refreshed, vanished ones dropped."""
    _check_path(path)
    rec_path = record_path(state_dir, owner, path)
    rec = _load_record(rec_path, owner, path)
    if rec is None:
        raise OwnershipError(f"no ownership record for {path} (claim-begin did not run)")
    real = os.path.realpath(path)
    if real != rec["real_path"]:
        raise OwnershipError(
            f"{path} now resolves to {real}, but this stack wrote to {rec['real_path']}"
        )
    files, dirs = snapshot(real)
    owned = dict(rec["files"])  # type: ignore[call-overload]
    owned_dirs = set(rec["dirs"])  # type: ignore[call-overload]
    pending = rec.get("pending")
    if isinstance(pending, dict):
        before_files = set(pending.get("files", []))
        before_dirs = set(pending.get("dirs", []))
        owned.update({rel: size for rel, size in files.items() if rel not in before_files})
        owned_dirs |= dirs - before_dirs
    rec["files"] = {rel: files[rel] for rel in sorted(owned) if rel in files}
    rec["dirs"] = sorted(d for d in owned_dirs if d in dirs)
    rec["pending"] = None
    rec["updated"] = int(time.time())
    _save_record(rec_path, rec)
    return rec


def release(path: str, owner: str, state_dir: str, log: Log) -> dict[str, object]:
    """Delete what the record lists (see the module docstring); raises OwnershipError,
    having deleted nothing, when the record is foreign or the path does not match."""
    _check_path(path)
    rec_path = record_path(state_dir, owner, path)
    rec = _load_record(rec_path, owner, path)
    summary: dict[str, object] = {"path": path, "owner": owner, "deleted": 0, "kept": []}
    if rec is None:
        log(f"no record of files written by {owner} at {path}; deleting nothing")
        summary["record"] = False
        return summary
    summary["record"] = True
    recorded_real = str(rec["real_path"])
    _check_path(recorded_real)
    kept: list[str] = []
    deleted = 0
    if os.path.lexists(path):
        real = os.path.realpath(path)
        if real != recorded_real:
            raise OwnershipError(
                f"{path} now resolves to {real}, but this stack wrote to {recorded_real}"
            )
        if not os.path.isdir(real) or os.path.islink(recorded_real):
            raise OwnershipError(f"{real} is no longer a directory")
        root_dev = os.lstat(real).st_dev
        if isinstance(rec.get("pending"), dict):
            log("a fetch did not finish: files it wrote are not recorded and are kept")
        files: dict[str, int] = rec["files"]  # type: ignore[assignment]
        for rel in sorted(files, key=lambda r: (-_depth(r), r)):
            full = os.path.join(real, rel)
            parent = os.path.dirname(full)
            if os.path.realpath(parent) != parent:
                kept.append(f"{rel} (a directory on its path is now a link)")
                continue
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                kept.append(f"{rel} (now a directory)")
            elif st.st_dev != root_dev:
                kept.append(f"{rel} (on another filesystem)")
            elif stat.S_ISREG(st.st_mode) and st.st_size != files[rel]:
                kept.append(f"{rel} (changed since this stack wrote it)")
            else:
                os.unlink(full)
                deleted += 1
        dirs: list[str] = rec["dirs"]  # type: ignore[assignment]
        for rel in sorted(dirs, key=lambda r: (-_depth(r), r)):
            full = os.path.join(real, rel)
            if os.path.isdir(full) and not os.path.islink(full) and os.path.realpath(full) == full:
                try:
                    os.rmdir(full)
                except OSError:
                    kept.append(f"{rel}/ (not empty)")
    created: list[str] = rec["created_dirs"]  # type: ignore[assignment]
    for d in sorted(created, key=lambda x: (-x.count("/"), x)):
        if system_path_problem(d) or not os.path.isdir(d) or os.path.islink(d):
            continue
        try:
            os.rmdir(d)
        except OSError:
            kept.append(f"{d}/ (not empty)")
    os.unlink(rec_path)
    summary["deleted"] = deleted
    summary["kept"] = kept
    return summary


class Log:
    def __init__(self, host: str) -> None:
        self.host = host

    def __call__(self, message: str) -> None:
        sys.stderr.write(f"[{self.host}] weights: {message}\n")


def _opt(rest: list[str], name: str, default: str) -> str:
    return rest[rest.index(name) + 1] if name in rest else default


def _ownership_main(command: str, directory: str, rest: list[str]) -> int:
    owner = _opt(rest, "--owner", "")
    state_dir = _opt(rest, "--state-dir", OWNER_DIR)
    log = Log(_opt(rest, "--host", "local"))
    if not owner:
        sys.stderr.write("--owner is required\n")
        return 2
    try:
        if command == "claim-begin":
            claim_begin(directory, owner, state_dir)
        elif command == "claim-end":
            rec = claim_end(directory, owner, state_dir)
            log(f"{len(rec['files'])} file(s) at {directory} recorded as written by {owner}")  # type: ignore[arg-type]
        else:
            summary = release(directory, owner, state_dir, log)
            for k in summary["kept"]:  # type: ignore[attr-defined]
                log(f"kept {k}")
            if summary["record"]:
                log(f"removed {summary['deleted']} file(s) that {owner} wrote at {directory}")
            sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    except OwnershipError as e:
        log(f"error: refusing to {'delete anything' if command == 'release' else command}: {e}")
        return 1
    return 0


def main(argv: list[str]) -> int:
    """``build DIR [--sha256]`` | ``verify DIR [--mode M] [--host H] [--require-manifest]``
    | ``claim-begin|claim-end|release DIR --owner O [--state-dir S] [--host H]``."""
    ownership = ("claim-begin", "claim-end", "release")
    if len(argv) < 2 or argv[0] not in ("build", "verify", *ownership):
        sys.stderr.write(
            "usage: build DIR [--sha256] | verify DIR [--mode M] [--host H]"
            " | claim-begin|claim-end|release DIR --owner O [--state-dir S]\n"
        )
        return 2
    command, directory, rest = argv[0], argv[1], argv[2:]
    if command in ownership:
        return _ownership_main(command, directory, rest)
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
