"""A try's log as Airflow 3's structured log lines, read in pages so no log is held whole.

Airflow 3 answers `{"content": [{"event": ..., "timestamp": ...}, ...], "continuation_token"}`.
Our logs are the lines a task printed, so each line is one message (its `event`; no `timestamp`).
Pages are v1's (`orchestrator.api.logs`: at most PAGE_BYTES, never cut inside a UTF-8
character, the same continuation tokens); `full_content` streams every page in turn. A line cut
by a page end is carried into the next page of the same answer; between answers, the next page
starts where the token points.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from orchestrator.api.logs import PAGE_BYTES, encode_token, read_page
from orchestrator.api.params import json_response
from orchestrator.ports import TaskLogs, TryLog


def _messages(lines: list[str]) -> list[dict[str, str]]:
    # no timestamp: the spec's StructuredLogMessage has none rather than a null one
    return [{"event": line.removesuffix("\r")} for line in lines]


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


async def send_structured_log(
    request: web.Request, logs: TaskLogs, log: TryLog, size: int, offset: int, full_content: bool
) -> web.StreamResponse:
    """One page from `offset` (with a token for the next, null at the end), or with
    `full_content` everything from `offset`, streamed page by page."""
    start = min(offset, size)
    if not full_content:
        text, following = await read_page(logs, log, start, min(size, start + PAGE_BYTES), size)
        token = encode_token(following) if following is not None else None
        return json_response({"content": _messages(_lines(text)), "continuation_token": token})
    response = web.StreamResponse()
    response.content_type = "application/json"
    response.charset = "utf-8"
    await response.prepare(request)
    await response.write(b'{"content":[')
    first, carried = True, ""
    position: int | None = start
    while position is not None:
        text, position = await read_page(logs, log, position, min(size, position + PAGE_BYTES), size)
        lines = (carried + text).split("\n")
        carried = lines.pop()  # the line the page end cut (or "" after a final newline)
        for message in _messages(lines):
            await response.write((b"" if first else b",") + orjson.dumps(message))
            first = False
    if carried:
        await response.write((b"" if first else b",") + orjson.dumps(_messages([carried])[0]))
    await response.write(b'],"continuation_token":null}')
    await response.write_eof()
    return response
