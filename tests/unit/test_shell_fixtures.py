"""Data-driven tests of the rendered shell (pyinfra style): each JSON file under
fixtures/shell names a render function and cases with arguments and what the script must
contain, in which order, and what it must not contain (or the error it must raise).
Every rendered script is also syntax-checked with ``bash -n``.

What a case may expect is what the renderer makes of its arguments (the values it writes,
quoted, into the script, the checks it adds or leaves out, the inputs it refuses): a fragment
copied verbatim from the renderers' source or the static scripts would pass whatever the
arguments were, and is refused by `test_no_fixture_expects_text_copied_from_the_source`.
What the scripts then do is tested by running them (tests/scripts).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import components.render.shell as shell

FIXTURES = Path(__file__).parent / "fixtures" / "shell"


def _cases() -> list[Any]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        data = json.loads(path.read_text())
        for name, case in data["cases"].items():
            out.append(pytest.param(data, case, id=f"{path.stem}:{name}"))
    return out


def _call(data: dict[str, Any], args: dict[str, Any]) -> str:
    func = getattr(shell, data["function"])
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    for key, cls_name in data.get("nested", {}).items():
        nested = kwargs.get(key)
        if isinstance(nested, dict):
            kwargs[key] = getattr(shell, cls_name)(**nested)
    spec = data.get("spec")
    result = func(getattr(shell, spec)(**kwargs)) if spec else func(**kwargs)
    assert isinstance(result, str)
    return result


def bash_syntax_ok(script: str) -> None:
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("data", "case"), _cases())
def test_fixture(data: dict[str, Any], case: dict[str, Any]) -> None:
    if "raises" in case:
        with pytest.raises(ValueError, match=None) as info:
            _call(data, case["args"])
        assert case["raises"] in str(info.value)
        return
    script = _call(data, case["args"])
    assert script.startswith("set -euo pipefail\n")
    pos = 0
    for fragment in case.get("in_order", []):
        found = script.find(fragment, pos)
        assert found >= 0, f"{fragment!r} missing after offset {pos}"
        pos = found + len(fragment)
    for fragment in case.get("contains", []):
        assert fragment in script, f"{fragment!r} missing"
    for fragment in case.get("absent", []):
        assert fragment not in script, f"{fragment!r} must not be in the script"
    bash_syntax_ok(script)


RENDER_SOURCES = Path(__file__).resolve().parents[2] / "components" / "render"


def test_no_fixture_expects_text_copied_from_the_source() -> None:
    source = "".join(
        p.read_text()
        for pattern in ("*.py", "shell/*.py", "shell/sh/*.sh")
        for p in sorted(RENDER_SOURCES.glob(pattern))
    )
    copies = [
        f"{path.name}:{name}: {fragment!r}"
        for path in sorted(FIXTURES.glob("*.json"))
        for name, case in json.loads(path.read_text())["cases"].items()
        for key in ("in_order", "contains")
        for fragment in case.get(key, [])
        if fragment in source
    ]
    assert copies == [], "fixture fragments that are copies of the source:\n" + "\n".join(copies)
