"""Pure rendering of the readiness gate: the script that decides an endpoint is up.

It runs on the head host (next to the container, so it can read the container's state and
logs when something goes wrong) and checks, in order: `/health`, `/v1/models` with the API key,
then one real chat completion. The key arrives on stdin, is written to a 0600 header file and
given to curl as `-H @file`, so it never appears on a command line.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class ReadinessGate:
    container: str
    port: int
    served_model_name: str
    timeout_s: int
    # Seconds between progress lines, so `pulumi up` shows what it is waiting for.
    progress_every_s: int = 15
    # Seconds between probes: every probe a server is up but not yet seen adds to `up`.
    poll_s: float = 0.5


def readiness_script(gate: ReadinessGate) -> str:
    body = json.dumps(
        {
            "model": gate.served_model_name,
            "messages": [{"role": "user", "content": "Reply with one word: ready?"}],
            "max_tokens": 8,
            "temperature": 0,
        }
    )
    q = shlex.quote
    return f"""\
set -euo pipefail
container={q(gate.container)}
base=http://127.0.0.1:{gate.port}
timeout={gate.timeout_s}
IFS= read -r api_key || true
hdr=$(mktemp)
trap 'rm -f "$hdr" "$hdr.out"' EXIT
chmod 600 "$hdr"
printf 'Authorization: Bearer %s\\n' "$api_key" >"$hdr"
unset api_key
start=$SECONDS
last_note=-{gate.progress_every_s}

fail() {{
  echo "readiness: $1" >&2
  # The root cause is often far above the tail (vLLM ends with "Engine core initialization
  # failed. See root cause above"): quote the first error lines of the whole log too.
  echo "readiness: first error lines of $container:" >&2
  docker logs "$container" 2>&1 | grep -m 8 -E 'Error|Exception|error:|Traceback' |
    sed 's/^/  ! /' >&2 || true
  echo "readiness: last log lines of $container:" >&2
  docker logs --tail 40 "$container" 2>&1 | sed 's/^/  | /' >&2 || true
  exit 1
}}

inspect() {{
  read -r state restarts < <(docker inspect -f '{{{{.State.Status}}}} {{{{.RestartCount}}}}' \\
    "$container" 2>/dev/null) || fail "container $container does not exist"
}}
# A fresh container fails at its first restart: the engine exited (bad flags, no memory),
# and the restart policy would only repeat that. One that had already restarted before the
# gate is a running engine gated again because a Ray worker was replaced (its host lost
# it): losing that worker took the engine down, and it may restart once more while the
# cluster re-forms.
inspect
base_restarts=$restarts
allowed=$((base_restarts > 0 ? 1 : 0))
container_alive() {{
  local state restarts
  inspect
  case "$state:$allowed:$((restarts > base_restarts + allowed))" in
    running:*:0 | restarting:1:0) ;;
    *) fail "container $container is $state after $restarts restart(s): the engine exited" ;;
  esac
}}

wait_for() {{  # wait_for <what> <command...>: retry until the command succeeds
  local what=$1; shift
  until "$@"; do
    container_alive
    elapsed=$((SECONDS - start))
    if [ "$elapsed" -ge "$timeout" ]; then
      fail "$what not ready after ${{timeout}}s (serving.ready_timeout_s raises the limit)"
    fi
    if [ $((elapsed - last_note)) -ge {gate.progress_every_s} ]; then
      echo "readiness: waiting for $what (${{elapsed}}s of ${{timeout}}s)" >&2
      last_note=$elapsed
    fi
    sleep {gate.poll_s:g}
  done
  echo "readiness: $what ok after $((SECONDS - start))s" >&2
}}

health() {{ curl -fsS -o /dev/null --max-time 5 "$base/health"; }}
models() {{
  local code
  code=$(curl -sS -o "$hdr.out" -w '%{{http_code}}' --max-time 10 -H @"$hdr" \\
    "$base/v1/models") || return 1
  if [ "$code" = 401 ]; then
    fail "the server rejected the API key on /v1/models (check vllm-cluster:apiKey)"
  fi
  [ "$code" = 200 ] && grep -q {q(gate.served_model_name)} "$hdr.out"
}}
chat() {{
  curl -fsS --max-time 120 -H @"$hdr" -H 'Content-Type: application/json' \\
    -d {q(body)} "$base/v1/chat/completions" >"$hdr.out" && grep -q '"choices"' "$hdr.out"
}}

wait_for /health health
wait_for /v1/models models
wait_for "a chat completion" chat
echo "readiness: endpoint answers after $((SECONDS - start))s" >&2
cat "$hdr.out"
"""
