"""DAG file tokens and GET /api/v1/dagSources/{file_token}: a DAG's source, by an opaque token.

Airflow hands out `file_token` (an itsdangerous URL-safe signature of the file path with the
webserver's secret key) instead of a path, so that the endpoint can never be asked for an
arbitrary file. Ours has the same form: `<base64url(JSON path)>.<base64url(HMAC-SHA256)>`,
signed with the app's SIGNING_KEY. A token is served only if its signature checks (compared in
constant time) and its path is still the file of a DAG the store knows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
from typing import Any

import orjson
from aiohttp import web

from orchestrator.api.errors import ApiError, NotFound
from orchestrator.api.keys import SIGNING_KEY, STORE
from orchestrator.api.params import json_response
from orchestrator.api.serializers import dag_to_json
from orchestrator.core.records import DagRecord

log = logging.getLogger("orchestrator.api")

#: a DAG file larger than this is not served whole (DAG files are code, not data)
MAX_SOURCE_BYTES = 10 * 1024 * 1024
#: what the signature is salted with, so a token signed for another purpose never verifies here
_SALT = b"orchestrator.dag-source."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, _SALT + payload.encode("ascii"), hashlib.sha256).digest())


def file_token(key: bytes, fileloc: str) -> str:
    """The opaque token of `fileloc` (stable for one key)."""
    payload = _b64(orjson.dumps(fileloc))
    return f"{payload}.{_signature(key, payload)}"


def read_file_token(key: bytes, token: str) -> str | None:
    """The path a token was signed for, or None if it is malformed or its signature is wrong."""
    payload, dot, signature = token.partition(".")
    if not dot or not payload.isascii() or not signature.isascii():
        return None
    if not hmac.compare_digest(_signature(key, payload), signature):
        return None
    try:
        path = orjson.loads(_unb64(payload))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    return path if isinstance(path, str) else None


def dag_json(request: web.Request, dag: DagRecord) -> dict[str, Any]:
    """Airflow's DAG object for `dag`, with its file_token."""
    body = dag_to_json(dag)
    body["file_token"] = file_token(request.app[SIGNING_KEY], dag.fileloc)
    return body


def _not_found() -> NotFound:
    return NotFound(
        "no DAG file for this file_token: take the file_token from GET /api/v1/dags/{dag_id} "
        "(tokens are signed by this daemon, and only files of known DAGs are served)",
        title="DAG source not found",
    )


def _read_source(path: str) -> str | None:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        log.info("dagSources: cannot read %s: %s", path, exc)
        return None
    if len(data) > MAX_SOURCE_BYTES:
        raise ApiError(413, f"the DAG file is larger than {MAX_SOURCE_BYTES} bytes and is not served")
    return data.decode("utf-8", errors="replace")


async def get_dag_source(request: web.Request) -> web.Response:
    """Airflow's GET /dagSources/{file_token}: text/plain, or {"content": ...} for Accept: JSON."""
    path = read_file_token(request.app[SIGNING_KEY], request.match_info["file_token"])
    if path is None or not await request.app[STORE].is_dag_file(path):
        raise _not_found()
    content = await asyncio.to_thread(_read_source, path)
    if content is None:
        raise _not_found()
    if "application/json" in request.headers.get("Accept", ""):
        return json_response({"content": content})
    return web.Response(text=content, content_type="text/plain")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/dagSources/{file_token}", get_dag_source)
