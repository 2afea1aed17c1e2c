"""`PostgresWebhookStore`: the `orchestrator.ports.WebhookStore` half of the state store.

A mixin of `storage.postgres.PostgresStateStore` (which owns the pool): the webhook delivery log,
written in batches by one unnest statement, and the body-hash claims that make a delivery without
a delivery id exactly-once within its webhook's window. The SQL is in storage/sql/webhooks.sql.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from orchestrator.ports import WebhookDelivery
from storage.sql import QUERIES


def _delivery(row: asyncpg.Record) -> WebhookDelivery:
    return WebhookDelivery(
        webhook=row["webhook"],
        delivery_id=row["delivery_id"],
        received_at=row["received_at"],
        status=row["status"],
        created=row["created"],
        dag_id=row["dag_id"],
        run_id=row["run_id"],
        asset_uri=row["asset_uri"],
        asset_event_id=row["asset_event_id"],
        reason=row["reason"],
    )


class PostgresWebhookStore:
    """The webhook methods of the store (see `orchestrator.ports.WebhookStore`)."""

    _pool: asyncpg.Pool

    async def record_webhook_deliveries(self, deliveries: Sequence[WebhookDelivery]) -> None:
        if not deliveries:
            return
        await self._pool.execute(
            QUERIES["insert_webhook_deliveries"],
            [d.webhook for d in deliveries],
            [d.delivery_id for d in deliveries],
            [d.received_at for d in deliveries],
            [d.status for d in deliveries],
            [d.created for d in deliveries],
            [d.dag_id for d in deliveries],
            [d.run_id for d in deliveries],
            [d.asset_uri for d in deliveries],
            [d.asset_event_id for d in deliveries],
            [d.reason for d in deliveries],
        )

    async def list_webhook_deliveries(
        self, webhook: str, limit: int, offset: int
    ) -> tuple[list[WebhookDelivery], int]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(QUERIES["list_webhook_deliveries"], webhook, limit, offset)
            total = await conn.fetchval(QUERIES["count_webhook_deliveries"], webhook)
        return [_delivery(row) for row in rows], total

    async def claim_webhook_body(
        self, webhook: str, body_sha256: str, key: str, now: datetime, expires_at: datetime
    ) -> tuple[str, bool]:
        claimed = await self._pool.fetchval(
            QUERIES["claim_webhook_body"], webhook, body_sha256, key, expires_at, now
        )
        if claimed is not None:
            return claimed, True
        # Still in force: this statement's fresh snapshot sees the claim even if a concurrent
        # delivery committed it after the INSERT's snapshot was taken.
        earlier = await self._pool.fetchval(QUERIES["get_webhook_body_claim"], webhook, body_sha256)
        return (earlier if earlier is not None else key), False

    async def prune_webhook_deliveries(self, before: datetime, now: datetime) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(QUERIES["prune_webhook_deliveries"], before)
            await conn.execute(QUERIES["prune_webhook_dedup"], now)
        return int(status.split()[-1])
