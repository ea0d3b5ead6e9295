"""Rendering of engine command lines, Ray scripts and node environments (pure, no Pulumi)."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.render.engine import (
    RANK0_LOST_GRACE_S,
    EngineLaunch,
    MultiNodeLayout,
    NodeNetwork,
    RayLayout,
    headless_node_script,
    multi_node_head_script,
    node_environment,
    ray_head_script,
    ray_head_start_argv,
    ray_wait_argv,
    ray_worker_argv,
    ray_worker_script,
    vllm_serve_argv,
    vllm_server_argv,
)
from components.render.readiness import ReadinessGate, readiness_script

LAUNCH = EngineLaunch(
    model_path="/data01/deepseek-r1",
    served_model_name="DeepSeek-R1",
    tensor_parallel_size=8,
    pipeline_parallel_size=2,
    max_model_len=2048,
    max_num_seqs=64,
    gpu_memory_utilization=0.9,
    trust_remote_code=True,
    distributed_executor_backend="ray",
    extra_args=("--enable-prefix-caching",),
)
HEAD = NodeNetwork(address="192.168.0.2", socket_ifname="eth0")
WORKER = NodeNetwork(address="192.168.0.3", socket_ifname="eth0", infiniband_hca="mlx5_0")
LAYOUT = RayLayout(
    head_address="192.168.0.2",
    ray_port=6379,
    gpus_per_node=8,
    nodes={"h20-1": "192.168.0.2", "h20-2": "192.168.0.3"},
    join_timeout_s=300,
)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_server_argv_carries_the_plan_and_no_secret() -> None:
    argv = vllm_server_argv(LAUNCH)
    assert argv[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(argv, "--model") == "/data01/deepseek-r1"
    assert flag(argv, "--served-model-name") == "DeepSeek-R1"
    assert flag(argv, "--tensor-parallel-size") == "8"
    assert flag(argv, "--pipeline-parallel-size") == "2"
    assert flag(argv, "--max-model-len") == "2048"
    assert flag(argv, "--gpu-memory-utilization") == "0.9"
    assert flag(argv, "--distributed-executor-backend") == "ray"
    assert "--trust-remote-code" in argv
    assert argv[-1] == "--enable-prefix-caching"
    assert not any("api-key" in a for a in argv)


def test_single_node_argv_has_no_ray_backend_or_remote_code_by_default() -> None:
    launch = EngineLaunch(
        model_path="/m",
        served_model_name="tiny",
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        max_model_len=256,
        max_num_seqs=4,
        gpu_memory_utilization=0.25,
    )
    argv = vllm_server_argv(launch)
    assert "--distributed-executor-backend" not in argv
    assert "--trust-remote-code" not in argv
    assert flag(argv, "--gpu-memory-utilization") == "0.25"


def test_node_environment_pins_ip_and_nic_and_goes_offline() -> None:
    env = node_environment(WORKER, {"VLLM_LOGGING_LEVEL": "DEBUG"}, ray=True)
    assert env["VLLM_HOST_IP"] == env["RAY_NODE_IP_ADDRESS"] == "192.168.0.3"
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert env["NCCL_IB_HCA"] == "mlx5_0"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert "RAY_NODE_IP_ADDRESS" not in node_environment(HEAD)
    assert "NCCL_IB_HCA" not in node_environment(HEAD)


def test_worker_joins_head_with_its_own_ip_and_gpu_count() -> None:
    argv = ray_worker_argv(WORKER, LAYOUT)
    assert argv[:3] == ["ray", "start", "--block"]
    assert "--address=192.168.0.2:6379" in argv
    assert "--node-ip-address=192.168.0.3" in argv
    assert "--num-gpus=8" in argv


def test_head_script_starts_ray_waits_for_every_node_then_execs_vllm() -> None:
    script = ray_head_script(HEAD, LAYOUT, LAUNCH)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    start = script.index(shlex.join(ray_head_start_argv(HEAD, LAYOUT)))
    wait = script.index(shlex.join(ray_wait_argv(LAYOUT, LAUNCH)))
    serve = script.index("exec " + shlex.join(vllm_server_argv(LAUNCH)))
    assert start < wait < serve
    assert "--node-ip-address=192.168.0.2" in ray_head_start_argv(HEAD, LAYOUT)
    wait_argv = ray_wait_argv(LAYOUT, LAUNCH)
    assert json.loads(wait_argv[3]) == LAYOUT.nodes
    assert wait_argv[4] == "16"  # TP 8 x PP 2
    assert wait_argv[5] == "300"


def test_wait_program_names_missing_nodes(tmp_path: Path) -> None:
    """Run the real wait program against a fake `ray` module: one worker never joins."""
    (tmp_path / "ray.py").write_text(
        "def init(**kw): pass\n"
        "def nodes(): return [{'NodeManagerAddress': '192.168.0.2', 'Alive': True}]\n"
        "def cluster_resources(): return {'GPU': 8.0}\n"
    )
    argv = ray_wait_argv(LAYOUT, LAUNCH)
    argv[0] = sys.executable
    argv[-1] = "0"  # give up at once
    proc = subprocess.run(
        argv, capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}
    )
    assert proc.returncode == 1
    assert "missing h20-2 (192.168.0.3)" in proc.stderr
    assert "GPUs 8/16" in proc.stderr


def test_wait_program_passes_when_cluster_is_complete(tmp_path: Path) -> None:
    (tmp_path / "ray.py").write_text(
        "def init(**kw): pass\n"
        "def nodes(): return [{'NodeManagerAddress': a, 'Alive': True}\n"
        "                     for a in ('192.168.0.2', '192.168.0.3')]\n"
        "def cluster_resources(): return {'GPU': 16.0}\n"
    )
    argv = ray_wait_argv(LAYOUT, LAUNCH)
    argv[0] = sys.executable
    proc = subprocess.run(
        argv, capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}
    )
    assert proc.returncode == 0, proc.stderr
    assert "2/2 nodes, 16/16 GPUs" in proc.stdout


def test_readiness_script_is_valid_bash_and_keeps_key_off_argv() -> None:
    script = readiness_script(ReadinessGate("vllm-ray-head", 8000, "DeepSeek-R1", 900))
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "read -r api_key" in script
    assert '-H @"$hdr"' in script
    # The order of the gate: health, then models with the key, then a real completion.
    assert script.index("wait_for /health") < script.index("wait_for /v1/models")
    assert script.index("wait_for /v1/models") < script.index('wait_for "a chat completion"')
    assert "timeout=900" in script


def test_worker_script_waits_for_the_head_port_then_joins() -> None:
    script = ray_worker_script(WORKER, LAYOUT)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    wait = script.index("/dev/tcp/192.168.0.2/6379")
    join = script.index("exec " + shlex.join(ray_worker_argv(WORKER, LAYOUT)))
    assert wait < join


def test_worker_script_gives_up_when_the_head_never_answers() -> None:
    layout = RayLayout("127.0.0.1", 9, 1, {}, join_timeout_s=1)  # discard port: closed
    script = ray_worker_script(NodeNetwork("127.0.0.1", "lo"), layout)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "ray head 127.0.0.1:9 not reachable after 1s" in proc.stderr


# ---------------------------------------------------------------------------------------
# vLLM's own multi-node launcher (mp backend)


def mp_layout(timeout_s: int = 600) -> MultiNodeLayout:
    return MultiNodeLayout(
        master_address="10.0.0.1",
        master_port=29500,
        nodes=(("h1", "10.0.0.1"), ("h2", "10.0.0.2"), ("h3", "10.0.0.3")),
        join_timeout_s=timeout_s,
    )


def test_vllm_serve_is_the_same_on_every_node_but_rank_and_headless() -> None:
    launch = EngineLaunch(
        model_path="/data/m",
        served_model_name="m",
        tensor_parallel_size=2,
        pipeline_parallel_size=3,
        max_model_len=2048,
        max_num_seqs=8,
        gpu_memory_utilization=0.9,
        distributed_executor_backend="mp",
        extra_args=("--enforce-eager",),
    )
    argvs = [vllm_serve_argv(launch, mp_layout(), rank) for rank in range(3)]
    for rank, argv in enumerate(argvs):
        assert argv[:3] == ["vllm", "serve", "/data/m"]
        flags = argv[3:]
        assert flags[flags.index("--node-rank") + 1] == str(rank)
        assert flags[flags.index("--nnodes") + 1] == "3"
        assert flags[flags.index("--master-addr") + 1] == "10.0.0.1"
        assert flags[flags.index("--master-port") + 1] == "29500"
        assert flags[flags.index("--distributed-executor-backend") + 1] == "mp"
        assert ("--headless" in flags) is (rank > 0)
        assert "--model" not in flags  # positional with `vllm serve`
        assert "--enforce-eager" in flags
    without_rank = [[a for a in argv if a not in ("0", "1", "2", "--headless")] for argv in argvs]
    assert without_rank[0] == without_rank[1] == without_rank[2]


def watcher_argv(script: str) -> list[str]:
    """The background command of a head script: between its first line and `exec`."""
    body = script.split("\n", 1)[1].rsplit("\nexec ", 1)[0]
    assert body.endswith(" &"), body[-200:]
    return shlex.split(body[:-2])


def run_watcher(script: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The join watcher line of a rendered head script, run here with python3."""
    argv = watcher_argv(script)
    assert argv[:2] == ["python3", "-c"]
    return subprocess.run(
        [sys.executable, *argv[1:]], capture_output=True, text=True, timeout=timeout
    )


def test_head_watcher_names_joined_and_missing_nodes_from_the_socket_table() -> None:
    """Real sockets: a peer connected to the master port from 127.0.0.1 has joined; a node
    at another address never does, and is named once the join timeout has passed."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    launch = EngineLaunch("/data/m", "m", 1, 2, 256, 4, 0.9)
    try:
        joined = MultiNodeLayout("127.0.0.1", port, (("h1", "x"), ("h2", "127.0.0.1")), 600)
        done = run_watcher(multi_node_head_script(launch, joined))
        assert done.returncode == 0, done.stderr
        assert f"h2 (127.0.0.1) joined rank 0's rendezvous on port {port}" in done.stdout
        assert "all 2 nodes joined" in done.stdout
        missing = MultiNodeLayout(
            "127.0.0.1", port, (("h1", "x"), ("h2", "127.0.0.1"), ("h3", "10.255.0.3")), 0
        )
        with pytest.raises(subprocess.TimeoutExpired) as waiting:
            run_watcher(multi_node_head_script(launch, missing), timeout=3)
        captured = waiting.value.stderr or ""
        stderr = captured.decode() if isinstance(captured, bytes) else captured
        assert "still waiting after 0s for h3 (10.255.0.3): no connection to port" in stderr
    finally:
        client.close()
        server.close()


def test_headless_watcher_stops_the_engine_once_rank_0_is_gone() -> None:
    """Real sockets and a real process: the watcher of a rendered headless script waits for
    the rank's connection to rank 0's master port, and once that connection is closed for
    RANK0_LOST_GRACE_S it sends SIGTERM to the engine (here a `sleep` standing in for vLLM,
    whose PID the script passes as `$$`), so the restart policy can rejoin a new rank 0."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    launch = EngineLaunch("/data/m", "m", 1, 2, 256, 4, 0.9)
    layout = MultiNodeLayout("127.0.0.1", port, (("h1", "127.0.0.1"), ("h2", "127.0.0.2")), 600)
    script = headless_node_script(launch, layout, 1)
    argv = watcher_argv(script)
    assert argv[:2] == ["python3", "-c"] and argv[-1] == "$$", argv
    engine = subprocess.Popen(["sleep", "120"])
    watcher = subprocess.Popen(
        [sys.executable, *argv[1:-1], str(engine.pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(RANK0_LOST_GRACE_S + 1.5)
        assert engine.poll() is None and watcher.poll() is None  # not joined yet: waits
        client = socket.create_connection(("127.0.0.1", port))
        peer, _ = server.accept()
        time.sleep(RANK0_LOST_GRACE_S + 2)
        assert engine.poll() is None, "stopped while its link to rank 0 was up"
        peer.close()  # rank 0 goes away
        server.close()
        client.close()
        started = time.monotonic()
        assert engine.wait(timeout=RANK0_LOST_GRACE_S + 10) == -signal.SIGTERM
        assert time.monotonic() - started >= RANK0_LOST_GRACE_S - 1
        out, err = watcher.communicate(timeout=10)
        assert f"joined rank 0 at 127.0.0.1:{port}" in out
        assert f"lost rank 0 at 127.0.0.1:{port}" in err
    finally:
        engine.kill()
        watcher.kill()
        server.close()


def test_headless_watcher_catches_a_link_shorter_than_its_poll() -> None:
    """A rank that joined a rank 0 which went away within a second (a stale rank 0 being
    replaced) was never seen established; its socket stays in CLOSE_WAIT, as vLLM's does,
    and that is enough: the engine is stopped."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    peer, _ = server.accept()
    peer.close()
    server.close()  # rank 0 gone; the client side is in CLOSE_WAIT until it closes
    launch = EngineLaunch("/data/m", "m", 1, 2, 256, 4, 0.9)
    layout = MultiNodeLayout("127.0.0.1", port, (("h1", "127.0.0.1"), ("h2", "127.0.0.2")), 600)
    argv = watcher_argv(headless_node_script(launch, layout, 1))
    engine = subprocess.Popen(["sleep", "120"])
    watcher = subprocess.Popen(
        [sys.executable, *argv[1:-1], str(engine.pid)], stderr=subprocess.PIPE, text=True
    )
    try:
        assert engine.wait(timeout=RANK0_LOST_GRACE_S + 10) == -signal.SIGTERM
        _, err = watcher.communicate(timeout=10)
        assert f"lost rank 0 at 127.0.0.1:{port}" in err
    finally:
        engine.kill()
        watcher.kill()
        client.close()


def test_headless_script_watches_rank_0_and_execs_its_rank() -> None:
    launch = EngineLaunch("/data/m", "m", 2, 1, 256, 4, 0.9, distributed_executor_backend="mp")
    script = headless_node_script(launch, mp_layout(), 2)
    assert script.startswith("set -euo pipefail\n")
    argv = watcher_argv(script)
    assert argv[3:] == [mp_layout().master_address, "29500", str(RANK0_LOST_GRACE_S), "$$"]
    last = script.rstrip("\n").rsplit("\n", 1)[1]
    assert shlex.split(last) == ["exec", *vllm_serve_argv(launch, mp_layout(), 2)]


def test_head_script_watches_in_the_background_and_execs_rank_0() -> None:
    launch = EngineLaunch("/data/m", "m", 2, 1, 256, 4, 0.9, distributed_executor_backend="mp")
    script = multi_node_head_script(launch, mp_layout())
    assert script.startswith("set -euo pipefail\n")
    argv = watcher_argv(script)
    assert argv[3:5] == ["29500", "600"]
    assert json.loads(argv[5]) == [["h2", "10.0.0.2"], ["h3", "10.0.0.3"]]
    last = script.rstrip("\n").rsplit("\n", 1)[1]
    assert shlex.split(last) == ["exec", *vllm_serve_argv(launch, mp_layout(), 0)]


# ---------------------------------------------------------------------------------------
# The Ray head and worker programs, run: a stand-in `ray` CLI records its calls, a fake
# `ray` Python module answers the wait program, and a fake `vllm` package records how the
# server was started. Only the Ray and vLLM processes are stand-ins; bash runs the script.


def ray_stand_ins(tmp: Path, *, alive: tuple[str, ...], gpus: int) -> dict[str, str]:
    bin_dir, py = tmp / "bin", tmp / "py"
    (py / "vllm" / "entrypoints" / "openai").mkdir(parents=True)
    bin_dir.mkdir()
    ray_cli = bin_dir / "ray"
    ray_cli.write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >>{shlex.quote(str(tmp / "ray.log"))}\n')
    ray_cli.chmod(0o755)
    # The wait program runs `python3`: the real interpreter, first on PATH.
    (bin_dir / "python3").symlink_to(sys.executable)
    (py / "ray.py").write_text(
        "def init(**kw): pass\n"
        f"def nodes(): return [{{'NodeManagerAddress': a, 'Alive': True}} for a in {alive!r}]\n"
        f"def cluster_resources(): return {{'GPU': {float(gpus)}}}\n"
    )
    for pkg in ("vllm", "vllm/entrypoints", "vllm/entrypoints/openai"):
        (py / pkg / "__init__.py").write_text("")
    (py / "vllm" / "entrypoints" / "openai" / "api_server.py").write_text(
        f"import json, sys\njson.dump(sys.argv[1:], open({str(tmp / 'vllm.json')!r}, 'w'))\n"
    )
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": str(py),
        "HOME": str(tmp / "home"),
    }


def test_head_script_starts_ray_waits_writes_the_carry_over_list_and_serves(
    tmp_path: Path,
) -> None:
    layout = RayLayout(**{**LAYOUT.__dict__, "join_timeout_s": 5})
    env = ray_stand_ins(tmp_path, alive=("192.168.0.2", "192.168.0.3"), gpus=16)
    script = ray_head_script(HEAD, layout, LAUNCH)
    fresh = not Path("/tmp/ray/session_latest").exists()
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "ray.log").read_text().splitlines()
    start = "start --head --port=6379 --node-ip-address=192.168.0.2 --num-gpus=8"
    assert calls[-1] == start + " --disable-usage-stats"
    if fresh:
        assert calls == [calls[-1]], "a fresh head stopped a Ray session it does not have"
    assert "ray cluster: 2/2 nodes, 16/16 GPUs" in proc.stdout
    # vLLM copies the head's environment to the workers' Ray actors except these names.
    carry = tmp_path / "home" / ".config" / "vllm" / "ray_non_carry_over_env_vars.json"
    assert json.loads(carry.read_text()) == ["VLLM_API_KEY", "RAY_AUTH_TOKEN"]
    assert json.loads((tmp_path / "vllm.json").read_text()) == vllm_server_argv(LAUNCH)[3:]


def test_restarted_head_stops_the_previous_ray_session_first(tmp_path: Path) -> None:
    env = ray_stand_ins(tmp_path, alive=("192.168.0.2", "192.168.0.3"), gpus=16)
    marker = Path("/tmp/ray/session_latest")
    created = not marker.exists()
    if created:
        marker.parent.mkdir(exist_ok=True)
        marker.touch()
    try:
        proc = subprocess.run(
            ["bash", "-c", ray_head_script(HEAD, LAYOUT, LAUNCH)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        if created:
            marker.unlink()
    assert proc.returncode == 0, proc.stderr
    assert "ray head: restarted; stopping the Ray session of the previous run" in proc.stdout
    calls = (tmp_path / "ray.log").read_text().splitlines()
    assert calls[0] == "stop --force" and calls[1].startswith("start --head ")


def test_head_script_never_serves_on_an_incomplete_cluster(tmp_path: Path) -> None:
    layout = RayLayout(**{**LAYOUT.__dict__, "join_timeout_s": 0})
    env = ray_stand_ins(tmp_path, alive=("192.168.0.2",), gpus=8)
    proc = subprocess.run(
        ["bash", "-c", ray_head_script(HEAD, layout, LAUNCH)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "missing h20-2 (192.168.0.3)" in proc.stderr
    assert not (tmp_path / "vllm.json").exists(), "vLLM started on a partial cluster"


def test_worker_script_joins_once_the_head_port_answers(tmp_path: Path) -> None:
    env = ray_stand_ins(tmp_path, alive=(), gpus=0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        layout = RayLayout("127.0.0.1", port, 8, {}, join_timeout_s=10)
        proc = subprocess.run(
            ["bash", "-c", ray_worker_script(WORKER, layout)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ray.log").read_text().splitlines() == [
        f"start --block --address=127.0.0.1:{port} --node-ip-address=192.168.0.3 "
        "--num-gpus=8 --disable-usage-stats"
    ]


def test_node_environment_uses_the_names_ray_and_the_hub_clients_read() -> None:
    """Exact names: Ray reads RAY_<config name> case-sensitively (memory_monitor_refresh_ms
    is lower case in Ray's config), the others are upper case."""
    env = node_environment(HEAD, ray=True)
    assert env == {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_HOST_IP": "192.168.0.2",
        "NCCL_SOCKET_IFNAME": "eth0",
        "GLOO_SOCKET_IFNAME": "eth0",
        "RAY_NODE_IP_ADDRESS": "192.168.0.2",
        "RAY_memory_monitor_refresh_ms": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
    }


def test_the_engine_flags_are_vllms_spelling_of_every_setting() -> None:
    """vLLM's CLI as its parser spells it (checked against vLLM's own parser in
    tests/lab/test_vllm_real_parser.py); here the whole argv, so a flag cannot drift."""
    launch = EngineLaunch(
        model_path="/data01/m",
        served_model_name="m",
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
        max_model_len=4096,
        max_num_seqs=32,
        gpu_memory_utilization=1.0,
        kv_cache_dtype="fp8",
        port=8123,
        expert_parallel=True,
        extra_args=("--enforce-eager",),
    )
    assert vllm_server_argv(launch)[3:] == [
        "--model",
        "/data01/m",
        "--served-model-name",
        "m",
        "--host",
        "0.0.0.0",
        "--port",
        "8123",
        "--tensor-parallel-size",
        "4",
        "--pipeline-parallel-size",
        "2",
        "--max-model-len",
        "4096",
        "--max-num-seqs",
        "32",
        "--gpu-memory-utilization",
        "1",
        "--kv-cache-dtype",
        "fp8",
        "--enable-expert-parallel",
        "--enforce-eager",
    ]


@pytest.mark.parametrize(
    ("value", "flag_value"), [(1.0, "1"), (0.9, "0.9"), (0.85, "0.85"), (0.12345, "0.1235")]
)
def test_memory_fractions_are_written_short_and_exact(value: float, flag_value: str) -> None:
    launch = EngineLaunch("/m", "m", 1, 1, 256, 4, value)
    assert flag(vllm_server_argv(launch), "--gpu-memory-utilization") == flag_value
