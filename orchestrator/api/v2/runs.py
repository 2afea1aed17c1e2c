"""/api/v2 routes about DAG runs: trigger one (TriggerDAGRunPostBody), list a DAG's runs, get one.

Runs are triggered through the engine exactly as v1 triggers them (`EngineApi.trigger_run`).
Airflow 3 lets `logical_date` be null; a run here always has a logical date, which is then
`run_after` if given, else the time it is triggered. A run starts as soon as it is created, and
its data interval is its logical date, so a `run_after` other than the logical date, or another
data interval, is refused (400) rather than silently ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from orchestrator.api.dags import get_dag_or_404
from orchestrator.api.errors import BadRequest, Conflict
from orchestrator.api.keys import ENGINE, STORE
from orchestrator.api.params import json_response
from orchestrator.api.runs import MAX_NOTE_LENGTH, get_run_or_404
from orchestrator.api.v2 import validation as v
from orchestrator.api.v2.errors import invalid
from orchestrator.api.v2.shapes import run_to_json
from orchestrator.core.ids import check_run_id
from orchestrator.core.listing import Page, RunQuery
from orchestrator.core.states import RunState

_TRIGGER = {
    "dag_run_id": v.Field(v.Kind.STRING),
    "logical_date": v.Field(v.Kind.DATETIME),
    "run_after": v.Field(v.Kind.DATETIME),
    "data_interval_start": v.Field(v.Kind.DATETIME),
    "data_interval_end": v.Field(v.Kind.DATETIME),
    "conf": v.Field(v.Kind.OBJECT),
    "note": v.Field(v.Kind.STRING),
    "partition_key": v.Field(v.Kind.STRING),
}


def _logical_date(body: dict[str, Any]) -> datetime | None:
    """The logical date the engine is asked for (None: now), checked against the rest."""
    logical_date, after = body.get("logical_date"), body.get("run_after")
    start, end = body.get("data_interval_start"), body.get("data_interval_end")
    if (start is None) != (end is None):
        raise invalid(
            ["body"],
            "Value error, Either both data_interval_start and data_interval_end must be provided "
            "or both must be None",
            "value_error",
        )
    if start is not None and end is not None and start > end:
        raise invalid(
            ["body"], "Value error, data_interval_start must be before data_interval_end", "value_error"
        )
    if logical_date is not None and after is not None and after != logical_date:
        raise BadRequest(
            "run_after differs from logical_date: a run here starts once it is created, so send "
            "only one of them (or the same time in both)"
        )
    when = logical_date or after
    if start is not None and (when is None or start != when or end != when):
        raise BadRequest(
            "a triggered run's data interval is its logical date here: leave data_interval_start "
            "and data_interval_end out (or set both to the logical date)"
        )
    return when


async def trigger_dag_run(request: web.Request) -> web.Response:
    """Trigger a DAG run: 200 with the new run, 409 if its dag_run_id is taken."""
    v.check_query(request, ())
    dag_id = request.match_info["dag_id"]
    body = await v.body(request, _TRIGGER)
    note = body.get("note")
    if note is not None and len(note) > MAX_NOTE_LENGTH:
        raise invalid(
            ["body", "note"],
            f"String should have at most {MAX_NOTE_LENGTH} characters",
            "string_too_long",
            note,
        )
    if body.get("partition_key") is not None:
        raise BadRequest("partition_key is not supported: this orchestrator has no partitioned DAGs")
    run_id = body.get("dag_run_id")
    if run_id is not None:
        problem = check_run_id(run_id)  # the one run-id rule (orchestrator.core.ids)
        if problem is not None:
            raise BadRequest(problem)
    run, created = await request.app[ENGINE].trigger_run(
        dag_id,
        run_id=run_id,
        conf=body.get("conf") or {},
        logical_date=_logical_date(body),
        run_type="manual",
        note=note,
    )
    if not created:
        raise Conflict(
            f"DAG run with dag_id {dag_id!r} and dag_run_id {run.run_id!r} already exists: "
            "pick another dag_run_id, or leave it out to get a generated one"
        )
    return json_response(run_to_json(run))


async def get_dag_runs(request: web.Request) -> web.Response:
    """List a DAG's runs, newest first, optionally only those in some states."""
    v.check_query(request, ("limit", "offset", "state"))
    store = request.app[STORE]
    dag_id = request.match_info["dag_id"]
    limit, offset = v.pagination(request)
    states = v.query_enum(request, "state", RunState)
    await get_dag_or_404(store, dag_id)
    query = RunQuery(
        dag_ids=(dag_id,),
        states=None if states is None else tuple(state.value for state in states),
        page=Page(limit, offset),
    )
    runs, total = await store.find_runs(query)
    return json_response({"dag_runs": [run_to_json(run) for run in runs], "total_entries": total})


async def get_dag_run(request: web.Request) -> web.Response:
    """Get one DAG run."""
    v.check_query(request, ())
    match = request.match_info
    run = await get_run_or_404(request.app[STORE], match["dag_id"], match["dag_run_id"])
    return json_response(run_to_json(run))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v2/dags/{dag_id}/dagRuns", trigger_dag_run)
    router.add_get("/api/v2/dags/{dag_id}/dagRuns", get_dag_runs)
    router.add_get("/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}", get_dag_run)
