"""Reading query and path parameters and writing JSON, the same way in every route.

Each helper raises `BadRequest` naming the parameter to fix, so routes stay a list of steps and
every 400 the API gives reads the same. Numbers are bounded by what PostgreSQL stores (an
`offset` is a bigint, a `map_index` or `try_number` an integer), so an absurd value is a 400 that
says so, not a database error. JSON bodies are read in `orchestrator.api.bodies`.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from orchestrator.api.errors import BadRequest
from orchestrator.api.keys import SETTINGS

log = logging.getLogger("orchestrator.api")

DEFAULT_LIMIT = 100
#: PostgreSQL's bigint (LIMIT/OFFSET) and integer (map_index, try_number) maxima
MAX_BIGINT = 2**63 - 1
MAX_INTEGER = 2**31 - 1


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _int_param(request: web.Request, name: str, default: int, minimum: int, maximum: int | None) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name}={raw!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise BadRequest(f"query parameter {name}={value} must be {bounds}")
    return value


def pagination(request: web.Request) -> tuple[int, int]:
    """(limit, offset): limit at least 1 (default 100), clamped to api.maximum_page_limit as
    Airflow does; offset 0 or more (default 0)."""
    maximum = request.app[SETTINGS].maximum_page_limit
    limit = _int_param(request, "limit", min(DEFAULT_LIMIT, maximum), 1, None)
    if limit > maximum:
        log.debug("limit=%d clamped to api.maximum_page_limit=%d", limit, maximum)
        limit = maximum
    offset = _int_param(request, "offset", 0, 0, MAX_BIGINT)
    return limit, offset


def bool_param(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise BadRequest(f"query parameter {name}={raw!r} must be true or false")


def int_path_param(request: web.Request, name: str, minimum: int, maximum: int = MAX_INTEGER) -> int:
    raw = request.match_info[name]
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} {raw!r} in the URL is not an integer") from None
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name} {value} in the URL must be between {minimum} and {maximum}")
    return value


def list_param(request: web.Request, name: str) -> list[str]:
    """A repeated (`state=a&state=b`) or comma-separated (`state=a,b`) parameter."""
    values: list[str] = []
    for raw in request.query.getall(name, []):
        values.extend(part.strip() for part in raw.split(",") if part.strip())
    return values
