"""Rendering of engine command lines, Ray scripts and node environments (pure, no Pulumi)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from components.render.engine import (
    EngineLaunch,
    NodeNetwork,
    RayLayout,
    node_environment,
    ray_head_script,
    ray_head_start_argv,
    ray_wait_argv,
    ray_worker_argv,
    ray_worker_script,
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
