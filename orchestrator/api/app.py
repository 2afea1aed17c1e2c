"""The aiohttp application of the REST API, and the one thing it needs from the engine.

The API reads through the `StateStore` port and asks the engine (the `EngineApi` protocol)
only to trigger runs and to say whether it is ready, so it can be served — and tested — with
any implementation of both. The daemon mounts this app on its own runner.
"""

from __future__ import annotations

import getpass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from orchestrator.api import dags, runs, task_instances
from orchestrator.api.errors import error_middleware
from orchestrator.api.keys import ENGINE, LOGS_DIR, STORE, UNIXNAME
from orchestrator.api.params import json_response
from orchestrator.core.records import DagRecord, RunRecord
from orchestrator.ports import StateStore


class EngineApi(Protocol):
    """What the API asks of the engine."""

    def is_ready(self) -> bool:
        """True once the engine has recovered its state and is scheduling (drives GET /health)."""

    async def trigger_run(
        self,
        dag_id: str,
        *,
        run_id: str | None,
        conf: dict[str, Any],
        logical_date: datetime | None,
        run_type: str = "manual",
    ) -> tuple[RunRecord, bool]:
        """Create a run (unique on dag_id, run_id) and return it and whether it was created.
        Raises orchestrator.errors.DagNotFound or InvalidRequest."""

    async def set_paused(self, dag_id: str, is_paused: bool) -> DagRecord | None:
        """Pause or unpause a DAG (unpausing starts its runs held while it was paused).
        None if the DAG is unknown."""


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


def create_app(store: StateStore, engine: EngineApi, logs_dir: Path) -> web.Application:
    """The REST API (Airflow's /api/v1 shapes) and /health, reading `store`, triggering via `engine`,
    serving task logs from `logs_dir`."""
    app = web.Application(middlewares=[error_middleware])
    app[STORE] = store
    app[ENGINE] = engine
    app[LOGS_DIR] = logs_dir
    app[UNIXNAME] = _unixname()
    app.router.add_get("/health", health)
    app.router.add_get("/api/v1/health", health)
    dags.add_routes(app.router)
    runs.add_routes(app.router)
    task_instances.add_routes(app.router)
    return app
