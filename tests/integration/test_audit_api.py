"""The audit trail over real HTTP on a real PostgreSQL: mutating requests recorded by the audit
middleware, read back at GET /api/v1/eventLogs, and a refused insert that fails nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest

from orchestrator.api import create_app
from orchestrator.ports import StateStore
from tests.apiauth import api_settings, headers
from tests.integration.test_api import Api, StoreEngine, seed, serve, ticking_clock

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(store: StateStore, tmp_path: Path) -> AsyncIterator[Api]:
    await seed(store)
    engine = StoreEngine(store, ticking_clock())
    app = create_app(store, engine, tmp_path / "logs", settings=api_settings())
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(url, http, store, engine, tmp_path / "logs")
    finally:
        await runner.cleanup()


async def event_logs(api: Api, query: str = "") -> list[dict[str, Any]]:
    status, body = await api.get(f"/api/v1/eventLogs{query}", headers=headers("viewer"))
    assert status == 200, body
    assert body["total_entries"] >= len(body["event_logs"])
    logs: list[dict[str, Any]] = body["event_logs"]
    return logs


async def test_a_trigger_and_a_pause_are_recorded_with_who_and_what(api: Api) -> None:
    status, _ = await api.post(
        "/api/v1/dags/etl/dagRuns",
        json={"dag_run_id": "r1", "conf": {"api_key": "s3cr3t-value"}},
        headers=headers("operator"),
    )
    assert status == 200
    status, _ = await api.call("PATCH", "/api/v1/dags/etl", json={"is_paused": True}, headers=headers())
    assert status == 200
    await api.get("/api/v1/dags/etl", headers=headers())  # reads are not recorded

    logs = await event_logs(api)

    assert [(e["event"], e["owner"], e["dag_id"]) for e in logs] == [
        ("trigger_run", "operator", "etl"),
        ("patch_dag", "admin", "etl"),
    ]
    trigger, pause = logs
    assert set(trigger) == {
        "event_log_id",
        "when",
        "dag_id",
        "task_id",
        "run_id",
        "map_index",
        "try_number",
        "event",
        "execution_date",
        "owner",
        "extra",
    }
    assert trigger["run_id"] == "r1"
    run = await api.store.get_run("etl", "r1")
    assert run is not None and trigger["execution_date"] == run.logical_date.isoformat()
    assert json.loads(trigger["extra"]) == {
        "status": 200,
        "method": "POST",
        "body_keys": ["conf", "dag_run_id"],
    }
    assert "s3cr3t-value" not in json.dumps(logs)
    assert json.loads(pause["extra"])["values"] == {"is_paused": True}
    assert pause["event_log_id"] > trigger["event_log_id"]

    status, one = await api.get(f"/api/v1/eventLogs/{pause['event_log_id']}", headers=headers())
    assert status == 200 and one == pause


async def test_refused_requests_are_recorded_with_their_status_and_webhooks_are_not(api: Api) -> None:
    status, _ = await api.post("/api/v1/dags/nope/dagRuns", json={}, headers=headers())
    assert status == 404
    status, _ = await api.post("/api/v1/dags/etl/dagRuns", json={"bogus": 1}, headers=headers())
    assert status == 400
    status, _ = await api.post("/api/v1/webhooks/github", json={}, headers=headers())
    assert status == 404  # no webhook receiver here: refused, and in no audit entry
    status, _ = await api.post("/api/v1/no/such/route", json={}, headers=headers())
    assert status == 404

    logs = await event_logs(api)

    assert [(e["event"], e["dag_id"], json.loads(e["extra"])["status"]) for e in logs] == [
        ("trigger_run", "nope", 404),
        ("trigger_run", "etl", 400),
    ]
    assert json.loads(logs[1]["extra"])["body_keys"] == ["bogus"]


async def test_the_filters_order_and_pages_of_event_logs(api: Api) -> None:
    for dag_id, run_id in (("etl", "a"), ("other", "b"), ("etl", "c")):
        status, _ = await api.post(
            f"/api/v1/dags/{dag_id}/dagRuns", json={"dag_run_id": run_id}, headers=headers()
        )
        assert status == 200
    await api.call("PATCH", "/api/v1/dags/other", json={"is_paused": True}, headers=headers("operator"))
    everything = await event_logs(api)
    assert len(everything) == 4
    middle = everything[2]["when"]

    def runs(logs: list[dict[str, Any]]) -> list[Any]:
        return [e["run_id"] for e in logs]

    assert runs(await event_logs(api, "?dag_id=etl")) == ["a", "c"]
    assert runs(await event_logs(api, "?run_id=b")) == ["b"]
    assert [e["event"] for e in await event_logs(api, "?event=patch_dag")] == ["patch_dag"]
    assert [e["event"] for e in await event_logs(api, "?owner=operator")] == ["patch_dag"]
    assert runs(await event_logs(api, "?excluded_events=patch_dag")) == ["a", "b", "c"]
    assert runs(await event_logs(api, "?included_events=trigger_run&dag_id=other")) == ["b"]
    assert runs(await event_logs(api, "?order_by=-event_log_id&limit=2")) == [None, "c"]
    assert runs(await event_logs(api, "?order_by=run_id&excluded_events=patch_dag&offset=1")) == ["b", "c"]
    before = await event_logs(api, f"?before={quote(middle, safe='')}")
    after = await event_logs(api, f"?after={quote(middle, safe='')}")
    assert len(before) + len(after) == 4 and everything[2] in after and everything[2] not in before
    status, body = await api.get("/api/v1/eventLogs?dag_id=etl&limit=1", headers=headers())
    assert body["total_entries"] == 2 and len(body["event_logs"]) == 1


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("?colour=red", "unknown query parameter(s) colour"),
        ("?order_by=conf", "order_by='conf' is not one of"),
        ("?before=yesterday", "query parameter before 'yesterday' is not an ISO 8601 datetime"),
        ("?map_index=x", "query parameter map_index='x' is not an integer"),
    ],
)
async def test_bad_event_log_queries_are_400(api: Api, query: str, words: str) -> None:
    status, body = await api.get(f"/api/v1/eventLogs{query}", headers=headers())
    assert status == 400
    assert words in body["detail"]


async def test_an_unknown_event_log_entry_is_404(api: Api) -> None:
    status, body = await api.get("/api/v1/eventLogs/12345", headers=headers())
    assert status == 404 and "event log entry 12345 not found" in body["detail"]


async def test_a_refused_audit_insert_fails_nothing_and_is_logged(
    api: Api, database_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("DROP TABLE event_log")
    finally:
        await conn.close()

    with caplog.at_level(logging.WARNING, logger="orchestrator.api.audit"):
        status, run = await api.post("/api/v1/dags/etl/dagRuns", json={"dag_run_id": "r1"}, headers=headers())

    assert status == 200 and run["dag_run_id"] == "r1"
    assert await api.store.get_run("etl", "r1") is not None
    warnings = [r.getMessage() for r in caplog.records if r.name == "orchestrator.api.audit"]
    assert any("could not record POST /api/v1/dags/etl/dagRuns by admin (-> 200)" in w for w in warnings), (
        warnings
    )
