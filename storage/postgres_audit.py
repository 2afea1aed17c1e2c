"""`PostgresAuditStore`: the `orchestrator.ports.AuditStore` part of the state store, the API's
audit trail (Airflow's event log), on PostgreSQL (a mixin `PostgresStateStore` inherits).

One INSERT per mutating request, with the run's logical date looked up in the same statement;
listing is one page and its count in one read-only snapshot. The SQL is in storage/sql/audit.sql.
"""

from __future__ import annotations

import asyncpg

from orchestrator.ports import EventLogEntry, EventLogQuery
from storage.sql import QUERIES


def _entry(row: asyncpg.Record) -> EventLogEntry:
    return EventLogEntry(
        when=row["dttm"],
        event=row["event"],
        owner=row["owner"],
        dag_id=row["dag_id"],
        task_id=row["task_id"],
        run_id=row["run_id"],
        map_index=row["map_index"],
        try_number=row["try_number"],
        extra=row["extra"],
        event_log_id=row["id"],
        execution_date=row["execution_date"],
    )


def _filters(query: EventLogQuery) -> tuple[object, ...]:
    return (
        query.dag_id,
        query.task_id,
        query.run_id,
        query.map_index,
        query.try_number,
        query.event,
        query.owner,
        query.before,
        query.after,
        list(query.included_events),
        list(query.excluded_events),
    )


class PostgresAuditStore:
    """The audit trail methods of the store (see `orchestrator.ports.AuditStore`)."""

    _pool: asyncpg.Pool

    async def record_event_log(self, entry: EventLogEntry) -> None:
        await self._pool.execute(
            QUERIES["insert_event_log"],
            entry.when,
            entry.event,
            entry.owner,
            entry.dag_id,
            entry.task_id,
            entry.run_id,
            entry.map_index,
            entry.try_number,
            entry.extra,
        )

    async def list_event_logs(
        self, query: EventLogQuery, order_by: str, limit: int, offset: int
    ) -> tuple[list[EventLogEntry], int]:
        filters = _filters(query)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(QUERIES["list_event_logs"], *filters, order_by, limit, offset)
            total = await conn.fetchval(QUERIES["count_event_logs"], *filters)
        return [_entry(row) for row in rows], total

    async def get_event_log(self, event_log_id: int) -> EventLogEntry | None:
        row = await self._pool.fetchrow(QUERIES["get_event_log"], event_log_id)
        return None if row is None else _entry(row)
