"""Routes about DAGs: get, pause/unpause, their tasks, and DAG files that failed to import (the
list of DAGs, with its filters, is in orchestrator.api.lists)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api.bodies import json_object
from orchestrator.api.errors import BadRequest, NotFound
from orchestrator.api.keys import ENGINE, STORE
from orchestrator.api.listing import parse_order, refuse_unknown
from orchestrator.api.params import MAX_BIGINT, int_path_param, json_response, pagination
from orchestrator.api.serializers import downstream_ids, import_error_to_json, task_to_json
from orchestrator.api.sources import dag_json
from orchestrator.core.listing import IMPORT_ERROR_ORDER_COLUMNS, TASK_ORDER_COLUMNS, Order, Page
from orchestrator.core.model import TaskSpec
from orchestrator.core.records import DagRecord
from orchestrator.ports import StateStore


async def get_dag_or_404(store: StateStore, dag_id: str) -> DagRecord:
    dag = await store.get_dag(dag_id)
    if dag is None:
        raise NotFound(
            f"DAG {dag_id!r} not found: check the id with `orchestrator dags list` (GET /api/v1/dags) "
            "and whether its file failed to import (`orchestrator dags errors`)",
            title="DAG not found",
        )
    return dag


async def get_dag(request: web.Request) -> web.Response:
    dag = await get_dag_or_404(request.app[STORE], request.match_info["dag_id"])
    return json_response(dag_json(request, dag))


async def patch_dag(request: web.Request) -> web.Response:
    """Airflow's PATCH /dags/{dag_id}: only `is_paused` can be changed."""
    store = request.app[STORE]
    dag_id = request.match_info["dag_id"]
    await get_dag_or_404(store, dag_id)
    update_mask = request.query.get("update_mask")
    if update_mask is not None and update_mask.strip() not in ("", "is_paused"):
        raise BadRequest(f"update_mask={update_mask!r} is not supported: only is_paused can be updated")
    body = await json_object(request, frozenset({"is_paused"}))
    if "is_paused" not in body:
        raise BadRequest('the request body must set is_paused, e.g. {"is_paused": true}')
    if not isinstance(body["is_paused"], bool):
        raise BadRequest(f"is_paused must be true or false, got {body['is_paused']!r}")
    updated = await request.app[ENGINE].set_paused(dag_id, body["is_paused"])
    if updated is None:  # deleted between the two statements
        updated = await get_dag_or_404(store, dag_id)
    return json_response(dag_json(request, updated))


def _task_sort_key(task: TaskSpec, column: str) -> tuple[Any, str]:
    value = getattr(task, column)  # one of TASK_ORDER_COLUMNS
    return (value if isinstance(value, int) else str(value), task.task_id)


async def list_tasks(request: web.Request) -> web.Response:
    from orchestrator.core.serialization import spec_from_dict

    refuse_unknown(request.query, ("order_by",))
    order = parse_order(request.query.get("order_by"), TASK_ORDER_COLUMNS, Order("task_id"))
    dag = await get_dag_or_404(request.app[STORE], request.match_info["dag_id"])
    spec = spec_from_dict(dag.spec)
    downstream = downstream_ids(spec)
    ordered = sorted(spec.tasks, key=lambda t: _task_sort_key(t, order.column), reverse=order.descending)
    tasks = [task_to_json(task, downstream[task.task_id]) for task in ordered]
    return json_response({"tasks": tasks, "total_entries": len(tasks)})


async def list_import_errors(request: web.Request) -> web.Response:
    """Airflow's GET /importErrors: oldest first unless `order_by` says otherwise."""
    refuse_unknown(request.query, ("limit", "offset", "order_by"))
    limit, offset = pagination(request)
    order = parse_order(request.query.get("order_by"), IMPORT_ERROR_ORDER_COLUMNS, Order("import_error_id"))
    errors, total = await request.app[STORE].find_import_errors(order, Page(limit, offset))
    return json_response({"import_errors": [import_error_to_json(e) for e in errors], "total_entries": total})


async def get_import_error(request: web.Request) -> web.Response:
    import_error_id = int_path_param(request, "import_error_id", 1, MAX_BIGINT)
    errors = await request.app[STORE].list_import_errors()
    for error in errors:
        if error.import_error_id == import_error_id:
            return json_response(import_error_to_json(error))
    raise NotFound(
        f"import error {import_error_id} not found (fixed files lose theirs): "
        "list the current ones with GET /api/v1/importErrors",
        title="Import error not found",
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/dags/{dag_id}", get_dag)
    router.add_patch("/api/v1/dags/{dag_id}", patch_dag)
    router.add_get("/api/v1/dags/{dag_id}/tasks", list_tasks)
    router.add_get("/api/v1/importErrors", list_import_errors)
    router.add_get("/api/v1/importErrors/{import_error_id}", get_import_error)
