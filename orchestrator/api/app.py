"""The aiohttp application of the REST API, and the one thing it needs from the engine.

The API reads through the `StateStore` port and asks the engine (the `EngineApi` port)
only to trigger runs and to say whether it is ready, so it can be served — and tested — with
any implementation of both. The daemon mounts this app on its own runner.
"""

from __future__ import annotations

import getpass
import logging
from pathlib import Path

from aiohttp import web

from orchestrator.api import assets as asset_routes
from orchestrator.api import backfills as backfills_api
from orchestrator.api import dags, openapi, runs, task_instances, v2, webhooks
from orchestrator.api.errors import error_middleware
from orchestrator.api.guards import origin_guard
from orchestrator.api.keys import BACKFILLS, ENGINE, LOGS_DIR, SETTINGS, STORE, TASK_LOGS, UNIXNAME
from orchestrator.api.params import json_response
from orchestrator.config import ApiConfig
from orchestrator.errors import OrchestratorError
from orchestrator.ports import AssetEventSink, EngineApi, StateStore, TaskLogs
from orchestrator.triggers.backfill import Backfills
from orchestrator.triggers.webhooks import WebhookReceiver

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


async def health(request: web.Request) -> web.Response:
    """Airflow's /health shape; 503 until the engine is ready and while the database does not
    answer, so load balancers and supervisors see both."""
    scheduler = "healthy" if request.app[ENGINE].is_ready() else "unhealthy"
    metadatabase = await _database_status(request.app[STORE])
    healthy = scheduler == metadatabase == "healthy"
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "metadatabase": {"status": metadatabase},
        "scheduler": {"status": scheduler},
    }
    return json_response(body, status=200 if healthy else 503)


def _unixname() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def create_app(
    store: StateStore,
    engine: EngineApi,
    logs_dir: Path,
    task_logs: TaskLogs | None = None,
    settings: ApiConfig | None = None,
    backfills: Backfills | None = None,
    assets: AssetEventSink | None = None,
    webhook_receiver: WebhookReceiver | None = None,
) -> web.Application:
    """The REST API (Airflow's /api/v1 shapes) and /health, reading `store`, triggering via `engine`,
    serving task logs through `task_logs` (default: the files under `logs_dir`), limited by the
    [api] `settings` (defaults if None). External asset events go to `assets` (without it, POST
    /assets/events answers 503); webhooks are answered by `webhook_receiver` (None: none
    configured). The app's cleanup writes what is left of the webhook delivery log."""
    settings = settings or ApiConfig()
    app = web.Application(middlewares=[error_middleware, origin_guard(settings.allowed_origins)])
    app[STORE] = store
    app[ENGINE] = engine
    app[LOGS_DIR] = logs_dir
    if task_logs is None:
        from storage.filelogs import FileTaskLogs

        task_logs = FileTaskLogs(logs_dir)
    app[TASK_LOGS] = task_logs
    app[UNIXNAME] = _unixname()
    app[SETTINGS] = settings
    if assets is not None:
        app[asset_routes.ASSET_SINK] = assets
    app.router.add_get("/health", health)
    app.router.add_get("/api/v1/health", health)
    dags.add_routes(app.router)
    runs.add_routes(app.router)
    task_instances.add_routes(app.router)
    if backfills is not None:
        app[BACKFILLS] = backfills
        backfills_api.add_routes(app.router)
    asset_routes.add_routes(app.router)
    webhooks.add_routes(app, webhook_receiver)
    v2.install(app)
    openapi.add_routes(app.router)
    return app
