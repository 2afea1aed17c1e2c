"""Routes about the task instances of a run, and the log of each try.

Logs are read through the `TaskLogs` port, in chunks (`orchestrator.api.logs`), so a running
task's log can be read while it grows and no log is ever held in memory whole; a log only
another replica has is streamed from it (`orchestrator.api.remote_logs`).
"""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.errors import BadRequest, NotFound
from orchestrator.api.keys import STORE, TASK_LOGS, UNIXNAME
from orchestrator.api.logs import log_options, send_log
from orchestrator.api.params import MAX_INTEGER, int_path_param, json_response
from orchestrator.api.remote_logs import proxied_log
from orchestrator.api.runs import get_run_or_404
from orchestrator.api.serializers import task_instance_to_json
from orchestrator.core.records import RunRecord, TaskInstanceRecord, TaskKey
from orchestrator.ports import TaskLogs, TryLog

_RUN = "/api/v1/dags/{dag_id}/dagRuns/{run_id}"


async def _run(request: web.Request) -> RunRecord:
    return await get_run_or_404(
        request.app[STORE], request.match_info["dag_id"], request.match_info["run_id"]
    )


async def _task_instance(request: web.Request, run: RunRecord, map_index: int) -> TaskInstanceRecord:
    task_id = request.match_info["task_id"]
    ti = await request.app[STORE].get_task_instance(TaskKey(run.pk, task_id, map_index))
    if ti is None:
        mapped = f" (map_index {map_index})" if map_index >= 0 else ""
        raise NotFound(
            f"task instance {task_id!r}{mapped} not found in run {run.run_id!r} of DAG {run.dag_id!r}: "
            f"list them with `orchestrator tasks {run.dag_id} {run.run_id}`",
            title="Task instance not found",
        )
    return ti


def _map_index_query(request: web.Request) -> int:
    raw = request.query.get("map_index", "")
    if raw == "":
        return -1
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter map_index={raw!r} is not an integer") from None
    if not -1 <= value <= MAX_INTEGER:
        raise BadRequest(f"query parameter map_index={value} must be between -1 (unmapped) and {MAX_INTEGER}")
    return value


async def get_task_instance(request: web.Request) -> web.Response:
    run = await _run(request)
    ti = await _task_instance(request, run, -1)
    return json_response(task_instance_to_json(ti, run, request.app[UNIXNAME]))


async def get_mapped_task_instance(request: web.Request) -> web.Response:
    map_index = int_path_param(request, "map_index", -1)
    run = await _run(request)
    ti = await _task_instance(request, run, map_index)
    return json_response(task_instance_to_json(ti, run, request.app[UNIXNAME]))


async def get_log(request: web.Request) -> web.StreamResponse:
    """One try's log, streamed: text/plain, or Airflow's {"content", "continuation_token"} for
    Accept: JSON, with Airflow's `full_content` and `token` parameters (`orchestrator.api.logs`)."""
    try_number = int_path_param(request, "try_number", 1)
    map_index = _map_index_query(request)
    options = log_options(request)
    run = await _run(request)
    ti = await _task_instance(request, run, map_index)
    remote = await proxied_log(request, run, ti, try_number)
    if remote is not None:  # another replica ran the try and has its log
        return remote
    logs, log, size = await try_log(request.app, run, ti, try_number)
    return await send_log(request, logs, log, size, options)


async def try_log(
    app: web.Application, run: RunRecord, ti: TaskInstanceRecord, try_number: int
) -> tuple[TaskLogs, TryLog, int]:
    """The log of one try of `ti`, and its size now (0 for a try that has printed nothing yet);
    NotFound for a try that has not started."""
    logs = app[TASK_LOGS]
    log = TryLog(run.dag_id, run.run_id, ti.task_id, ti.map_index, try_number)
    size = await logs.size(log)
    if size is None and try_number > ti.try_number:
        why = (
            f"task {ti.task_id!r} has made {ti.try_number} tries so far (state {ti.state.value})"
            if ti.try_number
            else f"task {ti.task_id!r} has not started yet (state {ti.state.value})"
        )
        raise NotFound(
            f"no log for try {try_number} of task {ti.task_id!r} in run {run.run_id!r}: {why}",
            title="Log not found",
        )
    # a try that has printed nothing (yet) has no log file: its log is empty
    return logs, log, size or 0


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(f"{_RUN}/taskInstances/{{task_id}}", get_task_instance)
    router.add_get(f"{_RUN}/taskInstances/{{task_id}}/{{map_index}}", get_mapped_task_instance)
    router.add_get(f"{_RUN}/taskInstances/{{task_id}}/logs/{{try_number}}", get_log)
