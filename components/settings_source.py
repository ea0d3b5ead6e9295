"""The stack config as the program receives it from Pulumi, for components/settings.py.

Reading only the known keys (`config.get_object("serving")`, ...) silently ignores a misspelt
one (`vllm-cluster:servng` drops a whole section). So this takes every key of the namespace
from the config the language host passed (pulumi.runtime.config: the stack file's keys and
the project's defaults), and for each secret whether it is set and whether it was set as a
Pulumi secret (`secure:` in Pulumi.<stack>.yaml; the language host lists those keys in
PULUMI_CONFIG_SECRET_KEYS, which the SDK keeps for `is_config_secret`).

What cannot be known: a value that reaches the program only through a
`PULUMI_CONFIG_<KEY>` environment variable is not in that map, so whether it was a secret is
unknown; it counts as set, and is not judged plain text.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from components.settings import CONFIG_KEYS, NAMESPACE, SECRET_KEYS


@dataclass(frozen=True)
class StackConfig:
    """What load_settings takes: raw values, which secrets are set, which are plain text."""

    raw: dict[str, Any]
    secrets_present: dict[str, bool]
    plaintext_secrets: tuple[str, ...] = field(default=())


def read_stack_config(config: pulumi.Config | None = None) -> StackConfig:
    config = config or pulumi.Config(NAMESPACE)
    raw: dict[str, Any] = {key: config.get_object(key) for key in CONFIG_KEYS}
    passed = dict(runtime_config.CONFIG.get())
    for full in sorted(passed):
        namespace, sep, bare = full.partition(":")
        if not sep:
            continue
        if namespace == NAMESPACE:
            if bare not in CONFIG_KEYS and bare not in SECRET_KEYS:
                raw[full] = passed[full]  # load_settings names it: unknown, did you mean ...
        elif difflib.get_close_matches(namespace, [NAMESPACE], n=1, cutoff=0.8):
            raw[full] = passed[full]  # a misspelt namespace: vllm-clustr:serving
    present: dict[str, bool] = {}
    plaintext: list[str] = []
    for key in SECRET_KEYS:
        full = f"{NAMESPACE}:{key}"
        value = runtime_config.get_config(full)
        present[key] = bool(value)
        if value and full in passed and not runtime_config.is_config_secret(full):
            plaintext.append(key)
    return StackConfig(raw, present, tuple(plaintext))
