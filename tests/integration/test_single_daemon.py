"""One daemon per database: the daemon lock, held for a daemon's lifetime, released with it."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import asyncpg
import pytest

from orchestrator.daemon import _refuse_if_another_daemon_runs
from orchestrator.errors import AnotherDaemonRunning
from storage.postgres import PostgresStateStore

pytestmark = pytest.mark.anyio

HOST = socket.gethostname()
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def test_a_second_daemon_is_refused_and_named_while_the_first_holds_the_lock(
    store: PostgresStateStore, database_dsn: str
) -> None:
    await _refuse_if_another_daemon_runs(store, "first")
    await store.register_daemon("first", HOST, 4242, NOW)
    second = await PostgresStateStore.connect(database_dsn)
    try:
        with pytest.raises(AnotherDaemonRunning, match=r"daemon first \(pid 4242 on .*\) is running"):
            await _refuse_if_another_daemon_runs(second, "second")
    finally:
        await second.close()


async def test_the_lock_goes_with_the_first_daemon_however_it_ends(
    store: PostgresStateStore, database_dsn: str
) -> None:
    first = await PostgresStateStore.connect(database_dsn)
    assert await first.try_lock_single_daemon()
    assert not await store.try_lock_single_daemon()
    # a SIGKILLed daemon: the server drops its connections, and with them the lock
    admin = await asyncpg.connect(database_dsn)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query ILIKE '%pg_try_advisory_lock%'"
        )
    finally:
        await admin.close()
    assert await store.try_lock_single_daemon()
    first._daemon_lock_conn = None  # its connection is gone already
    await first.close()


async def test_a_cleanly_closed_store_releases_the_lock(store: PostgresStateStore, database_dsn: str) -> None:
    first = await PostgresStateStore.connect(database_dsn)
    assert await first.try_lock_single_daemon()
    await first.close()
    assert await store.try_lock_single_daemon()


async def test_the_lock_holder_forgets_the_rows_of_dead_daemons(store: PostgresStateStore) -> None:
    await store.register_daemon("killed-long-ago", "elsewhere", 1, NOW)
    await store.register_daemon("me", HOST, 2, NOW)
    await _refuse_if_another_daemon_runs(store, "me")
    assert [d.daemon_id for d in await store.list_daemons()] == ["me"]


async def test_deregistered_daemons_are_gone(store: PostgresStateStore) -> None:
    await store.register_daemon("a", HOST, 1, NOW)
    await store.register_daemon("b", HOST, 2, NOW)
    await store.deregister_daemon("a")
    assert [d.daemon_id for d in await store.list_daemons()] == ["b"]
