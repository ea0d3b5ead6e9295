# shellcheck shell=bash
# Fragment (image_pull): included after the variables set by components/render/shell; not run alone.
command -v docker >/dev/null 2>&1 || die "docker not found. Fix: run the docker step first (docker.install)"
current() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
HAVE=$(current "$IMAGE")
PULLED=false
if [ -n "$HAVE" ] && { [ -z "$WANT" ] || [ "$HAVE" = "$WANT" ]; }; then
  log "$IMAGE is present ($HAVE); skipping pull"
else
  n=1
  until docker pull "$IMAGE" >&2; do
    [ "$n" -lt "$ATTEMPTS" ] || die "docker pull $IMAGE failed $ATTEMPTS times. Fix: check docker.registry_mirrors and the network, or use image.tarball"
    log "pull failed (attempt $n/$ATTEMPTS); retrying in $(( n * 10 )) s"
    sleep $(( n * 10 )); n=$(( n + 1 ))
  done
  PULLED=true
  HAVE=$(current "$IMAGE")
  if [ -n "$WANT" ] && [ "$HAVE" != "$WANT" ]; then
    die "pulled $IMAGE is $HAVE, expected $WANT. Fix: pin image.name to the tag that has this image"
  fi
fi
printf '{"image":%s,"id":%s,"pulled":%s}\n' "$(jstr "$IMAGE")" "$(jstr "$HAVE")" "$PULLED"
log "ok"
