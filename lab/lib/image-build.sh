# shellcheck shell=bash
# Shared by the lab's engine image builds (lab/engine/build.sh: the stand-in;
# lab/vllm-cpu/build.sh: the real vLLM CPU engine). No registry is reachable, so an image starts
# as a Debian root filesystem made with mmdebstrap. The sourcing script sets PY (a python3),
# SUITE and PACKAGES (the rootfs), TAG, OUT (tarball) and META (its JSON record), and log().

json_field() { # json_field FILE KEY -> value or empty
  "$PY" -c 'import json,sys
try: print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))
except (OSError, ValueError): print("")' "$1" "$2"
}

# Debian's mirror, read from this machine's apt sources at run time (never written down in
# the repository): the first deb822 stanza serving a plain (not -security) suite.
debian_mirror() {
  "$PY" - <<'EOF'
import glob, sys
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path).read().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.split()
        suites = fields.get("suites", [])
        if "deb" in fields.get("types", []) and any("-" not in s for s in suites):
            for uri in fields.get("uris", []):
                if "security" not in uri:
                    print(uri)
                    sys.exit(0)
for line in open("/etc/apt/sources.list") if glob.glob("/etc/apt/sources.list") else []:
    parts = line.split()
    if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
        print(parts[1] if not parts[1].startswith("[") else parts[2])
        sys.exit(0)
sys.exit("no Debian mirror found in /etc/apt/sources.list.d/*.sources")
EOF
}

ensure_loaded() { # make sure the local engine has the image recorded in $META
  local want have
  want="$(json_field "$META" id)"
  have="$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)"
  if [[ -n "$want" && "$have" == "$want" ]]; then
    return 0
  fi
  log "loading $OUT into the local docker engine"
  docker load -i "$OUT" >/dev/null
}

build_rootfs() { # build_rootfs CACHE_DIR NAME -> path of the cached root filesystem tarball
  local cache_dir=$1 name=$2
  local mirror key rootfs tmp
  mirror="$(debian_mirror)"
  key="$(printf '%s|%s|%s|minbase|nodocs' "$SUITE" "$PACKAGES" "$mirror" | sha256sum | cut -c1-16)"
  rootfs="$cache_dir/rootfs/$name-$SUITE-$key.tar"
  if [[ -s "$rootfs" ]]; then
    log "root filesystem: cached $rootfs"
    echo "$rootfs"
    return 0
  fi
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    log "installing mmdebstrap (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
  fi
  mkdir -p "$cache_dir/rootfs"
  tmp="$cache_dir/rootfs/.$name-$SUITE-$key.$$.tar"
  log "root filesystem: mmdebstrap $SUITE (minbase: $PACKAGES)"
  # Only the main suite: the security suite is not served to this machine.
  mmdebstrap --quiet --format=tar --variant=minbase --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$SUITE" "$tmp" "deb $mirror $SUITE main" >&2
  mv "$tmp" "$rootfs"
  log "root filesystem: $(du -h "$rootfs" | cut -f1) in $rootfs"
  echo "$rootfs"
}
