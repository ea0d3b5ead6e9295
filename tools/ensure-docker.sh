#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine: install Debian's docker.io when no dockerd
# exists and start dockerd in the background when it is not running. Idempotent.
set -euo pipefail
log_dir="${DOCKERD_LOG_DIR:-/var/log}"
if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker: installing Debian's docker.io" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi
if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "ensure-docker: starting dockerd (log: $log_dir/dockerd.log)" >&2
  nohup dockerd >"$log_dir/dockerd.log" 2>&1 &
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 1
done
echo "ensure-docker: dockerd did not answer within 60 s; see $log_dir/dockerd.log" >&2
exit 1
