#!/usr/bin/env bash
# Lab host entrypoint (runs under `docker run --init`, which reaps zombies and forwards
# signals). Prepares the per-host identity, then supervises sshd and the host's own dockerd
# (and lab-devd when a spare disk is attached) until the container is stopped.
#
# Environment (set by lab/host/labctl.py at `docker run`):
#   LAB_AUTHORIZED_KEY  the lab's SSH public key, authorized for root
#   LAB_GPUS_JSON       the simulated GPU setup, written to /etc/lab/gpus.json at every boot
#   LAB_SPARE_DISK      optional block device passed in (e.g. /dev/loop3)
set -euo pipefail

mkdir -p /run/sshd /etc/lab /root/.ssh /var/log
chmod 0700 /root/.ssh
if [[ -n "${LAB_AUTHORIZED_KEY:-}" ]]; then
  printf '%s\n' "$LAB_AUTHORIZED_KEY" >/root/.ssh/authorized_keys
  chmod 0600 /root/.ssh/authorized_keys
fi
# Generated once per host (the container keeps it across restarts); lab up publishes it.
if [[ ! -s /etc/ssh/ssh_host_ed25519_key ]]; then
  ssh-keygen -q -t ed25519 -N '' -C "root@$(hostname)" -f /etc/ssh/ssh_host_ed25519_key
fi
if [[ -n "${LAB_GPUS_JSON:-}" ]]; then
  printf '%s\n' "$LAB_GPUS_JSON" >/etc/lab/gpus.json
fi
if [[ ! -s /etc/machine-id ]]; then
  tr -d '-' </proc/sys/kernel/random/uuid >/etc/machine-id
fi

# Put the inner containers' cgroups under this host's own cgroup (the host's /sys/fs/cgroup is
# the machine's, shared), so the memory and CPU they use are charged to this host and show in
# `docker stats vllm-lab-N` on the machine. A private cgroup namespace shows "/": keep default.
dockerd_args=()
own_cgroup="$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3} $1 == "0" && $2 == "" {print $3}' \
  /proc/self/cgroup | head -n1)"
if [[ -n "$own_cgroup" && "$own_cgroup" != "/" ]]; then
  dockerd_args+=("--cgroup-parent=${own_cgroup%/}/lab-inner")
fi

stopping=/run/lab-stopping
rm -f "$stopping"

# supervise NAME CMD...: run CMD, restart it when it exits unexpectedly (so `kill` of dockerd
# works as a restart, e.g. after a config change), stop it on SIGTERM.
supervise() {
  local name="$1"
  shift
  local child=""
  trap '[[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null; [[ -n "$child" ]] && wait "$child"; exit 0' TERM
  while :; do
    "$@" >>"/var/log/$name.log" 2>&1 &
    child=$!
    wait "$child" || true
    [[ -e "$stopping" ]] && exit 0
    echo "lab-host: $name exited; restarting in 1 s" >>"/var/log/$name.log"
    sleep 1
  done
}

pids=()
supervise dockerd dockerd "${dockerd_args[@]}" &
pids+=($!)
supervise sshd /usr/sbin/sshd -D -e &
pids+=($!)
if [[ -n "${LAB_SPARE_DISK:-}" ]]; then
  supervise lab-devd /usr/local/sbin/lab-devd "$LAB_SPARE_DISK" &
  pids+=($!)
fi

shutdown() {
  touch "$stopping"
  # dockerd stops its containers on SIGTERM; give it the time `docker stop -t` allows.
  kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap shutdown TERM INT

for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" || true
  done
done
