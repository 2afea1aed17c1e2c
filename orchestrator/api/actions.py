"""Routes that change runs, task instances and DAGs (Airflow 2's v1): mark a run (PATCH dagRuns/{id}),
clear it (POST dagRuns/{id}/clear), delete it, delete a DAG's records, clear task instances
(POST clearTaskInstances) and mark one (PATCH taskInstances/{task_id}).

Each handler checks its body and asks the engine (`EngineApi`): the engine changes the runs it
drives in memory and commits every change before anything is acted on, so the answer describes
what is committed. Airflow's defaults are kept, `dry_run` true included: a client that sends no
`dry_run` is told what would change, and nothing changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from orchestrator.api.bodies import json_object, parse_datetime
from orchestrator.api.errors import BadRequest
from orchestrator.api.keys import ENGINE, STORE, UNIXNAME
from orchestrator.api.params import MAX_INTEGER, int_path_param, json_response
from orchestrator.api.roles import Role, requires
from orchestrator.api.serializers import iso, run_to_json, task_instance_to_json
from orchestrator.core.records import RunRecord, TaskInstanceRecord
from orchestrator.core.states import RunState, TaskState
from orchestrator.core.transitions import USER_RUN_MARKS, USER_TASK_MARKS
from orchestrator.ports import ClearSelection

_DAG = "/api/v1/dags/{dag_id}"
_RUN = _DAG + "/dagRuns/{run_id}"

#: UpdateDagRunState's states, and UpdateTaskInstance's
RUN_STATES = tuple(sorted(state.value for state in USER_RUN_MARKS))
TASK_STATES = tuple(sorted(state.value for state in USER_TASK_MARKS))

_CLEAR_FIELDS = frozenset(
    {
        "dry_run",
        "task_ids",
        "start_date",
        "end_date",
        "only_failed",
        "only_running",
        "include_subdags",
        "include_parentdag",
        "include_upstream",
        "include_downstream",
        "include_future",
        "include_past",
        "reset_dag_runs",
        "dag_run_id",
    }
)
_UPDATE_TI_FIELDS = frozenset(
    {"dry_run", "new_state", "include_upstream", "include_downstream", "include_future", "include_past"}
)


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {value!r}")
    return value


def _unsupported(body: dict[str, Any], *names: str) -> None:
    for name in names:
        if _bool(body, name, False):
            raise BadRequest(
                f"{name}=true is not supported: runs here do not depend on their past or future runs"
            )


def task_reference(run: RunRecord, ti: TaskInstanceRecord) -> dict[str, Any]:
    """Airflow's TaskInstanceReference."""
    return {
        "task_id": ti.task_id,
        "dag_id": ti.dag_id,
        "dag_run_id": ti.run_id,
        "execution_date": iso(run.logical_date),
    }


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], example: str) -> str:
    value = body.get(name)
    if value not in allowed:
        raise BadRequest(
            f'{name} must be one of {", ".join(allowed)}, got {value!r}: e.g. {{"{name}": "{example}"}}'
        )
    return str(value)


async def update_run_state(request: web.Request) -> web.Response:
    """Airflow's PATCH /dags/{dag_id}/dagRuns/{dag_run_id} (UpdateDagRunState): 200 with the run."""
    body = await json_object(request, frozenset({"state"}))
    state = RunState(_choice(body, "state", RUN_STATES, "success"))
    run = await request.app[ENGINE].set_run_state(
        request.match_info["dag_id"], request.match_info["run_id"], state
    )
    return json_response(run_to_json(run))


async def clear_run(request: web.Request) -> web.Response:
    """Airflow's POST .../dagRuns/{dag_run_id}/clear (ClearDagRun): with dry_run (the default) the
    task instances it would clear, else the run, queued again with every task instance cleared."""
    body = await json_object(request, frozenset({"dry_run"}))
    dry_run = _bool(body, "dry_run", True)
    dag_id, run_id = request.match_info["dag_id"], request.match_info["run_id"]
    selection = ClearSelection(run_id=run_id, only_failed=False, reset_dag_runs=True)
    cleared = await request.app[ENGINE].clear_task_instances(dag_id, selection, dry_run=dry_run)
    if dry_run:
        unixname = request.app[UNIXNAME]
        tis = [task_instance_to_json(ti, run, unixname) for run, ti in cleared]
        return json_response({"task_instances": tis, "total_entries": len(tis)})
    run = await request.app[STORE].get_run(dag_id, run_id)
    if run is None:  # deleted meanwhile
        return json_response({"task_instances": [], "total_entries": 0})
    return json_response(run_to_json(run))


@requires(Role.ADMIN)
async def delete_run(request: web.Request) -> web.Response:
    """Airflow's DELETE .../dagRuns/{dag_run_id}: 204; 409 while the run is queued or running."""
    await request.app[ENGINE].delete_run(request.match_info["dag_id"], request.match_info["run_id"])
    return web.Response(status=204)


@requires(Role.ADMIN)
async def delete_dag(request: web.Request) -> web.Response:
    """Airflow's DELETE /dags/{dag_id}: 204; the DAG's runs and records go (its file stays, and a
    DAG still in a loaded file is recorded again at once); 409 while it has active runs."""
    await request.app[ENGINE].delete_dag(request.match_info["dag_id"])
    return web.Response(status=204)


def _optional_date(body: dict[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    return None if value is None else parse_datetime(value, name)


def clear_selection(body: dict[str, Any]) -> ClearSelection:
    """A ClearTaskInstances body, checked."""
    _unsupported(body, "include_future", "include_past")
    _bool(body, "include_subdags", False)  # there are no subdags: accepted, nothing to include
    _bool(body, "include_parentdag", False)
    task_ids = body.get("task_ids", [])
    if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
        raise BadRequest('task_ids must be a list of task ids, e.g. {"task_ids": ["extract"]}')
    run_id = body.get("dag_run_id")
    if run_id is not None and not isinstance(run_id, str):
        raise BadRequest(f"dag_run_id must be a string, got {run_id!r}")
    start, end = _optional_date(body, "start_date"), _optional_date(body, "end_date")
    if run_id is not None and (start is not None or end is not None):
        raise BadRequest("give either dag_run_id or start_date/end_date, not both")
    if start is not None and end is not None and start > end:
        raise BadRequest("start_date is after end_date")
    return ClearSelection(
        task_ids=tuple(task_ids),
        run_id=run_id,
        start_date=start,
        end_date=end,
        only_failed=_bool(body, "only_failed", True),
        only_running=_bool(body, "only_running", False),
        include_upstream=_bool(body, "include_upstream", False),
        include_downstream=_bool(body, "include_downstream", False),
        reset_dag_runs=_bool(body, "reset_dag_runs", True),
    )


async def clear_task_instances(request: web.Request) -> web.Response:
    """Airflow's POST /dags/{dag_id}/clearTaskInstances: the task instances cleared (or, with
    dry_run, the default, those it would clear) as TaskInstanceReferences."""
    body = await json_object(request, _CLEAR_FIELDS)
    dry_run = _bool(body, "dry_run", True)
    selection = clear_selection(body)
    cleared = await request.app[ENGINE].clear_task_instances(
        request.match_info["dag_id"], selection, dry_run=dry_run
    )
    return json_response({"task_instances": [task_reference(run, ti) for run, ti in cleared]})


async def _update_task_instance(request: web.Request, map_index: int) -> web.Response:
    body = await json_object(request, _UPDATE_TI_FIELDS)
    _unsupported(body, "include_upstream", "include_downstream", "include_future", "include_past")
    dry_run = _bool(body, "dry_run", True)
    state = TaskState(_choice(body, "new_state", TASK_STATES, "success"))
    run, ti = await request.app[ENGINE].set_task_instance_state(
        request.match_info["dag_id"],
        request.match_info["run_id"],
        request.match_info["task_id"],
        map_index,
        state,
        dry_run=dry_run,
    )
    return json_response(task_reference(run, ti))


async def update_task_instance(request: web.Request) -> web.Response:
    """Airflow's PATCH .../taskInstances/{task_id} (UpdateTaskInstance): mark it success, failed or
    skipped (dry_run, the default, changes nothing); 200 with its TaskInstanceReference."""
    return await _update_task_instance(request, -1)


async def update_mapped_task_instance(request: web.Request) -> web.Response:
    """PATCH .../taskInstances/{task_id}/{map_index}: the same, for one mapped instance."""
    return await _update_task_instance(request, int_path_param(request, "map_index", -1, MAX_INTEGER))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_delete(_DAG, delete_dag)
    router.add_post(f"{_DAG}/clearTaskInstances", clear_task_instances)
    router.add_patch(_RUN, update_run_state)
    router.add_delete(_RUN, delete_run)
    router.add_post(f"{_RUN}/clear", clear_run)
    router.add_patch(f"{_RUN}/taskInstances/{{task_id}}", update_task_instance)
    router.add_patch(f"{_RUN}/taskInstances/{{task_id}}/{{map_index}}", update_mapped_task_instance)
