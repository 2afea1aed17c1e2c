"""Find and kill what a previous daemon on this host left running, identified for certain.

A task's processes live in their own session (so a timeout can kill the whole group), which
also means they outlive a daemon killed with SIGKILL. A pid alone proves nothing after a
restart (it may have been reused), so each try's processes carry a token only they have in
their environment (`ORCHESTRATOR_TRY_TOKEN`, set by the engine), read back here through
`/proc/<pid>/environ`. Python tries run inside warm workers, whose environment does not
change per try: each worker is started with `ORCHESTRATOR_WORKER_MARKERS=<folder>` and
writes the token of the try it is running into `<folder>/<pid>` while it runs.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("executors.orphans")

TRY_TOKEN_VARIABLE = "ORCHESTRATOR_TRY_TOKEN"
WORKER_MARKERS_VARIABLE = "ORCHESTRATOR_WORKER_MARKERS"


def _environ(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return environ.read()
    except OSError:
        return None


def _pids() -> Iterator[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def pids_with_variable(variable: str, value: str) -> list[int]:
    """Processes on this host whose environment holds exactly `variable=value`."""
    needle = f"{variable}={value}".encode()
    own = os.getpid()
    found = []
    for pid in _pids():
        if pid == own:
            continue
        environ = _environ(pid)
        if environ is not None and needle in environ.split(b"\0"):
            found.append(pid)
    return found


def kill_pids(pids: list[int], why: str) -> int:
    """SIGKILL these processes and the process groups they lead; how many were signalled."""
    killed = 0
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            continue
        except PermissionError as exc:
            log.warning("cannot kill process %s (%s): %s", pid, why, exc)
    if killed:
        log.info("killed %d process(es) left by a previous daemon: %s", killed, why)
    return killed


def try_processes(token: str) -> list[int]:
    """The live processes of the try with this token (bash tries: the command and its children)."""
    return pids_with_variable(TRY_TOKEN_VARIABLE, token) if token else []


def orphan_workers(markers: Path, own: set[int]) -> dict[int, str]:
    """Python workers of a previous daemon using the marker folder `markers`, each with the
    token of the try it is running ("" when idle). Workers in `own` are this daemon's."""
    found: dict[int, str] = {}
    for pid in pids_with_variable(WORKER_MARKERS_VARIABLE, str(markers)):
        if pid in own:
            continue
        try:
            token = (markers / str(pid)).read_text(encoding="utf-8").strip("\0\n ")
        except OSError:
            token = ""
        found[pid] = token
    return found
