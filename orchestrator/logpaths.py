"""Where task logs live: one file per try, all tries of a run in one folder.

`logs/dag_id=<dag>/run_id=<run>/task_id=<task>.attempt=<try>.log` (mapped tasks add
`.map_index=<i>` before `.attempt`). Airflow keeps a folder per task; one folder per run keeps
a fan-out of thousands of tasks from creating thousands of folders on its hot path. Ids are
validated elsewhere to contain no path separators.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


def run_log_dir(logs_dir: Path, dag_id: str, run_id: str) -> Path:
    """The folder holding the logs of every try of one run."""
    return logs_dir / f"dag_id={dag_id}" / f"run_id={run_id}"


@lru_cache(maxsize=1024)
def _run_log_prefix(logs_dir: Path, dag_id: str, run_id: str) -> str:
    # pathlib joins cost more than the rest of preparing a launch: build the run's part once
    return f"{run_log_dir(logs_dir, dag_id, run_id)}/task_id="


def task_log_path(
    logs_dir: Path, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int
) -> Path:
    """The log file of one try."""
    mapped = f".map_index={map_index}" if map_index >= 0 else ""
    return Path(f"{_run_log_prefix(logs_dir, dag_id, run_id)}{task_id}{mapped}.attempt={try_number}.log")
