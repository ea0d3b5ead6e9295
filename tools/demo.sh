#!/usr/bin/env bash
# The README's main command (`make demo`): on the lab (already up: `make lab-up`), run
# `pulumi up --refresh --stack lab` to a working endpoint, print the outputs and send one request.
set -euo pipefail
# shellcheck source=tools/env.sh
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"
stack="${STACK:-lab}"
pulumi stack select "$stack" --create --non-interactive >/dev/null
echo "== pulumi up --refresh --stack $stack" >&2
start=$SECONDS
# --refresh: the demo converges whatever happened to the lab since its last run (hosts
# recreated by `lab up`, containers removed by a test), not only what the state remembers.
pulumi up --refresh --stack "$stack" --yes --non-interactive --suppress-progress
echo "== converged in $((SECONDS - start))s; outputs:" >&2
pulumi stack output --stack "$stack"
echo "== smoke test against the exported endpoint" >&2
STACK="$stack" SMOKE_IGNORE_STDIN=1 python tools/smoke.py </dev/null
