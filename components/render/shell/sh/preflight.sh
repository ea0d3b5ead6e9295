# shellcheck shell=bash
# Fragment (preflight): included after the variables set by components/render/shell; not run alone.
PROBLEMS=()
problem() { PROBLEMS+=("$1. Fix: $2"); }
warn() { printf 'preflight %s: warning: %s\n' "$HOST" "$*" >&2; }
gib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1073741824 }'; }
trim() { local s=$1; s=${s#"${s%%[![:space:]]*}"}; s=${s%"${s##*[![:space:]]}"}; printf '%s' "$s"; }
join_json() { local out="" v; for v in "$@"; do out+="${out:+,}$(jstr "$v")"; done; printf '[%s]' "$out"; }
FACTS=()
fact() { FACTS+=("$(jstr "$1"):$2"); }

log "checking (read-only)"

# --- commands later steps need -------------------------------------------------------
MISSING=()
for i in "${!REQUIRED[@]}"; do
  if ! command -v "${REQUIRED[$i]}" >/dev/null 2>&1; then
    MISSING+=("${REQUIRED[$i]}")
    problem "command ${REQUIRED[$i]} not found" "${REQUIRED_HINT[$i]}"
  fi
done
if command -v python3 >/dev/null 2>&1; then
  fact python3 "$(jstr "$(python3 -c 'import platform; print(platform.python_version())' 2>/dev/null || true)")"
else
  fact python3 null
fi

# --- GPUs --------------------------------------------------------------------------
GPU_NAMES=(); GPU_MIB=(); DRIVER=""; SMI_OK=0
if command -v nvidia-smi >/dev/null 2>&1; then
  # Parse stdout only: notices on stderr (the lab's fake marks itself SIMULATED there) must
  # not become GPU rows. stderr is kept for the message when nvidia-smi fails.
  SMI_ERR=$(mktemp)
  if CSV=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits 2>"$SMI_ERR"); then
    SMI_OK=1
    rm -f "$SMI_ERR"
    while IFS=, read -r name mib drv; do
      [ -n "$(trim "$name")" ] || continue
      GPU_NAMES+=("$(trim "$name")")
      GPU_MIB+=("$(trim "$mib")")
      DRIVER=$(trim "$drv")
    done <<<"$CSV"
  else
    CSV="$(cat "$SMI_ERR")${CSV:+ $CSV}"
    rm -f "$SMI_ERR"
    problem "nvidia-smi failed: $(printf '%s' "$CSV" | head -n 1)" \
      "make nvidia-smi work on this host (NVIDIA driver loaded, GPUs visible)"
  fi
elif [ "$GPU_CHECK" = 1 ]; then
  problem "nvidia-smi not found" "install the NVIDIA driver (nvidia-smi must be on PATH)"
fi
COUNT=${#GPU_NAMES[@]}
if [ "$COUNT" -gt 0 ]; then
  log "gpus: $COUNT x ${GPU_NAMES[0]}, ${GPU_MIB[0]} MiB each, driver ${DRIVER:-?}"
fi
if [ "$GPU_CHECK" = 1 ] && [ "$SMI_OK" = 1 ]; then
  if [ "$COUNT" -ne "$EXP_COUNT" ]; then
    problem "found $COUNT GPUs, the config expects $EXP_COUNT" \
      "set gpus.count of host $HOST to $COUNT, or check the missing GPUs (nvidia-smi -L)"
  fi
  BAD_MODELS=(); BAD_MEM=()
  for i in "${!GPU_NAMES[@]}"; do
    n=${GPU_NAMES[$i]}; m=${GPU_MIB[$i]}
    if [[ "${n,,}" != *"${EXP_MODEL,,}"* ]]; then
      BAD_MODELS+=("GPU$i=$n")
    fi
    if ! [[ "$m" =~ ^[0-9]+$ ]]; then
      BAD_MEM+=("GPU$i=$m(not a number)")
    else
      d=$(( m - EXP_MIB )); [ "$d" -ge 0 ] || d=$(( -d ))
      if [ $(( d * 10000 )) -gt $(( EXP_MIB * TOL_BP )) ]; then
        BAD_MEM+=("GPU$i=$(awk -v m="$m" 'BEGIN { printf "%.1f", m / 1024 }')GiB")
      fi
    fi
  done
  if [ "${#BAD_MODELS[@]}" -gt 0 ]; then
    problem "GPU model does not contain '$EXP_MODEL': $(IFS=,; echo "${BAD_MODELS[*]}")" \
      "set gpus.model of host $HOST to part of the name nvidia-smi reports ('${GPU_NAMES[0]}')"
  fi
  if [ "${#BAD_MEM[@]}" -gt 0 ]; then
    problem "GPU memory differs from the configured $EXP_GIB GiB by more than $TOL_PCT%: $(IFS=,; echo "${BAD_MEM[*]}")" \
      "set gpus.memory_gib of host $HOST to what nvidia-smi reports (memory.total MiB / 1024)"
  fi
  if [ "$COUNT" -gt 0 ] && [ -z "$DRIVER" ]; then
    problem "nvidia-smi reports no driver version" "reinstall the NVIDIA driver"
  fi
fi
GPUS_JSON=""
for i in "${!GPU_NAMES[@]}"; do
  mib=${GPU_MIB[$i]}; [[ "$mib" =~ ^[0-9]+$ ]] || mib=$(jstr "$mib")
  GPUS_JSON+="${GPUS_JSON:+,}{\"name\":$(jstr "${GPU_NAMES[$i]}"),\"memory_mib\":$mib}"
done
fact gpu_count "$COUNT"
fact gpus "[$GPUS_JSON]"
fact driver_version "$(jstr "$DRIVER")"

# --- Docker and GPU support in Docker --------------------------------------------------
DOCKER_VERSION=""; GPU_SUPPORT=""
if command -v docker >/dev/null 2>&1; then
  if DV=$(docker version --format '{{.Server.Version}}' 2>/dev/null) && [ -n "$DV" ]; then
    DOCKER_VERSION=$DV
    log "docker: server $DOCKER_VERSION"
    RUNTIMES=$(docker info --format '{{json .Runtimes}}' 2>/dev/null || true)
    if [[ "$RUNTIMES" == *nvidia* ]]; then
      GPU_SUPPORT="nvidia-runtime"
    elif command -v nvidia-container-runtime-hook >/dev/null 2>&1; then
      # dockerd serves `--gpus` through this hook even without a registered runtime.
      GPU_SUPPORT="nvidia-container-runtime-hook"
    else
      problem "Docker cannot start GPU containers: no nvidia runtime in docker info and no nvidia-container-runtime-hook" \
        "install nvidia-container-toolkit, run nvidia-ctk runtime configure --runtime=docker, restart docker"
    fi
  else
    problem "docker is installed but the daemon does not answer: $(docker version 2>&1 >/dev/null | head -n 1)" \
      "start Docker (systemctl start docker) and check that this user may use it"
  fi
elif [ "$DOCKER_OPTIONAL" = 1 ]; then
  warn "docker not installed; the docker step installs it (docker.install)"
else
  problem "docker not found" "install Docker, or set docker.install: true with docker.deb_dir"
fi
fact docker_version "$(jstr "$DOCKER_VERSION")"
fact docker_gpu_support "$(jstr "$GPU_SUPPORT")"

# --- disk for the weights ---------------------------------------------------------------
P=$WEIGHTS_PATH
while [ ! -e "$P" ]; do P=$(dirname -- "$P"); done
AVAIL=$(df -P -B1 -- "$P" | awk 'NR == 2 { print $4 }')
DISK_SOURCE="df:$P"
if [ -n "$STORAGE_MP" ] && [ -n "$STORAGE_DEVICE" ] \
  && [[ "$WEIGHTS_PATH/" == "$STORAGE_MP/"* ]] && ! mountpoint -q -- "$STORAGE_MP" 2>/dev/null; then
  # The storage step will mount a fresh disk there; its size is what the weights get.
  # No `--`: blockdev takes it for a command, prints the size and then exits 1 (the device
  # is an absolute /dev path, validated by the renderer: it cannot look like an option).
  if DEVSIZE=$(blockdev --getsize64 "$STORAGE_DEVICE" 2>/dev/null); then
    AVAIL=$DEVSIZE; DISK_SOURCE="device:$STORAGE_DEVICE"
  else
    problem "storage.device $STORAGE_DEVICE is not a readable block device" \
      "set storage.device of host $HOST to an existing disk (lsblk)"
  fi
fi
EXISTING=0
if [ -d "$WEIGHTS_PATH" ]; then EXISTING=$(du -sb -- "$WEIGHTS_PATH" | cut -f1); fi
STILL=$(( NEEDED_BYTES - EXISTING )); [ "$STILL" -ge 0 ] || STILL=0
log "disk: $(gib "$AVAIL") GiB free ($DISK_SOURCE), weights need $(gib "$STILL") GiB more"
if [ "$NEEDED_BYTES" -gt 0 ] && [ "$AVAIL" -lt "$STILL" ]; then
  problem "only $(gib "$AVAIL") GiB free at $P, the weights need $(gib "$STILL") GiB more" \
    "free space there, or prepare a larger disk (storage.device, storage.mount_point) and put model.path on it"
fi
fact weights_path "$(jstr "$WEIGHTS_PATH")"
fact disk_path "$(jstr "$P")"
fact disk_source "$(jstr "$DISK_SOURCE")"
fact disk_avail_bytes "$AVAIL"
fact weights_existing_bytes "$EXISTING"

# --- /dev/shm ---------------------------------------------------------------------------
SHM=$(df -P -B1 /dev/shm 2>/dev/null | awk 'NR == 2 { print $2 }')
SHM=${SHM:-0}
log "/dev/shm: $(gib "$SHM") GiB"
if [ "$MIN_SHM" -gt 0 ] && [ "$SHM" -lt "$MIN_SHM" ]; then
  if [ "$IPC_HOST" = 1 ]; then
    problem "/dev/shm is $(gib "$SHM") GiB, below $(gib "$MIN_SHM") GiB (the engine shares it with --ipc host)" \
      "enlarge it: mount -o remount,size=$(( MIN_SHM / 1073741824 ))G /dev/shm (and in /etc/fstab)"
  else
    warn "/dev/shm is $(gib "$SHM") GiB; not used by the engine (it gets its own shm_size_gib)"
  fi
fi
fact shm_bytes "$SHM"

# --- NIC and address (NCCL / GLOO / Ray bind here) -------------------------------------------
NIC_IPS=(); ADDR_IPS=()
if NIC_OUT=$(ip -o addr show dev "$NIC" 2>&1); then
  while read -r _ _ fam cidr _; do
    case "$fam" in inet|inet6) NIC_IPS+=("${cidr%/*}") ;; esac
  done <<<"$NIC_OUT"
  log "nic $NIC: ${NIC_IPS[*]:-no addresses}"
  if [ "${#NIC_IPS[@]}" -eq 0 ]; then
    problem "network interface $NIC has no IP address" "configure $NIC, or set nic of host $HOST to the LAN interface"
  fi
  if [ "$MULTI_NODE" = 1 ] && [ "$NIC" = lo ]; then
    problem "nic is the loopback interface; NCCL/GLOO/Ray would not reach other nodes" \
      "set nic of host $HOST to the interface on the cluster network"
  fi
  if ip -o link show dev "$NIC" 2>/dev/null | grep -q 'state DOWN'; then
    problem "network interface $NIC is down" "bring it up (ip link set $NIC up) or choose another nic"
  fi
else
  ALL_NICS=$(ip -o link show 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); printf "%s ", $2 }')
  problem "network interface $NIC not found (this host has: ${ALL_NICS% })" \
    "set nic of host $HOST to one of those interfaces"
fi
if [ -n "$ADDRESS" ]; then
  if [ "$ADDRESS_IS_IP" = 1 ]; then
    ADDR_IPS=("$ADDRESS")
  else
    while read -r ipaddr _; do
      [[ " ${ADDR_IPS[*]-} " == *" $ipaddr "* ]] || ADDR_IPS+=("$ipaddr")
    done < <(getent ahosts "$ADDRESS" 2>/dev/null || true)
    if [ "${#ADDR_IPS[@]}" -eq 0 ]; then
      problem "address $ADDRESS does not resolve on this host" \
        "add it to DNS or /etc/hosts on every node, or use the IP address"
    fi
  fi
  MATCH=""
  for a in "${ADDR_IPS[@]}"; do
    for n in "${NIC_IPS[@]}"; do
      if [ "${a,,}" = "${n,,}" ]; then MATCH=$a; fi
    done
  done
  if [ "${#NIC_IPS[@]}" -gt 0 ] && [ "${#ADDR_IPS[@]}" -gt 0 ] && [ -z "$MATCH" ]; then
    HOLDER=""
    for a in "${ADDR_IPS[@]}"; do
      h=$(ip -o addr show 2>/dev/null | awk -v a="$a" '{ split($4, c, "/"); if (c[1] == a) print $2 }' | head -n 1)
      [ -z "$h" ] || HOLDER=$h
    done
    if [ -n "$HOLDER" ]; then
      problem "address $ADDRESS (${ADDR_IPS[*]}) is on $HOLDER, not on nic $NIC (${NIC_IPS[*]})" \
        "set nic of host $HOST to $HOLDER"
    else
      problem "address $ADDRESS (${ADDR_IPS[*]}) is not on nic $NIC (${NIC_IPS[*]}) nor any other interface" \
        "use the host's own LAN address as address (NAT/floating addresses break Ray and NCCL)"
    fi
  fi
fi
fact nic "$(jstr "$NIC")"
fact nic_ips "$(join_json "${NIC_IPS[@]}")"
fact address_ips "$(join_json "${ADDR_IPS[@]}")"

# --- containers under our names ---------------------------------------------------------
# A container under one of our names that another stack (or a person) made would make
# docker's create fail with a bare name conflict, or hold this host's GPUs and ports. Ours
# carry OWNER_LABEL; an unlabelled one made by this tool predates that label and is taken as
# ours, as before (a stack upgraded in place re-runs preflight beside its own containers).
CONTAINERS_JSON=""
RUNNING_OWN=""  # the last running container under our names: it may hold the ports below
if [ -n "$DOCKER_VERSION" ]; then
  for c in "${OWN_CONTAINERS[@]}"; do
    info=$(docker container inspect -f \
      "{{with .Config.Labels}}{{index . \"managed-by\"}}|{{index . \"$OWNER_LABEL\"}}{{else}}|{{end}}|{{.State.Status}}" \
      "$c" 2>/dev/null) || continue
    IFS='|' read -r managed owner status <<<"$info"
    if [ -n "$owner" ] && [ "$owner" = "$OWNER" ]; then
      state=ours
    elif [ -z "$owner" ] && [ "$managed" = vllm-cluster ]; then
      state=ours-unlabelled
    elif [ -n "$owner" ]; then
      state="stack:$owner"
      problem "container $c ($status) belongs to stack $owner, not to $OWNER" \
        "destroy that stack first (pulumi destroy --stack ${owner#*/} in its project), or remove the container: docker rm -f $c"
    else
      state=foreign
      problem "container $c ($status) exists and was not made by vllm-cluster" \
        "remove or rename it (docker rm -f $c): this deployment needs the name, and an engine of its own would share the GPUs"
    fi
    # What `docker ps` lists: paused and restarting containers keep their ports.
    case "$status" in running | paused | restarting) RUNNING_OWN=$c ;; esac
    log "container $c: $state ($status)"
    CONTAINERS_JSON+="${CONTAINERS_JSON:+,}$(jstr "$c"):$(jstr "$state")"
  done
fi
fact containers "{$CONTAINERS_JSON}"

# --- ports ------------------------------------------------------------------------------
PORTS_JSON=""
LISTEN=$(ss -ltn 2>/dev/null | awk 'NR > 1 { print $4 }' || true)
for port in "${PORTS[@]}"; do
  state=free
  if printf '%s\n' "$LISTEN" | grep -Eq ":$port\$"; then
    state=busy
    [ -z "$RUNNING_OWN" ] || state="ours:$RUNNING_OWN"
    if [ "$state" = busy ]; then
      who=$(ss -ltnp "sport = :$port" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n 1 || true)
      problem "port $port is already in use${who:+ by $who}" \
        "stop what listens on it, or choose another port (serving.port / serving.ray_port)"
    fi
  fi
  log "port $port: $state"
  PORTS_JSON+="${PORTS_JSON:+,}$(jstr "$port"):$(jstr "$state")"
done
fact ports "{$PORTS_JSON}"

fact host "$(jstr "$HOST")"
fact hostname "$(jstr "$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)")"
fact kernel "$(jstr "$(uname -r)")"
for i in "${!EXTRA_KEYS[@]}"; do fact "${EXTRA_KEYS[$i]}" "$(jstr "${EXTRA_VALUES[$i]}")"; done

if [ "${#PROBLEMS[@]}" -gt 0 ]; then
  for p in "${PROBLEMS[@]}"; do printf 'preflight %s: %s\n' "$HOST" "$p" >&2; done
  log "FAILED with ${#PROBLEMS[@]} problem(s)"
  exit 1
fi
OUT=""
for f in "${FACTS[@]}"; do OUT+="${OUT:+,}$f"; done
printf '{%s}\n' "$OUT"
log "ok"
