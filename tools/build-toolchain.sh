#!/usr/bin/env bash
# shellcheck disable=SC2317  # the build_* functions are called indirectly ("build_$component")
# Build the Pulumi CLI and the plugins this project needs from the Go module proxy, into
# $TOOLCHAIN_DIR/bin (.toolchain/bin, gitignored). No binary can be downloaded on our machines,
# so everything is compiled with Go from modules the proxy serves.
#
#   tools/build-toolchain.sh [COMPONENT...]     default: cli python docker
#
# Components and where they come from:
#   cli      pulumi v3.274.1 (github.com/pulumi/pulumi/pkg/v3 + sdk/v3), version-stamped.
#   python   pulumi-language-python: the upstream language host module is NOT served by the
#            proxy, so this is our own host (tools/toolchain/pulumi-language-python/main.go)
#            built on sdk/v3, plus the executor and dynamic-provider scripts that ship inside
#            the sdk/v3 module (they must sit next to the host binary).
#   (no pulumi-resource-command: the proxy refuses every github.com/pulumi/pulumi-command
#   module with 403 "This module version is not available", so the program runs its host
#   steps with its own dynamic-provider resource, components/commands.py.)
#   docker   pulumi-resource-docker at the pulumi-docker SDK version of requirements.txt. The
#            upstream provider module is NOT served either, so it is bridged here from the same
#            parts pulumi-docker is made of (tools/toolchain/pulumi-resource-docker/main.go).
#
# Throwaway wrapper modules, GOPATH, GOMODCACHE, GOCACHE and logs live in $TOOLCHAIN_CACHE
# (~/.cache/vllm-cluster-toolchain), never in the repository. Idempotent: a component whose
# binaries exist with a matching stamp (version + inputs + Go version) is skipped. A pulumi
# CLI of the right version already on PATH (outside .toolchain) is used instead of building.
# Exit status: 0 when every requested component is available, 1 otherwise (summary at the end).
set -euo pipefail

# shellcheck source=tools/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

PULUMI_VERSION=v3.274.1
# pkg/v3 v3.274.1 declares `go 1.26.6`: older Go cannot build it.
GO_MIN=1.26.6
# The Terraform Docker provider and bridge versions that match the pulumi-docker 5.2.0 SDK
# (its resources, e.g. BuildxBuilder, exist in this provider commit).
TF_DOCKER_MODULE=github.com/kreuzwerker/terraform-provider-docker
TF_DOCKER_VERSION=v0.0.0-20260916201441-96d331c98ff4
BRIDGE_VERSION=v3.137.0
# The bridge does not compile against newer pkg/v3 APIs (plugin.NewContext changed), so the
# provider uses the pkg/sdk release the bridge was built with. The CLI stays at v3.274.1.
BRIDGE_PULUMI_VERSION=v3.256.0
TF_SDK_FORK=github.com/pulumi/terraform-plugin-sdk/v2
TF_SDK_FORK_VERSION=v2.0.0-20260318212141-5525259d096b

bin_dir="$TOOLCHAIN_DIR/bin"
stamp_dir="$TOOLCHAIN_DIR/.stamps"
log_dir="$TOOLCHAIN_CACHE/logs"
src_dir="$REPO_ROOT/tools/toolchain"
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

# The pulumi-docker version the Python SDK pins (requirements.txt).
sdk_pin() {
  sed -n "s/^$1==\([^[:space:]#]*\).*/\1/p" "$REPO_ROOT/requirements.txt" | head -n1
}
DOCKER_VERSION="$(sdk_pin pulumi-docker)"
[[ -n "$DOCKER_VERSION" ]] || die "requirements.txt pins no pulumi-docker version"

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
  local log="$log_dir/cli.log" dir="$TOOLCHAIN_CACHE/wrappers/pulumi" external
  if external="$(external_binary pulumi)" && [[ "$("$external" version 2>/dev/null)" == "$PULUMI_VERSION" ]]; then
    say "cli: using $external ($PULUMI_VERSION, installed outside .toolchain)"
    rm -f "$bin_dir/pulumi" # a stale build here would shadow it on PATH
    return 0
  fi
  local key
  key="$(stamp_key cli "$PULUMI_VERSION")"
  if up_to_date cli "$key" pulumi; then
    say "cli: pulumi $PULUMI_VERSION up to date"
    return 0
  fi
  : >"$log"
  say "cli: building pulumi $PULUMI_VERSION (log: $log)"
  # pkg/v3 replaces sdk/v3 with a relative path upstream: require both at the same version.
  # The clipboard replacement is upstream's too (its fork only changes Windows behaviour).
  prepare_wrapper "$dir" "$log" "module vllmcluster.local/toolchain/pulumi

go 1.26.6

tool github.com/pulumi/pulumi/pkg/v3/cmd/pulumi

require (
	github.com/pulumi/pulumi/pkg/v3 $PULUMI_VERSION
	github.com/pulumi/pulumi/sdk/v3 $PULUMI_VERSION
)

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e" || return 1
  # Without the version stamp `pulumi version` is empty and version checks fail.
  go_build "$dir" "$log" "$bin_dir/pulumi" osusergo,grpcnotrace \
    "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
    github.com/pulumi/pulumi/pkg/v3/cmd/pulumi || return 1
  mark_built cli "$key"
}

build_python() {
  local log="$log_dir/python.log" dir="$TOOLCHAIN_CACHE/wrappers/pulumi-language-python" external
  if external="$(external_binary pulumi-language-python)" &&
    [[ -x "$(dirname "$external")/pulumi-language-python-exec" ]]; then
    say "python: using $external (installed outside .toolchain, with its executor)"
    rm -f "$bin_dir"/pulumi-language-python{,-exec}
    install_dynamic_provider "$(dirname "$external")/pulumi-resource-pulumi-python" ||
      say "python: keeping that installation's dynamic provider (4 calls at a time)"
    return 0
  fi
  local key
  key="$(stamp_key python "$PULUMI_VERSION" "$(cat "$src_dir/pulumi-language-python/main.go" "$src_dir/dynamic_provider.py")" "$(declare -f install_dynamic_provider)")"
  if up_to_date python "$key" pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python; then
    say "python: pulumi-language-python up to date"
    return 0
  fi
  : >"$log"
  say "python: building pulumi-language-python (this project's host on sdk/v3 $PULUMI_VERSION; log: $log)"
  mkdir -p "$dir"
  cp "$src_dir/pulumi-language-python/main.go" "$dir/main.go"
  prepare_wrapper "$dir" "$log" "module vllmcluster.local/toolchain/pulumi-language-python

go 1.26.6

require github.com/pulumi/pulumi/sdk/v3 $PULUMI_VERSION" || return 1
  go_build "$dir" "$log" "$bin_dir/pulumi-language-python" "" "-s -w -X main.version=$PULUMI_VERSION" . || return 1
  # The executor and the dynamic provider host are scripts shipped in the sdk/v3 module.
  local sdk
  sdk="$(cd "$dir" && "$GO" list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)"
  install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$bin_dir/pulumi-language-python-exec"
  install_dynamic_provider "$sdk/python/dist/pulumi-resource-pulumi-python" || return 1
  mark_built python "$key"
}

# The SDK's `pulumi-resource-pulumi-python` shim (it finds the project's virtualenv), made
# to run tools/toolchain/dynamic_provider.py: the SDK's provider with more than 4 threads.
install_dynamic_provider() { # sdk-shim
  local shim="$1" entry="$TOOLCHAIN_DIR/lib/dynamic_provider.py" out="$bin_dir/pulumi-resource-pulumi-python"
  local run_module='-u -m pulumi.dynamic $@'
  if [[ ! -f "$shim" ]] || [[ "$(grep -cF -- "$run_module" "$shim")" -ne 2 ]]; then
    say "python: $shim does not run '$run_module' twice as expected; cannot widen the dynamic provider"
    return 1
  fi
  mkdir -p "$TOOLCHAIN_DIR/lib"
  install -m 0644 "$src_dir/dynamic_provider.py" "$entry"
  # Found next to the shim (not by absolute path), so the toolchain stays movable.
  sed 's|-u -m pulumi\.dynamic \$@|-u "$(dirname "$0")/../lib/dynamic_provider.py" "$@"|' "$shim" >"$out.tmp"
  if grep -qF -- "$run_module" "$out.tmp"; then
    say "python: could not rewrite $shim"
    return 1
  fi
  chmod 0755 "$out.tmp"
  mv "$out.tmp" "$out"
}

# A resource plugin already installed in PULUMI_HOME at the exact version (e.g. by
# `pulumi plugin install resource NAME VERSION --file BINARY`).
plugin_installed() { # name version
  command -v pulumi >/dev/null 2>&1 || return 1
  pulumi plugin ls --json 2>/dev/null | python3 -c '
import json, sys
name, version = sys.argv[1], sys.argv[2]
plugins = json.load(sys.stdin) or []
ok = any(p.get("kind") == "resource" and p.get("name") == name and p.get("version") == version for p in plugins)
sys.exit(0 if ok else 1)' "$1" "$2"
}

# A provider binary outside .toolchain (PATH) whose --version prints the wanted version.
external_plugin() { # name version
  local found
  found="$(external_binary "pulumi-resource-$1")" || return 1
  [[ "$(timeout 20 "$found" --version 2>/dev/null | head -n1)" =~ ^v?"$2"$ ]] || return 1
  echo "$found"
}

build_docker() {
  local log="$log_dir/docker.log" dir="$TOOLCHAIN_CACHE/wrappers/pulumi-resource-docker" external
  if plugin_installed docker "$DOCKER_VERSION"; then
    say "docker: resource plugin docker $DOCKER_VERSION already installed in $PULUMI_HOME"
    return 0
  fi
  if external="$(external_plugin docker "$DOCKER_VERSION")"; then
    say "docker: using $external ($DOCKER_VERSION, installed outside .toolchain)"
    rm -f "$bin_dir/pulumi-resource-docker"
    return 0
  fi
  local key
  key="$(stamp_key docker "$DOCKER_VERSION" "$TF_DOCKER_VERSION" "$BRIDGE_VERSION" "$BRIDGE_PULUMI_VERSION" "$TF_SDK_FORK_VERSION" \
    "$(cat "$src_dir/pulumi-resource-docker/main.go")")"
  if up_to_date docker "$key" pulumi-resource-docker; then
    say "docker: pulumi-resource-docker $DOCKER_VERSION up to date"
    return 0
  fi
  : >"$log"
  say "docker: building pulumi-resource-docker $DOCKER_VERSION (Terraform Docker provider via the bridge; log: $log)"
  # The Terraform provider keeps its SDKv2 provider in an internal package; a tiny shim
  # package added to a writable copy of the module makes it importable from our wrapper.
  (cd /tmp && run_logged "$log" "$GO" mod download "$TF_DOCKER_MODULE@$TF_DOCKER_VERSION") || return 1
  local upstream="$TOOLCHAIN_CACHE/src/terraform-provider-docker@$TF_DOCKER_VERSION"
  rm -rf "$upstream"
  mkdir -p "$(dirname "$upstream")"
  cp -r "$GOMODCACHE/$TF_DOCKER_MODULE@$TF_DOCKER_VERSION" "$upstream"
  chmod -R u+w "$upstream"
  mkdir -p "$upstream/shim"
  cat >"$upstream/shim/shim.go" <<'EOF'
// Package shim exposes the SDKv2 provider to the Pulumi bridge build (internal packages
// cannot be imported from another module). Added by vllm-cluster's tools/build-toolchain.sh.
package shim

import (
	"github.com/hashicorp/terraform-plugin-sdk/v2/helper/schema"
	"github.com/terraform-providers/terraform-provider-docker/internal/provider"
)

// NewProvider returns the Terraform Docker provider (its SDKv2 part) at the given version.
func NewProvider(version string) *schema.Provider { return provider.New(version)() }
EOF
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$src_dir/pulumi-resource-docker/main.go" "$dir/main.go"
  # Stage 1 embeds a placeholder schema; it generates the real one, which stage 2 embeds.
  echo '{}' >"$dir/schema.json"
  # The provider module names itself github.com/terraform-providers/terraform-provider-docker;
  # the bridge needs Pulumi's fork of terraform-plugin-sdk (as upstream pulumi-docker does).
  prepare_wrapper "$dir" "$log" "module vllmcluster.local/toolchain/pulumi-resource-docker

go 1.26.6

require (
	github.com/pulumi/pulumi-terraform-bridge/v3 $BRIDGE_VERSION
	github.com/pulumi/pulumi/pkg/v3 $BRIDGE_PULUMI_VERSION
	github.com/pulumi/pulumi/sdk/v3 $BRIDGE_PULUMI_VERSION
	github.com/terraform-providers/terraform-provider-docker v0.0.0
)

replace (
	github.com/hashicorp/terraform-plugin-sdk/v2 => $TF_SDK_FORK $TF_SDK_FORK_VERSION
	github.com/terraform-providers/terraform-provider-docker => $upstream
)" || return 1
  # no_compose: leaves out docker_compose (not in the pulumi-docker SDK either).
  local ldflags="-s -w -X main.version=$DOCKER_VERSION"
  local stage1="$TOOLCHAIN_CACHE/wrappers/pulumi-resource-docker.stage1"
  go_build "$dir" "$log" "$stage1" no_compose "$ldflags" . || return 1
  say "docker: generating the Pulumi schema"
  if ! (cd "$dir" && TF_DOCKER_SOURCE_DIR="$upstream" "$stage1" --emit-schema >"$dir/schema.json.new" 2>>"$log"); then
    say "docker: schema generation failed; last lines of $log:"
    tail -n 25 "$log" | sed 's/^/    /' >&2
    return 1
  fi
  mv "$dir/schema.json.new" "$dir/schema.json"
  go_build "$dir" "$log" "$bin_dir/pulumi-resource-docker" no_compose "$ldflags" . || return 1
  rm -f "$stage1"
  mark_built docker "$key"
}

# ---------------------------------------------------------------------------------------
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(cli python docker)
say "Go $go_version ($GO); output $bin_dir; cache $TOOLCHAIN_CACHE"
declare -A result=()
failed=0
total_start=$SECONDS
for component in "${components[@]}"; do
  case "$component" in
  cli | python | docker) ;;
  *) die "unknown component '$component' (cli, python, docker)" ;;
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

say "summary (total $(fmt_secs $((SECONDS - total_start)))):"
for component in "${components[@]}"; do
  say "  $(printf '%-8s' "$component") ${result[$component]}"
done
if command -v pulumi >/dev/null 2>&1; then
  say "  pulumi on PATH: $(command -v pulumi) $(pulumi version)"
fi
exit "$failed"
