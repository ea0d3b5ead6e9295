# shellcheck shell=bash
# Fragment (fanout_driver): included after the variables set by components/render/shell; not run alone.
manifest_sha() { sed -n 's/.*"manifest_sha256": *"\([0-9a-f]*\)".*/\1/p'; }
SRC_SUM=$("${SSH_SRC[@]}" "$R_VERIFY_SRC" </dev/null) \
  || die "the weights on $SOURCE_NAME are not complete; fan-out copies only verified weights. Fix: complete them on $SOURCE_NAME first"
SRC_SHA=$(printf '%s\n' "$SRC_SUM" | manifest_sha)
if TGT_SUM=$("${SSH_TGT[@]}" "$R_VERIFY_TGT" </dev/null 2>/dev/null) \
  && [ -n "$SRC_SHA" ] && [ "$(printf '%s\n' "$TGT_SUM" | manifest_sha)" = "$SRC_SHA" ]; then
  log "already has the same verified weights as $SOURCE_NAME; nothing to copy"
  printf '%s\n' "$TGT_SUM"
  exit 0
fi
cleanup() {
  local rc=$?
  # A grant left behind is an open door until it expires: a failed revoke fails the step.
  if ! "${SSH_SRC[@]}" "$R_REVOKE" </dev/null; then
    log "ERROR: could not revoke the temporary key on $SOURCE_NAME. Fix: remove the line ending in $MARK from $SOURCE_NAME's authorized_keys (it expires by itself after the grant's TTL)"
    rc=1
  fi
  "${SSH_TGT[@]}" "$R_CLEANUP" </dev/null || log "WARNING: could not remove the temporary key on $HOST (no longer authorized on $SOURCE_NAME)"
  exit "$rc"
}
trap cleanup EXIT
log "copying the weights from $SOURCE_NAME"
PUB=$("${SSH_TGT[@]}" "$R_KEYGEN" </dev/null)
HOST_KEYS=$(printf '%s\n' "$PUB" | "${SSH_SRC[@]}" "$R_GRANT")
printf '%s\n' "$HOST_KEYS" | "${SSH_TGT[@]}" "$R_PULL"
log "ok"
