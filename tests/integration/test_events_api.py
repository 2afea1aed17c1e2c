"""GET /api/v1/events over real HTTP, fed by a real engine running real tasks on a real PostgreSQL.

A test opens the stream with an aiohttp client, triggers runs through the REST API and reads
the server-sent events the engine's committed changes produce: their order, the DAG filter,
resuming with Last-Event-ID, the `reset` when the replay ring no longer covers an id, the
keepalive comment, a slow stream being ended, and the stream ending on shutdown.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from orchestrator.api import create_app
from orchestrator.api.events import EVENT_STREAMS, StreamSettings
from orchestrator.core.records import RunRecord
from orchestrator.core.states import RunState
from orchestrator.engine.events import EventBus
from orchestrator.ports import ImportErrorChanged, RunChanged, WebhookDelivery, WebhookDeliveryRecorded
from orchestrator.sse import SseMessage, SseParser
from orchestrator.triggers.webhooks import DeliveryLog
from storage.postgres import PostgresStateStore
from tests.apiauth import api_settings, headers
from tests.integration.engine_harness import EngineHarness, running_engine, wait_run, write_dag
from tests.integration.test_api import serve

pytestmark = pytest.mark.anyio

DEADLINE = 20.0


class Stream:
    """One open event stream, read message by message (comments are kept apart)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.parser = SseParser()
        self.comments: list[str] = []

    async def next(self, timeout: float = DEADLINE) -> SseMessage | None:
        """The next message, or None when the server ended the stream."""
        with anyio.fail_after(timeout):
            while True:
                line = await self.response.content.readline()
                if not line:
                    return None
                text = line.decode()
                if text.startswith(":"):
                    self.comments.append(text.strip())
                message = self.parser.feed_line(text)
                if message is not None:
                    return message

    async def until(self, done: Callable[[SseMessage], bool], timeout: float = DEADLINE) -> list[SseMessage]:
        """Every message up to and including the first for which `done` holds."""
        seen: list[SseMessage] = []
        with anyio.fail_after(timeout):
            while True:
                message = await self.next()
                assert message is not None, f"the stream ended before the awaited event; saw {seen}"
                seen.append(message)
                if done(message):
                    return seen


def data(message: SseMessage) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(message.data)
    return loaded


def run_reached(dag_id: str, run_id: str, state: str) -> Callable[[SseMessage], bool]:
    def done(message: SseMessage) -> bool:
        d = data(message)
        return (
            message.event == "dag_run"
            and d["dag_id"] == dag_id
            and d["dag_run_id"] == run_id
            and d["state"] == state
        )

    return done


@dataclass
class Served:
    harness: EngineHarness
    app: web.Application
    url: str
    http: aiohttp.ClientSession
    runner: web.AppRunner

    @asynccontextmanager
    async def stream(self, query: str = "", **extra_headers: str) -> AsyncIterator[Stream]:
        async with self.http.get(
            f"{self.url}/api/v1/events{query}", headers=headers(**extra_headers)
        ) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            yield Stream(response)

    async def trigger(self, dag_id: str, run_id: str) -> None:
        async with self.http.post(
            f"{self.url}/api/v1/dags/{dag_id}/dagRuns", json={"dag_run_id": run_id}, headers=headers()
        ) as response:
            assert response.status == 200, await response.text()

    async def finished(self, dag_id: str, run_id: str) -> RunRecord:
        return await wait_run(self.harness.store, dag_id, run_id, DEADLINE)


DAGS = {
    "pair": 'with DAG("pair"):\n    Bash("first", "true") >> Bash("second", "true")\n',
    "lone": 'with DAG("lone"):\n    Bash("only", "true")\n',
}


@asynccontextmanager
async def served(
    store: PostgresStateStore, tmp_path: Path, settings: StreamSettings | None = None
) -> AsyncIterator[Served]:
    files = [write_dag(tmp_path / "dags", name, body, tmp_path) for name, body in DAGS.items()]
    async with running_engine(store, tmp_path / "logs", files) as harness:
        app = create_app(
            store,
            harness.engine,
            tmp_path / "logs",
            harness.task_logs,
            settings=api_settings(),
            events=harness.engine.events,
        )
        if settings is not None:
            app[EVENT_STREAMS].settings = settings
        runner, url = await serve(app)
        try:
            async with aiohttp.ClientSession() as http:
                yield Served(harness, app, url, http, runner)
        finally:
            await runner.cleanup()


async def test_a_run_streams_its_run_and_task_states_in_commit_order(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    async with served(store, tmp_path) as api, api.stream() as stream:
        await api.trigger("pair", "r1")
        messages = await stream.until(run_reached("pair", "r1", "success"))

    ids = [int(m.id or 0) for m in messages]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    runs = [data(m)["state"] for m in messages if m.event == "dag_run"]
    assert runs == ["queued", "running", "success"]
    tis = [(data(m)["task_id"], data(m)["state"]) for m in messages if m.event == "task_instance"]
    first = [state for task, state in tis if task == "first"]
    second = [state for task, state in tis if task == "second"]
    assert first[-3:] == ["queued", "running", "success"]
    assert second[-3:] == ["queued", "running", "success"]
    # the second task is queued only once the first one's success is committed
    assert tis.index(("first", "success")) < tis.index(("second", "queued"))
    ti = next(data(m) for m in messages if m.event == "task_instance" and data(m)["state"] == "success")
    assert {"dag_id", "dag_run_id", "task_id", "map_index", "try_number", "state", "timestamp"} <= set(ti)
    assert ti["dag_id"] == "pair" and ti["dag_run_id"] == "r1" and ti["map_index"] == -1
    assert ti["try_number"] == 1


async def test_the_dag_filter_leaves_out_other_dags_and_files(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    async with (
        served(store, tmp_path) as api,
        api.stream("?dag_id=pair") as only_pair,
        api.stream() as everything,
    ):
        await api.trigger("lone", "l1")
        await api.finished("lone", "l1")
        api.harness.engine.events.publish(ImportErrorChanged("/dags/broken.py", "SyntaxError"))
        await api.trigger("pair", "p1")
        filtered = await only_pair.until(run_reached("pair", "p1", "success"))
        unfiltered = await everything.until(run_reached("pair", "p1", "success"))

    assert {data(m)["dag_id"] for m in filtered} == {"pair"}
    assert {m.event for m in filtered} == {"dag_run", "task_instance"}
    assert {data(m).get("dag_id") for m in unfiltered} == {"lone", "pair", None}
    error = next(m for m in unfiltered if m.event == "import_error")
    assert data(error)["filename"] == "/dags/broken.py" and data(error)["stack_trace"] == "SyntaxError"


async def test_last_event_id_resumes_with_exactly_the_events_after_it(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    async with served(store, tmp_path) as api:
        async with api.stream() as stream:
            await api.trigger("pair", "r1")
            before = await stream.until(run_reached("pair", "r1", "success"))
        cut = before[3]

        async with api.stream(**{"Last-Event-ID": str(cut.id)}) as resumed:
            await api.trigger("lone", "r2")  # its first event comes after every replayed one
            replayed = await resumed.until(run_reached("lone", "r2", "queued"))
        async with api.stream(f"?last_event_id={cut.id}&dag_id=pair") as by_query:
            await api.trigger("pair", "r3")
            replayed_pair = await by_query.until(run_reached("pair", "r3", "queued"))

    def key(m: SseMessage) -> tuple[Any, ...]:
        return (m.id, m.event, m.data)

    assert [key(m) for m in replayed[:-1]] == [key(m) for m in before[4:]]
    assert all(int(m.id or 0) > int(cut.id or 0) for m in replayed)
    replayed_pair_before_r3 = [m for m in replayed_pair if data(m)["dag_run_id"] == "r1"]
    assert [key(m) for m in replayed_pair_before_r3] == [key(m) for m in before[4:]]


async def test_an_id_older_than_the_ring_gets_a_reset_then_live_events(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    async with served(store, tmp_path, StreamSettings(replay=3)) as api:
        async with api.stream() as stream:
            await api.trigger("pair", "r1")
            before = await stream.until(run_reached("pair", "r1", "success"))
        assert len(before) > 3

        async with api.stream(**{"Last-Event-ID": str(before[0].id)}) as resumed:
            reset = await resumed.next()
            assert reset is not None and reset.event == "reset"
            assert data(reset)["last_event_id"] == int(before[0].id or 0)
            assert reset.id == before[-1].id  # resuming after the reset misses nothing more
            await api.trigger("lone", "r2")
            live = await resumed.until(run_reached("lone", "r2", "success"))
        assert all(int(m.id or 0) > int(before[-1].id or 0) for m in live)

        # an id the daemon never gave (from the future, or another daemon's) is no resume either
        async with api.stream(**{"Last-Event-ID": str(int(before[-1].id or 0) + 1000)}) as bogus:
            message = await bogus.next()
            assert message is not None and message.event == "reset"


async def test_bad_requests_of_the_stream_are_400_and_no_bus_is_503(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    async with served(store, tmp_path) as api:
        for query, hdrs, words in [
            ("?last_event_id=abc", {}, "last_event_id 'abc' is not an event id"),
            ("", {"Last-Event-ID": "-4"}, "Last-Event-ID header -4"),
            ("?state=running", {}, "unknown query parameter(s) state"),
        ]:
            async with api.http.get(f"{api.url}/api/v1/events{query}", headers=headers(**hdrs)) as response:
                assert response.status == 400
                body = await response.json()
                assert words in body["detail"], body

    app = create_app(store, api.harness.engine, tmp_path / "logs", settings=api_settings())
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/api/v1/events", headers=headers()) as r:
            assert r.status == 503
            assert "event bus" in (await r.json())["detail"]
    finally:
        await runner.cleanup()


async def test_silence_is_broken_by_keepalive_comments(store: PostgresStateStore, tmp_path: Path) -> None:
    async with served(store, tmp_path, StreamSettings(heartbeat=0.05)) as api, api.stream() as stream:
        with anyio.fail_after(DEADLINE):
            while ": keepalive" not in stream.comments:
                line = await stream.response.content.readline()
                if line.startswith(b":"):
                    stream.comments.append(line.decode().strip())


async def test_a_stream_that_falls_behind_its_queue_is_ended_and_resumes_from_the_ring(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    async with served(store, tmp_path, StreamSettings(queue=2)) as api:
        bus = api.harness.engine.events
        async with api.stream() as stream:
            # published in one go: the replay numbers them all before the stream can write one
            for n in range(10):
                bus.publish(ImportErrorChanged(f"/dags/f{n}.py", "boom"))
            got: list[SseMessage] = []
            while (message := await stream.next()) is not None:
                got.append(message)
        assert len(got) == 2  # what its queue held, then the stream ended instead of growing

        async with api.stream(**{"Last-Event-ID": str(got[-1].id)}) as resumed:
            rest = [await resumed.next() for _ in range(10 - len(got))]
        files = [data(m)["filename"] for m in got + [m for m in rest if m is not None]]
        assert files == [f"/dags/f{n}.py" for n in range(10)]


async def test_open_streams_end_cleanly_when_the_server_shuts_down(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    async with served(store, tmp_path) as api, api.stream() as stream:
        await api.trigger("lone", "r1")
        await stream.until(run_reached("lone", "r1", "success"))
        with anyio.fail_after(10):  # far below aiohttp's 60 s wait for open handlers
            await api.runner.cleanup()
            assert await stream.next() is None


async def test_a_written_webhook_delivery_is_published(store: PostgresStateStore) -> None:
    bus = EventBus()
    with bus.subscribe() as subscription:
        delivery_log = DeliveryLog(store, events=bus)
        delivery = WebhookDelivery("github", "d-1", datetime.now(UTC), 202, True, dag_id="pair", run_id="w1")
        delivery_log.record(delivery)
        await delivery_log.flush()
        assert subscription.pending() == 1
        event = await subscription.__anext__()
    assert event == WebhookDeliveryRecorded(delivery)
    listed, _ = await store.list_webhook_deliveries("github", 10, 0)
    assert [d.delivery_id for d in listed] == ["d-1"]


async def test_a_webhook_delivery_event_on_the_stream_names_its_dag(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    async with served(store, tmp_path) as api:
        delivery_log = DeliveryLog(store, events=api.harness.engine.events)
        async with api.stream("?dag_id=pair") as stream:
            delivery_log.record(WebhookDelivery("github", "d-2", datetime.now(UTC), 202, True, dag_id="pair"))
            message = await stream.next()
    assert message is not None and message.event == "webhook_delivery"
    assert data(message)["webhook"] == "github" and data(message)["delivery_id"] == "d-2"


def test_run_events_carry_no_conf() -> None:
    from orchestrator.api.events import event_data
    from orchestrator.api.replay import NumberedEvent

    now = datetime.now(UTC)
    run = RunRecord(1, "d", "r", RunState.QUEUED, "manual", {"password": "s3cr3t-value"}, now, now, now, now)
    kind, body = event_data(NumberedEvent(1, RunChanged(run), now))
    assert kind == "dag_run" and "conf" not in body and "s3cr3t-value" not in json.dumps(body)
