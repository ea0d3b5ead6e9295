"""Docker: install from local .deb files when missing, merge registry mirrors, docker group.

- Install (:func:`docker_debs_install`, its own step before this one): only when ``dockerd``
  is missing. The program streams exactly the .deb files it found in ``docker.deb_dir``
  (a tar on stdin) into a fresh directory ``mktemp -d`` makes under a root-owned 0700
  parent, refuses a directory that is not root's or is group/world writable, checks each
  file's SHA-256 against the one computed on the operator machine, and installs only
  those paths (no registry needed): ``apt-get install`` of local files resolves
  dependencies among them and needs no download when all are there; without apt-get,
  ``dpkg -i``. The directory is removed afterwards. (Before, every ``*.deb`` in
  world-writable ``/var/tmp/vllm-cluster/debs`` was installed as root.)
- :func:`docker_install` then only checks that ``dockerd`` is there.
- ``daemon.json``: ``registry-mirrors`` is merged (existing mirrors and every other key are
  kept), written atomically and only when the parsed content changes. python3 does the
  merge; jq is the fallback; with neither the script stops and says so.
- Apply: only when the file changed. Registry mirrors are one of the settings dockerd
  reloads on SIGHUP, so the script *reloads* (``systemctl reload docker``, else
  ``service docker reload``, else ``kill -HUP`` of the running dockerd — the lab's hosts have
  no init system) instead of restarting: running containers, e.g. a serving engine on a
  re-run, are not stopped. A restart is only needed right after an install, where the
  service manager starts dockerd anyway.
- The docker group: ``usermod -aG docker USER`` when ``group_user`` is set and not yet a member.

Delete: nothing (Docker and daemon.json stay; other software may rely on them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from ._common import bash_array, check_abs_path, fragment, heredoc, q, render

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class DockerSpec:
    host: str
    install: bool = False
    """docker.install: dockerd missing is then reported as a missing deb step."""
    registry_mirrors: tuple[str, ...] = ()
    group_user: str | None = None
    daemon_json: str = "/etc/docker/daemon.json"
    reload_command: str | None = None
    """Raw shell run instead of the detected reload (tests use a marker file). Trusted
    input from the program, never from configuration."""
    json_tool: Literal["auto", "python3", "jq"] = "auto"


_MERGE_PY = r"""
import json, os, sys, tempfile
path, mirrors = sys.argv[1], json.loads(sys.argv[2])
try:
    with open(path) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
try:
    current = json.loads(text) if text.strip() else {}
except ValueError as e:
    sys.exit("daemon.json is not valid JSON (%s); not touching it. Fix: repair %s" % (e, path))
if not isinstance(current, dict):
    sys.exit("daemon.json is not a JSON object; not touching it. Fix: repair %s" % path)
merged = dict(current)
have = list(current.get("registry-mirrors") or [])
merged["registry-mirrors"] = have + [m for m in mirrors if m not in have]
if merged == current:
    print("unchanged")
    sys.exit(0)
d = os.path.dirname(path) or "."
os.makedirs(d, exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=d, prefix=".daemon.json.")
with os.fdopen(fd, "w") as f:
    json.dump(merged, f, indent=2, sort_keys=True)
    f.write("\n")
os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o644)
os.replace(tmp, path)
print("changed")
"""


def docker_install(spec: DockerSpec) -> str:
    """Render the Docker step. Prints one JSON line:
    ``{"docker_version", "installed", "daemon_json", "reloaded", "group_user"}``."""
    daemon_json = check_abs_path(spec.daemon_json, "daemon_json")
    if spec.json_tool not in ("auto", "python3", "jq"):
        raise ValueError(f"json_tool must be auto, python3 or jq: {spec.json_tool!r}")
    for m in spec.registry_mirrors:
        if not m.startswith(("http://", "https://")) or any(c.isspace() for c in m):
            raise ValueError(f"registry mirror must be an http(s) URL: {m!r}")
    if spec.group_user is not None and not _USER.match(spec.group_user):
        raise ValueError(f"docker_group_user is not a valid user name: {spec.group_user!r}")
    open_tag, py_body = heredoc(_MERGE_PY.strip("\n"), "VLLM_CLUSTER_PY")
    lines = [
        f"INSTALL={1 if spec.install else 0}",
        f"DAEMON_JSON={q(daemon_json)}",
        f"MIRRORS_JSON={q(json.dumps(list(spec.registry_mirrors)))}",
        f"GROUP_USER={q(spec.group_user or '')}",
        f"JSON_TOOL={q(spec.json_tool)}",
        "reload_hook() {",
        f"  {spec.reload_command}" if spec.reload_command else "  return 1",
        "}",
        f"HAVE_RELOAD_HOOK={1 if spec.reload_command else 0}",
        "merge_python() {",
        f'  python3 - "$DAEMON_JSON" "$MIRRORS_JSON" {open_tag}',
        py_body.rstrip("\n"),
        "}",
        fragment("docker"),
    ]
    return render(spec.host, "docker", "\n".join(lines))


# Where the .deb files are unpacked: a root-owned 0700 parent, a fresh directory per run.
DEB_PARENT = "/var/lib/vllm-cluster/debs"
_DEB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~%-]*\.deb$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DebFile:
    name: str
    """File name in docker.deb_dir (no directory part)."""
    sha256: str


@dataclass(frozen=True)
class DebsSpec:
    host: str
    debs: tuple[DebFile, ...]
    parent: str = DEB_PARENT
    dockerd_check: str = "command -v dockerd >/dev/null 2>&1"
    """Raw shell that succeeds when Docker is installed. Trusted input from the program,
    never from configuration (tests point it at a marker file)."""
    start_command: str | None = None
    """Raw shell run instead of starting the installed dockerd (systemd / init script);
    trusted input from the program (tests: a marker file, never this machine's Docker)."""


def docker_debs_install(spec: DebsSpec) -> str:
    """Host step: install Docker from the .deb files streamed on stdin (a tar holding at
    least ``spec.debs``), unless dockerd is already there. Prints ``{"installed": bool}``."""
    parent = check_abs_path(spec.parent, "deb parent directory", min_components=2)
    if not spec.debs:
        raise ValueError("docker.deb_dir: no .deb files to install")
    for d in spec.debs:
        if not _DEB_NAME.match(d.name):
            raise ValueError(f"docker.deb_dir: not a plain .deb file name: {d.name!r}")
        if not _SHA256.match(d.sha256):
            raise ValueError(f"{d.name}: sha256 must be 64 lowercase hex digits")
    lines = [
        f"PARENT={q(parent)}",
        bash_array("NAMES", [d.name for d in spec.debs]),
        bash_array("SHAS", [d.sha256 for d in spec.debs]),
        "dockerd_present() {",
        f"  {spec.dockerd_check}",
        "}",
        "start_hook() {",
        f"  {spec.start_command}" if spec.start_command else "  return 1",
        "}",
        f"HAVE_START_HOOK={1 if spec.start_command else 0}",
        fragment("docker_debs"),
    ]
    return render(spec.host, "docker", "\n".join(lines))
