# shellcheck shell=bash
# Fragment (docker): included after the variables set by components/render/shell; not run alone.
has_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }
wait_daemon() {
  for _ in $(seq 1 30); do docker version >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}

INSTALLED=false
if command -v dockerd >/dev/null 2>&1; then
  log "docker present: $(dockerd --version 2>/dev/null || echo dockerd)"
elif [ "$INSTALL" = 1 ]; then
  die "dockerd is missing although docker.install is set. Fix: set docker.deb_dir to a directory of docker .deb files on this machine (the deb step installs them)"
else
  die "Docker is not installed. Fix: install Docker, or set docker.install: true with docker.deb_dir"
fi

DAEMON_STATE=untouched
RELOADED=false
if [ "$MIRRORS_JSON" != "[]" ]; then
  tool=$JSON_TOOL
  if [ "$tool" = auto ]; then
    if command -v python3 >/dev/null 2>&1; then tool=python3
    elif command -v jq >/dev/null 2>&1; then tool=jq
    else die "neither python3 nor jq found to merge $DAEMON_JSON. Fix: install python3 or jq"; fi
  fi
  case "$tool" in
    python3) DAEMON_STATE=$(merge_python) ;;
    jq)
      mkdir -p -- "$(dirname -- "$DAEMON_JSON")"
      cur="{}"; [ -s "$DAEMON_JSON" ] && cur=$(cat -- "$DAEMON_JSON")
      printf '%s' "$cur" | jq -e 'type == "object"' >/dev/null 2>&1 \
        || die "$DAEMON_JSON is not a valid JSON object; not touching it. Fix: repair it"
      new=$(printf '%s' "$cur" | jq -S --argjson m "$MIRRORS_JSON" \
        '(.["registry-mirrors"] // []) as $h | .["registry-mirrors"] = $h + ($m - $h)')
      if [ "$(printf '%s' "$cur" | jq -S .)" = "$new" ]; then DAEMON_STATE=unchanged
      else
        tmp=$(mktemp -- "$(dirname -- "$DAEMON_JSON")/.daemon.json.XXXXXX")
        printf '%s\n' "$new" >"$tmp"
        if [ -e "$DAEMON_JSON" ]; then chmod --reference="$DAEMON_JSON" -- "$tmp"; else chmod 0644 -- "$tmp"; fi
        mv -f -- "$tmp" "$DAEMON_JSON"
        DAEMON_STATE=changed
      fi ;;
    *) die "unknown json tool $tool" ;;
  esac
  log "$DAEMON_JSON: registry mirrors $DAEMON_STATE"
  if [ "$DAEMON_STATE" = changed ]; then
    # Registry mirrors are reloaded on SIGHUP: no restart, running containers keep running.
    RELOADED=true
    if [ "$HAVE_RELOAD_HOOK" = 1 ]; then reload_hook
    elif has_systemd && systemctl is-active --quiet docker; then systemctl reload docker
    elif command -v service >/dev/null 2>&1 && [ -e /etc/init.d/docker ] \
      && service docker status >/dev/null 2>&1; then
      service docker reload
    elif pid=$(pidof dockerd 2>/dev/null); then
      read -ra pids <<<"$pid"
      kill -HUP "${pids[@]}"
    else
      RELOADED=false
      log "dockerd is not running; it reads $DAEMON_JSON when it starts"
    fi
    [ "$RELOADED" = false ] || log "asked dockerd to reload its configuration"
  fi
fi

if [ -n "$GROUP_USER" ]; then
  id -- "$GROUP_USER" >/dev/null 2>&1 || die "user $GROUP_USER does not exist. Fix: create it or change docker.docker_group_user"
  getent group docker >/dev/null || groupadd docker
  if id -nG -- "$GROUP_USER" | tr ' ' '\n' | grep -qx docker; then
    log "$GROUP_USER is already in the docker group"
  else
    usermod -aG docker -- "$GROUP_USER"
    log "added $GROUP_USER to the docker group (effective at its next login)"
  fi
fi

VERSION=""
if command -v docker >/dev/null 2>&1 && { [ "$INSTALLED" = false ] || wait_daemon; }; then
  VERSION=$(docker version --format '{{.Server.Version}}' 2>/dev/null || true)
fi
printf '{"docker_version":%s,"installed":%s,"daemon_json":%s,"reloaded":%s,"group_user":%s}\n' \
  "$(jstr "$VERSION")" "$INSTALLED" "$(jstr "$DAEMON_STATE")" "$RELOADED" "$(jstr "$GROUP_USER")"
log "ok"
