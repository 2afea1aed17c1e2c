"""/api/v2 routes about DAGs: list, get, pause/unpause, and DAG files that failed to import.

The same store queries and engine calls as v1 (`orchestrator.api.dags`, `.lists`), in Airflow 3's shapes.
"""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.dags import get_dag_or_404
from orchestrator.api.errors import BadRequest, NotFound
from orchestrator.api.keys import ENGINE, SIGNING_KEY, STORE
from orchestrator.api.params import MAX_BIGINT, json_response
from orchestrator.api.v2 import validation as v
from orchestrator.api.v2.shapes import dag_to_json, import_error_to_json
from orchestrator.core.listing import DagQuery, Order, Page

_PATCH = {"is_paused": v.Field(v.Kind.BOOL, required=True, nullable=False)}


async def get_dags(request: web.Request) -> web.Response:
    """List DAGs (stale ones, whose file no longer defines them, only with exclude_stale=false)."""
    v.check_query(request, ("limit", "offset", "exclude_stale"))
    limit, offset = v.pagination(request)
    exclude_stale = v.query_bool(request, "exclude_stale", True)
    query = DagQuery(only_active=bool(exclude_stale), page=Page(limit, offset))
    dags, total = await request.app[STORE].find_dags(query)
    return json_response(
        {"dags": [dag_to_json(dag, request.app[SIGNING_KEY]) for dag in dags], "total_entries": total}
    )


async def get_dag(request: web.Request) -> web.Response:
    """Get one DAG."""
    v.check_query(request, ())
    dag = await get_dag_or_404(request.app[STORE], request.match_info["dag_id"])
    return json_response(dag_to_json(dag, request.app[SIGNING_KEY]))


async def patch_dag(request: web.Request) -> web.Response:
    """Pause or unpause a DAG (DAGPatchBody: only is_paused can be changed)."""
    v.check_query(request, ("update_mask",))
    store = request.app[STORE]
    dag_id = request.match_info["dag_id"]
    for mask in request.query.getall("update_mask", []):
        if mask.strip() not in ("", "is_paused"):
            raise BadRequest(f"update_mask={mask!r} is not supported: only is_paused can be updated")
    body = await v.body(request, _PATCH)
    await get_dag_or_404(store, dag_id)
    updated = await request.app[ENGINE].set_paused(dag_id, body["is_paused"])
    if updated is None:  # deleted between the two statements
        updated = await get_dag_or_404(store, dag_id)
    return json_response(dag_to_json(updated, request.app[SIGNING_KEY]))


async def get_import_errors(request: web.Request) -> web.Response:
    """List the DAG files that failed to import."""
    v.check_query(request, ("limit", "offset"))
    limit, offset = v.pagination(request)
    errors, total = await request.app[STORE].find_import_errors(Order("import_error_id"), Page(limit, offset))
    return json_response({"import_errors": [import_error_to_json(e) for e in errors], "total_entries": total})


async def get_import_error(request: web.Request) -> web.Response:
    """Get one import error."""
    import_error_id = v.path_int(request, "import_error_id", 1, MAX_BIGINT)
    for error in await request.app[STORE].list_import_errors():
        if error.import_error_id == import_error_id:
            return json_response(import_error_to_json(error))
    raise NotFound(
        f"import error {import_error_id} not found (fixed files lose theirs): "
        "list the current ones with GET /api/v2/importErrors"
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v2/dags", get_dags)
    router.add_get("/api/v2/dags/{dag_id}", get_dag)
    router.add_patch("/api/v2/dags/{dag_id}", patch_dag)
    router.add_get("/api/v2/importErrors", get_import_errors)
    router.add_get("/api/v2/importErrors/{import_error_id}", get_import_error)
