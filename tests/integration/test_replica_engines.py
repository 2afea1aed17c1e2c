"""Two engines on one database, as two replicas: who drives a run, takeover, fencing, and a
PostgreSQL restart mid-run. Real engines, real local executors, a real PostgreSQL.

The harness registers no daemon rows: a run whose owner has no live daemon row is one whose
lease ran out, so `take_over(take_expired=True)` on the other engine is what a survivor's
takeover pass does once a SIGKILLed replica's lease has run out.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import anyio
import asyncpg
import pytest

from orchestrator.core.records import NewRun
from orchestrator.core.states import RunState, TaskState
from storage.embedded import EmbeddedPostgres
from storage.migrate import migrate_dsn
from storage.postgres import PostgresStateStore
from tests.integration.engine_harness import (
    gate_wait,
    running_engine,
    task_instances,
    wait_for,
    wait_run,
    wait_ti,
    write_dag,
)

pytestmark = pytest.mark.anyio

CHAIN = """
with DAG("chain", default_args={"cwd": W, "retries": 1, "retry_delay": 0}):
    t1 = Bash("t1", "echo t1 >> t1_ran")
    t2 = Bash("t2", "echo t2-{{ ti.try_number }} >> t2_ran; if [ {{ ti.try_number }} -eq 1 ]; then GATE; fi")
    t3 = Bash("t3", "echo t3 >> t3_ran")
    t1 >> t2 >> t3
"""


def new_run(dag_id: str, run_id: str) -> NewRun:
    now = datetime.now(UTC)
    return NewRun(dag_id, run_id, "manual", {}, now, now, now, now)


async def owner_of(dsn: str, run_pk: int) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        owner: str | None = await conn.fetchval("SELECT owner FROM dag_run WHERE pk = $1", run_pk)
        return owner
    finally:
        await conn.close()


async def test_a_run_is_driven_by_the_replica_that_admitted_it_only(
    database_dsn: str, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(dags, "chain", CHAIN.replace("GATE", "true"), work)
    store_a = await PostgresStateStore.connect(database_dsn)
    store_b = await PostgresStateStore.connect(database_dsn)
    try:
        async with (
            running_engine(store_a, logs / "a", [dag_file], daemon_id="a") as a,
            running_engine(store_b, logs / "b", [dag_file], daemon_id="b") as b,
        ):
            record, _ = await a.trigger("chain")
            run = await wait_run(store_b, "chain", "r1")
            assert not b.engine.progress.runs
    finally:
        await store_a.close()
        await store_b.close()

    assert run.state == RunState.SUCCESS
    assert await owner_of(database_dsn, record.pk) == "a"
    assert [(work / f"t{i}_ran").read_text().split() for i in (1, 3)] == [["t1"], ["t3"]]


async def test_a_survivor_takes_over_a_dead_replicas_run_and_reruns_only_what_had_not_succeeded(
    database_dsn: str, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(dags, "chain", CHAIN.replace("GATE", gate_wait(work / "never")), work)
    store_a = await PostgresStateStore.connect(database_dsn)
    store_b = await PostgresStateStore.connect(database_dsn)
    try:
        async with running_engine(store_b, logs / "b", [dag_file], daemon_id="b") as survivor:
            async with running_engine(store_a, logs / "a", [dag_file], daemon_id="a") as victim:
                record, _ = await victim.trigger("chain")
                lost = await wait_ti(store_a, record.pk, "t2", [TaskState.RUNNING])
                victim.crash()  # SIGKILL: nothing it decides from now on is committed

            assert await survivor.engine.take_over(take_expired=True) == 1
            run = await wait_run(store_b, "chain", "r1")
            tis = await task_instances(store_b, record.pk)
            note = survivor.log_text("chain", "r1", "t2", 1)
    finally:
        await store_a.close()
        await store_b.close()

    assert run.state == RunState.SUCCESS
    assert await owner_of(database_dsn, record.pk) == "b"
    assert {task_id: (ti.state, ti.try_number) for task_id, ti in tis.items()} == {
        "t1": (TaskState.SUCCESS, 1),
        "t2": (TaskState.SUCCESS, 2),
        "t3": (TaskState.SUCCESS, 1),
    }
    assert (work / "t1_ran").read_text().split() == ["t1"]  # succeeded on the victim: never again
    assert (work / "t2_ran").read_text().split() == ["t2-1", "t2-2"]
    assert f"try 1 was running ({lost.external_id} on " in note
    assert tis["t2"].daemon_id == "b"


async def test_a_replica_whose_run_was_taken_lets_it_go_when_its_commit_is_refused(
    database_dsn: str, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(dags, "chain", CHAIN.replace("GATE", gate_wait(work / "gate")), work)
    store_a = await PostgresStateStore.connect(database_dsn)
    store_b = await PostgresStateStore.connect(database_dsn)
    try:
        async with (
            running_engine(store_a, logs / "a", [dag_file], daemon_id="a") as old,
            running_engine(store_b, logs / "b", [dag_file], daemon_id="b") as new,
        ):
            record, _ = await old.trigger("chain")
            await wait_ti(store_a, record.pk, "t2", [TaskState.RUNNING])
            # b takes the run over while a still drives it (a's lease ran out, say): b's resume
            # stops what is left of a's try on this host, and a's report of it is refused
            assert await new.engine.take_over(take_expired=True) == 1

            async def let_go() -> bool:
                return record.pk not in old.engine.progress.runs

            await wait_for(let_go, 10, "the old owner to let the run go")
            (work / "gate").touch()
            run = await wait_run(store_b, "chain", "r1")
            tis = await task_instances(store_b, record.pk)
    finally:
        await store_a.close()
        await store_b.close()

    assert run.state == RunState.SUCCESS
    assert {task_id: ti.daemon_id for task_id, ti in tis.items()} == {"t1": "a", "t2": "b", "t3": "b"}
    assert tis["t2"].try_number == 2
    assert (work / "t1_ran").read_text().split() == ["t1"]


async def test_a_postgresql_restart_mid_run_is_carried_through(work: Path, dags: Path, logs: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="orch-restart-pg-", dir="/tmp"))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "pg", durable=False)
    try:
        dsn = await anyio.to_thread.run_sync(server.ensure_started)
        await migrate_dsn(dsn)
        dag_file = write_dag(dags, "chain", CHAIN.replace("GATE", gate_wait(work / "gate")), work)
        store = await PostgresStateStore.connect(dsn)
        try:
            async with running_engine(store, logs, [dag_file]) as engine:
                record, _ = await engine.trigger("chain")
                await wait_ti(store, record.pk, "t2", [TaskState.RUNNING])
                await anyio.to_thread.run_sync(server.stop)
                await anyio.to_thread.run_sync(server.ensure_started)
                (work / "gate").touch()  # t2 ends while the engine's connections are new
                run = await wait_run(store, "chain", "r1", timeout=30)
                tis = await task_instances(store, record.pk)
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(base, ignore_errors=True)

    assert run.state == RunState.SUCCESS
    assert {task_id: (ti.state, ti.try_number) for task_id, ti in tis.items()} == {
        "t1": (TaskState.SUCCESS, 1),
        "t2": (TaskState.SUCCESS, 1),
        "t3": (TaskState.SUCCESS, 1),
    }
    assert [(work / f"t{i}_ran").read_text().split() for i in (1, 2, 3)] == [["t1"], ["t2-1"], ["t3"]]


async def test_a_run_admitted_while_a_takeover_pass_resumed_it_is_driven_once(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    # the window: the admission's commit is done on the server, its answer not yet back, and a
    # takeover pass reads the run as this replica's own that it does not hold
    dag_file = write_dag(dags, "chain", CHAIN.replace("GATE", "true"), work)
    async with running_engine(store, logs, [dag_file]) as engine:
        loaded = engine.engine.loaded_dag("chain")
        created, admitted = await store.create_and_admit_runs(
            [(new_run("chain", "r1"), engine.engine.new_task_instances(loaded), loaded.spec.source_hash)], 64
        )
        assert [item.run.pk for item in admitted] == [created[0][0].pk]
        assert await engine.engine.take_over(take_expired=True) == 1  # resumed by the pass first
        engine.engine.admission.start_admitted(admitted)  # then the admission's answer arrives
        run = await wait_run(store, "chain", "r1")
        tis = await task_instances(store, created[0][0].pk)

    assert run.state == RunState.SUCCESS
    assert {task_id: ti.try_number for task_id, ti in tis.items()} == {"t1": 1, "t2": 1, "t3": 1}
    assert [(work / f"t{i}_ran").read_text().split() for i in (1, 3)] == [["t1"], ["t3"]]


async def test_a_run_settled_in_memory_but_not_yet_committed_is_not_taken_for_unheld(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(dags, "chain", CHAIN.replace("GATE", "true"), work)
    outcome_held = asyncio.Event()
    release = asyncio.Event()
    commit = store.commit

    async def slow_outcome(changes):  # type: ignore[no-untyped-def]
        if any(run.state == RunState.SUCCESS for run in changes.runs):
            outcome_held.set()
            await release.wait()  # the run's outcome is on its way to the database
        return await commit(changes)

    store.commit = slow_outcome  # type: ignore[method-assign]
    async with running_engine(store, logs, [dag_file]) as engine:
        record, _ = await engine.trigger("chain")
        try:
            await asyncio.wait_for(outcome_held.wait(), 15)
            assert record.pk not in engine.engine.progress.runs  # settled in memory
            taken = await engine.engine.take_over(take_expired=True)
        finally:
            release.set()  # else the drain waits for the held commit forever
        assert taken == 0
        run = await wait_run(store, "chain", "r1")
        tis = await task_instances(store, record.pk)

    assert run.state == RunState.SUCCESS
    assert {task_id: ti.try_number for task_id, ti in tis.items()} == {"t1": 1, "t2": 1, "t3": 1}
    assert (work / "t3_ran").read_text().split() == ["t3"]
