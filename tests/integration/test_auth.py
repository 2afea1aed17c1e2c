"""Authentication and roles over real HTTP on 127.0.0.1, with a real engine and PostgreSQL.

Every served route is tried without credentials (401 unless public) and with each role (403 below
the role it needs, neither 401 nor 403 from it); then bearer, basic and access tokens, expired and
forged access tokens, throttling after 20 failures, and a 50 MB body refused before it is read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import web

from orchestrator.api import auth as auth_module
from orchestrator.api.app import create_app, settings_authenticator
from orchestrator.api.auth import Authenticator, Credential
from orchestrator.api.roles import Role, required_role
from orchestrator.config import ApiConfig
from orchestrator.triggers.backfill import Backfills
from storage.postgres import PostgresStateStore
from tests.apiauth import TOKENS, api_settings, api_tokens, headers
from tests.integration.engine_harness import running_engine, write_dag
from tests.integration.test_api import serve

pytestmark = pytest.mark.anyio

SECRET_KEY = b"k" * 32
ROLES = ("viewer", "operator", "admin")


@dataclass
class Served:
    url: str
    http: aiohttp.ClientSession
    app: web.Application

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.request(method, self.url + path, **kwargs) as response:
            raw = await response.read()
            body = orjson.loads(raw) if response.content_type == "application/json" and raw else raw
            return response.status, body, response


async def _served(store: PostgresStateStore, tmp_path: Path, settings: ApiConfig) -> AsyncIterator[Served]:
    dag = write_dag(tmp_path / "dags", "etl", 'with DAG("etl"):\n    Bash("a", "true")\n', tmp_path)
    async with running_engine(store, tmp_path / "logs", [dag]) as harness:
        backfills = Backfills(harness.engine, store, harness.engine._clock, harness.engine.supervisor)
        await backfills.start()
        app = create_app(
            store,
            harness.engine,
            harness.logs_dir,
            harness.task_logs,
            settings=settings,
            backfills=backfills,
            auth=settings_authenticator(settings, SECRET_KEY),
        )
        runner, url = await serve(app)
        try:
            async with aiohttp.ClientSession() as http:
                yield Served(url, http, app)
        finally:
            await runner.cleanup()
            backfills.stop()


@pytest.fixture
async def served(store: PostgresStateStore, tmp_path: Path) -> AsyncIterator[Served]:
    """The whole API (backfills included) with the three test tokens and a generous throttle."""
    async for api in _served(store, tmp_path, api_settings(auth_failures_allowed=100_000)):
        yield api


@pytest.fixture
async def strict(store: PostgresStateStore, tmp_path: Path) -> AsyncIterator[Served]:
    """The same with the default throttle: 20 failures per address within 300 s."""
    async for api in _served(store, tmp_path, api_settings()):
        yield api


def _routes(app: web.Application) -> list[tuple[str, str, Any]]:
    """(method, concrete path, handler) of every served route, placeholders filled in."""
    found = []
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("path") or info.get("formatter")
        if template is None:
            continue
        path = re.sub(r"\{try_number[^}]*\}", "1", template)
        path = re.sub(r"\{[^}]+\}", "x", path)
        found.append((route.method, path, route.handler))
    return found


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


async def test_every_route_needs_credentials_and_its_role(served: Served) -> None:
    routes = _routes(served.app)
    assert len(routes) > 20  # the whole API is here, backfills included
    checked_public = checked_protected = 0
    for method, path, handler in routes:
        needed = required_role(method, handler)
        status, body, response = await served.call(method, path)
        if needed is None:
            assert status != 401, f"{method} {path} is public but answered 401"
            checked_public += 1
            continue
        checked_protected += 1
        assert status == 401, f"{method} {path} without credentials answered {status}"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "authentication required" in body["detail"]  # v1: problem JSON; v2: {"detail"}
        for role in ROLES:
            status, body, _ = await served.call(method, path, headers=_bearer(role))
            if Role.parse(role) < needed:
                assert status == 403, f"{method} {path} as {role} answered {status}"
                assert f"needs {needed.label}" in body["detail"] and role in body["detail"]
            else:
                assert status not in (401, 403), f"{method} {path} as {role} answered {status}: {body!r}"
    assert checked_public >= 3 and checked_protected > 20


async def test_viewer_reads_operator_triggers_admin_backfills(served: Served) -> None:
    status, dags, _ = await served.call("GET", "/api/v1/dags", headers=_bearer("viewer"))
    assert status == 200 and [d["dag_id"] for d in dags["dags"]] == ["etl"]

    status, body, _ = await served.call(
        "POST", "/api/v1/dags/etl/dagRuns", json={"dag_run_id": "v"}, headers=_bearer("viewer")
    )
    assert status == 403
    assert body["detail"].startswith("token 'viewer' has the role viewer; POST /api/v1/dags/etl/dagRuns")
    status, run, _ = await served.call(
        "POST", "/api/v1/dags/etl/dagRuns", json={"dag_run_id": "op"}, headers=_bearer("operator")
    )
    assert status == 200 and run["dag_run_id"] == "op"

    backfill = {"dag_id": "etl", "from_date": "2026-01-01T00:00:00Z", "to_date": "2026-01-02T00:00:00Z"}
    status, body, _ = await served.call(
        "POST", "/api/v1/backfills", json=backfill, headers=_bearer("operator")
    )
    assert status == 403 and "needs admin" in body["detail"]
    # dry runs only read: a viewer may plan one
    status, _, _ = await served.call(
        "POST", "/api/v1/backfills/dry_run", json=backfill, headers=_bearer("viewer")
    )
    assert status not in (401, 403)


async def test_health_and_ready_need_no_credentials(served: Served) -> None:
    status, health, _ = await served.call("GET", "/health")
    assert status == 200 and health["scheduler"]["status"] == "healthy"
    status, ready, _ = await served.call("GET", "/ready")
    assert status == 200 and ready == {"status": "ready"}


async def test_basic_auth_takes_the_token_as_the_password_with_any_user_name(served: Served) -> None:
    good = _basic("whoever", TOKENS["operator"])
    status, run, _ = await served.call(
        "POST", "/api/v1/dags/etl/dagRuns", json={"dag_run_id": "b"}, headers=good
    )
    assert status == 200 and run["dag_run_id"] == "b"

    status, body, _ = await served.call("GET", "/api/v1/dags", headers=_basic("admin", "wrong-password"))
    assert status == 401 and "the basic auth password is not one of api.tokens" in body["detail"]
    status, body, _ = await served.call("GET", "/api/v1/dags", headers={"Authorization": "Basic !!notbase64"})
    assert status == 401 and "not base64" in body["detail"]
    status, body, _ = await served.call("GET", "/api/v1/dags", headers={"Authorization": "Digest abc"})
    assert status == 401 and "'Digest' is not Bearer or Basic" in body["detail"]


async def test_an_access_token_from_auth_token_carries_its_tokens_role(served: Served) -> None:
    status, issued, _ = await served.call(
        "POST", "/auth/token", json={"username": "ci", "password": TOKENS["viewer"]}
    )
    assert status == 201
    assert issued["token_type"] == "bearer" and issued["expires_in"] == 3600
    access = {"Authorization": f"Bearer {issued['access_token']}"}
    status, _, _ = await served.call("GET", "/api/v1/dags", headers=access)
    assert status == 200
    status, body, _ = await served.call("POST", "/api/v1/dags/etl/dagRuns", json={}, headers=access)
    assert status == 403 and "token 'viewer' has the role viewer" in body["detail"]
    # Airflow 2 clients that hold an access token send it as the basic password
    status, _, _ = await served.call("GET", "/api/v1/dags", headers=_basic("x", issued["access_token"]))
    assert status == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"username": "ci", "password": "not-a-token"}, 401, "the password is not one of api.tokens"),
        ({"username": "ci"}, 400, "password"),
        ({"username": "ci", "password": 7}, 400, "password"),
        ([1, 2], 400, "JSON object"),
    ],
)
async def test_auth_token_refuses_wrong_or_malformed_credentials(
    served: Served, body: Any, status: int, message: str
) -> None:
    got, answer, _ = await served.call("POST", "/auth/token", json=body)
    assert got == status and message in answer["detail"]


def _issue(name: str, role: Role, key: bytes = SECRET_KEY, at: float | None = None) -> str:
    issuer = Authenticator(
        [Credential(name, role, hashlib.sha256(b"whatever-it-was").digest())],
        key,
        wall_clock=(lambda: at) if at is not None else time.time,
    )
    return issuer.issue_access_token(issuer.credentials[0])


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (lambda: _issue("admin", Role.ADMIN, at=time.time() - 7200), "the access token has expired"),
        (
            lambda: _issue("admin", Role.ADMIN, key=b"another-daemon-key-0123456789abcdef"),
            "not signed by this daemon",
        ),
        (lambda: _issue("removed", Role.ADMIN), "names a token that is no longer configured"),
        (
            lambda: jwt.encode({"sub": "admin", "iss": "orchestrator"}, SECRET_KEY, algorithm="HS256"),
            "not signed by this daemon",  # no exp or iat: refused though the signature is right
        ),
    ],
    ids=["expired", "forged", "removed-token", "no-expiry"],
)
async def test_expired_forged_and_orphaned_access_tokens_are_refused(
    served: Served, token: Any, message: str
) -> None:
    status, body, _ = await served.call("GET", "/api/v1/dags", headers={"Authorization": f"Bearer {token()}"})
    assert status == 401 and message in body["detail"]


async def test_a_viewer_access_token_cannot_claim_a_higher_role(served: Served) -> None:
    # the role claim is informative only: the configured token's role applies
    forged = _issue("viewer", Role.ADMIN)
    status, body, _ = await served.call(
        "POST", "/api/v1/dags/etl/dagRuns", json={}, headers={"Authorization": f"Bearer {forged}"}
    )
    assert status == 403 and "has the role viewer" in body["detail"]


async def test_failures_are_logged_with_the_address_never_the_token(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "orchestrator.api.auth")
    guess = "guess-of-the-admin-token-0123"
    await served.call("GET", "/api/v1/dags", headers={"Authorization": f"Bearer {guess}"})
    await served.call("POST", "/api/v1/dags/etl/dagRuns", json={}, headers=_bearer("viewer"))
    text = caplog.text
    assert "API authentication failed from 127.0.0.1: GET /api/v1/dags" in text
    assert "token 'viewer' (viewer) from 127.0.0.1 may not POST /api/v1/dags/etl/dagRuns" in text
    assert guess not in text and TOKENS["viewer"] not in text


async def test_twenty_failures_throttle_the_address_even_with_a_good_token(strict: Served) -> None:
    for attempt in range(20):
        status, _, _ = await strict.call(
            "GET", "/api/v1/dags", headers={"Authorization": f"Bearer bad-{attempt}"}
        )
        assert status == 401, f"attempt {attempt + 1} answered {status}"
    status, body, response = await strict.call("GET", "/api/v1/dags", headers=headers())
    assert status == 429
    assert "too many failed authentications from 127.0.0.1" in body["detail"]
    assert 1 <= int(response.headers["Retry-After"]) <= 300
    # public routes stay open
    assert (await strict.call("GET", "/health"))[0] == 200


async def test_nineteen_failures_do_not_lock_out_a_good_token(strict: Served) -> None:
    for attempt in range(19):
        assert (await strict.call("GET", "/api/v1/dags", headers=_basic("u", f"bad-{attempt}")))[0] == 401
    assert (await strict.call("GET", "/api/v1/dags", headers=headers("viewer")))[0] == 200


async def _raw_request(url: str, head: str, first_bytes: bytes) -> bytes:
    """Send `head` and only `first_bytes` of the body over TCP; the server's answer (status line
    and headers), which must come without the rest of the body being sent."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode() + first_bytes)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
    finally:
        writer.close()


FIFTY_MB = 50 * 1024 * 1024


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [(f"Authorization: Bearer {TOKENS['operator']}\r\n", b"413"), ("", b"401")],
    ids=["authenticated-413", "anonymous-401"],
)
async def test_a_50_mb_body_is_refused_before_it_is_read(
    served: Served, authorization: str, expected: bytes
) -> None:
    head = (
        "POST /api/v1/dags/etl/dagRuns HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {FIFTY_MB}\r\n"
        f"{authorization}"
        "\r\n"
    )
    answer = await _raw_request(served.url, head, b'{"conf": "' + b"x" * 65536)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] == expected, answer[:300]


def test_tokens_are_compared_in_constant_time_against_every_configured_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = auth_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    authenticator = settings_authenticator(ApiConfig(tokens=api_tokens()), SECRET_KEY)
    assert authenticator.match_token(TOKENS["viewer"]) is not None  # the first configured
    assert len(calls) == 3  # no early exit
    calls.clear()
    assert authenticator.match_token("nothing-like-it") is None
    assert len(calls) == 3
