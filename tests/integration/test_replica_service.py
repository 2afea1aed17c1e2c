"""The replica service (orchestrator/replicas.py) on a real PostgreSQL: joining, refusing a
daemon it cannot share the database with, the lease, letting go when the lease may have run
out, claiming back after reconnecting. Time is the fake clock's; the database's clock decides
leases.

The engine beside it is a recorder of what the service asks of it (the engine's own part,
takeover and fencing, is proven with real engines in test_replica_engines.py).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import pytest

from orchestrator.errors import AnotherDaemonRunning
from orchestrator.replicas import Replica
from storage.postgres import LEGACY_DAEMON_LOCK_KEY, PostgresStateStore
from tests.fakes import FakeClock, FakeTimers

pytestmark = pytest.mark.anyio

HOST = socket.gethostname()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class _Admission:
    filled: list[str] = field(default_factory=list)

    def fill_from_store(self, dag_id: str) -> None:
        self.filled.append(dag_id)


@dataclass
class RecordingEngine:
    """What the replica service asked of the engine."""

    admission: _Admission = field(default_factory=_Admission)
    let_go: list[str] = field(default_factory=list)
    kept: int = 0
    takeovers: list[bool] = field(default_factory=list)
    waiting_filled: int = 0

    def let_go_all(self, why: str) -> int:
        self.let_go.append(why)
        return 1

    async def keep_owned_runs(self) -> int:
        self.kept += 1
        return 0

    async def take_over(self, *, take_expired: bool) -> int:
        self.takeovers.append(take_expired)
        return 0

    async def fill_waiting(self) -> None:
        self.waiting_filled += 1


def replica(
    store: PostgresStateStore, engine: RecordingEngine, timers: FakeTimers, **kwargs: object
) -> Replica:
    options: dict[str, object] = {
        "daemon_id": "me",
        "hostname": HOST,
        "version": "1.2.3",
        "takeover_after": 15.0,
        "pid": 4242,
    }
    options.update(kwargs)
    return Replica(store, engine, timers.clock, timers, **options)  # type: ignore[arg-type]


@pytest.fixture
def timers() -> FakeTimers:
    return FakeTimers(FakeClock(T0))


async def test_joining_registers_with_a_lease_and_a_version(
    store: PostgresStateStore, timers: FakeTimers
) -> None:
    service = replica(store, RecordingEngine(), timers)
    await service.join()
    await service.advertise("http://127.0.0.1:9999")

    [me] = await store.list_daemons()
    assert (me.daemon_id, me.hostname, me.pid, me.version, me.api_url) == (
        "me",
        HOST,
        4242,
        "1.2.3",
        "http://127.0.0.1:9999",
    )
    assert me.alive and me.owned_runs == 0
    assert service.lease == 10.0 and service.interval == 3.0


async def test_a_live_daemon_with_the_same_id_is_refused_by_name(
    store: PostgresStateStore, timers: FakeTimers
) -> None:
    await replica(store, RecordingEngine(), timers, pid=1111, alive=lambda pid: True).join()

    with pytest.raises(
        AnotherDaemonRunning, match=r"daemon me \(pid 1111 on .*\) is running with this daemon.daemon_id"
    ):
        await replica(store, RecordingEngine(), timers, pid=2222, alive=lambda pid: True).join()


async def test_a_previous_incarnation_on_this_host_that_is_gone_is_taken_over_at_once(
    store: PostgresStateStore, timers: FakeTimers
) -> None:
    await replica(store, RecordingEngine(), timers, daemon_id="old", pid=1111).join()
    await replica(store, RecordingEngine(), timers, daemon_id="same", pid=3333).join()

    # a new daemon id (the default is <hostname>-<pid>): the old one's process is gone
    await replica(
        store, RecordingEngine(), timers, daemon_id="new", pid=2222, alive=lambda pid: pid != 1111
    ).join()
    # the same id restarted (a container's pid 1 again, say): its old row is its own
    await replica(store, RecordingEngine(), timers, daemon_id="same", pid=3333, alive=lambda pid: True).join()

    alive = {d.daemon_id: d.alive for d in await store.list_daemons()}
    assert alive == {"old": False, "new": True, "same": True}


async def test_a_daemon_from_before_replicas_is_refused(
    store: PostgresStateStore, timers: FakeTimers, database_dsn: str
) -> None:
    legacy = await asyncpg.connect(database_dsn)
    try:
        assert await legacy.fetchval("SELECT pg_try_advisory_lock($1::bigint)", LEGACY_DAEMON_LOCK_KEY)
        with pytest.raises(AnotherDaemonRunning, match="from before replicas"):
            await replica(store, RecordingEngine(), timers).join()
    finally:
        await legacy.close()
    assert await store.list_daemons() == []


async def test_a_replica_lets_go_of_its_runs_before_its_lease_can_run_out(
    store: PostgresStateStore, timers: FakeTimers, database_dsn: str
) -> None:
    engine = RecordingEngine()
    service = replica(store, engine, timers)
    await service.join()
    await service.beat()
    timers.advance(service.lease - 1.5)
    assert engine.let_go == []  # renewed: still holds

    timers.advance(1.0)  # no renewal came: the lease could run out within a second

    assert len(engine.let_go) == 1 and "could not renew its lease" in engine.let_go[0]
    assert service.let_go
    assert await service.take_over() == 0 and engine.takeovers == []  # no takeovers meanwhile

    await service.beat()  # back in touch: keep what is still ours, claim back the rest

    assert not service.let_go
    assert engine.kept == 1 and engine.waiting_filled == 1
    await service.take_over()
    assert engine.takeovers == [False]  # others' leases may have run out in the same outage
    timers.advance(service.lease)
    await service.beat()
    await service.take_over()
    assert engine.takeovers[-1] is True


async def test_a_replica_taken_for_dead_registers_again(
    store: PostgresStateStore, timers: FakeTimers
) -> None:
    engine = RecordingEngine()
    service = replica(store, engine, timers)
    await service.join()
    await store.deregister_daemon("me")  # another replica retired it as dead

    await service.beat()

    assert engine.let_go == ["another replica took this one for dead"]
    assert [d.daemon_id for d in await store.list_daemons()] == ["me"]


async def test_leaving_hands_the_runs_over(store: PostgresStateStore, timers: FakeTimers) -> None:
    service = replica(store, RecordingEngine(), timers)
    await service.join()
    await service.leave()
    assert await store.list_daemons() == []
