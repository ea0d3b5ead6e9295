# shellcheck shell=bash
# Fragment (fanout_grant): included after the variables set by components/render/shell and the
# fanout_authorized_keys fragment; not run alone.
IFS= read -r PUB || true
IFS= read -r SERVER_CMD || true
[[ "$PUB" =~ ^ssh-ed25519\ [A-Za-z0-9+/=]+($|\ ) ]] \
  || die "expected an ssh-ed25519 public key on stdin"
KEY=$(printf '%s\n' "$PUB" | awk '{ print $1 " " $2 }')
# The only command the key may run: rsync's sender for exactly "$WPATH/" (read-only). It is
# the command the target's rsync asked for (second line on stdin); anything else is refused:
# option letters that take an argument (filters, temp dirs, remote options) included.
read -ra words <<<"$SERVER_CMD"
flags=${words[3]:-}
if [ "${#words[@]}" -ne 6 ] || [ "$SERVER_CMD" != "${words[*]}" ] \
  || [ "${words[0]}" != rsync ] || [ "${words[1]}" != --server ] \
  || [ "${words[2]}" != --sender ] || [ "${words[4]}" != . ] || [ "${words[5]}" != "$WPATH/" ] \
  || ! [[ "$flags" =~ ^-([A-Za-z]+)(e\.[A-Za-z]*)?$ ]] || [[ "${BASH_REMATCH[1]}" == *[BfMTe]* ]]; then
  die "refusing to grant: expected the rsync sender command for $WPATH/ on stdin, got: $SERVER_CMD"
fi
[ -n "$FROM" ] || die "refusing to grant without the target's address (from=)"
from=$FROM
if ! [[ "$FROM" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  # from= matches the client's address (a name only with sshd's UseDNS): resolve it here.
  from=$(getent ahostsv4 "$FROM" | awk '{ print $1 }' | sort -u | paste -sd, -)
  [ -n "$from" ] || die "cannot resolve $FROM to an IPv4 address for from=. Fix: use the target's IP in hosts[].address"
fi
# expiry-time (OpenSSH >= 8.2) bounds the grant even if nothing ever revokes it; an sshd
# that cannot enforce it gets no grant at all.
ver=""
for tool in sshd ssh; do
  command -v "$tool" >/dev/null 2>&1 || continue
  ver=$("$tool" -V 2>&1 </dev/null | grep -o 'OpenSSH_[0-9]*\.[0-9]*' | head -n1 | tr '_.' '  ' || true)
  [ -z "$ver" ] || break
done
[ -n "$ver" ] || die "refusing to grant: cannot tell this host's OpenSSH version, and the temporary key must expire (expiry-time=, OpenSSH >= 8.2). Fix: install OpenSSH >= 8.2, or set model.distribute: each"
read -r _ major minor <<<"$ver"
if [ "$major" -lt 8 ] || { [ "$major" -eq 8 ] && [ "$minor" -lt 2 ]; }; then
  die "refusing to grant: OpenSSH $major.$minor here cannot expire the temporary key (expiry-time= needs >= 8.2). Fix: upgrade OpenSSH, or set model.distribute: each"
fi
expiry=$(date -d "@$(( $(date +%s) + TTL_S ))" +%Y%m%d%H%M)
OPTS="command=\"$SERVER_CMD\",restrict,from=\"$from\",expiry-time=\"$expiry\""
rewrite_ak "$OPTS $KEY $MARK"
log "authorized the temporary key $MARK in $AK ($OPTS)"
found=0
for f in "${HOST_KEYS[@]}"; do
  if [ -r "$f" ]; then awk '{ print $1 " " $2 }' "$f"; found=1; fi
done
[ "$found" = 1 ] || die "no readable host key among ${HOST_KEYS[*]}"
