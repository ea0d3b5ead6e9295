#!/usr/bin/env bash
# Debian packages the script tests (tests/scripts) run the rendered scripts with:
# partitioning (sfdisk, parted), filesystems (xfsprogs, e2fsprogs), rsync and a private
# sshd for the fan-out test, jq for the daemon.json fallback, shellcheck for the unit lint.
# Idempotent: installs only what is missing. Needs root and Debian's package mirror.
set -euo pipefail
want=(fdisk parted xfsprogs e2fsprogs util-linux rsync openssh-client openssh-server jq shellcheck)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "tests/scripts: all packages present" >&2
  exit 0
fi
echo "tests/scripts: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# No init system here: keep openssh-server's postinst from starting a system sshd (the
# fan-out test runs its own on a loopback port).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created_policy=1
fi
trap '[ "$created_policy" = 0 ] || rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
