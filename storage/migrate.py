"""Schema migrations: numbered, append-only .sql files applied in order, each exactly once.

The database records what it has applied in `schema_migrations`, so a daemon of any version
can tell what is missing. Several daemons starting at once on one database queue on an advisory
lock instead of racing each other's DDL. Each migration runs in its own transaction: a failed
one leaves the database at the previous version, never half-way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from storage.errors import MigrationError
from storage.sql import QUERIES

#: pg_advisory_lock key of migrations: any fixed 64-bit value no other code uses ("orchmigr").
MIGRATION_LOCK_KEY = 0x6F7263686D696772
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: storage/migrations/NNNN_name.sql."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration shipped with this package, in version order."""
    migrations: list[Migration] = []
    for entry in resources.files("storage").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        sql = entry.read_text(encoding="utf-8")
        migrations.append(Migration(int(match.group("version")), match.group("name"), sql))
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"Two migration files share a version number ({versions}): renumber one")
    return migrations


async def applied_versions(conn: asyncpg.Connection) -> list[int]:
    """The versions this database has applied (empty for a new database)."""
    if not await conn.fetchval(QUERIES["migrations_table_exists"]):
        return []
    return [row[0] for row in await conn.fetch(QUERIES["applied_migrations"])]


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply the pending migrations in order, each in its own transaction; return their versions."""
    migrations = load_migrations()
    await conn.execute(QUERIES["migration_lock"], MIGRATION_LOCK_KEY)
    try:
        applied = set(await applied_versions(conn))
        known = {migration.version for migration in migrations}
        unknown = sorted(applied - known)
        if unknown:
            raise MigrationError(
                f"The database has schema versions {unknown} that this orchestrator does not know "
                f"(it knows up to {max(known, default=0)}): a newer orchestrator migrated it. "
                "Upgrade this orchestrator, or point it at another database"
            )
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(QUERIES["record_migration"], migration.version, migration.name)
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"Migration {migration.version:04d}_{migration.name}.sql failed: {exc}. "
                    "The database stays at the previous version; fix the cause and restart"
                ) from exc
            done.append(migration.version)
        return done
    finally:
        await conn.execute(QUERIES["migration_unlock"], MIGRATION_LOCK_KEY)


async def migrate_dsn(dsn: str, connect_timeout: float = 60.0) -> list[int]:
    """Connect to `dsn` (waiting at most `connect_timeout` s), migrate, disconnect; return the
    versions applied."""
    from storage.postgres import connect_failure

    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    except (OSError, asyncpg.PostgresError) as exc:  # TimeoutError is an OSError
        raise MigrationError(connect_failure(dsn, exc, connect_timeout, "migrating the database")) from exc
    try:
        return await migrate(conn)
    finally:
        await conn.close()
