# shellcheck shell=bash
# The one place that sets the environment for every make target, script and test that runs
# Pulumi. Source it (tools/with-env does). Offline by design: no plugin downloads, no update
# checks, a local file backend and an isolated PULUMI_HOME under the gitignored .state/.
#
# PULUMI_CONFIG_PASSPHRASE below is for the LAB ONLY: it protects the lab stack's throwaway
# secrets, is public in this repository and must never protect anything real. Real users set
# their own passphrase in the environment (it wins over this default) or create their stack
# with another secrets provider: `pulumi stack init h20 --secrets-provider awskms://...`.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
export TOOLCHAIN_DIR="${TOOLCHAIN_DIR:-$REPO_ROOT/.toolchain}"
export TOOLCHAIN_CACHE="${TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vllm-cluster-toolchain}"
export STATE_DIR="${STATE_DIR:-$REPO_ROOT/.state}"
export LAB_DIR="${LAB_DIR:-$REPO_ROOT/.lab}"
export PULUMI_HOME="${PULUMI_HOME:-$STATE_DIR/pulumi-home}"
export PULUMI_BACKEND_URL="${PULUMI_BACKEND_URL:-file://$STATE_DIR/backend}"
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_CONFIG_PASSPHRASE="${PULUMI_CONFIG_PASSPHRASE-lab-only-passphrase-not-a-secret}"
# Prefer the Go-built toolchain and the project's virtualenv; a pulumi installed the normal
# way is used when .toolchain/bin does not exist.
export PATH="$TOOLCHAIN_DIR/bin:$REPO_ROOT/.venv/bin:$PATH"
mkdir -p "$PULUMI_HOME" "$STATE_DIR/backend"
