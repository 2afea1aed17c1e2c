"""/api/v2's health (`/monitor/health`) and version, from the same report as v1's /health."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.health import health_report
from orchestrator.api.meta import version
from orchestrator.api.params import json_response
from orchestrator.api.roles import public


@public
async def get_health(request: web.Request) -> web.Response:
    """Airflow 3's HealthInfoResponse: v1's report, plus the triggerer (deferred tasks' triggers
    run in the scheduler's own loop here, so it is as healthy as the scheduler)."""
    report, healthy = await health_report(request.app)
    scheduler = report["scheduler"]["status"]
    body = {
        "metadatabase": report["metadatabase"],
        "scheduler": {"status": scheduler, "latest_scheduler_heartbeat": None},
        "triggerer": {"status": scheduler, "latest_triggerer_heartbeat": None},
        "dag_processor": None,
    }
    return json_response(body, status=200 if healthy else 503)


@public  # as in Airflow 3: the client asks without credentials
async def get_version(request: web.Request) -> web.Response:
    """The orchestrator's version (Airflow 3's VersionInfo)."""
    return json_response({"version": version(), "git_version": None})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v2/monitor/health", get_health)
    router.add_get("/api/v2/version", get_version)
