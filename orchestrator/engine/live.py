"""The engine's in-memory copy of active runs and per-DAG capacity.

The store is the truth; these objects mirror it for the runs this daemon drives, so that a
finished task is resolved without reading the database. Every change to them is also put
in a change set and committed before anything is acted on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.records import RunRecord, TaskInstanceRecord
from orchestrator.core.states import FINISHED_TASK_STATES, TaskState
from orchestrator.engine.registry import LoadedDag


@dataclass(slots=True)
class LiveRun:
    """One running DAG run: its row, the DAG it runs, its task instances, its XComs."""

    record: RunRecord
    dag: LoadedDag
    tis: dict[str, TaskInstanceRecord]
    states: dict[str, TaskState]
    xcoms: dict[tuple[str, str], Any]
    unfinished: int

    @classmethod
    def build(
        cls,
        record: RunRecord,
        dag: LoadedDag,
        tis: list[TaskInstanceRecord],
        xcoms: dict[tuple[str, str], Any] | None = None,
    ) -> LiveRun:
        by_id = {ti.task_id: ti for ti in tis if ti.map_index == -1}
        states = {task_id: ti.state for task_id, ti in by_id.items()}
        unfinished = sum(1 for state in states.values() if state not in FINISHED_TASK_STATES)
        return cls(record, dag, by_id, states, dict(xcoms or {}), unfinished)

    @property
    def pk(self) -> int:
        return self.record.pk


@dataclass(slots=True)
class DagSlots:
    """Per-DAG capacity: runs admitted against max_active_runs, tasks against max_active_tasks."""

    active_runs: set[int] = field(default_factory=set)
    #: runs held back by max_active_runs, each with the DAG its task-instance rows were made from
    #: (and, for a run recovered from the store, those rows)
    queued_runs: deque[tuple[RunRecord, LoadedDag, list[TaskInstanceRecord] | None]] = field(
        default_factory=deque
    )
    active_tasks: int = 0
    #: task instances whose dependencies are met, waiting for max_active_tasks (state scheduled)
    waiting: deque[tuple[int, str]] = field(default_factory=deque)
