#!/usr/bin/env bash
# Build the BARE lab host root filesystem with mmdebstrap and import it as a Docker image
# whose PID 1 is systemd.
#   build.sh TAG MIRROR SUITE
# Shares the simulated driver tools and sshd settings of the GPU lab host (../image).
set -euo pipefail
tag="$1" mirror="$2" suite="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/vllm-lab-bare.XXXXXX")"
trap 'rm -rf "$work"' EXIT

packages="$(grep -v '^\s*#' "$here/packages.txt" | grep -v '^\s*$' | paste -sd, -)"
LAB_BARE_DIR="$here" LAB_HOST_IMAGE_DIR="$here/../image" mmdebstrap \
  --variant=minbase \
  --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="$here/customize.sh" \
  "$suite" "$work/rootfs.tar" "deb $mirror $suite main"

docker import \
  --change 'ENTRYPOINT ["/lib/systemd/systemd"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV container=docker' \
  --change 'LABEL vllm-lab.cache=bare-host-image' \
  --message "vllm-cluster bare lab host (fresh server, no Docker; systemd), recipe lab/host/bare" \
  "$work/rootfs.tar" "$tag" >/dev/null
