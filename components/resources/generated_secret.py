"""GeneratedSecret: a random secret made once per stack and kept, encrypted, in its state.

For credentials only the cluster's own nodes use (the Ray cluster's auth token): nobody has
to choose or rotate them by hand, and no other secret is stretched to make them (a token
derived from the API key would give every API client the cluster's code-execution door).

Why a dynamic resource and not pulumi-random's RandomPassword: that provider's plugin cannot
be obtained on our machines (no download site; only command and docker are built from the
upstream archives), and this needs nothing but `secrets.token_hex` and the state Pulumi keeps.
The value is an output marked secret, so the state holds it encrypted; `pulumi destroy`
forgets it, and the next `up` makes a new one.
"""

from __future__ import annotations

import secrets
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, ResourceProvider

TOKEN_BYTES = 32


class GeneratedSecretProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        value = secrets.token_hex(int(props["bytes"]))
        return CreateResult(id_=str(props["purpose"]), outs={**props, "value": value})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("purpose", "bytes") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=changed)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)


class GeneratedSecret(Resource):
    """`value`: 2 x `size` hex characters from `secrets.token_hex`, a Pulumi secret."""

    value: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        purpose: str,
        size: int = TOKEN_BYTES,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            GeneratedSecretProvider(),
            name,
            {"purpose": purpose, "bytes": size, "value": None},
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["value"])
            ),
        )
