"""GET /api/v1/dags/{dag_id}/details (Airflow's DAGDetail) and /dags/{dag_id}/tasks/{task_id}
(Airflow's Task).

DAGDetail is the DAG object plus the DAG's settings; what we know comes from the stored spec,
and what has no meaning here (orientation, default_view, template_search_path…) is Airflow's
default or null, so strict clients find every field they expect.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api.dags import get_dag_or_404
from orchestrator.api.errors import BadRequest, NotFound
from orchestrator.api.keys import STORE
from orchestrator.api.listing import refuse_unknown
from orchestrator.api.params import json_response
from orchestrator.api.serializers import downstream_ids, iso, task_to_json
from orchestrator.api.sources import dag_json
from orchestrator.core.records import DagRecord
from orchestrator.core.serialization import spec_from_dict


def _param(value: Any) -> dict[str, Any]:
    """One DAG param in Airflow 2's serialized Param form."""
    return {"__class": "airflow.models.param.Param", "value": value, "description": None, "schema": {}}


def details_extra(dag: DagRecord) -> dict[str, Any]:
    """The DAGDetail fields beyond the DAG object's."""
    spec = spec_from_dict(dag.spec)
    return {
        "timezone": spec.timezone or "UTC",
        "catchup": spec.catchup,
        "orientation": "LR",
        "concurrency": spec.max_active_tasks,
        "max_active_tasks": spec.max_active_tasks,
        "start_date": iso(spec.start_date),
        "end_date": iso(spec.end_date),
        "dag_run_timeout": None,
        "dataset_expression": spec.asset_condition,
        "doc_md": None,
        "default_view": "grid",
        "params": {name: _param(value) for name, value in spec.params.items()},
        "is_paused_upon_creation": spec.is_paused_upon_creation,
        "last_parsed": iso(dag.last_parsed_time),
        "render_template_as_native_obj": False,
        "template_search_path": None,
    }


async def get_dag_details(request: web.Request) -> web.Response:
    """Airflow's GET /dags/{dag_id}/details."""
    refuse_unknown(request.query, ("fields",))
    dag = await get_dag_or_404(request.app[STORE], request.match_info["dag_id"])
    body = dag_json(request, dag) | details_extra(dag)
    fields = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()]
    if fields:
        unknown = sorted(set(fields) - set(body))
        if unknown:
            raise BadRequest(
                f"unknown field(s) {', '.join(map(repr, unknown))} in fields; "
                f"DAGDetail has {', '.join(sorted(body))}"
            )
        body = {name: body[name] for name in fields}
    return json_response(body)


async def get_task(request: web.Request) -> web.Response:
    """Airflow's GET /dags/{dag_id}/tasks/{task_id}."""
    refuse_unknown(request.query, ())
    dag = await get_dag_or_404(request.app[STORE], request.match_info["dag_id"])
    spec = spec_from_dict(dag.spec)
    task_id = request.match_info["task_id"]
    for task in spec.tasks:
        if task.task_id == task_id:
            return json_response(task_to_json(task, downstream_ids(spec)[task_id]))
    raise NotFound(
        f"task {task_id!r} not found in DAG {dag.dag_id!r}: list its tasks with "
        f"GET /api/v1/dags/{dag.dag_id}/tasks",
        title="Task not found",
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/dags/{dag_id}/details", get_dag_details)
    router.add_get("/api/v1/dags/{dag_id}/tasks/{task_id}", get_task)
