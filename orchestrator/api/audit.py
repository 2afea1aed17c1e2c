"""The audit trail: who did what through the API, recorded by a middleware, read at GET /eventLogs.

Every request other than GET, HEAD and OPTIONS that reaches a route is recorded once answered,
whether it succeeded or failed, as one entry of Airflow's event log: `owner` is the name of the
token that made it (`anonymous` without one), `event` the handler's name (`trigger_run`,
`patch_dag`, ...), `dag_id`, `run_id`, `task_id` (and `map_index`, `try_number`) come from the
URL (a trigger's `run_id` from its body's `dag_run_id`), and `extra` holds the status and the
keys of the JSON body -- with the values only of a few flags that say what was done
(`is_paused`, `state`, `dry_run`, ...), never a value of conf or anything else a caller may
have put a secret in. Webhook deliveries are not recorded here (they have their own delivery
log), nor requests for no route, nor requests forwarded to another replica (the replica that
answered records them, under the name of the token this one authenticated).

Recording is one INSERT, awaited before the answer goes out so that a client reading the trail
right after its request finds it there; it must never fail the request it records: a database
that refuses (or takes longer than `RECORD_TIMEOUT`) costs a warning in the log, not the answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web

from orchestrator.api.bodies import parse_datetime
from orchestrator.api.errors import BadRequest, Handler, NotFound, status_of
from orchestrator.api.keys import FORWARDED_TO, JSON_BODY, PRINCIPAL, STORE
from orchestrator.api.params import MAX_INTEGER, int_path_param, json_response, list_param, pagination
from orchestrator.api.serializers import iso
from orchestrator.core.ids import MAX_RUN_ID_LENGTH
from orchestrator.ports import EventLogEntry, EventLogQuery

log = logging.getLogger("orchestrator.api.audit")

F = TypeVar("F", bound=Callable[..., Any])

#: seconds the audit INSERT may take before the request is answered without it
RECORD_TIMEOUT = 5.0
#: body keys whose value says what was done and can hold nothing secret (kept if bool or short)
_TELLING_FIELDS = frozenset(
    {
        "is_paused",
        "state",
        "new_state",
        "dry_run",
        "only_failed",
        "only_running",
        "include_upstream",
        "include_downstream",
        "include_future",
        "include_past",
        "reset_dag_runs",
    }
)
#: the most body keys an entry keeps, and of each key's text
_MAX_KEYS = 50
_MAX_KEY_TEXT = 100
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_UNAUDITED = "__orchestrator_unaudited__"

_FILTERS = frozenset(
    {
        "dag_id",
        "task_id",
        "run_id",
        "map_index",
        "try_number",
        "event",
        "owner",
        "before",
        "after",
        "included_events",
        "excluded_events",
        "limit",
        "offset",
        "order_by",
    }
)
_ORDERS = frozenset(
    f"{sign}{name}"
    for sign in ("", "-")
    for name in ("event_log_id", "when", "dag_id", "task_id", "run_id", "event", "owner")
)


def unaudited(handler: F) -> F:
    """Declare a handler whose requests the audit trail leaves out (it keeps its own log)."""
    setattr(handler, _UNAUDITED, True)
    return handler


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _extra(request: web.Request, status: int) -> dict[str, Any]:
    extra: dict[str, Any] = {"status": status, "method": request.method}
    body = request.get(JSON_BODY)
    if body is not None:
        extra["body_keys"] = sorted(str(key)[:_MAX_KEY_TEXT] for key in body)[:_MAX_KEYS]
        told = {
            key: value
            for key, value in body.items()
            if key in _TELLING_FIELDS
            and (isinstance(value, bool) or (isinstance(value, str) and len(value) <= 40))
        }
        if told:
            extra["values"] = told
    return extra


def entry_for(request: web.Request, status: int, now: datetime) -> EventLogEntry | None:
    """The audit entry of one answered request, or None if it is not audited."""
    if request.method in _READS or request.get(FORWARDED_TO) is not None:
        return None  # a forwarded request is recorded by the replica that answered it
    route = request.match_info.route
    if route.resource is None:  # no route matched (404, 405): nothing was done
        return None
    handler = route.handler
    if getattr(handler, _UNAUDITED, False):
        return None
    principal = request.get(PRINCIPAL)
    match = request.match_info
    run_id = match.get("dag_run_id", match.get("run_id"))
    body = request.get(JSON_BODY)
    if run_id is None and body is not None and isinstance(body.get("dag_run_id"), str):
        run_id = body["dag_run_id"][:MAX_RUN_ID_LENGTH]  # a trigger names its run in the body
    return EventLogEntry(
        when=now,
        event=getattr(handler, "__name__", "unknown"),
        owner=principal.name if principal is not None else "anonymous",
        dag_id=match.get("dag_id"),
        task_id=match.get("task_id"),
        run_id=run_id,
        map_index=_int_or_none(match.get("map_index")),
        try_number=_int_or_none(match.get("try_number")),
        extra=_extra(request, status),
    )


async def _record(request: web.Request, status: int) -> None:
    entry = entry_for(request, status, datetime.now(UTC))
    if entry is None:
        return
    try:
        async with asyncio.timeout(RECORD_TIMEOUT):
            await request.app[STORE].record_event_log(entry)
    except Exception as exc:  # the trail must never fail the request it records
        log.warning(
            "the audit trail could not record %s %s by %s (-> %d): %r",
            request.method,
            request.path,
            entry.owner,
            status,
            exc,
        )


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every mutating request in the audit trail once it is answered (see the module)."""
    if request.method in _READS:
        return await handler(request)
    try:
        response = await handler(request)
    except Exception as exc:
        await _record(request, status_of(request, exc))
        raise
    await _record(request, response.status)
    return response


# --- GET /eventLogs --------------------------------------------------------------------------


def entry_to_json(entry: EventLogEntry) -> dict[str, Any]:
    """Airflow's EventLog (v1): `extra` is a JSON text, as Airflow stores it."""
    return {
        "event_log_id": entry.event_log_id,
        "when": iso(entry.when),
        "dag_id": entry.dag_id,
        "task_id": entry.task_id,
        "run_id": entry.run_id,
        "map_index": entry.map_index,
        "try_number": entry.try_number,
        "event": entry.event,
        "execution_date": iso(entry.execution_date),
        "owner": entry.owner,
        "extra": None if entry.extra is None else orjson.dumps(entry.extra).decode(),
    }


def _query_int(request: web.Request, name: str, minimum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name}={raw!r} is not an integer") from None
    if not minimum <= value <= MAX_INTEGER:
        raise BadRequest(f"query parameter {name}={value} must be between {minimum} and {MAX_INTEGER}")
    return value


def _query_time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    return None if raw is None or raw == "" else parse_datetime(raw, f"query parameter {name}")


def event_log_query(request: web.Request) -> EventLogQuery:
    """The filters of GET /eventLogs; an unknown parameter is a 400."""
    unknown = sorted(set(request.query) - _FILTERS)
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s) {', '.join(unknown)}; GET /eventLogs takes "
            f"{', '.join(sorted(_FILTERS))}"
        )
    return EventLogQuery(
        dag_id=request.query.get("dag_id") or None,
        task_id=request.query.get("task_id") or None,
        run_id=request.query.get("run_id") or None,
        map_index=_query_int(request, "map_index", -1),
        try_number=_query_int(request, "try_number", 0),
        event=request.query.get("event") or None,
        owner=request.query.get("owner") or None,
        before=_query_time(request, "before"),
        after=_query_time(request, "after"),
        included_events=tuple(list_param(request, "included_events")),
        excluded_events=tuple(list_param(request, "excluded_events")),
    )


async def list_event_logs(request: web.Request) -> web.Response:
    """GET /api/v1/eventLogs: Airflow's EventLogCollection, oldest first by default."""
    query = event_log_query(request)
    limit, offset = pagination(request)
    order_by = request.query.get("order_by") or "event_log_id"
    if order_by not in _ORDERS:
        raise BadRequest(f"order_by={order_by!r} is not one of: {', '.join(sorted(_ORDERS))}")
    entries, total = await request.app[STORE].list_event_logs(query, order_by, limit, offset)
    return json_response({"event_logs": [entry_to_json(e) for e in entries], "total_entries": total})


async def get_event_log(request: web.Request) -> web.Response:
    """GET /api/v1/eventLogs/{event_log_id}."""
    event_log_id = int_path_param(request, "event_log_id", 1, 2**63 - 1)
    entry = await request.app[STORE].get_event_log(event_log_id)
    if entry is None:
        raise NotFound(f"event log entry {event_log_id} not found", "Event Log not found")
    return json_response(entry_to_json(entry))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/eventLogs", list_event_logs)
    router.add_get("/api/v1/eventLogs/{event_log_id}", get_event_log)
