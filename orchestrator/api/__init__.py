"""The REST API: Airflow's stable REST API v1 shapes, served by aiohttp from the state store.

`create_app(store, engine, logs_dir)` builds the application; the daemon runs it, and the CLI
and the UI read it. Routes live in small modules by resource (dags, runs, task_instances).
"""

from orchestrator.api.app import create_app
from orchestrator.ports import EngineApi

__all__ = ["EngineApi", "create_app"]
