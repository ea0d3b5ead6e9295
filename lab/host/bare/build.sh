#!/usr/bin/env bash
# Build the BARE lab host image (systemd as PID 1, no Docker) with the GPU lab host's build
# (../image/build.sh): this recipe's packages.txt and customize.sh, systemd as entrypoint.
#   build.sh TAG MIRROR SUITE
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAB_IMAGE_DIR="$here" \
  LAB_IMAGE_ENTRYPOINT=/lib/systemd/systemd \
  LAB_IMAGE_LABEL=bare-host-image \
  LAB_IMAGE_MESSAGE="vllm-cluster bare lab host (fresh server, no Docker; systemd), recipe lab/host/bare" \
  exec bash "$here/../image/build.sh" "$@"
