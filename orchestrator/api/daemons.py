"""GET /api/v1/daemons: the replicas (daemons) that share this database, as the database sees
them: their lease and heartbeat age by the database's clock, whether their lease holds, the
runs each owns, their version and where their API listens.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api.keys import STORE
from orchestrator.api.params import json_response
from orchestrator.api.roles import Role, requires
from orchestrator.api.serializers import iso
from orchestrator.core.records import DaemonRecord


def daemon_to_json(daemon: DaemonRecord) -> dict[str, Any]:
    return {
        "daemon_id": daemon.daemon_id,
        "hostname": daemon.hostname,
        "pid": daemon.pid,
        "version": daemon.version,
        "api_url": daemon.api_url,
        "started_at": iso(daemon.started_at),
        "heartbeat_at": iso(daemon.heartbeat_at),
        "heartbeat_age_seconds": round(daemon.heartbeat_age, 3),
        "lease_until": iso(daemon.lease_until),
        "alive": daemon.alive,
        "owned_runs": daemon.owned_runs,
    }


@requires(Role.VIEWER)
async def get_daemons(request: web.Request) -> web.Response:
    """List the replicas (daemons) sharing this database.

    Each with its heartbeat age and lease (by the database's clock), whether its lease holds
    (`alive`), how many queued or running runs it owns, its version and its API URL."""
    daemons = await request.app[STORE].list_daemons()
    return json_response({"daemons": [daemon_to_json(d) for d in daemons], "total_entries": len(daemons)})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/daemons", get_daemons)
