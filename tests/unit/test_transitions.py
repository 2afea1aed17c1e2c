"""The task and run state machines accept exactly the moves the engine relies on."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.core.states import RunState, TaskState
from orchestrator.core.transitions import (
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    check_run_transition,
    check_task_transition,
)
from orchestrator.errors import IllegalTransition

# Written out independently of the module, from the engine's contract.
LEGAL_TASK_MOVES: dict[str, set[str]] = {
    "none": {"scheduled", "queued", "skipped", "upstream_failed", "removed"},
    "scheduled": {"queued", "skipped", "upstream_failed", "removed", "none"},
    "queued": {"running", "failed", "up_for_retry", "success", "scheduled", "none"},
    "running": {"success", "failed", "up_for_retry", "deferred", "queued", "none"},
    "up_for_retry": {"queued", "scheduled", "failed", "none"},
    "deferred": {"scheduled", "queued", "failed", "success", "up_for_retry", "none"},
    "success": {"none"},
    "failed": {"none"},
    "skipped": {"none"},
    "upstream_failed": {"none"},
    "removed": {"none"},
}

LEGAL_RUN_MOVES: dict[str, set[str]] = {
    "queued": {"running", "failed"},
    "running": {"success", "failed", "queued"},
    "success": {"queued"},
    "failed": {"queued"},
}


def _task_case(old: TaskState, new: TaskState) -> tuple[TaskState, TaskState, bool]:
    return old, new, old == new or new.value in LEGAL_TASK_MOVES[old.value]


def _run_case(old: RunState, new: RunState) -> tuple[RunState, RunState, bool]:
    return old, new, old == new or new.value in LEGAL_RUN_MOVES[old.value]


@pytest.mark.parametrize(
    ("old", "new", "legal"), [_task_case(o, n) for o, n in itertools.product(TaskState, TaskState)]
)
def test_task_transition_is_legal_exactly_when_the_contract_lists_it(
    old: TaskState, new: TaskState, legal: bool
) -> None:
    if legal:
        check_task_transition(old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"^task {old} -> {new} "):
            check_task_transition(old, new)
    assert (new in TASK_TRANSITIONS[old]) is legal


@pytest.mark.parametrize(
    ("old", "new", "legal"), [_run_case(o, n) for o, n in itertools.product(RunState, RunState)]
)
def test_run_transition_is_legal_exactly_when_the_contract_lists_it(
    old: RunState, new: RunState, legal: bool
) -> None:
    if legal:
        check_run_transition(old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"^run {old} -> {new} "):
            check_run_transition(old, new)
    assert (new in RUN_TRANSITIONS[old]) is legal


def test_every_state_has_an_entry() -> None:
    assert set(TASK_TRANSITIONS) == set(TaskState)
    assert set(RUN_TRANSITIONS) == set(RunState)


def test_illegal_transition_message_names_subject_and_allowed_targets() -> None:
    with pytest.raises(IllegalTransition) as raised:
        check_task_transition(TaskState.SUCCESS, TaskState.RUNNING, subject="task 'extract' of run 'r1'")
    message = str(raised.value)
    assert "task 'extract' of run 'r1'" in message
    assert "none, success" in message
    assert "please report it" in message


def test_transition_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        TASK_TRANSITIONS[TaskState.SUCCESS] = frozenset(TaskState)  # type: ignore[index]
