"""Hub downloads with the REAL huggingface_hub client (PyPI) against the lab hub fixture
(lab/hub/hubd.py, a stand-in for the hub served on 127.0.0.1): ``snapshot_download``, and
the program's rendered download step running the real ``hf`` CLI. Resume after a kill, a
refused token, and the token kept off command lines and out of every log.

No lab hosts are needed: the hub runs here as a process, as the lab will run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components.render.shell import DownloadSpec, weights_download

from .conftest import needs_tools

pytestmark = pytest.mark.scripts

REPO_ROOT = Path(__file__).resolve().parents[2]
HUBD = REPO_ROOT / "lab" / "hub" / "hubd.py"
MAKE_TINY = REPO_ROOT / "lab" / "engine" / "make_tiny_model.py"
REPO_ID = "lab/tiny-llama"
TOKEN = "hf_LaB_hub_t0ken_never_shown"
OWNER = "vllm-cluster/lab"


# --- fixtures: the tiny model, the hub, the real hf CLI ------------------------------------


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's tiny model, built here (a fresh machine has none)."""
    out = tmp_path_factory.mktemp("model") / "tiny-llama"
    proc = subprocess.run(
        [sys.executable, str(MAKE_TINY), str(out)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"make_tiny_model.py failed:\n{proc.stderr}"
    return out


def make_repo(tiny_model: Path, root: Path, big: dict[str, int] | None = None) -> Path:
    """The tiny model plus test-only big files of random bytes (the model itself unchanged)."""
    repo = root / "repo"
    shutil.copytree(tiny_model, repo)
    for name, size in (big or {}).items():
        (repo / name).write_bytes(os.urandom(size))
    return repo


def served_files(repo: Path) -> dict[str, int]:
    """What hubd serves: every file but dot files (the lab's build marker)."""
    return {
        p.relative_to(repo).as_posix(): p.stat().st_size
        for p in repo.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(repo).parts)
    }


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Hub:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_hubd/stats", timeout=5) as r:
            data: dict[str, Any] = json.load(r)
        return data

    def sent(self) -> dict[str, int]:
        """Body bytes served so far per file of REPO_ID."""
        prefix = REPO_ID + "/"
        return {
            k.removeprefix(prefix): v
            for k, v in self.stats()["bytes_sent"].items()
            if k.startswith(prefix)
        }


HubFactory = Callable[..., Hub]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubFactory]:
    """Factory: start hubd on a free port serving ``repo`` as REPO_ID; stopped afterwards."""
    started: list[Hub] = []

    def start(
        repo: Path,
        *,
        token: str | None = TOKEN,
        throttle: tuple[str, ...] = (),
        drop_once: tuple[str, ...] = (),
    ) -> Hub:
        n = len(started)
        ready, log = tmp_path / f"hubd{n}.json", tmp_path / f"hubd{n}.log"
        args = [
            sys.executable,
            str(HUBD),
            "--repo",
            f"{REPO_ID}={repo}",
            "--ready-file",
            str(ready),
        ]
        for t in throttle:
            args += ["--throttle", t]
        for d in drop_once:
            args += ["--drop-once", d]
        env = {k: v for k, v in os.environ.items() if k != "HUBD_TOKEN"}
        if token is not None:
            env["HUBD_TOKEN"] = token  # environment, not argv
        proc = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"hubd did not start:\n{log.read_text()}")
            time.sleep(0.05)
        h = Hub(json.loads(ready.read_text())["url"], proc, log)
        started.append(h)
        return h

    yield start
    for h in started:
        h.proc.terminate()
        h.proc.wait(timeout=10)


@pytest.fixture
def hf_bin(tmp_path: Path) -> Path:
    """A directory with the real ``hf`` CLI of the installed huggingface_hub, for PATH."""
    pytest.importorskip("huggingface_hub", reason="huggingface_hub (requirements-dev.txt)")
    real = Path(sys.executable).parent / "hf"
    if not real.exists():
        pytest.fail(f"the hf CLI is missing beside {sys.executable}: pip install huggingface_hub")
    d = tmp_path / "hfbin"
    d.mkdir()
    (d / "hf").symlink_to(real)
    return d


@pytest.fixture
def ms_bin(tmp_path: Path) -> Path:
    """A directory with the real ``modelscope`` CLI of the installed modelscope, for PATH."""
    pytest.importorskip("modelscope", reason="modelscope (requirements-dev.txt)")
    real = Path(sys.executable).parent / "modelscope"
    if not real.exists():
        pytest.fail(
            f"the modelscope CLI is missing beside {sys.executable}: pip install modelscope"
        )
    d = tmp_path / "msbin"
    d.mkdir()
    (d / "modelscope").symlink_to(real)
    return d


@pytest.fixture
def hf_env(tmp_path: Path) -> dict[str, str]:
    """This machine's environment without any hub setting; a private HOME and hub caches."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "MODELSCOPE"))
    }
    env["HOME"] = str(tmp_path / "home")
    env["HF_HOME"] = str(tmp_path / "home" / "hf")
    env["MODELSCOPE_CACHE"] = str(tmp_path / "home" / "modelscope")
    return env


# --- running the rendered step ---------------------------------------------------------------


def download_script(hub: Hub, path: Path, tmp_path: Path, **kw: Any) -> str:
    spec = DownloadSpec(
        host="lab-1",
        source=kw.pop("source", "huggingface"),
        model_id=REPO_ID,
        path=str(path),
        endpoint=hub.url,
        token=kw.pop("token", "stdin"),
        owner=OWNER,
        state_dir=str(tmp_path / "state"),
        retry_delay_s=kw.pop("retry_delay_s", 0),
        **kw,
    )
    return weights_download(spec)


@dataclass
class Run:
    proc: subprocess.Popen[str]
    out: Path
    err: Path
    ps: list[str]  # `ps -eww -o args` samples taken while it ran

    def text(self) -> tuple[str, str]:
        return self.out.read_text(), self.err.read_text()


def start_script(
    script: str, stdin: str, env: dict[str, str], hf_bin: Path, tmp_path: Path, name: str
) -> Run:
    """Run a rendered step as the remote side would (``bash -c``, secret on stdin), in its
    own session so that the whole tree can be killed, as a dropped SSH session would."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    full_env = {**env, "PATH": f"{hf_bin}:{env.get('PATH', '/usr/bin:/bin')}"}
    proc = subprocess.Popen(
        ["bash", "-c", script],
        stdin=subprocess.PIPE,
        stdout=out.open("w"),
        stderr=err.open("w"),
        env=full_env,
        text=True,
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    return Run(proc, out, err, [])


def sample_ps(run: Run) -> None:
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True)
    run.ps.append(ps.stdout)


def wait_sampling(run: Run, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while run.proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(run.proc.pid, signal.SIGKILL)
            pytest.fail(f"the download step did not finish in {timeout} s:\n{run.err.read_text()}")
        sample_ps(run)
        time.sleep(0.1)
    return run.proc.returncode


def assert_token_nowhere(
    token: str, run: Run, hub: Hub, *trees: Path, cli: str = "hf download"
) -> None:
    out, err = run.text()
    assert token not in out and token not in err, "the token is in the step's output"
    assert token not in hub.log.read_text(), "the token is in the hub's log"
    seen = [s for s in run.ps if cli in s]
    assert seen, "ps never saw the download running (nothing was checked)"
    assert not [s for s in run.ps if token in s], "the token is on a command line (ps)"
    for tree in trees:
        for p in tree.rglob("*"):
            if p.is_file():
                assert token.encode() not in p.read_bytes(), f"the token is written in {p}"


# --- 1. the real client downloads the tiny model --------------------------------------------


def test_snapshot_download_with_the_real_client(
    tiny_model: Path, tmp_path: Path, hub: HubFactory, hf_env: dict[str, str]
) -> None:
    hh = pytest.importorskip("huggingface_hub", reason="huggingface_hub (requirements-dev.txt)")
    repo = make_repo(tiny_model, tmp_path)
    h = hub(repo)
    dest = tmp_path / "dl"
    got = hh.snapshot_download(
        repo_id=REPO_ID,
        local_dir=dest,
        endpoint=h.url,
        token=TOKEN,
        cache_dir=tmp_path / "hf-cache",
    )
    assert Path(got) == dest.resolve()
    files = served_files(repo)
    assert set(files) >= {"config.json", "model.safetensors", "model.safetensors.index.json"}
    for rel in files:
        assert sha(dest / rel) == sha(repo / rel), rel
    assert h.sent() == files  # every file served exactly once, whole
    assert h.stats()["refused"] == 0


def test_rendered_step_downloads_with_the_real_hf_cli_token_off_argv_and_logs(
    tiny_model: Path, tmp_path: Path, hub: HubFactory, hf_bin: Path, hf_env: dict[str, str]
) -> None:
    needs_tools("python3", "ps")
    # A 2 MiB test-only file at 2 MiB/s: the download lasts about a second, long enough for
    # ps to see it running.
    repo = make_repo(tiny_model, tmp_path, {"big.bin": 2 * 1024 * 1024})
    h = hub(repo, throttle=("big.bin=2097152",))
    path = tmp_path / "data" / "models" / "tiny"
    script = download_script(h, path, tmp_path)
    assert TOKEN not in script
    run = start_script(script, TOKEN + "\n", hf_env, hf_bin, tmp_path, "first")
    rc = wait_sampling(run)
    out, err = run.text()
    assert rc == 0, err
    summary = json.loads(out)
    files = served_files(repo)
    assert summary["manifest"] is True
    assert summary["files"] == len(files)  # .cache/huggingface is not part of the model
    for rel in files:
        assert sha(path / rel) == sha(repo / rel), rel
    assert h.sent() == files
    assert_token_nowhere(TOKEN, run, h, path, tmp_path / "state", Path(hf_env["HOME"]))

    again = start_script(script, TOKEN + "\n", hf_env, hf_bin, tmp_path, "again")
    assert again.proc.wait(timeout=60) == 0, again.text()[1]
    assert "already complete" in again.text()[1]
    assert h.sent() == files  # nothing served again


# --- 2. resume: killed mid-way, the next run finishes without fetching it all again ----------


def test_killed_download_resumes_without_fetching_complete_files_again(
    tiny_model: Path, tmp_path: Path, hub: HubFactory, hf_bin: Path, hf_env: dict[str, str]
) -> None:
    needs_tools("python3", "ps")
    mib = 1024 * 1024
    # big-a.bin at full speed, big-b.bin throttled to 0.5 MiB/s (6 s, so that a loaded machine
    # still catches it part-way): when the step is killed, everything but big-b.bin is
    # complete and big-b.bin is part-way.
    big = {"big-a.bin": 3 * mib, "big-b.bin": 3 * mib}
    repo = make_repo(tiny_model, tmp_path, big)
    files = served_files(repo)
    total = sum(files.values())
    h = hub(repo, throttle=(f"big-b.bin={mib // 2}",))
    path = tmp_path / "data" / "models" / "tiny"
    script = download_script(h, path, tmp_path)

    first = start_script(script, TOKEN + "\n", hf_env, hf_bin, tmp_path, "first")
    deadline = time.monotonic() + 60
    while True:
        sample_ps(first)
        sent = h.sent()
        if sent.get("big-a.bin") == big["big-a.bin"] and sent.get("big-b.bin", 0) >= mib:
            break
        assert first.proc.poll() is None, f"the step ended before the kill:\n{first.text()[1]}"
        assert time.monotonic() < deadline, f"no progress: {sent}"
        time.sleep(0.05)
    os.killpg(first.proc.pid, signal.SIGKILL)  # the SSH session drops: the whole tree dies
    first.proc.wait(timeout=10)
    # The hub counts what it wrote until its next write fails (status 499 in its record).
    while not [r for r in h.stats()["requests"] if r["status"] == 499]:
        assert time.monotonic() < deadline, "the hub never saw the client go away"
        time.sleep(0.05)
    run1 = h.sent()
    assert run1["big-b.bin"] < big["big-b.bin"]
    assert not (path / "big-b.bin").exists()
    assert_token_nowhere(TOKEN, first, h, path, tmp_path / "state")

    second = start_script(script, TOKEN + "\n", hf_env, hf_bin, tmp_path, "second")
    rc = wait_sampling(second)
    out, err = second.text()
    assert rc == 0, err
    run2 = {k: v - run1.get(k, 0) for k, v in h.sent().items()}
    complete_before = sorted(k for k, v in run1.items() if v == files[k])
    print(
        f"\nresume: repo {total} B; run 1 (killed) served {sum(run1.values())} B "
        f"(big-b.bin {run1['big-b.bin']} of {big['big-b.bin']}); run 2 served "
        f"{sum(run2.values())} B: {json.dumps({k: v for k, v in run2.items() if v})}"
    )
    assert "big-a.bin" in complete_before and "model.safetensors" in complete_before
    for k in complete_before:
        assert run2.get(k, 0) == 0, f"{k} was complete after run 1 and was fetched again"
    assert sum(run2.values()) < total
    # The part-way file starts over: huggingface_hub >= 1.18 writes each download to a
    # per-process temporary file and never reads a killed run's partial file again
    # (huggingface/huggingface_hub#4196). Only whole files are kept across runs.
    assert {k: v for k, v in run2.items() if v} == {"big-b.bin": big["big-b.bin"]}
    assert json.loads(out)["files"] == len(files)
    for rel in files:
        assert sha(path / rel) == sha(repo / rel), rel
    assert not list(path.rglob("*.incomplete")), "partial files of the killed run were left"
    assert_token_nowhere(TOKEN, second, h, path, tmp_path / "state", Path(hf_env["HOME"]))


def test_a_hub_that_cannot_be_reached_after_a_partial_download_is_a_failure(
    tiny_model: Path, tmp_path: Path, hub: HubFactory, hf_bin: Path, hf_env: dict[str, str]
) -> None:
    """huggingface_hub returns an existing, non-empty local dir with exit 0 when the hub
    cannot be reached ("Returning existing local_dir ... as remote repo cannot be
    accessed") unless its own cache (HF_HOME) still has the repo's file listing: it does not
    in the engine image's throwaway container, nor after the cache was cleaned. After an
    interrupted download that dir is partial: the step must not call it complete (seen in
    the bare lab e2e: the weights were recorded complete without a file)."""
    needs_tools("python3", "ps")
    mib = 1024 * 1024
    repo = make_repo(tiny_model, tmp_path, {"big-b.bin": 3 * mib})
    h = hub(repo, throttle=(f"big-b.bin={mib // 2}",))
    path = tmp_path / "data" / "models" / "tiny"
    script = download_script(h, path, tmp_path, attempts=2)
    first = start_script(script, TOKEN + "\n", hf_env, hf_bin, tmp_path, "first")
    deadline = time.monotonic() + 60
    while h.sent().get("big-b.bin", 0) < mib:
        assert first.proc.poll() is None, f"the step ended before the kill:\n{first.text()[1]}"
        assert time.monotonic() < deadline, f"no progress: {h.sent()}"
        time.sleep(0.05)
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    h.proc.terminate()  # the hub goes away
    h.proc.wait(timeout=10)
    assert (path / "config.json").exists() and not (path / "big-b.bin").exists()
    shutil.rmtree(hf_env["HF_HOME"])  # a client with no cache of its own, as in a container

    second = start_script(script, TOKEN + "\n", hf_env, hf_bin, tmp_path, "second")
    assert second.proc.wait(timeout=120) == 1
    out, err = second.text()
    assert out == ""
    assert "as remote repo cannot be accessed" in err  # the client's own fallback, seen
    assert "the client only handed back the files already in" in err
    assert "download of lab/tiny-llama failed 2 times" in err
    assert not (path / ".vllm-cluster-download.json").exists()  # not marked complete
    assert not (path / ".vllm-cluster-manifest.json").exists()


def test_dropped_connection_is_resumed_with_range_by_the_client(
    tiny_model: Path, tmp_path: Path, hub: HubFactory
) -> None:
    """Within one run the client continues a broken transfer with ``Range`` (hubd's 206).
    It resumes from what it had written: huggingface_hub 2.4 writes in 10 MiB chunks
    (constants.DOWNLOAD_CHUNK_SIZE), so bytes received after the last whole chunk come again."""
    hh = pytest.importorskip("huggingface_hub", reason="huggingface_hub (requirements-dev.txt)")
    from huggingface_hub import constants

    chunk = constants.DOWNLOAD_CHUNK_SIZE
    size, cut = chunk + 2 * 1024 * 1024, chunk + 1024 * 1024
    repo = make_repo(tiny_model, tmp_path, {"big.bin": size})
    h = hub(repo, drop_once=(f"big.bin={cut}",))
    dest = tmp_path / "dl"
    hh.snapshot_download(
        repo_id=REPO_ID, local_dir=dest, endpoint=h.url, token=TOKEN, cache_dir=tmp_path / "c"
    )
    assert sha(dest / "big.bin") == sha(repo / "big.bin")
    gets = [
        r for r in h.stats()["requests"] if r["method"] == "GET" and r["path"].endswith("/big.bin")
    ]
    assert [(g["status"], g["range"]) for g in gets] == [(200, None), (206, f"bytes={chunk}-")]
    # The first 10 MiB were not sent twice; only the 1 MiB after them was.
    assert h.sent()["big.bin"] == size + (cut - chunk)


# --- 3. a refused token ----------------------------------------------------------------------


def test_wrong_token_fails_at_once_naming_the_hub_token_key(
    tiny_model: Path, tmp_path: Path, hub: HubFactory, hf_bin: Path, hf_env: dict[str, str]
) -> None:
    needs_tools("python3", "ps")
    hh = pytest.importorskip("huggingface_hub", reason="huggingface_hub (requirements-dev.txt)")
    # Imported by name: the package's lazy attributes do not include `errors`, which is there
    # only once some other code imported it (a test run in another order failed on it).
    errors = pytest.importorskip("huggingface_hub.errors")
    repo = make_repo(tiny_model, tmp_path)
    h = hub(repo)
    wrong = "hf_wrong_t0ken_not_this_one"

    with pytest.raises(errors.HfHubHTTPError) as e:
        hh.snapshot_download(repo_id=REPO_ID, local_dir=tmp_path / "x", endpoint=h.url, token=wrong)
    assert e.value.response.status_code == 401

    path = tmp_path / "data" / "models" / "tiny"
    script = download_script(h, path, tmp_path, attempts=3)
    run = start_script(script, wrong + "\n", hf_env, hf_bin, tmp_path, "wrong")
    rc = run.proc.wait(timeout=60)
    out, err = run.text()
    assert rc == 1
    assert out == ""
    assert "the hub refused the token for lab/tiny-llama (HTTP 401/403)" in err
    assert "pulumi config set --secret vllm-cluster:hubToken" in err
    assert "download attempt 1/3 failed" not in err  # no retry: a retry cannot fix a token
    assert wrong not in err and TOKEN not in err
    assert h.sent() == {}  # no file was served
    assert h.stats()["refused"] >= 2  # the client above, then the step's one attempt
    assert not (path / ".vllm-cluster-download.json").exists()

    # No token at all for a private repo: the hub says "not found" (as the real one does);
    # the step's last words still name the key.
    script = download_script(h, path, tmp_path, token="none", attempts=1)
    run = start_script(script, "", hf_env, hf_bin, tmp_path, "none")
    assert run.proc.wait(timeout=60) == 1
    assert "(vllm-cluster:hubToken)" in run.text()[1]


# --- ModelScope: the real modelscope CLI (modelscope_hub) against the same fixture -----------


def test_rendered_step_with_the_real_modelscope_cli_continues_a_part_way_file(
    tiny_model: Path, tmp_path: Path, hub: HubFactory, ms_bin: Path, hf_env: dict[str, str]
) -> None:
    """modelscope keeps ``<file>.incomplete`` beside the file and continues it with ``Range``:
    after a kill, the next run fetches only the rest of the part-way file."""
    needs_tools("python3", "ps")
    mib = 1024 * 1024
    big = {"big-b.bin": 3 * mib}
    repo = make_repo(tiny_model, tmp_path, big)
    files = served_files(repo)
    total = sum(files.values())
    h = hub(repo, throttle=(f"big-b.bin={3 * mib // 2}",))
    path = tmp_path / "data" / "models" / "tiny"
    script = download_script(h, path, tmp_path, source="modelscope")
    assert TOKEN not in script

    first = start_script(script, TOKEN + "\n", hf_env, ms_bin, tmp_path, "first")
    deadline = time.monotonic() + 60
    while True:
        sample_ps(first)
        sent = h.sent()
        others_done = all(sent.get(k) == v for k, v in files.items() if k not in big)
        if others_done and sent.get("big-b.bin", 0) >= mib:
            break
        assert first.proc.poll() is None, f"the step ended before the kill:\n{first.text()[1]}"
        assert time.monotonic() < deadline, f"no progress: {sent}"
        time.sleep(0.05)
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    while not [r for r in h.stats()["requests"] if r["status"] == 499]:
        assert time.monotonic() < deadline, "the hub never saw the client go away"
        time.sleep(0.05)
    run1 = h.sent()
    partial = (path / "big-b.bin.incomplete").stat().st_size
    assert 0 < partial < big["big-b.bin"]
    assert_token_nowhere(TOKEN, first, h, path, tmp_path / "state", cli="modelscope download")

    second = start_script(script, TOKEN + "\n", hf_env, ms_bin, tmp_path, "second")
    rc = wait_sampling(second)
    out, err = second.text()
    assert rc == 0, err
    run2 = {k: v - run1.get(k, 0) for k, v in h.sent().items()}
    print(
        f"\nmodelscope resume: repo {total} B; run 1 (killed) served {sum(run1.values())} B, "
        f"{partial} B of big-b.bin on disk; run 2 served {sum(run2.values())} B: "
        f"{json.dumps({k: v for k, v in run2.items() if v})}"
    )
    # Only the rest of the part-way file, asked for from where the partial file ends.
    assert {k: v for k, v in run2.items() if v} == {"big-b.bin": big["big-b.bin"] - partial}
    ranged = [r for r in h.stats()["requests"] if r["range"] and r["path"].endswith("/repo")]
    assert [(r["status"], r["range"]) for r in ranged] == [(206, f"bytes={partial}-")]
    assert json.loads(out)["files"] == len(files)
    for rel in files:
        assert sha(path / rel) == sha(repo / rel), rel
    assert not list(path.rglob("*.incomplete"))
    assert_token_nowhere(
        TOKEN, second, h, path, tmp_path / "state", Path(hf_env["HOME"]), cli="modelscope download"
    )


def test_modelscope_wrong_token_fails_at_once_naming_the_hub_token_key(
    tiny_model: Path, tmp_path: Path, hub: HubFactory, ms_bin: Path, hf_env: dict[str, str]
) -> None:
    needs_tools("python3")
    h = hub(make_repo(tiny_model, tmp_path))
    wrong = "ms_wrong_t0ken_not_this_one"
    path = tmp_path / "data" / "models" / "tiny"
    script = download_script(h, path, tmp_path, source="modelscope", attempts=3)
    run = start_script(script, wrong + "\n", hf_env, ms_bin, tmp_path, "wrong")
    assert run.proc.wait(timeout=60) == 1
    out, err = run.text()
    assert out == ""
    assert "the hub refused the token for lab/tiny-llama (HTTP 401/403)" in err
    assert "pulumi config set --secret vllm-cluster:hubToken" in err
    assert "download attempt 1/3 failed" not in err
    assert wrong not in err
    assert h.sent() == {}


# --- a host without a hub CLI: the engine image's client (vLLM images ship huggingface_hub) --


@pytest.fixture(scope="session")
def engine_image() -> str:
    """The lab's stand-in engine image, which carries huggingface_hub as vLLM images do
    (lab/engine/build.sh: cached, seconds when up to date; loaded into this machine's Docker)."""
    needs_tools("docker")
    proc = subprocess.run(
        [str(REPO_ROOT / "tools" / "with-env"), str(REPO_ROOT / "lab" / "engine" / "build.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, f"lab/engine/build.sh failed:\n{proc.stderr[-3000:]}"
    return "vllm-standin:lab"


def docker_inspect_envs(name_prefix: str) -> list[str]:
    """The environment of every running container whose name starts with the prefix."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"name={name_prefix}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if not ids:
        return []
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{json .Config.Env}} {{json .Args}}", *ids],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [out] if out.strip() else []


def test_without_a_host_cli_the_engine_images_client_downloads_token_unseen(
    tiny_model: Path,
    tmp_path: Path,
    hub: HubFactory,
    hf_env: dict[str, str],
    engine_image: str,
) -> None:
    """No hf, huggingface-cli or modelscope on PATH (a bare server): the step runs ``hf
    download`` in the engine image, with the model directory mounted at its own path. The
    token is on no command line (ps) and in no ``docker inspect`` of the running container."""
    needs_tools("python3", "ps", "docker")
    repo = make_repo(tiny_model, tmp_path, {"big.bin": 2 * 1024 * 1024})
    h = hub(repo, throttle=("big.bin=1048576",))  # ~2 s: ps and docker inspect see it run
    path = tmp_path / "data" / "models" / "tiny"
    script = download_script(h, path, tmp_path, engine_image=engine_image)
    empty_bin = tmp_path / "nobin"
    empty_bin.mkdir()
    # PATH without the venv (its hf) but with docker, python3 and the coreutils.
    env = {**hf_env, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    assert not [d for d in env["PATH"].split(":") if (Path(d) / "hf").exists()], "hf on PATH"
    run = start_script(script, TOKEN + "\n", env, empty_bin, tmp_path, "image")
    inspected: list[str] = []
    deadline = time.monotonic() + 180
    while run.proc.poll() is None:
        assert time.monotonic() < deadline, run.err.read_text()
        sample_ps(run)
        inspected += docker_inspect_envs("vllm-cluster-download-")
        time.sleep(0.1)
    out, err = run.text()
    assert run.proc.returncode == 0, err
    assert "running the one in the engine image vllm-standin:lab" in err
    files = served_files(repo)
    assert json.loads(out)["files"] == len(files)
    for rel in files:
        assert sha(path / rel) == sha(repo / rel), rel
    assert h.sent() == files
    assert inspected, "docker inspect never saw the download container (nothing was checked)"
    assert not [i for i in inspected if TOKEN in i], "the token is in docker inspect"
    assert_token_nowhere(TOKEN, run, h, path, tmp_path / "state", cli="docker run")
    # The container is gone (--rm), and nothing of it is left under the model directory
    # but the client's own download cache, which the hf CLI keeps beside the files.
    assert docker_inspect_envs("vllm-cluster-download-") == []


def test_without_any_client_the_step_names_the_fix(
    tiny_model: Path, tmp_path: Path, hub: HubFactory, hf_env: dict[str, str]
) -> None:
    """No CLI on the host and the engine image not there (yet): stop, naming what to install."""
    needs_tools("python3")
    h = hub(make_repo(tiny_model, tmp_path))
    path = tmp_path / "data" / "models" / "tiny"
    script = download_script(h, path, tmp_path, engine_image="vllm-cluster-test-absent:0")
    env = {**hf_env, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    run = start_script(script, TOKEN + "\n", env, tmp_path, tmp_path, "none")
    assert run.proc.wait(timeout=60) == 1
    err = run.text()[1]
    assert (
        "neither hf nor huggingface-cli found, and the engine image vllm-cluster-test-absent:0"
        " is not on this host. Fix: pip install -U huggingface_hub on lab-1"
    ) in err
    assert h.sent() == {}
