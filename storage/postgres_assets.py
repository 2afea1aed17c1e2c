"""The `orchestrator.ports.AssetStore` part of the state store: assets, their events, the consumer
queues and asset-triggered runs, on PostgreSQL (a mixin `PostgresStateStore` inherits).

Exactly-once is the database's business here. An event and the queue rows of every DAG
scheduled on its asset are written in one transaction (a task's outlets: the very transaction
of its success, see `write_asset_events`). An asset-triggered run is created in the transaction
that deletes the queue rows it consumes, and only if the delete removed exactly the rows the
evaluator read: a second evaluator (another daemon, or a retry after a restart) that read the
same rows deletes none of them and creates nothing. The SQL lives in storage/sql/assets.sql.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from orchestrator.core.records import (
    AssetEventRecord,
    AssetRecord,
    NewAssetEvent,
    NewRun,
    NewTaskInstance,
    RunRecord,
)
from orchestrator.ports import QueuedAsset
from storage.errors import StorageError
from storage.sql import QUERIES


class _Rollback(Exception):
    """Leaves a transaction without writing anything (the queue changed under the evaluator)."""


def _event(row: asyncpg.Record, offset: int = 0) -> AssetEventRecord:
    """An event from the columns id, asset_id, uri, extra, timestamp, source_* (from `offset`)."""
    created: tuple[tuple[str, str], ...] = ()
    if "created_dagruns" in row:
        created = tuple((pair[0], pair[1]) for pair in row["created_dagruns"])
    o = offset
    return AssetEventRecord(
        id=row[o],
        asset_id=row[o + 1],
        uri=row[o + 2],
        extra=row[o + 3],
        timestamp=row[o + 4],
        source_dag_id=row[o + 5],
        source_task_id=row[o + 6],
        source_run_id=row[o + 7],
        source_map_index=row[o + 8],
        created_dagruns=created,
    )


def _asset(row: asyncpg.Record) -> AssetRecord:
    return AssetRecord(
        id=row["id"],
        uri=row["uri"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        consuming_dags=tuple(row["consuming_dags"]),
        producing_tasks=tuple((pair[0], pair[1]) for pair in row["producing_tasks"]),
    )


def _event_columns(events: Sequence[NewAssetEvent]) -> list[list[Any]]:
    return [
        [e.uri for e in events],
        [orjson.dumps(e.extra).decode() for e in events],
        [e.timestamp for e in events],
        [e.source_dag_id for e in events],
        [e.source_task_id for e in events],
        [e.source_run_id for e in events],
        [e.source_map_index for e in events],
    ]


async def write_asset_events(conn: asyncpg.Connection, events: Sequence[NewAssetEvent]) -> None:
    """Within the caller's transaction: create unknown assets, insert the events, queue them for
    every active DAG scheduled on their assets (the commit of the tasks that produced them)."""
    await conn.execute(QUERIES["upsert_assets"], sorted({e.uri for e in events}))
    await conn.execute(QUERIES["insert_asset_events"], *_event_columns(events))


class PostgresAssetStore:
    """The AssetStore methods of `PostgresStateStore` (which provides `_pool`)."""

    _pool: asyncpg.Pool

    async def record_asset_event(
        self, event: NewAssetEvent, idempotency_key: str | None = None
    ) -> tuple[AssetEventRecord, bool, tuple[str, ...]]:
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(QUERIES["upsert_assets"], [event.uri])
                row = await conn.fetchrow(
                    QUERIES["insert_external_asset_event"],
                    event.uri,
                    event.extra,
                    event.timestamp,
                    idempotency_key,
                )
            created = row is not None
            if row is None:
                event_id = await conn.fetchval(QUERIES["asset_event_by_idempotency_key"], idempotency_key)
                queued_for: tuple[str, ...] = ()
            else:
                event_id, queued_for = row[0], tuple(row[1])
            recorded = await conn.fetchrow(QUERIES["get_asset_event"], event_id)
        if recorded is None:  # deleted meanwhile (its asset was): cannot happen in practice
            raise StorageError(f"the asset event {event_id} of {event.uri!r} vanished once recorded: retry")
        return _event(recorded), created, queued_for

    async def asset_queues(self, dag_ids: Sequence[str]) -> dict[str, list[QueuedAsset]]:
        rows = await self._pool.fetch(QUERIES["asset_queue_of_dags"], list(dag_ids))
        queues: dict[str, list[QueuedAsset]] = {}
        for row in rows:
            queues.setdefault(row["target_dag_id"], []).append(
                QueuedAsset(row["uri"], row["events"], row["last_event_id"], row["first_at"], row["last_at"])
            )
        return queues

    async def create_asset_triggered_run(
        self,
        run: NewRun,
        tasks: Sequence[NewTaskInstance],
        source_hash: str | None,
        consumed: Sequence[QueuedAsset],
    ) -> tuple[RunRecord, list[AssetEventRecord]] | None:
        from storage.postgres import insert_run_rows  # postgres imports this module

        if not consumed:
            raise ValueError("an asset-triggered run consumes at least one queued asset")
        up_to = max(item.last_event_id for item in consumed)
        expected = sum(item.events for item in consumed)
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                deleted = await conn.fetch(
                    QUERIES["consume_asset_queue"], run.dag_id, up_to, [item.uri for item in consumed]
                )
                if len(deleted) != expected:
                    raise _Rollback()
                event_ids = sorted(row[0] for row in deleted)
                created = await insert_run_rows(conn, run, tasks, source_hash)
                if created is None:  # the run id is taken: these events cannot have made it
                    raise _Rollback()
                await conn.execute(QUERIES["link_run_asset_events"], created.pk, event_ids)
                events = await conn.fetch(QUERIES["asset_events_by_id"], event_ids)
        except _Rollback:
            return None
        return created, [_event(row) for row in events]

    async def drop_stale_asset_queue(self, dag_id: str, uris: Sequence[str]) -> int:
        status = await self._pool.execute(QUERIES["delete_stale_asset_queue"], dag_id, list(uris))
        return int(status.split()[-1])

    async def triggering_asset_events(
        self, run_pks: Sequence[int] | None = None
    ) -> dict[int, list[AssetEventRecord]]:
        if run_pks is None:
            rows = await self._pool.fetch(QUERIES["triggering_asset_events_of_active_runs"])
        else:
            rows = await self._pool.fetch(QUERIES["triggering_asset_events_of_runs"], list(run_pks))
        events: dict[int, list[AssetEventRecord]] = {}
        for row in rows:
            events.setdefault(row[0], []).append(_event(row, offset=1))
        return events

    async def list_assets(
        self, limit: int, offset: int, uri_pattern: str | None = None
    ) -> tuple[list[AssetRecord], int]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(QUERIES["list_assets"], limit, offset, uri_pattern)
            total = await conn.fetchval(QUERIES["count_assets"], uri_pattern)
        return [_asset(row) for row in rows], total

    async def list_asset_events(
        self, limit: int, offset: int, uri: str | None = None, newest_first: bool = False
    ) -> tuple[list[AssetEventRecord], int]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(QUERIES["list_asset_events"], limit, offset, uri, newest_first)
            total = await conn.fetchval(QUERIES["count_asset_events"], uri)
        return [_event(row) for row in rows], total

    async def get_asset_event(self, event_id: int) -> AssetEventRecord | None:
        row = await self._pool.fetchrow(QUERIES["get_asset_event"], event_id)
        return None if row is None else _event(row)
