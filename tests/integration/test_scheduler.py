"""The scheduler on a real engine and PostgreSQL, with time advanced by hand (tests/fakes.py):
catchup and no catchup, one timer for all DAGs, pause, restarts and concurrent schedulers
(exactly once per fire time), DAG file changes, timedelta, @once and @continuous."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.core.records import DagRecord, RunRecord
from orchestrator.core.schedules import RunInfo
from orchestrator.core.states import RunState
from orchestrator.triggers.scheduler import Scheduler, scheduled_run_id
from storage.postgres import PostgresStateStore
from tests.fakes import FakeClock, FakeTimers
from tests.integration.engine_harness import (
    EngineHarness,
    gate_wait,
    running_engine,
    wait_for,
    write_dag,
)

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def daily_dag(dags: Path, work: Path, dag_id: str, *, catchup: bool, extra: str = "") -> Path:
    return write_dag(
        dags,
        dag_id,
        f"""
        from datetime import datetime, timezone
        with DAG({dag_id!r}, schedule="@daily", start_date=datetime(2026, 3, 1, tzinfo=timezone.utc),
                 catchup={catchup}, max_active_runs=1{extra}):
            Bash("t", "echo {{{{ ds }}}} {{{{ data_interval_start }}}} {{{{ data_interval_end }}}}")
        """,
        work,
    )


@asynccontextmanager
async def scheduling(
    store: PostgresStateStore, logs: Path, files: list[Path], clock: FakeClock
) -> AsyncIterator[tuple[EngineHarness, Scheduler, FakeTimers]]:
    timers = FakeTimers(clock)
    async with running_engine(store, logs, files, clock=clock, timers=timers) as harness:
        scheduler = Scheduler(harness.engine, store, clock, timers, harness.engine.supervisor)
        harness.engine.add_paused_listener(lambda dag_id, _: scheduler.refresh([dag_id]))
        harness.registry.add_listener(scheduler.refresh)
        scheduler.start()
        try:
            yield harness, scheduler, timers
        finally:
            scheduler.stop()
        assert harness.engine.supervisor.fatal_message is None


async def runs_of(store: PostgresStateStore, dag_id: str) -> list[RunRecord]:
    runs, _ = await store.list_runs(dag_id, 1000, 0)
    return sorted(runs, key=lambda run: run.logical_date)


async def wait_runs(
    store: PostgresStateStore, dag_id: str, count: int, timers: FakeTimers
) -> list[RunRecord]:
    """The DAG's runs once `count` exist and all are finished (the writer's lazy timers advanced)."""

    async def done() -> list[RunRecord] | None:
        timers.advance(0.01)
        runs = await runs_of(store, dag_id)
        finished = [run for run in runs if run.state in (RunState.SUCCESS, RunState.FAILED)]
        return runs if len(runs) >= count and len(finished) == len(runs) else None

    return await wait_for(done, 20, f"{count} finished runs of {dag_id}")


async def test_a_catchup_dag_creates_every_missed_interval_in_order_then_one_per_fire_time(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = daily_dag(dags, work, "caught", catchup=True)
    clock = FakeClock(NOW)
    async with scheduling(store, logs, [path], clock) as (harness, _, timers):
        runs = await wait_runs(store, "caught", 3, timers)
        assert [run.logical_date for run in runs] == [NOW.replace(hour=0) - DAY * k for k in (3, 2, 1)]
        for run in runs:
            assert run.run_id == scheduled_run_id(run.logical_date)
            assert run.run_type == "scheduled" and run.external_trigger is False
            assert (run.data_interval_start, run.data_interval_end) == (
                run.logical_date,
                run.logical_date + DAY,
            )
            assert run.state == RunState.SUCCESS
        # admitted in order under max_active_runs=1: each started after the previous one ended
        for earlier, later in itertools.pairwise(runs):
            assert earlier.end_date is not None and later.start_date is not None
            assert later.start_date >= earlier.end_date
        log = harness.log_text("caught", runs[0].run_id, "t", 1)
        assert "2026-03-01 2026-03-01T00:00:00+00:00 2026-03-02T00:00:00+00:00" in log

        async def planned() -> DagRecord | None:
            dag = await store.get_dag("caught")  # recorded after the pass created the runs
            return dag if dag is not None and dag.next_dagrun is not None else None

        dag = await wait_for(planned, 10, "the next run to be recorded")
        assert dag.next_dagrun == datetime(2026, 3, 4, tzinfo=UTC)
        assert dag.next_dagrun_data_interval_end == datetime(2026, 3, 5, tzinfo=UTC)
        assert dag.next_dagrun_create_after == datetime(2026, 3, 5, tzinfo=UTC)
        assert timers.pending()  # the one timer is armed for midnight

        timers.advance((datetime(2026, 3, 5, tzinfo=UTC) - clock.now()).total_seconds())
        runs = await wait_runs(store, "caught", 4, timers)
        assert runs[-1].logical_date == datetime(2026, 3, 4, tzinfo=UTC)


async def test_without_catchup_only_the_latest_interval_runs(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = daily_dag(dags, work, "latest", catchup=False)
    async with scheduling(store, logs, [path], FakeClock(NOW)) as (_, _, timers):
        runs = await wait_runs(store, "latest", 1, timers)
        assert [run.logical_date for run in runs] == [datetime(2026, 3, 3, tzinfo=UTC)]


async def test_a_paused_dag_creates_nothing_until_unpaused_and_shows_its_next_run(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = daily_dag(dags, work, "held", catchup=True, extra=", is_paused_upon_creation=True")
    async with scheduling(store, logs, [path], FakeClock(NOW)) as (harness, scheduler, timers):

        async def planned() -> bool:
            dag = await store.get_dag("held")
            return dag is not None and dag.next_dagrun is not None

        await wait_for(planned, 10, "the paused DAG's next run to be recorded")
        dag = await store.get_dag("held")
        assert dag is not None and dag.is_paused
        assert dag.next_dagrun == datetime(2026, 3, 1, tzinfo=UTC)  # the first missed one
        timers.advance(3 * 86400)  # days pass: still nothing
        assert await runs_of(store, "held") == []
        assert scheduler.upcoming("held") is None

        await harness.engine.set_paused("held", False)
        runs = await wait_runs(store, "held", 6, timers)
        assert len(runs) == 6  # 03-01 .. 03-06: catchup from the start date to now


async def test_two_schedulers_and_a_restart_create_each_run_exactly_once(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = daily_dag(dags, work, "once_each", catchup=True)
    clock = FakeClock(NOW)
    async with scheduling(store, logs, [path], clock) as (harness, _, timers):
        rival = Scheduler(harness.engine, store, clock, timers, harness.engine.supervisor)
        rival.start()  # a second daemon's scheduler on the same database, at the same moment
        runs = await wait_runs(store, "once_each", 3, timers)
        rival.stop()
    assert len(runs) == 3
    async with scheduling(store, logs, [path], clock) as (_, _, timers):  # a restart
        timers.advance(0.01)
        again = await wait_runs(store, "once_each", 3, timers)
    assert [run.pk for run in again] == [run.pk for run in runs]


async def test_a_changed_schedule_is_planned_again(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = daily_dag(dags, work, "changing", catchup=False)
    clock = FakeClock(NOW)
    async with scheduling(store, logs, [path], clock) as (harness, scheduler, timers):
        await wait_runs(store, "changing", 1, timers)
        write_dag(
            dags,
            "changing",
            """
            from datetime import datetime, timedelta, timezone
            with DAG("changing", schedule=timedelta(hours=6), catchup=True,
                     start_date=datetime(2026, 3, 4, tzinfo=timezone.utc)):
                Bash("t", "true")
            """,
            work,
        )
        await harness.reload(path)  # the registry tells the scheduler
        # the latest scheduled run (03-03, daily) is where the new schedule resumes: every 6 h
        # interval from the start date that ended by noon
        runs = await wait_runs(store, "changing", 3, timers)
        assert [run.logical_date for run in runs[1:]] == [
            datetime(2026, 3, 4, 0, tzinfo=UTC),
            datetime(2026, 3, 4, 6, tzinfo=UTC),
        ]

        async def armed() -> RunInfo | None:
            return scheduler.upcoming("changing")  # set once the pass that made the runs ends

        upcoming = await wait_for(armed, 10, "the next run to be armed")
        assert upcoming.run_after == datetime(2026, 3, 4, 18, tzinfo=UTC)


async def test_once_runs_once_and_continuous_starts_a_run_whenever_none_is_active(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    once = write_dag(
        dags,
        "one_time",
        """
        from datetime import datetime, timezone
        with DAG("one_time", schedule="@once", start_date=datetime(2026, 3, 2, tzinfo=timezone.utc)):
            Bash("t", "true")
        """,
        work,
    )
    continuous = write_dag(
        dags,
        "always",
        f"""
        with DAG("always", schedule="@continuous", max_active_runs=1):
            Bash("t", "echo x >> {work}/always; [ $(wc -l < {work}/always) -lt 3 ] || {gate_wait(work / "gate")}")
        """,
        work,
    )
    async with scheduling(store, logs, [once, continuous], FakeClock(NOW)) as (harness, _, timers):
        runs = await wait_runs(store, "one_time", 1, timers)
        assert runs[0].logical_date == datetime(2026, 3, 2, tzinfo=UTC)

        async def third_started() -> bool:
            timers.advance(0.01)
            return len(await runs_of(store, "always")) >= 3

        await wait_for(third_started, 20, "three continuous runs")
        always = await runs_of(store, "always")
        assert [run.state for run in always[:2]] == [RunState.SUCCESS, RunState.SUCCESS]
        assert len(always) == 3  # the third is still running: no fourth while one is active
        await harness.engine.set_paused("always", True)
        (work / "gate").touch()
        await wait_runs(store, "always", 3, timers)
    assert len(await runs_of(store, "one_time")) == 1
