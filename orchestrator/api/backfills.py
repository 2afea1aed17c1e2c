"""Routes about backfills (Airflow 3's /backfills, served under /api/v1): create one (or a dry
run), list them, get one, pause, unpause and cancel it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api.bodies import json_object, parse_datetime
from orchestrator.api.errors import BadRequest, NotFound
from orchestrator.api.keys import BACKFILLS, STORE
from orchestrator.api.params import MAX_BIGINT, int_path_param, json_response, pagination
from orchestrator.api.roles import Role, requires
from orchestrator.api.serializers import iso
from orchestrator.core.records import BackfillRecord, BackfillRunRecord
from orchestrator.triggers.backfill import DEFAULT_MAX_ACTIVE_RUNS, BackfillRequest

_POST_FIELDS = frozenset(
    {
        "dag_id",
        "from_date",
        "to_date",
        "run_backwards",
        "dag_run_conf",
        "reprocess_behavior",
        "max_active_runs",
    }
)


def backfill_to_json(backfill: BackfillRecord) -> dict[str, Any]:
    """Airflow 3's BackfillResponse."""
    return {
        "id": backfill.id,
        "dag_id": backfill.dag_id,
        "dag_display_name": backfill.dag_id,
        "from_date": iso(backfill.from_date),
        "to_date": iso(backfill.to_date),
        "dag_run_conf": backfill.dag_run_conf,
        "is_paused": backfill.is_paused,
        "reprocess_behavior": backfill.reprocess_behavior,
        "max_active_runs": backfill.max_active_runs,
        "run_backwards": backfill.run_backwards,
        "created_at": iso(backfill.created_at),
        "completed_at": iso(backfill.completed_at),
        "updated_at": iso(backfill.updated_at),
    }


def backfill_run_to_json(run: BackfillRunRecord) -> dict[str, Any]:
    return {
        "logical_date": iso(run.logical_date),
        "data_interval_start": iso(run.data_interval_start),
        "data_interval_end": iso(run.data_interval_end),
        "dag_run_id": run.run_id,
        "state": run.run_state,
        "exception_reason": run.exception_reason,
    }


async def _request(request: web.Request) -> BackfillRequest:
    body = await json_object(request, _POST_FIELDS)
    for name in ("dag_id", "from_date", "to_date"):
        if body.get(name) is None:
            raise BadRequest(f"the request body must set {name}")
    if not isinstance(body["dag_id"], str):
        raise BadRequest("dag_id must be a string")
    max_active_runs = body.get("max_active_runs", DEFAULT_MAX_ACTIVE_RUNS)
    if isinstance(max_active_runs, bool) or not isinstance(max_active_runs, int) or max_active_runs < 1:
        raise BadRequest(f"max_active_runs must be an integer of at least 1, got {max_active_runs!r}")
    run_backwards = body.get("run_backwards", False)
    if not isinstance(run_backwards, bool):
        raise BadRequest(f"run_backwards must be true or false, got {run_backwards!r}")
    conf = body.get("dag_run_conf") or {}
    if not isinstance(conf, dict):
        raise BadRequest(f"dag_run_conf must be a JSON object, got {type(conf).__name__}")
    reprocess = body.get("reprocess_behavior", "none")
    if not isinstance(reprocess, str):
        raise BadRequest("reprocess_behavior must be one of none, failed, completed")
    return BackfillRequest(
        dag_id=body["dag_id"],
        from_date=parse_datetime(body["from_date"], "from_date"),
        to_date=parse_datetime(body["to_date"], "to_date"),
        reprocess_behavior=reprocess,
        max_active_runs=max_active_runs,
        run_backwards=run_backwards,
        dag_run_conf=conf,
    )


@requires(Role.ADMIN)
async def create_backfill(request: web.Request) -> web.Response:
    backfill = await request.app[BACKFILLS].create(await _request(request))
    return json_response(backfill_to_json(backfill))


@requires(Role.VIEWER)
async def dry_run(request: web.Request) -> web.Response:
    """The logical dates a backfill would create runs for (skipped dates left out, as Airflow)."""
    planned = await request.app[BACKFILLS].plan(await _request(request))
    runs = [{"logical_date": iso(run.logical_date)} for run in planned if run.exception_reason is None]
    return json_response({"backfills": runs, "total_entries": len(runs)})


async def list_backfills(request: web.Request) -> web.Response:
    limit, offset = pagination(request)
    dag_id = request.query.get("dag_id") or None
    backfills, total = await request.app[STORE].list_backfills(dag_id, limit, offset)
    return json_response({"backfills": [backfill_to_json(b) for b in backfills], "total_entries": total})


async def _get_or_404(request: web.Request) -> BackfillRecord:
    backfill_id = int_path_param(request, "backfill_id", 1, MAX_BIGINT)
    backfill = await request.app[STORE].get_backfill(backfill_id)
    if backfill is None:
        raise NotFound(f"backfill {backfill_id} not found: list them with GET /api/v1/backfills")
    return backfill


async def get_backfill(request: web.Request) -> web.Response:
    return json_response(backfill_to_json(await _get_or_404(request)))


async def list_backfill_runs(request: web.Request) -> web.Response:
    """The dates a backfill planned, each with its run (or why it has none)."""
    backfill = await _get_or_404(request)
    runs = await request.app[STORE].list_backfill_runs(backfill.id)
    return json_response({"dag_runs": [backfill_run_to_json(r) for r in runs], "total_entries": len(runs)})


@requires(Role.ADMIN)
async def pause_backfill(request: web.Request) -> web.Response:
    backfill = await _get_or_404(request)
    return json_response(backfill_to_json(await request.app[BACKFILLS].set_paused(backfill.id, True)))


@requires(Role.ADMIN)
async def unpause_backfill(request: web.Request) -> web.Response:
    backfill = await _get_or_404(request)
    return json_response(backfill_to_json(await request.app[BACKFILLS].set_paused(backfill.id, False)))


@requires(Role.ADMIN)
async def cancel_backfill(request: web.Request) -> web.Response:
    backfill = await _get_or_404(request)
    return json_response(backfill_to_json(await request.app[BACKFILLS].cancel(backfill.id)))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/backfills", create_backfill)
    router.add_post("/api/v1/backfills/dry_run", dry_run)
    router.add_get("/api/v1/backfills", list_backfills)
    router.add_get("/api/v1/backfills/{backfill_id}", get_backfill)
    router.add_get("/api/v1/backfills/{backfill_id}/dagRuns", list_backfill_runs)
    router.add_put("/api/v1/backfills/{backfill_id}/pause", pause_backfill)
    router.add_put("/api/v1/backfills/{backfill_id}/unpause", unpause_backfill)
    router.add_put("/api/v1/backfills/{backfill_id}/cancel", cancel_backfill)
