"""Pure rendering of the readiness gate: the script that decides an endpoint is up.

It runs on the head host (next to the container, so it can read the container's state and
logs when something goes wrong) and checks, in order: `/health`, `/v1/models` with the API key,
then one real chat completion. The key arrives on stdin, is written to a 0600 header file and
given to curl as `-H @file`, so it never appears on a command line.

A chat completion passes only with HTTP 200 and a JSON body whose `choices` is a non-empty
list whose first entry has an assistant `message`. The JSON is parsed with python3, which
preflight requires on every host (`required_commands`), so no grep over JSON text.
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
    # Where the server listens, seen from the host the gate runs on (the serving host itself).
    address: str = "127.0.0.1"


# Exit 0 when the JSON file argv[1] is a chat completion with a message: `choices[0]` is
# found only in a non-empty list (JSON object keys are strings), and its `message` must be
# an object with role assistant. Its content may be null: a reasoning model (DeepSeek-R1
# behind a reasoning parser) can spend all of max_tokens in `reasoning_content`.
_COMPLETION_OK = """\
import json, sys
try:
    with open(sys.argv[1], encoding="utf-8") as f:
        message = json.load(f)["choices"][0]["message"]
except (OSError, ValueError, LookupError, TypeError):
    sys.exit(1)
sys.exit(0 if isinstance(message, dict) and message.get("role") == "assistant" else 1)
"""

# Exit 0 when the JSON file argv[1] is a model list naming argv[2] (an `id` in `data`).
_MODEL_LISTED = """\
import json, sys
try:
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)["data"]
    ids = [m.get("id") for m in data if isinstance(m, dict)]
except (OSError, ValueError, LookupError, TypeError, AttributeError):
    sys.exit(1)
sys.exit(0 if sys.argv[2] in ids else 1)
"""


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
    host = f"[{gate.address}]" if ":" in gate.address else gate.address
    return f"""\
set -euo pipefail
container={q(gate.container)}
base={q(f"http://{host}:{gate.port}")}
model={q(gate.served_model_name)}
timeout={gate.timeout_s}
IFS= read -r api_key || true
hdr=$(mktemp)
trap 'rm -f "$hdr" "$hdr.out" "$hdr.err"' EXIT
chmod 600 "$hdr"
printf 'Authorization: Bearer %s\\n' "$api_key" >"$hdr"
unset api_key
start=$SECONDS
last_note=-{gate.progress_every_s}
# What the last probe that did not pass saw, for the timeout message.
last="nothing yet"

fail() {{
  echo "readiness: $*" >&2
  # The root cause is often far above the tail (vLLM ends with "Engine core initialization
  # failed. See root cause above"): quote the first error lines of the whole log too.
  echo "readiness: first error lines of $container:" >&2
  docker logs "$container" 2>&1 | grep -m 8 -E 'Error|Exception|error:|Traceback' |
    sed 's/^/  ! /' >&2 || true
  echo "readiness: last log lines of $container:" >&2
  docker logs --tail 40 "$container" 2>&1 | sed 's/^/  | /' >&2 || true
  exit 1
}}

command -v python3 >/dev/null 2>&1 ||
  fail "python3 not found on this host: the gate reads the server's JSON with it" \
    "(preflight requires it)"

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
      fail "$what not ready after ${{timeout}}s (serving.ready_timeout_s raises the limit);" \
        "last answer: $last"
    fi
    if [ $((elapsed - last_note)) -ge {gate.progress_every_s} ]; then
      echo "readiness: waiting for $what (${{elapsed}}s of ${{timeout}}s): $last" >&2
      last_note=$elapsed
    fi
    sleep {gate.poll_s:g}
  done
  echo "readiness: $what ok after $((SECONDS - start))s" >&2
}}

excerpt() {{ head -c 300 "$hdr.out" 2>/dev/null | tr -s '\\r\\n\\t' '   '; }}
# probe <path> <curl args...>: sets code and keeps the body in $hdr.out; returns 0 only
# for a complete answer with HTTP 200 (a transfer cut short is no answer, whatever its code).
probe() {{
  local path=$1 rc=0; shift
  : >"$hdr.out"  # never a stale body from an earlier probe when this one writes none
  code=$(curl -sS -o "$hdr.out" -w '%{{http_code}}' "$@" "$base$path" 2>"$hdr.err") || rc=$?
  if [ "$rc" != 0 ]; then
    code=000
    last="no answer from $path: $(head -c 200 "$hdr.err" | tr -s '\\r\\n' '  ')"
    return 1
  fi
  last="HTTP $code from $path: $(excerpt)"
  [ "$code" = 200 ]
}}
health() {{ probe /health --max-time 5; }}
models() {{
  probe /v1/models --max-time 10 -H @"$hdr" || true
  if [ "$code" = 401 ]; then
    fail "the server rejected the API key on /v1/models (check vllm-cluster:apiKey)"
  fi
  [ "$code" = 200 ] || return 1
  python3 -c {q(_MODEL_LISTED)} "$hdr.out" "$model" && return 0
  last="/v1/models does not list $model yet: $(excerpt)"
  return 1
}}
# Only a 401 fails at once; any other status (500, 503, 404) is retried until the timeout,
# then reported with its body. A 500 is what vLLM answers while an engine that has not
# served yet fails a request it will serve moments later (a Ray cluster re-forming after a
# worker was replaced, compilation on the first request); an engine that is really gone
# exits its container, which container_alive reports at the next poll, so waiting costs
# nothing there. A 200 without a completion is a broken server, not a warming one: it
# fails at once.
chat() {{
  probe /v1/chat/completions --max-time 120 -H @"$hdr" -H 'Content-Type: application/json' \\
    -d {q(body)} || true
  if [ "$code" = 401 ]; then
    fail "the server rejected the API key on /v1/chat/completions (check vllm-cluster:apiKey)"
  fi
  [ "$code" = 200 ] || return 1
  python3 -c {q(_COMPLETION_OK)} "$hdr.out" ||
    fail "the chat completion answered HTTP 200 without a completion (choices must be a" \
      "non-empty list with an assistant message): $(excerpt)"
}}

code=000
wait_for /health health
wait_for /v1/models models
wait_for "a chat completion" chat
echo "readiness: endpoint answers after $((SECONDS - start))s" >&2
cat "$hdr.out"
"""
