"""The run-id rule, in one place: what a run id may be and what it is when none is given.

Airflow's own rule: letters, digits and ``_.~:+-``, at most 250 characters, matched whole
(a trailing newline is not a character that passes).
"""

from __future__ import annotations

import re
from datetime import datetime

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_.~:+-]+")
MAX_RUN_ID_LENGTH = 250


def check_run_id(run_id: str) -> str | None:
    """None if `run_id` is valid, else a message saying what to change."""
    if (
        not isinstance(run_id, str)
        or len(run_id) > MAX_RUN_ID_LENGTH
        or RUN_ID_PATTERN.fullmatch(run_id) is None
    ):
        return f"dag_run_id {run_id!r} is invalid: use at most {MAX_RUN_ID_LENGTH} letters, digits and _.~:+-"
    return None


def default_run_id(run_type: str, when: datetime) -> str:
    """Airflow's run id for a run triggered without one: ``manual__2026-01-01T00:00:00+00:00``."""
    return f"{run_type}__{when.isoformat()}"
