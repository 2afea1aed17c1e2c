"""Fields of the REST API that used to be constants or dropped now carry the stored truth.

A run's note (given at trigger time, changed with PATCH .../setNote, never overwritten by the
engine's own run updates), `has_import_errors` and `owners` of a DAG, stable import-error ids,
and a /health whose metadatabase status asks the database. Real HTTP on 127.0.0.1, real PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from orchestrator.api import create_app
from orchestrator.authoring import DAG, Bash
from orchestrator.core.records import ChangeSet
from orchestrator.core.states import RunState
from storage.postgres import PostgresStateStore
from tests.apiauth import api_settings, headers
from tests.integration import test_api as api_tests
from tests.integration.engine_harness import running_engine, wait_run, write_dag
from tests.integration.test_api import ETL, T0, Api, StoreEngine, assert_problem, serve, ticking_clock
from tests.pgserver import TEMPLATE_DATABASE, PgServer

pytestmark = pytest.mark.anyio

api = api_tests.api  # the fixture: the API on a seeded store, served on 127.0.0.1

RUNS = "/api/v1/dags/etl/dagRuns"


# --- the run's note ---------------------------------------------------------------------------


async def test_a_note_given_at_trigger_time_is_stored_and_returned(api: Api) -> None:
    status, run = await api.post(RUNS, json={"dag_run_id": "r1", "note": "re-run after the fix"})
    assert status == 200
    assert run["note"] == "re-run after the fix"
    stored = await api.store.get_run("etl", "r1")
    assert stored is not None and stored.note == "re-run after the fix"
    _, one = await api.get(f"{RUNS}/r1")
    assert one["note"] == "re-run after the fix"
    _, page = await api.get(RUNS)
    assert [r["note"] for r in page["dag_runs"]] == ["re-run after the fix"]


async def test_a_run_without_a_note_has_null(api: Api) -> None:
    _, run = await api.post(RUNS, json={"dag_run_id": "r1"})
    assert run["note"] is None


async def test_set_note_replaces_the_note_and_survives_the_engine_rewriting_the_run(api: Api) -> None:
    await api.post(RUNS, json={"dag_run_id": "r1", "note": "first"})
    before = await api.store.get_run("etl", "r1")
    assert before is not None

    status, run = await api.call("PATCH", f"{RUNS}/r1/setNote", json={"note": "second"})

    assert status == 200
    assert run["dag_run_id"] == "r1" and run["note"] == "second"
    # the engine writes whole run rows from its in-memory copy, which still has the old note
    await api.store.commit(ChangeSet(runs=[dataclasses.replace(before, state=RunState.RUNNING)]))
    _, after = await api.get(f"{RUNS}/r1")
    assert after["state"] == "running"
    assert after["note"] == "second"


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({}, 400, "must set note"),
        ({"note": 5}, 400, "note must be a string"),
        ({"note": "x" * 1001}, 400, "at most 1000"),
        ({"note": "ok", "state": "failed"}, 400, "unknown field(s) 'state'"),
    ],
)
async def test_set_note_refuses_bad_bodies(
    api: Api, payload: dict[str, object], status: int, fragment: str
) -> None:
    await api.post(RUNS, json={"dag_run_id": "r1", "note": "kept"})
    got, body = await api.call("PATCH", f"{RUNS}/r1/setNote", json=payload)
    assert got == status
    assert_problem(body, status, fragment)
    run = await api.store.get_run("etl", "r1")
    assert run is not None and run.note == "kept"


async def test_set_note_of_an_unknown_run_or_dag_is_404(api: Api) -> None:
    status, body = await api.call("PATCH", f"{RUNS}/nope/setNote", json={"note": "x"})
    assert status == 404
    assert_problem(body, 404, "DAG run 'nope'")
    status, body = await api.call("PATCH", "/api/v1/dags/nope/dagRuns/r1/setNote", json={"note": "x"})
    assert status == 404
    assert_problem(body, 404, "DAG 'nope'")


async def test_the_real_engine_keeps_the_note_through_a_whole_run(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    dag_file = write_dag(
        tmp_path / "dags",
        "noted",
        'with DAG("noted"):\n    Bash("a", "true") >> Bash("b", "true")\n',
        tmp_path,
    )
    async with running_engine(store, tmp_path / "logs", [dag_file]) as harness:
        runner, url = await serve(
            create_app(store, harness.engine, tmp_path / "logs", settings=api_settings())
        )
        try:
            async with aiohttp.ClientSession(headers=headers()) as http:
                async with http.post(
                    f"{url}/api/v1/dags/noted/dagRuns", json={"dag_run_id": "r1", "note": "by hand"}
                ) as response:
                    assert response.status == 200
                    assert (await response.json())["note"] == "by hand"
                finished = await wait_run(store, "noted", "r1")
                assert finished.state == RunState.SUCCESS
                async with http.get(f"{url}/api/v1/dags/noted/dagRuns/r1") as response:
                    assert (await response.json())["note"] == "by hand"
        finally:
            await runner.cleanup()


# --- DAG fields ---------------------------------------------------------------------------------


async def test_has_import_errors_follows_the_dag_file(api: Api) -> None:
    _, dag = await api.get("/api/v1/dags/etl")
    assert dag["has_import_errors"] is False

    await api.store.record_import_error(ETL.fileloc, "SyntaxError: invalid syntax", T0)

    _, dag = await api.get("/api/v1/dags/etl")
    assert dag["has_import_errors"] is True
    _, listed = await api.get("/api/v1/dags")
    assert {d["dag_id"]: d["has_import_errors"] for d in listed["dags"]} == {"etl": True, "other": False}
    status, paused = await api.call("PATCH", "/api/v1/dags/etl", json={"is_paused": True})
    assert status == 200 and paused["has_import_errors"] is True

    await api.store.sync_dag_file(ETL.fileloc, [ETL], T0)  # the file loads again
    _, dag = await api.get("/api/v1/dags/etl")
    assert dag["has_import_errors"] is False


async def test_owners_are_the_distinct_owners_of_the_tasks(api: Api) -> None:
    with DAG("owned", default_args={"owner": "data-team"}) as dag:
        Bash("a", "true")
        Bash("b", "true", owner="alice")
        Bash("c", "true", owner="alice")
    await api.store.sync_dag_file("/dags/owned.py", [dag.to_spec("/dags/owned.py")], T0)

    _, owned = await api.get("/api/v1/dags/owned")
    assert owned["owners"] == ["alice", "data-team"]
    _, tasks = await api.get("/api/v1/dags/owned/tasks")
    assert {t["task_id"]: t["owner"] for t in tasks["tasks"]} == {
        "a": "data-team",
        "b": "alice",
        "c": "alice",
    }
    _, etl = await api.get("/api/v1/dags/etl")
    assert etl["owners"] == ["airflow"], "Airflow's default owner"


# --- import errors --------------------------------------------------------------------------------


async def test_import_error_ids_stay_when_other_files_break_or_heal(api: Api) -> None:
    await api.store.record_import_error("/dags/b.py", "NameError: b", T0)
    await api.store.record_import_error("/dags/a.py", "NameError: a", T0)
    _, body = await api.get("/api/v1/importErrors")
    ids = {e["filename"]: e["import_error_id"] for e in body["import_errors"]}

    await api.store.sync_dag_file("/dags/b.py", [], T0)  # b.py is fixed
    await api.store.record_import_error("/dags/a.py", "NameError: a, again", T0)  # a.py still broken

    status, body = await api.get("/api/v1/importErrors")
    assert status == 200
    assert [(e["filename"], e["import_error_id"]) for e in body["import_errors"]] == [
        ("/dags/a.py", ids["/dags/a.py"])
    ]
    status, one = await api.get(f"/api/v1/importErrors/{ids['/dags/a.py']}")
    assert status == 200
    assert one["filename"] == "/dags/a.py" and one["stack_trace"] == "NameError: a, again"
    status, gone = await api.get(f"/api/v1/importErrors/{ids['/dags/b.py']}")
    assert status == 404
    assert_problem(gone, 404, f"import error {ids['/dags/b.py']} not found")


@pytest.mark.parametrize("raw", ["0", "x", "9223372036854775808"])
async def test_a_malformed_import_error_id_is_400(api: Api, raw: str) -> None:
    status, body = await api.get(f"/api/v1/importErrors/{raw}")
    assert status == 400
    assert_problem(body, 400, "import_error_id")


# --- health ------------------------------------------------------------------------------------------


@pytest.fixture
async def doomed_store(
    pg_server: PgServer, pg_template_dsn: str
) -> AsyncIterator[tuple[PostgresStateStore, str]]:
    """A store on a database of its own, which the test may drop under it."""
    name = pg_server.create_database(template=TEMPLATE_DATABASE)
    try:
        connected = await PostgresStateStore.connect(pg_server.dsn(name))
        try:
            yield connected, name
        finally:
            await connected.close()
    finally:
        pg_server.drop_database(name)


async def test_health_reports_the_metadatabase_unhealthy_when_it_does_not_answer(
    doomed_store: tuple[PostgresStateStore, str], pg_server: PgServer, tmp_path: Path
) -> None:
    store, name = doomed_store
    runner, url = await serve(
        create_app(store, StoreEngine(store, ticking_clock()), tmp_path, settings=api_settings())
    )
    try:
        async with aiohttp.ClientSession(headers=headers()) as http:
            async with http.get(url + "/health") as response:
                assert response.status == 200
                assert (await response.json())["metadatabase"] == {"status": "healthy"}

            pg_server.drop_database(name)  # WITH (FORCE): the pool's connections are cut

            async with http.get(url + "/health") as response:
                assert response.status == 503
                assert await response.json() == {
                    "status": "unhealthy",
                    "metadatabase": {"status": "unhealthy"},
                    "scheduler": {"status": "healthy"},
                }
    finally:
        await runner.cleanup()
