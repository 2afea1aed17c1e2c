"""Where task logs live: one file per try, all tries of a run in one folder.

`logs/dag_id=<dag>/run_id=<run>/task_id=<task>.attempt=<try>.log` (mapped tasks add
`.map_index=<i>` before `.attempt`). Airflow keeps a folder per task; one folder per run keeps
a fan-out of thousands of tasks from creating thousands of folders on its hot path. Ids are
validated elsewhere to contain no path separators.

Ids may be 250 characters long (Airflow's limit), but a file name may not exceed 255 bytes:
an id longer than `MAX_ID_BYTES` is written as its first characters, `~`, and the sha256 of
the whole id (`~` may appear in a run id, but no valid id this long maps to a short one, and
two long ids share a name only if their digests do). Short ids keep their readable paths.
This module is the one place that knows the layout; `storage.filelogs` reads and writes it.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

#: an id part longer than this (in UTF-8 bytes) is shortened to a prefix and a digest
MAX_ID_BYTES = 100
_PREFIX_CHARS = MAX_ID_BYTES - 1 - 64


def path_part(identifier: str) -> str:
    """`identifier` as it appears in a log path: itself, or a prefix + `~` + sha256 if too long."""
    raw = identifier.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_ID_BYTES:
        return identifier
    return f"{identifier[:_PREFIX_CHARS]}~{hashlib.sha256(raw).hexdigest()}"


def run_log_dir(logs_dir: Path, dag_id: str, run_id: str) -> Path:
    """The folder holding the logs of every try of one run."""
    return logs_dir / f"dag_id={path_part(dag_id)}" / f"run_id={path_part(run_id)}"


@lru_cache(maxsize=1024)
def _run_log_prefix(logs_dir: Path, dag_id: str, run_id: str) -> str:
    # pathlib joins cost more than the rest of preparing a launch: build the run's part once
    return f"{run_log_dir(logs_dir, dag_id, run_id)}/task_id="


@lru_cache(maxsize=4096)
def _task_part(task_id: str) -> str:
    return path_part(task_id)


def task_log_path(
    logs_dir: Path, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int
) -> Path:
    """The log file of one try."""
    mapped = f".map_index={map_index}" if map_index >= 0 else ""
    # at most 4 bytes per character: short ids skip the cache lookup
    task = task_id if len(task_id) <= MAX_ID_BYTES // 4 else _task_part(task_id)
    return Path(f"{_run_log_prefix(logs_dir, dag_id, run_id)}{task}{mapped}.attempt={try_number}.log")
