"""Webhooks over real HTTP on 127.0.0.1, with the real engine and LocalExecutor on a real PostgreSQL:
accepted deliveries and every refusal (with its status, and that nothing was created), idempotency
by delivery id and by body hash, rotation, the delivery log (never a secret in it), pruning, the
asset path, and a flood of concurrent deliveries with duplicates."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from orchestrator.api import create_app
from orchestrator.config import WebhookConfig
from orchestrator.core.states import RunState
from orchestrator.ports import Clock, WebhookDelivery
from orchestrator.triggers.webhooks import DeliveryLog, DeliveryLogPruner, WebhookReceiver, build_webhooks
from storage.postgres import PostgresStateStore
from tests.apiauth import api_settings, headers
from tests.fakes import FakeClock, FakeTimers
from tests.integration.engine_harness import EngineHarness, running_engine, wait_for, wait_run, write_dag

pytestmark = pytest.mark.anyio

SECRET = b"It's a Secret to Everybody"
OLD_SECRET = b"the-old-secret-being-rotated-out"
TOKEN = b"tok-9f8e7d6c5b4a"

GITHUB_PUSH = WebhookConfig(
    name="github-push",
    auth="github",
    dag_id="build",
    secret_env=("GITHUB_WEBHOOK_SECRET", "OLD_GITHUB_WEBHOOK_SECRET"),
    delivery_id_header="X-GitHub-Delivery",
    conf={"ref": "ref", "repo": "repository.full_name"},
    filter={"headers.X-GitHub-Event": ("push",)},
    max_body_bytes=4096,
)
WEBHOOKS = {
    "github-push": GITHUB_PUSH,
    "by-body": WebhookConfig(
        name="by-body", auth="token", dag_id="build", secret_env=("T",), dedup_window=60
    ),
    "ghost": WebhookConfig(name="ghost", auth="token", dag_id="not_loaded", secret_env=("T",)),
    "paused": WebhookConfig(name="paused", auth="token", dag_id="sleepy", secret_env=("T",)),
    "orders": WebhookConfig(name="orders", auth="token", asset_uri="s3://bucket/orders", secret_env=("T",)),
}
SECRETS = {
    "github-push": (SECRET, OLD_SECRET),
    "by-body": (TOKEN,),
    "ghost": (TOKEN,),
    "paused": (TOKEN,),
    "orders": (TOKEN,),
}

PUSH = {"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}, "pusher": {"name": "octocat"}}


def github_headers(body: bytes, delivery: str, secret: bytes = SECRET, event: str = "push") -> dict[str, str]:
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": signature,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": event,
        "Content-Type": "application/json",
    }


def bearer(token: bytes = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.decode()}", "Content-Type": "application/json"}


class FakeAssets:
    """An AssetEventSink standing in for the assets work (merged separately): idempotent by key."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        self.by_key: dict[str, int] = {}

    async def record_asset_event(
        self, uri: str, extra: dict[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[int, bool]:
        if idempotency_key is not None and idempotency_key in self.by_key:
            return self.by_key[idempotency_key], False
        self.events.append((uri, extra, idempotency_key))
        event_id = len(self.events)
        if idempotency_key is not None:
            self.by_key[idempotency_key] = event_id
        return event_id, True


@dataclass
class Server:
    harness: EngineHarness
    http: aiohttp.ClientSession
    url: str
    receiver: WebhookReceiver
    store: PostgresStateStore
    assets: FakeAssets

    async def post(self, name: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}/api/v1/webhooks/{name}", data=body, headers=headers) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def deliveries(self, name: str, **query: Any) -> tuple[int, Any]:
        async with self.http.get(
            f"{self.url}/api/v1/webhooks/{name}/deliveries", params=query, headers=headers()
        ) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def runs(self, dag_id: str) -> list[Any]:
        runs, _ = await self.store.list_runs(dag_id, 10_000, 0)
        return runs


@asynccontextmanager
async def webhook_server(
    store: PostgresStateStore,
    tmp_path: Path,
    dag_files: Sequence[Path],
    *,
    clock: Clock | None = None,
    connector_limit: int = 100,
) -> AsyncIterator[Server]:
    async with running_engine(store, tmp_path / "logs", dag_files) as harness:
        assets = FakeAssets()
        receiver = WebhookReceiver(
            build_webhooks(WEBHOOKS, SECRETS),
            harness.engine,
            store,
            clock or harness.engine._clock,
            DeliveryLog(store),
            assets=assets,
        )
        app = create_app(
            store,
            harness.engine,
            harness.logs_dir,
            harness.task_logs,
            settings=api_settings(),
            webhook_receiver=receiver,
        )
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            connector = aiohttp.TCPConnector(limit=connector_limit)
            async with aiohttp.ClientSession(connector=connector) as http:
                yield Server(harness, http, url, receiver, store, assets)
        finally:
            await runner.cleanup()


@pytest.fixture
def dag_files(tmp_path: Path, work: Path) -> list[Path]:
    build = write_dag(
        tmp_path / "dags",
        "build",
        """
        with DAG("build"):
            Bash("checkout", 'echo "building {{ dag_run.conf["ref"] }} of {{ dag_run.conf["repo"] }}"')
        """,
        work,
    )
    sleepy = write_dag(
        tmp_path / "dags",
        "sleepy",
        'with DAG("sleepy", is_paused_upon_creation=True):\n    Bash("t", "true")\n',
        work,
    )
    return [build, sleepy]


async def test_a_github_signed_push_starts_a_run_with_the_mapped_conf(
    store: PostgresStateStore, tmp_path: Path, dag_files: list[Path]
) -> None:
    body = orjson.dumps(PUSH)
    async with webhook_server(store, tmp_path, dag_files) as server:
        status, answer = await server.post("github-push", body, github_headers(body, "d-1"))
        assert (status, answer) == (202, {"dag_run_id": "webhook__github-push__d-1", "created": True})
        run = await wait_run(store, "build", "webhook__github-push__d-1")
        assert run.state == RunState.SUCCESS
        assert run.conf == {"ref": "refs/heads/main", "repo": "acme/app"}
        assert run.run_type == "manual" and run.external_trigger
        assert run.note == "triggered by webhook github-push (delivery d-1)"
        log = server.harness.log_text("build", run.run_id, "checkout", 1)
        assert "building refs/heads/main of acme/app" in log

        # GitHub's redelivery keeps the id: the same run, nothing new
        status, again = await server.post("github-push", body, github_headers(body, "d-1"))
        assert (status, again) == (200, {"dag_run_id": "webhook__github-push__d-1", "created": False})
        assert len(await server.runs("build")) == 1


async def test_a_rotated_out_secret_still_passes_while_it_is_listed(
    store: PostgresStateStore, tmp_path: Path, dag_files: list[Path]
) -> None:
    body = orjson.dumps(PUSH)
    async with webhook_server(store, tmp_path, dag_files) as server:
        assert (await server.post("github-push", body, github_headers(body, "new", SECRET)))[0] == 202
        assert (await server.post("github-push", body, github_headers(body, "old", OLD_SECRET)))[0] == 202
        status, _ = await server.post("github-push", body, github_headers(body, "other", b"nope"))
        assert status == 401
        assert {run.run_id for run in await server.runs("build")} == {
            "webhook__github-push__new",
            "webhook__github-push__old",
        }


def _refusals() -> list[Any]:
    body = orjson.dumps(PUSH)
    signed = github_headers(body, "x-1")
    tampered = orjson.dumps({**PUSH, "ref": "refs/heads/evil"})
    no_repo = orjson.dumps({"ref": "refs/heads/main"})
    not_json = b'{"ref": "refs/heads/main",'
    return [
        pytest.param("github-push", tampered, signed, 401, "does not match the body", id="bad-signature"),
        pytest.param(
            "github-push",
            body,
            {k: v for k, v in signed.items() if k != "X-Hub-Signature-256"},
            401,
            "missing X-Hub-Signature-256",
            id="missing-signature",
        ),
        pytest.param(
            "by-body",
            b"{}",
            {"Content-Type": "application/json"},
            401,
            "missing Authorization",
            id="no-token",
        ),
        pytest.param("by-body", b"{}", bearer(b"wrong"), 401, "not an accepted secret", id="bad-token"),
        pytest.param("nope", body, signed, 404, "no webhook named 'nope'", id="unknown-webhook"),
        pytest.param(
            "github-push", b"{" + b" " * 5000 + b"}", signed, 413, "max_body_bytes (4096", id="too-large"
        ),
        pytest.param(
            "github-push", not_json, github_headers(not_json, "x-2"), 400, "not valid JSON", id="malformed"
        ),
        pytest.param(
            "github-push",
            no_repo,
            github_headers(no_repo, "x-3"),
            400,
            "no field 'repository.full_name'",
            id="unmapped",
        ),
        pytest.param("paused", b"{}", bearer(), 409, "DAG 'sleepy' is paused", id="paused"),
        pytest.param("ghost", b"{}", bearer(), 404, "DAG 'not_loaded' is not loaded", id="dag-not-loaded"),
    ]


@pytest.mark.parametrize(("name", "body", "headers", "status", "reason"), _refusals())
async def test_refusals_create_nothing(
    store: PostgresStateStore,
    tmp_path: Path,
    dag_files: list[Path],
    name: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    reason: str,
) -> None:
    async with webhook_server(store, tmp_path, dag_files) as server:
        got, answer = await server.post(name, body, headers)
        assert got == status, answer
        assert answer["status"] == status and reason in answer["detail"]  # the API's problem shape
        assert set(answer) == {"type", "title", "status", "detail"}
        assert await server.runs("build") == [] and await server.runs("sleepy") == []
        code, log = await server.deliveries(name)  # an unknown name is listed once it has entries
        assert code == 200 and log["total_entries"] == 1
        (entry,) = log["deliveries"]
        assert entry["status"] == status and not entry["created"] and reason in entry["reason"]


async def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(
    store: PostgresStateStore, tmp_path: Path, dag_files: list[Path]
) -> None:
    """No Content-Length (chunked): refused once the bytes read pass the limit; the sender sees
    the 413 and its connection closed, while the rest of its body is never consumed."""
    sent: list[int] = []
    gate = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(10_000):  # 10 MB if anyone read it all
            sent.append(1)
            yield b" " * 1000
            if len(sent) == 20:
                await gate.wait()  # hold the rest back until the answer has arrived

    async with webhook_server(store, tmp_path, dag_files) as server:
        url = f"{server.url}/api/v1/webhooks/github-push"
        headers = {"X-Hub-Signature-256": "sha256=00", "X-GitHub-Delivery": "big"}
        async with server.http.post(url, data=endless(), headers=headers) as response:
            assert response.status == 413
            gate.set()
            assert "max_body_bytes" in (await response.json())["detail"]
        assert len(sent) < 100
        assert await server.runs("build") == []


async def test_a_filtered_out_delivery_is_accepted_and_creates_nothing(
    store: PostgresStateStore, tmp_path: Path, dag_files: list[Path]
) -> None:
    body = orjson.dumps({"zen": "Keep it logically awesome."})
    async with webhook_server(store, tmp_path, dag_files) as server:
        status, answer = await server.post("github-push", body, github_headers(body, "ping-1", event="ping"))
        assert status == 202
        assert answer == {
            "dag_run_id": None,
            "created": False,
            "reason": "not triggered: filter headers.X-GitHub-Event: 'ping' is not one of ['push']",
        }
        assert await server.runs("build") == []


async def test_without_a_delivery_id_the_same_body_is_one_run_within_the_window(
    store: PostgresStateStore, tmp_path: Path, dag_files: list[Path]
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    body = orjson.dumps({"ref": "a"})
    async with webhook_server(store, tmp_path, dag_files, clock=clock) as server:
        results = await asyncio.gather(*(server.post("by-body", body, bearer()) for _ in range(20)))
        assert sorted(status for status, _ in results) == [200] * 19 + [202]
        assert len({answer["dag_run_id"] for _, answer in results}) == 1
        clock._move(59)
        assert (await server.post("by-body", body, bearer()))[0] == 200
        assert (await server.post("by-body", orjson.dumps({"ref": "b"}), bearer()))[0] == 202
        clock._move(2)  # the first body's window has passed: it is a new delivery
        status, answer = await server.post("by-body", body, bearer())
        assert status == 202 and answer["dag_run_id"] not in {a["dag_run_id"] for _, a in results}
        assert len(await server.runs("build")) == 3


async def test_an_asset_webhook_records_an_idempotent_asset_event(
    store: PostgresStateStore, tmp_path: Path, dag_files: list[Path]
) -> None:
    async with webhook_server(store, tmp_path, dag_files) as server:
        body = orjson.dumps({"key": "orders/2026-03-01.csv"})
        assert await server.post("orders", body, bearer()) == (202, {"asset_event_id": 1, "created": True})
        assert await server.post("orders", body, bearer()) == (200, {"asset_event_id": 1, "created": False})
        ((uri, extra, key),) = server.assets.events
        assert (uri, extra) == ("s3://bucket/orders", {"key": "orders/2026-03-01.csv"})
        assert key is not None and key.startswith("webhook__orders__body~")
        _, log = await server.deliveries("orders")
        assert [(d["status"], d["asset_uri"], d["asset_event_id"]) for d in log["deliveries"]] == [
            (200, "s3://bucket/orders", 1),
            (202, "s3://bucket/orders", 1),
        ]


async def test_the_delivery_log_pages_and_never_holds_a_secret_or_a_signature(
    store: PostgresStateStore, tmp_path: Path, dag_files: list[Path], database_dsn: str
) -> None:
    body = orjson.dumps(PUSH)
    good = github_headers(body, "log-1")
    bad = github_headers(orjson.dumps({**PUSH, "ref": "x"}), "log-2")
    async with webhook_server(store, tmp_path, dag_files) as server:
        assert (await server.post("github-push", body, good))[0] == 202
        assert (await server.post("github-push", body, bad))[0] == 401
        assert (await server.post("github-push", body, good))[0] == 200
        assert (await server.post("by-body", b"{}", bearer(b"guess-" + TOKEN)))[0] == 401

        status, page = await server.deliveries("github-push", limit=2)
        assert status == 200 and page["total_entries"] == 3
        assert [(d["delivery_id"], d["status"], d["created"]) for d in page["deliveries"]] == [
            ("log-1", 200, False),
            ("log-2", 401, False),
        ]
        _, rest = await server.deliveries("github-push", limit=2, offset=2)
        (first,) = rest["deliveries"]
        assert first == {
            "webhook": "github-push",
            "delivery_id": "log-1",
            "received_at": first["received_at"],
            "status": 202,
            "created": True,
            "dag_id": "build",
            "dag_run_id": "webhook__github-push__log-1",
            "asset_uri": None,
            "asset_event_id": None,
            "reason": None,
        }
        status, missing = await server.deliveries("never-configured")
        assert status == 404 and "no webhook named 'never-configured'" in missing["detail"]

    import asyncpg

    conn = await asyncpg.connect(database_dsn)
    try:
        rows = await conn.fetch("SELECT * FROM webhook_delivery")
    finally:
        await conn.close()
    text = repr([dict(row) for row in rows])
    assert len(rows) == 4
    for secret in (SECRET, OLD_SECRET, TOKEN):
        assert secret.decode() not in text
    for signature in (good["X-Hub-Signature-256"], bad["X-Hub-Signature-256"]):
        assert signature.split("=", 1)[1] not in text


async def test_pruning_removes_entries_past_the_retention_now_and_every_hour(
    store: PostgresStateStore,
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    timers = FakeTimers(clock)
    now = clock.now()
    await store.record_webhook_deliveries(
        [
            WebhookDelivery("w", "old", now - timedelta(days=31), 202, True),
            WebhookDelivery("w", "recent", now - timedelta(days=29, hours=12), 202, True),
        ]
    )
    pruner = DeliveryLogPruner(store, clock, timers, retention_days=30)
    pruner.start()

    async def entries() -> list[str | None] | None:
        found, _ = await store.list_webhook_deliveries("w", 10, 0)
        ids = [d.delivery_id for d in found]
        return ids if ids == ["recent"] else None

    await wait_for(entries, 10, "the old entry to be pruned at start")
    assert timers.pending() == [3600.0]
    timers.advance(86400 / 2 + 1)  # a day later the other one is past the retention too

    async def empty() -> bool | None:
        _, total = await store.list_webhook_deliveries("w", 10, 0)
        return True if total == 0 else None

    await wait_for(empty, 10, "the hourly prune")
    pruner.stop()


async def test_a_flood_of_concurrent_deliveries_with_duplicates_creates_exactly_the_unique_runs(
    store: PostgresStateStore, tmp_path: Path, work: Path
) -> None:
    """1,000 deliveries from 8 concurrent clients, 10 % of them repeating an earlier delivery id
    (some of them while the first is still being answered)."""
    dag = write_dag(
        tmp_path / "dags", "build", 'with DAG("build", max_active_runs=1):\n    Bash("t", "true")\n', work
    )
    rng = random.Random(7)
    unique = [f"flood-{i}" for i in range(900)]
    ids = unique + [rng.choice(unique) for _ in range(100)]
    rng.shuffle(ids)
    body = orjson.dumps(PUSH)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for delivery in ids:
        queue.put_nowait(delivery)
    answers: list[tuple[str, int, Any]] = []
    async with webhook_server(store, tmp_path, [dag], connector_limit=8) as server:

        async def client() -> None:
            while not queue.empty():
                delivery = queue.get_nowait()
                status, answer = await server.post("github-push", body, github_headers(body, delivery))
                answers.append((delivery, status, answer))

        await asyncio.gather(*(client() for _ in range(8)))
        runs = await server.runs("build")
        assert len(runs) == 900
        assert {run.run_id for run in runs} == {f"webhook__github-push__{i}" for i in unique}
        assert sum(1 for _, status, _ in answers if status == 202) == 900
        assert sum(1 for _, status, _ in answers if status == 200) == 100
        assert all(answer["dag_run_id"] == f"webhook__github-push__{d}" for d, _, answer in answers)
        _, log = await server.deliveries("github-push", limit=1)
        assert log["total_entries"] == 1000
