# shellcheck shell=bash
# Fragment (fanout_grant): included after the variables set by components/render/shell and the
# fanout_authorized_keys fragment; not run alone.
IFS= read -r PUB || true
[[ "$PUB" =~ ^ssh-ed25519\ [A-Za-z0-9+/=]+($|\ ) ]] \
  || die "expected an ssh-ed25519 public key on stdin"
KEY=$(printf '%s\n' "$PUB" | awk '{ print $1 " " $2 }')
OPTS=restrict
[ -z "$FROM" ] || OPTS+=",from=\"$FROM\""
# expiry-time bounds the grant even if nothing ever revokes it (OpenSSH >= 8.2).
ver=$(ssh -V 2>&1 | sed -n 's/^OpenSSH_\([0-9]*\)\.\([0-9]*\).*/\1 \2/p' || true)
if [ -n "$ver" ]; then
  read -r major minor <<<"$ver"
  if [ "$major" -gt 8 ] || { [ "$major" -eq 8 ] && [ "$minor" -ge 2 ]; }; then
    OPTS+=",expiry-time=\"$(date -d "@$(( $(date +%s) + TTL_S ))" +%Y%m%d%H%M)\""
  fi
fi
rewrite_ak "$OPTS $KEY $MARK"
log "authorized the temporary key $MARK in $AK ($OPTS)"
found=0
for f in "${HOST_KEYS[@]}"; do
  if [ -r "$f" ]; then awk '{ print $1 " " $2 }' "$f"; found=1; fi
done
[ "$found" = 1 ] || die "no readable host key among ${HOST_KEYS[*]}"
