"""Two replicas' APIs on one real PostgreSQL, over real HTTP on 127.0.0.1: the daemons list,
operations forwarded to the replica that drives the run (signed with the replicas' shared
secret, which the receiving replica checks), logs proxied from the replica that ran the try,
and `orchestrator daemons` against a real app.

Each replica is `create_app` on its own store (its own pool on the same database), its own log
folder and an `EngineApi` whose operations either run (recording that they did) or raise
`OwnedElsewhere` naming the other replica, as the engine does for a run another replica drives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from orchestrator.api import create_app
from orchestrator.api.replica_auth import FORWARDED_HEADER, sign
from orchestrator.api.roles import Principal, Role
from orchestrator.core.records import RunRecord
from orchestrator.core.states import RunState
from orchestrator.errors import OwnedElsewhere, RunNotFound
from orchestrator.ports import TryLog
from storage.filelogs import FileTaskLogs
from storage.postgres import PostgresStateStore
from tests.apiauth import TOKENS, api_settings, headers
from tests.integration.test_api import StoreEngine, seed, serve, ticking_clock
from tests.integration.test_cli import clean_env, cli

pytestmark = pytest.mark.anyio

LEASE = 60.0


@dataclass
class Owner:
    """Where a replica's engine says the runs it is asked about are driven (None: here)."""

    daemon_id: str
    hostname: str
    api_url: str | None


class ReplicaEngine(StoreEngine):
    """EngineApi of one replica: marks and deletes runs through the store, or raises
    OwnedElsewhere naming `elsewhere` when it is set, as the engine does."""

    def __init__(self, store: PostgresStateStore) -> None:
        super().__init__(store, ticking_clock())
        self.elsewhere: Owner | None = None
        self.calls: list[tuple[str, str, str]] = []

    def _owned_here(self, dag_id: str, run_id: str) -> None:
        if self.elsewhere is not None:
            owner = self.elsewhere
            raise OwnedElsewhere(
                f"run {run_id!r} of DAG {dag_id!r} is driven by replica {owner.daemon_id!r}",
                daemon_id=owner.daemon_id,
                hostname=owner.hostname,
                api_url=owner.api_url,
            )

    async def set_run_state(self, dag_id: str, run_id: str, state: RunState) -> RunRecord:
        self._owned_here(dag_id, run_id)
        run = await self.store.get_run(dag_id, run_id)
        if run is None:
            raise RunNotFound()
        self.calls.append(("set_run_state", run_id, state.value))
        return run

    async def delete_run(self, dag_id: str, run_id: str) -> None:
        self._owned_here(dag_id, run_id)
        self.calls.append(("delete_run", run_id, ""))


@dataclass
class Replica:
    daemon_id: str
    hostname: str
    url: str
    store: PostgresStateStore
    engine: ReplicaEngine
    logs_dir: Path
    http: aiohttp.ClientSession
    runners: list[Any] = field(default_factory=list)

    def owner(self) -> Owner:
        return Owner(self.daemon_id, self.hostname, self.url)

    async def call(
        self, method: str, path: str, *, json: Any = None, role: str = "admin", **extra: str
    ) -> tuple[int, Any, str]:
        async with self.http.request(
            method, self.url + path, json=json, headers=headers(role, **extra)
        ) as response:
            body = await response.read()
            if response.content_type == "application/json" and body:
                return response.status, orjson.loads(body), response.content_type
            return response.status, body.decode(), response.content_type

    async def register(self, pid: int, version: str = "1.0.0") -> None:
        await self.store.register_daemon(
            self.daemon_id, self.hostname, pid, ticking_clock()(), version=version, lease_seconds=LEASE
        )
        await self.store.set_daemon_api_url(self.daemon_id, self.url)


@pytest.fixture
async def replicas(
    store: PostgresStateStore, database_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[Replica, Replica]]:
    await seed(store)
    other_store = await PostgresStateStore.connect(database_dsn)
    made: list[Replica] = []
    try:
        async with aiohttp.ClientSession() as http:
            for name, replica_store in (("a", store), ("b", other_store)):
                engine = ReplicaEngine(replica_store)
                logs_dir = tmp_path / f"logs-{name}"
                app = create_app(
                    replica_store, engine, logs_dir, settings=api_settings(), daemon_id=f"replica-{name}"
                )
                runner, url = await serve(app)
                replica = Replica(
                    f"replica-{name}", f"host-{name}", url, replica_store, engine, logs_dir, http
                )
                replica.runners.append(runner)
                made.append(replica)
            yield made[0], made[1]
    finally:
        for replica in made:
            for runner in replica.runners:
                await runner.cleanup()
        await other_store.close()


async def trigger(replica: Replica, run_id: str = "r1") -> RunRecord:
    run, _ = await replica.engine.trigger_run("etl", run_id=run_id, conf={}, logical_date=None)
    return run


def closed_port_url() -> str:
    """A URL of 127.0.0.1 where nothing listens (a port just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- GET /api/v1/daemons and `orchestrator daemons` -------------------------------------------


async def test_the_daemons_list_shows_every_replica_with_its_lease_and_runs(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    await a.register(101, version="1.2.3")
    await b.register(202, version="1.2.4")
    await a.store.register_daemon("replica-gone", "host-gone", 303, ticking_clock()(), lease_seconds=LEASE)
    await a.store.expire_daemon("replica-gone")

    for replica in (a, b):  # any replica answers the same list
        status, body, _ = await replica.call("GET", "/api/v1/daemons", role="viewer")
        assert status == 200, body
        assert body["total_entries"] == 3
        daemons = {d["daemon_id"]: d for d in body["daemons"]}
        assert set(daemons) == {"replica-a", "replica-b", "replica-gone"}
        first = daemons["replica-a"]
        assert set(first) == {
            "daemon_id",
            "hostname",
            "pid",
            "version",
            "api_url",
            "started_at",
            "heartbeat_at",
            "heartbeat_age_seconds",
            "lease_until",
            "alive",
            "owned_runs",
        }
        assert (first["hostname"], first["pid"], first["version"], first["api_url"]) == (
            "host-a",
            101,
            "1.2.3",
            a.url,
        )
        assert first["alive"] is True and daemons["replica-b"]["alive"] is True
        assert daemons["replica-gone"]["alive"] is False
        assert first["heartbeat_age_seconds"] >= 0 and first["owned_runs"] == 0

    async with a.http.get(a.url + "/api/v1/daemons") as response:
        assert response.status == 401  # credentials are needed


async def test_orchestrator_daemons_prints_the_replicas_as_a_table_and_as_json(
    replicas: tuple[Replica, Replica], tmp_path: Path
) -> None:
    a, b = replicas
    await a.register(101, version="1.2.3")
    await b.register(202)
    await a.store.register_daemon("replica-gone", "host-gone", 303, ticking_clock()(), lease_seconds=LEASE)
    await a.store.expire_daemon("replica-gone")
    env = clean_env(ORCHESTRATOR_TOKEN=TOKENS["viewer"])

    result = await cli("daemons", "--url", a.url, cwd=tmp_path, env=env)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == [
        "daemon_id",
        "host",
        "pid",
        "version",
        "heartbeat_age",
        "status",
        "owned_runs",
        "api_url",
    ]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"replica-a", "replica-b", "replica-gone"}
    assert rows["replica-a"][1:4] == ["host-a", "101", "1.2.3"]
    assert rows["replica-a"][5] == "alive" and rows["replica-gone"][4] == "dead"  # no version: one cell less
    assert rows["replica-a"][4].endswith("s")

    result = await cli("daemons", "--url", b.url, "-o", "json", cwd=tmp_path, env=env)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["total_entries"] == 3
    assert {d["daemon_id"]: d["alive"] for d in data["daemons"]} == {
        "replica-a": True,
        "replica-b": True,
        "replica-gone": False,
    }


# --- operations forwarded to the owner -----------------------------------------------------------


async def test_an_operation_on_a_run_another_replica_drives_is_answered_by_that_replica(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    await trigger(a)
    a.engine.elsewhere = b.owner()

    status, body, content_type = await a.call(
        "PATCH", "/api/v1/dags/etl/dagRuns/r1", json={"state": "success"}, role="operator"
    )
    assert status == 200, body
    assert content_type == "application/json"
    assert body["dag_run_id"] == "r1"
    assert b.engine.calls == [("set_run_state", "r1", "success")]
    assert a.engine.calls == []

    status, body, _ = await a.call("DELETE", "/api/v1/dags/etl/dagRuns/r1", role="admin")
    assert status == 204, body
    assert b.engine.calls[-1] == ("delete_run", "r1", "")

    # B's own answers come back as they are: a refusal in B's words
    status, body, _ = await a.call("PATCH", "/api/v1/dags/etl/dagRuns/nope", json={"state": "success"})
    assert status == 404 and body["detail"] == str(RunNotFound())

    # recorded once in the audit trail, by the replica that did it, under the caller's token name
    status, trail, _ = await a.call("GET", "/api/v1/eventLogs?event=update_run_state")
    assert status == 200
    assert sorted((e["owner"], e["run_id"]) for e in trail["event_logs"]) == [
        ("admin", "nope"),
        ("operator", "r1"),
    ]


async def test_a_request_forwarded_again_is_answered_409_retry(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    await trigger(a)
    a.engine.elsewhere = b.owner()
    b.engine.elsewhere = a.owner()  # the run moved on meanwhile

    status, body, _ = await a.call("PATCH", "/api/v1/dags/etl/dagRuns/r1", json={"state": "failed"})
    assert status == 409, body
    assert "moved between replicas" in body["detail"] and "retry" in body["detail"]
    assert a.engine.calls == [] and b.engine.calls == []


async def test_an_owner_that_cannot_be_reached_or_has_no_api_is_503_naming_it(
    replicas: tuple[Replica, Replica],
) -> None:
    a, _ = replicas
    await trigger(a)
    a.engine.elsewhere = Owner("replica-x", "host-x", closed_port_url())
    status, body, _ = await a.call("PATCH", "/api/v1/dags/etl/dagRuns/r1", json={"state": "success"})
    assert status == 503, body
    assert "'replica-x'" in body["detail"] and "'host-x'" in body["detail"]
    assert "could not be reached" in body["detail"]

    a.engine.elsewhere = Owner("replica-y", "host-y", None)
    status, body, _ = await a.call("PATCH", "/api/v1/dags/etl/dagRuns/r1", json={"state": "success"})
    assert status == 503, body
    assert "'replica-y'" in body["detail"] and "'host-y'" in body["detail"] and "no API URL" in body["detail"]


# --- the signature between replicas ------------------------------------------------------------


async def _signed_patch(
    replica: Replica,
    secret: bytes,
    *,
    now: float | None = None,
    path: str = "/api/v1/dags/etl/dagRuns/r1",
    role: Role = Role.OPERATOR,
) -> tuple[int, Any]:
    body = orjson.dumps({"state": "success"})
    principal = Principal(role.label, role, via="bearer")
    value = sign(secret, principal, "PATCH", "/api/v1/dags/etl/dagRuns/r1", body, now=now)
    async with replica.http.patch(
        replica.url + path,
        data=body,
        headers={FORWARDED_HEADER: value, "Content-Type": "application/json"},
    ) as response:
        return response.status, await response.json(content_type=None)


async def test_only_a_fresh_signature_with_the_shared_secret_is_accepted(
    replicas: tuple[Replica, Replica], caplog: pytest.LogCaptureFixture
) -> None:
    _, b = replicas
    await trigger(b)
    secret = await b.store.replica_secret()
    assert len(secret) >= 32
    assert await b.store.replica_secret() == secret  # the same for every replica, ever after

    status, body = await _signed_patch(b, secret)
    assert status == 200, body  # what a replica sends
    assert b.engine.calls == [("set_run_state", "r1", "success")]

    caplog.set_level(logging.INFO)
    status, body = await _signed_patch(b, hashlib.sha256(b"forged").digest())
    assert status == 401, body
    assert "not signed with the replicas' secret" in body["detail"]
    status, body = await _signed_patch(b, secret, now=time.time() - 120)
    assert status == 401, body
    assert "signed 120 s ago" in body["detail"] or "signed 121 s ago" in body["detail"]
    # a signature is for one method, path and body: replayed on another run it is refused
    status, body = await _signed_patch(b, secret, path="/api/v1/dags/etl/dagRuns/r2")
    assert status == 401, body
    async with b.http.patch(
        b.url + "/api/v1/dags/etl/dagRuns/r1", json={"state": "success"}, headers={FORWARDED_HEADER: "v1.x"}
    ) as response:
        assert response.status == 401
    assert len(b.engine.calls) == 1
    # the role vouched for is checked as a token's would be
    status, body = await _signed_patch(b, secret, role=Role.VIEWER)
    assert status == 403 and "'viewer'" in body["detail"]
    assert len(b.engine.calls) == 1

    refusals = [
        r.getMessage()
        for r in caplog.records
        if r.name == "orchestrator.api.auth" and "authentication failed" in r.getMessage()
    ]
    assert len(refusals) == 4 and all(FORWARDED_HEADER in message for message in refusals)
    text = caplog.text
    assert secret.hex() not in text and secret.hex() not in json.dumps(body)


# --- logs from any replica ------------------------------------------------------------------------


async def _ran_on(replica: Replica, run: RunRecord, task_id: str, daemon_id: str, hostname: str) -> None:
    """Say in the database that `daemon_id` ran try 1 of the task (as its engine records it)."""
    async with replica.store._pool.acquire() as conn:  # the test writes the row as that replica did
        await conn.execute(
            "UPDATE task_instance SET state = 'success', try_number = 1, daemon_id = $3, hostname = $4 "
            "WHERE run_pk = $1 AND task_id = $2",
            run.pk,
            task_id,
            daemon_id,
            hostname,
        )


LOG = "/api/v1/dags/etl/dagRuns/r1/taskInstances/extract/logs/1"


async def test_a_log_only_the_replica_that_ran_the_try_has_is_proxied_from_it(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    await a.register(101)
    await b.register(202)
    run = await trigger(a)
    await _ran_on(a, run, "extract", b.daemon_id, b.hostname)
    lines = [f"line {i} from replica b: " + "x" * 200 for i in range(20_000)]  # ~4 MB
    text = "\n".join(lines) + "\n"
    FileTaskLogs(b.logs_dir).append(TryLog("etl", "r1", "extract", -1, 1), text)

    status, body, content_type = await a.call("GET", LOG, Accept="text/plain")
    assert status == 200 and content_type == "text/plain"
    assert body == text

    status, page, _ = await a.call("GET", LOG, Accept="application/json")
    assert status == 200
    assert text.startswith(page["content"]) and page["continuation_token"] is not None
    status, rest, _ = await a.call(
        "GET", LOG + f"?token={page['continuation_token']}&full_content=true", Accept="application/json"
    )
    assert status == 200
    assert page["content"] + rest["content"] == text

    status, v2, _ = await a.call(
        "GET", LOG.replace("/api/v1/", "/api/v2/") + "?full_content=true", Accept="application/json"
    )
    assert status == 200, v2
    assert [m["event"] for m in v2["content"]] == lines

    # B serves it from its own file, and A serves its own logs itself
    status, body, _ = await b.call("GET", LOG, Accept="text/plain")
    assert status == 200 and body == text


async def test_the_log_of_a_replica_that_is_gone_is_404_naming_it(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    await b.register(202)
    await b.store.expire_daemon(b.daemon_id)  # B died: its lease ran out
    run = await trigger(a)
    await _ran_on(a, run, "extract", b.daemon_id, b.hostname)
    await _ran_on(a, run, "transform", "replica-never-seen", "host-z")

    status, body, _ = await a.call("GET", LOG, Accept="text/plain")
    assert status == 404, body
    assert "'replica-b'" in body["detail"] and "'host-b'" in body["detail"] and "is gone" in body["detail"]
    assert "logs.folder" in body["detail"] and "shared folder" in body["detail"]

    status, body, _ = await a.call("GET", LOG.replace("extract", "transform"), Accept="application/json")
    assert status == 404 and "'replica-never-seen'" in body["detail"]

    status, body, _ = await a.call("GET", LOG.replace("/api/v1/", "/api/v2/"), Accept="application/json")
    assert status == 404 and "'replica-b'" in body["detail"]


async def test_a_shared_log_folder_serves_every_log_locally(replicas: tuple[Replica, Replica]) -> None:
    a, _ = replicas
    run = await trigger(a)
    await _ran_on(a, run, "extract", "replica-gone-long-ago", "host-old")
    FileTaskLogs(a.logs_dir).append(TryLog("etl", "r1", "extract", -1, 1), "kept in the shared folder\n")
    status, body, _ = await a.call("GET", LOG, Accept="text/plain")
    assert status == 200 and body == "kept in the shared folder\n"
