"""Run ownership between replicas, against a real PostgreSQL: claims, leases, fencing, NOTIFY.

Each replica is a store of its own (its own pool and commit connection) with its own owner,
as several daemons on one database are. Leases use the database's clock; a lease is ended
with `expire_daemon` (what a survivor sees once a dead replica's lease ran out) rather than
by waiting for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import pytest

from orchestrator.core.records import ChangeSet, NewRun, NewTaskInstance
from orchestrator.core.states import RunState, TaskState
from storage.postgres import PostgresStateStore

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = 60.0


def new_run(run_id: str, dag_id: str = "etl") -> NewRun:
    return NewRun(
        dag_id=dag_id,
        run_id=run_id,
        run_type="manual",
        conf={},
        logical_date=T0,
        data_interval_start=T0,
        data_interval_end=T0,
        queued_at=T0,
    )


@pytest.fixture
async def replicas(database_dsn: str) -> AsyncIterator[Callable[[str], asyncpg.Pool]]:
    """`replica(name)`: a store owned by `name`, registered alive with a long lease."""
    opened: list[PostgresStateStore] = []

    async def replica(name: str) -> PostgresStateStore:
        store = await PostgresStateStore.connect(database_dsn)
        store.set_owner(name)
        await store.register_daemon(name, "host", 1000 + len(opened), T0, version="test", lease_seconds=LEASE)
        opened.append(store)
        return store

    try:
        yield replica  # type: ignore[misc]
    finally:
        for store in opened:
            await store.close()


async def add_dag(conn: asyncpg.Connection, dag_id: str = "etl", max_active_runs: int = 100) -> None:
    await conn.execute(
        "INSERT INTO dag (dag_id, fileloc, max_active_runs, spec) VALUES ($1, 'f.py', $2, '{}')",
        dag_id,
        max_active_runs,
    )


async def owners(conn: asyncpg.Connection) -> dict[str | None, int]:
    rows = await conn.fetch("SELECT owner, count(*) FROM dag_run WHERE state = 'running' GROUP BY owner")
    return {row[0]: row[1] for row in rows}


async def create_running_runs(
    store: PostgresStateStore, conn: asyncpg.Connection, count: int, owner: str
) -> None:
    for i in range(count):
        await store.create_run(new_run(f"{owner}-{i}"), [NewTaskInstance("t", "BashOperator", 0)])
    await conn.execute(
        "UPDATE dag_run SET state = 'running', owner = $1 WHERE owner IS NULL AND state = 'queued'", owner
    )


async def claim_all(store: PostgresStateStore, held: list[int] | None = None) -> int:
    """Claim batch after batch until nothing more comes back, as a takeover pass does (`held`:
    the runs the replica drives already)."""
    total = 0
    held = list(held or [])
    while True:
        claimed = await store.claim_orphaned_runs(100, held, take_expired=True)
        if not claimed:
            return total
        held += [item.run.pk for item in claimed]
        total += len(claimed)


async def test_survivors_share_a_dead_replicas_runs_fairly(replicas, database_dsn: str) -> None:
    a, b, c = await replicas("a"), await replicas("b"), await replicas("c")
    dead = await replicas("dead")
    conn = await asyncpg.connect(database_dsn)
    try:
        await add_dag(conn)
        await create_running_runs(dead, conn, 30, "dead")
        await dead.expire_daemon("dead")

        counts = await asyncio.gather(claim_all(a), claim_all(b), claim_all(c))

        assert sorted(counts) == [10, 10, 10], counts
        assert await owners(conn) == {"a": 10, "b": 10, "c": 10}
    finally:
        await conn.close()


async def test_a_replica_that_owns_more_claims_less(replicas, database_dsn: str) -> None:
    busy, idle = await replicas("busy"), await replicas("idle")
    dead = await replicas("dead")
    conn = await asyncpg.connect(database_dsn)
    try:
        await add_dag(conn)
        await create_running_runs(busy, conn, 10, "busy")
        await create_running_runs(dead, conn, 20, "dead")
        await dead.expire_daemon("dead")

        own = [row[0] for row in await conn.fetch("SELECT pk FROM dag_run WHERE owner = 'busy'")]
        assert await claim_all(busy, held=own) == 5  # its share is 30 / 2 = 15, and it owns 10
        assert await claim_all(idle) == 15
        assert await owners(conn) == {"busy": 15, "idle": 15}
    finally:
        await conn.close()


async def test_runs_of_a_live_replica_are_not_claimed_until_its_lease_runs_out(
    replicas, database_dsn: str
) -> None:
    survivor = await replicas("survivor")
    victim = await replicas("victim")
    conn = await asyncpg.connect(database_dsn)
    try:
        await add_dag(conn)
        await create_running_runs(victim, conn, 3, "victim")
        assert await survivor.claim_orphaned_runs(100, take_expired=True) == []

        await victim.register_daemon("victim", "host", 1, T0, lease_seconds=0.2)  # a short lease, not renewed

        async def lease_ran_out() -> bool:
            return not {d.daemon_id: d for d in await survivor.list_daemons()}["victim"].alive

        await wait_until(lease_ran_out, "the victim's lease to run out")
        # a replica just back from an outage does not take expired leases yet
        assert await survivor.claim_orphaned_runs(100, take_expired=False) == []
        claimed = await survivor.claim_orphaned_runs(100, take_expired=True)

        assert len(claimed) == 3
        assert all(item.run.state == RunState.RUNNING and item.task_instances for item in claimed)
        assert await owners(conn) == {"survivor": 3}
        listed = {d.daemon_id: d for d in await survivor.list_daemons()}
        assert listed["survivor"].owned_runs == 3 and listed["survivor"].alive
        assert listed["victim"].owned_runs == 0 and not listed["victim"].alive
    finally:
        await conn.close()


async def test_a_commit_for_a_run_another_replica_took_is_refused(replicas, database_dsn: str) -> None:
    old, new = await replicas("old"), await replicas("new")
    conn = await asyncpg.connect(database_dsn)
    try:
        await add_dag(conn)
        taken_run, _ = await old.create_run(new_run("a"), [NewTaskInstance("t", "BashOperator", 0)])
        kept_run, _ = await old.create_run(new_run("b"), [NewTaskInstance("t", "BashOperator", 0)])
        assert len(await old.admit_queued_runs("etl", 10)) == 2
        await old.expire_daemon("old")
        assert [item.run.pk for item in await new.claim_orphaned_runs(1, take_expired=True)] == [taken_run.pk]

        taken_ti = (await old.list_task_instances(taken_run.pk))[0]
        kept_ti = (await old.list_task_instances(kept_run.pk))[0]
        refused = await old.commit(
            ChangeSet(
                tasks=[
                    dataclasses.replace(taken_ti, state=TaskState.QUEUED, try_number=1),
                    dataclasses.replace(kept_ti, state=TaskState.QUEUED, try_number=1),
                ],
                runs=[dataclasses.replace(taken_run, state=RunState.FAILED)],
            )
        )

        assert refused == {taken_run.pk}
        assert (await new.list_task_instances(taken_run.pk))[0].state == TaskState.NONE
        # task rows alone take the pipelined path: fenced the same way
        refused = await old.commit(
            ChangeSet(
                tasks=[
                    dataclasses.replace(taken_ti, state=TaskState.RUNNING, try_number=1),
                    dataclasses.replace(kept_ti, state=TaskState.RUNNING, try_number=1),
                ]
            )
        )
        assert refused == {taken_run.pk}
        assert (await new.list_task_instances(taken_run.pk))[0].state == TaskState.NONE
        assert (await new.list_task_instances(kept_run.pk))[0].state == TaskState.RUNNING
        kept_ti = (await new.list_task_instances(kept_run.pk))[0]
        assert (await new.get_run("etl", "a")).state == RunState.RUNNING  # type: ignore[union-attr]
        assert kept_ti.state == TaskState.RUNNING  # its own: written
    finally:
        await conn.close()


async def test_admission_counts_max_active_runs_over_every_replica(replicas, database_dsn: str) -> None:
    a, b = await replicas("a"), await replicas("b")
    conn = await asyncpg.connect(database_dsn)
    try:
        await add_dag(conn, max_active_runs=3)
        for i in range(8):
            await a.create_run(new_run(f"r{i}"), [NewTaskInstance("t", "BashOperator", 0)])

        first, second = await asyncio.gather(a.admit_queued_runs("etl", 64), b.admit_queued_runs("etl", 64))

        assert len(first) + len(second) == 3
        assert sum((await owners(conn)).values()) == 3
        await conn.execute("UPDATE dag SET is_paused = true WHERE dag_id = 'etl'")
        await conn.execute("UPDATE dag_run SET state = 'success' WHERE state = 'running'")
        assert await b.admit_queued_runs("etl", 64) == []  # paused: nothing starts
    finally:
        await conn.close()


async def test_a_waiting_run_notifies_every_replica_and_a_release_wakes_takeovers(
    replicas, database_dsn: str
) -> None:
    a, b = await replicas("a"), await replicas("b")
    waiting: asyncio.Queue[str] = asyncio.Queue()
    released: asyncio.Queue[str] = asyncio.Queue()
    lost: list[bool] = []
    listener = await b.listen(
        {"orchestrator_runs": waiting.put_nowait, "orchestrator_released": released.put_nowait},
        lambda: lost.append(True),
    )
    conn = await asyncpg.connect(database_dsn)
    try:
        await add_dag(conn)
        await a.create_run(new_run("r1"), [NewTaskInstance("t", "BashOperator", 0)])
        assert await asyncio.wait_for(waiting.get(), 10) == "etl"

        assert len(await a.admit_queued_runs("etl", 10)) == 1
        assert await a.retire_daemon("a") == 1  # a replica leaving hands its runs over
        assert await asyncio.wait_for(released.get(), 10) == ""
        assert [d.daemon_id for d in await b.list_daemons()] == ["b"]
        assert len(await b.claim_orphaned_runs(10, take_expired=False)) == 1
        assert not lost
    finally:
        await listener.close()
        await conn.close()


async def test_claiming_a_run_for_an_operation_names_its_live_owner(replicas, database_dsn: str) -> None:
    a, b = await replicas("a"), await replicas("b")
    await a.set_daemon_api_url("a", "http://127.0.0.1:1234")
    conn = await asyncpg.connect(database_dsn)
    try:
        await add_dag(conn)
        run, _ = await a.create_run(new_run("r1"), [NewTaskInstance("t", "BashOperator", 0)])
        assert await b.claim_run(run.pk) is None  # waiting: anyone may take it for an operation
        await conn.execute("UPDATE dag_run SET owner = 'a', state = 'running' WHERE pk = $1", run.pk)

        owner = await b.claim_run(run.pk)

        assert owner is not None and (owner.daemon_id, owner.api_url) == ("a", "http://127.0.0.1:1234")
        await a.expire_daemon("a")
        assert await b.claim_run(run.pk) is None  # its owner is gone
        assert await b.owned_runs([run.pk]) == {run.pk}
        assert await a.owned_runs([run.pk]) == set()
    finally:
        await conn.close()


async def wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():  # type: ignore[misc]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # pacing between checks of a condition, not synchronisation
