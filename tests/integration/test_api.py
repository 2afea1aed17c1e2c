"""The REST API over real HTTP on 127.0.0.1, reading a real PostgreSQL state store.

The engine behind POST dagRuns is `StoreEngine`, a small real implementation of the EngineApi
protocol that creates runs through the store (the engine itself is tested elsewhere).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.api import create_app
from orchestrator.core.model import DagSpec, TaskSpec, TriggerRule
from orchestrator.core.records import ChangeSet, DagRecord, NewRun, NewTaskInstance, RunRecord, TaskKey
from orchestrator.core.serialization import spec_from_dict
from orchestrator.core.states import RunState, TaskState
from orchestrator.errors import DagNotFound, ShuttingDown
from orchestrator.logpaths import task_log_path
from orchestrator.ports import StateStore
from tests.apiauth import api_settings, headers

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, tzinfo=UTC)

ETL = DagSpec(
    dag_id="etl",
    fileloc="/dags/etl.py",
    schedule="0 3 * * *",
    description="extract, transform, load",
    max_active_runs=4,
    max_active_tasks=8,
    tags=("team-a", "daily"),
    tasks=(
        TaskSpec(
            "extract",
            "bash",
            args={"bash_command": "echo extract"},
            retries=2,
            retry_delay=90061.5,
            execution_timeout=600,
        ),
        TaskSpec("transform", "python", upstream=("extract",)),
        TaskSpec(
            "load",
            "bash",
            upstream=("transform",),
            args={"bash_command": "echo load"},
            trigger_rule=TriggerRule.ALL_DONE,
        ),
        TaskSpec("report", "bash", upstream=("extract",), args={"bash_command": "echo report"}),
    ),
)
OTHER = DagSpec(
    dag_id="other", fileloc="/dags/other.py", tasks=(TaskSpec("only", "bash", args={"bash_command": "true"}),)
)


class StoreEngine:
    """EngineApi for tests: creates runs (and their task instances) through the real store."""

    def __init__(self, store: StateStore, now: Callable[[], datetime]) -> None:
        self.store = store
        self.now = now
        self.ready = True
        self.fail_with: Exception | None = None

    def is_ready(self) -> bool:
        return self.ready

    async def set_paused(self, dag_id: str, is_paused: bool) -> DagRecord | None:
        return await self.store.set_dag_paused(dag_id, is_paused)

    async def trigger_run(
        self,
        dag_id: str,
        *,
        run_id: str | None,
        conf: dict[str, Any],
        logical_date: datetime | None,
        run_type: str = "manual",
        note: str | None = None,
    ) -> tuple[RunRecord, bool]:
        if self.fail_with is not None:
            raise self.fail_with
        dag = await self.store.get_dag(dag_id)
        if dag is None:
            raise DagNotFound(f"DAG {dag_id!r} not found")
        spec = spec_from_dict(dag.spec)
        now = self.now()
        logical = logical_date or now
        new_run = NewRun(
            dag_id=dag_id,
            run_id=run_id or f"{run_type}__{logical.isoformat()}",
            run_type=run_type,
            conf=conf,
            logical_date=logical,
            data_interval_start=logical,
            data_interval_end=logical,
            queued_at=now,
            note=note,
        )
        operators = {"bash": "BashOperator", "python": "PythonOperator"}
        tasks = [NewTaskInstance(t.task_id, operators[t.kind], t.max_tries) for t in spec.tasks]
        return await self.store.create_run(new_run, tasks)


def ticking_clock(start: datetime = T0) -> Callable[[], datetime]:
    """A clock that advances one second per reading, so runs have distinct queued_at."""
    state = {"now": start}

    def now() -> datetime:
        state["now"] += timedelta(seconds=1)
        return state["now"]

    return now


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    store: StateStore
    engine: StoreEngine
    logs_dir: Path

    async def call(
        self, method: str, path: str, *, json: Any = None, data: str | None = None, headers: Any = None
    ) -> tuple[int, Any]:
        async with self.http.request(
            method, self.url + path, json=json, data=data, headers=headers
        ) as response:
            body = await response.read()
            if response.content_type == "application/json":
                import orjson

                return response.status, orjson.loads(body)
            return response.status, body.decode()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("POST", path, **kwargs)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve `app` on 127.0.0.1 on a free port; returns the runner and the base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def seed(store: StateStore) -> None:
    await store.sync_dag_file(ETL.fileloc, [ETL], T0)
    await store.sync_dag_file(OTHER.fileloc, [OTHER], T0)


@pytest.fixture
async def api(store: StateStore, tmp_path: Path) -> AsyncIterator[Api]:
    await seed(store)
    engine = StoreEngine(store, ticking_clock())
    logs_dir = tmp_path / "logs"
    runner, url = await serve(create_app(store, engine, logs_dir, settings=api_settings()))
    try:
        async with aiohttp.ClientSession(headers=headers()) as http:
            yield Api(url, http, store, engine, logs_dir)
    finally:
        await runner.cleanup()


def assert_problem(body: Any, status: int, *fragments: str) -> None:
    assert set(body) == {"type", "title", "status", "detail"}
    assert body["status"] == status
    assert body["type"].startswith("https://airflow.apache.org/")
    for fragment in fragments:
        assert fragment in body["detail"]


# --- health ---------------------------------------------------------------------------------


async def test_health_is_healthy_once_the_engine_is_ready(api: Api) -> None:
    status, body = await api.get("/health")
    assert status == 200
    assert body == {
        "status": "healthy",
        "metadatabase": {"status": "healthy"},
        "scheduler": {"status": "healthy"},
    }


async def test_health_is_503_until_the_engine_is_ready(api: Api) -> None:
    api.engine.ready = False
    status, body = await api.get("/health")
    assert status == 503
    assert body["scheduler"] == {"status": "unhealthy"}


# --- DAGs -----------------------------------------------------------------------------------

DAG_FIELDS = {
    "dag_id",
    "description",
    "fileloc",
    "is_paused",
    "is_active",
    "schedule_interval",
    "timetable_description",
    "tags",
    "max_active_runs",
    "max_active_tasks",
    "last_parsed_time",
    "has_import_errors",
}


async def test_list_dags_has_airflow_fields(api: Api) -> None:
    status, body = await api.get("/api/v1/dags")
    assert status == 200
    assert body["total_entries"] == 2
    assert [dag["dag_id"] for dag in body["dags"]] == ["etl", "other"]
    etl = body["dags"][0]
    assert DAG_FIELDS <= set(etl)
    assert etl["description"] == "extract, transform, load"
    assert etl["fileloc"] == "/dags/etl.py"
    assert etl["is_paused"] is False
    assert etl["is_active"] is True
    assert etl["schedule_interval"] == {"__type": "CronExpression", "value": "0 3 * * *"}
    assert etl["timetable_description"] == "At 03:00"
    assert etl["tags"] == [{"name": "team-a"}, {"name": "daily"}]
    assert etl["max_active_runs"] == 4
    assert etl["max_active_tasks"] == 8
    assert datetime.fromisoformat(etl["last_parsed_time"]) == T0
    assert etl["has_import_errors"] is False
    assert body["dags"][1]["schedule_interval"] is None


async def test_list_dags_pages_with_limit_and_offset(api: Api) -> None:
    status, body = await api.get("/api/v1/dags?limit=1&offset=1")
    assert status == 200
    assert [dag["dag_id"] for dag in body["dags"]] == ["other"]
    assert body["total_entries"] == 2


async def test_list_dags_hides_inactive_dags_unless_asked(api: Api) -> None:
    await api.store.sync_dag_file(OTHER.fileloc, [], T0)  # the file no longer defines the DAG
    _, active = await api.get("/api/v1/dags")
    assert [dag["dag_id"] for dag in active["dags"]] == ["etl"]
    _, everything = await api.get("/api/v1/dags?only_active=false")
    assert {dag["dag_id"]: dag["is_active"] for dag in everything["dags"]} == {"etl": True, "other": False}


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("limit=0", "limit=0 must be at least 1"),
        ("limit=abc", "limit='abc' is not an integer"),
        ("offset=-1", "offset=-1 must be between 0 and 9223372036854775807"),
        (
            "offset=9223372036854775808",
            "offset=9223372036854775808 must be between 0 and 9223372036854775807",
        ),
        ("only_active=maybe", "only_active='maybe' must be true or false"),
    ],
)
async def test_bad_pagination_is_400(api: Api, query: str, fragment: str) -> None:
    status, body = await api.get(f"/api/v1/dags?{query}")
    assert status == 400
    assert_problem(body, 400, fragment)


async def test_get_dag_and_unknown_dag_404(api: Api) -> None:
    status, body = await api.get("/api/v1/dags/etl")
    assert status == 200
    assert body["dag_id"] == "etl"
    status, body = await api.get("/api/v1/dags/nope")
    assert status == 404
    assert_problem(body, 404, "DAG 'nope' not found", "orchestrator dags list")


async def test_patch_dag_pauses_and_unpauses(api: Api) -> None:
    status, body = await api.call("PATCH", "/api/v1/dags/etl", json={"is_paused": True})
    assert status == 200
    assert body["is_paused"] is True
    assert (await api.store.get_dag("etl")).is_paused is True  # type: ignore[union-attr]
    status, body = await api.call(
        "PATCH", "/api/v1/dags/etl?update_mask=is_paused", json={"is_paused": False}
    )
    assert status == 200
    assert body["is_paused"] is False


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("{}", "must set is_paused"),
        ('{"is_paused": "yes"}', "is_paused must be true or false"),
        ('{"is_paused": true, "description": "x"}', "unknown field(s) 'description'"),
        ("{not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ("", "the request body is empty"),
    ],
)
async def test_patch_dag_rejects_bad_bodies(api: Api, payload: str, fragment: str) -> None:
    status, body = await api.call(
        "PATCH", "/api/v1/dags/etl", data=payload, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert_problem(body, 400, fragment)
    assert (await api.store.get_dag("etl")).is_paused is False  # type: ignore[union-attr]


async def test_patch_unknown_dag_is_404(api: Api) -> None:
    status, body = await api.call("PATCH", "/api/v1/dags/nope", json={"is_paused": True})
    assert status == 404
    assert_problem(body, 404, "'nope'")


async def test_list_tasks_of_a_dag(api: Api) -> None:
    status, body = await api.get("/api/v1/dags/etl/tasks")
    assert status == 200
    assert body["total_entries"] == 4
    tasks = {task["task_id"]: task for task in body["tasks"]}
    assert [task["task_id"] for task in body["tasks"]] == sorted(tasks)
    extract = tasks["extract"]
    assert extract["operator_name"] == "BashOperator"
    assert extract["trigger_rule"] == "all_success"
    assert extract["retries"] == 2
    assert extract["retry_delay"] == {
        "__type": "TimeDelta",
        "days": 1,
        "seconds": 3661,
        "microseconds": 500000,
    }
    assert extract["execution_timeout"] == {
        "__type": "TimeDelta",
        "days": 0,
        "seconds": 600,
        "microseconds": 0,
    }
    assert extract["downstream_task_ids"] == ["report", "transform"]
    assert tasks["transform"]["operator_name"] == "PythonOperator"
    assert tasks["transform"]["execution_timeout"] is None
    assert tasks["load"]["trigger_rule"] == "all_done"
    assert tasks["load"]["downstream_task_ids"] == []
    status, body = await api.get("/api/v1/dags/nope/tasks")
    assert status == 404


# --- runs -----------------------------------------------------------------------------------

RUN_FIELDS = {
    "dag_id",
    "dag_run_id",
    "state",
    "conf",
    "logical_date",
    "execution_date",
    "data_interval_start",
    "data_interval_end",
    "start_date",
    "end_date",
    "queued_at",
    "run_type",
    "external_trigger",
    "last_scheduling_decision",
    "note",
}


async def test_trigger_a_run(api: Api) -> None:
    status, run = await api.post(
        "/api/v1/dags/etl/dagRuns",
        json={"dag_run_id": "r1", "conf": {"day": "2026-02-03"}, "logical_date": "2026-02-03T00:00:00Z"},
    )
    assert status == 200
    assert set(run) == RUN_FIELDS
    assert run["dag_id"] == "etl"
    assert run["dag_run_id"] == "r1"
    assert run["state"] == "queued"
    assert run["conf"] == {"day": "2026-02-03"}
    assert run["logical_date"] == "2026-02-03T00:00:00+00:00"
    assert run["execution_date"] == run["logical_date"]
    assert run["run_type"] == "manual"
    assert run["external_trigger"] is True
    assert run["start_date"] is None
    assert run["last_scheduling_decision"] is None
    assert run["note"] is None
    assert datetime.fromisoformat(run["queued_at"]).tzinfo is not None
    stored = await api.store.get_run("etl", "r1")
    assert stored is not None and stored.conf == {"day": "2026-02-03"}


async def test_trigger_with_an_empty_body_generates_the_run_id(api: Api) -> None:
    status, run = await api.post("/api/v1/dags/other/dagRuns", json={})
    assert status == 200
    assert run["dag_run_id"].startswith("manual__")
    assert run["conf"] == {}


async def test_trigger_accepts_a_naive_logical_date_as_utc_and_a_note(api: Api) -> None:
    status, run = await api.post(
        "/api/v1/dags/other/dagRuns", json={"logical_date": "2026-03-04T05:06:07", "note": "by hand"}
    )
    assert status == 200
    assert run["logical_date"] == "2026-03-04T05:06:07+00:00"


async def test_the_same_run_id_twice_is_409_and_creates_nothing(api: Api) -> None:
    status, _ = await api.post("/api/v1/dags/etl/dagRuns", json={"dag_run_id": "dup", "conf": {"a": 1}})
    assert status == 200
    run = await api.store.get_run("etl", "dup")
    assert run is not None
    before = await api.store.list_task_instances(run.pk)
    status, body = await api.post("/api/v1/dags/etl/dagRuns", json={"dag_run_id": "dup", "conf": {"a": 2}})
    assert status == 409
    assert_problem(body, 409, "'dup'", "already exists")
    _, total = await api.store.list_runs("etl", 100, 0)
    assert total == 1
    assert (await api.store.get_run("etl", "dup")).conf == {"a": 1}  # type: ignore[union-attr]
    assert await api.store.list_task_instances(run.pk) == before


async def test_trigger_an_unknown_dag_is_404(api: Api) -> None:
    status, body = await api.post("/api/v1/dags/nope/dagRuns", json={})
    assert status == 404
    assert_problem(body, 404, "'nope'")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("{bad", "not valid JSON"),
        ('"a string"', "must be a JSON object"),
        ('{"conf": [1, 2]}', "conf must be a JSON object"),
        ('{"conf": "x"}', "conf must be a JSON object"),
        ('{"logical_date": "yesterday"}', "logical_date 'yesterday' is not an ISO 8601 datetime"),
        ('{"logical_date": 5}', "logical_date must be an ISO 8601 string"),
        ('{"dag_run_id": "has space"}', "dag_run_id 'has space' is invalid"),
        ('{"dag_run_id": "../etc"}', "dag_run_id '../etc' is invalid"),
        ('{"dag_run_id": 7}', "dag_run_id 7 is invalid"),
        ('{"dag_run_id": "r1\\n"}', "dag_run_id 'r1\\n' is invalid"),
        ('{"dag_run_id": "' + "r" * 251 + '"}', "use at most 250"),
        ('{"dag_run_id": "ok", "state": "success"}', "unknown field(s) 'state'"),
        ('{"note": 3}', "note must be a string"),
        (
            '{"logical_date": "2026-01-01T00:00:00Z", "execution_date": "2026-01-02T00:00:00Z"}',
            "logical_date and execution_date differ",
        ),
    ],
)
async def test_trigger_rejects_bad_bodies_naming_the_field(api: Api, payload: str, fragment: str) -> None:
    status, body = await api.call(
        "POST", "/api/v1/dags/etl/dagRuns", data=payload, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert_problem(body, 400, fragment)
    _, total = await api.store.list_runs("etl", 100, 0)
    assert total == 0


async def test_list_runs_newest_first_with_paging_and_state_filter(api: Api) -> None:
    for run_id in ("a", "b", "c"):
        status, _ = await api.post("/api/v1/dags/etl/dagRuns", json={"dag_run_id": run_id})
        assert status == 200
    run_a = await api.store.get_run("etl", "a")
    assert run_a is not None
    await api.store.commit(
        ChangeSet(
            runs=[dataclasses.replace(run_a, state=RunState.RUNNING, start_date=T0 + timedelta(hours=1))]
        )
    )
    status, body = await api.get("/api/v1/dags/etl/dagRuns")
    assert status == 200
    assert body["total_entries"] == 3
    assert [run["dag_run_id"] for run in body["dag_runs"]] == ["c", "b", "a"]
    assert set(body["dag_runs"][0]) == RUN_FIELDS
    _, page = await api.get("/api/v1/dags/etl/dagRuns?limit=1&offset=1")
    assert [run["dag_run_id"] for run in page["dag_runs"]] == ["b"]
    assert page["total_entries"] == 3
    _, running = await api.get("/api/v1/dags/etl/dagRuns?state=running")
    assert [run["dag_run_id"] for run in running["dag_runs"]] == ["a"]
    assert running["dag_runs"][0]["start_date"] == "2026-01-01T01:00:00+00:00"
    _, both = await api.get("/api/v1/dags/etl/dagRuns?state=running&state=queued")
    assert both["total_entries"] == 3
    status, body = await api.get("/api/v1/dags/etl/dagRuns?state=bogus")
    assert status == 400
    assert_problem(body, 400, "state 'bogus'", "queued, running, success, failed")
    status, body = await api.get("/api/v1/dags/nope/dagRuns")
    assert status == 404


async def test_get_one_run_and_404s(api: Api) -> None:
    await api.post("/api/v1/dags/etl/dagRuns", json={"dag_run_id": "manual__2026-01-01T00:00:00+00:00"})
    status, run = await api.get("/api/v1/dags/etl/dagRuns/manual__2026-01-01T00:00:00+00:00")
    assert status == 200
    assert run["dag_run_id"] == "manual__2026-01-01T00:00:00+00:00"
    status, body = await api.get("/api/v1/dags/etl/dagRuns/nope")
    assert status == 404
    assert_problem(body, 404, "DAG run 'nope' of DAG 'etl' not found")
    status, body = await api.get("/api/v1/dags/nodag/dagRuns/x")
    assert status == 404
    assert_problem(body, 404, "DAG 'nodag' not found")


# --- task instances and logs ------------------------------------------------------------------

TI_FIELDS = {
    "task_id",
    "dag_id",
    "dag_run_id",
    "execution_date",
    "start_date",
    "end_date",
    "duration",
    "state",
    "try_number",
    "max_tries",
    "map_index",
    "hostname",
    "unixname",
    "pool",
    "pool_slots",
    "queue",
    "priority_weight",
    "operator",
    "queued_when",
    "pid",
    "executor_config",
    "note",
    "rendered_fields",
}


async def start_extract(api: Api, run_id: str = "r1") -> RunRecord:
    """Trigger a run and mark its `extract` task as running its first try, as an executor would."""
    await api.post(
        "/api/v1/dags/etl/dagRuns", json={"dag_run_id": run_id, "logical_date": "2026-05-01T00:00:00Z"}
    )
    run = await api.store.get_run("etl", run_id)
    assert run is not None
    ti = await api.store.get_task_instance(TaskKey(run.pk, "extract"))
    assert ti is not None
    started = T0 + timedelta(minutes=5)
    await api.store.commit(
        ChangeSet(
            tasks=[
                dataclasses.replace(
                    ti,
                    state=TaskState.RUNNING,
                    try_number=1,
                    queued_at=started,
                    start_date=started,
                    external_id="pid:4242",
                    hostname="worker-1",
                )
            ]
        )
    )
    return run


async def test_list_task_instances(api: Api) -> None:
    await start_extract(api)
    status, body = await api.get("/api/v1/dags/etl/dagRuns/r1/taskInstances")
    assert status == 200
    assert body["total_entries"] == 4
    tis = {ti["task_id"]: ti for ti in body["task_instances"]}
    assert set(tis) == {"extract", "transform", "load", "report"}
    extract = tis["extract"]
    assert TI_FIELDS <= set(extract)
    assert extract["dag_id"] == "etl"
    assert extract["dag_run_id"] == "r1"
    assert extract["execution_date"] == "2026-05-01T00:00:00+00:00"
    assert extract["state"] == "running"
    assert extract["try_number"] == 1
    assert extract["max_tries"] == 2
    assert extract["map_index"] == -1
    assert extract["hostname"] == "worker-1"
    assert extract["pid"] == 4242
    assert extract["operator"] == "BashOperator"
    assert extract["start_date"] == "2026-01-01T00:05:00+00:00"
    assert extract["queued_when"] == "2026-01-01T00:05:00+00:00"
    assert (extract["pool"], extract["pool_slots"], extract["queue"]) == ("default_pool", 1, "default")
    assert extract["priority_weight"] == 1
    assert extract["executor_config"] == "{}"
    assert extract["rendered_fields"] == {}
    assert extract["note"] is None
    assert tis["transform"]["state"] is None  # Airflow shows the "none" state as null
    assert tis["transform"]["pid"] is None
    assert tis["transform"]["operator"] == "PythonOperator"
    _, running = await api.get("/api/v1/dags/etl/dagRuns/r1/taskInstances?state=running")
    assert [ti["task_id"] for ti in running["task_instances"]] == ["extract"]
    _, page = await api.get("/api/v1/dags/etl/dagRuns/r1/taskInstances?limit=2&offset=1")
    assert len(page["task_instances"]) == 2
    assert page["total_entries"] == 4
    status, _ = await api.get("/api/v1/dags/etl/dagRuns/nope/taskInstances")
    assert status == 404


async def test_get_one_task_instance_and_404(api: Api) -> None:
    await start_extract(api)
    status, ti = await api.get("/api/v1/dags/etl/dagRuns/r1/taskInstances/extract")
    assert status == 200
    assert ti["task_id"] == "extract"
    assert ti["state"] == "running"
    status, ti = await api.get("/api/v1/dags/etl/dagRuns/r1/taskInstances/extract/-1")
    assert status == 200
    assert ti["map_index"] == -1
    status, body = await api.get("/api/v1/dags/etl/dagRuns/r1/taskInstances/nope")
    assert status == 404
    assert_problem(body, 404, "task instance 'nope' not found in run 'r1'")


def write_log(api: Api, run: RunRecord, task_id: str, try_number: int, text: str) -> Path:
    path = task_log_path(api.logs_dir, run.dag_id, run.run_id, task_id, -1, try_number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


async def test_logs_as_text_and_as_json(api: Api) -> None:
    run = await start_extract(api)
    path = write_log(api, run, "extract", 1, "line one\nline two ✓\n")
    url = "/api/v1/dags/etl/dagRuns/r1/taskInstances/extract/logs/1"
    async with api.http.get(api.url + url) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert await response.text() == "line one\nline two ✓\n"
    status, body = await api.get(url, headers={"Accept": "application/json"})
    assert status == 200
    assert body == {"content": "line one\nline two ✓\n", "continuation_token": None}
    with path.open("a") as log:  # a running task's log grows; the next read sees it
        log.write("line three\n")
    status, text = await api.get(url, headers={"Accept": "text/plain"})
    assert text.endswith("line three\n")


async def test_logs_404_for_a_try_not_made_empty_for_a_silent_try_and_400_for_a_bad_try(api: Api) -> None:
    await start_extract(api)
    base = "/api/v1/dags/etl/dagRuns/r1/taskInstances"
    status, body = await api.get(f"{base}/extract/logs/2")
    assert status == 404
    assert_problem(body, 404, "no log for try 2 of task 'extract'", "made 1 tries so far")
    status, body = await api.get(f"{base}/transform/logs/1")
    assert status == 404
    assert_problem(body, 404, "has not started yet")
    # a try that was made but printed nothing has no file: its log is empty, not missing
    status, body = await api.get(f"{base}/extract/logs/1")
    assert status == 200 and body == ""
    status, body = await api.get(f"{base}/extract/logs/1", headers={"Accept": "application/json"})
    assert status == 200 and body == {"content": "", "continuation_token": None}
    status, body = await api.get(f"{base}/extract/logs/0")
    assert status == 400
    assert_problem(body, 400, "try_number 0")
    status, body = await api.get(f"{base}/extract/logs/x")
    assert status == 400
    status, body = await api.get(f"{base}/nope/logs/1")
    assert status == 404


# --- import errors ----------------------------------------------------------------------------


async def test_import_errors(api: Api) -> None:
    status, body = await api.get("/api/v1/importErrors")
    assert status == 200
    assert body == {"import_errors": [], "total_entries": 0}
    await api.store.record_import_error("/dags/broken.py", "SyntaxError: invalid syntax (line 3)", T0)
    await api.store.record_import_error("/dags/cycle.py", "cycle: a -> b -> a", T0)
    status, body = await api.get("/api/v1/importErrors")
    assert status == 200
    assert body["total_entries"] == 2
    errors = {error["filename"]: error for error in body["import_errors"]}
    broken = errors["/dags/broken.py"]
    assert set(broken) == {"import_error_id", "filename", "stack_trace", "timestamp"}
    assert broken["stack_trace"] == "SyntaxError: invalid syntax (line 3)"
    assert broken["timestamp"] == "2026-01-01T00:00:00+00:00"
    assert sorted(error["import_error_id"] for error in body["import_errors"]) == [1, 2]
    one = body["import_errors"][0]
    status, single = await api.get(f"/api/v1/importErrors/{one['import_error_id']}")
    assert status == 200
    assert single == one
    status, _ = await api.get("/api/v1/importErrors/99")
    assert status == 404


# --- errors in general ------------------------------------------------------------------------


async def test_unknown_route_is_a_404_problem(api: Api) -> None:
    status, body = await api.get("/api/v9/nothing")
    assert status == 404
    assert_problem(body, 404, "no route for GET /api/v9/nothing")


async def test_wrong_method_is_a_405_problem(api: Api) -> None:
    async with api.http.delete(api.url + "/api/v1/dags") as response:
        assert response.status == 405
        assert "GET" in response.headers["Allow"]
        body = await response.json()
    assert_problem(body, 405, "DELETE is not allowed on /api/v1/dags")


async def test_an_unexpected_error_is_500_without_a_traceback_and_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    api.engine.fail_with = RuntimeError("secret internal detail")
    with caplog.at_level(logging.INFO, logger="orchestrator.api"):
        status, body = await api.post("/api/v1/dags/etl/dagRuns", json={})
    assert status == 500
    assert_problem(body, 500, "internal error")
    assert "secret internal detail" not in body["detail"]
    assert "Traceback" not in body["detail"]
    records = [r for r in caplog.records if r.name == "orchestrator.api"]
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in records)


async def test_a_trigger_during_shutdown_is_503_with_retry_after(api: Api) -> None:
    api.engine.fail_with = ShuttingDown()
    status, body = await api.post("/api/v1/dags/etl/dagRuns", json={})
    assert status == 503
    assert_problem(body, 503, "shutting down")


async def test_client_errors_are_logged(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="orchestrator.api"):
        await api.get("/api/v1/dags/nope")
    assert any("GET /api/v1/dags/nope -> 404" in r.getMessage() for r in caplog.records)
