#!/usr/bin/env python3
"""SIMULATED nvidia-smi for the vllm-cluster lab (installed as /usr/bin/nvidia-smi).

There is no GPU in the lab. This program answers the nvidia-smi forms that deployment code
uses, from /etc/lab/gpus.json, which it reads at every call (so tests can change a host's
GPUs live):

    {"model": "NVIDIA H20", "count": 2, "memory_mib": 97871, "driver": "550.54.15",
     "cuda": "12.4"}

Optional keys: "memory_used_mib" (int, or one int per GPU), "compute_cap" ("9.0"),
"visible_devices" (NVIDIA_VISIBLE_DEVICES of a container; written by the fake
nvidia-container-runtime-hook), "host" (the lab host's name, for stable UUIDs).

Machine-readable output (-L, --query-gpu CSV) has exactly the real layout on stdout and the
"SIMULATED" marker on stderr, so parsers see real-shaped data and humans see the marker; the
table carries the marker in its own first lines. Stdlib only, Python >= 3.10: the same file is
injected into containers started with --gpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MARKER = "SIMULATED (vllm-cluster lab)"
CONFIG_PATH = os.environ.get("LAB_GPUS_CONFIG", "/etc/lab/gpus.json")
# PCI bus numbers of an 8-GPU HGX board, so bus ids look like a real server's.
_BUSES = (0x0F, 0x34, 0x48, 0x5A, 0x87, 0xAE, 0xC2, 0xD7)
# Compute capability by model family (first match wins); "compute_cap" in the config overrides.
_COMPUTE_CAPS = (
    ("H20", "9.0"),
    ("H100", "9.0"),
    ("H200", "9.0"),
    ("H800", "9.0"),
    ("GH200", "9.0"),
    ("B200", "10.0"),
    ("L40", "8.9"),
    ("L4", "8.9"),
    ("4090", "8.9"),
    ("A100", "8.0"),
    ("A800", "8.0"),
    ("A30", "8.0"),
    ("A10", "8.6"),
    ("3090", "8.6"),
    ("T4", "7.5"),
    ("V100", "7.0"),
)


class UsageError(Exception):
    """A command line the real nvidia-smi would reject."""


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    bus_id: str
    serial: str
    memory_total: int
    memory_used: int
    driver: str
    cuda: str
    compute_cap: str

    @property
    def memory_free(self) -> int:
        return max(self.memory_total - self.memory_used, 0)


def load_config(path: str | None = None) -> dict[str, object]:
    path = path or CONFIG_PATH
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _int(config: dict[str, object], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"gpus.json: {key!r} must be an integer")
    return value


def _str(config: dict[str, object], key: str, default: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"gpus.json: {key!r} must be a string")
    return value


def all_gpus(config: dict[str, object]) -> list[Gpu]:
    """Every GPU of the host, before NVIDIA_VISIBLE_DEVICES filtering."""
    model = _str(config, "model", "NVIDIA H20")
    count = _int(config, "count", 0)
    total = _int(config, "memory_mib", 97871)
    driver = _str(config, "driver", "550.54.15")
    cuda = _str(config, "cuda", "12.4")
    host = _str(config, "host", socket.gethostname())
    cap = config.get("compute_cap")
    if not isinstance(cap, str):
        cap = next((c for key, c in _COMPUTE_CAPS if key in model.upper()), "9.0")
    used_cfg = config.get("memory_used_mib", 0)
    gpus = []
    for i in range(count):
        if isinstance(used_cfg, list):
            used = int(used_cfg[i]) if i < len(used_cfg) else 0
        else:
            used = int(str(used_cfg))
        digest = hashlib.sha256(f"{host}:{i}".encode()).hexdigest()
        uuid = f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        bus = _BUSES[i] if i < len(_BUSES) else 0x10 + i
        gpus.append(
            Gpu(
                index=i,
                name=model,
                uuid=uuid,
                bus_id=f"00000000:{bus:02X}:00.0",
                serial=str(int(digest[32:44], 16) % 10**13).zfill(13),
                memory_total=total,
                memory_used=min(used, total),
                driver=driver,
                cuda=cuda,
                compute_cap=cap,
            )
        )
    return gpus


def visible_gpus(config: dict[str, object]) -> list[Gpu]:
    """The GPUs this process may see: like the real runtime, a container started with
    NVIDIA_VISIBLE_DEVICES=1 sees one GPU, renumbered from 0, with its real UUID."""
    gpus = all_gpus(config)
    visible = config.get("visible_devices")
    if visible is None:
        return gpus
    spec = str(visible).strip()
    if spec == "all":
        return gpus
    if spec in ("", "none", "void", "NoDevFiles"):
        return []
    chosen = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        match = [g for g in gpus if token in (str(g.index), g.uuid) or g.uuid.startswith(token)]
        if not match:
            raise ValueError(f"visible device {token!r} does not exist on this host")
        chosen.append(match[0])
    return [
        Gpu(
            index=n,
            name=g.name,
            uuid=g.uuid,
            bus_id=g.bus_id,
            serial=g.serial,
            memory_total=g.memory_total,
            memory_used=g.memory_used,
            driver=g.driver,
            cuda=g.cuda,
            compute_cap=g.compute_cap,
        )
        for n, g in enumerate(chosen)
    ]


# field name -> (header unit or "", value without unit, value with unit)
_Field = Callable[[Gpu, int], tuple[str, str, str]]


def _plain(fn: Callable[[Gpu, int], str]) -> _Field:
    return lambda g, n: ("", fn(g, n), fn(g, n))


def _unit(unit: str, fn: Callable[[Gpu, int], str]) -> _Field:
    return lambda g, n: (unit, fn(g, n), f"{fn(g, n)} {unit}")


FIELDS: dict[str, _Field] = {
    "index": _plain(lambda g, n: str(g.index)),
    "count": _plain(lambda g, n: str(n)),
    "name": _plain(lambda g, n: g.name),
    "gpu_name": _plain(lambda g, n: g.name),
    "uuid": _plain(lambda g, n: g.uuid),
    "gpu_uuid": _plain(lambda g, n: g.uuid),
    "serial": _plain(lambda g, n: g.serial),
    "pci.bus_id": _plain(lambda g, n: g.bus_id),
    "gpu_bus_id": _plain(lambda g, n: g.bus_id),
    "driver_version": _plain(lambda g, n: g.driver),
    "compute_cap": _plain(lambda g, n: g.compute_cap),
    "memory.total": _unit("MiB", lambda g, n: str(g.memory_total)),
    "memory.used": _unit("MiB", lambda g, n: str(g.memory_used)),
    "memory.free": _unit("MiB", lambda g, n: str(g.memory_free)),
    "utilization.gpu": _unit("%", lambda g, n: "0"),
    "utilization.memory": _unit("%", lambda g, n: "0"),
    "temperature.gpu": _plain(lambda g, n: "30"),
    "power.draw": _unit("W", lambda g, n: "70.00"),
    "power.limit": _unit("W", lambda g, n: "500.00"),
    "pstate": _plain(lambda g, n: "P0"),
    "persistence_mode": _plain(lambda g, n: "Enabled"),
    "mig.mode.current": _plain(lambda g, n: "Disabled"),
    "compute_mode": _plain(lambda g, n: "Default"),
}
_ALIASES = {"gpu_serial": "serial", "memory_total": "memory.total"}
_APP_FIELDS = ("pid", "process_name", "used_memory", "used_gpu_memory", "gpu_uuid", "gpu_name")


def _fields(query: str) -> list[str]:
    names = [f.strip() for f in query.split(",") if f.strip()]
    for name in names:
        if _ALIASES.get(name, name) not in FIELDS:
            raise UsageError(f'Field "{name}" is not a valid field to query.')
    return [_ALIASES.get(n, n) for n in names]


def query_csv(gpus: Sequence[Gpu], query: str, fmt: str) -> str:
    opts = {o.strip() for o in fmt.split(",")}
    if "csv" not in opts or not opts <= {"csv", "noheader", "nounits"}:
        raise UsageError(f'"{fmt}" is not a valid format.')
    names = _fields(query)
    lines = []
    if "noheader" not in opts:
        heads = []
        for name in names:
            unit = FIELDS[name](gpus[0], len(gpus))[0] if gpus else ""
            heads.append(f"{name} [{unit}]" if unit and "nounits" not in opts else name)
        lines.append(", ".join(heads))
    for g in gpus:
        cells = [FIELDS[name](g, len(gpus)) for name in names]
        lines.append(", ".join(c[1] if "nounits" in opts else c[2] for c in cells))
    return "".join(line + "\n" for line in lines)


def query_apps(query: str, fmt: str) -> str:
    """--query-compute-apps: simulated GPUs run no processes."""
    names = [f.strip() for f in query.split(",") if f.strip()]
    for name in names:
        if name not in _APP_FIELDS:
            raise UsageError(f'Field "{name}" is not a valid field to query.')
    opts = {o.strip() for o in fmt.split(",")}
    return "" if "noheader" in opts else ", ".join(names) + "\n"


def list_gpus(gpus: Sequence[Gpu]) -> str:
    return "".join(f"GPU {g.index}: {g.name} (UUID: {g.uuid})\n" for g in gpus)


def table(gpus: Sequence[Gpu], config: dict[str, object]) -> str:
    driver = _str(config, "driver", "550.54.15")
    cuda = _str(config, "cuda", "12.4")
    widths = (41, 24, 22)
    inner = sum(widths) + 2

    def row(*cells: str) -> str:
        return "|" + "|".join(c[:w].ljust(w) for c, w in zip(cells, widths, strict=True)) + "|"

    def line(text: str) -> str:
        return "|" + text[:inner].ljust(inner) + "|"

    full = "+" + "-" * inner + "+"
    cut = "+" + "+".join("-" * w for w in widths) + "+"
    out = [
        full,
        line(f" {MARKER}: no real GPU; values come from {CONFIG_PATH}"),
        full,
        line(f" NVIDIA-SMI {driver:<23}Driver Version: {driver:<15}CUDA Version: {cuda}"),
        cut,
        row(
            " GPU  Name                 Persistence-M",
            " Bus-Id          Disp.A",
            " Volatile Uncorr. ECC",
        ),
        row(
            " Fan  Temp   Perf          Pwr:Usage/Cap",
            "           Memory-Usage",
            " GPU-Util  Compute M.",
        ),
        "|" + "+".join("=" * w for w in widths) + "|",
    ]
    for g in gpus:
        mem = f"{g.memory_used}MiB / {g.memory_total}MiB"
        out.append(
            row(
                f" {g.index:>3}  {g.name[:26]:<26}      On ", f" {g.bus_id:>18} Off ", f"{'0':>21} "
            )
        )
        out.append(
            row(
                " N/A   30C    P0             70W /  500W ",
                f"{mem:>23} ",
                f"{'0%':>9}      Default",
            )
        )
        out.append(cut)
    if not gpus:
        out += [line(" No devices were found"), full]
    out += ["", full, line(" Processes:"), line(f" No running processes found ({MARKER})"), full]
    return "\n".join(out) + "\n"


def version(config: dict[str, object]) -> str:
    driver = _str(config, "driver", "550.54.15")
    cuda = _str(config, "cuda", "12.4")
    return (
        f"NVIDIA-SMI version  : {driver} ({MARKER})\n"
        f"NVML version        : {driver.rsplit('.', 1)[0]}\n"
        f"DRIVER version      : {driver}\n"
        f"CUDA Version        : {cuda}\n"
    )


def _select(gpus: list[Gpu], ids: str | None) -> list[Gpu]:
    if ids is None:
        return gpus
    chosen = []
    for token in (t.strip() for t in ids.split(",") if t.strip()):
        match = [g for g in gpus if token in (str(g.index), g.uuid, g.bus_id)]
        if not match:
            raise UsageError(f"No GPU found with id {token!r}.")
        chosen.append(match[0])
    return chosen


def _parse(argv: Sequence[str]) -> dict[str, str]:
    """Long options as `--opt=value` or `--opt value`, and the short flags used in practice."""
    opts: dict[str, str] = {}
    takes_value = {"--query-gpu", "--query-compute-apps", "--format", "--id", "-i"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if "=" in arg and arg.startswith("--"):
            key, value = arg.split("=", 1)
        elif arg in takes_value:
            if i + 1 >= len(argv):
                raise UsageError(f"Option {arg} requires a value.")
            key, value = arg, argv[i + 1]
            i += 1
        else:
            key, value = arg, ""
        opts[{"-i": "--id", "--list-gpus": "-L"}.get(key, key)] = value
        i += 1
    return opts


def run(argv: Sequence[str], out: Callable[[str], object], err: Callable[[str], object]) -> int:
    try:
        opts = _parse(argv)
        if "-h" in opts or "--help" in opts:
            out(
                f"nvidia-smi ({MARKER}): supports -L, --query-gpu=FIELDS --format=csv"
                "[,noheader][,nounits], --query-compute-apps, -i/--id, --version and the "
                f"default table. Fields: {', '.join(sorted(FIELDS))}.\n"
            )
            return 0
        known = {"-L", "--query-gpu", "--query-compute-apps", "--format", "--id", "--version"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise UsageError(f"Option {unknown[0]} is not supported by the lab's nvidia-smi.")
        config = load_config()
        if "--version" in opts:
            out(version(config))
            return 0
        gpus = _select(visible_gpus(config), opts.get("--id"))
        if "--query-compute-apps" in opts:
            out(query_apps(opts["--query-compute-apps"], opts.get("--format", "csv")))
            err(f"nvidia-smi: {MARKER}\n")
            return 0
        if not gpus and "--id" not in opts:
            out("No devices were found\n")
            err(f"nvidia-smi: {MARKER}\n")
            return 6
        if "--query-gpu" in opts:
            if "--format" not in opts:
                raise UsageError("--query-gpu requires --format.")
            out(query_csv(gpus, opts["--query-gpu"], opts["--format"]))
            err(f"nvidia-smi: {MARKER}: values from {CONFIG_PATH}\n")
            return 0
        if "-L" in opts:
            out(list_gpus(gpus))
            err(f"nvidia-smi: {MARKER}: values from {CONFIG_PATH}\n")
            return 0
        out(table(gpus, config))
        return 0
    except UsageError as e:
        err(f"{e}\nPlease run 'nvidia-smi -h' for help. ({MARKER})\n")
        return 2
    except (OSError, ValueError) as e:
        # What the real tool says when the driver is missing, with the lab's reason.
        err(f"NVIDIA-SMI has failed ({MARKER}: {e}).\n")
        return 9


def main() -> int:
    return run(sys.argv[1:], sys.stdout.write, sys.stderr.write)


if __name__ == "__main__":
    sys.exit(main())
