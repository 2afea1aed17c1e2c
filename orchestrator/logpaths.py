"""Where task logs live: one file per try, Airflow's directory layout under the logs folder."""

from __future__ import annotations

from pathlib import Path


def task_log_path(
    logs_dir: Path, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int
) -> Path:
    """The log file of one try. Ids are validated elsewhere to contain no path separators."""
    run_dir = logs_dir / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    if map_index >= 0:
        run_dir = run_dir / f"map_index={map_index}"
    return run_dir / f"attempt={try_number}.log"
