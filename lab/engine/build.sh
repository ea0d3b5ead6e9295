#!/usr/bin/env bash
# Build the lab's stand-in engine image (LAB TEST FIXTURE: not vLLM) without any registry and
# save it as $LAB_DIR/images/vllm-standin.tar (image tag vllm-standin:lab).
#
#   lab/engine/build.sh            (run through tools/with-env, or with LAB_DIR set)
#
# Recipe: a Debian root filesystem made with mmdebstrap (no base image can be pulled here),
# Ray and huggingface_hub (as vLLM images ship it) from PyPI wheels fetched on this machine
# (containers cannot reach PyPI) installed offline into /opt/venv, and the stand-in package (lab/engine/standin, importable as `vllm`) on top.
# The recipe hash (this script, the stand-in sources, the pinned versions) is recorded beside the
# tarball in vllm-standin.tar.json; when it matches, nothing is rebuilt (the image is only
# loaded into the local engine if missing there). Caches live outside the repository, under
# ${XDG_CACHE_HOME:-~/.cache}/vllm-cluster-lab, so rebuilds after a source change take seconds.
set -euo pipefail
# Failures inside $(...) must stop the build too.
shopt -s inherit_errexit

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="${REPO_ROOT:-$(cd "$here/../.." && pwd)}"
LAB_DIR="${LAB_DIR:-$REPO_ROOT/.lab}"
CACHE_DIR="${VLLM_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vllm-cluster-lab}"

RAY_VERSION="2.60.0"
# vLLM images ship huggingface_hub (its `hf` CLI downloads weights on hosts without one); the
# same release the tests pin (requirements-dev.txt), so the lab hub is proven against it.
HF_HUB_VERSION="2.4.0"
# Debian 12's python3 is 3.11: the wheels below are fetched for exactly that interpreter.
SUITE="bookworm"
PY_VERSION="3.11"
PACKAGES="python3,python3-venv,ca-certificates,procps,iproute2,curl"
# The lab contract names this tag; another one is only for trying the build beside it.
TAG="${VLLM_STANDIN_TAG:-vllm-standin:lab}"
OUT="$LAB_DIR/images/vllm-standin.tar"
META="$OUT.json"
VENV_PATH="/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { printf '[engine-build %4ss] %s\n' "$SECONDS" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# shellcheck source=tools/host-python.sh
source "$REPO_ROOT/tools/host-python.sh"
PY="$(host_python)"
# shellcheck source=lab/lib/image-build.sh
source "$here/../lib/image-build.sh"

recipe_hash() {
  # Relative paths and contents of every source file, this script, and the pinned versions.
  {
    echo "ray=$RAY_VERSION hf=$HF_HUB_VERSION suite=$SUITE python=$PY_VERSION packages=$PACKAGES"
    (
      cd "$here"
      find build.sh ../lib/image-build.sh standin -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
        ! -path '*.egg-info/*' ! -path 'standin/build/*' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum
    )
  } | sha256sum | cut -c1-64
}

fetch_wheels() { # fetch_wheels NAME VERSION -> directory holding NAME==VERSION and its
  # dependencies for cp311 manylinux x86_64
  local name="$1" version="$2"
  local dir="$CACHE_DIR/wheels/$name-$version-cp${PY_VERSION/./}"
  if [[ -f "$dir/.complete" ]]; then
    log "$name wheels: cached $dir"
    echo "$dir"
    return 0
  fi
  mkdir -p "$dir"
  log "$name wheels: pip download $name==$version for CPython $PY_VERSION"
  local platforms=(--platform manylinux2014_x86_64)
  local glibc
  for glibc in $(seq 17 36); do # Debian 12 has glibc 2.36
    platforms+=(--platform "manylinux_2_${glibc}_x86_64")
  done
  "$PY" -m pip download --quiet --disable-pip-version-check --dest "$dir" \
    --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    "${platforms[@]}" "$name==$version" >&2
  touch "$dir/.complete"
  log "$name wheels: $(du -sh "$dir" | cut -f1), $(find "$dir" -name '*.whl' | wc -l) wheels"
  echo "$dir"
}

build_image() { # build_image RECIPE -> image id
  local recipe="$1" rootfs wheels hub_wheels base stage ctr
  rootfs="$(build_rootfs "$CACHE_DIR" engine)"
  wheels="$(fetch_wheels ray "$RAY_VERSION")"
  hub_wheels="$(fetch_wheels huggingface_hub "$HF_HUB_VERSION")"
  base="vllm-standin-base:$(basename "$rootfs" .tar | sed 's/^engine-//')"
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    log "docker import $rootfs as $base"
    docker import --change "ENV PATH=$VENV_PATH" "$rootfs" "$base" >/dev/null
  fi
  stage="$(mktemp -d)"
  ctr="vllm-standin-build-$$"
  # shellcheck disable=SC2064 # expand now: these names are fixed for this run
  trap "docker rm -f $ctr >/dev/null 2>&1 || true; rm -rf '$stage'" EXIT
  tar -C "$here" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
    --exclude='standin/build' -cf - standin | tar -C "$stage" -xf -
  # The stand-in's wheel is built here (from a copy, so the source tree gets no build/ or
  # egg-info), where pip can fetch its build backend; the container installs it offline.
  log "building the stand-in wheel"
  "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps \
    --wheel-dir "$stage/dist" "$stage/standin" >&2
  log "installing ray==$RAY_VERSION, huggingface_hub==$HF_HUB_VERSION and the stand-in into" \
    "/opt/venv (offline, --network none)"
  docker run --pull=never --name "$ctr" --network none \
    -v "$wheels:/wheels:ro" -v "$hub_wheels:/hub-wheels:ro" -v "$stage/dist:/dist:ro" "$base" \
    /bin/sh -euc "
      python3 -m venv /opt/venv
      /opt/venv/bin/pip install --quiet --no-index --find-links /wheels 'ray==$RAY_VERSION'
      /opt/venv/bin/pip install --quiet --no-index --find-links /hub-wheels \
        'huggingface_hub==$HF_HUB_VERSION'
      /opt/venv/bin/pip install --quiet --no-index --no-deps /dist/*.whl
      rm -rf /root/.cache
      /opt/venv/bin/vllm --version
      /opt/venv/bin/python -c 'import ray; print(\"ray\", ray.__version__)'
      /opt/venv/bin/hf version
    " >&2
  docker commit \
    --change "ENV PATH=$VENV_PATH" \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.vllm-cluster.lab.fixture=\"stand-in engine (not vLLM)\"" \
    --change "LABEL org.vllm-cluster.lab.recipe=$recipe" \
    --change 'CMD ["vllm", "--help"]' \
    "$ctr" "$TAG" >/dev/null
  docker rm "$ctr" >/dev/null
  docker image inspect -f '{{.Id}}' "$TAG"
}

main() {
  local recipe old_id id tmp size
  mkdir -p "$LAB_DIR/images" "$CACHE_DIR"
  # One build at a time per tag, whatever LAB_DIR (lab up and a test may both ask for it).
  exec 9>"$CACHE_DIR/.build-${TAG//[^A-Za-z0-9]/_}.lock"
  flock 9
  recipe="$(recipe_hash)"
  if [[ -s "$OUT" && -f "$META" && "$(json_field "$META" recipe)" == "$recipe" ]]; then
    log "up to date: $OUT (recipe ${recipe:0:12})"
    if docker info >/dev/null 2>&1; then
      ensure_loaded
    fi
    return 0
  fi
  docker info >/dev/null 2>&1 || die "no docker engine answers (run tools/ensure-docker.sh)"
  log "building $TAG (recipe ${recipe:0:12})"
  old_id="$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)"
  id="$(build_image "$recipe")"
  log "docker save $TAG -> $OUT"
  tmp="$OUT.tmp.$$"
  docker save -o "$tmp" "$TAG"
  mv "$tmp" "$OUT"
  size="$(stat -c %s "$OUT")"
  "$PY" -c 'import json,sys,time
json.dump({"tag": sys.argv[1], "id": sys.argv[2], "recipe": sys.argv[3], "ray_version": sys.argv[4],
           "tarball": sys.argv[5], "size_bytes": int(sys.argv[6]),
           "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
          open(sys.argv[7], "w"), indent=2)' \
    "$TAG" "$id" "$recipe" "$RAY_VERSION" "$OUT" "$size" "$META"
  if [[ -n "$old_id" && "$old_id" != "$id" ]]; then
    # The previous build is now untagged; drop it unless a container still uses it.
    docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  log "done: $TAG $id, image $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'), tarball $((size / 1000000)) MB"
}

main "$@"
