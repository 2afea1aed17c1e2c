"""Any replica serves any try's log: from its own log files when it has the log, else from the
replica that ran the task, proxied (as Airflow's webserver fetches a worker's logs).

A log is a local file of the replica that ran the try, unless the replicas share one log
folder (`logs.folder`), in which case every replica has every log. When this replica has no
file for the try and the task instance's `daemon_id` is another replica with an API URL, the
request (path, query, Accept) goes to that replica, signed with the caller this replica
authenticated (`orchestrator.api.replica_auth`), and its answer is streamed back as it comes:
a log is never held whole. A forwarded request is never proxied again. When that replica is
gone (or cannot be reached), the answer is a 404 naming it: its logs went with it.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from orchestrator.api.errors import NotFound
from orchestrator.api.forward import REPLICA_CLIENT, signed_headers, target_url
from orchestrator.api.keys import DAEMON_ID, STORE, TASK_LOGS
from orchestrator.api.replica_auth import is_forwarded
from orchestrator.core.records import DaemonRecord, RunRecord, TaskInstanceRecord
from orchestrator.ports import TryLog

log = logging.getLogger("orchestrator.api.remote_logs")

#: bytes read from the other replica before each write to the caller
_CHUNK = 64 * 1024
_SHARED_FOLDER_HINT = (
    "point logs.folder of every replica at one shared folder (see README, Several replicas) to "
    "keep logs readable after a replica is gone"
)


async def _replica(request: web.Request, daemon_id: str) -> DaemonRecord | None:
    for daemon in await request.app[STORE].list_daemons():
        if daemon.daemon_id == daemon_id:
            return daemon
    return None


async def proxied_log(
    request: web.Request, run: RunRecord, ti: TaskInstanceRecord, try_number: int
) -> web.StreamResponse | None:
    """The log streamed from the replica that ran the try, when this replica has no file for it
    and another replica ran it; None to serve it here (NotFound if that replica is gone)."""
    if try_number < 1 or try_number > ti.try_number or not ti.daemon_id:
        return None
    if ti.daemon_id == request.app.get(DAEMON_ID) or is_forwarded(request):
        return None
    logs = request.app[TASK_LOGS]
    if await logs.size(TryLog(run.dag_id, run.run_id, ti.task_id, ti.map_index, try_number)) is not None:
        return None
    what = f"the log of try {try_number} of task {ti.task_id!r} in run {run.run_id!r} of DAG {run.dag_id!r}"
    where = f"replica {ti.daemon_id!r} on host {ti.hostname or 'unknown'!r}"
    replica = await _replica(request, ti.daemon_id)
    if replica is None or not replica.alive or not replica.api_url:
        state = "is gone" if replica is None or not replica.alive else "serves no API"
        raise NotFound(
            f"{what} is on {where}, which {state}: this replica does not have it; {_SHARED_FOLDER_HINT}",
            title="Log not found",
        )
    return await _stream_from(request, replica, what, where)


async def _stream_from(
    request: web.Request, replica: DaemonRecord, what: str, where: str
) -> web.StreamResponse:
    assert replica.api_url is not None
    headers = await signed_headers(request, b"")
    session = request.app[REPLICA_CLIENT].session()
    try:
        answer = await session.get(target_url(replica.api_url, request), headers=headers)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise NotFound(
            f"{what} is on {where}, which could not be reached at {replica.api_url} ({exc!r}): retry "
            f"if it is restarting; {_SHARED_FOLDER_HINT}",
            title="Log not found",
        ) from None
    async with answer:
        response = web.StreamResponse(status=answer.status)
        response.content_type = answer.content_type
        if answer.charset:
            response.charset = answer.charset
        await response.prepare(request)
        try:
            async for chunk in answer.content.iter_chunked(_CHUNK):
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # the status is sent: end the answer unfinished, so the caller sees it was cut
            log.warning("%s from %s was cut off: %r", what, where, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
    return response
