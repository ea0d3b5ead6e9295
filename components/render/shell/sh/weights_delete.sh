# shellcheck shell=bash
# Fragment (weights_delete): included after the variables set by components/render/shell; not run alone.
# Defence in depth: the renderer already refused such paths; the host re-checks the *real*
# path (a symlink could point anywhere) before anything is removed.
if [ ! -e "$WPATH" ] && [ ! -L "$WPATH" ]; then
  log "$WPATH is already gone"
  exit 0
fi
REAL=$(readlink -f -- "$WPATH")
case "$REAL" in
  ""|/) die "refusing to delete $WPATH: it resolves to '$REAL'" ;;
esac
depth=$(printf '%s' "$REAL" | tr -s '/' '\n' | grep -c . || true)
[ "$depth" -ge 2 ] \
  || die "refusing to delete $WPATH: it resolves to $REAL (fewer than 2 path components)"
[ -d "$REAL" ] || die "refusing to delete $WPATH: $REAL is not a directory"
[ -f "$REAL/$MANIFEST" ] \
  || die "refusing to delete $REAL: no $MANIFEST in it (not a model directory of vllm-cluster)"
if mountpoint -q -- "$REAL" 2>/dev/null; then
  die "refusing to delete $REAL: it is a mount point (the whole filesystem)"
fi
log "removing $REAL ($(du -sh -- "$REAL" 2>/dev/null | cut -f1))"
rm -rf --one-file-system -- "$REAL"
[ "$REAL" = "$WPATH" ] || rm -f -- "$WPATH"
log "removed"
