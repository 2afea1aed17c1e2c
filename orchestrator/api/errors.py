"""Errors of the REST API, answered in Airflow's problem shape and logged.

Airflow's clients (and ours: the CLI, the UI) read `{"type", "title", "status", "detail"}` from
every non-2xx answer, so every failure — ours, aiohttp's own 404/405, an unexpected exception —
goes through one middleware that answers that shape and logs it on "orchestrator.api". An
unexpected exception is logged with its traceback and answered without one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from orchestrator.errors import (
    DagNotFound,
    InvalidRequest,
    OrchestratorError,
    ShuttingDown,
)

log = logging.getLogger("orchestrator.api")

_DOCS = "https://airflow.apache.org/docs/apache-airflow/stable/stable-rest-api-ref.html#section/Errors/"

#: status -> (title, Airflow's error section name)
_KINDS: dict[int, tuple[str, str]] = {
    400: ("Bad Request", "BadRequest"),
    401: ("Unauthorized", "Unauthenticated"),
    403: ("Forbidden", "PermissionDenied"),
    404: ("Not Found", "NotFound"),
    405: ("Method Not Allowed", "MethodNotAllowed"),
    409: ("Conflict", "AlreadyExists"),
    413: ("Request Entity Too Large", "BadRequest"),
    415: ("Unsupported Media Type", "BadRequest"),
    429: ("Too Many Requests", "Unauthenticated"),
    500: ("Internal Server Error", "Unknown"),
    503: ("Service Unavailable", "Unknown"),
}


class ApiError(Exception):
    """An answer other than 2xx; `detail` tells the caller what is wrong and what to do."""

    def __init__(
        self, status: int, detail: str, title: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _KINDS.get(status, ("Error", "Unknown"))[0]
        self.headers = headers or {}


class BadRequest(ApiError):
    def __init__(self, detail: str) -> None:
        super().__init__(400, detail)


class NotFound(ApiError):
    def __init__(self, detail: str, title: str = "Not Found") -> None:
        super().__init__(404, detail, title)


class Conflict(ApiError):
    def __init__(self, detail: str) -> None:
        super().__init__(409, detail, "Already exists")


def problem_response(
    status: int, detail: str, title: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """The Airflow problem JSON for one error."""
    default_title, section = _KINDS.get(status, ("Error", "Unknown"))
    body = {"type": _DOCS + section, "title": title or default_title, "status": status, "detail": detail}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _from_orchestrator_error(exc: OrchestratorError) -> ApiError:
    if isinstance(exc, DagNotFound):
        return NotFound(str(exc))
    if isinstance(exc, InvalidRequest):
        return BadRequest(str(exc))
    if isinstance(exc, ShuttingDown):
        return ApiError(503, str(exc), headers={"Retry-After": "5"})
    status = getattr(type(exc), "http_status", None)  # an error that knows its answer (409, 404)
    if isinstance(status, int) and status in _KINDS:
        return ApiError(status, str(exc))
    return ApiError(500, str(exc))


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        return NotFound(
            f"no route for {request.method} {request.path}: the API lives under /api/v1 "
            "(e.g. /api/v1/dags); check the URL"
        )
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        return ApiError(
            405,
            f"{request.method} is not allowed on {request.path}; use one of: {allowed}",
            headers={"Allow": allowed},
        )
    return ApiError(exc.status, exc.text or exc.reason)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a problem response and log it."""
    try:
        return await handler(request)
    except Exception as exc:
        if isinstance(exc, web.HTTPException) and exc.status < 400:
            raise
        found = api_error_of(request, exc)
        if found is None:
            log.exception("%s %s failed with an unexpected error", request.method, request.path)
            return problem_response(
                500,
                "the orchestrator failed to answer this request because of an internal error; "
                "the traceback is in the daemon's log (logger orchestrator.api): please report it",
            )
        error = found
    level = logging.ERROR if error.status >= 500 else logging.INFO
    log.log(level, "%s %s -> %d %s", request.method, request.path, error.status, error.detail)
    return problem_response(error.status, error.detail, error.title, error.headers)


def api_error_of(request: web.Request, exc: Exception) -> ApiError | None:
    """The ApiError a failure answers as (what `error_middleware` answers), for API versions
    that answer another shape (/api/v2); None for an unexpected exception (a 500 to log)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, OrchestratorError):
        return _from_orchestrator_error(exc)
    if isinstance(exc, web.HTTPException):
        return _from_http_exception(request, exc)
    return None


def status_of(request: web.Request, exc: BaseException) -> int:
    """The status `error_middleware` answers `exc` with (for middlewares inside it that record
    the outcome of a request, e.g. the audit trail)."""
    error = api_error_of(request, exc) if isinstance(exc, Exception) else None
    return error.status if error is not None else 500
