"""Routes about assets: record an event from outside, list assets and their events.

Airflow 2.9+'s v1 shapes (datasets: `POST /datasets/events`, `GET /datasets`, `GET
/datasets/events`) under Airflow 3's word, `/api/v1/assets/...`; the `/datasets` paths answer
too, with Airflow 2's keys. An event names an asset by URI; an unknown asset is created by its
first event (Airflow 3 insists that it exist: we accept it, so that an upstream system may
announce data before any DAG names it). The event is recorded through the `AssetEventSink`,
which triggers every DAG the event completes; its runs are created right after the answer, so
`created_dagruns` of the answer is usually empty (GET the event again to see them).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api.bodies import json_object
from orchestrator.api.errors import ApiError, BadRequest
from orchestrator.api.keys import STORE
from orchestrator.api.params import json_response, pagination
from orchestrator.api.serializers import iso
from orchestrator.core.records import AssetEventRecord, AssetRecord
from orchestrator.ports import AssetEventSink

ASSET_SINK: web.AppKey[AssetEventSink] = web.AppKey("asset_sink", Any)  # type: ignore[arg-type]

_EVENT_FIELDS = frozenset({"asset_uri", "dataset_uri", "uri", "extra"})
_ORDERS = {"timestamp": False, "-timestamp": True, "id": False, "-id": True}


def event_to_json(event: AssetEventRecord) -> dict[str, Any]:
    """An asset event with Airflow 3's (asset_*) and Airflow 2's (dataset_*) field names."""
    return {
        "id": event.id,
        "asset_id": event.asset_id,
        "asset_uri": event.uri,
        "uri": event.uri,
        "dataset_id": event.asset_id,
        "dataset_uri": event.uri,
        "extra": event.extra,
        "source_dag_id": event.source_dag_id,
        "source_task_id": event.source_task_id,
        "source_run_id": event.source_run_id,
        "source_map_index": event.source_map_index,
        "created_dagruns": [
            {"dag_id": dag_id, "dag_run_id": run_id, "run_id": run_id}
            for dag_id, run_id in event.created_dagruns
        ],
        "timestamp": iso(event.timestamp),
    }


def asset_to_json(asset: AssetRecord) -> dict[str, Any]:
    return {
        "id": asset.id,
        "uri": asset.uri,
        "name": asset.uri,
        "group": "asset",
        "extra": {},
        "created_at": iso(asset.created_at),
        "updated_at": iso(asset.updated_at or asset.created_at),
        "consuming_dags": [{"dag_id": dag_id} for dag_id in asset.consuming_dags],
        "producing_tasks": [
            {"dag_id": dag_id, "task_id": task_id} for dag_id, task_id in asset.producing_tasks
        ],
    }


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def create_event(request: web.Request) -> web.Response:
    """POST /assets/events {"asset_uri": "...", "extra": {...}} -> 200 with the recorded event."""
    sink = request.app.get(ASSET_SINK)
    if sink is None:
        raise ApiError(503, "asset events cannot be recorded here: this API runs without the asset trigger")
    body = await json_object(request, _EVENT_FIELDS)
    uri = body.get("asset_uri", body.get("dataset_uri", body.get("uri")))
    if uri is None:
        raise BadRequest(
            'the request body must name the asset: {"asset_uri": "s3://bucket/key", "extra": {}}'
        )
    if not isinstance(uri, str):
        raise BadRequest(f"asset_uri must be a string, got {type(uri).__name__}")
    extra = body.get("extra")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise BadRequest(f'extra must be a JSON object, got {type(extra).__name__}: e.g. {{"rows": 10}}')
    event_id, _created = await sink.record_asset_event(uri, extra)
    event = await request.app[STORE].get_asset_event(event_id)
    if event is None:
        raise ApiError(500, f"asset event {event_id} was recorded but cannot be read back: retry the GET")
    return json_response(event_to_json(event))


def _aliases(request: web.Request) -> tuple[str, str]:
    """The list keys of this path: Airflow 2's (datasets) or Airflow 3's (assets)."""
    return ("datasets", "dataset_events") if "/datasets" in request.path else ("assets", "asset_events")


async def list_assets(request: web.Request) -> web.Response:
    limit, offset = pagination(request)
    pattern = request.query.get("uri_pattern") or None
    assets, total = await request.app[STORE].list_assets(
        limit, offset, None if pattern is None else _like_pattern(pattern)
    )
    key, _ = _aliases(request)
    return json_response({key: [asset_to_json(asset) for asset in assets], "total_entries": total})


async def list_events(request: web.Request) -> web.Response:
    limit, offset = pagination(request)
    uri = (
        request.query.get("asset_uri") or request.query.get("dataset_uri") or request.query.get("uri") or None
    )
    order_by = request.query.get("order_by") or "timestamp"
    if order_by not in _ORDERS:
        raise BadRequest(f"order_by={order_by!r} is not supported; use one of: {', '.join(_ORDERS)}")
    events, total = await request.app[STORE].list_asset_events(limit, offset, uri, _ORDERS[order_by])
    _, key = _aliases(request)
    return json_response({key: [event_to_json(event) for event in events], "total_entries": total})


def add_routes(router: web.UrlDispatcher) -> None:
    for word in ("assets", "datasets"):
        router.add_post(f"/api/v1/{word}/events", create_event)
        router.add_get(f"/api/v1/{word}/events", list_events)
        router.add_get(f"/api/v1/{word}", list_assets)
