"""`PostgresReplicaStore`: what the replicas share in the state store beyond runs and leases —
the secret that signs the requests one replica forwards to another (a mixin
`PostgresStateStore` inherits). The SQL is in storage/sql/replicas.sql.
"""

from __future__ import annotations

import secrets

import asyncpg

from storage.sql import QUERIES

#: bytes of randomness in the replicas' secret (hex-encoded in the database)
SECRET_BYTES = 32


class PostgresReplicaStore:
    """The replicas' shared secret (see `orchestrator.ports.StateStore.replica_secret`)."""

    _pool: asyncpg.Pool

    async def replica_secret(self) -> bytes:
        candidate = secrets.token_hex(SECRET_BYTES)
        stored: str = await self._pool.fetchval(QUERIES["ensure_replica_secret"], candidate)
        return bytes.fromhex(stored)
