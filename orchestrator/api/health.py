"""The probes: Airflow's /health (the engine and the database), and /ready (the engine).

Both are public: a load balancer or a supervisor asks without credentials. `health_report` is
the one report /health and /api/v2/monitor/health answer, each in its version's shape.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from orchestrator.api.keys import ENGINE, STORE
from orchestrator.api.params import json_response
from orchestrator.api.roles import public
from orchestrator.errors import OrchestratorError
from orchestrator.ports import StateStore

log = logging.getLogger("orchestrator.api")

#: Seconds /health waits for the database's answer before calling it unhealthy.
HEALTH_DATABASE_TIMEOUT = 2.0


async def _database_status(store: StateStore) -> str:
    try:
        await store.check_database(HEALTH_DATABASE_TIMEOUT)
    except OrchestratorError as exc:
        log.warning("health check: the metadatabase is unhealthy: %s", exc)
        return "unhealthy"
    return "healthy"


async def health_report(app: web.Application) -> tuple[dict[str, Any], bool]:
    """Airflow's /health body, and whether the engine and the database are both healthy."""
    scheduler = "healthy" if app[ENGINE].is_ready() else "unhealthy"
    metadatabase = await _database_status(app[STORE])
    healthy = scheduler == metadatabase == "healthy"
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "metadatabase": {"status": metadatabase},
        "scheduler": {"status": scheduler},
    }
    return body, healthy


@public
async def health(request: web.Request) -> web.Response:
    """Airflow's /health shape; 503 until the engine is ready and while the database does not
    answer, so load balancers and supervisors see both."""
    body, healthy = await health_report(request.app)
    return json_response(body, status=200 if healthy else 503)


@public
async def ready(request: web.Request) -> web.Response:
    """200 once the engine has recovered and takes work, 503 before that and while draining
    (a readiness probe; /health also asks the database)."""
    if request.app[ENGINE].is_ready():
        return json_response({"status": "ready"})
    return json_response({"status": "not ready"}, status=503)
