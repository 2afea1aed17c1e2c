"""Any replica answers any request: an operation on a run another replica drives is forwarded
to that replica, and its answer returned as it came.

The engine's operations (mark a run, clear, set a task instance's state, delete) raise
`OwnedElsewhere` when another live replica drives the run. `forward_middleware` catches it and
sends the same request (method, path and query, body, Accept and Content-Type) to the owner's
API URL, signed with the caller this replica authenticated (`orchestrator.api.replica_auth`);
the caller's own credentials are not passed on. The owner's answer (status, body, content
type) is the answer.

- A forwarded request that raises `OwnedElsewhere` again (the run moved between replicas
  meanwhile) is not forwarded again: 409, retry.
- An owner that published no API URL, or that cannot be reached: 503 naming it and its host.

The audit trail records a forwarded operation once, on the replica that did it: this one
marks the request (`FORWARDED_TO`) so its own audit middleware leaves it out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from orchestrator.api.bodies import read_body
from orchestrator.api.errors import ApiError, Handler
from orchestrator.api.keys import FORWARDED_TO, PRINCIPAL
from orchestrator.api.replica_auth import FORWARDED_HEADER, REPLICA_SECRET, is_forwarded, sign
from orchestrator.errors import OwnedElsewhere

log = logging.getLogger("orchestrator.api.forward")

#: seconds to connect to another replica, and the most a forwarded request may take
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 300.0
#: the request headers passed on to the other replica (credentials are not: they are vouched for)
_PASSED_HEADERS = ("Accept", "Content-Type", "Accept-Language")


class ReplicaClient:
    """The HTTP client one replica talks to the others with (opened on first use)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
                auto_decompress=False,
            )
        return self._session

    async def close(self, _app: web.Application | None = None) -> None:
        if self._session is not None:
            await self._session.close()


#: the app's ReplicaClient (set by `setup`)
REPLICA_CLIENT = web.AppKey("replica_client", ReplicaClient)


def setup(app: web.Application) -> None:
    """Give `app` its client to the other replicas (closed with the app)."""
    client = ReplicaClient()
    app[REPLICA_CLIENT] = client
    app.on_cleanup.append(client.close)


async def signed_headers(request: web.Request, body: bytes) -> dict[str, str]:
    """The headers of `request` forwarded to another replica: what the handler there reads,
    and the signed word for the caller this replica authenticated."""
    principal = request[PRINCIPAL]
    secret = await request.app[REPLICA_SECRET].get()
    headers = {name: request.headers[name] for name in _PASSED_HEADERS if name in request.headers}
    headers[FORWARDED_HEADER] = sign(secret, principal, request.method, request.raw_path, body)
    return headers


def target_url(api_url: str, request: web.Request) -> URL:
    """The same path and query (as the caller sent them) on another replica's API."""
    return URL(api_url.rstrip("/") + request.raw_path, encoded=True)


def _answer_headers(headers: Mapping[str, str]) -> dict[str, str]:
    kept = ("Retry-After", "WWW-Authenticate", "Allow", "Content-Disposition")
    return {name: headers[name] for name in kept if name in headers}


async def forward(request: web.Request, owner: OwnedElsewhere) -> web.Response:
    """Send `request` to the replica that drives its run; its answer."""
    where = f"replica {owner.daemon_id!r} on host {owner.hostname!r}"
    if is_forwarded(request):
        raise ApiError(
            409,
            f"the run moved between replicas while this request was forwarded ({where} drives it "
            "now): retry the request",
            headers={"Retry-After": "1"},
        )
    if not owner.api_url:
        raise ApiError(
            503,
            f"{where} drives this run but has published no API URL (it is starting, or serves no "
            "API): retry shortly; if that replica is gone, its runs are taken over within "
            "daemon.takeover_after seconds",
            headers={"Retry-After": "5"},
        )
    body = await read_body(request) if request.body_exists else b""  # the handler read it already
    headers = await signed_headers(request, body)
    url = target_url(owner.api_url, request)
    session = request.app[REPLICA_CLIENT].session()
    log.info("%s %s: forwarded to %s at %s", request.method, request.path, where, owner.api_url)
    try:
        async with session.request(request.method, url, data=body or None, headers=headers) as answer:
            payload = await answer.read()
            response = web.Response(
                status=answer.status, body=payload, headers=_answer_headers(answer.headers)
            )
            response.content_type = answer.content_type
            if answer.charset:
                response.charset = answer.charset
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ApiError(
            503,
            f"{where} drives this run and could not be reached at {owner.api_url} ({exc!r}): retry "
            "shortly; if that replica is gone, its runs are taken over within daemon.takeover_after seconds",
            headers={"Retry-After": "5"},
        ) from None
    request[FORWARDED_TO] = owner.daemon_id
    return response


@web.middleware
async def forward_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Forward a request whose run another replica drives to that replica (see the module)."""
    try:
        return await handler(request)
    except OwnedElsewhere as owner:
        if request.get(PRINCIPAL) is None:  # a public route: nobody to vouch for
            raise
        return await forward(request, owner)
