#!/usr/bin/env bash
# The manual's procedure, scripted literally: what a person following the deployment manual
# does, one host after another, one step after another. It is the baseline `bench/run`
# compares `pulumi up` with, so it must do the same work as the program and nothing less:
# same image tarball, same weights at the same path, same container settings and engine
# command line as Pulumi.lab.yaml (TP from the stack, PP = number of hosts).
#
#   bench/manual.sh N          deploy on lab hosts 1..N, return when a chat completion answers
#   bench/manual.sh clean N    remove what the manual put on hosts 1..N (its containers, the
#                              loaded image, the weights); exit 3 when a host runs anyone
#                              else's container (then nothing is removed there)
#
# Run through tools/with-env (LAB_DIR, REPO_ROOT). Hosts, key and pinned host keys come from
# $LAB_DIR/inventory.json; MANUAL_LOCAL_MODEL overrides the model directory to copy (bench/run
# uses a 4-layer tiny model so that PP can reach 4). With MANUAL_STEPS_FILE set, one "step<TAB>host<TAB>seconds" line
# per step is appended there (bench/run reads it). N = 1 is the manual's single-node form
# (the API server in one container, no Ray), as the program does for one node.
set -euo pipefail

REPO_ROOT="${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
LAB_DIR="${LAB_DIR:-$REPO_ROOT/.lab}"
PY="$REPO_ROOT/.venv/bin/python"
STACK_FILE="${MANUAL_STACK_FILE:-$REPO_ROOT/Pulumi.lab.yaml}"
READY_TIMEOUT_S="${MANUAL_READY_TIMEOUT_S:-300}"
# Every container manual.sh starts carries this label (=manual); `clean` removes only those.
LABEL=vllm-cluster.bench

usage() {
  echo "usage: $0 N | $0 clean N   (N = number of lab hosts, 1..)" >&2
  exit 2
}

mode=deploy
if [ "${1:-}" = clean ]; then
  mode=clean
  shift
fi
if [ $# -ne 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then usage; fi
N=$1

# Settings: from the inventory (hosts, key) and the lab stack file (image, model, serving),
# read once with the project's Python, printed as shell assignments.
eval "$(
  "$PY" - "$LAB_DIR/inventory.json" "$STACK_FILE" "$REPO_ROOT" "$N" <<'EOF'
import json, os, shlex, sys
from pathlib import Path
import yaml

inventory = json.loads(Path(sys.argv[1]).read_text())
config = yaml.safe_load(Path(sys.argv[2]).read_text())["config"]
root, n = Path(sys.argv[3]), int(sys.argv[4])
hosts = inventory["hosts"]
if len(hosts) < n:
    sys.exit(f"manual.sh: the lab has {len(hosts)} host(s), {n} asked (lab/lab up {n})")
ns = "vllm-cluster:"
model, image = config[ns + "model"], config[ns + "image"]
serving = config[ns + "serving"]
out = {
    "SSH_KEY": inventory["ssh_private_key"],
    "KNOWN_HOSTS": inventory["known_hosts"],
    "IMAGE": image["name"],
    # The running lab's files when its inventory names them, as the e2e/bench stacks use.
    "TARBALL": (inventory.get("engine_image") or {}).get("tarball")
    or str((root / image["tarball"]).resolve()),
    "LOCAL_MODEL": os.environ.get("MANUAL_LOCAL_MODEL")
    or inventory.get("model_dir")
    or str((root / model["local_dir"]).resolve()),
    "MODEL_PATH": model["path"],
    "SERVED_NAME": model.get("served_name", model["path"]),
    "TP": str(serving.get("tensor_parallel_size", 1)),
    "MAX_MODEL_LEN": str(serving.get("max_model_len", 2048)),
    "MAX_NUM_SEQS": str(serving.get("max_num_seqs", 16)),
    "GPU_UTIL": str(serving.get("gpu_memory_utilization", 0.9)),
    "PORT": str(serving.get("port", 8000)),
    "RAY_PORT": str(serving.get("ray_port", 6379)),
}
for key, value in out.items():
    print(f"{key}={shlex.quote(value)}")
print("ADDRS=(" + " ".join(shlex.quote(h["address"]) for h in hosts[:n]) + ")")
print("NAMES=(" + " ".join(shlex.quote(h["name"]) for h in hosts[:n]) + ")")
print("NICS=(" + " ".join(shlex.quote(h.get("nic", "eth0")) for h in hosts[:n]) + ")")
print("USERS=(" + " ".join(shlex.quote(h.get("user", "root")) for h in hosts[:n]) + ")")
print("GPUS=(" + " ".join(str(h["gpu"]["count"]) for h in hosts[:n]) + ")")
env = " ".join(f"-e {shlex.quote(f'{k}={v}')}" for k, v in sorted((serving.get("extra_env") or {}).items()))
print(f"EXTRA_ENV={shlex.quote(env)}")
EOF
)"

SSH_OPTS=(-i "$SSH_KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes
  -o "UserKnownHostsFile=$KNOWN_HOSTS" -o ConnectTimeout=10)
# Where the manual puts the tarball on a host before `docker load` (removed after loading).
REMOTE_TAR=/root/$(basename "$TARBALL")

on() { # on INDEX CMD...: run a command on host INDEX (0-based) over ssh
  local i=$1
  shift
  # The command is one string that the host's shell parses (client-side expansion intended).
  # shellcheck disable=SC2029
  ssh "${SSH_OPTS[@]}" "${USERS[$i]}@${ADDRS[$i]}" "$@"
}

log() { echo "manual: $*" >&2; }

step_started=0
step() { # step NAME HOST: start timing a step
  step_name=$1 step_host=$2 step_started=$(date +%s.%N)
  log "$step_host: $step_name"
}
step_done() {
  local secs
  secs=$(awk -v a="$step_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  log "$step_host: $step_name done in ${secs}s"
  if [ -n "${MANUAL_STEPS_FILE:-}" ]; then
    printf '%s\t%s\t%s\n' "$step_name" "$step_host" "$secs" >>"$MANUAL_STEPS_FILE"
  fi
}

clean() {
  local i rc=0
  for ((i = 0; i < N; i++)); do
    # The lab is shared: a host running anyone else's container is left alone (exit 3, the
    # caller waits and retries). Only manual.sh's containers (by label), our image tag, our
    # model path and our copied tarball are removed; `pulumi destroy` removes the program's.
    if ! on "$i" "others=\$(docker ps --format '{{.Names}} {{.Label \"$LABEL\"}}' |
        awk '\$2 != \"manual\" { print \$1 }')
      if [ -n \"\$others\" ]; then echo \"busy: \$others\" >&2; exit 3; fi
      docker ps -aq --filter label=$LABEL=manual | xargs -r docker rm -f >/dev/null
      docker image rm -f $(printf %q "$IMAGE") >/dev/null 2>&1 || true
      rm -rf -- $(printf %q "$MODEL_PATH") $(printf %q "$REMOTE_TAR")"; then
      log "${NAMES[$i]}: in use by someone else, not cleaned"
      rc=3
      continue
    fi
    log "${NAMES[$i]}: clean (no manual container, no $IMAGE, no $MODEL_PATH)"
  done
  return "$rc"
}

# Environment every engine container gets (the manual's `-e` list; the program sets the same).
node_env() { # node_env INDEX
  local i=$1
  printf '%s ' -e "VLLM_HOST_IP=${ADDRS[$i]}" -e "NCCL_SOCKET_IFNAME=${NICS[$i]}" \
    -e "GLOO_SOCKET_IFNAME=${NICS[$i]}" -e HF_HUB_OFFLINE=1 -e TRANSFORMERS_OFFLINE=1
  if [ "$N" -gt 1 ]; then
    printf '%s ' -e "RAY_NODE_IP_ADDRESS=${ADDRS[$i]}" -e RAY_memory_monitor_refresh_ms=0 \
      -e RAY_USAGE_STATS_ENABLED=0
  fi
  printf '%s ' "$EXTRA_ENV"
}

# The manual's container flags: host network, host IPC, all GPUs, the weights read-only at
# the same path on every node.
RUN_FLAGS="-d --network host --ipc host --gpus all -v $MODEL_PATH:$MODEL_PATH:ro"
RUN_FLAGS+=" --label $LABEL=manual"

server_argv() {
  local argv="python3 -m vllm.entrypoints.openai.api_server --model $MODEL_PATH"
  argv+=" --served-model-name $SERVED_NAME --host 0.0.0.0 --port $PORT"
  argv+=" --tensor-parallel-size $TP --pipeline-parallel-size $N"
  argv+=" --max-model-len $MAX_MODEL_LEN --max-num-seqs $MAX_NUM_SEQS"
  argv+=" --gpu-memory-utilization $GPU_UTIL"
  [ "$N" -eq 1 ] || argv+=" --distributed-executor-backend ray"
  echo "$argv"
}

deploy() {
  local i key deadline
  # A throwaway key for this run (the manual: "export VLLM_API_KEY=..."); it protects nothing.
  key="bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  tmp=$(mktemp -d) # global: the EXIT trap runs after deploy() has returned
  trap 'rm -rf "$tmp"' EXIT

  # 1. Every host in turn: copy the image tarball, docker load it; copy the weights.
  for ((i = 0; i < N; i++)); do
    step image-copy "${NAMES[$i]}"
    scp -q "${SSH_OPTS[@]}" "$TARBALL" "${USERS[$i]}@${ADDRS[$i]}:$REMOTE_TAR"
    step_done
    step image-load "${NAMES[$i]}"
    on "$i" "docker load -i $REMOTE_TAR >/dev/null && rm -f $REMOTE_TAR"
    step_done
    step weights-copy "${NAMES[$i]}"
    on "$i" "mkdir -p $(dirname "$MODEL_PATH")"
    scp -q -r "${SSH_OPTS[@]}" "$LOCAL_MODEL" "${USERS[$i]}@${ADDRS[$i]}:$MODEL_PATH"
    step_done
  done

  if [ "$N" -eq 1 ]; then
    # 2. One node: the API server is the container's program.
    step server-run "${NAMES[0]}"
    # shellcheck disable=SC2046  # node_env is a list of words
    on 0 "docker run $RUN_FLAGS --name vllm-server $(node_env 0) -e VLLM_API_KEY=$key \
      $IMAGE $(server_argv)" >/dev/null
    step_done
  else
    # 2. The Ray head on host 1, then each worker in turn, as the manual's docker run lines.
    step ray-head-run "${NAMES[0]}"
    on 0 "docker run $RUN_FLAGS --name vllm-ray-head $(node_env 0) -e VLLM_API_KEY=$key \
      --entrypoint ray $IMAGE start --head --block --port=$RAY_PORT \
      --node-ip-address=${ADDRS[0]} --num-gpus=${GPUS[0]} --disable-usage-stats" >/dev/null
    step_done
    for ((i = 1; i < N; i++)); do
      step ray-worker-run "${NAMES[$i]}"
      on "$i" "docker run $RUN_FLAGS --name vllm-ray-worker $(node_env "$i") \
        --entrypoint ray $IMAGE start --block --address=${ADDRS[0]}:$RAY_PORT \
        --node-ip-address=${ADDRS[$i]} --num-gpus=${GPUS[$i]} --disable-usage-stats" >/dev/null
      step_done
    done
    # 3. `ray status` on the head until every node's GPUs are in the cluster.
    local total=0
    for ((i = 0; i < N; i++)); do total=$((total + GPUS[i])); done
    step ray-status "${NAMES[0]}"
    deadline=$((SECONDS + READY_TIMEOUT_S))
    until on 0 "docker exec vllm-ray-head ray status 2>/dev/null" | grep -q "/$total.0 GPU"; do
      [ "$SECONDS" -lt "$deadline" ] || {
        log "Ray cluster did not show $total GPUs"
        exit 1
      }
      sleep 1
    done
    step_done
    # 4. The API server on the head, in the background (docker exec -d, as `nohup ... &`).
    step server-exec "${NAMES[0]}"
    on 0 "docker exec -d vllm-ray-head sh -c 'exec $(server_argv) >/tmp/api_server.log 2>&1'"
    step_done
  fi

  # 5. Poll until a chat completion answers (the manual's curl), from the operator machine.
  step first-answer "${NAMES[0]}"
  printf 'Authorization: Bearer %s\n' "$key" >"$tmp/hdr"
  local body url="http://${ADDRS[0]}:$PORT/v1/chat/completions"
  body=$(printf '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}' \
    "$SERVED_NAME")
  deadline=$((SECONDS + READY_TIMEOUT_S))
  until curl -sf -m 10 -H @"$tmp/hdr" -H 'Content-Type: application/json' -d "$body" \
    "$url" >"$tmp/answer" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || {
      log "no answer from $url after ${READY_TIMEOUT_S}s"
      exit 1
    }
    sleep 1
  done
  step_done
  log "answer: $(head -c 300 "$tmp/answer")"
}

if [ "$mode" = clean ]; then
  clean
else
  deploy
fi
