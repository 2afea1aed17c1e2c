"""/api/v2: Airflow 3's REST API, for the `apache-airflow-client` 3.x and Airflow 3 scripts.

The routes read the same store and call the same engine as /api/v1 (they reuse v1's lookups and
differ only in shapes: `shapes` for the bodies, `validation` for FastAPI-style 422s, `errors`
for Airflow 3's `{"detail": ...}` answers). `install(app)` adds the routes and the error
middleware that answers /api/v2 failures; v1 answers as before.
"""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.errors import error_middleware
from orchestrator.api.v2 import dags, monitor, runs, task_instances
from orchestrator.api.v2.errors import PREFIX, v2_error_middleware

__all__ = ["PREFIX", "add_routes", "install"]


def add_routes(router: web.UrlDispatcher) -> None:
    """Every /api/v2 route."""
    dags.add_routes(router)
    runs.add_routes(router)
    task_instances.add_routes(router)
    monitor.add_routes(router)


def install(app: web.Application) -> None:
    """Serve /api/v2 on `app`: its routes, and its error middleware just inside v1's (so that
    /api/v2 failures are answered in Airflow 3's shape before v1's middleware sees them)."""
    middlewares = app.middlewares
    where = middlewares.index(error_middleware) + 1 if error_middleware in middlewares else 0
    middlewares.insert(where, v2_error_middleware)
    add_routes(app.router)
