"""`GET /api/v1/events`: every committed state change, live, as server-sent events.

The stream carries what the engine's event bus publishes once it is committed: run states
(`dag_run`), task-instance states (`task_instance`), DAG-file import errors (`import_error`)
and webhook deliveries (`webhook_delivery`). Each message is

    id: <an integer that only grows>
    event: <kind>
    data: <JSON in Airflow's field names: dag_id, dag_run_id, task_id, map_index, state, ...>

`?dag_id=a&dag_id=b` keeps only the events of those DAGs (import errors, which belong to a
file, are left out then). `Last-Event-ID` (the header a browser's EventSource sends on
reconnecting, or `?last_event_id=`) resumes after that id from the replay ring
(`orchestrator.api.replay`); an id it no longer covers first gets an event `reset`: events were
missed, re-read the state. A comment line `: keepalive` goes out every `heartbeat` seconds of
silence (a timer of the event loop; nothing polls), so proxies keep the connection and a
client that left is noticed.

A slow client never holds up the engine: its stream has a bounded queue and is ended when the
queue is full (the client reconnects and is replayed the rest). On shutdown every stream ends
cleanly, and one stuck writing to a client that reads nothing is cut, so the server's graceful
shutdown is not held up by open streams.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from orchestrator.api.errors import ApiError, BadRequest
from orchestrator.api.params import list_param
from orchestrator.api.replay import DEFAULT_CAPACITY, DEFAULT_QUEUE, EventReplay, NumberedEvent, StreamFeed
from orchestrator.api.serializers import iso
from orchestrator.api.webhooks import delivery_to_json
from orchestrator.core.states import TaskState
from orchestrator.ports import (
    Event,
    Events,
    ImportErrorChanged,
    RunChanged,
    Subscription,
    TaskInstanceChanged,
    WebhookDeliveryRecorded,
)

log = logging.getLogger("orchestrator.api.events")

_QUERY = frozenset({"dag_id", "last_event_id"})
#: the bus buffer of the replay's own subscription (it reads as fast as events come)
_BUS_BUFFER = 100_000


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How many events are kept for resumption, how many one stream may lag behind, and the
    seconds of silence after which a keepalive comment is sent."""

    replay: int = DEFAULT_CAPACITY
    queue: int = DEFAULT_QUEUE
    heartbeat: float = 15.0


@dataclass(eq=False)
class _Open:
    """One open stream: its feed, its request, and whether it is writing right now."""

    feed: StreamFeed
    request: web.Request
    writing: bool = False


@dataclass(eq=False)
class EventStreams:
    """The app's event streams: the bus they read, their settings, and (once the app has
    started) the replay ring fed by one task that reads the bus."""

    events: Events | None
    settings: StreamSettings = field(default_factory=StreamSettings)
    replay: EventReplay | None = None
    _open: set[_Open] = field(default_factory=set)


EVENT_STREAMS = web.AppKey("event_streams", EventStreams)


def event_data(item: NumberedEvent) -> tuple[str, dict[str, Any]]:
    """The kind and the JSON body of one numbered event."""
    event: Event = item.event
    timestamp = iso(item.at)
    if isinstance(event, RunChanged):
        run = event.run
        return "dag_run", {
            "dag_id": run.dag_id,
            "dag_run_id": run.run_id,
            "state": str(run.state),
            "run_type": run.run_type,
            "logical_date": iso(run.logical_date),
            "execution_date": iso(run.logical_date),
            "queued_at": iso(run.queued_at),
            "start_date": iso(run.start_date),
            "end_date": iso(run.end_date),
            "timestamp": timestamp,
        }
    if isinstance(event, TaskInstanceChanged):
        ti = event.task_instance
        return "task_instance", {
            "dag_id": ti.dag_id,
            "dag_run_id": ti.run_id,
            "task_id": ti.task_id,
            "map_index": ti.map_index,
            "try_number": ti.try_number,
            "max_tries": ti.max_tries,
            "state": None if ti.state == TaskState.NONE else str(ti.state),
            "operator": ti.operator,
            "hostname": ti.hostname or "",
            "start_date": iso(ti.start_date),
            "end_date": iso(ti.end_date),
            "duration": ti.duration,
            "timestamp": timestamp,
        }
    if isinstance(event, ImportErrorChanged):
        return "import_error", {
            "filename": event.fileloc,
            "stack_trace": event.message,
            "timestamp": timestamp,
        }
    if isinstance(event, WebhookDeliveryRecorded):
        return "webhook_delivery", {**delivery_to_json(event.delivery), "timestamp": timestamp}
    raise TypeError(f"no stream form for the event {event!r}")


def encode(item: NumberedEvent, dag_ids: frozenset[str]) -> bytes | None:
    """The SSE message of `item`, or None if the `dag_ids` filter leaves it out."""
    kind, data = event_data(item)
    if dag_ids and data.get("dag_id") not in dag_ids:
        return None
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (item.id, kind.encode(), orjson.dumps(data))


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    source = "the Last-Event-ID header"
    if raw is None or not raw.strip():
        raw = request.query.get("last_event_id")
        source = "query parameter last_event_id"
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadRequest(f"{source} {raw!r} is not an event id (the integer of an id: line)") from None
    if value < 0:
        raise BadRequest(f"{source} {value} is not an event id: ids are not negative")
    return value


def _check_query(request: web.Request) -> None:
    unknown = sorted(set(request.query) - _QUERY)
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s) {', '.join(unknown)}: GET /events takes dag_id (repeatable) "
            "and last_event_id"
        )


async def stream_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/events (text/event-stream): see the module's docstring."""
    _check_query(request)
    dag_ids = frozenset(list_param(request, "dag_id"))
    after = _last_event_id(request)
    streams = request.app[EVENT_STREAMS]
    replay = streams.replay
    if replay is None:
        raise ApiError(503, "the event stream is not available: this API runs without the engine's event bus")
    # opened before the first await: nothing committed from here on can be missed
    feed, missed = replay.open(after, streams.settings.queue)
    reset_id = replay.last_id
    stream = _Open(feed, request)
    streams._open.add(stream)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    response.force_close()  # the connection ends with the stream (no idle keep-alive to wait for)
    try:
        await response.prepare(request)
        if missed:
            detail = {"last_event_id": after, "reason": "events after it are not kept: re-read the state"}
            message = b"id: %d\nevent: reset\ndata: %s\n\n" % (reset_id, orjson.dumps(detail))
            await _write(stream, response, message)
        else:
            await _write(stream, response, b": connected\n\n")
        await _pump(stream, response, dag_ids, streams.settings.heartbeat)
        await response.write_eof()
    except ConnectionError:  # the client left (or was cut at shutdown)
        log.debug("event stream to %s ended by the client", request.remote)
    finally:
        feed.close()
        streams._open.discard(stream)
    return response


async def _write(stream: _Open, response: web.StreamResponse, chunk: bytes) -> None:
    stream.writing = True
    try:
        await response.write(chunk)
    finally:
        stream.writing = False


async def _pump(
    stream: _Open, response: web.StreamResponse, dag_ids: frozenset[str], heartbeat: float
) -> None:
    """Write the feed's events until it ends; a keepalive comment after `heartbeat` s of silence
    (with the last id passed over, when the filter left events out, so a resume starts there)."""
    feed = stream.feed
    skipped: int | None = None
    while True:
        batch = feed.take()
        if batch:
            chunks = []
            for item in batch:
                message = encode(item, dag_ids)
                if message is None:
                    skipped = item.id
                else:
                    chunks.append(message)
                    skipped = None
            if chunks:
                await _write(stream, response, b"".join(chunks))
            continue
        if feed.ended is not None:
            log.debug("event stream to %s ended (%s)", stream.request.remote, feed.ended.value)
            return
        try:
            async with asyncio.timeout(heartbeat):
                await feed.wait()
        except TimeoutError:
            keepalive = b": keepalive\n\n" if skipped is None else b": keepalive\nid: %d\n\n" % skipped
            skipped = None
            await _write(stream, response, keepalive)


async def _follow_bus(app: web.Application) -> Any:
    """Cleanup context: the replay ring reads the bus from the app's start to its cleanup."""
    streams = app[EVENT_STREAMS]
    task: asyncio.Task[None] | None = None
    subscription: Subscription | None = None
    if streams.events is not None:
        replay = EventReplay(streams.settings.replay)
        subscription = streams.events.subscribe(_BUS_BUFFER)
        task = asyncio.get_running_loop().create_task(replay.follow(subscription), name="event stream replay")
        task.add_done_callback(_report_end)
        streams.replay = replay
    yield
    if subscription is not None:
        subscription.close()
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the event stream stopped reading the event bus: %r", task.exception())


async def _end_streams(app: web.Application) -> None:
    """on_shutdown: every stream ends; one blocked writing to a client that reads nothing is cut
    (aiohttp waits for open handlers before it cleans up)."""
    streams = app[EVENT_STREAMS]
    if streams.replay is not None:
        streams.replay.end_all()
    for stream in list(streams._open):
        if stream.writing and stream.request.transport is not None:
            stream.request.transport.close()


def add_routes(app: web.Application, events: Events | None) -> None:
    """Serve GET /api/v1/events from `events` (None: the route answers 503)."""
    app[EVENT_STREAMS] = EventStreams(events)
    app.router.add_get("/api/v1/events", stream_events)
    app.cleanup_ctx.append(_follow_bus)
    app.on_shutdown.append(_end_streams)
