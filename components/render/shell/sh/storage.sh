# shellcheck shell=bash
# Fragment (storage): included after the variables set by components/render/shell; not run alone.
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found. Fix: install $2"; }
need blkid util-linux; need lsblk util-linux; need wipefs util-linux; need partx util-linux
need mountpoint util-linux; need blockdev util-linux
case "$FSTYPE" in
  xfs) need mkfs.xfs xfsprogs ;;
  ext4) need mkfs.ext4 e2fsprogs ;;
esac

probe() { blkid -p -o value -s "$1" -- "$2" 2>/dev/null || true; }
sysdev() { cat "/sys/class/block/$1/dev"; }
# Partitions of a whole disk, from sysfs (works without udev).
parts_of() {
  local p
  for p in "/sys/block/$1/$1"*; do
    [ -f "$p/partition" ] && basename -- "$p"
  done
  return 0
}
part_number() { local p; for p in $(parts_of "$1"); do [ "$(cat "/sys/block/$1/$p/partition")" = "$2" ] && echo "$p"; done; return 0; }
# /dev/<name> with the right major:minor; create it when no udev did (containers, chroots).
ensure_node() {
  local name=$1 want have node="/dev/$1"
  want=$(sysdev "$name")
  if [ -b "$node" ]; then
    have=$(stat -c '%t %T' -- "$node" | { read -r ma mi; printf '%d:%d' "0x$ma" "0x$mi"; })
    [ "$have" = "$want" ] && return 0
    log "replacing stale device node $node ($have, kernel says $want)"
    rm -f -- "$node"
  fi
  log "creating device node $node ($want) with mknod (no udev)"
  mknod -m 0660 -- "$node" b "${want%%:*}" "${want##*:}"
}
# Processes holding a block device (major:minor) open, as "pid (command)" words: every
# /proc/<pid>/fd entry, compared by device number, so a node of another name or in another
# mount namespace counts too (what `fuser`/`lsof` would see, without needing them).
open_by() {
  local want=$1 hex pid
  hex=$(printf '%x:%x' "${want%%:*}" "${want##*:}")
  find /proc/[0-9]*/fd -mindepth 1 -maxdepth 1 -type l -print0 2>/dev/null \
    | xargs -0 -r stat -L -c '%t:%T %n %F' 2>/dev/null \
    | awk -v d="$hex" '$1 == d && $3 == "block" { split($2, p, "/"); print p[3] }' \
    | sort -un | while read -r pid; do
        printf '%s (%s) ' "$pid" "$(tr -d '\n' <"/proc/$pid/comm" 2>/dev/null || echo '?')"
      done
  return 0
}
# Is this block device (name) in use: mounted, swap, held by LVM/md/dm, backing a loop
# device, or open in any process?
in_use() {
  local name=$1 num bf procs
  num=$(sysdev "$name")
  if awk -v d="$num" '$3 == d { f = 1 } END { exit !f }' /proc/self/mountinfo; then
    USE="mounted at $(awk -v d="$num" '$3 == d { print $5; exit }' /proc/self/mountinfo)"; return 0
  fi
  if awk -v n="/dev/$name" 'NR > 1 && $1 == n { f = 1 } END { exit !f }' /proc/swaps 2>/dev/null; then
    USE="used as swap"; return 0
  fi
  if [ -n "$(ls -A "/sys/class/block/$name/holders" 2>/dev/null)" ]; then
    USE="held by $(ls "/sys/class/block/$name/holders" | tr '\n' ' ')"; return 0
  fi
  for bf in /sys/block/loop*/loop/backing_file; do
    [ -r "$bf" ] && [ "$(cat -- "$bf" 2>/dev/null)" = "/dev/$name" ] || continue
    USE="the backing file of $(basename -- "$(dirname -- "$(dirname -- "$bf")")")"; return 0
  done
  procs=$(open_by "$num")
  if [ -n "$procs" ]; then
    USE="open in process ${procs% }"; return 0
  fi
  return 1
}
describe() {
  local dev=$1 t l pt
  t=$(probe TYPE "$dev"); l=$(probe LABEL "$dev"); pt=$(probe PTTYPE "$dev")
  if [ -n "$t" ]; then printf 'a %s filesystem%s' "$t" "${l:+ labelled '$l'}"
  elif [ -n "$pt" ]; then printf 'a %s partition table with %s partition(s)' "$pt" "$(parts_of "$NAME" | wc -l)"
  else printf 'unrecognised data'; fi
}

DEV=$(readlink -f -- "$DEVICE" 2>/dev/null || true)
[ -n "$DEV" ] && [ -b "$DEV" ] || die "$DEVICE is not a block device on this host. Fix: set storage.device of host $HOST to the disk's link in /dev/disk/by-id (ls -l /dev/disk/by-id)"
NAME=$(basename -- "$DEV")
[ -e "/sys/class/block/$NAME" ] || die "no sysfs entry for $DEV"
WHOLE=1; [ -e "/sys/class/block/$NAME/partition" ] && WHOLE=0
log "device $DEVICE -> $DEV ($([ "$WHOLE" = 1 ] && echo 'whole disk' || echo partition)), $FSTYPE at $MP"

# Which block device does (or will) hold the filesystem, and in which state is it?
TARGET=""; STATE=""
if [ "$WHOLE" = 1 ]; then
  PT=$(probe PTTYPE "$DEV"); WFS=$(probe TYPE "$DEV")
  if [ -n "$PT" ] && [ -z "$(parts_of "$NAME")" ] && ! in_use "$NAME"; then
    partx -u -- "$DEV" 2>/dev/null || partx -a -- "$DEV" 2>/dev/null || true
  fi
  NPARTS=$(parts_of "$NAME" | wc -l)
  P1=$(part_number "$NAME" 1)
  if [ -n "$PT" ] && [ "$NPARTS" = 1 ] && [ -n "$P1" ]; then
    ensure_node "$P1"
    if [ "$(probe PART_ENTRY_NAME "/dev/$P1")" = "$LABEL" ]; then TARGET=$P1; fi
  fi
  if [ -z "$TARGET" ]; then
    if [ -z "$PT" ] && [ -z "$WFS" ] && [ -z "$(parts_of "$NAME")" ] \
      && [ -z "$(wipefs -n -- "$DEV" 2>/dev/null)" ]; then STATE=blank
    else STATE=foreign; FOREIGN=$(describe "$DEV"); fi
  fi
else
  TARGET=$NAME
fi
if [ -n "$TARGET" ]; then
  T_TYPE=$(probe TYPE "/dev/$TARGET"); T_LABEL=$(probe LABEL "/dev/$TARGET")
  if [ -z "$T_TYPE" ] && [ -z "$(wipefs -n -- "/dev/$TARGET" 2>/dev/null)" ]; then STATE=needs-mkfs
  elif [ "$T_TYPE" = "$FSTYPE" ] && [ "$T_LABEL" = "$LABEL" ]; then STATE=ours
  else STATE=foreign; FOREIGN=$(describe "/dev/$TARGET")
  fi
fi

ensure_fstab() {
  local uuid=$1 line tmp
  line="UUID=$uuid $MP $FSTYPE $OPTS 0 $PASSNO"
  [ -e "$FSTAB" ] || { mkdir -p -- "$(dirname -- "$FSTAB")"; : >"$FSTAB"; }
  # Keep every other line as it is; the first line for our mount point or our UUID becomes
  # ours, further ones are dropped (a second line for one mount point breaks boot order).
  tmp=$(mktemp -- "$FSTAB.vllm-cluster.XXXXXX")
  awk -v mp="$MP" -v u="UUID=$uuid" -v line="$line" -v gone=" $ERASED_UUIDS " '
    /^[[:space:]]*#/ || NF < 2 { print; next }
    $2 == mp || $1 == u { if (!done) print line; done = 1; next }
    $1 ~ /^UUID=/ && index(gone, " " substr($1, 6) " ") { next }
    { print }
    END { if (!done) print line }' "$FSTAB" >"$tmp"
  # Unchanged when exactly one line concerns our mount point / UUID and it is already ours.
  if awk -v mp="$MP" -v u="UUID=$uuid" -v fs="$FSTYPE" -v o="$OPTS" -v p="$PASSNO" -v gone=" $ERASED_UUIDS " '
       /^[[:space:]]*#/ || NF < 2 { next }
       $1 ~ /^UUID=/ && index(gone, " " substr($1, 6) " ") { n = 99 }
       $2 == mp || $1 == u { n++; if ($1 == u && $2 == mp && $3 == fs && $4 == o && $5 == "0" && $6 == p && NF == 6) ok++ }
       END { exit !(n == 1 && ok == 1) }' "$FSTAB"; then
    rm -f -- "$tmp"
    log "fstab $FSTAB already has: $line"
    FSTAB_STATE=unchanged
    return 0
  fi
  cp -p -- "$FSTAB" "$FSTAB.vllm-cluster.bak"
  chmod --reference="$FSTAB" -- "$tmp"
  chown --reference="$FSTAB" -- "$tmp" 2>/dev/null || true
  mv -f -- "$tmp" "$FSTAB"
  log "fstab $FSTAB: wrote $line (previous version in $FSTAB.vllm-cluster.bak)"
  FSTAB_STATE=written
}

finish() {
  local uuid=$1 formatted=$2
  printf '{"device":%s,"fs_device":%s,"uuid":%s,"filesystem":%s,"mount_point":%s,"formatted":%s,"fstab":%s}\n' \
    "$(jstr "$DEV")" "$(jstr "/dev/$TARGET")" "$(jstr "$uuid")" "$(jstr "$FSTYPE")" "$(jstr "$MP")" \
    "$formatted" "$(jstr "$FSTAB_STATE")"
}

ERASED_UUIDS=""
# One-shot: formatting needs allow_format, and happens at most once per device. The record
# is written before the first write to the disk ("started": a run that stops half-way may
# finish the job) and marked "formatted" after mkfs; after that, never again.
record_state() { sed -n 's/^state=//p' -- "$RECORD" 2>/dev/null | head -n 1; }
write_record() {
  mkdir -p -- "$(dirname -- "$RECORD")"
  chmod 0700 -- "$(dirname -- "$RECORD")"
  printf 'state=%s\ndevice=%s\nkernel_name=%s\nuuid=%s\ndate=%s\n' \
    "$1" "$DEVICE" "$DEV" "${2:-}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$RECORD.tmp"
  mv -f -- "$RECORD.tmp" "$RECORD"
}
# 1. Already mounted at the mount point?
if mountpoint -q -- "$MP" 2>/dev/null; then
  MOUNTED=$(mountpoint -d -- "$MP")
  if [ -n "$TARGET" ] && [ "$MOUNTED" = "$(sysdev "$TARGET")" ]; then
    UUID=$(probe UUID "/dev/$TARGET"); T_TYPE=$(probe TYPE "/dev/$TARGET")
    [ "$T_TYPE" = "$FSTYPE" ] || die "/dev/$TARGET is mounted at $MP but holds $T_TYPE, not $FSTYPE. Fix: set storage.filesystem of host $HOST to $T_TYPE, or choose another storage.mount_point"
    log "already prepared: /dev/$TARGET ($FSTYPE, UUID $UUID) is mounted at $MP; leaving it alone"
    [ "$(record_state)" = formatted ] || write_record formatted "$UUID"
    ensure_fstab "$UUID"
    finish "$UUID" false
    exit 0
  fi
  die "$MP already has another filesystem mounted (device $MOUNTED). Fix: choose another storage.mount_point, or unmount $MP"
fi

# 2. Never touch a device in use.
for n in "$NAME" $( [ "$WHOLE" = 1 ] && parts_of "$NAME" ); do
  if in_use "$n"; then
    if [ "$STATE" = ours ]; then
      die "/dev/$n holds our $FSTYPE filesystem but is $USE. Fix: set storage.mount_point of host $HOST to that path, or unmount it"
    fi
    die "/dev/$n is $USE; refusing to touch a device in use (allow_format does not override this). Fix: choose another storage.device, or stop what uses it"
  fi
done

FORMATTED=false
if [ "$STATE" = foreign ]; then
  die "$DEV holds $FOREIGN; refusing to format it (storage.allow_format formats only a blank device; it never erases data). Fix: choose another storage.device, or, if that data is really unwanted, erase it yourself (wipefs -a $DEV) and run pulumi up again"
fi

if [ "$STATE" = blank ] || [ "$STATE" = needs-mkfs ]; then
  WHAT=$([ "$STATE" = blank ] && echo "blank" || echo "our partition /dev/$TARGET without a filesystem")
  if [ "$(record_state)" = formatted ]; then
    die "$DEVICE ($DEV) is $WHAT, but this host formatted it once already ($(sed -n 's/^date=//p' -- "$RECORD")); refusing to format it again (allow_format is one-shot). Fix: find out what erased it; to format it anyway, remove $RECORD and run pulumi up again"
  fi
  if [ "$ALLOW_FORMAT" != 1 ]; then
    die "$DEVICE ($DEV) is $WHAT; refusing to format it without permission. Fix: set storage.allow_format: true for host $HOST (it formats a blank device once, never one holding data)"
  fi
  [ "$(record_state)" = started ] && log "finishing the format an earlier run started (record $RECORD)"
  write_record started
fi

if [ "$STATE" = blank ]; then
  tool=$PARTITIONER
  if [ "$tool" = auto ]; then
    if command -v sfdisk >/dev/null 2>&1; then tool=sfdisk
    elif command -v parted >/dev/null 2>&1; then tool=parted
    else die "neither sfdisk nor parted found. Fix: install fdisk (sfdisk) or parted"; fi
  fi
  log "writing a GPT with one partition '$LABEL' on $DEV ($tool)"
  case "$tool" in
    sfdisk)
      printf 'label: gpt\nname="%s", type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n' "$LABEL" \
        | sfdisk --quiet --wipe always --wipe-partitions always -- "$DEV" >/dev/null ;;
    parted)
      parted -s -a optimal -- "$DEV" mklabel gpt mkpart "$LABEL" "$FSTYPE" 1MiB 100% ;;
    *) die "unknown partitioner $tool" ;;
  esac
  # Make the kernel see the new partition: partx works on loop devices and in containers
  # where the re-read ioctl alone does not add partitions; udev (if any) then makes nodes.
  partx -u -- "$DEV" 2>/dev/null || partx -a -- "$DEV" 2>/dev/null || blockdev --rereadpt "$DEV" 2>/dev/null || true
  command -v udevadm >/dev/null 2>&1 && udevadm settle --timeout=10 2>/dev/null || true
  TARGET=""
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    TARGET=$(part_number "$NAME" 1)
    [ -n "$TARGET" ] && break
    sleep 1
  done
  [ -n "$TARGET" ] || die "partition 1 of $DEV did not appear in /sys/block/$NAME. Fix: run partprobe $DEV (or reboot) and re-run"
  ensure_node "$TARGET"
  if [ -n "$(wipefs -n -- "/dev/$TARGET" 2>/dev/null)" ]; then
    # Data from an earlier life of the disk at the same offset; blank only at the start.
    die "the new partition /dev/$TARGET shows $(describe "/dev/$TARGET") left from earlier use; refusing to format over it. Fix: check that nothing on $DEV is wanted, erase it yourself (wipefs -a /dev/$TARGET) and run pulumi up again"
  fi
  STATE=needs-mkfs
fi

if [ "$STATE" = needs-mkfs ]; then
  log "mkfs.$FSTYPE on /dev/$TARGET (label $LABEL)"
  case "$FSTYPE" in
    xfs) mkfs.xfs -q -f -L "$LABEL" -- "/dev/$TARGET" ;;
    ext4) mkfs.ext4 -q -F -L "$LABEL" -- "/dev/$TARGET" ;;
  esac
  FORMATTED=true
  STATE=ours
fi

[ "$STATE" = ours ] || die "internal: unexpected state $STATE"
UUID=$(probe UUID "/dev/$TARGET")
[ -n "$UUID" ] || die "no UUID on /dev/$TARGET after mkfs"
# Ours (formatted now, or by an earlier run or release): never format it again.
[ "$(record_state)" = formatted ] || write_record formatted "$UUID"
ensure_fstab "$UUID"
mkdir -p -- "$MP"
if [ -n "$(ls -A -- "$MP" 2>/dev/null)" ]; then
  log "note: $MP is not empty; its files are hidden while the disk is mounted over it"
fi
log "mounting /dev/$TARGET (UUID $UUID) at $MP"
mount -t "$FSTYPE" -o "$OPTS" -- "/dev/$TARGET" "$MP"
[ "$(mountpoint -d -- "$MP")" = "$(sysdev "$TARGET")" ] || die "mount of /dev/$TARGET at $MP did not take effect"
finish "$UUID" "$FORMATTED"
log "ok"
