"""The records' fast copy-with-changes used on the engine's hot path."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.core.records import TaskInstanceRecord, evolve_ti
from orchestrator.core.states import TaskState

BASE = TaskInstanceRecord(
    run_pk=1,
    dag_id="d",
    run_id="r",
    task_id="t",
    map_index=-1,
    state=TaskState.NONE,
    try_number=0,
    max_tries=2,
    operator="BashOperator",
)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"state": TaskState.QUEUED, "try_number": 1},
        {"external_id": "pid:3", "hostname": "h", "exit_code": 0},
    ],
)
def test_evolve_ti_equals_dataclasses_replace(changes: dict[str, object]) -> None:
    assert evolve_ti(BASE, **changes) == dataclasses.replace(BASE, **changes)


def test_evolve_ti_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError, match="no field"):
        evolve_ti(BASE, stat=TaskState.QUEUED)
