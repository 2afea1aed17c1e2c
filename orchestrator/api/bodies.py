"""Reading JSON request bodies: their media type, their size, and values PostgreSQL cannot store.

Every JSON endpoint reads its body through `json_object`, so every one of them answers alike:

- 415 unless the body is sent as `Content-Type: application/json`. A web page can POST
  `text/plain` (or a typeless Blob) to 127.0.0.1 without a CORS preflight; insisting on JSON makes
  the browser ask first, and nobody answers its preflight.
- 413 for a body over `MAX_BODY_BYTES`, whether it announced its length or came chunked.
- 400 for a string holding `\\u0000` anywhere (jsonb and text columns refuse it), naming where.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from orchestrator.api.errors import ApiError, BadRequest
from orchestrator.api.keys import JSON_BODY, RAW_BODY

#: Bodies larger than this are refused with 413 (a trigger's conf is small).
MAX_BODY_BYTES = 1024 * 1024

JSON_MEDIA_TYPE = "application/json"


def _too_large() -> ApiError:
    return ApiError(
        413,
        f"the request body is larger than {MAX_BODY_BYTES} bytes: send a smaller conf "
        "(pass large data by reference, e.g. a path or URL, not inline)",
    )


def require_json_content_type(request: web.Request) -> None:
    """415 unless the request says its body is JSON (any charset parameter is fine)."""
    sent = request.headers.get("Content-Type")
    if request.content_type == JSON_MEDIA_TYPE and sent is not None:
        return
    got = f"Content-Type: {sent}" if sent else "no Content-Type"
    raise ApiError(
        415,
        f"the request body must be JSON sent with Content-Type: {JSON_MEDIA_TYPE}, got {got} "
        f"(curl: -H 'Content-Type: {JSON_MEDIA_TYPE}')",
    )


async def read_body(request: web.Request) -> bytes:
    """The whole body, at most MAX_BODY_BYTES: the same 413 whether the client sent a
    Content-Length or chunks, and a large body is refused before it is all in memory."""
    body = await read_limited(request, MAX_BODY_BYTES)
    if body is None:
        raise _too_large()
    return body


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None once it is known to be over `limit` bytes (by its Content-Length,
    or as soon as that many bytes have arrived): the rest is never read. Read once: later
    calls (a forwarded request is sent on as it came) get the same bytes."""
    cached = request.get(RAW_BODY)
    if cached is not None:
        return cached if len(cached) <= limit else None
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    body = b"".join(chunks)
    request[RAW_BODY] = body
    return body


def nul_location(value: Any) -> str | None:
    """Where the first string holding a NUL character is ("conf.a[2]"), or None. Iterative:
    orjson accepts nesting deeper than Python's recursion limit."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path or "the body"
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return f"{path}.{key!r}" if path else repr(key)
                stack.append((f"{path}.{key}" if path else key, child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
    return None


async def json_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The request body as a JSON object whose keys are all in `allowed` (Airflow rejects others)."""
    require_json_content_type(request)
    raw = await read_body(request)
    if not raw.strip():
        raise BadRequest("the request body is empty: send a JSON object (Content-Type: application/json)")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    request[JSON_BODY] = body
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(map(repr, unknown))} in the request body; "
            f"allowed fields: {', '.join(sorted(allowed))}"
        )
    where = nul_location(body)
    if where is not None:
        raise BadRequest(
            f"{where} contains a NUL character (\\u0000), which PostgreSQL cannot store: remove it"
        )
    return body


def parse_datetime(value: Any, field: str) -> datetime:
    """An ISO 8601 timestamp from a JSON field, in UTC; without a timezone it is UTC (Airflow's
    default). One whose UTC time falls outside years 1..9999 is refused, not an OverflowError."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be an ISO 8601 string such as '2026-01-01T00:00:00+00:00'")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{field} {value!r} is not an ISO 8601 datetime: use e.g. '2026-01-01T00:00:00+00:00'"
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise BadRequest(
            f"{field} {value!r} is out of range: in UTC it falls outside the years 1 to 9999"
        ) from None
