"""State written by earlier releases stays usable: their pickled dynamic providers resolve.

The pickles here name classes the way dill stored them in those releases' state (module
path + class name), and are loaded in a fresh interpreter that imports nothing but what
unpickling imports, as Pulumi's dynamic-provider host does. Any class name pickled from the
retired `components.commands` resolves (EARLIER_CLASS stands for them); the upgrade e2e test
(tests/e2e/test_upgrade.py) loads the real ones from a previous release's state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EARLIER_CLASS = "StepProviderOfAnEarlierRelease"


def pickled_instance(module: str, name: str) -> bytes:
    """Protocol-4 pickle of `module.name()` made without importing it (GLOBAL, NEWOBJ)."""
    return b"\x80\x04c" + f"{module}\n{name}\n".encode() + b")\x81."


def load_in_fresh_python(data: bytes, code: str) -> subprocess.CompletedProcess[str]:
    program = f"import pickle, sys\nprovider = pickle.loads({data!r})\n{code}\n"
    return subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_earlier_step_provider_reads_state_and_never_runs_its_delete_script(
    tmp_path: Path,
) -> None:
    """The upgrade deletes the old steps; the one old delete script removed the weights."""
    weights = tmp_path / "weights"
    weights.write_text("x")
    props = {"label": "weights-lab-1-remove", "target": [], "delete": f"rm -rf {weights}"}
    done = load_in_fresh_python(
        pickled_instance("components.commands", EARLIER_CLASS),
        f"props = {props!r}\n"
        "print(type(provider).__name__)\n"
        "assert provider.read('x', props).outs == props\n"
        "provider.delete('x', props)\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "RetiredStepProvider"
    assert weights.read_text() == "x", "an old step's delete script ran"


def test_moved_drift_check_provider_resolves_from_its_old_path() -> None:
    done = load_in_fresh_python(
        pickled_instance("components.remote_check", "RemoteCheckProvider"),
        "print(type(provider).__module__, type(provider).__name__)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["components.resources.remote_check", "RemoteCheckProvider"]
