# shellcheck shell=bash
# Fragment (image_load): included after the variables set by components/render/shell; not run alone.
command -v docker >/dev/null 2>&1 || die "docker not found. Fix: run the docker step first (docker.install)"
current() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
HAVE=$(current "$IMAGE")
if [ -z "$WANT" ]; then
  [ -f "$TARBALL" ] || die "$TARBALL not found and no image id given. Fix: copy the image tarball first"
  WANT=sha256:$(tar -xOf "$TARBALL" manifest.json | grep -o '"Config":"[^"]*"' | head -n 1 | grep -Eo '[0-9a-f]{64}' | tail -n 1 || true)
  [ "$WANT" != sha256: ] || die "cannot read the image id from $TARBALL (manifest.json). Fix: make it with docker save"
fi
# Docker's containerd image store (default for new installs since Docker 29) reports the
# OCI manifest digest as the ID; a tarball in OCI layout names it in index.json.
ALT=""
if [ -f "$TARBALL" ]; then
  ALT=$(tar -xOf "$TARBALL" index.json 2>/dev/null | grep -o '"digest":"sha256:[0-9a-f]*"' | head -n 1 | grep -Eo 'sha256:[0-9a-f]{64}' || true)
fi
LOADED=false
if [ -n "$HAVE" ] && { [ "$HAVE" = "$WANT" ] || [ "$HAVE" = "$ALT" ]; }; then
  log "$IMAGE is already $WANT; skipping docker load"
else
  [ -f "$TARBALL" ] || die "$TARBALL not found. Fix: copy the image tarball to the host first"
  log "loading $TARBALL ($(du -h -- "$TARBALL" | cut -f1)); $IMAGE is ${HAVE:-absent}, want $WANT"
  docker load -i "$TARBALL" >&2
  LOADED=true
  HAVE=$(current "$IMAGE")
  if [ "$HAVE" != "$WANT" ]; then
    # A tarball saved by ID carries no tag: tag the loaded image ourselves.
    if [ "$(current "$WANT")" = "$WANT" ]; then
      docker tag "$WANT" "$IMAGE"
      HAVE=$(current "$IMAGE")
    fi
  fi
  [ -n "$HAVE" ] || die "after docker load, $IMAGE is absent. Fix: check that the tarball holds $IMAGE (docker save $IMAGE)"
  if [ "$HAVE" != "$WANT" ] && [ "$HAVE" != "$ALT" ]; then
    log "note: $IMAGE reports id $HAVE, the tarball's config is $WANT (containerd image store?)"
  fi
fi
if [ "$REMOVE_TARBALL" = 1 ] && [ -f "$TARBALL" ]; then
  rm -f -- "$TARBALL"
  log "removed $TARBALL"
fi
printf '{"image":%s,"id":%s,"loaded":%s}\n' "$(jstr "$IMAGE")" "$(jstr "$HAVE")" "$LOADED"
log "ok"
