"""Log paths: short ids keep their readable paths, over-long ones are hashed to fit a file name;
and the `logs.max_bytes_per_try` key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from orchestrator.logpaths import MAX_ID_BYTES, path_part, run_log_dir, task_log_path

LOGS = Path("/var/lib/orchestrator/logs")


def test_short_ids_keep_their_paths() -> None:
    assert task_log_path(LOGS, "etl", "manual__2026-01-01T00:00:00+00:00", "extract", -1, 2) == Path(
        "/var/lib/orchestrator/logs/dag_id=etl/run_id=manual__2026-01-01T00:00:00+00:00/"
        "task_id=extract.attempt=2.log"
    )
    assert task_log_path(LOGS, "etl", "r", "t", 3, 1).name == "task_id=t.map_index=3.attempt=1.log"
    assert path_part("x" * MAX_ID_BYTES) == "x" * MAX_ID_BYTES


@pytest.mark.parametrize("length", [MAX_ID_BYTES + 1, 250])
def test_long_ids_are_a_prefix_and_a_digest_that_fit_a_file_name(length: int) -> None:
    long_id = "a" * (length - 1) + "z"
    part = path_part(long_id)
    assert len(part) == MAX_ID_BYTES and part.startswith("a" * 35 + "~")
    assert path_part("a" * (length - 1) + "y") != part  # same prefix, other digest
    path = task_log_path(LOGS, long_id, long_id, long_id, 99999, 999)
    assert all(len(os.fsencode(name)) <= 255 for name in path.parts)
    assert path.parent == run_log_dir(LOGS, long_id, long_id)
    assert path == task_log_path(LOGS, long_id, long_id, long_id, 99999, 999)  # stable


def test_max_bytes_per_try_has_a_default_and_a_floor(tmp_path: Path) -> None:
    assert load_config(None, {}, cwd=tmp_path).logs.max_bytes_per_try == 100 * 1024 * 1024
    config = load_config(None, {"ORCHESTRATOR_LOGS__MAX_BYTES_PER_TRY": "1048576"}, cwd=tmp_path)
    assert config.logs.max_bytes_per_try == 1048576
    with pytest.raises(ConfigError, match=r"ORCHESTRATOR_LOGS__MAX_BYTES_PER_TRY must be at least 4096"):
        load_config(None, {"ORCHESTRATOR_LOGS__MAX_BYTES_PER_TRY": "100"}, cwd=tmp_path)


def test_the_documented_defaults_file_matches_the_built_in_defaults() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert load_config(repo / "config.toml", {}).logs == load_config(None, {}, cwd=Path("/")).logs
