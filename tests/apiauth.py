"""API credentials for tests: one known token per role, the [api] settings that accept them,
and the headers that present them.

Every test that talks to the REST API sends `headers()` (admin by default) and builds its app
with `api_settings()`, so authentication is exercised everywhere and no test needs an open API.
"""

from __future__ import annotations

import hashlib
from typing import Any

from orchestrator.config import ApiConfig, ApiToken

#: the plain token of each role (the settings hold only their SHA-256 digests)
TOKENS: dict[str, str] = {
    "viewer": "test-viewer-token-0123456789",
    "operator": "test-operator-token-0123456789",
    "admin": "test-admin-token-0123456789",
}


def api_tokens() -> tuple[ApiToken, ...]:
    """`api.tokens` with one token per role, named after it ("viewer", "operator", "admin")."""
    return tuple(
        ApiToken(name=role, role=role, token_sha256=hashlib.sha256(token.encode()).hexdigest())
        for role, token in TOKENS.items()
    )


def api_settings(**overrides: Any) -> ApiConfig:
    """[api] settings that accept the test tokens (and `overrides`)."""
    overrides.setdefault("tokens", api_tokens())
    return ApiConfig(**overrides)


def headers(role: str = "admin", **extra: str) -> dict[str, str]:
    """Request headers that authenticate as `role` with a bearer token (plus `extra`)."""
    return {"Authorization": f"Bearer {TOKENS[role]}", **extra}
