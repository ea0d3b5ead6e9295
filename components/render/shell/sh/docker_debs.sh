# shellcheck shell=bash
# Fragment (docker_debs): included after the variables set by components/render/shell; not run alone.
# stdin: a tar stream holding (at least) the files in NAMES. Installed as root: only those
# files, each with its SHA-256 from SHAS, from a fresh root-only directory removed afterwards.
if dockerd_present; then
  cat >/dev/null  # the stream is not needed
  log "docker present: $(dockerd --version 2>/dev/null || echo dockerd); the .deb files are not used"
  printf '{"installed":false}\n'
  exit 0
fi
[ "$(id -u)" = 0 ] || die "installing .deb files needs root. Fix: connect as root (hosts[].user)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found. Fix: install coreutils"
command -v tar >/dev/null 2>&1 || die "tar not found. Fix: install tar"
umask 077
# Refuse a directory anyone but root could have put files into (or swapped).
root_only() {
  local owner mode
  [ -d "$1" ] && [ ! -L "$1" ] || die "$1 is not a directory"
  read -r owner mode < <(stat -c '%u %a' -- "$1")
  [ "$owner" = 0 ] || die "$1 is owned by uid $owner, not root; refusing to install .deb files from it. Fix: remove it (the step recreates it)"
  (( (8#$mode & 8#022) == 0 )) || die "$1 is group/world writable (mode $mode); refusing to install .deb files from it. Fix: chmod 700 $1"
}
mkdir -p -- "$PARENT"
root_only "$PARENT"
DIR=$(mktemp -d -- "$PARENT/run.XXXXXX")
trap 'rm -rf -- "$DIR"' EXIT
root_only "$DIR"
tar -x -f - -C "$DIR" --no-same-owner --no-same-permissions -- "${NAMES[@]}" \
  || die "could not unpack the .deb files sent by the program"
DEBS=()
for i in "${!NAMES[@]}"; do
  f="$DIR/${NAMES[$i]}"
  [ -f "$f" ] && [ ! -L "$f" ] || die "${NAMES[$i]} did not arrive as a regular file"
  sum=$(sha256sum -- "$f" | cut -d' ' -f1)
  [ "$sum" = "${SHAS[$i]}" ] || die "${NAMES[$i]}: SHA-256 $sum, expected ${SHAS[$i]}; refusing to install. Fix: check docker.deb_dir on this machine and run again"
  DEBS+=("$f")
done
log "installing Docker from ${#DEBS[@]} verified .deb file(s)"
if command -v apt-get >/dev/null 2>&1; then
  # Local paths: apt resolves dependencies among these files first; nothing is downloaded
  # when they are complete (offline-safe), a missing dependency fails with its name.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${DEBS[@]}" >&2
else
  dpkg -i "${DEBS[@]}" >&2
fi
dockerd_present || die "dockerd still missing after installing the .deb files. Fix: include the docker-ce package in docker.deb_dir"
if [ "$HAVE_START_HOOK" = 1 ]; then start_hook
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then systemctl enable --now docker >&2
elif command -v service >/dev/null 2>&1 && [ -e /etc/init.d/docker ]; then service docker start >&2
else log "no init system found: start dockerd yourself (e.g. dockerd >/var/log/dockerd.log 2>&1 &)"; fi
printf '{"installed":true}\n'
log "ok"
