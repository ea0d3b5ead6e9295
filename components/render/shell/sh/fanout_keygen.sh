# shellcheck shell=bash
# Fragment (fanout_keygen): included after the variables set by components/render/shell; not run alone.
command -v ssh-keygen >/dev/null 2>&1 || die "ssh-keygen not found. Fix: install openssh-client"
command -v rsync >/dev/null 2>&1 || die "rsync not found. Fix: install rsync on every node"
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
# The exact command this host's rsync will ask the source to run for the pull (its option
# letters and capability string depend on the rsync version here): the grant forces the key
# to that one command. Found by letting rsync start a "remote shell" that only records it.
probe="$KDIR/rsh-probe"
printf '%s\n' '#!/bin/sh' \
  'while [ "$#" -gt 0 ] && [ "$1" != vllm-cluster-probe ]; do shift; done' \
  '[ "$#" -gt 0 ] && shift' \
  'printf "%s\n" "$*" >"$(dirname "$0")/server-command"' \
  'exit 1' >"$probe"
chmod 700 -- "$probe"
rm -f -- "$KDIR/server-command"
rsync "${RSYNC_OPTS[@]}" -e "$probe" "probe@vllm-cluster-probe:$SRC_PATH/" "$KDIR/probe-dest/" \
  </dev/null >/dev/null 2>&1 || true
rm -rf -- "$probe" "$KDIR/probe-dest"
[ -s "$KDIR/server-command" ] || die "could not tell which command rsync runs on the source"
cat -- "$KDIR/id_ed25519.pub"
cat -- "$KDIR/server-command"
