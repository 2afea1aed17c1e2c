"""Lines the daemon itself writes into a task's log (why a try failed before or without running)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


def append_daemon_note(path: Path, when: datetime, message: str) -> None:
    """Append one line, marked as the daemon's, to the log of one try."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log_file:
        log_file.write(f"[{when.isoformat()}] orchestrator: {message}\n")
