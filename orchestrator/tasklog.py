"""Lines the daemon itself writes into a task's log (why a try failed before or without running)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path


def append_daemon_note(path: Path, when: datetime, message: str) -> None:
    """Append one line, marked as the daemon's, to the log of one try."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log_file:
        log_file.write(f"[{when.isoformat()}] orchestrator: {message}\n")


def prepare_log_folders(paths: list[Path]) -> None:
    """Create the folders of the logs of tries about to start.

    Called while the commit that queues those tries is in flight, when the event loop would
    otherwise wait. All tries of a run share a folder, so this is one mkdir per run.
    """
    for folder in {path.parent for path in paths}:
        if folder not in _known_folders:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError:
                continue  # the executor reports the error when it opens the log
            if len(_known_folders) > 4096:
                _known_folders.clear()
            _known_folders.add(folder)


_known_folders: set[Path] = set()
