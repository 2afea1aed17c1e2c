"""Errors of /api/v2 in Airflow 3's (FastAPI's) shapes, leaving /api/v1's problem JSON alone.

Airflow 3 answers `{"detail": "..."}` for a failure and, for a request that does not validate,
422 with `{"detail": [{"type", "loc", "msg", "input"}, ...]}`. The v2 handlers raise the same
errors as v1's (ApiError, OrchestratorError) and `ValidationFailed`; `v2_error_middleware`,
placed just inside v1's error middleware, answers them for paths under /api/v2 only and logs
them on "orchestrator.api" the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from orchestrator.api.errors import ApiError, Handler, api_error_of

log = logging.getLogger("orchestrator.api")

PREFIX = "/api/v2"


class ValidationFailed(Exception):
    """A request that does not validate: 422 with FastAPI's list of what is wrong where."""

    def __init__(self, errors: Sequence[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = list(errors)


def invalid(loc: Sequence[str | int], msg: str, kind: str, value: Any = None) -> ValidationFailed:
    """One validation error at `loc` (e.g. ("body", "conf")), FastAPI's way."""
    return ValidationFailed([{"type": kind, "loc": list(loc), "msg": msg, "input": value}])


def detail_response(status: int, detail: Any, headers: dict[str, str] | None = None) -> web.Response:
    """Airflow 3's error body."""
    return web.Response(
        status=status,
        body=orjson.dumps({"detail": detail}),
        content_type="application/json",
        headers=headers,
    )


def _not_served(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        detail = f"no route for {request.method} {request.path}: see GET {PREFIX}/openapi.json"
        return detail_response(404, detail)
    allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
    detail = f"{request.method} is not allowed on {request.path}; use one of: {allowed}"
    return detail_response(405, detail, {"Allow": allowed})


@web.middleware
async def v2_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer failures of /api/v2 requests in Airflow 3's shape (others pass through)."""
    if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
        return await handler(request)
    try:
        return await handler(request)
    except ValidationFailed as exc:
        log.info("%s %s -> 422 %s", request.method, request.path, exc)
        return detail_response(422, exc.errors)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status in (404, 405) and request.match_info.http_exception is not None:
            log.info("%s %s -> %d", request.method, request.path, exc.status)
            return _not_served(request, exc)
        error = api_error_of(request, exc) or ApiError(exc.status, exc.reason)
    except Exception as exc:  # our errors (ApiError, OrchestratorError) and unexpected ones
        known = api_error_of(request, exc)
        if known is None:
            log.exception("%s %s failed with an unexpected error", request.method, request.path)
            return detail_response(
                500,
                "the orchestrator failed to answer this request because of an internal error; "
                "the traceback is in the daemon's log (logger orchestrator.api): please report it",
            )
        error = known
    level = logging.ERROR if error.status >= 500 else logging.INFO
    log.log(level, "%s %s -> %d %s", request.method, request.path, error.status, error.detail)
    return detail_response(error.status, error.detail, error.headers)
