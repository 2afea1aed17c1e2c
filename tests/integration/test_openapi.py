"""The OpenAPI documents of /api/v1 and /api/v2 over real HTTP: every route served under a
prefix is documented, every documented operation is served, roles and security match the
handlers, and each document is valid OpenAPI 3.1 (openapi-spec-validator)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from orchestrator.api import create_app
from orchestrator.api.openapi import served_routes
from orchestrator.api.roles import required_role
from orchestrator.ports import StateStore
from tests.apiauth import api_settings, headers
from tests.integration.test_api import StoreEngine, seed, serve, ticking_clock

pytestmark = pytest.mark.anyio

PREFIXES = ("/api/v1", "/api/v2")


@pytest.fixture
async def served(store: StateStore, tmp_path: Path) -> AsyncIterator[tuple[web.Application, str]]:
    await seed(store)
    app = create_app(store, StoreEngine(store, ticking_clock()), tmp_path / "logs", settings=api_settings())
    runner, url = await serve(app)
    try:
        yield app, url
    finally:
        await runner.cleanup()


async def fetch(url: str, **extra: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=extra) as response:
        return response.status, await response.json()


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_the_document_lists_exactly_the_routes_served_under_its_prefix(
    served: tuple[web.Application, str], prefix: str
) -> None:
    app, url = served
    status, document = await fetch(f"{url}{prefix}/openapi.json", **headers("viewer"))
    assert status == 200
    routes = {(method, path) for method, path, _ in served_routes(app.router, prefix)}
    assert routes, f"nothing is served under {prefix}"
    assert operations(document) == routes
    served_paths = {resource.canonical for resource in app.router.resources()}
    for _, path in operations(document):
        assert path in served_paths
    assert (("GET", f"{prefix}/openapi.json")) in routes


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_the_document_is_valid_openapi_and_says_which_role_each_operation_needs(
    served: tuple[web.Application, str], prefix: str
) -> None:
    app, url = served
    _, document = await fetch(f"{url}{prefix}/openapi.json", **headers())
    validate(document)  # raises on an invalid OpenAPI 3.1 document
    handlers = {(method, path): handler for method, path, handler in served_routes(app.router, prefix)}
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), "operationIds are unique"
    for (method, path), handler in handlers.items():
        operation = document["paths"][path][method.lower()]
        role = required_role(method, handler)
        if role is None:
            assert operation["x-required-role"] == "public"
            assert operation["security"] == []
        else:
            assert operation["x-required-role"] == role.label
            assert operation["security"] == [{"Bearer": []}, {"Basic": []}]
        assert operation["summary"]
    assert set(document["components"]["securitySchemes"]) == {"Bearer", "Basic"}


async def test_main_endpoints_carry_their_schemas_and_parameters(served: tuple[web.Application, str]) -> None:
    _, url = served
    _, v2 = await fetch(f"{url}/api/v2/openapi.json")
    trigger = v2["paths"]["/api/v2/dags/{dag_id}/dagRuns"]["post"]
    assert trigger["operationId"] == "trigger_dag_run"
    assert trigger["summary"].startswith("Trigger a DAG run")
    assert trigger["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TriggerDAGRunPostBody"
    }
    assert trigger["x-required-role"] == "operator"
    assert [p["name"] for p in trigger["parameters"]] == ["dag_id"]
    assert "422" in trigger["responses"]
    body = v2["components"]["schemas"]["TriggerDAGRunPostBody"]["properties"]
    assert {"logical_date", "run_after", "conf", "dag_run_id"} <= set(body)
    dags = v2["paths"]["/api/v2/dags"]["get"]
    assert {p["name"] for p in dags["parameters"]} == {"limit", "offset", "exclude_stale"}
    assert dags["x-required-role"] == "viewer"
    _, v1 = await fetch(f"{url}/api/v1/openapi.json")
    log = v1["paths"]["/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"][
        "get"
    ]
    assert [p["name"] for p in log["parameters"] if p["in"] == "path"] == [
        "dag_id",
        "run_id",
        "task_id",
        "try_number",
    ]
    assert v1["paths"]["/api/v1/openapi.json"]["get"]["security"] == []
