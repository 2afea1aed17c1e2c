"""Refuse state-changing requests that a browser sends on behalf of another site (CSRF).

A browser names the page that made a request in its `Origin` header. A POST, PUT, PATCH or
DELETE whose Origin is neither the API's own origin (the scheme and the `Host` the request was
addressed to) nor one of `api.allowed_origins` is answered 403 before any handler runs. Requests
without an Origin (curl, the CLI, Airflow's clients, scripts) are not from a web page and pass;
together with the JSON-only bodies of `orchestrator.api.bodies`, which make the browser ask
first, a web page the user happens to open cannot trigger or pause anything.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from orchestrator.api.errors import ApiError, Handler

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: (scheme, host, port): what makes two origins the same (the port defaulted from the scheme)
Origin = tuple[str, str, int | None]


def parse_origin(text: str) -> Origin | None:
    """An origin ("https://host:port") as a comparable triple; None for "null" or anything that
    is not a bare scheme://host[:port]."""
    try:
        url = URL(text.strip())
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
        return None
    if url.query_string or url.fragment or url.user is not None:
        return None
    return url.scheme, url.host.lower(), url.port


def own_origin(request: web.Request) -> Origin | None:
    """The origin this request was addressed to: its scheme and its Host header."""
    return parse_origin(f"{request.scheme}://{request.host}")


def origin_guard(allowed_origins: Iterable[str]) -> Middleware:
    """The middleware: 403 for a state-changing request from a foreign Origin."""
    allowed = {origin for origin in map(parse_origin, allowed_origins) if origin is not None}

    @web.middleware
    async def refuse_cross_site(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method in STATE_CHANGING_METHODS and origin is not None:
            parsed = parse_origin(origin)
            if parsed is None or (parsed != own_origin(request) and parsed not in allowed):
                raise ApiError(
                    403,
                    f"{request.method} from Origin {origin!r} refused: only the API's own origin "
                    f"({request.scheme}://{request.host}) and api.allowed_origins may change state "
                    "from a browser; add the origin to api.allowed_origins if it is yours",
                    title="Cross-site request refused",
                )
        return await handler(request)

    return refuse_cross_site
