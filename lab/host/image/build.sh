#!/usr/bin/env bash
# Build the lab host root filesystem with mmdebstrap and import it as a Docker image.
#   build.sh TAG MIRROR SUITE
# MIRROR and SUITE come from this machine's own apt sources (lab/host/labctl.py reads them at
# run time); no mirror or registry name is written into the repository. Only the main suite is
# named: the security suite is not served here.
set -euo pipefail
tag="$1" mirror="$2" suite="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/vllm-lab-host.XXXXXX")"
trap 'rm -rf "$work"' EXIT

packages="$(grep -v '^\s*#' "$here/packages.txt" | grep -v '^\s*$' | paste -sd, -)"
# Docs, man pages and translations are dropped to keep the image (and every `lab up`) small.
LAB_HOST_IMAGE_DIR="$here" mmdebstrap \
  --variant=minbase \
  --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="$here/customize.sh" \
  "$suite" "$work/rootfs.tar" "deb $mirror $suite main"

docker import \
  --change 'ENTRYPOINT ["/usr/local/sbin/lab-host-entrypoint"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'LABEL vllm-lab.cache=host-image' \
  --message "vllm-cluster lab host (simulated GPU server), recipe lab/host/image" \
  "$work/rootfs.tar" "$tag" >/dev/null
