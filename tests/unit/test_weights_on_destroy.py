"""What happens to the weights on destroy, under Pulumi mocks (the whole program).

pulumi-command runs a Command's `delete` when the resource leaves the program, whatever the
reason: `pulumi destroy`, but also a toggle that stops declaring it, or a plan that stops
serving on a host. So the `weights-<host>-remove` step is declared for every host in
`hosts`, whether keep_on_destroy is true or false and whether the host serves: a toggle or a
shrinking plan is an update of its `delete` (pulumi-command runs nothing on update when
there is no `create`), and only destroy (or removing the host from `hosts`) runs the
delete stored at the last `pulumi up`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.pulumi_mocks import REMOTE, RecordingMocks, reveal
from tests.unit.test_program import project, run_program, write_project

__all__ = ["project"]  # the fixture, used by name


def removes(mocks: RecordingMocks) -> dict[str, dict[str, Any]]:
    return {r.name: r.inputs for r in mocks.of_type(REMOTE) if r.name.endswith("-remove")}


def test_the_remove_step_is_the_same_resource_whatever_keep_on_destroy_says(
    project: Path,
) -> None:
    config = write_project(project, hosts=2)
    config["serving"].update({"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    config["model"]["keep_on_destroy"] = False
    deleting = removes(run_program(config, {"apiKey": "sk-lab"}))
    config["model"]["keep_on_destroy"] = True
    keeping = removes(run_program(config, {"apiKey": "sk-lab"}))
    # Same names (same URNs): toggling is an update of these resources, never a delete.
    assert sorted(deleting) == sorted(keeping) == ["weights-n1-remove", "weights-n2-remove"]
    for name in deleting:
        for inputs in (deleting[name], keeping[name]):
            # No create: pulumi-command runs nothing (and connects to nothing) on create or
            # update. No triggers: nothing ever replaces it (a replace would run delete).
            assert "create" not in inputs and "update" not in inputs
            assert "triggers" not in inputs
        assert "delete" not in keeping[name]
        script = deleting[name]["delete"]
        assert "wtool release" in script
        assert "vllm-cluster/t" in script  # the owner: <project>/<stack>
        assert "/data/models/tiny" in script
        assert "rm -rf" not in script


def test_a_host_that_stops_serving_keeps_its_remove_step(project: Path) -> None:
    """Three hosts, a tiny model: the plan serves on n1 only. n2 and n3 get no host steps,
    but their remove steps stay declared: a plan that shrinks from 3 nodes to 1 updates
    nothing on them and deletes nothing."""
    config = write_project(project, hosts=3)
    config["model"]["keep_on_destroy"] = False
    mocks = run_program(config, {"apiKey": "sk-lab"})
    assert [r.name for r in mocks.of_type("vllm-cluster:index:GpuHost")] == ["n1"]
    steps = removes(mocks)
    assert sorted(steps) == ["weights-n1-remove", "weights-n2-remove", "weights-n3-remove"]
    assert reveal(steps["weights-n3-remove"]["connection"])["host"] == "10.9.0.3"
    assert "wtool release" in steps["weights-n3-remove"]["delete"]


def test_every_copy_into_the_model_path_is_claimed(project: Path) -> None:
    """The fetch steps record what they write (claim begin before, claim end after)."""
    config = write_project(project, hosts=2)
    config["serving"].update({"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    config["model"]["distribute"] = "fanout"
    mocks = run_program(config, {"apiKey": "sk-lab"})
    for name in ("weights-n1-fetch", "weights-n2-fetch"):
        script = mocks.named(name).script
        begin, end = script.index("wclaim begin"), script.rindex("wclaim end")
        copy = "fanout" if name.endswith("n2-fetch") else "rsync -a"
        assert begin < script.index(copy) < end, name


def test_weights_are_kept_on_destroy_unless_the_config_says_otherwise(project: Path) -> None:
    """model.keep_on_destroy defaults to true: without the key, no host's remove step has a
    delete script (issue 17 named this default as untested)."""
    config = write_project(project, hosts=2)
    config["serving"].update({"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    config["model"].pop("keep_on_destroy", None)
    steps = removes(run_program(config, {"apiKey": "sk-lab"}))
    assert sorted(steps) == ["weights-n1-remove", "weights-n2-remove"]
    assert all("delete" not in inputs for inputs in steps.values()), steps
