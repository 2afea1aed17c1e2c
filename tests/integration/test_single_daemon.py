"""One daemon per database: the daemon lock, held for a daemon's lifetime, released with it."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

import anyio
import asyncpg
import pytest

from orchestrator.daemon import _refuse_if_another_daemon_runs
from orchestrator.daemon_lock import DaemonLock
from orchestrator.engine.clock import SystemClock
from orchestrator.engine.timers import LoopTimers
from orchestrator.errors import AnotherDaemonRunning
from storage.postgres import DAEMON_LOCK_KEY, PostgresStateStore

pytestmark = pytest.mark.anyio

HOST = socket.gethostname()
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def test_a_second_daemon_is_refused_and_named_while_the_first_holds_the_lock(
    store: PostgresStateStore, database_dsn: str
) -> None:
    await _refuse_if_another_daemon_runs(store, _lock(store, []), "first")
    await store.register_daemon("first", HOST, 4242, NOW)
    second = await PostgresStateStore.connect(database_dsn)
    try:
        with pytest.raises(AnotherDaemonRunning, match=r"daemon first \(pid 4242 on .*\) is running"):
            await _refuse_if_another_daemon_runs(second, _lock(second, []), "second")
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
    await _refuse_if_another_daemon_runs(store, _lock(store, []), "me")
    assert [d.daemon_id for d in await store.list_daemons()] == ["me"]


async def test_deregistered_daemons_are_gone(store: PostgresStateStore) -> None:
    await store.register_daemon("a", HOST, 1, NOW)
    await store.register_daemon("b", HOST, 2, NOW)
    await store.deregister_daemon("a")
    assert [d.daemon_id for d in await store.list_daemons()] == ["b"]


def _lock(store: PostgresStateStore, taken_over: list[str]) -> DaemonLock:
    return DaemonLock(store, LoopTimers(SystemClock()), on_taken_over=taken_over.append)


async def _lock_session(store: PostgresStateStore) -> int:
    pid = await store.daemon_lock_holder()
    assert pid is not None, "nobody holds the daemon lock"
    return pid


async def test_a_lost_lock_connection_is_noticed_and_the_lock_taken_again(
    store: PostgresStateStore, database_dsn: str
) -> None:
    taken_over: list[str] = []
    lock = _lock(store, taken_over)
    assert await lock.acquire()
    admin = await asyncpg.connect(database_dsn)
    try:
        first_session = await _lock_session(store)
        async with anyio.create_task_group() as group:
            group.start_soon(lock.guard)
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", first_session)
            with anyio.fail_after(10):
                while lock.retaken == 0:
                    await anyio.sleep(0.01)  # pacing between checks of a condition
            group.cancel_scope.cancel()
        second_session = await _lock_session(store)
    finally:
        await admin.close()
    assert second_session != first_session and taken_over == []
    other = await PostgresStateStore.connect(database_dsn)
    try:
        assert not await other.try_lock_single_daemon()  # still ours
    finally:
        await other.close()


async def test_a_lock_taken_by_another_daemon_while_the_connection_was_down_stops_this_one(
    store: PostgresStateStore, database_dsn: str
) -> None:
    taken_over: list[str] = []
    lock = _lock(store, taken_over)
    assert await lock.acquire()
    admin = await asyncpg.connect(database_dsn)
    try:
        session = await _lock_session(store)
        # the session ends and, in the same statement, another one takes the lock (before the
        # guard runs: left running, it can win this race and take the lock back first)
        assert await admin.fetchval(
            "SELECT CASE WHEN pg_terminate_backend($1, 5000) "
            "THEN pg_try_advisory_lock($2::bigint) ELSE false END",
            session,
            DAEMON_LOCK_KEY,
        )
        async with anyio.create_task_group() as group:
            group.start_soon(lock.guard)
            with anyio.fail_after(10):
                while not taken_over:
                    await anyio.sleep(0.01)  # pacing between checks of a condition
            group.cancel_scope.cancel()
    finally:
        await admin.close()
    assert "another daemon took the database's daemon lock" in taken_over[0]
    assert lock.retaken == 0


async def test_a_lock_connection_that_stops_answering_is_cut_and_the_lock_taken_again(
    store: PostgresStateStore, database_dsn: str
) -> None:
    taken_over: list[str] = []
    lock = _lock(store, taken_over)
    assert await lock.acquire()
    await lock.check()
    assert lock.retaken == 0
    # the lock's session is stuck inside a statement, so it cannot answer the heartbeat's check
    blocker = await asyncpg.connect(database_dsn)
    await blocker.execute("SELECT pg_advisory_lock(42)")
    conn = store._daemon_lock_conn
    assert conn is not None
    stuck = asyncio.ensure_future(conn.execute("SELECT pg_advisory_lock(42)"))
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(lock.guard)
            await lock.check()  # cut: the guard now tries to take the lock again
            assert conn.is_closed()
            # the stuck session still holds the lock until it ends: the guard waits for that,
            # it does not take our own former session for another daemon
            await blocker.close()
            with anyio.fail_after(20):
                while lock.retaken == 0:
                    await anyio.sleep(0.01)  # pacing between checks of a condition
            group.cancel_scope.cancel()
    finally:
        stuck.cancel()
        if not blocker.is_closed():
            await blocker.close()
    assert taken_over == []
