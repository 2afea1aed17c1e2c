"""The task-instance and run state machines: which state changes are legal.

The engine changes every task instance and run through these checks before it writes
a row, so a bug that would, say, move a finished task back to `running` fails loudly
at the point it happens instead of corrupting a run. The moves follow Airflow's
semantics; the comments say which event in the engine produces each one.

Writing a state over itself is always legal: the engine's writes are idempotent
(a replayed executor report, a recovery pass) and must not trip the machine.

A person may decide more than the engine (Airflow's "mark success", "mark failed"): with
`by_user=True` a task instance may become success, failed or skipped from any state, and a
run success, failed or queued from any state. Only the API's operations pass it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from orchestrator.core.states import RunState, TaskState
from orchestrator.errors import IllegalTransition

_T = TaskState
_R = RunState
_S = TypeVar("_S", TaskState, RunState)

# Each target set deliberately omits the state itself; `_with_self` adds it below.
_TASK_MOVES: dict[TaskState, frozenset[TaskState]] = {
    # created with the run: deps met (scheduled/queued), or decided by the resolver
    _T.NONE: frozenset({_T.SCHEDULED, _T.QUEUED, _T.SKIPPED, _T.UPSTREAM_FAILED, _T.REMOVED}),
    # waiting for capacity; -> none when a user clears it
    _T.SCHEDULED: frozenset({_T.QUEUED, _T.SKIPPED, _T.UPSTREAM_FAILED, _T.REMOVED, _T.NONE}),
    # handed to an executor. success: a task so fast its "running" report was merged;
    # scheduled: the executor gave it back (no slot), it is queued again later
    _T.QUEUED: frozenset({_T.RUNNING, _T.FAILED, _T.UP_FOR_RETRY, _T.SUCCESS, _T.SCHEDULED, _T.NONE}),
    # queued: the try was lost with a dead daemon and is re-queued
    _T.RUNNING: frozenset({_T.SUCCESS, _T.FAILED, _T.UP_FOR_RETRY, _T.DEFERRED, _T.QUEUED, _T.NONE}),
    _T.UP_FOR_RETRY: frozenset({_T.QUEUED, _T.SCHEDULED, _T.FAILED, _T.NONE}),
    # a trigger fired (resume via scheduled/queued) or finished the task outright
    _T.DEFERRED: frozenset({_T.SCHEDULED, _T.QUEUED, _T.FAILED, _T.SUCCESS, _T.UP_FOR_RETRY, _T.NONE}),
    # finished states: only "clear" (a user re-runs the task) leaves them
    _T.SUCCESS: frozenset({_T.NONE}),
    _T.FAILED: frozenset({_T.NONE}),
    _T.SKIPPED: frozenset({_T.NONE}),
    _T.UPSTREAM_FAILED: frozenset({_T.NONE}),
    _T.REMOVED: frozenset({_T.NONE}),
}

_RUN_MOVES: dict[RunState, frozenset[RunState]] = {
    _R.QUEUED: frozenset({_R.RUNNING, _R.FAILED}),
    # queued: the run is cleared while still running
    _R.RUNNING: frozenset({_R.SUCCESS, _R.FAILED, _R.QUEUED}),
    # queued: a user clears a finished run to run it again
    _R.SUCCESS: frozenset({_R.QUEUED}),
    _R.FAILED: frozenset({_R.QUEUED}),
}


#: what a user may mark a task instance as, whatever its state (Airflow's UpdateTaskInstance)
USER_TASK_MARKS: frozenset[TaskState] = frozenset({_T.SUCCESS, _T.FAILED, _T.SKIPPED})

#: what a user may set a run to, whatever its state (Airflow's UpdateDagRunState)
USER_RUN_MARKS: frozenset[RunState] = frozenset({_R.SUCCESS, _R.FAILED, _R.QUEUED})


def _with_self(moves: dict[_S, frozenset[_S]]) -> Mapping[_S, frozenset[_S]]:
    return MappingProxyType({old: targets | {old} for old, targets in moves.items()})


#: Every legal task move, old state -> the states it may become (itself included).
TASK_TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = _with_self(_TASK_MOVES)

#: Every legal run move, old state -> the states it may become (itself included).
RUN_TRANSITIONS: Mapping[RunState, frozenset[RunState]] = _with_self(_RUN_MOVES)


def _allowed(targets: frozenset[TaskState] | frozenset[RunState]) -> str:
    return ", ".join(sorted(str(t) for t in targets))


def check_task_transition(
    old: TaskState, new: TaskState, *, subject: str | None = None, by_user: bool = False
) -> None:
    """Raise `IllegalTransition` unless a task instance may move from `old` to `new`.

    `subject` (for example "task 'extract' of run 'manual__2024'") is put in the message;
    `by_user`: a person marks it (USER_TASK_MARKS are legal from any state).
    """
    if new in TASK_TRANSITIONS[old] or (by_user and new in USER_TASK_MARKS):
        return
    who = f" ({subject})" if subject else ""
    raise IllegalTransition(
        f"task {old} -> {new} is not a legal state change{who}; from {old} a task may only become: "
        f"{_allowed(TASK_TRANSITIONS[old])}. This is a bug in the orchestrator, please report it."
    )


def check_run_transition(
    old: RunState, new: RunState, *, subject: str | None = None, by_user: bool = False
) -> None:
    """Raise `IllegalTransition` unless a run may move from `old` to `new` (`by_user`: a person
    sets it, USER_RUN_MARKS are legal from any state)."""
    if new in RUN_TRANSITIONS[old] or (by_user and new in USER_RUN_MARKS):
        return
    who = f" ({subject})" if subject else ""
    raise IllegalTransition(
        f"run {old} -> {new} is not a legal state change{who}; from {old} a run may only become: "
        f"{_allowed(RUN_TRANSITIONS[old])}. This is a bug in the orchestrator, please report it."
    )
