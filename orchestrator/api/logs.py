"""Serving one try's log in Airflow's shapes, in chunks, so that no log is ever held whole.

`GET …/logs/{try_number}` takes Airflow's `full_content` and `token` (a continuation token from
an earlier answer) parameters:

- `Accept: application/json`: `{"content": ..., "continuation_token": ...}`. Without
  `full_content`, one page of at most `PAGE_BYTES` from the token's position, and a token for
  the next page, or null once the answer reaches what the log holds now. With
  `full_content=true`, everything from the token's position, streamed as it is read.
- otherwise `text/plain`, streamed: everything from the token's position.

A page never ends inside a UTF-8 character: its token points at the character's first byte.
The token is opaque to clients (base64url of `{"log_pos": N}`, as Airflow's carries its
position in a signed blob); it grants nothing a client could not ask for anyway.
"""

from __future__ import annotations

import base64
import binascii
import codecs
from contextlib import aclosing
from dataclasses import dataclass

import orjson
from aiohttp import web

from orchestrator.api.errors import BadRequest
from orchestrator.api.params import bool_param, json_response
from orchestrator.ports import TaskLogs, TryLog

#: the most a JSON page (no full_content) carries
PAGE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LogOptions:
    """What the client asked for: JSON or text, the whole rest or one page, from where."""

    as_json: bool
    full_content: bool
    offset: int


def encode_token(position: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"log_pos": position})).decode().rstrip("=")


def decode_token(token: str) -> int:
    """The log position a continuation token stands for. Raises BadRequest."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        value = None
    position = value.get("log_pos") if isinstance(value, dict) else None
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise BadRequest(
            f"token {token[:80]!r} is not a continuation token of this API: pass the "
            "continuation_token of an earlier answer, or leave it out to read from the start"
        )
    return position


def log_options(request: web.Request) -> LogOptions:
    """Parse the query (before anything is looked up). Raises BadRequest."""
    token = request.query.get("token", "")
    return LogOptions(
        as_json="application/json" in request.headers.get("Accept", ""),
        full_content=bool_param(request, "full_content", False),
        offset=decode_token(token) if token else 0,
    )


async def send_log(
    request: web.Request, logs: TaskLogs, log: TryLog, size: int, options: LogOptions
) -> web.StreamResponse:
    """Answer with the log's bytes from the token's position (see the module doc). `size` is the
    log's size when the request came: a log that grows meanwhile is read up to there."""
    start = min(options.offset, size)
    if options.as_json and not options.full_content:
        return await _json_page(logs, log, start, min(size, start + PAGE_BYTES), size)
    response = web.StreamResponse()
    response.content_type = "application/json" if options.as_json else "text/plain"
    response.charset = "utf-8"
    await response.prepare(request)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    if options.as_json:
        await response.write(b'{"content":"')
    async with aclosing(logs.read(log, start, size)) as chunks:
        async for chunk in chunks:
            await response.write(_encode(decoder.decode(chunk), options.as_json))
    await response.write(_encode(decoder.decode(b"", final=True), options.as_json))
    if options.as_json:
        await response.write(b'","continuation_token":null}')
    await response.write_eof()
    return response


def _encode(text: str, as_json: bool) -> bytes:
    if as_json:
        return orjson.dumps(text)[1:-1]  # the inside of a JSON string: escapes are per character
    return text.encode("utf-8")


async def read_page(logs: TaskLogs, log: TryLog, start: int, end: int, size: int) -> tuple[str, int | None]:
    """The text of the log's bytes [start, end) and where the next page starts (None once `end`
    reaches `size`). A character cut by `end` starts the next page."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parts: list[str] = []
    async with aclosing(logs.read(log, start, end)) as chunks:
        async for chunk in chunks:
            parts.append(decoder.decode(chunk))
    if end < size:
        pending, _ = decoder.getstate()  # a character cut by the page end starts the next page
        end -= len(pending)
    else:
        parts.append(decoder.decode(b"", final=True))
    return "".join(parts), (end if end < size else None)


async def _json_page(logs: TaskLogs, log: TryLog, start: int, end: int, size: int) -> web.Response:
    text, following = await read_page(logs, log, start, end, size)
    token = encode_token(following) if following is not None else None
    return json_response({"content": text, "continuation_token": token})
