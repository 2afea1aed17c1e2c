"""/api/v2 over real HTTP on a real store: Airflow 3's shapes, checked against Airflow 3's own
OpenAPI spec (the v2.yaml the official 3.x client ships), its 422s and `{"detail"}` errors, the
trigger body (TriggerDAGRunPostBody), and v1 left as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from orchestrator.api import create_app
from orchestrator.core.records import TaskKey
from orchestrator.core.states import TaskState
from orchestrator.logpaths import task_log_path
from orchestrator.ports import StateStore
from tests.apiauth import api_settings, headers
from tests.integration.test_api import StoreEngine, seed, serve, ticking_clock

pytestmark = pytest.mark.anyio

SPEC = Path(__file__).resolve().parents[2] / ".venv" / "airflow-clients" / "v3" / "v2.yaml"


def _nullable_refs(node: Any) -> Any:
    """`{"$ref": X, "nullable": true}` as a schema that says so (a validator ignores the
    siblings of a $ref; the client's models accept null there)."""
    if isinstance(node, list):
        return [_nullable_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_refs(value) for key, value in node.items()}
    if "$ref" in node and node.get("nullable") is True:
        return {"anyOf": [{"$ref": node["$ref"]}, {"enum": [None]}]}
    return node


@cache
def airflow3_spec() -> dict[str, Any]:
    if not SPEC.is_file():
        pytest.fail(f"{SPEC} is missing: run scripts/bootstrap (it installs apache-airflow-client 3.x)")
    spec: dict[str, Any] = _nullable_refs(yaml.safe_load(SPEC.read_text()))
    return spec


def assert_matches(body: Any, schema_name: str) -> None:
    """`body` validates against Airflow 3's component schema `schema_name` (every required field,
    every type, every enum value)."""
    # the client's spec marks optional fields OpenAPI 3.0's way (`nullable: true`)
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": airflow3_spec()["components"]}
    errors = sorted(OAS30Validator(schema).iter_errors(body), key=str)
    assert not errors, f"{schema_name}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
    )


class V2:
    def __init__(self, url: str, http: aiohttp.ClientSession, store: StateStore) -> None:
        self.url, self.http, self.store = url, http, store

    async def call(self, method: str, path: str, json: Any = None, **extra: str) -> tuple[int, Any]:
        async with self.http.request(
            method, self.url + path, json=json, headers=headers(**extra)
        ) as response:
            body = await response.read()
            assert response.content_type == "application/json", body
            return response.status, orjson.loads(body)


@pytest.fixture
async def v2(store: StateStore, tmp_path: Path) -> AsyncIterator[V2]:
    await seed(store)
    app = create_app(store, StoreEngine(store, ticking_clock()), tmp_path / "logs", settings=api_settings())
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            yield V2(url, http, store)
    finally:
        await runner.cleanup()


def assert_rfc3339(value: str) -> None:
    assert datetime.fromisoformat(value).utcoffset() is not None, value


async def test_dags_runs_and_task_instances_match_airflow3s_schemas(v2: V2) -> None:
    status, dags = await v2.call("GET", "/api/v2/dags")
    assert status == 200
    assert_matches(dags, "DAGCollectionResponse")
    assert [d["dag_id"] for d in dags["dags"]] == ["etl", "other"]
    etl = dags["dags"][0]
    assert (etl["is_stale"], etl["bundle_name"], etl["dag_display_name"]) == (False, "dags-folder", "etl")
    assert etl["tags"][0] == {"name": "team-a", "dag_id": "etl", "dag_display_name": "etl"}
    assert_rfc3339(etl["last_parsed_time"])
    status, dag = await v2.call("GET", "/api/v2/dags/etl")
    assert status == 200
    assert_matches(dag, "DAGResponse")

    status, run = await v2.call("POST", "/api/v2/dags/etl/dagRuns", {"logical_date": None, "conf": {"a": 1}})
    assert status == 200
    assert_matches(run, "DAGRunResponse")
    assert run["conf"] == {"a": 1}
    assert run["run_type"] == "manual"
    for field in ("logical_date", "run_after", "queued_at"):
        assert_rfc3339(run[field])
    run_id = run["dag_run_id"]
    status, got = await v2.call("GET", f"/api/v2/dags/etl/dagRuns/{run_id}")
    assert (status, got["dag_run_id"]) == (200, run_id)
    assert_matches(got, "DAGRunResponse")
    status, runs = await v2.call("GET", "/api/v2/dags/etl/dagRuns?state=queued")
    assert status == 200
    assert_matches(runs, "DAGRunCollectionResponse")
    assert [r["dag_run_id"] for r in runs["dag_runs"]] == [run_id]

    status, tis = await v2.call("GET", f"/api/v2/dags/etl/dagRuns/{run_id}/taskInstances")
    assert status == 200
    assert_matches(tis, "TaskInstanceCollectionResponse")
    assert sorted(ti["task_id"] for ti in tis["task_instances"]) == ["extract", "load", "report", "transform"]
    assert all(ti["state"] is None for ti in tis["task_instances"])
    status, none = await v2.call("GET", f"/api/v2/dags/etl/dagRuns/{run_id}/taskInstances?state=no_status")
    assert none["total_entries"] == 4
    status, ti = await v2.call("GET", f"/api/v2/dags/etl/dagRuns/{run_id}/taskInstances/extract")
    assert status == 200
    assert_matches(ti, "TaskInstanceResponse")
    _, again = await v2.call("GET", f"/api/v2/dags/etl/dagRuns/{run_id}/taskInstances/extract")
    assert again["id"] == ti["id"], "a task instance keeps its id"


async def test_a_log_is_structured_lines_in_pages_and_in_full(v2: V2, tmp_path: Path) -> None:
    status, _ = await v2.call(
        "POST", "/api/v2/dags/other/dagRuns", {"dag_run_id": "r1", "logical_date": None}
    )
    assert status == 200
    dbrun = await v2.store.get_run("other", "r1")
    assert dbrun is not None
    ti = await v2.store.get_task_instance(TaskKey(dbrun.pk, "only", -1))
    assert ti is not None and ti.state == TaskState.NONE
    log_file = task_log_path(tmp_path / "logs", "other", "r1", "only", -1, 1)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("line one\nline two ✓\nno newline")
    path = "/api/v2/dags/other/dagRuns/r1/taskInstances/only/logs/1"
    status, page = await v2.call("GET", path)
    assert status == 200
    assert_matches(page, "TaskInstancesLogResponse")
    assert [m["event"] for m in page["content"]] == ["line one", "line two ✓", "no newline"]
    assert page["continuation_token"] is None
    status, full = await v2.call("GET", path + "?full_content=true")
    assert (status, full) == (200, page)


async def test_validation_errors_are_422_with_fastapis_shape(v2: V2) -> None:
    status, body = await v2.call("PATCH", "/api/v2/dags/etl", {})
    assert status == 422
    assert_matches(body, "HTTPValidationError")
    assert body["detail"][0]["type"] == "missing"
    assert body["detail"][0]["loc"] == ["body", "is_paused"]
    status, body = await v2.call("PATCH", "/api/v2/dags/etl", {"is_paused": "yes"})
    assert (status, body["detail"][0]["type"]) == (422, "bool_type")
    status, body = await v2.call("POST", "/api/v2/dags/etl/dagRuns", {"conf": [1], "colour": "red"})
    assert status == 422
    assert {(tuple(e["loc"]), e["type"]) for e in body["detail"]} == {
        (("body", "colour"), "extra_forbidden"),
        (("body", "conf"), "dict_type"),
    }
    status, body = await v2.call("POST", "/api/v2/dags/etl/dagRuns", {"logical_date": "2026-01-01T00:00:00"})
    assert (status, body["detail"][0]["type"]) == (422, "timezone_aware")
    status, body = await v2.call(
        "POST", "/api/v2/dags/etl/dagRuns", {"data_interval_start": "2026-01-01T00:00:00Z"}
    )
    assert status == 422
    status, body = await v2.call("GET", "/api/v2/dags?limit=many")
    assert status == 422
    assert body["detail"][0]["loc"] == ["query", "limit"]
    status, body = await v2.call("GET", "/api/v2/dags/etl/dagRuns?state=sleeping")
    assert (status, body["detail"][0]["type"]) == (422, "enum")
    _, runs = await v2.call("GET", "/api/v2/dags/etl/dagRuns")
    assert runs["total_entries"] == 0, "nothing was triggered by a refused request"


async def test_other_errors_are_detail_strings_with_airflows_statuses(v2: V2) -> None:
    status, body = await v2.call("GET", "/api/v2/dags/nope")
    assert status == 404 and isinstance(body["detail"], str) and "nope" in body["detail"]
    status, body = await v2.call("POST", "/api/v2/dags/nope/dagRuns", {"logical_date": None})
    assert status == 404 and set(body) == {"detail"}
    status, body = await v2.call(
        "POST", "/api/v2/dags/etl/dagRuns", {"dag_run_id": "x", "logical_date": None}
    )
    assert status == 200
    status, body = await v2.call(
        "POST", "/api/v2/dags/etl/dagRuns", {"dag_run_id": "x", "logical_date": None}
    )
    assert status == 409 and "already exists" in body["detail"]
    status, body = await v2.call("GET", "/api/v2/dags?colour=red")
    assert status == 400 and "colour" in body["detail"]
    status, body = await v2.call(
        "POST",
        "/api/v2/dags/etl/dagRuns",
        {"logical_date": "2026-01-01T00:00:00Z", "run_after": "2026-02-01T00:00:00Z"},
    )
    assert status == 400 and "run_after" in body["detail"]
    status, body = await v2.call("GET", "/api/v2/nothing")
    assert status == 404 and set(body) == {"detail"}
    status, body = await v2.call("GET", "/api/v1/dags/nope")
    assert status == 404 and set(body) == {"type", "title", "status", "detail"}, "v1 keeps its problem JSON"


async def test_run_after_is_the_logical_date_of_a_run_without_one(v2: V2) -> None:
    status, run = await v2.call(
        "POST", "/api/v2/dags/etl/dagRuns", {"logical_date": None, "run_after": "2026-03-01T12:00:00+02:00"}
    )
    assert status == 200
    assert datetime.fromisoformat(run["logical_date"]) == datetime.fromisoformat("2026-03-01T10:00:00+00:00")
    assert datetime.fromisoformat(run["run_after"]) == datetime.fromisoformat(run["logical_date"])


async def test_pause_health_version_and_import_errors(v2: V2) -> None:
    status, dag = await v2.call("PATCH", "/api/v2/dags/etl", {"is_paused": True})
    assert (status, dag["is_paused"]) == (200, True)
    _, v1 = await v2.call("GET", "/api/v1/dags/etl")
    assert v1["is_paused"] is True, "the same store behind both versions"
    status, health = await v2.call("GET", "/api/v2/monitor/health")
    assert status == 200
    assert_matches(health, "HealthInfoResponse")
    assert health["metadatabase"]["status"] == "healthy"
    status, version = await v2.call("GET", "/api/v2/version")
    assert status == 200
    assert_matches(version, "VersionInfo")
    status, errors = await v2.call("GET", "/api/v2/importErrors")
    assert (status, errors) == (200, {"import_errors": [], "total_entries": 0})
    assert_matches(errors, "ImportErrorCollectionResponse")


async def test_a_dags_file_token_is_the_one_v1_dag_sources_takes(v2: V2) -> None:
    _, dag = await v2.call("GET", "/api/v2/dags/etl")
    _, v1_dag = await v2.call("GET", "/api/v1/dags/etl")
    assert dag["file_token"] == v1_dag["file_token"]
    # signed, not the path in disguise: a token for another path made without the key is refused
    status, _ = await v2.call("GET", "/api/v1/dagSources/" + dag["file_token"].split(".")[0] + ".forged")
    assert status == 404
