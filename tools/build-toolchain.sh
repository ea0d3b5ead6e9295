#!/usr/bin/env bash
# shellcheck disable=SC2317  # build_* and compile_* are called indirectly ("build_$component")
# Build the Pulumi CLI and the plugins this project needs, into $TOOLCHAIN_DIR/bin (.toolchain/bin,
# gitignored) and PULUMI_HOME. No binary can be downloaded on our machines, so everything is
# compiled with Go.
#
#   tools/build-toolchain.sh [COMPONENT...]     default: cli python command docker
#
# Components and where they come from:
#   cli      pulumi v3.274.1 (github.com/pulumi/pulumi/pkg/v3 + sdk/v3 from the Go module proxy).
#   python   the upstream language host pulumi-language-python v3.259.0, from its release
#            archive in ../shared/upstream (the proxy refuses that module), beside `pulumi`,
#            with pulumi-language-python-exec and pulumi-resource-pulumi-python from sdk/v3.
#   command  the upstream pulumi-resource-command 1.2.1 (pulumi-command's provider/), from its
#            release archive; registered with `pulumi plugin install resource ... --file`.
#   docker   the upstream pulumi-resource-docker 5.1.0 (pulumi-docker's provider/, native
#            docker.Image included) over terraform-provider-docker 4.5.0 with pulumi-docker's
#            patches; from their release archives; registered like `command`.
# The archives' dependencies come from the Go module proxy. UPSTREAM_DIR overrides where the
# archives are (default ../shared/upstream beside the repository).
#
# GOPATH, GOMODCACHE, GOCACHE, extracted sources, built binaries and logs live in
# $TOOLCHAIN_CACHE (~/.cache/vllm-cluster-toolchain), never in the repository. Idempotent: a
# component whose inputs (versions, archive sha256, this script's build function, the Go
# version) are unchanged is not rebuilt, in this checkout or any other on the machine; the Go
# caches are pruned after a successful run (TOOLCHAIN_KEEP_GO_CACHE=1 keeps them). A pulumi CLI of the right version already on PATH
# (outside .toolchain) is used instead of building.
# Exit status: 0 when every requested component is available, 1 otherwise (summary at the end).
set -euo pipefail

# shellcheck source=tools/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

PULUMI_VERSION=v3.274.1
# pkg/v3 v3.274.1 declares `go 1.26.6`: older Go cannot build it.
GO_MIN=1.26.6
# The upstream plugin versions: the archives in $UPSTREAM_DIR, and the PyPI SDKs that
# requirements.txt pins to the same versions (checked below).
PYTHON_HOST_VERSION=3.259.0
COMMAND_VERSION=1.2.1
DOCKER_VERSION=5.1.0
TF_DOCKER_VERSION=4.5.0
UPSTREAM_DIR="${UPSTREAM_DIR:-$REPO_ROOT/../shared/upstream}"

bin_dir="$TOOLCHAIN_DIR/bin"
stamp_dir="$TOOLCHAIN_DIR/.stamps"
log_dir="$TOOLCHAIN_CACHE/logs"
mkdir -p "$bin_dir" "$stamp_dir" "$log_dir" "$TOOLCHAIN_CACHE/wrappers"

# Go state stays in the cache; GOFLAGS from the caller could change what gets built.
export GOPATH="$TOOLCHAIN_CACHE/gopath"
export GOMODCACHE="$GOPATH/pkg/mod"
export GOCACHE="$TOOLCHAIN_CACHE/gocache"
export GOFLAGS=""
# Never let go silently download another Go toolchain: fail with our message instead.
export GOTOOLCHAIN=local
export CGO_ENABLED=0

say() { printf '[toolchain] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# The PyPI SDK of each plugin must be pinned to the plugin's version: the SDK asks the engine for
# exactly that plugin version.
sdk_pin() {
  sed -n "s/^$1==\([^[:space:]#]*\).*/\1/p" "$REPO_ROOT/requirements.txt" | head -n1
}
[[ "$(sdk_pin pulumi-docker)" == "$DOCKER_VERSION" ]] ||
  die "requirements.txt must pin pulumi-docker==$DOCKER_VERSION (the provider built here)"
[[ "$(sdk_pin pulumi-command)" == "$COMMAND_VERSION" ]] ||
  die "requirements.txt must pin pulumi-command==$COMMAND_VERSION (the provider built here)"

find_go() {
  if command -v go >/dev/null 2>&1; then
    command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then
    echo /usr/local/go/bin/go
  else
    return 1
  fi
}
GO="$(find_go)" || die "Go is not installed (need go >= $GO_MIN on PATH or in /usr/local/go)."
go_version="$("$GO" env GOVERSION)"
go_version="${go_version#go}"
if [[ "$(printf '%s\n%s\n' "$GO_MIN" "$go_version" | sort -V | head -n1)" != "$GO_MIN" ]]; then
  die "Go $go_version is too old: the Pulumi modules need go >= $GO_MIN ($GO)."
fi

# A stamp is the component's inputs (versions, our Go source, the build function itself with
# its go.mod and flags, the Go version); a binary is rebuilt when they change.
stamp_key() { # component extra-inputs...
  local component="$1"
  shift
  {
    printf '%s\n' "$component" "$go_version" "$@"
    declare -f "build_$component"
  } | sha256sum | cut -d' ' -f1
}
up_to_date() { # component key binaries...
  local component="$1" key="$2"
  shift 2
  [[ -f "$stamp_dir/$component" && "$(cat "$stamp_dir/$component")" == "$key" ]] || return 1
  local b
  for b in "$@"; do [[ -x "$bin_dir/$b" ]] || return 1; done
}
mark_built() { printf '%s\n' "$2" >"$stamp_dir/$1"; }

# Run a logged step; on failure show the tail of its log.
run_logged() { # log-file command...
  local log="$1"
  shift
  if ! "$@" >>"$log" 2>&1; then
    say "command failed: $*"
    say "last lines of $log:"
    tail -n 25 "$log" | sed 's/^/    /' >&2
    return 1
  fi
}

# A throwaway wrapper module: our go.mod (and main.go when given), then `go mod tidy`.
prepare_wrapper() { # dir log go.mod-content
  local dir="$1" log="$2" gomod="$3"
  mkdir -p "$dir"
  printf '%s\n' "$gomod" >"$dir/go.mod"
  (cd "$dir" && run_logged "$log" "$GO" mod tidy)
}

go_build() { # dir log output tags ldflags package
  local dir="$1" log="$2" out="$3" tags="$4" ldflags="$5" pkg="$6"
  (cd "$dir" && run_logged "$log" nice -n 10 "$GO" build -trimpath -tags "$tags" \
    -ldflags "$ldflags" -o "$out" "$pkg")
}

# A binary of the right version outside .toolchain (PATH), if any.
external_binary() { # name
  local IFS=: dir
  for dir in $PATH; do
    [[ "$dir" == "$bin_dir" || -z "$dir" ]] && continue
    if [[ -x "$dir/$1" ]]; then
      echo "$dir/$1"
      return 0
    fi
  done
  return 1
}

# ---------------------------------------------------------------------------------------
build_cli() {
  local external key
  if external="$(external_binary pulumi)" && [[ "$("$external" version 2>/dev/null)" == "$PULUMI_VERSION" ]]; then
    say "cli: using $external ($PULUMI_VERSION, installed outside .toolchain)"
    rm -f "$bin_dir/pulumi" # a stale build here would shadow it on PATH
    return 0
  fi
  key="$(stamp_key cli "$PULUMI_VERSION" "$(declare -f compile_cli)")"
  if up_to_date cli "$key" pulumi; then
    say "cli: pulumi $PULUMI_VERSION up to date"
    return 0
  fi
  provide_binaries cli "pulumi $PULUMI_VERSION" "$key" pulumi || return 1
  mark_built cli "$key"
}
compile_cli() { # out-dir log
  local dir="$TOOLCHAIN_CACHE/wrappers/pulumi"
  # pkg/v3 replaces sdk/v3 with a relative path upstream: require both at the same version.
  # The clipboard replacement is upstream's too (its fork only changes Windows behaviour).
  prepare_wrapper "$dir" "$2" "module vllmcluster.local/toolchain/pulumi

go 1.26.6

tool github.com/pulumi/pulumi/pkg/v3/cmd/pulumi

require (
	github.com/pulumi/pulumi/pkg/v3 $PULUMI_VERSION
	github.com/pulumi/pulumi/sdk/v3 $PULUMI_VERSION
)

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e" || return 1
  # Without the version stamp `pulumi version` is empty and version checks fail.
  go_build "$dir" "$2" "$1/pulumi" osusergo,grpcnotrace \
    "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
    github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
}

# Binaries built once per key into $TOOLCHAIN_CACHE/bin/<component>-<key> by
# `compile_COMPONENT OUT-DIR LOG`, and installed into $bin_dir: a fresh checkout on a machine
# that built them before only copies them, even after the Go caches were pruned (below).
provide_binaries() { # component what key files...
  local component="$1" what="$2" key="$3" log="$log_dir/$1.log" dir f
  shift 3
  dir="$TOOLCHAIN_CACHE/bin/$component-${key:0:16}"
  for f in "$@"; do
    if [[ ! -x "$dir/$f" ]]; then
      : >"$log"
      say "$component: building $what (log: $log)"
      rm -rf "$dir.tmp"
      mkdir -p "$dir.tmp"
      "compile_$component" "$dir.tmp" "$log" || return 1
      rm -rf "$dir"
      mv "$dir.tmp" "$dir"
      break
    fi
  done
  for f in "$@"; do install -m 0755 "$dir/$f" "$bin_dir/$f"; done
  say "$component: $what installed from $dir"
}

# ---------------------------------------------------------------------------------------
# The upstream plugins, built from the verbatim release archives in $UPSTREAM_DIR
# (../shared/upstream; its README has their provenance and build commands). The archives are
# extracted into the cache, never in place (CI's shared/ is read-only). A plugin is rebuilt
# when its archive's sha256 changes.
archive() { # file-name -> path, or fail naming it
  local path="$UPSTREAM_DIR/$1"
  [[ -f "$path" ]] || {
    say "missing upstream archive $path (set UPSTREAM_DIR to the folder holding it)"
    return 1
  }
  echo "$path"
}
archive_sha() { sha256sum "$1" | cut -d' ' -f1; }

# Extract `archive` into a fresh $TOOLCHAIN_CACHE/src/<name>; prints that directory.
extract() { # archive-path name
  local dest="$TOOLCHAIN_CACHE/src/$2"
  rm -rf "$dest"
  mkdir -p "$dest"
  tar -xzf "$1" -C "$dest" --strip-components=1
  echo "$dest"
}

# Register a resource plugin in PULUMI_HOME from a built binary (off $PATH, found by version).
register_plugin() { # name version binary log
  run_logged "$4" pulumi plugin install resource "$1" "$2" --file "$3" --reinstall
}

# The real Python language host (pulumi v3.259.0, sdk/python/cmd/pulumi-language-python), with
# the executor and the dynamic-provider host scripts beside it: they ship in the sdk/v3 module.
build_python() {
  local tar key
  tar="$(archive "pulumi-language-python-$PYTHON_HOST_VERSION.tar.gz")" || return 1
  key="$(stamp_key python "$PYTHON_HOST_VERSION" "$(archive_sha "$tar")" "$(declare -f compile_python)")"
  if up_to_date python "$key" pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python; then
    say "python: pulumi-language-python $PYTHON_HOST_VERSION up to date"
    return 0
  fi
  provide_binaries python "the upstream pulumi-language-python $PYTHON_HOST_VERSION" "$key" \
    pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python || return 1
  mark_built python "$key"
}
compile_python() { # out-dir log
  local src sdk log="$2"
  src="$(extract "$UPSTREAM_DIR/pulumi-language-python-$PYTHON_HOST_VERSION.tar.gz" \
    "pulumi-language-python-$PYTHON_HOST_VERSION")/sdk/python/cmd/pulumi-language-python"
  # Upstream's go.mod points pkg and sdk at the monorepo by relative path; take the same
  # versions from the module proxy instead (shared/upstream/README.md).
  (cd "$src" && run_logged "$log" "$GO" mod edit \
    -dropreplace=github.com/pulumi/pulumi/pkg/v3 -dropreplace=github.com/pulumi/pulumi/sdk/v3 \
    "-require=github.com/pulumi/pulumi/pkg/v3@v$PYTHON_HOST_VERSION" \
    "-require=github.com/pulumi/pulumi/sdk/v3@v$PYTHON_HOST_VERSION") || return 1
  (cd "$src" && run_logged "$log" nice -n 10 "$GO" build -mod=mod -trimpath \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PYTHON_HOST_VERSION" \
    -o "$1/pulumi-language-python" .) || return 1
  sdk="$(cd "$src" && "$GO" list -mod=mod -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)" || return 1
  install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$1/pulumi-language-python-exec"
  install -m 0755 "$sdk/python/dist/pulumi-resource-pulumi-python" "$1/pulumi-resource-pulumi-python"
}

# An upstream provider plugin: its binary is built once per key (the archives' sha256) into
# the cache by `compile_NAME OUT LOG`, and registered in PULUMI_HOME on every run
# (registration is per PULUMI_HOME, i.e. per checkout, and takes a second).
provide_plugin() { # name version key
  local name="$1" version="$2" key="$3" log="$log_dir/$1.log" out
  out="$TOOLCHAIN_CACHE/plugins/pulumi-resource-$name-$version-${key:0:16}"
  : >"$log"
  if [[ -x "$out" ]]; then
    say "$name: pulumi-resource-$name $version built ($out)"
  else
    say "$name: building the upstream pulumi-resource-$name $version (log: $log)"
    mkdir -p "$(dirname "$out")"
    "compile_$name" "$out.tmp" "$log" || return 1
    mv "$out.tmp" "$out"
  fi
  register_plugin "$name" "$version" "$out" "$log"
}

# pulumi-resource-command 1.2.1 (pulumi-command's provider/).
build_command() {
  local tar
  tar="$(archive "pulumi-command-$COMMAND_VERSION.tar.gz")" || return 1
  provide_plugin command "$COMMAND_VERSION" \
    "$(stamp_key command "$COMMAND_VERSION" "$(archive_sha "$tar")" "$(declare -f compile_command)")"
}
compile_command() { # out log
  local src
  src="$(extract "$UPSTREAM_DIR/pulumi-command-$COMMAND_VERSION.tar.gz" "pulumi-command-$COMMAND_VERSION")/provider"
  (cd "$src" && run_logged "$2" nice -n 10 "$GO" build -trimpath -o "$1" \
    -ldflags "-s -w -X github.com/pulumi/pulumi-command/provider/pkg/version.Version=$COMMAND_VERSION" \
    ./cmd/pulumi-resource-command)
}

# pulumi-resource-docker 5.1.0: pulumi-docker's provider/, with its upstream
# (terraform-provider-docker 4.5.0) at ../upstream and pulumi-docker's patches applied, as
# upstream's own Makefile prepares it; main.go embeds schema-embed.json, which generate.go
# writes from schema.json.
build_docker() {
  local tar tf_tar
  tar="$(archive "pulumi-docker-$DOCKER_VERSION.tar.gz")" || return 1
  tf_tar="$(archive "terraform-provider-docker-$TF_DOCKER_VERSION.tar.gz")" || return 1
  provide_plugin docker "$DOCKER_VERSION" "$(stamp_key docker "$DOCKER_VERSION" \
    "$(archive_sha "$tar")" "$(archive_sha "$tf_tar")" "$(declare -f compile_docker)")"
}
compile_docker() { # out log
  local root p
  root="$(extract "$UPSTREAM_DIR/pulumi-docker-$DOCKER_VERSION.tar.gz" "pulumi-docker-$DOCKER_VERSION")"
  mkdir -p "$root/upstream"
  tar -xzf "$UPSTREAM_DIR/terraform-provider-docker-$TF_DOCKER_VERSION.tar.gz" \
    -C "$root/upstream" --strip-components=1
  for p in "$root"/patches/*.patch; do
    (cd "$root/upstream" && run_logged "$2" patch -p1 -i "$p") || return 1
  done
  (cd "$root/provider/cmd/pulumi-resource-docker" &&
    VERSION="$DOCKER_VERSION" run_logged "$2" "$GO" run ./generate.go) || return 1
  (cd "$root/provider" && run_logged "$2" nice -n 10 "$GO" build -trimpath -o "$1" \
    -ldflags "-s -w -X github.com/pulumi/pulumi-docker/provider/v5/pkg/version.Version=$DOCKER_VERSION" \
    ./cmd/pulumi-resource-docker)
}

# ---------------------------------------------------------------------------------------
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(cli python command docker)
say "Go $go_version ($GO); output $bin_dir; cache $TOOLCHAIN_CACHE"
declare -A result=()
failed=0
total_start=$SECONDS
for component in "${components[@]}"; do
  case "$component" in
  cli | python | command | docker) ;;
  *) die "unknown component '$component' (cli, python, command, docker)" ;;
  esac
  start=$SECONDS
  if "build_$component"; then
    result[$component]="ok ($(fmt_secs $((SECONDS - start))))"
  else
    result[$component]="FAILED after $(fmt_secs $((SECONDS - start)))"
    failed=1
  fi
  say "$component: ${result[$component]}"
done

# The Go build and module caches (about 9 GB after these builds) only speed up a rebuild after
# an input changes; the binaries themselves are cached above. Disk is the scarcer resource on
# the machines this runs on (the lab's real-engine image needs ~22 GB), so they go once every
# requested component is available. TOOLCHAIN_KEEP_GO_CACHE=1 keeps them.
if [[ "$failed" == 0 && "${TOOLCHAIN_KEEP_GO_CACHE:-0}" != 1 ]] && [[ -d "$GOCACHE" || -d "$GOMODCACHE" ]]; then
  freed="$(du -sh "$GOCACHE" "$GOMODCACHE" 2>/dev/null | awk '{print $1}' | paste -sd+)"
  "$GO" clean -cache -modcache
  rm -rf "$GOCACHE" "$GOMODCACHE"
  say "pruned the Go build and module caches ($freed; TOOLCHAIN_KEEP_GO_CACHE=1 keeps them)"
fi

say "summary (total $(fmt_secs $((SECONDS - total_start)))):"
for component in "${components[@]}"; do
  say "  $(printf '%-8s' "$component") ${result[$component]}"
done
if command -v pulumi >/dev/null 2>&1; then
  say "  pulumi on PATH: $(command -v pulumi) $(pulumi version)"
fi
exit "$failed"
