"""Authentication of API requests, and the role check that follows it.

A request proves who it is with one of:

- `Authorization: Bearer <token>`: an API token from `api.tokens`, or an access token issued
  by `POST /auth/token`;
- HTTP basic auth with any user name and the token as the password (Airflow 2's clients);
- for a request another replica forwards, that replica's signed word for the caller it
  authenticated (`orchestrator.api.replica_auth`);

API tokens are never held in plain text: the configuration gives each one's SHA-256 digest
(or the daemon digests the environment variable's value once, at start), and a presented
token's digest is compared with every configured one by `hmac.compare_digest`, so the time
taken tells nothing about how close a guess was. Access tokens are JWTs (HS256, signed with
the daemon's secret key) naming the configured token they were issued for; that token's
current role applies, and one removed from the configuration stops its access tokens too.

Failed attempts are logged with the client's address (never the token) and counted per
address (`FailureThrottle`): past `api.auth_failures_allowed` within `api.auth_failure_window`
seconds that address gets 429 until the window has passed. A request without credentials is
answered 401, one whose role is too low 403, each saying what is missing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import jwt
from aiohttp import web
from aiohttp.typedefs import Middleware

from orchestrator.api.bodies import read_body
from orchestrator.api.errors import ApiError, Handler
from orchestrator.api.keys import PRINCIPAL
from orchestrator.api.replica_auth import FORWARDED_HEADER, REPLICA_SECRET, BadSignature, verify
from orchestrator.api.roles import Principal, Role, required_role
from orchestrator.config import ApiConfig

log = logging.getLogger("orchestrator.api.auth")

#: the issuer claim of our access tokens
ISSUER = "orchestrator"
_ALGORITHM = "HS256"
#: how many client addresses the throttle remembers (the oldest is forgotten first)
MAX_TRACKED_ADDRESSES = 10_000
#: the challenge sent with every 401
WWW_AUTHENTICATE = 'Bearer realm="orchestrator"'
HOW_TO_AUTHENTICATE = (
    "send Authorization: Bearer <token> with a token from api.tokens (the CLI reads "
    "ORCHESTRATOR_TOKEN, api.token_file or <state_dir>/api-token), or basic auth with the token "
    "as the password; see README, Authentication"
)


@dataclass(frozen=True, slots=True)
class Credential:
    """One configured API token: its name, its role and the SHA-256 digest of its secret."""

    name: str
    role: Role
    digest: bytes


class Refused(Exception):
    """The credentials presented are not valid; the message says why (never what was sent)."""


class FailureThrottle:
    """Failed authentications per client address within a sliding window."""

    def __init__(
        self,
        allowed: int,
        window: float,
        monotonic: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        self.allowed = allowed
        self.window = window
        self._monotonic = monotonic
        self._max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again; 0 if it is not throttled."""
        now = self._monotonic()
        failures = self._recent(address, now)
        if failures is None or len(failures) < self.allowed:
            return 0.0
        return max(0.0, failures[-self.allowed] + self.window - now)

    def failed(self, address: str) -> None:
        now = self._monotonic()
        failures = self._recent(address, now)
        if failures is None:
            failures = self._failures[address] = deque()
            while len(self._failures) > self._max_addresses:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(address)
        failures.append(now)
        # only the newest `allowed` failures matter for the window
        while len(failures) > self.allowed:
            failures.popleft()


class Authenticator:
    """Checks credentials against the configured tokens, and issues access tokens."""

    def __init__(
        self,
        credentials: Iterable[Credential],
        secret_key: bytes,
        *,
        access_token_ttl: float = 3600.0,
        throttle: FailureThrottle | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = tuple(credentials)
        self._by_name = {credential.name: credential for credential in self.credentials}
        if len(secret_key) < 32:
            raise ValueError("the API's secret key must be at least 32 bytes")
        self._secret_key = secret_key
        self.access_token_ttl = access_token_ttl
        self.throttle = throttle if throttle is not None else FailureThrottle(20, 300.0)
        self._wall_clock = wall_clock

    @classmethod
    def configured(
        cls, credentials: Iterable[Credential], secret_key: bytes, settings: ApiConfig
    ) -> Authenticator:
        """One for `credentials`, with the access-token lifetime and throttle of [api] `settings`."""
        return cls(
            credentials,
            secret_key,
            access_token_ttl=settings.access_token_ttl,
            throttle=FailureThrottle(settings.auth_failures_allowed, settings.auth_failure_window),
        )

    def derived_key(self, purpose: str) -> bytes:
        """A key for another signature of this daemon's (DAG file tokens), derived from the
        secret key so it lasts as long as that key does, and tells nothing about it."""
        return hmac.new(self._secret_key, purpose.encode(), hashlib.sha256).digest()

    # --- checking -------------------------------------------------------------------

    def match_token(self, presented: str) -> Credential | None:
        """The configured token `presented` is, compared in constant time with every one."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: Credential | None = None
        for credential in self.credentials:  # no early exit: every digest is compared
            if hmac.compare_digest(digest, credential.digest):
                found = credential
        return found

    def issue_access_token(self, credential: Credential) -> str:
        """A signed access token for `credential`, valid for access_token_ttl seconds."""
        now = int(self._wall_clock())
        claims = {
            "iss": ISSUER,
            "sub": credential.name,
            "role": credential.role.label,
            "iat": now,
            "nbf": now,
            "exp": now + int(self.access_token_ttl),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret_key, algorithm=_ALGORITHM)

    def _access_token_credential(self, token: str) -> Credential:
        try:
            claims = jwt.decode(
                token,
                self._secret_key,
                algorithms=[_ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise Refused("the access token has expired: get a new one from POST /auth/token") from None
        except jwt.InvalidTokenError:
            raise Refused("the access token is not valid (not signed by this daemon)") from None
        credential = self._by_name.get(str(claims.get("sub")))
        if credential is None:
            raise Refused("the access token names a token that is no longer configured")
        return credential

    def _bearer(self, token: str) -> Principal:
        if token.count(".") == 2 and token.startswith("eyJ"):
            return Principal(*self._named(self._access_token_credential(token)), via="access_token")
        credential = self.match_token(token)
        if credential is None:
            raise Refused("the bearer token is not one of api.tokens")
        return Principal(*self._named(credential), via="bearer")

    def _basic(self, encoded: str) -> Principal:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Refused("the basic credentials are not base64 of user:password") from None
        _user, colon, password = decoded.partition(":")
        if not colon or not password:
            raise Refused("the basic credentials hold no password: send the token as the password")
        if password.count(".") == 2 and password.startswith("eyJ"):
            return Principal(*self._named(self._access_token_credential(password)), via="basic")
        credential = self.match_token(password)
        if credential is None:
            raise Refused("the basic auth password is not one of api.tokens")
        return Principal(*self._named(credential), via="basic")

    @staticmethod
    def _named(credential: Credential) -> tuple[str, Role]:
        return credential.name, credential.role

    def principal(self, authorization: str | None) -> Principal:
        """Who the Authorization header says made the request; Refused if nobody valid."""
        if not authorization:
            raise Refused("no credentials")
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return self._bearer(value)
        if scheme.lower() == "basic" and value:
            return self._basic(value)
        raise Refused(f"the Authorization scheme {scheme!r} is not Bearer or Basic")

    def check_password(self, password: str) -> Credential:
        """The credential whose token is `password` (POST /auth/token); Refused if none."""
        credential = self.match_token(password) if password else None
        if credential is None:
            raise Refused("the password is not one of api.tokens")
        return credential


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


def throttled(auth: Authenticator, request: web.Request) -> None:
    """429 if the client's address failed too often lately."""
    wait = auth.throttle.retry_after(client_address(request))
    if wait > 0:
        seconds = max(1, int(wait + 0.999))
        raise ApiError(
            429,
            f"too many failed authentications from {client_address(request)}: try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


def refuse(auth: Authenticator, request: web.Request, reason: str) -> ApiError:
    """Count and log a failed authentication; the 401 to answer it with."""
    address = client_address(request)
    auth.throttle.failed(address)
    log.warning("API authentication failed from %s: %s %s: %s", address, request.method, request.path, reason)
    detail = (
        f"authentication required: {HOW_TO_AUTHENTICATE}"
        if reason == "no credentials"
        else f"authentication failed: {reason}; {HOW_TO_AUTHENTICATE}"
    )
    return ApiError(401, detail, headers={"WWW-Authenticate": WWW_AUTHENTICATE})


async def _forwarded_principal(auth: Authenticator, request: web.Request, value: str) -> Principal:
    """The caller another replica vouches for (`orchestrator.api.replica_auth`); a 401 if the
    signature is not valid for this request."""
    holder = request.app.get(REPLICA_SECRET)
    if holder is None:
        raise refuse(auth, request, "this API takes no forwarded requests (it serves no replicas)")
    body = await read_body(request) if request.body_exists else b""
    try:
        return verify(await holder.get(), value, request.method, request.raw_path, body)
    except BadSignature as exc:
        raise refuse(auth, request, str(exc)) from None


def auth_middleware(auth: Authenticator) -> Middleware:
    """The middleware: every route needs credentials and a role (see roles.required_role)
    unless it is public; unknown routes fall through to their 404/405."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        match = request.match_info
        if match.http_exception is not None:
            return await handler(request)
        needed = required_role(request.method, match.handler)
        if needed is None:
            return await handler(request)
        throttled(auth, request)
        forwarded = request.headers.get(FORWARDED_HEADER)
        if forwarded is not None:
            principal = await _forwarded_principal(auth, request, forwarded)
        else:
            try:
                principal = auth.principal(request.headers.get("Authorization"))
            except Refused as exc:
                raise refuse(auth, request, str(exc)) from None
        if principal.role < needed:
            log.warning(
                "API request refused: token %r (%s) from %s may not %s %s (needs %s)",
                principal.name,
                principal.role.label,
                client_address(request),
                request.method,
                request.path,
                needed.label,
            )
            raise ApiError(
                403,
                f"token {principal.name!r} has the role {principal.role.label}; {request.method} "
                f"{request.path} needs {needed.label} or above: use a token with that role",
            )
        request[PRINCIPAL] = principal
        return await handler(request)

    return authenticate
