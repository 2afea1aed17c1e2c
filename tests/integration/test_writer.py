"""The group-commit writer against a real PostgreSQL: order, merging, follow-ups, and a lost
connection that is retried without losing or reordering anything."""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import asyncpg
import pytest

from orchestrator.core.records import ChangeSet, NewTaskInstance, TaskKey, XComRecord
from orchestrator.core.states import RunState, TaskState
from orchestrator.engine.clock import SystemClock
from orchestrator.engine.events import EventBus
from orchestrator.engine.supervision import Supervisor
from orchestrator.engine.timers import LoopTimers
from orchestrator.engine.writer import GroupCommitWriter
from orchestrator.ports import RunChanged
from storage.postgres import PostgresStateStore
from tests.integration.test_store import new_run


def _writer(store: PostgresStateStore, events: EventBus | None = None) -> GroupCommitWriter:
    return GroupCommitWriter(store, LoopTimers(SystemClock()), events or EventBus(), Supervisor())


pytestmark = pytest.mark.anyio


async def _run_with_tasks(store: PostgresStateStore, count: int) -> tuple[Any, list[Any]]:
    run, _ = await store.create_run(
        new_run(), [NewTaskInstance(f"t{i}", "BashOperator", 0) for i in range(count)]
    )
    return run, await store.list_task_instances(run.pk)


async def test_follow_ups_run_in_order_after_their_rows_are_committed(store: PostgresStateStore) -> None:
    run, tis = await _run_with_tasks(store, 3)
    writer = _writer(store)
    seen: list[str] = []

    def after(task_id: str) -> None:
        seen.append(task_id)

    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        for ti in tis:
            queued = dataclasses.replace(ti, state=TaskState.QUEUED, try_number=1)
            writer.submit(ChangeSet(tasks=[queued]), lambda t=ti.task_id: after(t))
        await writer.flushed()
        group.cancel_scope.cancel()
    assert seen == ["t0", "t1", "t2"]
    assert {ti.state for ti in await store.list_task_instances(run.pk)} == {TaskState.QUEUED}
    assert writer.changes_committed == 3


async def test_a_lost_connection_is_retried_and_nothing_is_lost(
    store: PostgresStateStore, database_dsn: str
) -> None:
    run, tis = await _run_with_tasks(store, 2)
    first, second = tis
    await store.commit(ChangeSet(tasks=[dataclasses.replace(first, state=TaskState.SCHEDULED)]))
    # kill the server side of the store's commit connection, as a restart or a failover would
    admin = await asyncpg.connect(database_dsn)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    assert killed >= 1
    writer = _writer(store)
    done: list[str] = []
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        writer.submit(
            ChangeSet(tasks=[dataclasses.replace(second, state=TaskState.QUEUED, try_number=1)]),
            lambda: done.append("second"),
        )
        with anyio.fail_after(10):
            await writer.flushed()
        group.cancel_scope.cancel()
    assert done == ["second"]
    after = await store.get_task_instance(TaskKey(run.pk, "t1"))
    assert after is not None and after.state == TaskState.QUEUED
    earlier = await store.get_task_instance(TaskKey(run.pk, "t0"))
    assert earlier is not None and earlier.state == TaskState.SCHEDULED


async def test_a_refused_change_set_is_singled_out_and_repaired_and_the_others_commit(
    store: PostgresStateStore,
) -> None:
    run, tis = await _run_with_tasks(store, 3)
    writer = _writer(store)
    repaired: list[ChangeSet] = []

    def repair(changes: ChangeSet, error: Exception) -> ChangeSet:
        repaired.append(changes)
        return ChangeSet(tasks=[dataclasses.replace(t, state=TaskState.FAILED) for t in changes.tasks])

    writer.repair_refused = repair
    done: list[str] = []
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        for ti, value in zip(tis, ["fine", "bad\x00", "fine too"], strict=True):
            finished = dataclasses.replace(ti, state=TaskState.SUCCESS, try_number=1)
            xcom = XComRecord(run.pk, ti.task_id, -1, "return_value", value)
            writer.submit(ChangeSet(tasks=[finished], xcoms=[xcom]), lambda t=ti.task_id: done.append(t))
        with anyio.fail_after(10):
            await writer.flushed()
        group.cancel_scope.cancel()
    assert done == ["t0", "t1", "t2"]  # every follow-up ran, in order
    assert [c.tasks[0].task_id for c in repaired] == ["t1"]
    states = {ti.task_id: ti.state for ti in await store.list_task_instances(run.pk)}
    assert states == {"t0": TaskState.SUCCESS, "t1": TaskState.FAILED, "t2": TaskState.SUCCESS}
    assert {x.task_id for x in await store.list_xcoms(run.pk)} == {"t0", "t2"}


async def test_a_run_settled_behind_a_refused_value_is_never_stored_as_a_success(
    store: PostgresStateStore,
) -> None:
    # the try's refused success and the run's success (settled in memory meanwhile) share a
    # commit: the repair fails the try, and the run's success behind it is stored as a failure
    run, tis = await _run_with_tasks(store, 1)
    events = EventBus()
    subscription = events.subscribe()
    writer = _writer(store, events)
    writer.repair_refused = lambda changes, error: ChangeSet(
        tasks=[dataclasses.replace(t, state=TaskState.FAILED) for t in changes.tasks]
    )
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        finished = dataclasses.replace(tis[0], state=TaskState.SUCCESS, try_number=1)
        writer.submit(
            ChangeSet(tasks=[finished], xcoms=[XComRecord(run.pk, "t0", -1, "return_value", "x\x00")])
        )
        writer.submit(ChangeSet(runs=[dataclasses.replace(run, state=RunState.SUCCESS)]))
        writer.submit(ChangeSet(runs=[dataclasses.replace(run, state=RunState.SUCCESS)]))  # a later commit
        with anyio.fail_after(10):
            await writer.flushed()
        group.cancel_scope.cancel()
    subscription.close()
    published = [event.run.state async for event in subscription if isinstance(event, RunChanged)]
    assert published and set(published) == {RunState.FAILED}
    stored = await store.get_run(run.dag_id, run.run_id)
    assert stored is not None and stored.state == RunState.FAILED


async def test_a_refused_change_set_that_cannot_be_repaired_is_fatal_and_says_which(
    store: PostgresStateStore,
) -> None:
    run, tis = await _run_with_tasks(store, 2)
    supervisor = Supervisor()
    writer = GroupCommitWriter(store, LoopTimers(SystemClock()), EventBus(), supervisor)
    done: list[str] = []
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        bad = XComRecord(run.pk, "t0", -1, "return_value", "bad\x00")
        writer.submit(ChangeSet(xcoms=[bad]), lambda: done.append("bad"))
        good = dataclasses.replace(tis[1], state=TaskState.QUEUED, try_number=1)
        writer.submit(ChangeSet(tasks=[good]), lambda: done.append("good"))
        with anyio.fail_after(10):
            await writer.flushed()
        group.cancel_scope.cancel()
    assert done == ["good"]  # nothing follows the refused change set; the next one commits
    assert supervisor.fatal_message is not None
    assert "the database refused a change set" in supervisor.fatal_message
    assert "xcom t0[-1] 'return_value'" in supervisor.fatal_message
    after = await store.get_task_instance(TaskKey(run.pk, "t1"))
    assert after is not None and after.state == TaskState.QUEUED
