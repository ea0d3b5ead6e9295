#!/usr/bin/env bash
# Build a lab host root filesystem with mmdebstrap and import it as a Docker image.
#   build.sh TAG MIRROR SUITE
# MIRROR and SUITE come from this machine's own apt sources (lab/host/labctl.py reads them at
# run time); no mirror or registry name is written into the repository. Only the main suite is
# named: the security suite is not served here.
# The GPU lab host by default; another recipe (lab/host/bare/build.sh) sets LAB_IMAGE_DIR (its
# packages.txt and customize.sh), LAB_IMAGE_ENTRYPOINT, LAB_IMAGE_LABEL and LAB_IMAGE_MESSAGE.
set -euo pipefail
tag="$1" mirror="$2" suite="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
recipe="${LAB_IMAGE_DIR:-$here}"
entrypoint="${LAB_IMAGE_ENTRYPOINT:-/usr/local/sbin/lab-host-entrypoint}"
label="${LAB_IMAGE_LABEL:-host-image}"
message="${LAB_IMAGE_MESSAGE:-vllm-cluster lab host (simulated GPU server), recipe lab/host/image}"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/vllm-lab-host.XXXXXX")"
trap 'rm -rf "$work"' EXIT

packages="$(grep -v '^\s*#' "$recipe/packages.txt" | grep -v '^\s*$' | paste -sd, -)"
# Docs, man pages and translations are dropped to keep the image (and every `lab up`) small.
# The customize hook finds the shared lab files here (LAB_HOST_IMAGE_DIR) and its recipe's own
# in LAB_RECIPE_DIR.
LAB_HOST_IMAGE_DIR="$here" LAB_RECIPE_DIR="$recipe" mmdebstrap \
  --variant=minbase \
  --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="$recipe/customize.sh" \
  "$suite" "$work/rootfs.tar" "deb $mirror $suite main"

docker import \
  --change "ENTRYPOINT [\"$entrypoint\"]" \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "LABEL vllm-lab.cache=$label" \
  --message "$message" \
  "$work/rootfs.tar" "$tag" >/dev/null
