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

CLI=()
ARGS=()
case "$SOURCE" in
  huggingface)
    if command -v hf >/dev/null 2>&1; then CLI=(hf download)
    elif command -v huggingface-cli >/dev/null 2>&1; then CLI=(huggingface-cli download)
    else die "neither hf nor huggingface-cli found. Fix: pip install -U huggingface_hub on $HOST"; fi
    ARGS=("$MODEL_ID" --local-dir "$WPATH")
    [ -z "$REVISION" ] || ARGS+=(--revision "$REVISION")
    # Environment, not argv: a command line is visible to every user in ps.
    if [ -n "$TOKEN" ]; then export HF_TOKEN="$TOKEN"; fi
    if [ -n "$ENDPOINT" ]; then export HF_ENDPOINT="$ENDPOINT"; fi
    # No PyPI version check (nor the hint it prints) from a server: it may be air-gapped.
    export HF_HUB_DISABLE_UPDATE_CHECK=1
    ;;
  modelscope)
    command -v modelscope >/dev/null 2>&1 || die "modelscope not found. Fix: pip install -U modelscope on $HOST"
    CLI=(modelscope download)
    ARGS=(--model "$MODEL_ID" --local_dir "$WPATH")
    [ -z "$REVISION" ] || ARGS+=(--revision "$REVISION")
    if [ -n "$TOKEN" ]; then export MODELSCOPE_API_TOKEN="$TOKEN"; fi
    # MODELSCOPE_ENDPOINT (a URL) for modelscope built on modelscope_hub (1.40); older releases
    # read MODELSCOPE_DOMAIN as a host name and put https:// in front of it.
    if [ -n "$ENDPOINT" ]; then
      export MODELSCOPE_ENDPOINT="$ENDPOINT" MODELSCOPE_DOMAIN="${ENDPOINT#*://}"
    fi
    ;;
esac
unset TOKEN

rm -f -- "$WPATH/$MARKER"
log "downloading $MODEL_ID${REVISION:+@$REVISION} from $SOURCE${ENDPOINT:+ ($ENDPOINT)} to $WPATH"
# The CLI's output goes to stderr as it comes and to a private file, read only to tell a
# refused token (no retry can fix it) from a network error. The CLIs never print the token.
CLI_LOG=$(mktemp)
trap 'rm -f -- "$CLI_LOG"' EXIT
AUTH_REFUSED='401 Unauthorized|403 Forbidden|40[13] Client Error|\[40[13]\] |Invalid credentials|Invalid user token'
n=1
# A retry skips the files already complete. A partly downloaded file starts over with
# huggingface_hub >= 1.18 (its partial files are per process and never reused); older
# releases and modelscope continue it.
while :; do
  rc=0
  "${CLI[@]}" "${ARGS[@]}" </dev/null 2>&1 | tee "$CLI_LOG" >&2 || rc=${PIPESTATUS[0]}
  [ "$rc" != 0 ] || break
  if grep -qE "$AUTH_REFUSED" "$CLI_LOG"; then
    die "the hub refused the token for $MODEL_ID (HTTP 401/403). Fix: pulumi config set --secret vllm-cluster:hubToken <a token that can read $MODEL_ID>, then re-run"
  fi
  [ "$n" -lt "$ATTEMPTS" ] || die "download of $MODEL_ID failed $ATTEMPTS times. Fix: check the network/mirror (model.hub_endpoint) and the token (vllm-cluster:hubToken), then re-run: files already complete are kept"
  log "download attempt $n/$ATTEMPTS failed (exit $rc); retrying in $(( n * RETRY_DELAY )) s"
  sleep $(( n * RETRY_DELAY )); n=$(( n + 1 ))
done
unset HF_TOKEN MODELSCOPE_API_TOKEN
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
