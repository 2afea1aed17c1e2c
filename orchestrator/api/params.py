"""Reading a request (query parameters, JSON bodies) and writing JSON, the same way in every route.

Each helper raises `BadRequest` naming the parameter or field to fix, so routes stay a list of
steps and every 400 the API gives reads the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from orchestrator.api.errors import BadRequest

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

#: Bodies larger than this are refused (a trigger's conf is small).
MAX_BODY_BYTES = 1024 * 1024


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
    """(limit, offset): limit 1..1000 (default 100), offset ≥ 0 (default 0)."""
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_param(request, "offset", 0, 0, None)
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


def int_path_param(request: web.Request, name: str, minimum: int) -> int:
    raw = request.match_info[name]
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} {raw!r} in the URL is not an integer") from None
    if value < minimum:
        raise BadRequest(f"{name} {value} in the URL must be at least {minimum}")
    return value


def list_param(request: web.Request, name: str) -> list[str]:
    """A repeated (`state=a&state=b`) or comma-separated (`state=a,b`) parameter."""
    values: list[str] = []
    for raw in request.query.getall(name, []):
        values.extend(part.strip() for part in raw.split(",") if part.strip())
    return values


async def json_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The request body as a JSON object whose keys are all in `allowed` (Airflow rejects others)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("the request body is empty: send a JSON object (Content-Type: application/json)")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(map(repr, unknown))} in the request body; "
            f"allowed fields: {', '.join(sorted(allowed))}"
        )
    return body


def parse_datetime(value: Any, field: str) -> datetime:
    """An ISO 8601 timestamp from a JSON field; without a timezone it is UTC (Airflow's default)."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be an ISO 8601 string such as '2026-01-01T00:00:00+00:00'")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{field} {value!r} is not an ISO 8601 datetime: use e.g. '2026-01-01T00:00:00+00:00'"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
