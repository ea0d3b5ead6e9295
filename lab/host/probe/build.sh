#!/usr/bin/env bash
# The lab probe image: a small Debian root filesystem (essential + python3) that can run the (fake, Python)
# nvidia-smi the lab's GPU hook injects, for tests of `docker run --gpus` inside lab hosts.
#   build.sh TAG MIRROR SUITE     (MIRROR/SUITE read from this machine's apt sources)
set -euo pipefail
tag="$1" mirror="$2" suite="$3"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/vllm-lab-probe.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mmdebstrap \
  --variant=essential \
  --include=python3 \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  "$suite" "$work/rootfs.tar" "deb $mirror $suite main"
docker import \
  --change 'CMD ["/bin/sh"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'LABEL vllm-lab.cache=probe-image' \
  --message "vllm-cluster lab probe image (tests of docker run --gpus in lab hosts)" \
  "$work/rootfs.tar" "$tag" >/dev/null
