"""Triggers on several replicas: two stores (two connection pools), two engines and two of each
trigger on one database, acting on the same cron tick, webhook delivery, asset event and backfill
at the same moment. Each test asserts on the rows the database holds (runs, bookkeeping, queue
rows, deliveries): exactly one of each, whichever replica got there first.

Each run is started by the engine whose trigger created it (the other one's creation found it
existing), so the two engines never run the same run; time is the fakes' (tests/fakes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.config import WebhookConfig
from orchestrator.core.records import NewRun, RunRecord
from orchestrator.core.states import FINISHED_RUN_STATES
from orchestrator.engine.clock import SystemClock
from orchestrator.engine.timers import LoopTimers
from orchestrator.triggers.assets import AssetTrigger
from orchestrator.triggers.backfill import BackfillConflict, BackfillRequest, Backfills, backfill_run_id
from orchestrator.triggers.scheduler import Scheduler, scheduled_run_id
from orchestrator.triggers.webhooks import DeliveryLog, WebhookReceiver, build_webhooks
from storage.postgres import PostgresStateStore
from tests.fakes import FakeClock, FakeTimers
from tests.integration.engine_harness import EngineHarness, gate_wait, running_engine, wait_for, write_dag

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
ROUNDS = 20


@dataclass
class Replica:
    """One replica's parts on its own store (its own pool)."""

    store: PostgresStateStore
    harness: EngineHarness
    clock: FakeClock
    timers: FakeTimers
    scheduler: Scheduler
    backfills: Backfills


@pytest.fixture
async def other_store(database_dsn: str) -> AsyncIterator[PostgresStateStore]:
    """A second store on the test's database: a second replica's connection pool."""
    connected = await PostgresStateStore.connect(database_dsn)
    try:
        yield connected
    finally:
        await connected.close()


@asynccontextmanager
async def replicas(
    stores: Sequence[PostgresStateStore], tmp_path: Path, files: list[Path], clocks: Sequence[FakeClock]
) -> AsyncIterator[list[Replica]]:
    """A running engine per store (all recovered before any trigger starts), each with its own
    scheduler and backfills; the triggers are started by the test, at the same moment."""
    async with AsyncExitStack() as stack:
        made: list[Replica] = []
        for index, (store, clock) in enumerate(zip(stores, clocks, strict=True)):
            timers = FakeTimers(clock)
            logs = tmp_path / f"replica{index}" / "logs"
            harness = await stack.enter_async_context(
                running_engine(store, logs, files, clock=clock, timers=timers)
            )
            scheduler = Scheduler(harness.engine, store, clock, timers, harness.engine.supervisor)
            harness.registry.add_listener(scheduler.refresh)
            stack.callback(scheduler.stop)
            backfills = Backfills(harness.engine, store, clock, harness.engine.supervisor)
            stack.callback(backfills.stop)
            made.append(Replica(store, harness, clock, timers, scheduler, backfills))
        yield made
        for replica in made:
            assert replica.harness.engine.supervisor.fatal_message is None


def advance_all(group: Sequence[Replica], seconds: float) -> None:
    """Time passes on every replica in the same step (their timers fire before either pass runs)."""
    for replica in group:
        replica.timers.advance(seconds)


def idle(group: Sequence[Replica]) -> bool:
    return all(not replica.scheduler._passes._busy for replica in group)


async def runs_of(store: PostgresStateStore, dag_id: str) -> list[RunRecord]:
    runs, _ = await store.list_runs(dag_id, 1000, 0)
    return sorted(runs, key=lambda run: run.logical_date)


async def wait_settled(group: Sequence[Replica], dag_id: str, count: int) -> list[RunRecord]:
    """The DAG's runs once `count` exist, all finished, and no scheduler pass is running."""

    async def settled() -> list[RunRecord] | None:
        advance_all(group, 0.01)  # the writers' batching timers
        runs = await runs_of(group[0].store, dag_id)
        done = len(runs) >= count and all(run.state in FINISHED_RUN_STATES for run in runs)
        return runs if done and idle(group) else None

    return await wait_for(settled, 20, f"{count} finished runs of {dag_id} and idle schedulers")


def daily(dags: Path, work: Path, dag_id: str, *, catchup: bool = True) -> Path:
    return write_dag(
        dags,
        dag_id,
        f"""
        from datetime import datetime, timezone
        with DAG({dag_id!r}, schedule="@daily", start_date=datetime(2026, 3, 1, tzinfo=timezone.utc),
                 catchup={catchup}):
            Bash("t", "true")
        """,
        work,
    )


# --- cron ticks --------------------------------------------------------------------------------


async def test_two_schedulers_create_each_catchup_run_and_each_tick_once(
    store: PostgresStateStore, other_store: PostgresStateStore, tmp_path: Path, dags: Path, work: Path
) -> None:
    path = daily(dags, work, "ticks")
    async with replicas([store, other_store], tmp_path, [path], [FakeClock(NOW), FakeClock(NOW)]) as group:
        for replica in group:  # both at start-up at the same moment: the catchup of 03-01..03-03
            replica.scheduler.start()
        runs = await wait_settled(group, "ticks", 3)
        assert [run.run_id for run in runs] == [
            scheduled_run_id(datetime(2026, 3, day, tzinfo=UTC)) for day in (1, 2, 3)
        ]
        advance_all(group, (datetime(2026, 3, 5, tzinfo=UTC) - NOW).total_seconds())  # the same tick
        runs = await wait_settled(group, "ticks", 4)
        assert len(runs) == 4 and runs[-1].logical_date == datetime(2026, 3, 4, tzinfo=UTC)
        for replica in group:
            assert replica.scheduler.upcoming("ticks") is not None
        dag = await store.get_dag("ticks")
        assert dag is not None and dag.next_dagrun == datetime(2026, 3, 5, tzinfo=UTC)
        assert dag.next_dagrun_create_after == datetime(2026, 3, 6, tzinfo=UTC)


async def test_next_dagrun_never_goes_back_to_a_tick_another_replica_created(
    store: PostgresStateStore, other_store: PostgresStateStore, tmp_path: Path, dags: Path, work: Path
) -> None:
    path = daily(dags, work, "booked")
    async with replicas([store], tmp_path, [path], [FakeClock(NOW)]):  # the DAG row, and no scheduler

        async def next_dagrun() -> datetime | None:
            dag = await store.get_dag("booked")
            assert dag is not None
            return dag.next_dagrun

        async def book(on: PostgresStateStore, tick: datetime) -> None:
            await on.set_next_dagrun("booked", tick, tick, tick + DAY, tick + DAY)

        async def fire(on: PostgresStateStore, tick: datetime) -> None:
            """What a replica's pass at the tick does: create its run, then book the next one."""
            await on.create_run(
                NewRun(
                    dag_id="booked",
                    run_id=scheduled_run_id(tick),
                    run_type="scheduled",
                    conf={},
                    logical_date=tick,
                    data_interval_start=tick,
                    data_interval_end=tick + DAY,
                    queued_at=NOW,
                    external_trigger=False,
                ),
                [],
            )
            await book(on, tick + DAY)

        start = datetime(2026, 1, 1, tzinfo=UTC)
        for k in range(ROUNDS):
            tick = start + k * DAY
            # replica A fires the tick while replica B, which planned a moment before it, still
            # books the tick itself as the next run: whatever the order, the tick is not next
            # again once its run exists
            await asyncio.gather(fire(store, tick), book(other_store, tick))
            assert await next_dagrun() == tick + DAY
        await book(other_store, start)  # long stale: refused as well
        assert await next_dagrun() == start + ROUNDS * DAY
        await other_store.set_next_dagrun("booked", None, None, None, None)  # unscheduled: cleared
        assert await next_dagrun() is None


async def test_continuous_and_once_make_one_run_when_two_replicas_decide_at_once(
    store: PostgresStateStore, other_store: PostgresStateStore, tmp_path: Path, dags: Path, work: Path
) -> None:
    gate = work / "gate"
    files = [
        write_dag(
            dags,
            "always",
            f'with DAG("always", schedule="@continuous", max_active_runs=1):\n    Bash("t", {gate_wait(gate)!r})\n',
            work,
        ),
        # no start date: its logical date is each replica's clock, so its run id is no key
        write_dag(dags, "one_time", 'with DAG("one_time", schedule="@once"):\n    Bash("t", "true")\n', work),
    ]
    clocks = [FakeClock(NOW), FakeClock(NOW + timedelta(seconds=1))]  # the replicas' clocks differ
    async with replicas([store, other_store], tmp_path, files, clocks) as group:
        for replica in group:
            replica.scheduler.start()

        async def decided() -> bool:
            advance_all(group, 0.01)
            return (
                idle(group)
                and bool(await runs_of(store, "always"))
                and bool(await runs_of(store, "one_time"))
            )

        await wait_for(decided, 20, "both schedulers to have made their decisions")
        assert len(await runs_of(store, "always")) == 1  # not one per replica
        assert len(await runs_of(store, "one_time")) == 1
        for replica in group:  # planned again (as after a file change): still one each
            replica.scheduler.refresh(["always", "one_time"])
        await wait_for(decided, 20, "both schedulers to have looked again")
        assert len(await runs_of(store, "always")) == 1
        assert len(await runs_of(store, "one_time")) == 1
        await group[0].harness.engine.set_paused("always", True)
        gate.touch()
        await wait_settled(group, "always", 1)


# --- webhooks ----------------------------------------------------------------------------------


async def test_one_delivery_received_by_two_replicas_creates_one_run_and_logs_both(
    store: PostgresStateStore, other_store: PostgresStateStore, tmp_path: Path, dags: Path, work: Path
) -> None:
    path = write_dag(dags, "hooked", 'with DAG("hooked"):\n    Bash("t", "true")\n', work)
    configs = {
        "by_id": WebhookConfig(
            name="by_id",
            auth="none",
            dag_id="hooked",
            delivery_id_header="X-Delivery",
            allow_unauthenticated=True,
        ),
        "by_body": WebhookConfig(name="by_body", auth="none", dag_id="hooked", allow_unauthenticated=True),
    }
    clocks = [FakeClock(NOW), FakeClock(NOW + timedelta(seconds=1))]
    async with replicas([store, other_store], tmp_path, [path], clocks) as group:
        receivers = [
            WebhookReceiver(
                build_webhooks(configs, {}), r.harness.engine, r.store, r.clock, DeliveryLog(r.store)
            )
            for r in group
        ]

        async def both(name: str, body: bytes, headers: dict[str, str]) -> list[tuple[int, bool, str | None]]:
            answers = await asyncio.gather(
                *(
                    receiver.receive(receiver.webhooks[name], headers, body, replica.clock.now())
                    for receiver, replica in zip(receivers, group, strict=True)
                )
            )
            return sorted((a.status, a.created, a.dag_run_id) for a in answers)

        for k in range(ROUNDS):
            with_id = await both("by_id", b'{"n": %d}' % k, {"X-Delivery": f"d-{k}"})
            assert with_id == [(200, False, f"webhook__by_id__d-{k}"), (202, True, f"webhook__by_id__d-{k}")]
            without = await both("by_body", b'{"body": %d}' % k, {})
            assert [(status, created) for status, created, _ in without] == [(200, False), (202, True)]
            assert without[0][2] == without[1][2]  # both answered the one run
        for receiver in receivers:
            await receiver.delivery_log.flush()
        runs = await runs_of(store, "hooked")
        assert len(runs) == 2 * ROUNDS
        for name in configs:
            logged, total = await store.list_webhook_deliveries(name, 1000, 0)
            assert total == 2 * ROUNDS  # every delivery each replica received
            assert sum(entry.created for entry in logged) == ROUNDS  # one of each pair created
            assert {entry.run_id for entry in logged} <= {run.run_id for run in runs}

        async def finished() -> bool:
            advance_all(group, 0.01)
            return all(run.state in FINISHED_RUN_STATES for run in await runs_of(store, "hooked"))

        await wait_for(finished, 20, "the webhook runs to finish")


# --- assets ------------------------------------------------------------------------------------


async def test_an_event_seen_by_two_replicas_asset_triggers_makes_one_run_per_consumer(
    store: PostgresStateStore, other_store: PostgresStateStore, tmp_path: Path, dags: Path, work: Path
) -> None:
    header = "from orchestrator.authoring.assets import Asset\n"
    path = write_dag(
        dags,
        "consumers",
        """
        with DAG("on_x", schedule=Asset("s3://x")):
            Bash("t", "true")
        with DAG("on_x_and_y", schedule=Asset("s3://x") & Asset("s3://y")):
            Bash("t", "true")
        """,
        work,
    )
    path.write_text(header + path.read_text())
    async with AsyncExitStack() as stack:
        triggers: list[AssetTrigger] = []
        harnesses: list[EngineHarness] = []
        for index, each in enumerate([store, other_store]):
            harness = await stack.enter_async_context(
                running_engine(each, tmp_path / f"replica{index}" / "logs", [path])
            )
            clock = SystemClock()
            trigger = AssetTrigger(harness.engine, each, clock, LoopTimers(clock))
            trigger.attach()
            harnesses.append(harness)
            triggers.append(trigger)
        for trigger in triggers:
            trigger.start()

        async def settled() -> None:
            for _ in range(3):
                for harness, trigger in zip(harnesses, triggers, strict=True):
                    await harness.engine.writer.flushed()
                    await trigger.settled()

        for k in range(ROUNDS):
            # the event is recorded once; both replicas' triggers look at its consumers at once
            _, created = await triggers[0].record_external_event("s3://x", {"k": k})
            assert created
            for trigger in triggers:
                trigger._mark(["on_x", "on_x_and_y"])
            await settled()
            on_x = await runs_of(store, "on_x")
            assert len(on_x) == k + 1  # one run per event, not one per replica
            queued = await store.asset_queues(["on_x", "on_x_and_y"])
            assert "on_x" not in queued  # consumed, once
            assert [(q.uri, q.events) for q in queued["on_x_and_y"]] == [("s3://x", k + 1)]
        await triggers[1].record_external_event("s3://y", {})
        for trigger in triggers:
            trigger._mark(["on_x_and_y"])
        await settled()
        (both,) = await runs_of(store, "on_x_and_y")  # the condition met once: one run of every event
        assert await store.asset_queues(["on_x", "on_x_and_y"]) == {}
        linked = await store.triggering_asset_events([both.pk])
        assert len(linked[both.pk]) == ROUNDS + 1
        assert sum(trigger.runs_created for trigger in triggers) == ROUNDS + 1

        async def finished() -> bool:
            runs = [*await runs_of(store, "on_x"), *await runs_of(store, "on_x_and_y")]
            return all(run.state in FINISHED_RUN_STATES for run in runs)

        await wait_for(finished, 20, "the asset-triggered runs to finish")


# --- backfills ---------------------------------------------------------------------------------


async def test_two_replicas_backfills_create_each_run_once_and_both_see_pause_and_cancel(
    store: PostgresStateStore, other_store: PostgresStateStore, tmp_path: Path, dags: Path, work: Path
) -> None:
    path = write_dag(
        dags,
        "filled",
        """
        from datetime import datetime, timezone
        with DAG("filled", schedule="@daily", start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
                 is_paused_upon_creation=True):
            Bash("t", "true")
        """,
        work,
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clocks = [FakeClock(NOW), FakeClock(NOW)]
    async with replicas([store, other_store], tmp_path, [path], clocks) as group:
        first, second = (replica.backfills for replica in group)
        request = BackfillRequest("filled", start, start + 9 * DAY, max_active_runs=3)
        # the same backfill asked of both replicas at once: one is created, the other refused
        outcomes = await asyncio.gather(first.create(request), second.create(request), return_exceptions=True)
        made = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(made) == 1 and len(refused) == 1 and isinstance(refused[0], BackfillConflict)
        backfill = made[0]
        assert f"id {backfill.id}" in str(refused[0])

        async def planned_runs() -> list[str]:
            return [row.run_id for row in await store.list_backfill_runs(backfill.id) if row.run_id]

        async def creators_idle() -> list[str] | None:
            runs = await planned_runs()
            busy = any(replica.backfills._passes._busy for replica in group)
            return runs if len(runs) >= 3 and not busy else None

        for replica in group:  # both replicas drive it (as at their start-up), at once
            await replica.backfills.start()
        # the DAG is paused: its runs wait queued, so max_active_runs holds the backfill at 3
        runs = await wait_for(creators_idle, 20, "the first three backfill runs")
        assert runs == [backfill_run_id(start + k * DAY) for k in range(3)]
        assert len(await runs_of(store, "filled")) == 3

        # paused through one replica, resumed through the other... and driven again by both
        await first.set_paused(backfill.id, True)
        for replica in group:
            replica.backfills._drive(backfill.id)
        await wait_for(creators_idle, 20, "both replicas to look at the paused backfill")
        assert len(await runs_of(store, "filled")) == 3
        # cancelled through the second replica while the first still drives it: nothing more
        await second.set_paused(backfill.id, False)
        await second.cancel(backfill.id)
        for replica in group:
            replica.backfills._drive(backfill.id)
        await wait_for(creators_idle, 20, "both replicas to look at the cancelled backfill")
        assert len(await runs_of(store, "filled")) == 3
        with pytest.raises(BackfillConflict, match="completed"):
            await first.set_paused(backfill.id, False)

        # each planned date linked to exactly the one run made for it
        rows = await store.list_backfill_runs(backfill.id)
        pks = [row.run_pk for row in rows if row.run_pk is not None]
        assert len(pks) == len(set(pks)) == 3
        await group[0].harness.engine.set_paused("filled", False)

        async def finished() -> bool:
            advance_all(group, 0.01)
            return all(run.state in FINISHED_RUN_STATES for run in await runs_of(store, "filled"))

        await wait_for(finished, 20, "the backfill runs to finish")


async def test_a_backfill_run_of_one_replica_is_created_and_linked_once_under_contention(
    store: PostgresStateStore, other_store: PostgresStateStore, tmp_path: Path, dags: Path, work: Path
) -> None:
    """The store half: both replicas create the same backfill run at once, and a pause committed
    by one replica stops the other's next creation."""
    path = write_dag(
        dags,
        "racing",
        """
        from datetime import datetime, timezone
        with DAG("racing", schedule="@daily", start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
                 is_paused_upon_creation=True):
            Bash("t", "true")
        """,
        work,
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with replicas([store], tmp_path, [path], [FakeClock(NOW)]) as (replica,):
        backfills = replica.backfills
        planned = await backfills.plan(BackfillRequest("racing", start, start + (ROUNDS - 1) * DAY))
        backfill = await store.create_backfill(
            dag_id="racing",
            from_date=start,
            to_date=start + (ROUNDS - 1) * DAY,
            dag_run_conf={},
            reprocess_behavior="none",
            max_active_runs=ROUNDS,
            run_backwards=False,
            now=NOW,
            runs=planned,
        )
        assert backfill is not None
        for row in planned:
            run = NewRun(
                dag_id="racing",
                run_id=backfill_run_id(row.logical_date),
                run_type="backfill",
                conf={},
                logical_date=row.logical_date,
                data_interval_start=row.data_interval_start,
                data_interval_end=row.data_interval_end,
                queued_at=NOW,
                external_trigger=False,
                backfill_id=backfill.id,
            )
            answers = await asyncio.gather(
                store.create_backfill_run(run, [], None, row.sort_ordinal),
                other_store.create_backfill_run(run, [], None, row.sort_ordinal),
            )
            assert all(answer is not None for answer in answers)
            assert sorted(answer[1] for answer in answers if answer is not None) == [False, True]
            assert len({answer[0].pk for answer in answers if answer is not None}) == 1
        rows = await store.list_backfill_runs(backfill.id)
        assert len({row.run_pk for row in rows}) == ROUNDS and None not in {row.run_pk for row in rows}
        assert len(await runs_of(store, "racing")) == ROUNDS

        await store.set_backfill_paused(backfill.id, True, NOW)
        late = NewRun(
            dag_id="racing",
            run_id="backfill__late",
            run_type="backfill",
            conf={},
            logical_date=start,
            data_interval_start=start,
            data_interval_end=start + DAY,
            queued_at=NOW,
            external_trigger=False,
            backfill_id=backfill.id,
        )
        assert await other_store.create_backfill_run(late, [], None, 0) is None  # paused: nothing
        await other_store.complete_backfill(backfill.id, NOW)
        assert await store.create_backfill_run(late, [], None, 0) is None  # cancelled: nothing
        assert len(await runs_of(store, "racing")) == ROUNDS
