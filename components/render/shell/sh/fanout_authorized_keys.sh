# shellcheck shell=bash
# Fragment (fanout_authorized_keys): included after the variables set by components/render/shell; not run alone.
if [ -z "$AK" ]; then
  home=$(getent passwd "$SRC_USER" | cut -d: -f6)
  [ -n "$home" ] || die "user $SRC_USER does not exist on this host"
  AK="$home/.ssh/authorized_keys"
fi
# Rewrite authorized_keys without our marker line(s) [+ the new line]: under a lock (several
# targets are granted at once), into a temporary file, then renamed (never half-written).
rewrite_ak() {
  local add=$1 tmp dir
  dir=$(dirname -- "$AK")
  if [ ! -d "$dir" ]; then
    mkdir -p -- "$dir"; chmod 700 -- "$dir"
    chown "$SRC_USER": -- "$dir" 2>/dev/null || true
  fi
  if [ ! -e "$AK" ]; then
    install -m 600 /dev/null "$AK"
    chown "$SRC_USER": -- "$AK" 2>/dev/null || true
  fi
  exec 9>"$dir/.vllm-cluster-fanout.lock"
  if command -v flock >/dev/null 2>&1; then flock -w 60 9 || die "could not lock $AK"; fi
  tmp=$(mktemp -- "$AK.vllm-cluster.XXXXXX")
  awk -v m="$MARK" '{ n = split($0, f, " "); if (n > 0 && f[n] == m) next; print }' "$AK" >"$tmp"
  [ -z "$add" ] || printf '%s\n' "$add" >>"$tmp"
  if cmp -s -- "$tmp" "$AK"; then rm -f -- "$tmp"; CHANGED=0
  else
    chmod --reference="$AK" -- "$tmp"
    chown --reference="$AK" -- "$tmp" 2>/dev/null || true
    mv -f -- "$tmp" "$AK"; CHANGED=1
    command -v restorecon >/dev/null 2>&1 && restorecon -- "$AK" 2>/dev/null || true
  fi
  exec 9>&-
}
