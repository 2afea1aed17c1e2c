"""Kill what a previous daemon on this host left running.

A task's processes live in their own session (so a timeout can kill the whole group), which
also means they outlive a daemon killed with SIGKILL. When the next daemon counts that try as
failed and retries it, the orphaned try must not go on running beside the retry: its process
group is killed, but only when the recorded process is still the leader of its own session
(a reused pid belongs to someone else and is left alone).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("executors.orphans")


def orphan_session_leader(external_id: str | None) -> int | None:
    """The pid recorded as "pid:N" or "worker:N", if N is still a session leader here."""
    if not external_id or ":" not in external_id:
        return None
    kind, _, raw = external_id.partition(":")
    if kind not in {"pid", "worker"} or not raw.isdigit():
        return None
    pid = int(raw)
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat_file:
            stat = stat_file.read()
    except OSError:
        return None
    # fields after the parenthesised command name: state ppid pgrp session ...
    fields = stat[stat.rfind(")") + 2 :].split()
    session = int(fields[3]) if len(fields) > 3 else -1
    return pid if session == pid else None


def kill_orphaned_group(external_id: str | None) -> bool:
    """SIGKILL the orphaned process group of `external_id`. True if there was one."""
    pid = orphan_session_leader(external_id)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        log.warning("cannot kill the orphaned process group %s: %s", pid, exc)
        return False
    log.info("killed the orphaned process group %s left by a previous daemon", pid)
    return True
