# shellcheck shell=bash
# Fragment (fanout_pull): included after the variables set by components/render/shell; not run alone.
command -v rsync >/dev/null 2>&1 || die "rsync not found. Fix: install rsync on every node"
[ -s "$KDIR/id_ed25519" ] || die "no temporary key in $KDIR. Fix: run the keygen step first"
: >"$KDIR/known_hosts"
while read -r ktype kdata _; do
  [ -n "${kdata:-}" ] || continue
  printf '%s %s %s\n' "$HOST_PATTERN" "$ktype" "$kdata" >>"$KDIR/known_hosts"
done
[ -s "$KDIR/known_hosts" ] || die "no host key of the source on stdin"
mkdir -p -- "$WPATH"
log "pulling $SRC -> $WPATH/"
# The same rsync options as the keygen probe: the key is forced to exactly the command they
# make rsync ask for (the path is on that command line, so its arguments are not protected).
rsync "${RSYNC_OPTS[@]}" \
  -e "ssh -i $KDIR/id_ed25519 -p $SRC_PORT -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$KDIR/known_hosts -o IdentitiesOnly=yes -o ConnectTimeout=10 -o ServerAliveInterval=30 -o Ciphers=$SSH_CIPHERS" \
  "$SRC" "$WPATH/" >&2
wtool verify "$WPATH" --mode "$MODE" --host "$HOST" --require-manifest
log "ok"
