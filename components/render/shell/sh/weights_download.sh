# shellcheck shell=bash
# Fragment (weights_download): included after the variables set by components/render/shell; not run alone.
# The token first, before any other command could read standard input: from stdin or a
# 0600 file, into this shell's memory only.
TOKEN=""
case "$TOKEN_MODE" in
  stdin) IFS= read -r TOKEN || true ;;
  file)
    [ -f "$TOKEN_FILE" ] || die "token file $TOKEN_FILE not found"
    perms=$(stat -c '%a' -- "$TOKEN_FILE")
    case "$perms" in 600|400) ;; *) die "token file $TOKEN_FILE has mode $perms. Fix: chmod 600 $TOKEN_FILE" ;; esac
    IFS= read -r TOKEN <"$TOKEN_FILE" || true ;;
esac
TOKEN=${TOKEN%$'\r'}

# Creates the directory (noting which directories it made) and what is already in it: only
# what this run adds is recorded as ours, for deletion (model.keep_on_destroy: false).
wclaim begin
if [ -f "$WPATH/$MARKER" ] && [ "$(cat -- "$WPATH/$MARKER")" = "$MARKER_TEXT" ] \
  && SUMMARY=$(wtool verify "$WPATH" --mode "$MODE" --host "$HOST" --require-manifest 2>/dev/null); then
  log "$MODEL_ID${REVISION:+@$REVISION} already complete at $WPATH; skipping download"
  wclaim end
  printf '%s\n' "$SUMMARY"
  exit 0
fi

# The hub client: the host's own CLI when it has one, else the one in the engine image, which
# the image step put on every host (vLLM images ship huggingface_hub): nothing to install.
engine_image_present() {
  [ -n "$ENGINE_IMAGE" ] && command -v docker >/dev/null 2>&1 \
    && docker image inspect -- "$ENGINE_IMAGE" >/dev/null 2>&1
}
RUNNER=host
DL_NAME=""
CLI=()
ARGS=()
case "$SOURCE" in
  huggingface)
    if command -v hf >/dev/null 2>&1; then CLI=(hf download)
    elif command -v huggingface-cli >/dev/null 2>&1; then CLI=(huggingface-cli download)
    elif engine_image_present; then RUNNER=image
    else die "neither hf nor huggingface-cli found${ENGINE_IMAGE:+, and the engine image $ENGINE_IMAGE is not on this host}. Fix: pip install -U huggingface_hub on $HOST"; fi
    ARGS=("$MODEL_ID" --local-dir "$WPATH")
    [ -z "$REVISION" ] || ARGS+=(--revision "$REVISION")
    # Environment, not argv: a command line is visible to every user in ps.
    if [ -n "$ENDPOINT" ]; then export HF_ENDPOINT="$ENDPOINT"; fi
    # No PyPI version check (nor the hint it prints) from a server: it may be air-gapped.
    export HF_HUB_DISABLE_UPDATE_CHECK=1
    ;;
  modelscope)
    if command -v modelscope >/dev/null 2>&1; then CLI=(modelscope download)
    elif engine_image_present; then RUNNER=image
    else die "modelscope not found${ENGINE_IMAGE:+, and the engine image $ENGINE_IMAGE is not on this host}. Fix: pip install -U modelscope on $HOST"; fi
    ARGS=(--model "$MODEL_ID" --local_dir "$WPATH")
    [ -z "$REVISION" ] || ARGS+=(--revision "$REVISION")
    # MODELSCOPE_ENDPOINT (a URL) for modelscope built on modelscope_hub (1.40); older releases
    # read MODELSCOPE_DOMAIN as a host name and put https:// in front of it.
    if [ -n "$ENDPOINT" ]; then
      export MODELSCOPE_ENDPOINT="$ENDPOINT" MODELSCOPE_DOMAIN="${ENDPOINT#*://}"
    fi
    ;;
esac
if [ "$RUNNER" = host ]; then
  if [ -n "$TOKEN" ]; then
    case "$SOURCE" in
      huggingface) export HF_TOKEN="$TOKEN" ;;
      modelscope) export MODELSCOPE_API_TOKEN="$TOKEN" ;;
    esac
  fi
  unset TOKEN
else
  # In the engine image: the model directory mounted at the same path, the host's network
  # (the hub endpoint resolves as on the host), no registry pull. The token goes in on the
  # container's stdin (printf is a builtin: not in ps) and into the client's environment
  # there: never in docker's argv, nor in `docker inspect` (which shows -e variables).
  # One container per model path, by name: a download a killed step left running is
  # stopped before the next starts, so two never write the same files.
  DL_NAME="vllm-cluster-download-$(printf '%s' "$WPATH" | sha256sum | cut -c1-12)"
  docker rm -f -- "$DL_NAME" >/dev/null 2>&1 || true
  CLI=(docker run --rm -i --pull=never --name "$DL_NAME" --network host
    --volume "$WPATH:$WPATH" --workdir /
    --env HF_ENDPOINT --env HF_HUB_DISABLE_UPDATE_CHECK
    --env MODELSCOPE_ENDPOINT --env MODELSCOPE_DOMAIN
    --entrypoint /bin/sh "$ENGINE_IMAGE" -c "$IN_IMAGE" vllm-cluster-download "$SOURCE")
  log "no hub CLI on $HOST: running the one in the engine image $ENGINE_IMAGE"
fi
run_cli() {
  if [ "$RUNNER" = image ]; then printf '%s\n' "$TOKEN" | "${CLI[@]}" "${ARGS[@]}"
  else "${CLI[@]}" "${ARGS[@]}" </dev/null; fi
}

rm -f -- "$WPATH/$MARKER"
log "downloading $MODEL_ID${REVISION:+@$REVISION} from $SOURCE${ENDPOINT:+ ($ENDPOINT)} to $WPATH"
# The CLI's output goes to stderr as it comes and to a private file, read only to tell a
# refused token (no retry can fix it) from a network error. The CLIs never print the token.
CLI_LOG=$(mktemp)
# On the way out, also the download container if one is left (a step stopped by a signal).
trap 'rm -f -- "$CLI_LOG"; [ -z "${DL_NAME:-}" ] || docker rm -f -- "$DL_NAME" >/dev/null 2>&1 || true' EXIT
AUTH_REFUSED='401 Unauthorized|403 Forbidden|40[13] Client Error|\[40[13]\] |Invalid credentials|Invalid user token'
n=1
# A retry skips the files already complete. A partly downloaded file starts over with
# huggingface_hub >= 1.18 (its partial files are per process and never reused); older
# releases and modelscope continue it.
while :; do
  rc=0
  run_cli 2>&1 | tee "$CLI_LOG" >&2 || rc=${PIPESTATUS[0]}
  # huggingface_hub, when it cannot reach the hub and the local dir is not empty, returns
  # that dir with exit 0 ("Returning existing local_dir ... as remote repo cannot be
  # accessed") without checking it is complete: after an interrupted download it is not.
  if [ "$rc" = 0 ] && grep -q 'as remote repo cannot be accessed' "$CLI_LOG"; then
    log "the hub could not be reached; the client only handed back the files already in $WPATH (they may be partial): not taken as a download"
    rc=1
  fi
  [ "$rc" != 0 ] || break
  if [ "$RUNNER" = image ] && [ "$rc" = 127 ]; then
    die "the engine image $ENGINE_IMAGE has no $SOURCE client. Fix: pip install -U $([ "$SOURCE" = huggingface ] && echo huggingface_hub || echo modelscope) on $HOST (the host's CLI is used first)"
  fi
  if grep -qE "$AUTH_REFUSED" "$CLI_LOG"; then
    die "the hub refused the token for $MODEL_ID (HTTP 401/403). Fix: pulumi config set --secret vllm-cluster:hubToken <a token that can read $MODEL_ID>, then re-run"
  fi
  [ "$n" -lt "$ATTEMPTS" ] || die "download of $MODEL_ID failed $ATTEMPTS times. Fix: check the network/mirror (model.hub_endpoint) and the token (vllm-cluster:hubToken), then re-run: files already complete are kept"
  log "download attempt $n/$ATTEMPTS failed (exit $rc); retrying in $(( n * RETRY_DELAY )) s"
  sleep $(( n * RETRY_DELAY )); n=$(( n + 1 ))
done
unset TOKEN HF_TOKEN MODELSCOPE_API_TOKEN
# Partial files that an interrupted huggingface_hub (>= 1.18) left behind: none is read again.
if [ -d "$WPATH/.cache/huggingface/download" ]; then
  find "$WPATH/.cache/huggingface/download" -xdev -type f -name '*.incomplete' -delete
fi
log "downloaded; writing the manifest"
if [ "$MANIFEST_SHA" = 1 ]; then wtool build "$WPATH" --sha256 >/dev/null; else wtool build "$WPATH" >/dev/null; fi
SUMMARY=$(wtool verify "$WPATH" --mode "$MODE" --host "$HOST" --require-manifest)
printf '%s\n' "$MARKER_TEXT" >"$WPATH/$MARKER"
wclaim end
printf '%s\n' "$SUMMARY"
log "ok"
