"""XCom entries of a task instance: Airflow's GET …/taskInstances/{task_id}/xcomEntries (list)
and …/xcomEntries/{xcom_key} (one, with its value).

Our XComs are stored as JSON, so `deserialize` changes nothing; `stringify` (default true, as in
Airflow 2) answers the value as Python's str() of it, the way Airflow 2 does, and
`stringify=false` answers the JSON value itself.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api.errors import BadRequest, NotFound
from orchestrator.api.keys import STORE
from orchestrator.api.listing import refuse_unknown
from orchestrator.api.params import MAX_INTEGER, bool_param, json_response, pagination
from orchestrator.api.runs import get_run_or_404
from orchestrator.api.serializers import iso
from orchestrator.core.listing import XComEntry

_ENTRIES = "/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries"


def _map_index(request: web.Request, default: int | None) -> int | None:
    raw = request.query.get("map_index", "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter map_index={raw!r} is not an integer") from None
    if not -1 <= value <= MAX_INTEGER:
        raise BadRequest(f"query parameter map_index={value} must be between -1 (unmapped) and {MAX_INTEGER}")
    return value


def entry_to_json(entry: XComEntry) -> dict[str, Any]:
    """Airflow's XComCollectionItem."""
    return {
        "key": entry.key,
        "timestamp": iso(entry.timestamp),
        "execution_date": iso(entry.logical_date),
        "map_index": entry.map_index,
        "task_id": entry.task_id,
        "dag_id": entry.dag_id,
    }


def stringified(value: Any) -> str:
    """The value as Airflow 2 answers it by default: Python's str() of the deserialized value."""
    return value if isinstance(value, str) else str(value)


async def list_xcom_entries(request: web.Request) -> web.Response:
    refuse_unknown(request.query, ("map_index", "xcom_key", "limit", "offset"))
    limit, offset = pagination(request)
    map_index = _map_index(request, None)
    key = request.query.get("xcom_key") or None
    run = await get_run_or_404(request.app[STORE], request.match_info["dag_id"], request.match_info["run_id"])
    entries, total = await request.app[STORE].find_xcom_entries(
        run.pk, request.match_info["task_id"], map_index, key, limit, offset
    )
    return json_response({"xcom_entries": [entry_to_json(e) for e in entries], "total_entries": total})


async def get_xcom_entry(request: web.Request) -> web.Response:
    refuse_unknown(request.query, ("map_index", "deserialize", "stringify"))
    map_index = _map_index(request, -1)
    bool_param(request, "deserialize", False)  # checked; stored values are JSON already
    stringify = bool_param(request, "stringify", True)
    task_id, key = request.match_info["task_id"], request.match_info["xcom_key"]
    run = await get_run_or_404(request.app[STORE], request.match_info["dag_id"], request.match_info["run_id"])
    entries, _ = await request.app[STORE].find_xcom_entries(run.pk, task_id, map_index, key, 1, 0)
    if not entries:
        mapped = f" (map_index {map_index})" if map_index is not None and map_index >= 0 else ""
        raise NotFound(
            f"XCom entry {key!r} of task {task_id!r}{mapped} not found in run {run.run_id!r} of DAG "
            f"{run.dag_id!r}: list the keys with GET {request.path.rsplit('/', 1)[0]}",
            title="XCom entry not found",
        )
    entry = entries[0]
    body = entry_to_json(entry)
    body["value"] = stringified(entry.value) if stringify else entry.value
    return json_response(body)


def add_routes(router: web.UrlDispatcher) -> None:
    """Register before the task-instance routes: …/taskInstances/{task_id}/{map_index} would
    otherwise take `xcomEntries` for a map index."""
    router.add_get(_ENTRIES, list_xcom_entries)
    router.add_get(_ENTRIES + "/{xcom_key}", get_xcom_entry)
