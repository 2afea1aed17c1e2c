"""The `orchestrator.ports.ActionStore` part of the state store: what the API's operations on runs
and DAGs read (which task instances to clear) and what they delete (a mixin `PostgresStateStore`
inherits). Their state changes are not here: they are whole rows that the engine commits through
its writer, so they are ordered with every other change the engine makes. The SQL lives in
storage/sql/actions.sql.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from orchestrator.core.records import RunRecord, TaskInstanceRecord
from storage.sql import QUERIES


class PostgresActionStore:
    """The ActionStore methods of `PostgresStateStore` (which provides `_pool`)."""

    _pool: asyncpg.Pool

    async def list_runs_between(
        self, dag_id: str, run_id: str | None, start: datetime | None, end: datetime | None
    ) -> list[RunRecord]:
        from storage.postgres import decode_run  # postgres imports this module

        rows = await self._pool.fetch(QUERIES["list_runs_for_clear"], dag_id, run_id, start, end)
        return [decode_run(row) for row in rows]

    async def list_task_instances_of(self, run_pks: Sequence[int]) -> list[TaskInstanceRecord]:
        from storage.postgres import decode_task_instance

        if not run_pks:
            return []
        rows = await self._pool.fetch(QUERIES["list_task_instances_of_runs"], list(run_pks))
        return [decode_task_instance(row) for row in rows]

    async def delete_finished_run(self, run_pk: int) -> bool:
        return await self._pool.fetchval(QUERIES["delete_finished_run"], run_pk) is not None

    async def delete_dag_records(self, dag_id: str) -> tuple[bool, int]:
        async with self._pool.acquire() as conn, conn.transaction():
            # the DAG's row locked first: a run created meanwhile waits for this transaction
            existed = await conn.fetchval(QUERIES["lock_dag_for_delete"], dag_id) is not None
            active: int = await conn.fetchval(QUERIES["count_active_runs_of_dag"], dag_id)
            if active:
                return existed, active
            had_runs = await conn.execute(QUERIES["delete_runs_of_dag"], dag_id)
            await conn.execute(QUERIES["delete_backfills_of_dag"], dag_id)
            await conn.execute(QUERIES["delete_asset_queue_of_dag"], dag_id)
            await conn.execute(QUERIES["delete_versions_of_dag"], dag_id)
            await conn.execute(QUERIES["delete_dag_row"], dag_id)
        return existed or had_runs != "DELETE 0", 0
