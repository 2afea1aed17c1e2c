"""Requests the REST API must refuse cleanly, or clamp, instead of failing with a 500 or obeying.

Page limits are clamped to api.maximum_page_limit (Airflow's behaviour); values PostgreSQL
cannot store or count are 400s that say why; a body too large is 413 however it is sent; bodies
that are not declared JSON are 415; a state-changing request from a foreign web origin is 403.
Each case is checked to create or change nothing. Real HTTP on 127.0.0.1, real PostgreSQL.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from orchestrator.api import create_app
from orchestrator.config import ApiConfig
from storage.postgres import PostgresStateStore
from tests.apiauth import api_settings, headers
from tests.integration import test_api as api_tests
from tests.integration.test_api import (
    Api,
    StoreEngine,
    assert_problem,
    seed,
    serve,
    start_extract,
    ticking_clock,
)

pytestmark = pytest.mark.anyio

api = api_tests.api  # the fixture: the API on a seeded store with default settings

RUNS = "/api/v1/dags/etl/dagRuns"
JSON = {"Content-Type": "application/json"}


async def no_runs(api: Api) -> bool:
    _, total = await api.store.list_runs("etl", 10, 0)
    return total == 0


async def api_with(store: PostgresStateStore, tmp_path: Path, settings: ApiConfig) -> AsyncIterator[Api]:
    await seed(store)
    engine = StoreEngine(store, ticking_clock())
    runner, url = await serve(create_app(store, engine, tmp_path / "logs", settings=settings))
    try:
        async with aiohttp.ClientSession(headers=headers()) as http:
            yield Api(url, http, store, engine, tmp_path / "logs")
    finally:
        await runner.cleanup()


@pytest.fixture
async def small_pages(store: PostgresStateStore, tmp_path: Path) -> AsyncIterator[Api]:
    async for served in api_with(store, tmp_path, api_settings(maximum_page_limit=2)):
        yield served


@pytest.fixture
async def with_ui_origin(store: PostgresStateStore, tmp_path: Path) -> AsyncIterator[Api]:
    async for served in api_with(store, tmp_path, api_settings(allowed_origins=("https://ui.example.com",))):
        yield served


# --- page size ----------------------------------------------------------------------------------


async def test_a_limit_above_the_maximum_is_clamped_not_refused(small_pages: Api) -> None:
    for run_id in ("a", "b", "c"):
        assert (await small_pages.post(RUNS, json={"dag_run_id": run_id}))[0] == 200

    status, body = await small_pages.get(f"{RUNS}?limit=5000")

    assert status == 200
    assert [r["dag_run_id"] for r in body["dag_runs"]] == ["c", "b"]
    assert body["total_entries"] == 3
    _, default = await small_pages.get(RUNS)
    assert len(default["dag_runs"]) == 2, "the default page (100) is clamped too"


async def test_the_default_maximum_page_limit_clamps_to_1000(api: Api) -> None:
    status, body = await api.get("/api/v1/dags?limit=1001")
    assert status == 200
    assert body["total_entries"] == 2


# --- 400 where a 500 was --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"conf": {"day": "2026\u000001"}}, "conf.day contains a NUL character"),
        ({"conf": {"a": [1, {"b": "\u0000"}]}}, "conf.a[1].b contains a NUL character"),
        ({"conf": {"k\u0000": 1}}, "contains a NUL character"),
        ({"note": "by\u0000hand"}, "note contains a NUL character"),
        ({"logical_date": "0001-01-01T00:00:00+14:00"}, "out of range"),
        ({"logical_date": "9999-12-31T23:59:59-14:00"}, "out of range"),
        (
            {"execution_date": "9999-12-31T23:59:59-14:00"},
            "execution_date '9999-12-31T23:59:59-14:00' is out",
        ),
    ],
)
async def test_values_postgres_cannot_take_are_400_and_create_nothing(
    api: Api, payload: dict[str, Any], fragment: str
) -> None:
    status, body = await api.post(RUNS, json=payload)
    assert status == 400
    assert_problem(body, 400, fragment)
    assert await no_runs(api)


async def test_a_logical_date_near_the_edge_of_the_range_is_fine(api: Api) -> None:
    status, run = await api.post(
        RUNS, json={"dag_run_id": "edge", "logical_date": "0001-01-01T14:00:00+14:00"}
    )
    assert status == 200
    assert run["logical_date"] == "0001-01-01T00:00:00+00:00"


async def test_a_nul_in_a_note_set_later_is_400(api: Api) -> None:
    await api.post(RUNS, json={"dag_run_id": "r1", "note": "kept"})
    status, body = await api.call("PATCH", f"{RUNS}/r1/setNote", json={"note": "\u0000"})
    assert status == 400
    assert_problem(body, 400, "note contains a NUL character")
    run = await api.store.get_run("etl", "r1")
    assert run is not None and run.note == "kept"


async def test_the_largest_offset_postgres_takes_is_fine_and_one_more_is_400(api: Api) -> None:
    status, body = await api.get(f"{RUNS}?offset={2**63 - 1}")
    assert status == 200
    assert body["dag_runs"] == []
    status, body = await api.get(f"{RUNS}?offset={2**63}")
    assert status == 400
    assert_problem(body, 400, f"offset={2**63} must be between 0 and {2**63 - 1}")


@pytest.mark.parametrize(
    ("suffix", "fragment"),
    [
        ("/extract/2147483648", "map_index 2147483648 in the URL must be between -1 and 2147483647"),
        ("/extract/-2", "map_index -2 in the URL must be between -1"),
        ("/extract/99999999999999999999", "map_index 99999999999999999999 in the URL"),
        ("/extract/logs/2147483648", "try_number 2147483648 in the URL must be between 1 and 2147483647"),
        ("/extract/logs/1?map_index=2147483648", "map_index=2147483648 must be between -1 (unmapped) and"),
    ],
)
async def test_huge_numbers_in_task_instance_urls_are_400(api: Api, suffix: str, fragment: str) -> None:
    await start_extract(api)
    status, body = await api.get(f"{RUNS}/r1/taskInstances{suffix}")
    assert status == 400
    assert_problem(body, 400, fragment)


# --- body size: the same answer however the body is sent -----------------------------------------


def too_large_body() -> bytes:
    return orjson.dumps({"dag_run_id": "big", "conf": {"blob": "x" * (1024 * 1024)}})


async def test_a_body_too_large_is_413_when_sent_whole(api: Api) -> None:
    # a BytesIO, not bytes: aiohttp warns about large bytes bodies; both send a Content-Length
    async with api.http.post(api.url + RUNS, data=io.BytesIO(too_large_body()), headers=JSON) as response:
        assert response.request_info.headers.get("Content-Length") is not None
        assert response.status == 413
        body = await response.json()
    assert_problem(body, 413, "larger than 1048576 bytes")
    assert await no_runs(api)


async def test_a_body_too_large_is_413_when_sent_chunked(api: Api) -> None:
    payload = too_large_body()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start : start + 64 * 1024]

    async with api.http.post(api.url + RUNS, data=chunks(), headers=JSON) as response:
        assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert response.status == 413
        body = await response.json()
    assert_problem(body, 413, "larger than 1048576 bytes")
    assert await no_runs(api)


async def test_a_small_body_sent_chunked_is_read_whole(api: Api) -> None:
    payload = orjson.dumps({"dag_run_id": "chunked", "conf": {"a": 1}})

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]

    async with api.http.post(api.url + RUNS, data=chunks(), headers=JSON) as response:
        assert response.status == 200
        assert (await response.json())["conf"] == {"a": 1}


# --- cross-site requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json"],
)
async def test_a_body_not_declared_json_is_415_and_creates_nothing(
    api: Api, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    # skip_auto_headers: aiohttp would otherwise label bytes application/octet-stream
    async with api.http.post(
        api.url + RUNS, data=b'{"dag_run_id": "csrf"}', headers=headers, skip_auto_headers=["Content-Type"]
    ) as response:
        assert response.status == 415
        body = await response.json()
    assert_problem(body, 415, "Content-Type: application/json")
    assert await no_runs(api)


async def test_a_pause_not_declared_json_is_415(api: Api) -> None:
    status, body = await api.call(
        "PATCH", "/api/v1/dags/etl", data='{"is_paused": true}', headers={"Content-Type": "text/plain"}
    )
    assert status == 415
    assert_problem(body, 415, "got Content-Type: text/plain")
    dag = await api.store.get_dag("etl")
    assert dag is not None and dag.is_paused is False


async def test_json_with_a_charset_is_json(api: Api) -> None:
    status, _ = await api.call(
        "POST", RUNS, data='{"dag_run_id": "r1"}', headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert status == 200


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://127.0.0.1:1", "null", "http://localhost.evil.example"]
)
async def test_a_state_change_from_a_foreign_origin_is_403_and_changes_nothing(api: Api, origin: str) -> None:
    status, body = await api.post(RUNS, json={"dag_run_id": "csrf"}, headers={"Origin": origin})
    assert status == 403
    assert_problem(body, 403, f"Origin {origin!r} refused", "api.allowed_origins")
    assert await no_runs(api)
    status, _ = await api.call(
        "PATCH", "/api/v1/dags/etl", json={"is_paused": True}, headers={"Origin": origin}
    )
    assert status == 403
    dag = await api.store.get_dag("etl")
    assert dag is not None and dag.is_paused is False


async def test_the_apis_own_origin_and_no_origin_may_change_state(api: Api) -> None:
    status, _ = await api.post(RUNS, json={"dag_run_id": "same-origin"}, headers={"Origin": api.url})
    assert status == 200
    status, _ = await api.post(RUNS, json={"dag_run_id": "no-origin"})
    assert status == 200


async def test_reads_from_a_foreign_origin_are_not_refused(api: Api) -> None:
    status, _ = await api.get("/api/v1/dags", headers={"Origin": "https://evil.example"})
    assert status == 200


async def test_an_allowed_origin_may_change_state(with_ui_origin: Api) -> None:
    status, _ = await with_ui_origin.post(
        RUNS, json={"dag_run_id": "from-ui"}, headers={"Origin": "https://UI.example.com:443"}
    )
    assert status == 200
    status, _ = await with_ui_origin.post(
        RUNS, json={"dag_run_id": "other-port"}, headers={"Origin": "https://ui.example.com:8443"}
    )
    assert status == 403
