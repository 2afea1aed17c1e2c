"""Typed keys of what `create_app` stores on the aiohttp application for the routes to use.

They live apart from app.py so route modules can import them without importing the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from orchestrator.api.roles import Principal
from orchestrator.config import ApiConfig, Config
from orchestrator.ports import StateStore, TaskLogs

if TYPE_CHECKING:
    from orchestrator.ports import EngineApi
    from orchestrator.triggers.backfill import Backfills

STORE = web.AppKey("store", StateStore)
ENGINE: web.AppKey[EngineApi] = web.AppKey("engine", Any)  # type: ignore[arg-type]
LOGS_DIR = web.AppKey("logs_dir", Path)
TASK_LOGS: web.AppKey[TaskLogs] = web.AppKey("task_logs", Any)  # type: ignore[arg-type]
UNIXNAME = web.AppKey("unixname", str)
#: the [api] configuration (page limit, allowed origins)
SETTINGS = web.AppKey("settings", ApiConfig)
#: the backfills (orchestrator.triggers.backfill), when the daemon runs them
BACKFILLS: web.AppKey[Backfills] = web.AppKey("backfills", Any)  # type: ignore[arg-type]

#: the key file tokens (GET /dagSources) are signed with: given to create_app, or random per app
SIGNING_KEY = web.AppKey("signing_key", bytes)
#: the daemon's effective configuration (GET /config), when the daemon gave it
CONFIG = web.AppKey("config", Config)

#: who made the request (set by the authentication middleware before any handler runs)
PRINCIPAL = web.RequestKey("principal", Principal)
#: the request's JSON body once read (the audit trail records its keys, not its values)
JSON_BODY = web.RequestKey("json_body", dict)
#: the request's body as it came, once read (orchestrator.api.bodies.read_limited)
RAW_BODY = web.RequestKey("raw_body", bytes)
#: the replica the request was forwarded to and answered by (its audit entry is recorded there)
FORWARDED_TO = web.RequestKey("forwarded_to", str)
#: this replica's daemon id (given to create_app by the daemon; unknown in some tests)
DAEMON_ID = web.AppKey("daemon_id", str)
