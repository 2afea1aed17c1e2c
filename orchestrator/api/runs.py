"""Routes about DAG runs: trigger one (POST dagRuns), get one, set its note (lists of runs, with
their filters, are in orchestrator.api.lists)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from orchestrator.api.bodies import json_object, parse_datetime
from orchestrator.api.dags import get_dag_or_404
from orchestrator.api.errors import BadRequest, Conflict, NotFound
from orchestrator.api.keys import ENGINE, STORE
from orchestrator.api.params import json_response
from orchestrator.api.serializers import run_to_json
from orchestrator.core.ids import check_run_id
from orchestrator.core.records import RunRecord
from orchestrator.ports import StateStore

#: Airflow's limit on a DAG-run note
MAX_NOTE_LENGTH = 1000

_TRIGGER_FIELDS = frozenset({"dag_run_id", "conf", "logical_date", "execution_date", "note"})


async def get_run_or_404(store: StateStore, dag_id: str, run_id: str) -> RunRecord:
    run = await store.get_run(dag_id, run_id)
    if run is None:
        await get_dag_or_404(store, dag_id)
        raise NotFound(
            f"DAG run {run_id!r} of DAG {dag_id!r} not found: list the runs with "
            f"`orchestrator runs {dag_id}` (GET /api/v1/dags/{dag_id}/dagRuns)",
            title="DAGRun not found",
        )
    return run


def _note(body: dict[str, Any]) -> str | None:
    note = body.get("note")
    if note is None:
        return None
    if not isinstance(note, str):
        raise BadRequest(f"note must be a string, got {type(note).__name__}")
    if len(note) > MAX_NOTE_LENGTH:
        raise BadRequest(f"note is {len(note)} characters long: at most {MAX_NOTE_LENGTH} are kept")
    return note


@dataclass(frozen=True, slots=True)
class TriggerArguments:
    """What a POST dagRuns body asks for, checked."""

    run_id: str | None
    conf: dict[str, Any]
    logical_date: datetime | None
    note: str | None


def _trigger_arguments(body: dict[str, Any]) -> TriggerArguments:
    run_id = body.get("dag_run_id")
    if run_id is not None:
        problem = check_run_id(run_id)  # the one run-id rule (orchestrator.core.ids)
        if problem is not None:
            raise BadRequest(problem)
    conf = body.get("conf")
    if conf is None:
        conf = {}
    elif not isinstance(conf, dict):
        raise BadRequest(f'conf must be a JSON object, got {type(conf).__name__}: e.g. {{"key": "value"}}')
    logical_date = None
    if body.get("logical_date") is not None:
        logical_date = parse_datetime(body["logical_date"], "logical_date")
    if body.get("execution_date") is not None:
        execution_date = parse_datetime(body["execution_date"], "execution_date")
        if logical_date is not None and logical_date != execution_date:
            raise BadRequest("logical_date and execution_date differ: send only logical_date")
        logical_date = execution_date
    return TriggerArguments(run_id, conf, logical_date, _note(body))


async def trigger_run(request: web.Request) -> web.Response:
    """Airflow's POST /dags/{dag_id}/dagRuns: 200 with the new run, 409 if the run id is taken."""
    dag_id = request.match_info["dag_id"]
    body = await json_object(request, _TRIGGER_FIELDS)
    args = _trigger_arguments(body)
    run, created = await request.app[ENGINE].trigger_run(
        dag_id,
        run_id=args.run_id,
        conf=args.conf,
        logical_date=args.logical_date,
        run_type="manual",
        note=args.note,
    )
    if not created:
        raise Conflict(
            f"DAGRun with DAG ID: {dag_id!r} and DAGRun ID: {run.run_id!r} already exists: "
            "pick another dag_run_id, or leave it out to get a generated one"
        )
    return json_response(run_to_json(run))


async def get_run(request: web.Request) -> web.Response:
    run = await get_run_or_404(request.app[STORE], request.match_info["dag_id"], request.match_info["run_id"])
    return json_response(run_to_json(run))


async def set_run_note(request: web.Request) -> web.Response:
    """Airflow's PATCH .../dagRuns/{dag_run_id}/setNote: body {"note": "..."}, answers the run."""
    store = request.app[STORE]
    dag_id, run_id = request.match_info["dag_id"], request.match_info["run_id"]
    body = await json_object(request, frozenset({"note"}))
    note = _note(body)
    if note is None:
        raise BadRequest('the request body must set note to a string, e.g. {"note": "re-run after the fix"}')
    run = await store.set_run_note(dag_id, run_id, note)
    if run is None:
        run = await get_run_or_404(store, dag_id, run_id)  # 404 naming what is missing
    return json_response(run_to_json(run))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/dags/{dag_id}/dagRuns", trigger_run)
    router.add_get("/api/v1/dags/{dag_id}/dagRuns/{run_id}", get_run)
    router.add_patch("/api/v1/dags/{dag_id}/dagRuns/{run_id}/setNote", set_run_note)
