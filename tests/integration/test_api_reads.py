"""The read side of Airflow's v1 that scripts use: DAG details and tasks, DAG sources by file
token, the `~` wildcard and the POST list forms, every list's filters and order_by (done in
SQL), XCom entries, /version and /config. Real HTTP on 127.0.0.1, real PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.api import create_app
from orchestrator.api.sources import file_token
from orchestrator.config import ApiConfig, ApiToken, Config, DatabaseConfig, WebhookConfig
from orchestrator.core.model import DagSpec, TaskSpec
from orchestrator.core.records import ChangeSet, RunRecord, TaskKey, XComRecord
from orchestrator.core.states import RunState, TaskState
from orchestrator.ports import StateStore
from storage.postgres import PostgresStateStore
from tests.apiauth import api_settings, headers
from tests.integration.engine_harness import running_engine, wait_run, write_dag
from tests.integration.test_api import ETL, OTHER, T0, Api, StoreEngine, assert_problem, serve, ticking_clock

pytestmark = pytest.mark.anyio

KEY = b"k" * 32
SECRET_PASSWORD = "Pw-never-shown-4711"
SECRET_DIGEST = "d1e5c0ffee" * 6 + "abcd"


def config_with_secrets() -> Config:
    return Config(
        database=DatabaseConfig(dsn=f"postgresql://orch:{SECRET_PASSWORD}@db.internal:5432/orch"),
        api=ApiConfig(
            port=9999,
            tokens=(
                ApiToken(name="ci", role="operator", token_sha256=SECRET_DIGEST),
                ApiToken(name="ops", role="admin", token_env="OPS_TOKEN"),
            ),
        ),
        webhooks={"gh": WebhookConfig(name="gh", auth="hmac", dag_id="etl", secret_env=("GH_SECRET",))},
    )


@pytest.fixture
async def api(store: StateStore, tmp_path: Path) -> AsyncIterator[Api]:
    source = tmp_path / "dags" / "etl.py"
    source.parent.mkdir()
    source.write_text("# the etl DAG\nwith DAG('etl'):\n    pass\n")
    etl = dataclasses.replace(
        ETL,
        fileloc=str(source),
        params={"size": 3},
        timezone="Europe/Paris",
        catchup=True,
        start_date=T0,
    )
    await store.sync_dag_file(etl.fileloc, [etl], T0)
    await store.sync_dag_file(OTHER.fileloc, [OTHER], T0)
    engine = StoreEngine(store, ticking_clock())
    app = create_app(
        store,
        engine,
        tmp_path / "logs",
        settings=api_settings(),
        signing_key=KEY,
        config=config_with_secrets(),
    )
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession(headers=headers()) as http:
            yield Api(url, http, store, engine, tmp_path / "logs")
    finally:
        await runner.cleanup()


async def make_run(
    api: Api,
    dag_id: str,
    run_id: str,
    day: int,
    state: RunState = RunState.SUCCESS,
    run_type: str = "manual",
) -> RunRecord:
    """A run with logical date T0 + `day` days, started an hour later and ended two hours later."""
    logical = T0 + timedelta(days=day)
    run, created = await api.engine.trigger_run(
        dag_id, run_id=run_id, conf={"day": day}, logical_date=logical, run_type=run_type
    )
    assert created
    finished = dataclasses.replace(
        run,
        state=state,
        start_date=logical + timedelta(hours=1),
        end_date=None if state == RunState.RUNNING else logical + timedelta(hours=2),
    )
    await api.store.commit(ChangeSet(runs=[finished]))
    return finished


async def set_task(
    api: Api, run: RunRecord, task_id: str, state: TaskState, duration: float | None = None
) -> None:
    ti = await api.store.get_task_instance(TaskKey(run.pk, task_id, -1))
    assert ti is not None
    start = run.logical_date + timedelta(hours=1)
    changed = dataclasses.replace(
        ti,
        state=state,
        try_number=1,
        start_date=start,
        end_date=None if duration is None else start + timedelta(seconds=duration),
        duration=duration,
    )
    await api.store.commit(ChangeSet(tasks=[changed]))


def run_ids(body: Any) -> list[str]:
    return [run["dag_run_id"] for run in body["dag_runs"]]


def ti_keys(body: Any) -> list[tuple[str, str, str]]:
    return [(ti["dag_id"], ti["dag_run_id"], ti["task_id"]) for ti in body["task_instances"]]


# --- DAG details and tasks ---------------------------------------------------------------------

DAG_DETAIL_FIELDS = {
    "dag_id", "description", "fileloc", "file_token", "is_paused", "is_active", "owners",
    "schedule_interval", "timetable_description", "tags", "max_active_runs", "max_active_tasks",
    "last_parsed_time", "has_import_errors", "next_dagrun", "timezone", "catchup", "orientation",
    "concurrency", "start_date", "end_date", "dag_run_timeout", "doc_md", "default_view", "params",
    "is_paused_upon_creation", "last_parsed", "render_template_as_native_obj", "template_search_path",
}  # fmt: skip
TASK_FIELDS = {
    "class_ref", "task_id", "owner", "start_date", "end_date", "trigger_rule", "extra_links",
    "depends_on_past", "wait_for_downstream", "retries", "queue", "pool", "pool_slots",
    "execution_timeout", "retry_delay", "retry_exponential_backoff", "priority_weight", "weight_rule",
    "ui_color", "ui_fgcolor", "template_fields", "sub_dag", "downstream_task_ids", "is_mapped",
}  # fmt: skip


async def test_dag_details_has_airflows_dag_detail_fields(api: Api) -> None:
    status, body = await api.get("/api/v1/dags/etl/details")
    assert status == 200
    assert DAG_DETAIL_FIELDS <= set(body)
    assert body["dag_id"] == "etl"
    assert body["timezone"] == "Europe/Paris"
    assert body["catchup"] is True
    assert body["start_date"] == "2026-01-01T00:00:00+00:00"
    assert body["end_date"] is None
    assert body["concurrency"] == body["max_active_tasks"] == 8
    assert body["params"]["size"]["value"] == 3
    assert body["params"]["size"]["__class"] == "airflow.models.param.Param"
    assert body["tags"] == [{"name": "team-a"}, {"name": "daily"}]
    assert body["last_parsed"] == "2026-01-01T00:00:00+00:00"
    assert body["schedule_interval"] == {"__type": "CronExpression", "value": "0 3 * * *"}
    _, dag = await api.get("/api/v1/dags/etl")
    assert body["file_token"] == dag["file_token"]

    _, some = await api.get("/api/v1/dags/etl/details?fields=dag_id,catchup")
    assert some == {"dag_id": "etl", "catchup": True}
    status, problem = await api.get("/api/v1/dags/nope/details")
    assert status == 404
    assert_problem(problem, 404, "DAG 'nope'")
    status, problem = await api.get("/api/v1/dags/etl/details?colour=red")
    assert status == 400
    assert_problem(problem, 400, "'colour'", "fields")


async def test_one_task_in_airflows_task_shape(api: Api) -> None:
    status, task = await api.get("/api/v1/dags/etl/tasks/extract")
    assert status == 200
    assert TASK_FIELDS <= set(task)
    assert task["task_id"] == "extract"
    assert task["class_ref"]["class_name"] == "BashOperator"
    assert task["retries"] == 2
    assert task["downstream_task_ids"] == ["report", "transform"]
    assert task["execution_timeout"] == {"__type": "TimeDelta", "days": 0, "seconds": 600, "microseconds": 0}
    assert task["ui_color"].startswith("#")
    _, listed = await api.get("/api/v1/dags/etl/tasks")
    assert [t for t in listed["tasks"] if t["task_id"] == "extract"] == [task]
    status, problem = await api.get("/api/v1/dags/etl/tasks/nope")
    assert status == 404
    assert_problem(problem, 404, "task 'nope' not found in DAG 'etl'")


# --- DAG sources ------------------------------------------------------------------------------


async def test_dag_source_round_trip_by_file_token(api: Api) -> None:
    _, dag = await api.get("/api/v1/dags/etl")
    token = dag["file_token"]
    assert dag["fileloc"] not in token  # opaque
    async with api.http.get(f"{api.url}/api/v1/dagSources/{token}") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert await response.text() == "# the etl DAG\nwith DAG('etl'):\n    pass\n"
    status, body = await api.get(f"/api/v1/dagSources/{token}", headers={"Accept": "application/json"})
    assert status == 200
    assert body == {"content": "# the etl DAG\nwith DAG('etl'):\n    pass\n"}
    _, listed = await api.get("/api/v1/dags")
    assert {d["dag_id"]: d["file_token"] for d in listed["dags"]}["etl"] == token


@pytest.mark.parametrize(
    "token",
    [
        "forged",
        "eyJ4In0.AAAA",
        file_token(b"another key", "/etc/passwd"),
        # correctly signed, but not the file of any DAG: never an arbitrary path
        file_token(KEY, "/etc/passwd"),
        # a known DAG whose file does not exist on disk
        file_token(KEY, "/dags/other.py"),
    ],
)
async def test_a_forged_or_foreign_file_token_is_404(api: Api, token: str) -> None:
    status, body = await api.get(f"/api/v1/dagSources/{token}")
    assert status == 404
    assert_problem(body, 404, "file_token")


async def test_a_token_for_the_right_path_but_another_key_is_404(api: Api) -> None:
    _, dag = await api.get("/api/v1/dags/etl")
    status, _ = await api.get(f"/api/v1/dagSources/{file_token(b'x' * 32, dag['fileloc'])}")
    assert status == 404
    assert file_token(KEY, dag["fileloc"]) == dag["file_token"]


# --- DAG runs: the wildcard, the POST form, filters and order --------------------------------


async def seed_runs(api: Api) -> dict[str, RunRecord]:
    return {
        "e1": await make_run(api, "etl", "e1", 1, RunState.SUCCESS, "scheduled"),
        "e2": await make_run(api, "etl", "e2", 2, RunState.FAILED),
        "e3": await make_run(api, "etl", "e3", 3, RunState.RUNNING),
        "o1": await make_run(api, "other", "o1", 4, RunState.SUCCESS),
    }


async def test_the_wildcard_lists_runs_across_dags(api: Api) -> None:
    await seed_runs(api)
    status, body = await api.get("/api/v1/dags/~/dagRuns")
    assert status == 200
    assert body["total_entries"] == 4
    assert run_ids(body) == ["o1", "e3", "e2", "e1"]  # newest first by default
    _, one_dag = await api.get("/api/v1/dags/etl/dagRuns")
    assert run_ids(one_dag) == ["e3", "e2", "e1"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=success", {"e1", "o1"}),
        ("state=success&state=failed", {"e1", "e2", "o1"}),
        ("run_type=scheduled", {"e1"}),
        ("execution_date_gte=2026-01-03T00:00:00%2B00:00", {"e2", "e3", "o1"}),
        ("execution_date_lte=2026-01-03T00:00:00Z", {"e1", "e2"}),
        ("execution_date_gte=2026-01-03T00:00:00Z&execution_date_lte=2026-01-04T00:00:00Z", {"e2", "e3"}),
        ("start_date_gte=2026-01-04T01:00:00Z", {"e3", "o1"}),
        ("start_date_lte=2026-01-02T01:00:00Z", {"e1"}),
        ("end_date_gte=2026-01-03T02:00:00Z", {"e2", "o1"}),  # e3 has not ended
        ("end_date_lte=2026-01-02T02:00:00Z", {"e1"}),
        ("updated_at_gte=2026-01-04T00:00:00Z", {"e3", "o1"}),
        ("updated_at_lte=2026-01-03T03:00:00Z", {"e1", "e2"}),
        ("state=running&updated_at_gte=2026-01-04T00:00:00Z", {"e3"}),
    ],
)
async def test_every_run_filter_filters(api: Api, query: str, expected: set[str]) -> None:
    await seed_runs(api)
    status, body = await api.get(f"/api/v1/dags/~/dagRuns?{query}")
    assert status == 200, body
    assert set(run_ids(body)) == expected
    assert body["total_entries"] == len(expected)


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        ("id", ["e1", "e2", "e3", "o1"]),
        ("-id", ["o1", "e3", "e2", "e1"]),
        ("execution_date", ["e1", "e2", "e3", "o1"]),
        ("-execution_date", ["o1", "e3", "e2", "e1"]),
        ("dag_run_id", ["e1", "e2", "e3", "o1"]),
        ("-dag_run_id", ["o1", "e3", "e2", "e1"]),
        ("-dag_id", ["o1", "e3", "e2", "e1"]),  # ties: newest first too
        ("state", ["e2", "e3", "e1", "o1"]),
        ("-start_date", ["o1", "e3", "e2", "e1"]),
        ("end_date", ["e1", "e2", "o1", "e3"]),  # nulls last
        ("-updated_at", ["o1", "e3", "e2", "e1"]),
    ],
)
async def test_runs_are_ordered_by_order_by(api: Api, order_by: str, expected: list[str]) -> None:
    await seed_runs(api)
    status, body = await api.get(f"/api/v1/dags/~/dagRuns?order_by={order_by}")
    assert status == 200, body
    assert run_ids(body) == expected


async def test_runs_page_after_ordering(api: Api) -> None:
    await seed_runs(api)
    _, body = await api.get("/api/v1/dags/~/dagRuns?order_by=execution_date&limit=2&offset=1")
    assert run_ids(body) == ["e2", "e3"]
    assert body["total_entries"] == 4


@pytest.mark.parametrize(
    ("query", "fragments"),
    [
        ("colour=red", ["unknown query parameter", "'colour'", "execution_date_gte", "order_by"]),
        ("order_by=pk", ["order_by='pk'", "execution_date", "dag_run_id"]),
        ("order_by=-bogus", ["order_by='-bogus'"]),
        ("state=bogus", ["'bogus' is not a DAG run state"]),
        ("start_date_gte=yesterday", ["start_date_gte", "ISO 8601"]),
    ],
)
async def test_bad_run_list_parameters_are_400(api: Api, query: str, fragments: list[str]) -> None:
    for path in ("/api/v1/dags/~/dagRuns", "/api/v1/dags/etl/dagRuns"):
        status, body = await api.get(f"{path}?{query}")
        assert status == 400
        assert_problem(body, 400, *fragments)


async def test_runs_of_an_unknown_dag_are_404(api: Api) -> None:
    status, body = await api.get("/api/v1/dags/nope/dagRuns")
    assert status == 404
    assert_problem(body, 404, "DAG 'nope'")


async def test_post_dag_runs_list_filters_orders_and_pages(api: Api) -> None:
    await seed_runs(api)
    status, body = await api.post("/api/v1/dags/~/dagRuns/list", json={})
    assert status == 200
    assert body["total_entries"] == 4
    status, body = await api.post(
        "/api/v1/dags/~/dagRuns/list",
        json={
            "dag_ids": ["etl", "other"],
            "states": ["success", "failed"],
            "execution_date_gte": "2026-01-02T00:00:00Z",
            "order_by": "-execution_date",
            "page_limit": 2,
            "page_offset": 0,
        },
    )
    assert status == 200
    assert run_ids(body) == ["o1", "e2"]
    assert body["total_entries"] == 3
    _, body = await api.post("/api/v1/dags/~/dagRuns/list", json={"dag_ids": ["other"]})
    assert run_ids(body) == ["o1"]
    _, body = await api.post(
        "/api/v1/dags/~/dagRuns/list",
        json={"start_date_lte": "2026-01-03T01:00:00Z", "end_date_gte": "2026-01-03T02:00:00Z"},
    )
    assert run_ids(body) == ["e2"]
    _, body = await api.post("/api/v1/dags/~/dagRuns/list", json={"page_offset": 3, "order_by": "id"})
    assert run_ids(body) == ["o1"] and body["total_entries"] == 4


async def test_post_dag_runs_list_is_a_read_for_viewers(api: Api) -> None:
    status, body = await api.post("/api/v1/dags/~/dagRuns/list", json={}, headers=headers("viewer"))
    assert status == 200
    assert body == {"dag_runs": [], "total_entries": 0}


@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        ({"state": ["success"]}, ["unknown field(s) 'state'", "states"]),
        ({"states": "success"}, ["states must be a list of strings"]),
        ({"states": ["bogus"]}, ["'bogus' is not a DAG run state"]),
        ({"order_by": "nope"}, ["order_by='nope'"]),
        ({"page_limit": 0}, ["page_limit"]),
        ({"page_offset": "1"}, ["page_offset must be an integer"]),
        ({"execution_date_gte": 5}, ["execution_date_gte must be an ISO 8601 string"]),
    ],
)
async def test_bad_post_dag_runs_list_bodies_are_400(
    api: Api, payload: dict[str, Any], fragments: list[str]
) -> None:
    status, body = await api.post("/api/v1/dags/~/dagRuns/list", json=payload)
    assert status == 400
    assert_problem(body, 400, *fragments)


# --- task instances --------------------------------------------------------------------------


async def seed_task_instances(api: Api) -> dict[str, RunRecord]:
    runs = await seed_runs(api)
    await set_task(api, runs["e1"], "extract", TaskState.SUCCESS, 10.0)
    await set_task(api, runs["e1"], "transform", TaskState.FAILED, 100.0)
    await set_task(api, runs["e2"], "extract", TaskState.SUCCESS, 50.0)
    await set_task(api, runs["o1"], "only", TaskState.RUNNING)
    return runs


async def test_task_instances_across_runs_and_dags(api: Api) -> None:
    await seed_task_instances(api)
    status, body = await api.get("/api/v1/dags/~/dagRuns/~/taskInstances")
    assert status == 200
    assert body["total_entries"] == 3 * 4 + 1
    assert {key[0] for key in ti_keys(body)} == {"etl", "other"}
    one = body["task_instances"][0]
    assert one["execution_date"] is not None and "dag_run_id" in one
    _, etl = await api.get("/api/v1/dags/etl/dagRuns/~/taskInstances")
    assert etl["total_entries"] == 12
    assert {key[1] for key in ti_keys(etl)} == {"e1", "e2", "e3"}
    _, one_run = await api.get("/api/v1/dags/etl/dagRuns/e1/taskInstances")
    assert [key[2] for key in ti_keys(one_run)] == ["extract", "load", "report", "transform"]
    status, _ = await api.get("/api/v1/dags/nope/dagRuns/~/taskInstances")
    assert status == 404


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=success", {("e1", "extract"), ("e2", "extract")}),
        ("state=failed&state=running", {("e1", "transform"), ("o1", "only")}),
        ("duration_gte=50", {("e1", "transform"), ("e2", "extract")}),
        ("duration_lte=49.5", {("e1", "extract")}),
        ("duration_gte=20&duration_lte=60", {("e2", "extract")}),
        ("start_date_gte=2026-01-04T00:00:00Z", {("o1", "only")}),
        ("start_date_lte=2026-01-02T01:00:00Z", {("e1", "extract"), ("e1", "transform")}),
        ("end_date_gte=2026-01-02T01:01:00Z", {("e1", "transform"), ("e2", "extract")}),
        ("end_date_lte=2026-01-02T01:00:10Z", {("e1", "extract")}),
        ("execution_date_gte=2026-01-03T00:00:00Z&state=success", {("e2", "extract")}),
        ("execution_date_lte=2026-01-02T00:00:00Z&state=success", {("e1", "extract")}),
        ("updated_at_gte=2026-01-03T01:00:01Z", {("e2", "extract"), ("o1", "only")}),
        ("pool=default_pool&state=running", {("o1", "only")}),
        ("pool=other_pool", set()),
        ("queue=default&state=running", {("o1", "only")}),
        ("queue=gpu", set()),
    ],
)
async def test_every_task_instance_filter_filters(
    api: Api, query: str, expected: set[tuple[str, str]]
) -> None:
    await seed_task_instances(api)
    status, body = await api.get(f"/api/v1/dags/~/dagRuns/~/taskInstances?{query}")
    assert status == 200, body
    assert {(key[1], key[2]) for key in ti_keys(body)} == expected
    assert body["total_entries"] == len(expected)


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        ("duration", [("e1", "extract"), ("e2", "extract"), ("e1", "transform")]),
        ("-duration", [("e1", "transform"), ("e2", "extract"), ("e1", "extract")]),
        ("-execution_date", [("e2", "extract"), ("e1", "extract"), ("e1", "transform")]),
        ("task_id", [("e1", "extract"), ("e2", "extract"), ("e1", "transform")]),
        ("-task_id", [("e1", "transform"), ("e1", "extract"), ("e2", "extract")]),
        ("state", [("e1", "transform"), ("e1", "extract"), ("e2", "extract")]),
        ("-dag_run_id", [("e2", "extract"), ("e1", "extract"), ("e1", "transform")]),
    ],
)
async def test_task_instances_are_ordered_by_order_by(
    api: Api, order_by: str, expected: list[tuple[str, str]]
) -> None:
    await seed_task_instances(api)
    status, body = await api.get(
        f"/api/v1/dags/etl/dagRuns/~/taskInstances?duration_gte=1&order_by={order_by}"
    )
    assert status == 200, body
    assert [(key[1], key[2]) for key in ti_keys(body)] == expected


@pytest.mark.parametrize(
    ("query", "fragments"),
    [
        ("colour=red", ["'colour'", "duration_gte", "order_by"]),
        ("order_by=pk", ["order_by='pk'", "start_date", "duration"]),
        ("state=bogus", ["'bogus' is not a task instance state"]),
        ("duration_gte=long", ["duration_gte"]),
        ("duration_gte=nan", ["finite"]),
    ],
)
async def test_bad_task_instance_list_parameters_are_400(api: Api, query: str, fragments: list[str]) -> None:
    await seed_runs(api)
    for path in ("/api/v1/dags/~/dagRuns/~/taskInstances", "/api/v1/dags/etl/dagRuns/e1/taskInstances"):
        status, body = await api.get(f"{path}?{query}")
        assert status == 400
        assert_problem(body, 400, *fragments)


async def test_post_task_instances_list(api: Api) -> None:
    await seed_task_instances(api)
    url = "/api/v1/dags/~/dagRuns/~/taskInstances/list"
    status, body = await api.post(url, json={"dag_ids": ["etl"], "state": ["success", "failed"]})
    assert status == 200
    assert {(k[1], k[2]) for k in ti_keys(body)} == {
        ("e1", "extract"),
        ("e1", "transform"),
        ("e2", "extract"),
    }
    _, body = await api.post(url, json={"dag_run_ids": ["e2"], "task_ids": ["extract", "load"]})
    assert {(k[1], k[2]) for k in ti_keys(body)} == {("e2", "extract"), ("e2", "load")}
    _, body = await api.post(
        url, json={"duration_gte": 20, "order_by": "-duration", "page_limit": 1, "page_offset": 0}
    )
    assert [(k[1], k[2]) for k in ti_keys(body)] == [("e1", "transform")]
    assert body["total_entries"] == 2
    _, body = await api.post(
        url,
        json={
            "pool": ["default_pool"],
            "queue": ["default"],
            "execution_date_gte": "2026-01-04T00:00:00Z",
            "start_date_gte": "2026-01-01T00:00:00Z",
            "end_date_lte": "2027-01-01T00:00:00Z",
        },
    )
    assert ti_keys(body) == []  # o1's only task has not ended
    _, body = await api.post(url, json={"dag_ids": ["other"]}, headers=headers("viewer"))
    assert ti_keys(body) == [("other", "o1", "only")]
    status, problem = await api.post(url, json={"states": ["success"]})
    assert status == 400
    assert_problem(problem, 400, "unknown field(s) 'states'", "dag_run_ids")


# --- DAG list filters --------------------------------------------------------------------------


async def test_dag_list_filters_and_order(api: Api) -> None:
    more = DagSpec(
        dag_id="etl_100%_done", fileloc="/dags/more.py", tags=("daily",), tasks=(TaskSpec("t", "bash"),)
    )
    await api.store.sync_dag_file(more.fileloc, [more], T0)
    await api.store.set_dag_paused("other", True)

    async def ids(query: str) -> list[str]:
        status, body = await api.get(f"/api/v1/dags?{query}")
        assert status == 200, body
        assert body["total_entries"] == len(body["dags"])
        return [dag["dag_id"] for dag in body["dags"]]

    assert await ids("") == ["etl", "etl_100%_done", "other"]
    assert await ids("order_by=-dag_id") == ["other", "etl_100%_done", "etl"]
    assert await ids("tags=daily") == ["etl", "etl_100%_done"]
    assert await ids("tags=team-a&tags=nothing") == ["etl"]
    assert await ids("paused=true") == ["other"]
    assert await ids("paused=false") == ["etl", "etl_100%_done"]
    assert await ids("dag_id_pattern=ETL") == ["etl", "etl_100%_done"]
    assert await ids("dag_id_pattern=100%25") == ["etl_100%_done"]
    assert await ids("dag_id_pattern=l_") == ["etl_100%_done"]  # _ is literal, not a wildcard
    assert await ids("order_by=fileloc&dag_id_pattern=_") == ["etl_100%_done"]
    assert await ids("order_by=fileloc&tags=daily") == ["etl_100%_done", "etl"]  # /dags/… < /tmp/…
    await api.store.remove_dag_file(more.fileloc)
    assert await ids("") == ["etl", "other"]
    assert await ids("only_active=false&order_by=-dag_id") == ["other", "etl_100%_done", "etl"]
    for query, fragment in [("colour=red", "'colour'"), ("order_by=owners", "order_by='owners'")]:
        status, body = await api.get(f"/api/v1/dags?{query}")
        assert status == 400
        assert_problem(body, 400, fragment)


# --- XCom entries --------------------------------------------------------------------------------

ENTRIES = "/api/v1/dags/etl/dagRuns/e1/taskInstances/extract/xcomEntries"


async def test_xcom_entries_list_and_get(api: Api) -> None:
    runs = await seed_runs(api)
    pk = runs["e1"].pk
    await api.store.commit(
        ChangeSet(
            xcoms=[
                XComRecord(pk, "extract", -1, "return_value", {"rows": 3, "ok": True}),
                XComRecord(pk, "extract", -1, "path", "/data/out.csv"),
                XComRecord(pk, "extract", 2, "return_value", [1, 2]),
                XComRecord(pk, "transform", -1, "return_value", 5),
            ]
        )
    )
    status, body = await api.get(ENTRIES)
    assert status == 200
    assert body["total_entries"] == 3
    first = body["xcom_entries"][0]
    assert set(first) == {"key", "timestamp", "execution_date", "map_index", "task_id", "dag_id"}
    assert [(e["map_index"], e["key"]) for e in body["xcom_entries"]] == [
        (-1, "path"),
        (-1, "return_value"),
        (2, "return_value"),
    ]
    assert first["dag_id"] == "etl" and first["task_id"] == "extract"
    assert first["execution_date"] == "2026-01-02T00:00:00+00:00"
    assert datetime.fromisoformat(first["timestamp"]).tzinfo is not None
    _, mapped = await api.get(f"{ENTRIES}?map_index=2")
    assert [(e["map_index"], e["key"]) for e in mapped["xcom_entries"]] == [(2, "return_value")]
    _, keyed = await api.get(f"{ENTRIES}?xcom_key=path")
    assert [e["key"] for e in keyed["xcom_entries"]] == ["path"]
    _, page = await api.get(f"{ENTRIES}?limit=1&offset=1")
    assert [e["key"] for e in page["xcom_entries"]] == ["return_value"] and page["total_entries"] == 3

    status, entry = await api.get(f"{ENTRIES}/return_value")
    assert status == 200
    assert entry["key"] == "return_value" and entry["map_index"] == -1
    _, native = await api.get(f"{ENTRIES}/return_value?stringify=false&deserialize=true")
    assert native["value"] == {"rows": 3, "ok": True}
    # Airflow 2 answers str() of the value by default
    assert entry["value"] == str(native["value"]) and "'rows': 3" in entry["value"]
    _, mapped_entry = await api.get(f"{ENTRIES}/return_value?map_index=2&stringify=false")
    assert mapped_entry["value"] == [1, 2]
    _, text = await api.get(f"{ENTRIES}/path")
    assert text["value"] == "/data/out.csv"

    status, problem = await api.get(f"{ENTRIES}/nope")
    assert status == 404
    assert_problem(problem, 404, "XCom entry 'nope'", "'extract'")
    status, problem = await api.get(f"{ENTRIES}?colour=red")
    assert status == 400
    assert_problem(problem, 400, "'colour'", "xcom_key")
    status, problem = await api.get(f"{ENTRIES}/path?stringify=maybe")
    assert status == 400
    status, problem = await api.get("/api/v1/dags/etl/dagRuns/nope/taskInstances/extract/xcomEntries")
    assert status == 404
    assert_problem(problem, 404, "DAG run 'nope'")


async def test_xcom_entries_of_a_real_run(store: PostgresStateStore, tmp_path: Path) -> None:
    dag_file = write_dag(
        tmp_path / "dags",
        "answers",
        """
        @task
        def answer():
            return {"answer": 42}

        with DAG("answers"):
            answer()
        """,
        tmp_path,
    )
    async with running_engine(store, tmp_path / "logs", [dag_file]) as harness:
        app = create_app(store, harness.engine, tmp_path / "logs", settings=api_settings())
        runner, url = await serve(app)
        try:
            await harness.trigger("answers", "r1")
            run = await wait_run(store, "answers", "r1")
            assert run.state == RunState.SUCCESS
            entries = f"{url}/api/v1/dags/answers/dagRuns/r1/taskInstances/answer/xcomEntries"
            async with aiohttp.ClientSession(headers=headers()) as http:
                async with http.get(entries) as response:
                    listing = await response.json()
                assert [e["key"] for e in listing["xcom_entries"]] == ["return_value"]
                async with http.get(f"{entries}/return_value", params={"stringify": "false"}) as response:
                    assert response.status == 200
                    assert (await response.json())["value"] == {"answer": 42}
        finally:
            await runner.cleanup()


# --- version and config ----------------------------------------------------------------------


async def test_version(api: Api) -> None:
    status, body = await api.get("/api/v1/version")
    assert status == 200
    assert set(body) == {"version", "git_version"}
    assert isinstance(body["version"], str) and body["version"]
    assert body["git_version"] is None


async def test_config_shows_the_effective_config_with_secrets_masked(api: Api) -> None:
    async with api.http.get(f"{api.url}/api/v1/config") as response:
        assert response.status == 200
        raw = await response.text()
    assert SECRET_PASSWORD not in raw
    assert SECRET_DIGEST not in raw
    import orjson

    body = orjson.loads(raw)
    sections = {s["name"]: {o["key"]: o["value"] for o in s["options"]} for s in body["sections"]}
    assert {"daemon", "database", "api", "executors", "executors.local", "webhooks.gh"} <= set(sections)
    assert sections["database"]["dsn"] == "postgresql://orch:< hidden >@db.internal:5432/orch"
    assert sections["api"]["port"] == "9999"
    assert "< hidden >" in sections["api"]["tokens"]
    assert "OPS_TOKEN" in sections["api"]["tokens"]  # a variable's name, never its value
    assert sections["webhooks.gh"]["secret_env"] == '["GH_SECRET"]'
    for section in body["sections"]:
        assert all(set(option) == {"key", "value"} for option in section["options"])
        assert all(isinstance(option["value"], str) for option in section["options"])

    status, one = await api.get("/api/v1/config?section=database")
    assert status == 200
    assert [s["name"] for s in one["sections"]] == ["database"]
    status, problem = await api.get("/api/v1/config?section=nope")
    assert status == 404
    assert_problem(problem, 404, "section 'nope'", "database")
    status, problem = await api.get("/api/v1/config?colour=red")
    assert status == 400


def test_dsn_masking_in_every_form() -> None:
    from orchestrator.api.meta import mask_dsn

    assert mask_dsn("postgresql://u:p%40ss@h:5/db") == "postgresql://u:< hidden >@h:5/db"
    assert mask_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    assert "s3cr3t" not in mask_dsn("postgresql://h/db?user=u&password=s3cr3t")
    assert mask_dsn("host=h user=u password=s3cr3t dbname=d") == "host=h user=u password=< hidden > dbname=d"
    assert "s 3" not in mask_dsn("host=h password='s 3' dbname=d")


# --- import errors and a DAG's tasks: order_by and unknown parameters -----------------------


async def test_import_errors_are_ordered_in_sql(api: Api) -> None:
    await api.store.record_import_error("/dags/b.py", "SyntaxError: b", T0 + timedelta(hours=2))
    await api.store.record_import_error("/dags/a.py", "SyntaxError: a", T0 + timedelta(hours=3))
    await api.store.record_import_error("/dags/c.py", "SyntaxError: c", T0 + timedelta(hours=1))

    async def files(query: str) -> list[str]:
        status, body = await api.get(f"/api/v1/importErrors?{query}")
        assert status == 200, body
        assert body["total_entries"] == 3
        return [e["filename"] for e in body["import_errors"]]

    assert await files("") == ["/dags/b.py", "/dags/a.py", "/dags/c.py"]  # by id, oldest first
    assert await files("order_by=-import_error_id") == ["/dags/c.py", "/dags/a.py", "/dags/b.py"]
    assert await files("order_by=filename") == ["/dags/a.py", "/dags/b.py", "/dags/c.py"]
    assert await files("order_by=-timestamp") == ["/dags/a.py", "/dags/b.py", "/dags/c.py"]
    assert await files("order_by=timestamp&limit=1&offset=1") == ["/dags/b.py"]
    for query, fragment in [("order_by=message", "order_by='message'"), ("colour=red", "'colour'")]:
        status, body = await api.get(f"/api/v1/importErrors?{query}")
        assert status == 400
        assert_problem(body, 400, fragment)


async def test_a_dags_tasks_are_ordered_by_order_by(api: Api) -> None:
    async def ids(query: str) -> list[str]:
        status, body = await api.get(f"/api/v1/dags/etl/tasks?{query}")
        assert status == 200, body
        return [t["task_id"] for t in body["tasks"]]

    assert await ids("") == ["extract", "load", "report", "transform"]
    assert await ids("order_by=-task_id") == ["transform", "report", "load", "extract"]
    assert (await ids("order_by=-retries"))[0] == "extract"  # the only task with retries
    assert (await ids("order_by=trigger_rule"))[0] == "load"  # all_done < all_success
    status, body = await api.get("/api/v1/dags/etl/tasks?order_by=kind")
    assert status == 400
    assert_problem(body, 400, "order_by='kind'", "task_id")
