# shellcheck shell=bash
# host_python: the Python the build scripts run their helpers and pip downloads with: the
# project's virtualenv when it exists (it has pip), else the system python3. Sourced by
# lab/engine/build.sh and tools/vllm-cpu/lib.sh; not run alone.

host_python() {
  local repo
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [[ -x "$repo/.venv/bin/python" ]]; then
    echo "$repo/.venv/bin/python"
  else
    command -v python3
  fi
}
