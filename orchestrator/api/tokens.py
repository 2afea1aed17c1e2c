"""`POST /auth/token`: an access token for an API token, as Airflow 3's simple auth manager
answers it (`{"username", "password"}` in, `{"access_token"}` out, 201).

The password is an API token from `api.tokens` (the user name is recorded but not checked, as
with basic auth). The answer is a short-lived signed token (`api.access_token_ttl`) to send as
`Authorization: Bearer`. Failures count towards the caller's address's throttle like any other.
"""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.audit import unaudited
from orchestrator.api.auth import Authenticator, Refused, refuse, throttled
from orchestrator.api.bodies import json_object
from orchestrator.api.errors import BadRequest
from orchestrator.api.params import json_response
from orchestrator.api.roles import public

#: the authenticator of the app (set by create_app)
AUTH = web.AppKey("authenticator", Authenticator)


@public
@unaudited  # a login changes nothing; failed ones are in the daemon's log with the address
async def issue_token(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    throttled(auth, request)
    body = await json_object(request, frozenset({"username", "password"}))
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise BadRequest(
            'the body must be {"username": "<any name>", "password": "<an API token>"} (both strings)'
        )
    try:
        credential = auth.check_password(password)
    except Refused as exc:
        raise refuse(auth, request, str(exc)) from None
    token = auth.issue_access_token(credential)
    return json_response(
        {"access_token": token, "token_type": "bearer", "expires_in": int(auth.access_token_ttl)},
        status=201,
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/auth/token", issue_token)
