"""The `orchestrator.ports.ListingStore` part of the state store: the API's filtered, ordered
lists of DAGs, runs and task instances, a task instance's XCom entries, and whether a file is a
known DAG file (a mixin `PostgresStateStore` inherits).

Each list is one page and its total, read in one repeatable-read transaction so that the two
agree. The SQL lives in storage/sql/listing.sql; rows are decoded by column name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import asyncpg

from orchestrator.core.listing import DagQuery, Order, Page, Range, RunQuery, TaskInstanceQuery, XComEntry
from orchestrator.core.records import DagRecord, ImportErrorRecord, RunRecord, TaskInstanceRecord
from orchestrator.core.states import RunState, TaskState
from storage.sql import QUERIES

_DEFAULT_MAX_ACTIVE = 16
_TI_FIELDS = tuple(f.name for f in dataclasses.fields(TaskInstanceRecord))
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunRecord))


def _array(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


def _range(bounds: Range) -> tuple[Any, Any]:
    return bounds.gte, bounds.lte


def _like_literal(text: str) -> str:
    """`text` for ILIKE, matched literally (ILIKE's default escape character is the backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def run_from_row(row: asyncpg.Record, prefix: str = "") -> RunRecord:
    values = {name: row[prefix + name] for name in _RUN_FIELDS}
    values["state"] = RunState(values["state"])
    return RunRecord(**values)


def task_instance_from_row(row: asyncpg.Record) -> TaskInstanceRecord:
    values = {name: row[name] for name in _TI_FIELDS}
    values["state"] = TaskState(values["state"])
    return TaskInstanceRecord(**values)


def _or_default(limit: int | None) -> int:
    # DagSpec's default, for rows whose nullable max_active_* columns were written by hand
    return _DEFAULT_MAX_ACTIVE if limit is None else limit


def dag_from_row(row: asyncpg.Record) -> DagRecord:
    return DagRecord(
        dag_id=row["dag_id"],
        fileloc=row["fileloc"],
        is_paused=row["is_paused"],
        is_active=row["is_active"],
        schedule=row["schedule"],
        description=row["description"],
        max_active_runs=_or_default(row["max_active_runs"]),
        max_active_tasks=_or_default(row["max_active_tasks"]),
        tags=tuple(row["tags"]),
        last_parsed_time=row["last_parsed_time"],
        spec=row["spec"],
        owners=tuple(row["owners"]),
        has_import_errors=row["has_import_errors"],
        next_dagrun=row["next_dagrun"],
        next_dagrun_data_interval_start=row["next_dagrun_data_interval_start"],
        next_dagrun_data_interval_end=row["next_dagrun_data_interval_end"],
        next_dagrun_create_after=row["next_dagrun_create_after"],
    )


class PostgresListingStore:
    """The ListingStore methods of `PostgresStateStore` (which provides `_pool`)."""

    _pool: asyncpg.Pool

    async def _page_and_total(
        self, page_query: str, count_query: str, filters: list[Any], order: str, limit: int, offset: int
    ) -> tuple[list[asyncpg.Record], int]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(QUERIES[page_query], *filters, order, limit, offset)
            total = await conn.fetchval(QUERIES[count_query], *filters)
        return list(rows), int(total)

    async def find_runs(self, query: RunQuery) -> tuple[list[RunRecord], int]:
        filters = [
            _array(query.dag_ids),
            _array(query.states),
            _array(query.run_types),
            *_range(query.execution_date),
            *_range(query.start_date),
            *_range(query.end_date),
            *_range(query.updated_at),
        ]
        rows, total = await self._page_and_total(
            "find_runs", "count_found_runs", filters, query.order.key, query.page.limit, query.page.offset
        )
        return [run_from_row(row) for row in rows], total

    async def find_task_instances(
        self, query: TaskInstanceQuery
    ) -> tuple[list[tuple[TaskInstanceRecord, RunRecord]], int]:
        filters = [
            _array(query.dag_ids),
            _array(query.run_ids),
            _array(query.task_ids),
            _array(query.states),
            _array(query.pools),
            _array(query.queues),
            *_range(query.execution_date),
            *_range(query.start_date),
            *_range(query.end_date),
            *_range(query.updated_at),
            *_range(query.duration),
        ]
        rows, total = await self._page_and_total(
            "find_task_instances",
            "count_found_task_instances",
            filters,
            query.order.key,
            query.page.limit,
            query.page.offset,
        )
        return [(task_instance_from_row(row), run_from_row(row, "r_")) for row in rows], total

    async def find_dags(self, query: DagQuery) -> tuple[list[DagRecord], int]:
        pattern = None if query.dag_id_pattern is None else _like_literal(query.dag_id_pattern)
        filters = [query.only_active, query.paused, _array(query.tags), pattern]
        rows, total = await self._page_and_total(
            "find_dags", "count_found_dags", filters, query.order.key, query.page.limit, query.page.offset
        )
        return [dag_from_row(row) for row in rows], total

    async def find_xcom_entries(
        self,
        run_pk: int,
        task_id: str,
        map_index: int | None,
        key: str | None,
        limit: int,
        offset: int,
    ) -> tuple[list[XComEntry], int]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            filters = (run_pk, task_id, map_index, key)
            rows = await conn.fetch(QUERIES["find_xcom_entries"], *filters, limit, offset)
            total = await conn.fetchval(QUERIES["count_xcom_entries"], *filters)
        entries = [
            XComEntry(
                dag_id=row["dag_id"],
                run_id=row["run_id"],
                logical_date=row["logical_date"],
                task_id=row["task_id"],
                map_index=row["map_index"],
                key=row["key"],
                value=row["value"],
                timestamp=row["timestamp"],
            )
            for row in rows
        ]
        return entries, int(total)

    async def find_import_errors(self, order: Order, page: Page) -> tuple[list[ImportErrorRecord], int]:
        rows, total = await self._page_and_total(
            "find_import_errors", "count_import_errors", [], order.key, page.limit, page.offset
        )
        errors = [
            ImportErrorRecord(
                import_error_id=row["id"],
                filename=row["filename"],
                message=row["message"],
                timestamp=row["timestamp"],
            )
            for row in rows
        ]
        return errors, total

    async def is_dag_file(self, fileloc: str) -> bool:
        return bool(await self._pool.fetchval(QUERIES["is_dag_file"], fileloc))
