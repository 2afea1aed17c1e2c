"""Fixtures the engine tests share: a run's work, DAG and log folders under the test's tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Where tasks write their files (the DAG files see it as `W`)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def dags(tmp_path: Path) -> Path:
    return tmp_path / "dags"


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path / "logs"
