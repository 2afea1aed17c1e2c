"""End to end: the daemon watches its database lock; if another daemon takes it while the
lock's connection is down, this one stops with a clear message instead of running on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from storage.postgres import DAEMON_LOCK_KEY
from storage.sql import QUERIES
from tests.e2e.harness import Daemon, wait_for
from tests.pgserver import PgServer, quote_identifier

pytestmark = pytest.mark.e2e

#: the store's own query for the session holding the daemon lock
HOLDER = QUERIES["daemon_lock_holder"]


async def _cut_and_take(server: PgServer, dsn: str, *, take: bool) -> asyncpg.Connection:
    """End the daemon's lock session; with `take`, hold the lock before the daemon can retake it
    (new connections to the database are refused meanwhile, so the daemon's retake waits)."""
    admin = await asyncpg.connect(dsn)
    gate = await asyncpg.connect(server.admin_dsn)
    database = quote_identifier(await admin.fetchval("SELECT current_database()"))
    session = await admin.fetchval(HOLDER, DAEMON_LOCK_KEY)
    assert session is not None, "the daemon holds no lock"
    await gate.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", session)
        if take:
            assert await admin.fetchval("SELECT pg_try_advisory_lock($1::bigint)", DAEMON_LOCK_KEY)
    finally:
        await gate.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        await gate.close()
    return admin


def test_a_daemon_whose_lock_was_taken_while_its_connection_was_down_stops(
    make_daemon: Callable[..., Daemon], database_dsn: str, pg_server: PgServer
) -> None:
    daemon = make_daemon()
    daemon.start()
    process = daemon.process
    assert process is not None

    async def take_the_lock_and_wait_for_the_exit() -> int:
        admin = await _cut_and_take(pg_server, database_dsn, take=True)
        try:  # the lock stays taken (by `admin`) until the daemon has stopped
            return await asyncio.to_thread(process.wait, 30)
        finally:
            await admin.close()

    assert asyncio.run(take_the_lock_and_wait_for_the_exit()) == 1
    daemon.process = None
    assert "another daemon took the database's daemon lock" in daemon.logs()


def test_a_daemon_whose_lock_connection_dropped_takes_the_lock_again_and_runs_on(
    make_daemon: Callable[..., Daemon], database_dsn: str, pg_server: PgServer
) -> None:
    daemon = make_daemon()
    daemon.start()

    async def cut() -> None:
        admin = await _cut_and_take(pg_server, database_dsn, take=False)
        await admin.close()

    asyncio.run(cut())
    wait_for(lambda: "the daemon lock is held again" in daemon.logs(), 30, "the lock to be taken again")

    async def holder() -> int | None:
        admin = await asyncpg.connect(database_dsn)
        try:
            pid: int | None = await admin.fetchval(HOLDER, DAEMON_LOCK_KEY)
            return pid
        finally:
            await admin.close()

    assert asyncio.run(holder()) is not None
    assert daemon.get("/health").status == 200
