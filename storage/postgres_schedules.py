"""The store's queries for schedules and backfills (`orchestrator.ports.ScheduleStore`), a mixin
of `storage.postgres.PostgresStateStore`. The SQL is in storage/sql/schedules.sql.

Exactly once across replicas is the database's business here, never a replica's memory. A cron
tick's run is unique on (dag_id, run_id) (the engine's create_run). What is decided by reading
first is decided under a lock on the DAG's row (`lock_dag`), so that the next replica's
statements see what the first one committed: the next-run bookkeeping (never written back to a
tick whose run exists), the sole run of @continuous and @once, and one unfinished backfill per
DAG. A backfill creates each of its runs in the transaction that links it to its planned date,
while the backfill's row is locked against a pause or a cancel (`lock_live_backfill`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import asyncpg

from orchestrator.core.records import (
    BackfillRecord,
    BackfillRunRecord,
    NewRun,
    NewTaskInstance,
    RunRecord,
)
from storage.errors import StorageError
from storage.sql import QUERIES


def _backfill(row: asyncpg.Record) -> BackfillRecord:
    return BackfillRecord(
        id=row["id"],
        dag_id=row["dag_id"],
        from_date=row["from_date"],
        to_date=row["to_date"],
        dag_run_conf=row["dag_run_conf"],
        is_paused=row["is_paused"],
        reprocess_behavior=row["reprocess_behavior"],
        max_active_runs=row["max_active_runs"],
        run_backwards=row["run_backwards"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
        updated_at=row["updated_at"],
    )


def _backfill_run(row: asyncpg.Record) -> BackfillRunRecord:
    return BackfillRunRecord(
        backfill_id=row["backfill_id"],
        sort_ordinal=row["sort_ordinal"],
        logical_date=row["logical_date"],
        data_interval_start=row["data_interval_start"],
        data_interval_end=row["data_interval_end"],
        run_pk=row["run_pk"],
        exception_reason=row["exception_reason"],
        run_id=row["run_id"],
        run_state=row["run_state"],
    )


class ScheduleQueries:
    """Schedules and backfills on the store's pool (`self._pool`, set by PostgresStateStore)."""

    _pool: asyncpg.Pool

    async def latest_scheduled_run(self, dag_id: str) -> tuple[datetime, datetime, datetime] | None:
        row = await self._pool.fetchrow(QUERIES["latest_scheduled_run"], dag_id)
        return None if row is None else (row[0], row[1], row[2])

    async def count_unfinished_runs(self, dag_id: str) -> int:
        count: int = await self._pool.fetchval(QUERIES["count_unfinished_runs"], dag_id)
        return count

    async def set_next_dagrun(
        self,
        dag_id: str,
        logical_date: datetime | None,
        data_interval_start: datetime | None,
        data_interval_end: datetime | None,
        create_after: datetime | None,
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES["lock_dag"], dag_id)
            # a statement after the lock: it sees every run the previous holder committed
            await conn.execute(
                QUERIES["set_next_dagrun"],
                dag_id,
                logical_date,
                data_interval_start,
                data_interval_end,
                create_after,
            )

    async def create_sole_run(
        self,
        run: NewRun,
        tasks: Sequence[NewTaskInstance],
        source_hash: str | None,
        unless: Literal["unfinished", "scheduled"],
    ) -> RunRecord | None:
        from storage.postgres import insert_run_rows  # postgres imports this module

        check = "unfinished_run_exists" if unless == "unfinished" else "scheduled_run_exists"
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES["lock_dag"], run.dag_id)
            if await conn.fetchval(QUERIES[check], run.dag_id):
                return None
            return await insert_run_rows(conn, run, tasks, source_hash)

    async def create_backfill(
        self,
        *,
        dag_id: str,
        from_date: datetime,
        to_date: datetime,
        dag_run_conf: dict[str, Any],
        reprocess_behavior: str,
        max_active_runs: int,
        run_backwards: bool,
        now: datetime,
        runs: Sequence[BackfillRunRecord],
    ) -> BackfillRecord | None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES["lock_dag"], dag_id)
            if await conn.fetchval(QUERIES["unfinished_backfill_of_dag"], dag_id) is not None:
                return None
            row = await conn.fetchrow(
                QUERIES["insert_backfill"],
                dag_id,
                from_date,
                to_date,
                dag_run_conf,
                reprocess_behavior,
                max_active_runs,
                run_backwards,
                now,
            )
            backfill = _backfill(row)
            if runs:
                await conn.execute(
                    QUERIES["insert_backfill_runs"],
                    backfill.id,
                    [run.sort_ordinal for run in runs],
                    [run.logical_date for run in runs],
                    [run.data_interval_start for run in runs],
                    [run.data_interval_end for run in runs],
                    [run.exception_reason for run in runs],
                )
        return backfill

    async def runs_at_logical_dates(
        self, dag_id: str, dates: Sequence[datetime]
    ) -> list[tuple[datetime, str, str, int | None]]:
        rows = await self._pool.fetch(QUERIES["runs_at_logical_dates"], dag_id, list(dates))
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    async def get_backfill(self, backfill_id: int) -> BackfillRecord | None:
        row = await self._pool.fetchrow(QUERIES["get_backfill"], backfill_id)
        return None if row is None else _backfill(row)

    async def list_backfills(
        self, dag_id: str | None, limit: int, offset: int, only_unfinished: bool = False
    ) -> tuple[list[BackfillRecord], int]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(QUERIES["list_backfills"], dag_id, only_unfinished, limit, offset)
            total = await conn.fetchval(QUERIES["count_backfills"], dag_id, only_unfinished)
        return [_backfill(row) for row in rows], total

    async def set_backfill_paused(
        self, backfill_id: int, is_paused: bool, now: datetime
    ) -> BackfillRecord | None:
        row = await self._pool.fetchrow(QUERIES["set_backfill_paused"], backfill_id, is_paused, now)
        return None if row is None else _backfill(row)

    async def complete_backfill(self, backfill_id: int, now: datetime) -> BackfillRecord | None:
        row = await self._pool.fetchrow(QUERIES["complete_backfill"], backfill_id, now)
        return None if row is None else _backfill(row)

    async def list_backfill_runs(self, backfill_id: int) -> list[BackfillRunRecord]:
        rows = await self._pool.fetch(QUERIES["list_backfill_runs"], backfill_id)
        return [_backfill_run(row) for row in rows]

    async def set_backfill_run(self, backfill_id: int, sort_ordinal: int, run_pk: int) -> None:
        await self._pool.execute(QUERIES["set_backfill_run"], backfill_id, sort_ordinal, run_pk)

    async def create_backfill_run(
        self,
        run: NewRun,
        tasks: Sequence[NewTaskInstance],
        source_hash: str | None,
        sort_ordinal: int,
    ) -> tuple[RunRecord, bool] | None:
        from storage.postgres import _run, insert_run_rows  # postgres imports this module

        backfill_id = run.backfill_id
        if backfill_id is None:
            raise ValueError(f"run {run.run_id!r} of DAG {run.dag_id!r} names no backfill to create it for")
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(QUERIES["lock_live_backfill"], backfill_id) is None:
                return None  # paused or completed (cancelled) meanwhile
            created = await insert_run_rows(conn, run, tasks, source_hash)
            if created is not None:
                record = created
            else:  # made already (by another replica, or before a restart): a fresh statement sees it
                existing = await conn.fetchrow(QUERIES["get_run"], run.dag_id, run.run_id)
                if existing is None:  # deleted between the two statements; cannot happen in practice
                    raise StorageError(
                        f"Run {run.run_id!r} of DAG {run.dag_id!r} conflicted but no longer exists: retry"
                    )
                record = _run(existing)
            if record.backfill_id == backfill_id:
                await conn.execute(QUERIES["set_backfill_run"], backfill_id, sort_ordinal, record.pk)
        return record, created is not None
