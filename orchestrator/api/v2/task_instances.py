"""/api/v2 routes about the task instances of a run, and the log of each try.

The same lookups as v1 (`orchestrator.api.task_instances`); a log is answered as Airflow 3's
TaskInstancesLogResponse, `{"content": [{"event": line}, ...], "continuation_token"}`, with one
structured message per line of the try's log (`orchestrator.api.v2.logs`).
"""

from __future__ import annotations

import enum

from aiohttp import web

from orchestrator.api.keys import STORE, UNIXNAME
from orchestrator.api.logs import decode_token
from orchestrator.api.params import json_response
from orchestrator.api.remote_logs import proxied_log
from orchestrator.api.runs import get_run_or_404
from orchestrator.api.task_instances import _task_instance, try_log
from orchestrator.api.v2 import validation as v
from orchestrator.api.v2.logs import send_structured_log
from orchestrator.api.v2.shapes import task_instance_to_json
from orchestrator.core.listing import Page, TaskInstanceQuery
from orchestrator.core.records import RunRecord
from orchestrator.core.states import TaskState

_RUN = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}"

#: the task-instance states a list may be filtered by; Airflow 3 names "no state" no_status
StateFilter = enum.Enum(  # type: ignore[misc]
    "StateFilter", {state.name: state.value for state in TaskState} | {"NO_STATUS": "no_status"}
)


async def _run(request: web.Request) -> RunRecord:
    match = request.match_info
    return await get_run_or_404(request.app[STORE], match["dag_id"], match["dag_run_id"])


async def get_task_instances(request: web.Request) -> web.Response:
    """List the task instances of a run, optionally only those in some states."""
    v.check_query(request, ("limit", "offset", "state"))
    limit, offset = v.pagination(request)
    wanted = v.query_enum(request, "state", StateFilter)
    run = await _run(request)
    states = None
    if wanted is not None:
        states = tuple(TaskState.NONE.value if s.value == "no_status" else s.value for s in wanted)
    query = TaskInstanceQuery(
        dag_ids=(run.dag_id,), run_ids=(run.run_id,), states=states, page=Page(limit, offset)
    )
    found, total = await request.app[STORE].find_task_instances(query)
    unixname = request.app[UNIXNAME]
    page = [task_instance_to_json(ti, run, unixname) for ti, _ in found]
    return json_response({"task_instances": page, "total_entries": total})


async def get_task_instance(request: web.Request) -> web.Response:
    """Get one (unmapped) task instance."""
    v.check_query(request, ())
    run = await _run(request)
    ti = await _task_instance(request, run, -1)
    return json_response(task_instance_to_json(ti, run, request.app[UNIXNAME]))


async def get_mapped_task_instance(request: web.Request) -> web.Response:
    """Get one task instance by its map index."""
    v.check_query(request, ())
    map_index = v.path_int(request, "map_index", -1)
    run = await _run(request)
    ti = await _task_instance(request, run, map_index)
    return json_response(task_instance_to_json(ti, run, request.app[UNIXNAME]))


async def get_log(request: web.Request) -> web.StreamResponse:
    """One try's log as structured lines: a page from `token`, or all of it with full_content."""
    v.check_query(request, ("full_content", "map_index", "token"))
    try_number = v.path_int(request, "try_number", 0)
    map_index = v.query_int(request, "map_index", -1, -1, 2**31 - 1)
    full_content = bool(v.query_bool(request, "full_content", False))
    token = request.query.get("token", "")
    offset = decode_token(token) if token else 0
    run = await _run(request)
    ti = await _task_instance(request, run, map_index)
    remote = await proxied_log(request, run, ti, try_number)
    if remote is not None:  # another replica ran the try and has its log
        return remote
    logs, log, size = await try_log(request.app, run, ti, try_number)
    return await send_structured_log(request, logs, log, size, offset, full_content)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(f"{_RUN}/taskInstances", get_task_instances)
    router.add_get(f"{_RUN}/taskInstances/{{task_id}}", get_task_instance)
    router.add_get(f"{_RUN}/taskInstances/{{task_id}}/{{map_index}}", get_mapped_task_instance)
    router.add_get(f"{_RUN}/taskInstances/{{task_id}}/logs/{{try_number}}", get_log)
