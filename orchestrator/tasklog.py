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
    """Make ready the logs of tries about to start.

    Called while the commit that queues those tries is in flight, when the event loop would
    otherwise wait: the run's log folder is created (once per run), and so is the log file of
    a Python try (always written to; a bash try's file is created on its first output).
    """
    for request in launches:
        folder = request.log_path.parent
        if folder not in _known_folders:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError:
                continue  # the executor reports the error when it opens the log
            if len(_known_folders) > 4096:
                _known_folders.clear()
            _known_folders.add(folder)
        if request.kind == "python":
            try:
                os.close(os.open(request.log_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            except OSError:
                pass


_known_folders: set[Path] = set()
