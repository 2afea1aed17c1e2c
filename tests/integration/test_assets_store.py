"""The asset part of PostgresStateStore on a real PostgreSQL: outlet events in the transaction of
the success, consumer queues, asset-triggered runs created exactly once (also by two stores
racing on one queue), external events with idempotency keys, and the listings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from orchestrator.core.model import DagSpec, TaskSpec
from orchestrator.core.records import (
    ChangeSet,
    NewAssetEvent,
    NewRun,
    NewTaskInstance,
    XComRecord,
    evolve_ti,
)
from orchestrator.core.states import TaskState
from orchestrator.ports import QueuedAsset
from storage.postgres import PostgresStateStore
from storage.sql import QUERIES

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TASK = [NewTaskInstance("t", "BashOperator", max_tries=0)]


def spec(dag_id: str, condition: dict[str, Any] | None = None, outlets: tuple[str, ...] = ()) -> DagSpec:
    task = TaskSpec("t", "bash", args={"bash_command": "true"}, outlets=outlets)
    return DagSpec(dag_id, f"/dags/{dag_id}.py", tasks=(task,), asset_condition=condition)


def asset_run(dag_id: str, run_id: str, at: datetime = T0) -> NewRun:
    return NewRun(dag_id, run_id, "asset_triggered", {}, at, at, at, at, external_trigger=False)


async def producer_success(
    store: PostgresStateStore, uris: tuple[str, ...], **extra_changes: Any
) -> ChangeSet:
    """A running producer task instance, and the change set of its success with its outlets."""
    run, _ = await store.create_run(NewRun("producer", "r1", "manual", {}, T0, T0, T0, T0), TASK)
    (ti,) = await store.list_task_instances(run.pk)
    done = evolve_ti(ti, state=TaskState.SUCCESS, try_number=1, end_date=T0)
    events = [NewAssetEvent(uri, T0, {}, "producer", "t", "r1", -1) for uri in uris]
    return ChangeSet(tasks=[done], asset_events=events, **extra_changes)


async def count(store: PostgresStateStore, table: str) -> int:
    async with store._pool.acquire() as conn:  # the test reads tables directly
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


async def test_outlet_events_commit_with_the_success_and_queue_for_consumers(
    store: PostgresStateStore,
) -> None:
    await store.sync_dag_file(
        "/dags/all.py",
        [
            spec("producer", outlets=("s3://a",)),
            spec("c1", {"asset": "s3://a"}),
            spec("c2", {"any": [{"asset": "s3://a"}, {"asset": "s3://b"}]}),
            spec("other", {"asset": "s3://b"}),
        ],
        T0,
    )
    changes = await producer_success(store, ("s3://a", "s3://new"))
    await store.commit(changes)
    (ti,) = await store.list_task_instances(changes.tasks[0].run_pk)
    assert ti.state == TaskState.SUCCESS
    events, total = await store.list_asset_events(10, 0)
    assert total == 2 and [e.uri for e in events] == ["s3://a", "s3://new"]  # s3://new created on first use
    assert (events[0].source_dag_id, events[0].source_task_id, events[0].source_run_id) == (
        "producer",
        "t",
        "r1",
    )
    queues = await store.asset_queues(["c1", "c2", "other", "producer"])
    assert set(queues) == {"c1", "c2"}
    assert [(q.uri, q.events) for q in queues["c1"]] == [("s3://a", 1)]
    assets, _ = await store.list_assets(10, 0)
    by_uri = {asset.uri: asset for asset in assets}
    assert by_uri["s3://a"].consuming_dags == ("c1", "c2")
    assert by_uri["s3://a"].producing_tasks == (("producer", "t"),)
    assert by_uri["s3://a"].updated_at == T0


async def test_a_refused_commit_records_neither_the_success_nor_its_events(store: PostgresStateStore) -> None:
    await store.sync_dag_file("/dags/c.py", [spec("c1", {"asset": "s3://a"})], T0)
    changes = await producer_success(store, ("s3://a",))
    ti = changes.tasks[0]
    # a value PostgreSQL refuses (jsonb stores no \u0000) in the same change set
    changes.xcoms.append(XComRecord(ti.run_pk, "t", -1, "return_value", "nul\x00byte"))
    with pytest.raises(asyncpg.DataError):
        await store.commit(changes)
    (stored,) = await store.list_task_instances(ti.run_pk)
    assert stored.state == TaskState.NONE
    assert await count(store, "asset_event") == 0
    assert await count(store, "asset_dag_run_queue") == 0
    # the connection stays usable: the same success without the value commits, events and all
    changes.xcoms.clear()
    await store.commit(changes)
    assert await count(store, "asset_event") == 1


async def test_change_sets_without_asset_events_write_no_asset_rows(store: PostgresStateStore) -> None:
    changes = await producer_success(store, ())
    await store.commit(changes)
    assert await count(store, "asset") == 0


async def test_an_asset_triggered_run_consumes_exactly_what_was_read(store: PostgresStateStore) -> None:
    await store.sync_dag_file("/dags/c.py", [spec("c1", {"asset": "s3://a"})], T0)
    first, _, queued_for = await store.record_asset_event(NewAssetEvent("s3://a", T0, {"n": 1}))
    assert queued_for == ("c1",)
    await store.record_asset_event(NewAssetEvent("s3://a", T0 + timedelta(minutes=1), {"n": 2}))
    read = (await store.asset_queues(["c1"]))["c1"]
    assert [(q.uri, q.events) for q in read] == [("s3://a", 2)]
    # another event arrives after the read: the delete finds more rows than were read
    await store.record_asset_event(NewAssetEvent("s3://a", T0 + timedelta(minutes=2), {"n": 3}))
    stale = [QueuedAsset("s3://a", 2, read[0].last_event_id + 1, read[0].first_at, read[0].last_at)]
    assert await store.create_asset_triggered_run(asset_run("c1", "a1"), TASK, None, stale) is None
    assert await store.get_run("c1", "a1") is None
    assert (await store.asset_queues(["c1"]))["c1"][0].events == 3  # nothing was consumed
    again = (await store.asset_queues(["c1"]))["c1"]
    created = await store.create_asset_triggered_run(asset_run("c1", "a2"), TASK, None, again)
    assert created is not None
    run, events = created
    assert run.run_type == "asset_triggered" and run.conf == {}
    assert [e.extra["n"] for e in events] == [1, 2, 3] and events[0].id == first.id
    assert [ti.task_id for ti in await store.list_task_instances(run.pk)] == ["t"]
    assert await store.asset_queues(["c1"]) == {}
    assert (await store.triggering_asset_events([run.pk]))[run.pk] == events
    assert list(await store.triggering_asset_events()) == [run.pk]  # unfinished: recovery loads it
    listed, _ = await store.list_asset_events(10, 0, uri="s3://a", newest_first=True)
    assert [e.extra["n"] for e in listed] == [3, 2, 1]
    assert all(e.created_dagruns == (("c1", "a2"),) for e in listed)


async def test_two_stores_racing_on_one_queue_create_one_run(
    database_dsn: str, store: PostgresStateStore
) -> None:
    await store.sync_dag_file(
        "/dags/c.py", [spec("c1", {"all": [{"asset": "s3://a"}, {"asset": "s3://b"}]})], T0
    )
    await store.record_asset_event(NewAssetEvent("s3://a", T0))
    await store.record_asset_event(NewAssetEvent("s3://b", T0))
    other = await PostgresStateStore.connect(database_dsn)
    try:
        for attempt in range(20):  # many rounds: the two transactions interleave differently
            read_one = (await store.asset_queues(["c1"]))["c1"]
            read_two = (await other.asset_queues(["c1"]))["c1"]
            results = await asyncio.gather(
                store.create_asset_triggered_run(asset_run("c1", f"one{attempt}"), TASK, None, read_one),
                other.create_asset_triggered_run(asset_run("c1", f"two{attempt}"), TASK, None, read_two),
            )
            assert sum(result is not None for result in results) == 1
            await store.record_asset_event(NewAssetEvent("s3://a", T0))
            await store.record_asset_event(NewAssetEvent("s3://b", T0))
    finally:
        await other.close()
    assert await count(store, "dag_run") == 20
    assert await count(store, "dag_run_asset_event") == 40  # every event linked to exactly one run


async def test_a_paused_consumer_keeps_its_queue(store: PostgresStateStore) -> None:
    await store.sync_dag_file("/dags/c.py", [spec("c1", {"asset": "s3://a"})], T0, paused_on_creation=True)
    await store.record_asset_event(NewAssetEvent("s3://a", T0))
    assert await store.asset_queues(["c1"]) == {}
    await store.set_dag_paused("c1", False)
    assert [q.events for q in (await store.asset_queues(["c1"]))["c1"]] == [1]


async def test_external_events_are_exactly_once_per_idempotency_key(store: PostgresStateStore) -> None:
    first, created, _ = await store.record_asset_event(NewAssetEvent("s3://a", T0, {"k": 1}), "delivery-1")
    again, created_again, queued = await store.record_asset_event(
        NewAssetEvent("s3://a", T0, {"k": 2}), "delivery-1"
    )
    assert created and not created_again and queued == ()
    assert again == first and again.extra == {"k": 1}
    assert await count(store, "asset_event") == 1


async def test_stale_queue_rows_of_a_changed_condition_are_dropped(store: PostgresStateStore) -> None:
    await store.sync_dag_file(
        "/dags/c.py", [spec("c1", {"any": [{"asset": "s3://a"}, {"asset": "s3://b"}]})], T0
    )
    await store.record_asset_event(NewAssetEvent("s3://a", T0))
    await store.record_asset_event(NewAssetEvent("s3://b", T0))
    assert await store.drop_stale_asset_queue("c1", ["s3://b"]) == 1
    assert [q.uri for q in (await store.asset_queues(["c1"]))["c1"]] == ["s3://b"]


async def test_list_assets_filters_by_pattern(store: PostgresStateStore) -> None:
    for uri in ("s3://bucket/a_b", "s3://bucket/axb", "file:///tmp/x"):
        await store.record_asset_event(NewAssetEvent(uri, T0))
    assets, total = await store.list_assets(10, 0, "%a\\_b%")
    assert total == 1 and [a.uri for a in assets] == ["s3://bucket/a_b"]
    page, total = await store.list_assets(1, 1)
    assert total == 3 and [a.uri for a in page] == ["s3://bucket/a_b"]


async def test_the_consumers_of_an_event_are_found_on_the_condition_index(store: PostgresStateStore) -> None:
    async with store._pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO dag (dag_id, fileloc, spec)
            SELECT 'dag_' || n, '/dags/many.py',
                   CASE WHEN n % 100 = 0
                        THEN jsonb_build_object('asset_condition', jsonb_build_object('asset', 's3://a' || n))
                        ELSE '{"asset_condition": null, "tasks": []}'::jsonb END
            FROM generate_series(1, 5000) AS n
            """
        )
        await conn.execute("ANALYZE dag")
        await conn.execute(QUERIES["upsert_assets"], ["s3://a100"])
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + QUERIES["insert_asset_events"],
            ["s3://a100"],
            ["{}"],
            [T0],
            [None],
            [None],
            [None],
            [-1],
        )
    assert "dag_asset_condition_uris_idx" in str(plan), plan
