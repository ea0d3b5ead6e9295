#!/usr/bin/env python3
"""LAB TEST FIXTURE: a stand-in for a model hub. It is not a hub.

Serves model directories over the subset of the Hugging Face Hub HTTP API that the real
``huggingface_hub`` client (``snapshot_download``, ``hf download``) calls, and over the part of
ModelScope's API that ``modelscope download`` calls, so the program's download step runs the
real clients against it. Standard library only, so it runs with any python3 (a lab host, a
container, this machine).

    hubd.py --repo ORG/NAME=DIR [--repo ...] [--bind 127.0.0.1] [--port 0]
            [--token-file F] [--throttle GLOB=BYTES_PER_S ...] [--drop-once GLOB=BYTES ...]
            [--ready-file F]

The token comes from ``--token-file`` or the environment variable ``HUBD_TOKEN`` (never from
the command line, which ``ps`` shows); with neither, the repos are public. Requests to a repo
then need ``Authorization: Bearer <token>``. No header and no token: 401 ``RepoNotFound`` (as
the hub answers for a private repo); a wrong token: 401 "Invalid credentials in Authorization
header". The log (stderr) has method, path and status, never a header.

``--throttle`` caps the body rate of matching files (per connection) so a download can be
killed mid-way; ``--drop-once`` closes the first GET of a matching file after that many body
bytes (the client's in-process retry then resumes with ``Range``). ``GET /_hubd/stats``
(no token) returns the counters as JSON: body bytes sent per ``repo/file``, requests,
refused requests. See lab/hub/README.md for the endpoints.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import hmac
import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 64 * 1024
# What the hub stores in LFS (its .gitattributes); those files carry an "lfs" entry in the
# tree listing and a sha256 ETag, the others a git blob id.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack")
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"


# --- the served repositories ----------------------------------------------------------------


@dataclass(frozen=True)
class RepoFile:
    path: str  # relative, "/"-separated
    source: Path
    size: int
    blob_id: str  # git blob sha1
    sha256: str
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id


@dataclass(frozen=True)
class Repo:
    repo_id: str
    files: dict[str, RepoFile]
    commit: str  # 40 hex: a digest of the file list, stable while the files are

    def tree(self) -> list[dict[str, Any]]:
        """``GET /api/models/{repo}/tree/{rev}?recursive=true`` entries (folders too)."""
        folders = sorted(
            {"/".join(p.split("/")[:i]) for p in self.files for i in range(1, p.count("/") + 1)}
        )
        out: list[dict[str, Any]] = [
            {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            for d in folders
        ]
        for f in sorted(self.files.values(), key=lambda f: f.path):
            entry: dict[str, Any] = {
                "type": "file",
                "oid": f.blob_id,
                "size": f.size,
                "path": f.path,
            }
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            out.append(entry)
        return out


def _hashes(path: Path) -> tuple[str, str]:
    size = path.stat().st_size
    blob = hashlib.sha1(f"blob {size}\0".encode())
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            blob.update(chunk)
            sha.update(chunk)
    return blob.hexdigest(), sha.hexdigest()


def load_repo(repo_id: str, directory: Path) -> Repo:
    """Every regular file under ``directory`` except dot files (the lab's build markers)."""
    if not re.fullmatch(REPO_ID, repo_id):
        raise ValueError(f"not a repo id (org/name): {repo_id!r}")
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    files: dict[str, RepoFile] = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if not p.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        blob_id, sha256 = _hashes(p)
        size = p.stat().st_size
        lfs = p.suffix in LFS_SUFFIXES or size >= LFS_MIN_SIZE
        files[rel] = RepoFile(rel, p, size, blob_id, sha256, lfs)
    listing = "\n".join(f"{f.path} {f.blob_id}" for f in files.values())
    commit = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()
    return Repo(repo_id, files, commit)


# --- counters -------------------------------------------------------------------------------


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0

    def sent(self, key: str, n: int) -> None:
        with self.lock:
            self.bytes_sent[key] = self.bytes_sent.get(key, 0) + n

    def request(self, method: str, path: str, status: int, rng: str | None) -> None:
        with self.lock:
            self.requests.append({"method": method, "path": path, "status": status, "range": rng})
            if status in (401, 403):
                self.refused += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "bytes_sent": dict(self.bytes_sent),
                "requests": list(self.requests),
                "refused": self.refused,
            }


@dataclass
class Config:
    repos: dict[str, Repo]
    token: str | None = None
    throttle: list[tuple[str, int]] = field(default_factory=list)  # (glob, bytes/s)
    drop_once: list[tuple[str, int]] = field(default_factory=list)  # (glob, bytes)
    stats: Stats = field(default_factory=Stats)
    dropped: set[str] = field(default_factory=set)

    def rate_for(self, path: str) -> int | None:
        return next((r for g, r in self.throttle if fnmatch.fnmatch(path, g)), None)

    def drop_after(self, key: str, path: str) -> int | None:
        limit = next((n for g, n in self.drop_once if fnmatch.fnmatch(path, g)), None)
        with self.stats.lock:
            if limit is None or key in self.dropped:
                return None
            self.dropped.add(key)
        return limit


# --- HTTP -----------------------------------------------------------------------------------

INFO = re.compile(rf"^/api/models/({REPO_ID})(?:/revision/([^/]+))?$")
TREE = re.compile(rf"^/api/models/({REPO_ID})/tree/([^/]+)(?:/(.+))?$")
RESOLVE = re.compile(rf"^/({REPO_ID})/resolve/([^/]+)/(.+)$")
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
# ModelScope (modelscope / modelscope_hub): file listing and file download.
MS_FILES = re.compile(rf"^/api/v1/models/({REPO_ID})/repo/files$")
MS_FILE = re.compile(rf"^/api/v1/models/({REPO_ID})/repo$")
MS_INFO = re.compile(rf"^/api/v1/models/({REPO_ID})$")


class HubHandler(BaseHTTPRequestHandler):
    server_version = "lab-hubd/1"
    protocol_version = "HTTP/1.1"
    config: Config  # set on the subclass made by make_server

    # Method, path and status only: headers (the token) are never logged.
    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"hubd: {self.command} {urlsplit(self.path).path} {args[1]}\n")

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- routing

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        rng = self.headers.get("Range")
        status = 500
        try:
            if path == "/_hubd/stats":
                status = self._json(200, self.config.stats.snapshot(), head)
            elif m := RESOLVE.match(path):
                status = self._resolve(m.group(1), m.group(2), m.group(3), rng, head)
            elif m := TREE.match(path):
                status = self._tree(m.group(1), m.group(2), m.group(3), head)
            elif m := INFO.match(path):
                status = self._info(m.group(1), m.group(2) or "main", head)
            elif m := MS_FILES.match(path):
                status = self._ms_files(m.group(1), query.get("Revision", "master"), head)
            elif m := MS_FILE.match(path):
                rev, file = query.get("Revision", "master"), query.get("FilePath", "")
                status = self._ms_file(m.group(1), rev, file, rng, head)
            elif m := MS_INFO.match(path):
                status = self._ms_info(m.group(1), head)
            else:
                status = self._error(404, "EntryNotFound", f"no route for {path}", head)
        except (BrokenPipeError, ConnectionResetError):
            status = 499  # the client went away (killed mid-way): nothing to answer
            self.close_connection = True
        finally:
            if path != "/_hubd/stats":
                self.config.stats.request(self.command, path, status, rng)

    def _token_problem(self) -> str | None:
        """None when the request may read the repos, else "missing" or "wrong"."""
        token = self.config.token
        if token is None:
            return None
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return "missing"
        return None if hmac.compare_digest(auth[7:].encode(), token.encode()) else "wrong"

    def _repo(self, repo_id: str, revision: str, head: bool) -> tuple[Repo | None, int]:
        """The repo if the token admits it and the revision exists, else the error sent."""
        repo = self.config.repos.get(repo_id)
        problem = self._token_problem()
        if problem == "missing":
            return None, self._error(401, "RepoNotFound", "Repository not found", head)
        if problem == "wrong":
            msg = "Invalid credentials in Authorization header"
            return None, self._error(401, None, msg, head)
        if repo is None:
            return None, self._error(404, "RepoNotFound", "Repository not found", head)
        if revision not in ("main", repo.commit):
            return None, self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        return repo, 0

    # -- endpoints

    def _info(self, repo_id: str, revision: str, head: bool) -> int:
        repo, err = self._repo(repo_id, revision, head)
        if repo is None:
            return err
        body = {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.commit,
            "private": self.config.token is not None,
            "gated": False,
            "disabled": False,
            "tags": ["lab-fixture"],
            "siblings": [{"rfilename": p} for p in sorted(repo.files)],
        }
        return self._json(200, body, head)

    def _tree(self, repo_id: str, revision: str, sub: str | None, head: bool) -> int:
        repo, err = self._repo(repo_id, revision, head)
        if repo is None:
            return err
        entries = repo.tree()
        if sub:
            entries = [e for e in entries if e["path"].startswith(sub.rstrip("/") + "/")]
        return self._json(200, entries, head)

    def _resolve(self, repo_id: str, revision: str, path: str, rng: str | None, head: bool) -> int:
        repo, err = self._repo(repo_id, revision, head)
        if repo is None:
            return err
        f = repo.files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist", head, repo)
        return self._file(repo, f, rng, head)

    # ModelScope: {"Code", "Message", "Data", "Success"} envelopes, revision "master".

    def _ms_repo(self, repo_id: str, revision: str, head: bool) -> tuple[Repo | None, int]:
        repo = self.config.repos.get(repo_id)
        problem = self._token_problem()
        if problem is not None:
            msg = "Unauthorized: " + ("no token" if problem == "missing" else "invalid token")
            return None, self._ms_json(401, None, msg, head)
        if repo is None:
            return None, self._ms_json(404, None, f"model {repo_id} not found", head)
        if revision not in ("master", "main", repo.commit):
            return None, self._ms_json(404, None, f"revision {revision} not found", head)
        return repo, 0

    def _ms_info(self, repo_id: str, head: bool) -> int:
        repo, err = self._ms_repo(repo_id, "master", head)
        if repo is None:
            return err
        owner, name = repo.repo_id.split("/")
        data = {"Path": owner, "Name": name, "Id": repo.commit[:12], "Private": True}
        return self._ms_json(200, data, "success", head)

    def _ms_files(self, repo_id: str, revision: str, head: bool) -> int:
        repo, err = self._ms_repo(repo_id, revision, head)
        if repo is None:
            return err
        files = [
            {
                "Name": f.path.rsplit("/", 1)[-1],
                "Path": f.path,
                "Type": "blob",
                "Size": f.size,
                "Sha256": f.sha256,
                "IsLFS": f.lfs,
                "Revision": repo.commit,
            }
            for f in sorted(repo.files.values(), key=lambda f: f.path)
        ]
        return self._ms_json(200, {"Files": files}, "success", head)

    def _ms_file(self, repo_id: str, revision: str, path: str, rng: str | None, head: bool) -> int:
        repo, err = self._ms_repo(repo_id, revision, head)
        if repo is None:
            return err
        f = repo.files.get(path)
        if f is None:
            return self._ms_json(404, None, f"file {path} not found", head)
        return self._file(repo, f, rng, head)

    # -- a file's bytes, for both APIs

    def _file(self, repo: Repo, f: RepoFile, rng: str | None, head: bool) -> int:
        start, end = 0, f.size - 1
        status = 200
        if rng is not None and not head:
            m = RANGE.match(rng.strip())
            if m is None or int(m.group(1)) >= max(f.size, 1):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{f.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 416
            start = int(m.group(1))
            end = min(int(m.group(2)), f.size - 1) if m.group(2) else f.size - 1
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f.etag}"')
        self.send_header("X-Repo-Commit", repo.commit)
        if f.lfs:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
        self.end_headers()
        if not head:
            self._send_body(f, f"{repo.repo_id}/{f.path}", start, end - start + 1)
        return status

    # -- writing

    def _send_body(self, f: RepoFile, key: str, start: int, length: int) -> None:
        rate = self.config.rate_for(f.path)
        drop = self.config.drop_after(key, f.path)
        chunk = CHUNK if rate is None else max(1024, min(CHUNK, rate // 20))
        began = time.monotonic()
        done = 0
        with f.source.open("rb") as src:
            src.seek(start)
            while done < length:
                want = min(chunk, length - done)
                if drop is not None:
                    want = min(want, drop - done)
                    if want <= 0:  # the fault: the connection ends mid-body
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                data = src.read(want)
                if not data:
                    raise OSError(f"{f.source} shrank while being served")
                self.wfile.write(data)
                done += len(data)
                self.config.stats.sent(key, len(data))
                if rate is not None:
                    ahead = done / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

    def _json(self, status: int, body: object, head: bool) -> int:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        return status

    def _ms_json(self, status: int, data: object, message: str, head: bool) -> int:
        body = {"Code": status, "Message": message, "Data": data, "Success": status == 200}
        return self._json(status, body, head)

    def _error(
        self, status: int, code: str | None, message: str, head: bool, repo: Repo | None = None
    ) -> int:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.commit)
        self.end_headers()
        if not head:
            self.wfile.write(data)
        return status


def make_server(config: Config, bind: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    handler = type("BoundHubHandler", (HubHandler,), {"config": config})
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    return server


# --- command line ---------------------------------------------------------------------------


def _pair(text: str, what: str) -> tuple[str, str]:
    left, sep, right = text.rpartition("=")
    if not sep or not left or not right:
        raise argparse.ArgumentTypeError(f"{what} must be LEFT=RIGHT: {text!r}")
    return left, right


def _read_token(token_file: str | None) -> str | None:
    if token_file:
        mode = os.stat(token_file).st_mode & 0o777
        if mode & 0o077:
            raise SystemExit(f"hubd: {token_file} has mode {mode:o}. Fix: chmod 600 {token_file}")
        token = Path(token_file).read_text().strip()
    else:
        token = os.environ.get("HUBD_TOKEN", "").strip()
    return token or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="LAB TEST FIXTURE: a stand-in for a model hub")
    ap.add_argument("--repo", action="append", required=True, help="ORG/NAME=DIR (repeatable)")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (see --ready-file)")
    ap.add_argument("--token-file", help="file (mode 600) holding the token; else $HUBD_TOKEN")
    ap.add_argument("--throttle", action="append", default=[], help="GLOB=BYTES_PER_S")
    ap.add_argument("--drop-once", action="append", default=[], help="GLOB=BYTES")
    ap.add_argument("--ready-file", help='written once listening: {"port": N, "url": ...}')
    args = ap.parse_args(argv)
    repos: dict[str, Repo] = {}
    for spec in args.repo:
        repo_id, directory = _pair(spec, "--repo")
        repos[repo_id] = load_repo(repo_id, Path(directory))
    config = Config(
        repos=repos,
        token=_read_token(args.token_file),
        throttle=[(g, int(n)) for g, n in (_pair(t, "--throttle") for t in args.throttle)],
        drop_once=[(g, int(n)) for g, n in (_pair(t, "--drop-once") for t in args.drop_once)],
    )
    server = make_server(config, args.bind, args.port)
    port = int(server.server_address[1])
    url = f"http://{args.bind}:{port}"
    for r in repos.values():
        total = sum(f.size for f in r.files.values())
        sys.stderr.write(f"hubd: {r.repo_id} @ {r.commit}: {len(r.files)} files, {total} bytes\n")
    sys.stderr.write(f"hubd: listening on {url} (token {'required' if config.token else 'off'})\n")
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        Path(tmp).write_text(json.dumps({"port": port, "url": url}) + "\n")
        os.replace(tmp, args.ready_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
