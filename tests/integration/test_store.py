"""PostgresStateStore against a real PostgreSQL: every StateStore method, round trips and edge cases."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from orchestrator.core.model import DagSpec, TaskSpec
from orchestrator.core.records import (
    ChangeSet,
    NewRun,
    NewTaskInstance,
    RunRecord,
    TaskInstanceRecord,
    TaskKey,
    XComRecord,
)
from orchestrator.core.serialization import spec_to_dict
from orchestrator.core.states import RunState, TaskState
from storage.postgres import SMALL_TASK_BATCH, PostgresStateStore

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def new_run(dag_id: str = "etl", run_id: str = "manual__1", queued_at: datetime = T0) -> NewRun:
    return NewRun(
        dag_id=dag_id,
        run_id=run_id,
        run_type="manual",
        conf={"who": "test", "n": [1, 2]},
        logical_date=T0,
        data_interval_start=T0 - timedelta(days=1),
        data_interval_end=T0,
        queued_at=queued_at,
    )


TASKS = [
    NewTaskInstance("extract", "BashOperator", max_tries=2),
    NewTaskInstance("load", "PythonOperator", max_tries=0),
    NewTaskInstance("mapped", "BashOperator", max_tries=1, map_index=0),
    NewTaskInstance("mapped", "BashOperator", max_tries=1, map_index=1),
]


def dag_spec(dag_id: str, fileloc: str = "/dags/a.py", **settings: object) -> DagSpec:
    task = TaskSpec(task_id="t1", kind="bash", args={"bash_command": "echo hi"})
    return DagSpec(dag_id=dag_id, fileloc=fileloc, tasks=(task,), **settings)  # type: ignore[arg-type]


# --- create_run -------------------------------------------------------------------------------


async def test_create_run_inserts_queued_run_and_none_task_instances(store: PostgresStateStore) -> None:
    run, created = await store.create_run(new_run(), TASKS)

    assert created is True
    assert run.state is RunState.QUEUED
    assert (run.dag_id, run.run_id, run.run_type, run.conf) == (
        "etl",
        "manual__1",
        "manual",
        {"who": "test", "n": [1, 2]},
    )
    assert (run.logical_date, run.data_interval_start, run.queued_at) == (T0, T0 - timedelta(days=1), T0)
    assert run.start_date is None and run.end_date is None and run.external_trigger is True
    assert await store.get_run("etl", "manual__1") == run
    tis = await store.list_task_instances(run.pk)
    assert [(ti.task_id, ti.map_index, ti.state, ti.try_number, ti.max_tries, ti.operator) for ti in tis] == [
        ("extract", -1, TaskState.NONE, 0, 2, "BashOperator"),
        ("load", -1, TaskState.NONE, 0, 0, "PythonOperator"),
        ("mapped", 0, TaskState.NONE, 0, 1, "BashOperator"),
        ("mapped", 1, TaskState.NONE, 0, 1, "BashOperator"),
    ]
    assert all((ti.dag_id, ti.run_id, ti.run_pk) == ("etl", "manual__1", run.pk) for ti in tis)


async def test_create_run_twice_returns_the_existing_run_and_writes_nothing(
    store: PostgresStateStore,
) -> None:
    first, created_first = await store.create_run(new_run(), TASKS)
    again = dataclasses.replace(new_run(), conf={"other": True}, queued_at=T0 + timedelta(hours=1))
    second, created_second = await store.create_run(again, [NewTaskInstance("extra", "BashOperator", 0)])

    assert (created_first, created_second) == (True, False)
    assert second == first
    assert [ti.task_id for ti in await store.list_task_instances(first.pk)] == [
        "extract",
        "load",
        "mapped",
        "mapped",
    ]


async def test_create_runs_writes_a_batch_in_order_once_each_and_answers_existing_ones(
    store: PostgresStateStore,
) -> None:
    existing, _ = await store.create_run(new_run(run_id="old"), TASKS[:1])
    items = [
        (new_run(run_id="a"), TASKS, None),
        (dataclasses.replace(new_run(run_id="old"), conf={"new": 1}), TASKS, None),  # exists
        (new_run(run_id="b"), TASKS[:2], None),
        (dataclasses.replace(new_run(run_id="a"), conf={"copy": 1}), TASKS[:1], None),  # repeated
    ]
    answers = await store.create_runs(items)

    assert [(run.run_id, created) for run, created in answers] == [
        ("a", True),
        ("old", False),
        ("b", True),
        ("a", False),
    ]
    assert answers[1][0] == existing and answers[3][0] == answers[0][0]
    assert answers[0][0].conf == {"who": "test", "n": [1, 2]}  # the first copy won
    assert answers[0][0].state == RunState.QUEUED and answers[0][0].pk < answers[2][0].pk
    tis = {run.run_id: [ti.task_id for ti in await store.list_task_instances(run.pk)] for run, _ in answers}
    assert tis == {"a": ["extract", "load", "mapped", "mapped"], "old": ["extract"], "b": ["extract", "load"]}
    assert await store.create_runs([]) == []


async def test_create_run_with_thousands_of_tasks_creates_them_all(store: PostgresStateStore) -> None:
    tasks = [NewTaskInstance(f"task_{i:05d}", "BashOperator", max_tries=1) for i in range(2500)]
    run, created = await store.create_run(new_run(), tasks)
    assert created
    assert len(await store.list_task_instances(run.pk)) == 2500


# --- commit -----------------------------------------------------------------------------------


def every_field_ti(run: RunRecord, task_id: str = "extract") -> TaskInstanceRecord:
    return TaskInstanceRecord(
        run_pk=run.pk,
        dag_id=run.dag_id,
        run_id=run.run_id,
        task_id=task_id,
        map_index=-1,
        state=TaskState.DEFERRED,
        try_number=3,
        max_tries=5,
        operator="SqlSensor",
        queued_at=T0 + timedelta(seconds=1),
        start_date=T0 + timedelta(seconds=2),
        end_date=T0 + timedelta(seconds=3),
        duration=1.25,
        next_retry_at=T0 + timedelta(seconds=4),
        external_id="pid:1234",
        daemon_id="daemon-1",
        hostname="host-a",
        exit_code=137,
        trigger_classpath="orchestrator.triggers.DateTimeTrigger",
        trigger_kwargs={"moment": "2024-01-01T00:00:05+00:00", "nested": {"list": [1, None, "x"]}},
        next_wakeup=T0 + timedelta(seconds=5),
    )


async def test_commit_round_trips_every_task_instance_and_run_field(store: PostgresStateStore) -> None:
    run, _ = await store.create_run(new_run(), TASKS)
    ti = every_field_ti(run)
    finished_run = dataclasses.replace(
        run,
        state=RunState.FAILED,
        run_type="scheduled",
        conf={"changed": 1},
        logical_date=T0 + timedelta(days=1),
        data_interval_start=T0 + timedelta(days=2),
        data_interval_end=T0 + timedelta(days=3),
        queued_at=T0 + timedelta(minutes=1),
        start_date=T0 + timedelta(minutes=2),
        end_date=T0 + timedelta(minutes=3),
        external_trigger=False,
    )

    await store.commit(ChangeSet(tasks=[ti], runs=[finished_run]))

    assert await store.get_task_instance(ti.key) == ti
    assert await store.get_run(run.dag_id, run.run_id) == finished_run

    cleared = dataclasses.replace(
        ti,
        state=TaskState.SCHEDULED,
        queued_at=None,
        start_date=None,
        end_date=None,
        duration=None,
        next_retry_at=None,
        external_id=None,
        daemon_id=None,
        hostname=None,
        exit_code=None,
        trigger_classpath=None,
        trigger_kwargs=None,
        next_wakeup=None,
    )
    await store.commit(ChangeSet(tasks=[cleared]))
    assert await store.get_task_instance(ti.key) == cleared


async def test_commit_applies_the_last_row_of_a_key(store: PostgresStateStore) -> None:
    run, _ = await store.create_run(new_run(), TASKS)
    key = TaskKey(run.pk, "extract")
    base = await store.get_task_instance(key)
    assert base is not None
    queued = dataclasses.replace(base, state=TaskState.QUEUED, try_number=1)
    running = dataclasses.replace(queued, state=TaskState.RUNNING, external_id="pid:9")
    other = dataclasses.replace(base, task_id="load", operator="PythonOperator", state=TaskState.SCHEDULED)
    run_running = dataclasses.replace(run, state=RunState.RUNNING, start_date=T0)
    run_failed = dataclasses.replace(run_running, state=RunState.FAILED, end_date=T0)

    await store.commit(
        ChangeSet(
            tasks=[queued, other, running],
            runs=[run_running, run_failed],
            xcoms=[
                XComRecord(run.pk, "extract", -1, "return_value", 1),
                XComRecord(run.pk, "extract", -1, "return_value", 2),
            ],
        )
    )

    assert await store.get_task_instance(key) == running
    assert await store.get_task_instance(TaskKey(run.pk, "load")) == other
    assert await store.get_run(run.dag_id, run.run_id) == run_failed
    assert [x.value for x in await store.list_xcoms(run.pk)] == [2]


@pytest.mark.parametrize("count", [1, SMALL_TASK_BATCH, SMALL_TASK_BATCH + 1, 300])
async def test_task_only_commits_of_any_size_keep_the_last_row_per_key(
    store: PostgresStateStore, count: int
) -> None:
    # small change sets are pipelined fenced one-row UPDATEs, large ones one statement
    run, _ = await store.create_run(
        new_run(), [NewTaskInstance(f"t{i:03d}", "BashOperator", 0) for i in range(count)]
    )
    base = await store.list_task_instances(run.pk)
    queued = [dataclasses.replace(ti, state=TaskState.QUEUED, try_number=1) for ti in base]
    running = [
        dataclasses.replace(ti, state=TaskState.RUNNING, external_id=f"pid:{i}")
        for i, ti in enumerate(queued)
    ]
    await store.commit(ChangeSet(tasks=[*queued, *running]))
    assert await store.list_task_instances(run.pk) == running


async def test_commit_upserts_xcoms_including_json_null(store: PostgresStateStore) -> None:
    run, _ = await store.create_run(new_run(), TASKS)
    await store.commit(ChangeSet(xcoms=[XComRecord(run.pk, "extract", -1, "return_value", {"rows": 1})]))
    await store.commit(
        ChangeSet(
            xcoms=[
                XComRecord(run.pk, "extract", -1, "return_value", {"rows": 2, "names": ["a", "b"]}),
                XComRecord(run.pk, "load", -1, "return_value", None),
                XComRecord(run.pk, "mapped", 1, "custom", "text"),
            ]
        )
    )

    assert await store.list_xcoms(run.pk) == [
        XComRecord(run.pk, "extract", -1, "return_value", {"rows": 2, "names": ["a", "b"]}),
        XComRecord(run.pk, "load", -1, "return_value", None),
        XComRecord(run.pk, "mapped", 1, "custom", "text"),
    ]


async def test_commit_is_all_or_nothing(store: PostgresStateStore) -> None:
    run, _ = await store.create_run(new_run(), TASKS)
    before = await store.get_task_instance(TaskKey(run.pk, "extract"))
    assert before is not None
    changed = dataclasses.replace(before, state=TaskState.QUEUED)
    # PostgreSQL rejects NUL in text: the run update fails on the server after the TI update ran.
    bad_run = dataclasses.replace(run, run_type="bad\x00type")

    with pytest.raises(asyncpg.PostgresError):
        await store.commit(ChangeSet(tasks=[changed], runs=[bad_run]))

    assert await store.get_task_instance(before.key) == before


async def test_commit_of_an_empty_change_set_does_nothing(store: PostgresStateStore) -> None:
    await store.commit(ChangeSet())


async def test_commit_ignores_rows_of_a_deleted_run(store: PostgresStateStore, database_dsn: str) -> None:
    run, _ = await store.create_run(new_run(), TASKS)
    ti = await store.get_task_instance(TaskKey(run.pk, "extract"))
    assert ti is not None
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("DELETE FROM dag_run WHERE pk = $1", run.pk)
    finally:
        await conn.close()

    await store.commit(
        ChangeSet(
            tasks=[dataclasses.replace(ti, state=TaskState.RUNNING)],
            xcoms=[XComRecord(run.pk, "extract", -1, "return_value", 1)],
        )
    )

    assert await store.get_task_instance(ti.key) is None
    assert await store.list_xcoms(run.pk) == []


# --- load_active_runs -------------------------------------------------------------------------


async def test_load_active_runs_returns_unfinished_runs_oldest_first_with_tis_and_xcoms(
    store: PostgresStateStore,
) -> None:
    running, _ = await store.create_run(new_run(run_id="running", queued_at=T0 + timedelta(minutes=2)), TASKS)
    queued, _ = await store.create_run(
        new_run(run_id="queued", queued_at=T0 + timedelta(minutes=1)), TASKS[:1]
    )
    done, _ = await store.create_run(new_run(run_id="done", queued_at=T0), TASKS)
    running = dataclasses.replace(running, state=RunState.RUNNING, start_date=T0)
    await store.commit(
        ChangeSet(
            runs=[running, dataclasses.replace(done, state=RunState.SUCCESS, end_date=T0)],
            xcoms=[
                XComRecord(running.pk, "load", -1, "return_value", [1]),
                XComRecord(running.pk, "extract", -1, "return_value", "e"),
                XComRecord(done.pk, "extract", -1, "return_value", "finished"),
            ],
        )
    )

    active = await store.load_active_runs()

    assert [a.run for a in active] == [queued, running]
    assert [(ti.task_id, ti.map_index) for ti in active[0].task_instances] == [("extract", -1)]
    assert active[1].task_instances == await store.list_task_instances(running.pk)
    assert active[0].xcoms == []
    assert [(x.task_id, x.value) for x in active[1].xcoms] == [("extract", "e"), ("load", [1])]


async def test_load_active_runs_on_an_empty_store(store: PostgresStateStore) -> None:
    assert await store.load_active_runs() == []


# --- list_runs / count_active_runs ------------------------------------------------------------


async def test_list_runs_pages_newest_first_with_total_and_state_filter(store: PostgresStateStore) -> None:
    pks = []
    for i, minute in enumerate([1, 3, 2, 3, 0]):
        run, _ = await store.create_run(new_run(run_id=f"r{i}", queued_at=T0 + timedelta(minutes=minute)), [])
        pks.append(run)
    await store.create_run(new_run(dag_id="other", run_id="r0"), [])
    await store.commit(ChangeSet(runs=[dataclasses.replace(pks[1], state=RunState.SUCCESS)]))

    page1, total = await store.list_runs("etl", limit=2, offset=0)
    page2, _ = await store.list_runs("etl", limit=2, offset=2)
    page3, _ = await store.list_runs("etl", limit=2, offset=4)
    beyond, total_beyond = await store.list_runs("etl", limit=2, offset=10)

    # queued_at desc, ties broken by pk desc: r3 (3, later pk), r1 (3), r2 (2), r0 (1), r4 (0)
    assert [r.run_id for r in page1 + page2 + page3] == ["r3", "r1", "r2", "r0", "r4"]
    assert total == 5 and (beyond, total_beyond) == ([], 5)
    success, n_success = await store.list_runs("etl", 10, 0, states=[RunState.SUCCESS])
    assert [r.run_id for r in success] == ["r1"] and n_success == 1
    queued, n_queued = await store.list_runs("etl", 10, 0, states=[RunState.QUEUED, RunState.RUNNING])
    assert n_queued == 4 and len(queued) == 4
    assert await store.list_runs("nope", 10, 0) == ([], 0)


async def test_missing_rows_read_as_none(store: PostgresStateStore) -> None:
    assert await store.get_run("etl", "missing") is None
    assert await store.get_task_instance(TaskKey(1, "missing")) is None
    assert await store.get_dag("missing") is None
    assert await store.set_dag_paused("missing", True) is None
    assert await store.list_task_instances(12345) == []
    assert await store.list_xcoms(12345) == []


# --- DAG files --------------------------------------------------------------------------------


async def test_sync_dag_file_upserts_deactivates_and_clears_the_import_error(
    store: PostgresStateStore,
) -> None:
    d1 = dag_spec("d1", is_paused_upon_creation=True, schedule="@daily", tags=("a", "b"), max_active_runs=3)
    d2 = dag_spec("d2", description="second", max_active_tasks=4)
    await store.sync_dag_file("/dags/a.py", [d1, d2], T0)

    record = await store.get_dag("d1")
    assert record is not None
    assert (record.fileloc, record.is_paused, record.is_active, record.schedule) == (
        "/dags/a.py",
        True,
        True,
        "@daily",
    )
    assert (record.tags, record.max_active_runs, record.max_active_tasks) == (("a", "b"), 3, 16)
    assert (record.last_parsed_time, record.spec) == (T0, spec_to_dict(d1))
    d2_record = await store.get_dag("d2")
    assert d2_record is not None and (d2_record.is_paused, d2_record.description) == (False, "second")

    await store.set_dag_paused("d1", False)
    await store.record_import_error("/dags/a.py", "SyntaxError: line 3", T0)
    d1_changed = dataclasses.replace(d1, description="changed", tags=())
    await store.sync_dag_file("/dags/a.py", [d1_changed], T0 + timedelta(minutes=1))

    record = await store.get_dag("d1")
    assert record is not None
    assert (record.is_paused, record.is_active, record.description, record.tags) == (
        False,
        True,
        "changed",
        (),
    )
    assert record.last_parsed_time == T0 + timedelta(minutes=1)
    d2_record = await store.get_dag("d2")
    assert d2_record is not None and d2_record.is_active is False
    assert await store.list_import_errors() == []
    assert [d.dag_id for d in (await store.list_dags(10, 0))[0]] == ["d1"]
    assert (await store.list_dags(10, 0))[1] == 1

    await store.sync_dag_file("/dags/a.py", [d2], T0)  # d2 defined again: active again, d1 gone
    assert [(d.dag_id, d.is_active) for d in (await store.list_dags(10, 0, only_active=False))[0]] == [
        ("d1", False),
        ("d2", True),
    ]


async def test_sync_dag_file_leaves_other_files_alone(store: PostgresStateStore) -> None:
    await store.sync_dag_file("/dags/a.py", [dag_spec("a1")], T0)
    await store.sync_dag_file("/dags/b.py", [dag_spec("b1", fileloc="/dags/b.py")], T0)
    await store.record_import_error("/dags/b.py", "boom", T0)

    await store.sync_dag_file("/dags/a.py", [], T0)

    b1 = await store.get_dag("b1")
    a1 = await store.get_dag("a1")
    assert b1 is not None and b1.is_active and a1 is not None and not a1.is_active
    assert [e.filename for e in await store.list_import_errors()] == ["/dags/b.py"]


async def test_import_errors_upsert_keep_their_id_and_list_oldest_first(store: PostgresStateStore) -> None:
    await store.sync_dag_file("/dags/b.py", [dag_spec("b1", fileloc="/dags/b.py")], T0)
    await store.record_import_error("/dags/b.py", "first", T0)
    await store.record_import_error("/dags/a.py", "other", T0)
    [first_b, _] = await store.list_import_errors()
    await store.record_import_error("/dags/b.py", "second", T0 + timedelta(seconds=5))

    errors = await store.list_import_errors()

    assert [(e.filename, e.message, e.timestamp) for e in errors] == [
        ("/dags/b.py", "second", T0 + timedelta(seconds=5)),
        ("/dags/a.py", "other", T0),
    ]
    assert errors[0].import_error_id == first_b.import_error_id, "a new message keeps the error's id"
    b1 = await store.get_dag("b1")
    assert b1 is not None and b1.is_active, "a failed parse keeps the file's DAGs runnable"


async def test_remove_dag_file_deactivates_its_dags_and_drops_its_error(store: PostgresStateStore) -> None:
    await store.sync_dag_file("/dags/a.py", [dag_spec("a1"), dag_spec("a2")], T0)
    await store.record_import_error("/dags/a.py", "boom", T0)

    await store.remove_dag_file("/dags/a.py")

    dags, total = await store.list_dags(10, 0, only_active=False)
    assert [(d.dag_id, d.is_active) for d in dags] == [("a1", False), ("a2", False)] and total == 2
    assert await store.list_dags(10, 0) == ([], 0)
    assert await store.list_import_errors() == []


async def test_list_dags_pages_by_dag_id(store: PostgresStateStore) -> None:
    await store.sync_dag_file("/dags/a.py", [dag_spec(f"dag_{i}") for i in (3, 1, 4, 0, 2)], T0)

    first, total = await store.list_dags(limit=2, offset=0)
    rest, _ = await store.list_dags(limit=10, offset=2)

    assert [d.dag_id for d in first + rest] == ["dag_0", "dag_1", "dag_2", "dag_3", "dag_4"] and total == 5


async def test_set_dag_paused_returns_the_updated_dag(store: PostgresStateStore) -> None:
    await store.sync_dag_file("/dags/a.py", [dag_spec("d1")], T0)

    paused = await store.set_dag_paused("d1", True)

    assert paused is not None and paused.is_paused is True
    assert await store.get_dag("d1") == paused


async def test_a_small_batch_that_fails_midway_writes_nothing_and_the_store_goes_on(
    store: PostgresStateStore,
) -> None:
    run, _ = await store.create_run(new_run(), TASKS)
    first, second, *_ = await store.list_task_instances(run.pk)
    good = dataclasses.replace(first, state=TaskState.QUEUED, try_number=1)
    bad = dataclasses.replace(second, operator=None)  # violates NOT NULL
    with pytest.raises(asyncpg.NotNullViolationError):
        await store.commit(ChangeSet(tasks=[good, bad]))
    assert await store.get_task_instance(first.key) == first
    await store.commit(ChangeSet(tasks=[good]))
    assert await store.get_task_instance(first.key) == good


async def test_paused_dag_ids_names_only_the_paused_ones(store: PostgresStateStore) -> None:
    specs = [DagSpec(dag_id=name, fileloc="/dags/p.py", tasks=()) for name in ("a", "b", "c")]
    await store.sync_dag_file("/dags/p.py", specs, T0)
    await store.set_dag_paused("b", True)
    assert await store.paused_dag_ids(["a", "b", "nope"]) == {"b"}
    assert await store.paused_dag_ids([]) == set()
