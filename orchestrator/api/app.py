"""The aiohttp application of the REST API, and the one thing it needs from the engine.

The API reads through the `StateStore` port and asks the engine (the `EngineApi` port)
only to trigger runs and to say whether it is ready, so it can be served — and tested — with
any implementation of both. The daemon mounts this app on its own runner.
"""

from __future__ import annotations

import getpass
from pathlib import Path

from aiohttp import web

from orchestrator.api import dags, runs, task_instances
from orchestrator.api.errors import error_middleware
from orchestrator.api.keys import ENGINE, LOGS_DIR, STORE, TASK_LOGS, UNIXNAME
from orchestrator.api.params import json_response
from orchestrator.ports import EngineApi, StateStore, TaskLogs


async def health(request: web.Request) -> web.Response:
    """Airflow's /health shape; 503 until the engine is ready, so load balancers wait for it."""
    ready = request.app[ENGINE].is_ready()
    status = "healthy" if ready else "unhealthy"
    body = {
        "status": status,
        "metadatabase": {"status": status},
        "scheduler": {"status": status},
    }
    return json_response(body, status=200 if ready else 503)


def _unixname() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def create_app(
    store: StateStore, engine: EngineApi, logs_dir: Path, task_logs: TaskLogs | None = None
) -> web.Application:
    """The REST API (Airflow's /api/v1 shapes) and /health, reading `store`, triggering via `engine`,
    serving task logs through `task_logs` (default: the files under `logs_dir`)."""
    app = web.Application(middlewares=[error_middleware])
    app[STORE] = store
    app[ENGINE] = engine
    app[LOGS_DIR] = logs_dir
    if task_logs is None:
        from storage.filelogs import FileTaskLogs

        task_logs = FileTaskLogs(logs_dir)
    app[TASK_LOGS] = task_logs
    app[UNIXNAME] = _unixname()
    app.router.add_get("/health", health)
    app.router.add_get("/api/v1/health", health)
    dags.add_routes(app.router)
    runs.add_routes(app.router)
    task_instances.add_routes(app.router)
    return app
