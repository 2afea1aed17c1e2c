"""`PostgresOwnershipStore`: replicas and run ownership on PostgreSQL (a mixin `PostgresStateStore`
inherits; the SQL is in storage/sql/ownership.sql, the schema in migration 0009).

A replica's lease is its `daemon` row's `lease_until`, always computed with the database's
`now()`. Runs are owned through `dag_run.owner`: admission takes waiting runs and makes them
running and owned in one transaction, serialised per DAG on the DAG's row so that two replicas
never both take its last free run slot; a survivor claims the running runs of a replica whose
lease ran out with `FOR UPDATE SKIP LOCKED`, no more than its fair share at a time. A claimed run
comes back with everything needed to drive it, read in the claim's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg

from orchestrator.core.records import DaemonRecord
from orchestrator.ports import ActiveRun, RunOwner
from storage.sql import QUERIES

logger = logging.getLogger(__name__)


class PgListener:
    """A LISTEN connection of its own; `on_lost` is called once if it ends while open."""

    def __init__(self, conn: asyncpg.Connection, on_lost: Callable[[], None]) -> None:
        self._conn = conn
        self._on_lost = on_lost
        self._closing = False
        conn.add_termination_listener(self._ended)

    def _ended(self, conn: object) -> None:
        if not self._closing:
            logger.warning("the LISTEN connection to PostgreSQL ended")
            self._on_lost()

    async def close(self) -> None:
        self._closing = True
        if not self._conn.is_closed():
            await self._conn.close()


class PostgresOwnershipStore:
    """The replica and ownership methods of `PostgresStateStore` (which provides `_pool`, `_dsn`,
    `_connect_timeout`, `_owner` and `_load_runs_by_pk`)."""

    _pool: asyncpg.Pool
    _dsn: str
    _connect_timeout: float
    _owner: str | None
    _sessions: set[int]

    async def _load_runs_by_pk(self, conn: asyncpg.Connection, pks: Sequence[int]) -> list[ActiveRun]:
        raise NotImplementedError  # PostgresStateStore's

    def set_owner(self, daemon_id: str) -> None:
        self._owner = daemon_id

    def _me(self) -> str:
        if self._owner is None:
            raise RuntimeError("the store has no owner: call set_owner(daemon_id) before claiming runs")
        return self._owner

    async def register_daemon(
        self,
        daemon_id: str,
        hostname: str,
        pid: int,
        now: Any = None,
        *,
        version: str = "",
        lease_seconds: float = 10.0,
    ) -> None:
        await self._pool.execute(QUERIES["register_daemon"], daemon_id, hostname, pid, lease_seconds, version)

    async def set_daemon_api_url(self, daemon_id: str, api_url: str) -> None:
        await self._pool.execute(QUERIES["set_daemon_api_url"], daemon_id, api_url)

    async def renew_lease(self, daemon_id: str, lease_seconds: float) -> bool:
        return await self._pool.fetchval(QUERIES["renew_lease"], daemon_id, lease_seconds) is not None

    async def expire_daemon(self, daemon_id: str) -> None:
        await self._pool.execute(QUERIES["expire_daemon"], daemon_id)

    async def retire_daemon(self, daemon_id: str) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(QUERIES["release_runs_of_daemon"], daemon_id)
            await conn.execute(QUERIES["deregister_daemon"], daemon_id)
        return int(status.split()[-1])

    async def list_daemons(self) -> list[DaemonRecord]:
        rows = await self._pool.fetch(QUERIES["list_daemons"])
        return [DaemonRecord(**dict(row)) for row in rows]

    async def deregister_daemon(self, daemon_id: str) -> None:
        await self._pool.execute(QUERIES["deregister_daemon"], daemon_id)

    async def admit_queued_runs(
        self, dag_id: str, limit: int, exclude: Sequence[int] = ()
    ) -> list[ActiveRun]:
        async with self._pool.acquire() as conn, conn.transaction():
            pks = await self._admit_waiting(conn, dag_id, limit, exclude)
            return await self._load_runs_by_pk(conn, pks) if pks else []

    async def _admit_waiting(
        self, conn: asyncpg.Connection, dag_id: str, limit: int, exclude: Sequence[int]
    ) -> list[int]:
        """Inside the caller's transaction: lock the DAG's row, then start and own up to `limit`
        of its waiting runs as far as its room and pause allow; their pks."""
        dag = await conn.fetchrow(QUERIES["lock_dag_for_admission"], dag_id)
        if dag is None or dag["is_paused"]:
            return []
        query = QUERIES["admit_queued_runs"]
        rows = await conn.fetch(query, dag_id, self._me(), limit, list(exclude), dag["max_active_runs"])
        return [row[0] for row in rows]

    async def dags_with_waiting_runs(self) -> list[str]:
        return [row[0] for row in await self._pool.fetch(QUERIES["dags_with_waiting_runs"], self._me())]

    async def claim_orphaned_runs(
        self, limit: int, held: Sequence[int] = (), *, take_expired: bool = True
    ) -> list[ActiveRun]:
        me = self._me()
        async with self._pool.acquire() as conn, conn.transaction():
            own = await conn.fetch(QUERIES["claim_own_runs"], me, list(held))
            others = await conn.fetch(QUERIES["claim_orphaned_runs"], me, limit, take_expired)
            pks = sorted({row[0] for row in own} | {row[0] for row in others})
            return await self._load_runs_by_pk(conn, pks) if pks else []

    async def load_runs(self, run_pks: Sequence[int]) -> list[ActiveRun]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await self._load_runs_by_pk(conn, run_pks)

    async def claim_run(self, run_pk: int) -> RunOwner | None:
        me = self._me()
        if await self._pool.fetchval(QUERIES["claim_run"], me, run_pk) is not None:
            return None
        owner = await self.run_owner(run_pk)
        if owner is None:  # its owner died or let go between the two statements: try once more
            if await self._pool.fetchval(QUERIES["claim_run"], me, run_pk) is not None:
                return None
            owner = await self.run_owner(run_pk)
        return owner

    async def run_owner(self, run_pk: int) -> RunOwner | None:
        row = await self._pool.fetchrow(QUERIES["run_owner"], run_pk, self._owner or "")
        return None if row is None else RunOwner(row["daemon_id"], row["hostname"], row["api_url"])

    async def owned_runs(self, run_pks: Sequence[int]) -> set[int]:
        rows = await self._pool.fetch(QUERIES["owned_runs"], self._me(), list(run_pks))
        return {row[0] for row in rows}

    async def listen(
        self, channels: Mapping[str, Callable[[str], None]], on_lost: Callable[[], None]
    ) -> PgListener:
        try:
            conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ConnectionError(f"cannot open the LISTEN connection: {exc}") from exc
        try:
            for channel, callback in channels.items():
                await conn.add_listener(channel, _payload_to(callback, self._sessions))
        except BaseException:
            conn.terminate()
            raise
        return PgListener(conn, on_lost)


def _payload_to(callback: Callable[[str], None], own: set[int]) -> Callable[..., None]:
    def deliver(_conn: object, pid: int, _channel: str, payload: str) -> None:
        if pid in own:  # sent by this store's own pool: this replica acted on it already
            return
        try:
            callback(payload)
        except Exception:
            logger.exception("a NOTIFY handler failed")

    return deliver
