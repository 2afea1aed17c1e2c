"""How one replica vouches to another for the caller it authenticated.

A replica that forwards a request (an operation on a run another replica drives, a log only
another replica has, see `orchestrator.api.forward`) does not pass the caller's credentials on:
an access token is signed with the first replica's key, and a bearer token should not travel
further than it must. It sends instead the header `FORWARDED_HEADER`, which both marks the
request forwarded and carries who the caller is, signed:

    v1.<unix time>.<role>.<base64url of the principal's name>.<hex HMAC-SHA256>

The HMAC is keyed by the replicas' shared secret (`StateStore.replica_secret`, a random value
the first replica stores in the database) over the version, the name, the role, the method,
the path with its query as sent, the SHA-256 of the body and the time. The receiving replica
(`orchestrator.api.auth`) accepts it, as that principal, within `MAX_SKEW` seconds of its own
clock, comparing in constant time; anything else is a 401, logged without the header's value.
The secret is never logged and never answered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable

from aiohttp import web

from orchestrator.api.keys import PRINCIPAL
from orchestrator.api.roles import Principal, Role
from orchestrator.ports import StateStore

#: the header a forwarded request carries (its presence marks the request forwarded)
FORWARDED_HEADER = "X-Orchestrator-Forwarded"
#: how the principal of a forwarded request proved who it is (`Principal.via`)
VIA_REPLICA = "replica"
#: seconds a signature is accepted either side of the receiving replica's clock
MAX_SKEW = 60.0
_VERSION = "v1"


class BadSignature(Exception):
    """A forwarded request's signature is not valid; the message says why (never the value)."""


class ReplicaSecret:
    """The replicas' shared secret, read from the store once and kept."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._secret: bytes | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> bytes:
        if self._secret is None:
            async with self._lock:
                if self._secret is None:
                    self._secret = await self._store.replica_secret()
        return self._secret


#: the app's ReplicaSecret (set by create_app)
REPLICA_SECRET = web.AppKey("replica_secret", ReplicaSecret)


def _message(name_b64: str, role: str, method: str, path_qs: str, body: bytes, timestamp: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((_VERSION, name_b64, role, method.upper(), path_qs, digest, timestamp)).encode()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def sign(
    secret: bytes, principal: Principal, method: str, path_qs: str, body: bytes, now: float | None = None
) -> str:
    """The `FORWARDED_HEADER` value vouching for `principal` on this request."""
    timestamp = str(int(time.time() if now is None else now))
    name_b64 = _b64(principal.name)
    role = principal.role.label
    mac = hmac.new(secret, _message(name_b64, role, method, path_qs, body, timestamp), hashlib.sha256)
    return ".".join((_VERSION, timestamp, role, name_b64, mac.hexdigest()))


def verify(
    secret: bytes,
    value: str,
    method: str,
    path_qs: str,
    body: bytes,
    wall_clock: Callable[[], float] = time.time,
) -> Principal:
    """The principal a `FORWARDED_HEADER` value vouches for. Raises BadSignature."""
    parts = value.strip().split(".")
    if len(parts) != 5 or parts[0] != _VERSION:
        raise BadSignature(
            f"the {FORWARDED_HEADER} header is not of the form {_VERSION}.<time>.<role>.<name>.<mac>"
        )
    _, timestamp, role_text, name_b64, mac = parts
    try:
        signed_at = int(timestamp)
    except ValueError:
        raise BadSignature(f"the {FORWARDED_HEADER} header's time is not a number") from None
    message = _message(name_b64, role_text, method, path_qs, body, timestamp)
    expected = hmac.new(secret, message, hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest().encode(), mac.encode("ascii", "replace")):
        raise BadSignature(
            f"the {FORWARDED_HEADER} header is not signed with the replicas' secret for this request "
            "(a replica of another database, or a forged or altered request)"
        )
    skew = wall_clock() - signed_at
    if abs(skew) > MAX_SKEW:
        raise BadSignature(
            f"the {FORWARDED_HEADER} header was signed {abs(skew):.0f} s "
            f"{'ago' if skew > 0 else 'in the future'}, more than {MAX_SKEW:.0f} s: a replayed request, "
            "or the replicas' clocks disagree (run NTP on every host)"
        )
    try:
        raw_name = base64.urlsafe_b64decode(name_b64 + "=" * (-len(name_b64) % 4))
        name = raw_name.decode("utf-8", "surrogatepass")
        role = Role.parse(role_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadSignature(f"the {FORWARDED_HEADER} header names no valid principal") from None
    return Principal(name, role, via=VIA_REPLICA)


def is_forwarded(request: web.Request) -> bool:
    """Whether another replica forwarded this request (and vouched for its caller)."""
    principal = request.get(PRINCIPAL)
    return principal is not None and principal.via == VIA_REPLICA
