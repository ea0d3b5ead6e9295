# shellcheck shell=bash
# Fragment (fanout_keygen): included after the variables set by components/render/shell; not run alone.
command -v ssh-keygen >/dev/null 2>&1 || die "ssh-keygen not found. Fix: install openssh-client"
umask 077
mkdir -p -- "$KDIR"
chmod 700 -- "$KDIR"
if [ ! -s "$KDIR/id_ed25519" ] || [ ! -s "$KDIR/id_ed25519.pub" ]; then
  rm -f -- "$KDIR/id_ed25519" "$KDIR/id_ed25519.pub"
  ssh-keygen -q -t ed25519 -N '' -C "$COMMENT" -f "$KDIR/id_ed25519" </dev/null >/dev/null
  log "made a temporary key in $KDIR"
else
  log "reusing the temporary key in $KDIR"
fi
cat -- "$KDIR/id_ed25519.pub"
