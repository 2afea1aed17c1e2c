"""Task-instance and run states, with Airflow's names so users and tools recognise them.

The legal transitions live in `orchestrator.core.transitions`; this module only names
the states and groups them.
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    """State of one task instance (one try of one task in one run)."""

    NONE = "none"  # created with the run, dependencies not yet met
    SCHEDULED = "scheduled"  # dependencies met, waiting for capacity (max_active_tasks)
    QUEUED = "queued"  # handed to an executor, waiting for a slot
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    UP_FOR_RETRY = "up_for_retry"  # failed, will be queued again after its retry delay
    DEFERRED = "deferred"  # waiting on a trigger in the daemon's event loop
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    REMOVED = "removed"  # the task no longer exists in the DAG


class RunState(StrEnum):
    """State of one DAG run."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


#: States after which a task instance never changes again within its run.
FINISHED_TASK_STATES: frozenset[TaskState] = frozenset(
    {TaskState.SUCCESS, TaskState.FAILED, TaskState.SKIPPED, TaskState.UPSTREAM_FAILED, TaskState.REMOVED}
)

#: States in which a task instance occupies (or is about to occupy) executor capacity.
ACTIVE_TASK_STATES: frozenset[TaskState] = frozenset({TaskState.QUEUED, TaskState.RUNNING})

#: States a run is in while it is not finished.
ACTIVE_RUN_STATES: frozenset[RunState] = frozenset({RunState.QUEUED, RunState.RUNNING})

FINISHED_RUN_STATES: frozenset[RunState] = frozenset({RunState.SUCCESS, RunState.FAILED})


def fold_states(states: list[TaskState]) -> TaskState:
    """One task-level state for the instances of a mapped task, as downstream tasks see it.

    Unfinished while any instance is unfinished (the most advanced unfinished state, so a
    running instance shows as running); once all are finished: failed if any failed,
    upstream_failed if any did, success if any succeeded, else skipped (Airflow treats a
    mapped task whose instances all skipped as skipped). No instances at all: skipped
    (an expansion over nothing, as in Airflow)."""
    if not states:
        return TaskState.SKIPPED
    unfinished = [state for state in states if state not in FINISHED_TASK_STATES]
    if unfinished:
        for state in (
            TaskState.RUNNING,
            TaskState.QUEUED,
            TaskState.DEFERRED,
            TaskState.UP_FOR_RETRY,
            TaskState.SCHEDULED,
        ):
            if state in unfinished:
                return state
        return TaskState.NONE
    for state in (TaskState.FAILED, TaskState.UPSTREAM_FAILED, TaskState.SUCCESS):
        if state in states:
            return state
    return TaskState.SKIPPED
