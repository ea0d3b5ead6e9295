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
    ;;
  modelscope)
    command -v modelscope >/dev/null 2>&1 || die "modelscope not found. Fix: pip install -U modelscope on $HOST"
    CLI=(modelscope download)
    ARGS=(--model "$MODEL_ID" --local_dir "$WPATH")
    [ -z "$REVISION" ] || ARGS+=(--revision "$REVISION")
    if [ -n "$TOKEN" ]; then export MODELSCOPE_API_TOKEN="$TOKEN"; fi
    if [ -n "$ENDPOINT" ]; then export MODELSCOPE_DOMAIN="$ENDPOINT"; fi
    ;;
esac
unset TOKEN

rm -f -- "$WPATH/$MARKER"
log "downloading $MODEL_ID${REVISION:+@$REVISION} from $SOURCE${ENDPOINT:+ ($ENDPOINT)} to $WPATH"
n=1
# Both CLIs resume partial files, so a retry continues where the last attempt stopped.
until "${CLI[@]}" "${ARGS[@]}" </dev/null >&2; do
  [ "$n" -lt "$ATTEMPTS" ] || die "download of $MODEL_ID failed $ATTEMPTS times. Fix: check the network/mirror (model.hub_endpoint) and the token (vllm-cluster:hubToken), then re-run: it resumes"
  log "download attempt $n/$ATTEMPTS failed; retrying in $(( n * RETRY_DELAY )) s"
  sleep $(( n * RETRY_DELAY )); n=$(( n + 1 ))
done
unset HF_TOKEN MODELSCOPE_API_TOKEN
log "downloaded; writing the manifest"
if [ "$MANIFEST_SHA" = 1 ]; then wtool build "$WPATH" --sha256 >/dev/null; else wtool build "$WPATH" >/dev/null; fi
SUMMARY=$(wtool verify "$WPATH" --mode "$MODE" --host "$HOST" --require-manifest)
printf '%s\n' "$MARKER_TEXT" >"$WPATH/$MARKER"
wclaim end
printf '%s\n' "$SUMMARY"
log "ok"
