"""The engine's in-memory copy of the runs it drives, and per-DAG capacity.

The store is the truth; these objects mirror it for the runs this daemon drives, so that a
finished task is resolved without reading the database. Every change to them is also put
in a change set and committed before anything is acted on.

Task instances are keyed by `(task_id, map_index)` within a run (the store's key is the run's
pk plus those two), so a mapped task is many instances of one task, and the engine needs no
change when mapping creates them. The resolver reasons about tasks: `states` holds one state
per task, the instance's own for an unmapped task, `fold_states` of its instances for a
mapped one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.records import ChangeSet, RunRecord, TaskInstanceRecord, TaskKey
from orchestrator.core.states import FINISHED_TASK_STATES, TaskState, fold_states
from orchestrator.engine.registry import LoadedDag
from orchestrator.ports import LaunchRequest

#: a task instance within its run: (task_id, map_index)
TiId = tuple[str, int]


@dataclass(slots=True)
class LiveRun:
    """One running DAG run: its row, the DAG it runs, its task instances, its XComs."""

    record: RunRecord
    dag: LoadedDag
    tis: dict[TiId, TaskInstanceRecord]
    #: one state per task, as the resolver sees it
    states: dict[str, TaskState]
    xcoms: dict[tuple[str, str], Any]
    unfinished: int
    #: map indexes of the tasks that have mapped instances (absent for unmapped tasks)
    mapped: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        record: RunRecord,
        dag: LoadedDag,
        tis: list[TaskInstanceRecord],
        xcoms: dict[tuple[str, str], Any] | None = None,
    ) -> LiveRun:
        live = cls(record, dag, {}, {}, dict(xcoms or {}), 0)
        for ti in tis:
            live.tis[(ti.task_id, ti.map_index)] = ti
            if ti.state not in FINISHED_TASK_STATES:
                live.unfinished += 1
            if ti.map_index >= 0:
                live.mapped.setdefault(ti.task_id, []).append(ti.map_index)
        for task_id in {ti.task_id for ti in tis}:
            live.refresh_task_state(task_id)
        return live

    @property
    def pk(self) -> int:
        return self.record.pk

    def instances(self, task_id: str) -> list[TaskInstanceRecord]:
        """The task's instances: its mapped ones if it has any, else its one unmapped instance."""
        indexes = self.mapped.get(task_id)
        if indexes:
            return [self.tis[(task_id, i)] for i in indexes]
        ti = self.tis.get((task_id, -1))
        return [ti] if ti is not None else []

    def refresh_task_state(self, task_id: str) -> None:
        indexes = self.mapped.get(task_id)
        if indexes:
            self.states[task_id] = fold_states([self.tis[(task_id, i)].state for i in indexes])
        else:
            ti = self.tis.get((task_id, -1))
            if ti is not None:
                self.states[task_id] = ti.state

    def get(self, key: TaskKey) -> TaskInstanceRecord | None:
        return self.tis.get((key.task_id, key.map_index))


@dataclass(slots=True)
class DagSlots:
    """Per-DAG capacity: runs admitted against max_active_runs, tasks against max_active_tasks.

    Runs waiting for max_active_runs (or for their DAG to be unpaused) are not held here: they
    stay `queued` in the store and are admitted from there when a slot frees."""

    active_runs: set[int] = field(default_factory=set)
    active_tasks: int = 0
    #: task instances whose dependencies are met, waiting for max_active_tasks (state scheduled)
    waiting: deque[tuple[int, TiId]] = field(default_factory=deque)


@dataclass(slots=True)
class Batch:
    """What one event changed: rows to commit, tasks to launch once committed."""

    changes: ChangeSet = field(default_factory=ChangeSet)
    #: (executor name, request) pairs, submitted once the changes are committed
    launches: list[tuple[str, LaunchRequest]] = field(default_factory=list)
    #: task instances whose work is stopped once the changes are committed (a user marked or
    #: cleared them), before the launches: a new try of one of them starts once the old one ended
    stops: list[TaskKey] = field(default_factory=list)
    #: runs settled by these changes (held as `settling` until they are committed)
    settled: list[int] = field(default_factory=list)
