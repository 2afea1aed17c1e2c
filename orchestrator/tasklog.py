"""Lines the daemon itself writes into a task's log (why a try failed before or without running)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from orchestrator.ports import LaunchRequest


def append_daemon_note(path: Path, when: datetime, message: str) -> None:
    """Append one line, marked as the daemon's, to the log of one try."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log_file:
        log_file.write(f"[{when.isoformat()}] orchestrator: {message}\n")


def prepare_logs(launches: list[LaunchRequest]) -> None:
    """Create the log files of the Python tries about to start.

    Called while the commit that queues those tries is in flight, when the event loop would
    otherwise wait: creating a file costs about as much as the commit. A Python try always
    writes its log; a bash try's log is created by the executor on its first output.
    """
    for request in launches:
        if request.kind != "python":
            continue
        try:
            try:
                fd = os.open(request.log_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                os.makedirs(request.log_path.parent, exist_ok=True)
                fd = os.open(request.log_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.close(fd)
        except OSError:
            pass  # the executor reports the error when it opens the log
