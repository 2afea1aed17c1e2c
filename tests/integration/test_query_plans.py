"""The hot queries stay on their indexes (pgqueuer-style plan regression tests).

A database is filled with enough finished runs and task instances that a sequential scan would
hurt, ANALYZEd, and every hot query is EXPLAINed with realistic arguments, in both custom and
generic plan modes (asyncpg's prepared statements may switch to a generic plan after five runs).
Planner settings such as enable_seqscan are left alone: the indexes must win on cost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from orchestrator.core.records import RunRecord, TaskInstanceRecord, XComRecord
from orchestrator.core.states import RunState, TaskState
from storage.postgres import _init_connection, _run_columns, _task_columns, _task_row, _xcom_columns
from storage.sql import QUERIES
from tests.pgserver import TEMPLATE_DATABASE, PgServer, run_in_fresh_loop

pytestmark = pytest.mark.anyio

DAGS = 10
RUNS_PER_DAG = 300
TASKS_PER_RUN = 10
WATCHED_TABLES = {"task_instance", "dag_run", "xcom"}
T0 = datetime(2024, 1, 1, tzinfo=UTC)

FILL = [
    """
    INSERT INTO dag_run (dag_id, run_id, state, run_type, logical_date, data_interval_start,
                         data_interval_end, queued_at)
    SELECT 'dag_' || d, 'run_' || r, CASE WHEN r > $2 - 2 THEN 'running' ELSE 'success' END, 'scheduled',
           $3::timestamptz + r * interval '1 hour', $3::timestamptz, $3::timestamptz,
           $3::timestamptz + r * interval '1 hour'
    FROM generate_series(1, $1) AS d, generate_series(1, $2) AS r
    """,
    """
    INSERT INTO task_instance (run_pk, dag_id, run_id, task_id, state, operator)
    SELECT pk, dag_id, run_id, 'task_' || t, CASE WHEN state = 'running' THEN 'queued' ELSE 'success' END,
           'BashOperator'
    FROM dag_run, generate_series(1, $1) AS t
    """,
    """
    INSERT INTO xcom (run_pk, task_id, key, value)
    SELECT run_pk, task_id, 'return_value', '1'::jsonb FROM task_instance
    """,
]


@pytest.fixture(scope="module")
def filled_dsn(pg_server: PgServer, pg_template_dsn: str) -> Iterator[str]:
    name = pg_server.create_database(template=TEMPLATE_DATABASE, prefix="plans_")
    dsn = pg_server.dsn(name)

    async def fill() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(FILL[0], DAGS, RUNS_PER_DAG, T0)
            await conn.execute(FILL[1], TASKS_PER_RUN)
            await conn.execute(FILL[2])
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    run_in_fresh_loop(fill)
    try:
        yield dsn
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=["force_custom_plan", "force_generic_plan"])
async def conn(filled_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(filled_dsn)
    await _init_connection(connection)
    await connection.execute("SELECT set_config('plan_cache_mode', $1, false)", request.param)
    try:
        yield connection
    finally:
        await connection.close()


async def sample(conn: asyncpg.Connection, n: int) -> tuple[list[TaskInstanceRecord], list[RunRecord]]:
    rows = await conn.fetch(
        "SELECT r.pk, r.dag_id, r.run_id, r.run_type, r.queued_at FROM dag_run r ORDER BY r.pk LIMIT $1", n
    )
    tis = [
        TaskInstanceRecord(row[0], row[1], row[2], "task_1", -1, TaskState.RUNNING, 1, 0, "BashOperator")
        for row in rows
    ]
    runs = [
        RunRecord(row[0], row[1], row[2], RunState.RUNNING, row[3], {}, T0, T0, T0, row[4]) for row in rows
    ]
    return tis, runs


async def commit_args(conn: asyncpg.Connection, tasks: int, runs: int, xcoms: int) -> list[Any]:
    """The fenced commit's arguments for `tasks` task rows, `runs` run rows and `xcoms` XComs."""
    tis, run_rows = await sample(conn, max(tasks, runs, xcoms, 1))
    values = [XComRecord(ti.run_pk, ti.task_id, -1, "return_value", 2) for ti in tis[:xcoms]]
    fence = sorted(
        {ti.run_pk for ti in tis[:tasks]} | {r.pk for r in run_rows[:runs]} | {x.run_pk for x in values}
    )
    return [*_task_columns(tis[:tasks]), *_run_columns(run_rows[:runs]), *_xcom_columns(values), fence, None]


async def one_task_row(conn: asyncpg.Connection) -> list[Any]:
    tis, _ = await sample(conn, 1)
    return [*_task_row(tis[0]), None]


def commit_of(tasks: int, runs: int, xcoms: int) -> Callable[[asyncpg.Connection], Any]:
    async def make(conn: asyncpg.Connection) -> list[Any]:
        return await commit_args(conn, tasks, runs, xcoms)

    return make


async def active_pks(conn: asyncpg.Connection) -> list[Any]:
    return [[row[0] for row in await conn.fetch(QUERIES["list_active_runs"])]]


def constant(*args: Any) -> Callable[[asyncpg.Connection], Any]:
    async def make(conn: asyncpg.Connection) -> list[Any]:
        return list(args)

    return make


async def first_pk(conn: asyncpg.Connection) -> list[Any]:
    return [await conn.fetchval("SELECT min(pk) FROM dag_run")]


async def first_ti_key(conn: asyncpg.Connection) -> list[Any]:
    return [await conn.fetchval("SELECT min(pk) FROM dag_run"), "task_3", -1]


HOT_QUERIES: dict[str, Callable[[asyncpg.Connection], Any]] = {
    "commit_changes": commit_of(5, 5, 5),
    "commit_changes[one task]": commit_of(1, 0, 0),
    "commit_changes[tasks]": commit_of(5, 0, 0),
    "commit_changes[runs]": commit_of(0, 5, 0),
    "update_task_instance": one_task_row,
    "admit_queued_runs": constant("dag_7", "me", 64, [], 16),
    "claim_own_runs": constant("me", []),
    "claim_orphaned_runs": constant("me", 100, True),
    "owned_runs": constant("me", [1, 2, 3]),
    "list_runs": constant("dag_7", None, 25, 0),
    "count_runs": constant("dag_7", None),
    "get_run": constant("dag_7", "run_12"),
    "list_active_runs": constant(),
    "list_task_instances_of_runs": active_pks,
    "list_xcoms_of_runs": active_pks,
    "list_task_instances": first_pk,
    "list_xcoms": first_pk,
    "get_task_instance": first_ti_key,
}


def scanned_relations(plan: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    if "Relation Name" in plan:
        found.append((plan["Node Type"], plan["Relation Name"]))
    for child in plan.get("Plans", []):
        found.extend(scanned_relations(child))
    return found


@pytest.mark.parametrize("query_name", list(HOT_QUERIES))
async def test_hot_query_uses_indexes(conn: asyncpg.Connection, query_name: str) -> None:
    args = await HOT_QUERIES[query_name](conn)

    # EXPLAIN without ANALYZE plans the statement and does not run it.
    query = QUERIES[query_name.split("[")[0]]  # "name[case]": one query with other arguments
    explained = await conn.fetchval("EXPLAIN (FORMAT JSON) " + query, *args)
    plan = orjson.loads(explained)[0]["Plan"]

    relations = scanned_relations(plan)
    seq_scans = [rel for node, rel in relations if node == "Seq Scan" and rel in WATCHED_TABLES]
    assert not seq_scans, f"{query_name} scans {seq_scans} sequentially:\n{orjson.dumps(plan).decode()}"
    assert any(rel in WATCHED_TABLES for _, rel in relations), f"{query_name}: no watched table in the plan"


# The API's lists of one DAG's runs, one run's task instances and one task's XComs (listing.sql)
# take optional filters, so only their custom plans (the parameters known) can use the indexes;
# PostgreSQL keeps choosing custom plans while the generic one costs more, as a scan would.
LIST_QUERIES: dict[str, Callable[[asyncpg.Connection], Any]] = {
    "find_runs": constant(["dag_7"], *[None] * 10, "-queued_at", 25, 0),
    "count_found_runs": constant(["dag_7"], *[None] * 10),
    "find_task_instances": constant(["dag_7"], ["run_12"], *[None] * 14, "key", 100, 0),
    "count_found_task_instances": constant(["dag_7"], ["run_12"], *[None] * 14),
    "find_xcom_entries": lambda conn: _xcom_args(conn, limit=True),
    "count_xcom_entries": lambda conn: _xcom_args(conn, limit=False),
}


async def _xcom_args(conn: asyncpg.Connection, *, limit: bool) -> list[Any]:
    pk = await conn.fetchval("SELECT min(pk) FROM dag_run")
    return [pk, "task_3", None, None, *([100, 0] if limit else [])]


@pytest.mark.parametrize("query_name", list(LIST_QUERIES))
async def test_api_list_query_uses_indexes_with_its_parameters_known(
    filled_dsn: str, query_name: str
) -> None:
    conn = await asyncpg.connect(filled_dsn)
    try:
        await _init_connection(conn)
        await conn.execute("SET plan_cache_mode = force_custom_plan")
        args = await LIST_QUERIES[query_name](conn)
        explained = await conn.fetchval("EXPLAIN (FORMAT JSON) " + QUERIES[query_name], *args)
    finally:
        await conn.close()
    plan = orjson.loads(explained)[0]["Plan"]
    relations = scanned_relations(plan)
    seq_scans = [rel for node, rel in relations if node == "Seq Scan" and rel in WATCHED_TABLES]
    assert not seq_scans, f"{query_name} scans {seq_scans} sequentially:\n{orjson.dumps(plan).decode()}"
