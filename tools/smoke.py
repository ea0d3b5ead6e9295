"""`make smoke`: read the stack outputs and send one chat completion to the endpoint.

This is how CI (or a person) checks a deployed stack from the outside:
    pulumi stack output --json --show-secrets | python tools/smoke.py
or, without stdin, it runs `pulumi stack output` itself (STACK env var selects the stack).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import requests


def stack_outputs() -> dict[str, Any]:
    if not sys.stdin.isatty() and not os.environ.get("SMOKE_IGNORE_STDIN"):
        data = sys.stdin.read().strip()
        if data:
            return dict(json.loads(data))
    argv = ["pulumi", "stack", "output", "--json", "--show-secrets"]
    if os.environ.get("STACK"):
        argv += ["--stack", os.environ["STACK"]]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"smoke: `{' '.join(argv)}` failed:\n{out.stderr.strip()}")
    return dict(json.loads(out.stdout))


def main() -> int:
    outputs = stack_outputs()
    for key in ("endpoint", "served_model_name", "api_key"):
        if not outputs.get(key):
            print(
                f"smoke: stack output `{key}` is missing; did `pulumi up` finish?", file=sys.stderr
            )
            return 1
    endpoint = str(outputs["endpoint"]).rstrip("/")
    headers = {"Authorization": f"Bearer {outputs['api_key']}"}
    body = {
        "model": outputs["served_model_name"],
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 32,
    }
    started = time.monotonic()
    unauthorized = requests.get(f"{endpoint}/models", timeout=10)
    if unauthorized.status_code != 401:
        print(
            f"smoke: {endpoint}/models without the key answered "
            f"{unauthorized.status_code}, expected 401",
            file=sys.stderr,
        )
        return 1
    resp = requests.post(f"{endpoint}/chat/completions", json=body, headers=headers, timeout=120)
    elapsed = time.monotonic() - started
    if resp.status_code != 200:
        print(
            f"smoke: chat completion answered {resp.status_code}: {resp.text[:300]}",
            file=sys.stderr,
        )
        return 1
    answer = resp.json()["choices"][0]["message"]["content"]
    print(f"smoke: {endpoint} answered in {elapsed:.2f}s (401 without key): {answer!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
