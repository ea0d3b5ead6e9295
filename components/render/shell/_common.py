"""Shared helpers for the shell renderers: quoting, the script prelude, validation.

Every rendered script starts with ``set -euo pipefail`` and the same small prelude, so a
person reading a Pulumi log sees uniform progress lines ``[host] step: ...`` on stderr.
Values from configuration are only ever placed in a script through :func:`q`
(``shlex.quote``), which makes hostile strings inert shell words.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

# A JSON string escaper in bash, so scripts that must run before python3 is known to exist
# (preflight, storage, docker) can still print one machine-readable line.
_JSTR = r"""jstr() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  s=$(printf '%s' "$s" | tr -d '\000-\010\013\014\016-\037')
  printf '"%s"' "$s"
}"""


def q(value: str | int | PurePosixPath) -> str:
    """Quote one value as a single inert shell word."""
    return shlex.quote(str(value))


def prelude(host: str, step: str) -> str:
    """The common first lines of every script (must stay first: ``set -euo pipefail``)."""
    return "\n".join(
        [
            "set -euo pipefail",
            f"# vllm-cluster {re.sub(r'[^a-z0-9-]', '-', step)} step (components.render.shell).",
            # Non-login SSH sessions of non-root users often lack the sbin directories where
            # blkid, mkfs, losetup, ip and ss live. Appending keeps anything earlier on PATH
            # (site tools, test doubles) in front.
            'export PATH="${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/sbin:/sbin"',
            # Stable, parseable output from df, ss, blkid, ip.
            "export LC_ALL=C",
            f"HOST={q(host)}",
            f"STEP={q(step)}",
            'log() { printf \'[%s] %s: %s\\n\' "$HOST" "$STEP" "$*" >&2; }',
            'die() { printf \'[%s] %s: error: %s\\n\' "$HOST" "$STEP" "$*" >&2; exit 1; }',
            _JSTR,
            "",
        ]
    )


def render(host: str, step: str, body: str) -> str:
    """Assemble a full script: prelude + body, ending with a newline."""
    return prelude(host, step) + body.strip("\n") + "\n"


def bash_array(name: str, values: Iterable[str | int]) -> str:
    """``NAME=('a' 'b')`` with every element shell-safe. A bare word with a comma is
    quoted too: it is correct either way, but shellcheck (SC2054) reads it as a mistyped
    element separator."""

    def word(value: str | int) -> str:
        quoted = q(value)
        return f"'{quoted}'" if "," in quoted and not quoted.startswith("'") else quoted

    return f"{name}=(" + " ".join(word(v) for v in values) + ")"


def heredoc(text: str, tag: str = "VLLM_CLUSTER_EOF") -> tuple[str, str]:
    """Return (opening, body+closing) for a quoted heredoc (no expansion inside).

    The tag must not occur as a line of the text, or the heredoc would end early.
    """
    if any(line.strip() == tag for line in text.splitlines()):
        raise ValueError(f"heredoc tag {tag} occurs in the text")
    return f"<<'{tag}'", text.rstrip("\n") + f"\n{tag}\n"


def remote_command(script: str, *, sudo: bool = False) -> str:
    """The string to give ``pulumi_command.remote.Command(create=...)`` to run a script.

    The remote side runs the command through the login user's shell, which may be dash;
    our scripts need bash (``pipefail``, arrays), so wrap them in ``bash -c``. Standard
    input stays free for secrets (``remote.Command(stdin=...)``). With ``sudo`` the script
    runs via ``sudo -n`` (never prompts; fails if the user may not sudo without a password).
    """
    cmd = "bash -c " + q(script)
    return ("sudo -n " + cmd) if sudo else cmd


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_name(value: str, what: str) -> str:
    """A short identifier used inside file names (markers, state dirs)."""
    if not _SAFE_NAME.match(value):
        raise ValueError(f"{what} must match {_SAFE_NAME.pattern}: {value!r}")
    return value


def check_abs_path(value: str, what: str, *, min_components: int = 1) -> str:
    """An absolute, normalized POSIX path without whitespace or control characters.

    Whitespace is refused because these paths go into /etc/fstab and rsync's ``-e``.
    """
    if not value.startswith("/"):
        raise ValueError(f"{what} must be an absolute path: {value!r}")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(f"{what} must not contain whitespace or control characters: {value!r}")
    parts = [p for p in value.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{what} must be normalized (no '.' or '..'): {value!r}")
    if len(parts) < min_components:
        raise ValueError(f"{what} needs at least {min_components} path components: {value!r}")
    return "/" + "/".join(parts)


_SH_DIR = Path(__file__).with_name("sh")


@functools.cache
def fragment(name: str) -> str:
    """A bash fragment from ``components/render/shell/sh/<name>.sh`` (kept as files so they can be
    read and linted as shell; they use variables the renderer assigns before them)."""
    return (_SH_DIR / f"{name}.sh").read_text(encoding="utf-8")
