"""Backfills on a real engine and PostgreSQL: the runs of a range at most max_active_runs at a
time, run backwards, reprocess behaviours, pause and cancel, a restart that goes on where it
stopped, and the refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.core.records import BackfillRecord, RunRecord
from orchestrator.core.states import RunState
from orchestrator.errors import DagNotFound, InvalidRequest
from orchestrator.triggers.backfill import BackfillConflict, BackfillRequest, Backfills, backfill_run_id
from storage.postgres import PostgresStateStore
from tests.integration.engine_harness import EngineHarness, gate_wait, running_engine, wait_for, write_dag

pytestmark = pytest.mark.anyio

DAY = timedelta(days=1)
START = datetime(2026, 1, 1, tzinfo=UTC)


def daily(dags: Path, work: Path, command: str = "true") -> Path:
    return write_dag(
        dags,
        "daily",
        f"""
        from datetime import datetime, timezone
        with DAG("daily", schedule="@daily", start_date=datetime(2025, 12, 1, tzinfo=timezone.utc)):
            Bash("t", {command!r})
        """,
        work,
    )


@asynccontextmanager
async def backfilling(
    store: PostgresStateStore, logs: Path, files: list[Path]
) -> AsyncIterator[tuple[EngineHarness, Backfills]]:
    async with running_engine(store, logs, files) as harness:
        backfills = Backfills(harness.engine, store, harness.engine._clock, harness.engine.supervisor)
        await backfills.start()
        yield harness, backfills
        backfills.stop()
        assert harness.engine.supervisor.fatal_message is None


def ten_days(**options: object) -> BackfillRequest:
    return BackfillRequest("daily", START, START + 9 * DAY, **options)  # type: ignore[arg-type]


async def backfill_runs(store: PostgresStateStore, backfill_id: int) -> list[RunRecord]:
    runs: list[RunRecord] = []
    for planned in await store.list_backfill_runs(backfill_id):
        if planned.run_id is not None:
            run = await store.get_run("daily", planned.run_id)
            assert run is not None
            runs.append(run)
    return runs


async def wait_completed(store: PostgresStateStore, backfill_id: int, timeout: float = 30) -> BackfillRecord:
    async def completed() -> BackfillRecord | None:
        backfill = await store.get_backfill(backfill_id)
        return backfill if backfill is not None and backfill.completed_at is not None else None

    return await wait_for(completed, timeout, f"backfill {backfill_id} to complete")


async def test_a_ten_day_backfill_runs_every_date_at_most_two_at_a_time(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = daily(dags, work, "sleep 0.2")
    async with backfilling(store, logs, [path]) as (_, backfills):
        backfill = await backfills.create(ten_days(max_active_runs=2, dag_run_conf={"why": "gap"}))
        await wait_completed(store, backfill.id)
        runs = await backfill_runs(store, backfill.id)

    assert [run.logical_date for run in runs] == [START + k * DAY for k in range(10)]
    for run in runs:
        assert run.run_type == "backfill" and run.state == RunState.SUCCESS
        assert run.run_id == backfill_run_id(run.logical_date)
        assert (run.data_interval_start, run.data_interval_end) == (run.logical_date, run.logical_date + DAY)
        assert run.conf == {"why": "gap"} and run.backfill_id == backfill.id
    # never more than two of its runs at once
    moments = sorted(
        [(run.start_date, 1) for run in runs] + [(run.end_date, -1) for run in runs],
        key=lambda item: (item[0], item[1]),
    )
    active = peak = 0
    for _, change in moments:
        active += change
        peak = max(peak, active)
    assert peak == 2


async def test_run_backwards_creates_the_newest_date_first(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    async with backfilling(store, logs, [daily(dags, work)]) as (_, backfills):
        backfill = await backfills.create(
            BackfillRequest("daily", START, START + 2 * DAY, max_active_runs=1, run_backwards=True)
        )
        await wait_completed(store, backfill.id)
        runs = await backfill_runs(store, backfill.id)
    assert [run.logical_date for run in runs] == [START + 2 * DAY, START + DAY, START]
    assert runs[0].end_date is not None and runs[1].start_date is not None
    assert runs[1].start_date >= runs[0].end_date


async def test_reprocess_behaviours_decide_which_dates_run_again(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    # day 2 fails (its ds is in the command), every other day succeeds
    path = daily(dags, work, '[ "{{ ds }}" != "2026-01-02" ]')
    async with backfilling(store, logs, [path]) as (_, backfills):
        first = await backfills.create(BackfillRequest("daily", START, START + 2 * DAY))
        await wait_completed(store, first.id)
        assert [r.state for r in await backfill_runs(store, first.id)] == [
            RunState.SUCCESS,
            RunState.FAILED,
            RunState.SUCCESS,
        ]

        again = await backfills.create(BackfillRequest("daily", START, START + 2 * DAY))  # none
        await wait_completed(store, again.id)
        planned = await store.list_backfill_runs(again.id)
        assert [p.exception_reason for p in planned] == ["already exists"] * 3
        assert await backfill_runs(store, again.id) == []

        failed = await backfills.create(
            BackfillRequest("daily", START, START + 2 * DAY, reprocess_behavior="failed")
        )
        await wait_completed(store, failed.id)
        rerun = await backfill_runs(store, failed.id)
        assert [run.logical_date for run in rerun] == [START + DAY]
        assert rerun[0].run_id == backfill_run_id(START + DAY, failed.id)  # the plain id is taken

        completed = await backfills.create(
            BackfillRequest("daily", START, START + 2 * DAY, reprocess_behavior="completed")
        )
        await wait_completed(store, completed.id)
        assert len(await backfill_runs(store, completed.id)) == 3


async def test_pause_holds_and_cancel_stops_a_backfill(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = daily(dags, work, gate_wait(work / "gate"))
    async with backfilling(store, logs, [path]) as (_, backfills):
        backfill = await backfills.create(ten_days(max_active_runs=2))

        async def two_created() -> bool:
            return len(await backfill_runs(store, backfill.id)) == 2

        await wait_for(two_created, 10, "the first two runs")
        paused = await backfills.set_paused(backfill.id, True)
        assert paused.is_paused
        (work / "gate").touch()  # both finish; a paused backfill creates no more

        async def both_done() -> bool:
            runs = await backfill_runs(store, backfill.id)
            return all(run.state == RunState.SUCCESS for run in runs)

        await wait_for(both_done, 10, "the first two runs to succeed")
        assert len(await backfill_runs(store, backfill.id)) == 2

        (work / "gate").unlink()
        await backfills.set_paused(backfill.id, False)

        async def four_created() -> bool:
            return len(await backfill_runs(store, backfill.id)) == 4

        await wait_for(four_created, 10, "two more runs once resumed")
        cancelled = await backfills.cancel(backfill.id)
        assert cancelled.completed_at is not None
        (work / "gate").touch()

        async def four_done() -> bool:
            runs = await backfill_runs(store, backfill.id)
            return all(run.state == RunState.SUCCESS for run in runs)

        await wait_for(four_done, 10, "the created runs to finish")
        assert len(await backfill_runs(store, backfill.id)) == 4  # nothing after the cancel
        with pytest.raises(BackfillConflict, match="is completed"):
            await backfills.cancel(backfill.id)


async def test_a_restarted_daemon_goes_on_with_an_unfinished_backfill(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = daily(dags, work, gate_wait(work / "gate"))
    async with backfilling(store, logs, [path]) as (harness, backfills):
        backfill = await backfills.create(BackfillRequest("daily", START, START + 3 * DAY, max_active_runs=1))

        async def first_running() -> bool:
            runs = await backfill_runs(store, backfill.id)
            return len(runs) == 1 and runs[0].state == RunState.RUNNING

        await wait_for(first_running, 10, "the first run to be running")
        harness.crash()
    (work / "gate").touch()
    async with backfilling(store, logs, [path]) as (_, _):
        await wait_completed(store, backfill.id)
        runs = await backfill_runs(store, backfill.id)
    assert [run.logical_date for run in runs] == [START + k * DAY for k in range(4)]
    assert len({run.run_id for run in runs}) == 4


async def test_refusals_name_what_is_wrong(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    manual = write_dag(dags, "manual", 'with DAG("manual"):\n    Bash("t", "true")\n', work)
    async with backfilling(store, logs, [daily(dags, work, gate_wait(work / "gate")), manual]) as (
        _,
        backfills,
    ):
        with pytest.raises(DagNotFound):
            await backfills.create(BackfillRequest("nope", START, START))
        with pytest.raises(InvalidRequest, match="has no logical dates"):
            await backfills.create(BackfillRequest("manual", START, START))
        with pytest.raises(InvalidRequest, match="is after to_date"):
            await backfills.create(BackfillRequest("daily", START + DAY, START))
        with pytest.raises(InvalidRequest, match="reprocess_behavior"):
            await backfills.create(BackfillRequest("daily", START, START, reprocess_behavior="all"))
        first = await backfills.create(BackfillRequest("daily", START, START + DAY))
        with pytest.raises(BackfillConflict, match=f"unfinished backfill \\(id {first.id}\\)"):
            await backfills.create(BackfillRequest("daily", START, START + DAY))
        await backfills.cancel(first.id)
        (work / "gate").touch()
