"""Where the LAB STAND-IN's (test fixture, not vLLM) TP x PP workers run.

vLLM's rule: when TP x PP fits the GPUs of this node and Ray is not asked for, the workers are
local processes; otherwise (or with ``--distributed-executor-backend ray``) vLLM joins the Ray
cluster that ``ray start`` made, asks for a placement group of one ``{"GPU": 1}`` bundle per
worker (the first pinned to this node) and waits for Ray to grant it. The stand-in does the
same with real Ray: its workers are real Ray actors holding one GPU each, so ``ray status`` shows
the GPUs in use, a second server cannot take them, and the node IPs it reports are the nodes Ray
really placed the workers on. Local GPUs are counted with ``nvidia-smi -L``, which the lab's fake
NVIDIA runtime injects into containers started with ``--gpus``.

vLLM's own multi-node launcher (``--nnodes N --node-rank R --master-addr A --master-port P``,
mp executor, no Ray): every node runs TP x PP / N ranks on its own GPUs; rank 0 hosts the
rendezvous on the master port and waits until every node has joined, the others connect to it
and stay connected. The stand-in does that over a real TCP connection per node (one JSON line
each way, then held open): rank 0 names the nodes that never joined, and either side dies
when the other's connection drops, as torch.distributed does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vllm.args import ServeConfig, StartupError
from vllm.logger import init_logger

logger = init_logger(__name__)

DEFAULT_RAY_WAIT_S = 120.0
DEFAULT_JOIN_WAIT_S = 120.0
HEALTH_CHECK_INTERVAL_S = 5.0


@dataclass(frozen=True)
class Worker:
    rank: int
    node_ip: str
    gpu_ids: tuple[str, ...]


@dataclass
class Placement:
    """The result: ``mode`` is "local" or "ray"; ``workers`` in rank order (TP-major within
    each PP stage, as vLLM assigns ranks to bundles)."""

    mode: str
    workers: list[Worker]
    _ray: Any = field(default=None, repr=False)
    _actors: list[Any] = field(default_factory=list, repr=False)
    _placement_group: Any = field(default=None, repr=False)
    # mp multi-node: rank 0 holds one connection per other node, a headless node one to
    # rank 0; (label, socket).
    _links: list[tuple[str, socket.socket]] = field(default_factory=list, repr=False)

    @property
    def node_ips(self) -> list[str]:
        seen: list[str] = []
        for worker in self.workers:
            if worker.node_ip not in seen:
                seen.append(worker.node_ip)
        return seen

    def describe(self) -> str:
        return "local" if self.mode == "local" else ",".join(self.node_ips)

    @property
    def spans_nodes(self) -> bool:
        return self.mode in ("ray", "multinode")

    def check_workers(self, timeout_s: float = 10.0) -> None:
        """Raise when a Ray worker is gone (its node died or left): vLLM's engine dies then."""
        if self.mode != "ray" or self._ray is None:
            return
        self._ray.get([actor.ping.remote() for actor in self._actors], timeout=timeout_s)

    def release(self) -> None:
        for _, link in self._links:
            link.close()
        if self._ray is None:
            return
        try:
            for actor in self._actors:
                self._ray.kill(actor)
            if self._placement_group is not None:
                self._ray.util.remove_placement_group(self._placement_group)
            self._ray.shutdown()
        except Exception as exc:  # best effort on the way out; the cluster frees them anyway
            logger.warning("Releasing the Ray placement group failed: %s", exc)


def count_local_gpus() -> int:
    """GPUs visible to this container, as ``nvidia-smi -L`` lists them (0 without the tool)."""
    try:
        result = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        )
    except (FileNotFoundError, PermissionError):
        return 0
    except subprocess.TimeoutExpired:
        logger.warning("nvidia-smi -L did not answer within 20 s; assuming no local GPU")
        return 0
    if result.returncode != 0:
        logger.warning("nvidia-smi -L failed (%d): %s", result.returncode, result.stderr.strip())
        return 0
    return sum(1 for line in result.stdout.splitlines() if line.startswith("GPU "))


def place_workers(cfg: ServeConfig) -> Placement:
    world = cfg.world_size
    local = count_local_gpus()
    logger.info("Local GPUs (nvidia-smi -L): %d; TP x PP = %d", local, world)
    if cfg.nnodes > 1:
        return _place_on_nodes(cfg, local)
    if cfg.distributed_executor_backend != "ray" and world <= local:
        backend = "uni" if world == 1 else "mp"
        logger.info("Using the %s executor on this node (no Ray).", backend)
        return Placement("local", [Worker(r, "local", (str(r),)) for r in range(world)])
    if cfg.distributed_executor_backend in ("mp", "uni"):
        # vLLM's mp/uni executors are single-node: more workers than local GPUs cannot start.
        raise StartupError(
            f"World size ({world}) is larger than the number of available GPUs ({local}) in "
            f"this node. The {cfg.distributed_executor_backend} executor is single-node; use "
            "--distributed-executor-backend ray for multi-node serving."
        )
    return _place_on_ray(cfg, local)


def _place_on_ray(cfg: ServeConfig, local_gpus: int) -> Placement:
    world = cfg.world_size
    try:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    except ImportError as exc:
        raise StartupError(
            f"Unable to load Ray: {exc}. Ray is required for multi-node inference, "
            "please install Ray with `pip install ray`."
        ) from exc
    try:
        wait_s = max(0.0, float(os.environ.get("VLLM_STANDIN_RAY_WAIT_S", DEFAULT_RAY_WAIT_S)))
    except ValueError:
        wait_s = DEFAULT_RAY_WAIT_S
    deadline = time.monotonic() + wait_s
    try:
        # Inside a container where `ray start` ran, "auto" finds that cluster, as in vLLM.
        ray.init(address="auto", logging_level="WARNING", log_to_driver=False)
    except ConnectionError as exc:
        raise StartupError(
            f"TP x PP = {world} needs more GPUs than this node has ({local_gpus}) and no Ray "
            f"cluster is running here to provide them: {exc}",
            kind="RuntimeError",
        ) from exc
    logger.info("Connected to Ray cluster: %s", _describe_nodes(ray))

    driver_ip = os.environ.get("VLLM_HOST_IP") or ray.util.get_node_ip_address()
    specs: list[dict[str, float]] = [{"GPU": 1.0} for _ in range(world)]
    specs[0][f"node:{driver_ip}"] = 0.001

    def fail(reason: str) -> StartupError:
        total = ray.cluster_resources().get("GPU", 0.0)
        free = ray.available_resources().get("GPU", 0.0)
        message = (
            f"{reason} Required GPUs: {world} (tensor_parallel_size="
            f"{cfg.tensor_parallel_size} x pipeline_parallel_size={cfg.pipeline_parallel_size}"
            f"); GPUs in the Ray cluster: {total:g} total, {free:g} free. Alive nodes: "
            f"{_describe_nodes(ray)}. Check `ray status` to see if you have enough resources."
        )
        ray.shutdown()
        return StartupError(message)

    warned = False
    last_log = time.monotonic()
    while ray.cluster_resources().get("GPU", 0.0) < world:
        if not warned:
            logger.warning(
                "The number of required GPUs exceeds the total number of available GPUs in "
                "the placement group."
            )
            warned = True
        now = time.monotonic()
        if now >= deadline:
            raise fail(
                "The number of required GPUs exceeds the total number of available GPUs in "
                f"the placement group (waited {wait_s:g} s for more GPUs to join)."
            )
        if now - last_log >= 10:
            logger.info(
                "Waiting for creating a placement group of specs for %d seconds. specs=%s. "
                "Check `ray status` to see if you have enough resources.",
                int(wait_s - (deadline - now)),
                specs,
            )
            last_log = now
        time.sleep(1.0)

    this_node = [
        n for n in ray.nodes() if n.get("Alive") and n.get("NodeManagerAddress") == driver_ip
    ]
    if this_node and this_node[0].get("Resources", {}).get("GPU", 0) < 1:
        ray.shutdown()
        raise StartupError(
            f"Current node has no GPU available. current_node_resource="
            f"{this_node[0].get('Resources')}. vLLM engine cannot start without GPU. Make sure "
            f"you have at least 1 GPU available in a node current_ip={driver_ip}."
        )

    pg = ray.util.placement_group(specs, strategy="PACK")
    remaining = max(0.0, deadline - time.monotonic())
    ready, _ = ray.wait([pg.ready()], timeout=max(remaining, 1.0))
    if not ready:
        ray.util.remove_placement_group(pg)
        raise fail(
            f"Cannot provide a placement group of placement_group_specs={specs} within "
            f"{wait_s:g} seconds (GPUs taken by another job, or no GPU node matches "
            f"VLLM_HOST_IP={driver_ip})."
        )

    actor_cls = _worker_actor(ray)
    actors = [
        actor_cls.options(
            num_cpus=0,
            num_gpus=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=rank
            ),
        ).remote()
        for rank in range(world)
    ]
    infos = ray.get([a.info.remote() for a in actors], timeout=max(60.0, remaining))
    # As vLLM 0.32's Ray executor does: the driver's whole environment, but for the
    # worker-specific variables and the names in $VLLM_CONFIG_ROOT/ray_non_carry_over_env_vars
    # .json, is set (setdefault) in every worker actor.
    driver_env = _driver_env_vars()
    ray.get([a.set_driver_env.remote(driver_env) for a in actors], timeout=60.0)
    held = ray.get(actors[-1].secret_names.remote(), timeout=60.0)
    logger.info(
        "Driver environment copied to the Ray workers (%d variables); secrets in the last "
        "worker's environment: %s",
        len(driver_env),
        ", ".join(held) or "none",
    )
    workers = [
        Worker(rank, str(info["ip"]), tuple(str(g) for g in info["gpu_ids"]))
        for rank, info in enumerate(infos)
    ]
    for w in workers:
        logger.info(
            "Ray worker rank %d (pp stage %d, tp rank %d) on %s GPU %s",
            w.rank,
            w.rank // cfg.tensor_parallel_size,
            w.rank % cfg.tensor_parallel_size,
            w.node_ip,
            ",".join(w.gpu_ids),
        )
    return Placement("ray", workers, ray, actors, pg)


def _worker_actor(ray: Any) -> Any:
    """The worker actor is defined inside a function so Ray ships it by value: worker nodes
    need only Ray, not this package's import path."""

    class StandinWorker:
        def info(self) -> dict[str, Any]:
            return {
                "ip": ray.util.get_node_ip_address(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            }

        def ping(self) -> bool:
            return True

        def set_driver_env(self, env: dict[str, str]) -> None:
            for key, value in env.items():
                os.environ.setdefault(key, value)

        def secret_names(self) -> list[str]:
            return sorted(k for k in os.environ if k in ("VLLM_API_KEY", "RAY_AUTH_TOKEN"))

    return ray.remote(StandinWorker)


# vLLM 0.32's WORKER_SPECIFIC_ENV_VARS (vllm/v1/executor/ray_utils.py): what each worker
# sets for itself.
_WORKER_SPECIFIC_ENV = frozenset(
    {
        "VLLM_HOST_IP",
        "VLLM_HOST_PORT",
        "VLLM_NIXL_SIDE_CHANNEL_HOST",
        "LOCAL_RANK",
        "CUDA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
    }
)


def _driver_env_vars() -> dict[str, str]:
    """vllm/v1/executor/ray_env_utils.get_driver_env_vars with vllm/ray/ray_env.py's file of
    names not to carry over."""
    root = os.environ.get("VLLM_CONFIG_ROOT") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "vllm"
    )
    path = os.path.join(root, "ray_non_carry_over_env_vars.json")
    try:
        with open(path) as f:
            excluded = set(json.load(f))
    except (OSError, ValueError):
        excluded = set()
    return {k: v for k, v in os.environ.items() if k not in _WORKER_SPECIFIC_ENV | excluded}


def _describe_nodes(ray: Any) -> str:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    parts = [
        f"{n.get('NodeManagerAddress')} (GPU {n.get('Resources', {}).get('GPU', 0):g})"
        for n in nodes
    ]
    return f"{len(nodes)} alive: " + (", ".join(parts) if parts else "none")


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def _local_ranks(cfg: ServeConfig, local_gpus: int) -> int:
    per_node = cfg.world_size // cfg.nnodes
    if per_node > local_gpus:
        raise StartupError(
            f"Each of the {cfg.nnodes} nodes runs {per_node} of the world size "
            f"{cfg.world_size} ranks, but this node has {local_gpus} GPU(s)."
        )
    return per_node


def _node_workers(cfg: ServeConfig, node_rank: int, ip: str, per_node: int) -> list[Worker]:
    return [Worker(node_rank * per_node + i, ip, (str(i),)) for i in range(per_node)]


def _place_on_nodes(cfg: ServeConfig, local_gpus: int) -> Placement:
    """vLLM's own multi-node launcher: rank 0 hosts the rendezvous, the others join it."""
    per_node = _local_ranks(cfg, local_gpus)
    my_ip = os.environ.get("VLLM_HOST_IP") or socket.gethostbyname(socket.gethostname())
    wait_s = _env_seconds("VLLM_STANDIN_JOIN_WAIT_S", DEFAULT_JOIN_WAIT_S)
    hello = {"node_rank": cfg.node_rank, "ip": my_ip, "gpus": local_gpus, "world": cfg.world_size}
    if cfg.node_rank > 0:
        link = _join_rank0(cfg, hello, wait_s)
        workers = _node_workers(cfg, cfg.node_rank, my_ip, per_node)
        logger.info(
            "Node rank %d joined rank 0 at %s:%d; ranks %s on this node",
            cfg.node_rank,
            cfg.master_addr,
            cfg.master_port,
            ",".join(str(w.rank) for w in workers),
        )
        return Placement("headless", workers, _links=[("rank 0", link)])
    return _host_rendezvous(cfg, my_ip, per_node, wait_s)


def _join_rank0(cfg: ServeConfig, hello: dict[str, Any], wait_s: float) -> socket.socket:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            link = socket.create_connection((cfg.master_addr, cfg.master_port), timeout=5)
            break
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"Node rank {cfg.node_rank} could not reach rank 0's rendezvous at "
                    f"{cfg.master_addr}:{cfg.master_port} within {wait_s:g} s: {exc}",
                    kind="RuntimeError",
                ) from exc
            time.sleep(0.5)
    link.sendall((json.dumps(hello) + "\n").encode())
    link.settimeout(max(5.0, deadline - time.monotonic()))
    answer = json.loads(link.makefile().readline() or "{}")
    if not answer.get("ok"):
        link.close()
        raise StartupError(f"Rank 0 refused node rank {cfg.node_rank}: {answer.get('error')}")
    link.settimeout(None)
    return link


def _host_rendezvous(cfg: ServeConfig, my_ip: str, per_node: int, wait_s: float) -> Placement:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("0.0.0.0", cfg.master_port))
    except OSError as exc:
        server.close()
        raise StartupError(
            f"Cannot bind the master port {cfg.master_port}: {exc}", "OSError"
        ) from exc
    server.listen(cfg.nnodes)
    logger.info(
        "Rank 0: waiting for %d other node(s) on port %d (up to %g s)",
        cfg.nnodes - 1,
        cfg.master_port,
        wait_s,
    )
    deadline = time.monotonic() + wait_s
    joined: dict[int, tuple[str, socket.socket]] = {}
    try:
        while len(joined) < cfg.nnodes - 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [r for r in range(1, cfg.nnodes) if r not in joined]
                raise StartupError(
                    f"Node rank(s) {', '.join(map(str, missing))} did not join the rendezvous "
                    f"at {cfg.master_addr}:{cfg.master_port} within {wait_s:g} s (joined: "
                    f"{', '.join(f'{r}={ip}' for r, (ip, _) in sorted(joined.items())) or 'none'})",
                    kind="RuntimeError",
                )
            server.settimeout(min(remaining, 1.0))
            try:
                link, _ = server.accept()
            except TimeoutError:
                continue
            link.settimeout(10)
            try:
                hello = json.loads(link.makefile().readline() or "{}")
            except (OSError, ValueError):
                link.close()
                continue
            rank = int(hello.get("node_rank", -1))
            error = None
            if not 0 < rank < cfg.nnodes or rank in joined:
                error = f"node rank {rank} is not expected (nnodes={cfg.nnodes}) or joined twice"
            elif int(hello.get("world", -1)) != cfg.world_size:
                error = f"world size {hello.get('world')} differs from rank 0's {cfg.world_size}"
            link.sendall((json.dumps({"ok": error is None, "error": error}) + "\n").encode())
            if error:
                logger.warning("Refused a node: %s", error)
                link.close()
                continue
            link.settimeout(None)
            joined[rank] = (str(hello.get("ip")), link)
            logger.info(
                "Node rank %d (%s) joined (%d/%d)",
                rank,
                hello.get("ip"),
                len(joined) + 1,
                cfg.nnodes,
            )
    except BaseException:
        for _, link in joined.values():
            link.close()
        raise
    finally:
        server.close()
    workers = _node_workers(cfg, 0, my_ip, per_node)
    for rank, (ip, _) in sorted(joined.items()):
        workers += _node_workers(cfg, rank, ip, per_node)
    links = [(f"node rank {r} ({ip})", link) for r, (ip, link) in sorted(joined.items())]
    return Placement("multinode", workers, _links=links)


def _watch_links(placement: Placement, on_failure: Callable[[str], None]) -> None:
    """A peer's connection closing is a lost node (torch.distributed fails the same way)."""

    def watch(label: str, link: socket.socket) -> None:
        try:
            while link.recv(1024):
                pass
        except OSError:
            pass
        on_failure(f"{label} lost (its connection closed)")

    for label, link in placement._links:
        threading.Thread(target=watch, args=(label, link), name="node-watch", daemon=True).start()


def watch_workers(placement: Placement, on_failure: Callable[[str], None]) -> None:
    """Ping the Ray workers in the background; a lost worker ends the server, as a dead
    engine ends vLLM's API server. Under vLLM's own launcher a lost node does the same."""
    if placement.mode in ("multinode", "headless"):
        _watch_links(placement, on_failure)
        return
    if placement.mode != "ray":
        return

    def loop() -> None:
        while True:
            time.sleep(HEALTH_CHECK_INTERVAL_S)
            try:
                placement.check_workers()
            except Exception as exc:
                on_failure(f"Ray worker lost ({type(exc).__name__}: {exc})")
                return

    threading.Thread(target=loop, name="ray-worker-watch", daemon=True).start()
