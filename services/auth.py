"""API keys and request limits, checked in the ingress before a request reaches the engine.

Keys never travel in plain text: the job driver reads them from environment variables and hands only their
SHA-256 digests to the Serve application, so neither the stored spec, the Serve config in the dashboard nor the
replica's init arguments hold a usable secret. Pure Python (no Ray), so it is unit-tested on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.errors import StageError

PUBLIC_PATHS = frozenset({"/health"})
# Set by `llmctl submit`: {"ENV_NAME": ["sha256:…"]} for the api_key_env variables set in the submitting shell.
DIGESTS_ENV = "LLMCTL_KEY_DIGESTS"


def digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_digests(api_key_env: list[str], api_keys: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Digests of every accepted key: from the named environment variables plus the configured digests."""
    environ = os.environ if environ is None else environ
    digests = list(api_keys)
    submitted = json.loads(environ.get(DIGESTS_ENV) or "{}")
    for name in api_key_env:
        value = environ.get(name, "")
        keys = [k.strip() for k in value.split(",") if k.strip()]
        if not keys and submitted.get(name):
            digests.extend(submitted[name])
            continue
        if not keys:
            raise StageError(
                f"serve.api_key_env: environment variable {name} is not set (or empty) in the shell that ran "
                f"`llmctl submit` nor where the job runs. Export it before submitting, or remove {name} from "
                "api_key_env."
            )
        digests.extend(digest(k) for k in keys)
    return sorted(set(digests))


@dataclass(frozen=True)
class Rejection:
    """An HTTP error answered by the ingress itself, in the OpenAI error format."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}


@dataclass(frozen=True)
class Guard:
    """What the ingress enforces: keys, body size and the max_tokens cap."""

    key_digests: tuple[str, ...] = ()
    max_request_bytes: int = 1_048_576
    max_tokens: int | None = None

    def to_config(self) -> dict[str, Any]:
        """Plain JSON, as the replicas receive it (their Serve user_config)."""
        return {"key_digests": list(self.key_digests), "max_request_bytes": self.max_request_bytes,
                "max_tokens": self.max_tokens}  # fmt: skip

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Guard:
        return cls(tuple(config["key_digests"]), config["max_request_bytes"], config["max_tokens"])

    @property
    def auth_enabled(self) -> bool:
        return bool(self.key_digests)

    def authorize(self, path: str, authorization: str | None) -> Rejection | None:
        """None when the request may pass; a 401 otherwise. Health stays open for load balancers."""
        if not self.auth_enabled or path in PUBLIC_PATHS:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Rejection(401, "Missing API key: send `Authorization: Bearer <key>`.", "authentication_error")
        offered = digest(token.strip())
        # Compare against every digest without stopping early, so timing says nothing about which one matched.
        matched = False
        for known in self.key_digests:
            matched |= hmac.compare_digest(offered, known)
        return None if matched else Rejection(401, "Invalid API key.", "authentication_error")

    def check_size(self, size: int) -> Rejection | None:
        if size > self.max_request_bytes:
            return Rejection(413, f"Request body is {size} bytes; the limit is {self.max_request_bytes}.")
        return None

    def check_max_tokens(self, requested: int, param: str = "max_tokens") -> Rejection | None:
        """A 400 when a request asks for more output tokens than the cap; None when it may pass."""
        if self.max_tokens is not None and requested > self.max_tokens:
            message = f"{param} is {requested}; this endpoint allows at most {self.max_tokens}."
            return Rejection(400, message, param=param)
        return None
