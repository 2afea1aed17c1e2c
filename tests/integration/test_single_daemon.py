"""One daemon per database: a second one refuses to start, a dead one does not block a restart."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.daemon import _refuse_if_another_daemon_runs
from orchestrator.errors import AnotherDaemonRunning
from storage.postgres import PostgresStateStore

pytestmark = pytest.mark.anyio

HOST = socket.gethostname()
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def live_orchestrator_pid() -> Iterator[int]:
    """A live process whose command line names the orchestrator, like a running daemon."""
    process = subprocess.Popen(["/bin/bash", "-c", "exec -a orchestrator-daemon sleep 300"])
    yield process.pid
    process.kill()
    process.wait()


async def test_a_live_daemon_on_this_host_blocks_a_second_one(
    store: PostgresStateStore, live_orchestrator_pid: int
) -> None:
    await store.register_daemon("first", HOST, live_orchestrator_pid, NOW)
    with pytest.raises(AnotherDaemonRunning, match=r"daemon first .* is running on this database"):
        await _refuse_if_another_daemon_runs(store, "second", HOST, NOW)


async def test_a_dead_daemon_on_this_host_does_not_block_a_restart(store: PostgresStateStore) -> None:
    dead_pid = 999_999_999  # beyond pid_max: no such process
    await store.register_daemon("killed", HOST, dead_pid, NOW)
    await _refuse_if_another_daemon_runs(store, "restarted", HOST, NOW)


async def test_a_reused_pid_that_is_not_an_orchestrator_does_not_block(store: PostgresStateStore) -> None:
    await store.register_daemon("killed", HOST, os.getppid(), NOW)  # pytest's parent: alive, not ours
    await _refuse_if_another_daemon_runs(store, "restarted", HOST, NOW)


@pytest.mark.parametrize(("age", "blocks"), [(timedelta(seconds=5), True), (timedelta(minutes=5), False)])
async def test_a_daemon_on_another_host_blocks_while_its_heartbeat_is_fresh(
    store: PostgresStateStore, age: timedelta, blocks: bool
) -> None:
    await store.register_daemon("elsewhere", "another-host", 1, NOW - age)
    if blocks:
        with pytest.raises(AnotherDaemonRunning, match="another-host"):
            await _refuse_if_another_daemon_runs(store, "here", HOST, NOW)
    else:
        await _refuse_if_another_daemon_runs(store, "here", HOST, NOW)


async def test_our_own_row_from_before_a_restart_does_not_block(
    store: PostgresStateStore, live_orchestrator_pid: int
) -> None:
    await store.register_daemon("orchestrator-1", HOST, live_orchestrator_pid, NOW)
    await _refuse_if_another_daemon_runs(store, "orchestrator-1", HOST, NOW)


async def test_deregistered_daemons_are_gone(store: PostgresStateStore) -> None:
    await store.register_daemon("a", HOST, 1, NOW)
    await store.register_daemon("b", HOST, 2, NOW)
    await store.deregister_daemon("a")
    assert [d.daemon_id for d in await store.list_daemons()] == ["b"]
