"""The API's lists of DAGs, DAG runs and task instances, with Airflow's filters and order_by.

`~` stands for "every DAG" or "every run" in a path, as in Airflow: `GET /dags/~/dagRuns`,
`GET /dags/~/dagRuns/~/taskInstances`. The batch forms `POST /dags/~/dagRuns/list` and
`POST /dags/~/dagRuns/~/taskInstances/list` take the same filters in a JSON body (Airflow's
ListDagRunsForm and ListTaskInstanceForm) and only read, so a viewer may send them. Filtering,
ordering and paging all happen in SQL (`ListingStore`).
"""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.bodies import json_object
from orchestrator.api.dags import get_dag_or_404
from orchestrator.api.keys import STORE, UNIXNAME
from orchestrator.api.listing import Arguments, parse_order, refuse_unknown, run_states, task_states
from orchestrator.api.params import json_response
from orchestrator.api.roles import Role, requires
from orchestrator.api.runs import get_run_or_404
from orchestrator.api.serializers import run_to_json, task_instance_to_json
from orchestrator.api.sources import dag_json
from orchestrator.core.listing import (
    DAG_ORDER_COLUMNS,
    NEWEST_RUN_FIRST,
    RUN_ORDER_COLUMNS,
    TASK_INSTANCE_KEY_ORDER,
    TASK_INSTANCE_ORDER_COLUMNS,
    DagQuery,
    Order,
    RunQuery,
    TaskInstanceQuery,
)

#: a path segment that stands for every DAG, or every run
WILDCARD = "~"

_PAGE = ("limit", "offset", "order_by")
_DATES = ("execution_date", "start_date", "end_date")


def _ranges(*names: str) -> tuple[str, ...]:
    return tuple(f"{name}_{side}" for name in names for side in ("gte", "lte"))


DAG_LIST_PARAMETERS = (*_PAGE, "tags", "only_active", "paused", "dag_id_pattern")
RUN_LIST_PARAMETERS = (*_PAGE, "state", "run_type", *_ranges(*_DATES, "updated_at"))
RUN_BATCH_FIELDS = ("page_offset", "page_limit", "order_by", "dag_ids", "states", *_ranges(*_DATES))
TASK_INSTANCE_LIST_PARAMETERS = (
    *_PAGE,
    "state",
    "pool",
    "queue",
    *_ranges(*_DATES, "updated_at", "duration"),
)
TASK_INSTANCE_BATCH_FIELDS = (
    "page_offset",
    "page_limit",
    "order_by",
    "dag_ids",
    "dag_run_ids",
    "task_ids",
    "state",
    "pool",
    "queue",
    *_ranges(*_DATES, "duration"),
)


# --- DAGs -------------------------------------------------------------------------------------


async def list_dags(request: web.Request) -> web.Response:
    """Airflow's GET /dags: tags (any of), only_active, paused, dag_id_pattern, order_by."""
    refuse_unknown(request.query, DAG_LIST_PARAMETERS)
    args = Arguments(request)
    query = DagQuery(
        only_active=args.flag("only_active") is not False,
        paused=args.flag("paused"),
        tags=args.strings("tags"),
        dag_id_pattern=args.text("dag_id_pattern"),
        order=parse_order(args.text("order_by"), DAG_ORDER_COLUMNS, Order("dag_id")),
        page=args.page(),
    )
    dags, total = await request.app[STORE].find_dags(query)
    return json_response({"dags": [dag_json(request, dag) for dag in dags], "total_entries": total})


# --- DAG runs ---------------------------------------------------------------------------------


def _run_query(args: Arguments, dag_ids: tuple[str, ...] | None, batch: bool) -> RunQuery:
    return RunQuery(
        dag_ids=dag_ids,
        states=run_states(args.strings("states" if batch else "state"), "states" if batch else "state"),
        run_types=None if batch else args.strings("run_type"),
        execution_date=args.time_range("execution_date"),
        start_date=args.time_range("start_date"),
        end_date=args.time_range("end_date"),
        updated_at=args.time_range("updated_at"),
        order=parse_order(args.text("order_by"), RUN_ORDER_COLUMNS, Order.parse(NEWEST_RUN_FIRST)),
        page=args.page(),
    )


async def _runs_response(request: web.Request, query: RunQuery) -> web.Response:
    runs, total = await request.app[STORE].find_runs(query)
    return json_response({"dag_runs": [run_to_json(run) for run in runs], "total_entries": total})


async def list_runs(request: web.Request) -> web.Response:
    """Airflow's GET /dags/{dag_id}/dagRuns (dag_id `~`: every DAG's), newest first by default."""
    refuse_unknown(request.query, RUN_LIST_PARAMETERS)
    dag_id = request.match_info["dag_id"]
    query = _run_query(Arguments(request), None if dag_id == WILDCARD else (dag_id,), batch=False)
    if dag_id != WILDCARD:
        await get_dag_or_404(request.app[STORE], dag_id)
    return await _runs_response(request, query)


@requires(Role.VIEWER)
async def list_runs_batch(request: web.Request) -> web.Response:
    """Airflow's POST /dags/~/dagRuns/list (ListDagRunsForm)."""
    body = await json_object(request, frozenset(RUN_BATCH_FIELDS))
    args = Arguments(request, body)
    return await _runs_response(request, _run_query(args, args.strings("dag_ids"), batch=True))


# --- task instances ---------------------------------------------------------------------------


def _task_instance_query(
    args: Arguments,
    dag_ids: tuple[str, ...] | None,
    run_ids: tuple[str, ...] | None,
    task_ids: tuple[str, ...] | None,
) -> TaskInstanceQuery:
    return TaskInstanceQuery(
        dag_ids=dag_ids,
        run_ids=run_ids,
        task_ids=task_ids,
        states=task_states(args.strings("state")),
        pools=args.strings("pool"),
        queues=args.strings("queue"),
        execution_date=args.time_range("execution_date"),
        start_date=args.time_range("start_date"),
        end_date=args.time_range("end_date"),
        updated_at=args.time_range("updated_at"),
        duration=args.number_range("duration"),
        order=parse_order(args.text("order_by"), TASK_INSTANCE_ORDER_COLUMNS, Order(TASK_INSTANCE_KEY_ORDER)),
        page=args.page(),
    )


async def _task_instances_response(request: web.Request, query: TaskInstanceQuery) -> web.Response:
    found, total = await request.app[STORE].find_task_instances(query)
    unixname = request.app[UNIXNAME]
    page = [task_instance_to_json(ti, run, unixname) for ti, run in found]
    return json_response({"task_instances": page, "total_entries": total})


async def list_task_instances(request: web.Request) -> web.Response:
    """Airflow's GET /dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances; `~` for either id lists
    across DAGs or runs."""
    refuse_unknown(request.query, TASK_INSTANCE_LIST_PARAMETERS)
    dag_id, run_id = request.match_info["dag_id"], request.match_info["run_id"]
    dag_ids = None if dag_id == WILDCARD else (dag_id,)
    run_ids = None if run_id == WILDCARD else (run_id,)
    query = _task_instance_query(Arguments(request), dag_ids, run_ids, None)
    store = request.app[STORE]
    if dag_id != WILDCARD and run_id != WILDCARD:
        await get_run_or_404(store, dag_id, run_id)
    elif dag_id != WILDCARD:
        await get_dag_or_404(store, dag_id)
    return await _task_instances_response(request, query)


@requires(Role.VIEWER)
async def list_task_instances_batch(request: web.Request) -> web.Response:
    """Airflow's POST /dags/~/dagRuns/~/taskInstances/list (ListTaskInstanceForm)."""
    body = await json_object(request, frozenset(TASK_INSTANCE_BATCH_FIELDS))
    args = Arguments(request, body)
    query = _task_instance_query(
        args, args.strings("dag_ids"), args.strings("dag_run_ids"), args.strings("task_ids")
    )
    return await _task_instances_response(request, query)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/dags", list_dags)
    router.add_get("/api/v1/dags/{dag_id}/dagRuns", list_runs)
    router.add_post("/api/v1/dags/~/dagRuns/list", list_runs_batch)
    router.add_get("/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances", list_task_instances)
    router.add_post("/api/v1/dags/~/dagRuns/~/taskInstances/list", list_task_instances_batch)
