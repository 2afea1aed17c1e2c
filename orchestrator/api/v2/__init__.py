"""/api/v2: Airflow 3's REST API, for the `apache-airflow-client` 3.x and Airflow 3 scripts.

The routes read the same store and call the same engine as /api/v1 (they reuse v1's lookups and
differ only in shapes: `shapes` for the bodies, `validation` for FastAPI-style 422s, `errors`
for Airflow 3's `{"detail": ...}` answers). create_app adds the routes and, just inside v1's
error middleware, `errors.v2_error_middleware`, which answers /api/v2 failures; v1 answers as
before.
"""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.v2 import dags, monitor, runs, task_instances
from orchestrator.api.v2.errors import PREFIX

__all__ = ["PREFIX", "add_routes"]


def add_routes(router: web.UrlDispatcher) -> None:
    """Every /api/v2 route."""
    dags.add_routes(router)
    runs.add_routes(router)
    task_instances.add_routes(router)
    monitor.add_routes(router)
