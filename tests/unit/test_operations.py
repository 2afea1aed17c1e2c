"""The pure parts of the API's operations: what a person may mark, what a marked run's task
instances become, which tasks a clear covers, how `runs mark` is told from `runs DAG_ID`, and
which role the destructive routes need."""

from __future__ import annotations

import pytest

from orchestrator.api import actions
from orchestrator.api.roles import Role, required_role
from orchestrator.cli_actions import RUNS_MARK, route_subcommands
from orchestrator.core.model import DagSpec, TaskSpec
from orchestrator.core.states import RunState, TaskState
from orchestrator.core.transitions import check_run_transition, check_task_transition
from orchestrator.engine.operations import marked_state, selected_tasks
from orchestrator.errors import IllegalTransition
from orchestrator.ports import ClearSelection


@pytest.mark.parametrize("old", list(TaskState))
@pytest.mark.parametrize("new", [TaskState.SUCCESS, TaskState.FAILED, TaskState.SKIPPED])
def test_a_user_may_mark_a_task_instance_success_failed_or_skipped_from_any_state(
    old: TaskState, new: TaskState
) -> None:
    check_task_transition(old, new, by_user=True)


def test_a_user_mark_does_not_open_other_moves() -> None:
    with pytest.raises(IllegalTransition):
        check_task_transition(TaskState.SUCCESS, TaskState.RUNNING, by_user=True)
    with pytest.raises(IllegalTransition):
        check_task_transition(TaskState.NONE, TaskState.SUCCESS)  # the engine never does this


@pytest.mark.parametrize("old", list(RunState))
@pytest.mark.parametrize("new", [RunState.SUCCESS, RunState.FAILED, RunState.QUEUED])
def test_a_user_may_set_a_run_success_failed_or_queued_from_any_state(old: RunState, new: RunState) -> None:
    check_run_transition(old, new, by_user=True)


def test_a_run_is_not_set_to_running_by_a_user() -> None:
    with pytest.raises(IllegalTransition):
        check_run_transition(RunState.SUCCESS, RunState.RUNNING, by_user=True)


@pytest.mark.parametrize(
    ("current", "run_state", "expected"),
    [
        (TaskState.RUNNING, RunState.SUCCESS, TaskState.SUCCESS),
        (TaskState.NONE, RunState.SUCCESS, TaskState.SUCCESS),
        (TaskState.RUNNING, RunState.FAILED, TaskState.FAILED),
        (TaskState.QUEUED, RunState.FAILED, TaskState.SKIPPED),
        (TaskState.NONE, RunState.FAILED, TaskState.SKIPPED),
        (TaskState.UP_FOR_RETRY, RunState.FAILED, TaskState.SKIPPED),
    ],
)
def test_what_an_unfinished_task_instance_becomes_when_its_run_is_marked(
    current: TaskState, run_state: RunState, expected: TaskState
) -> None:
    assert marked_state(current, run_state) == expected


DIAMOND = DagSpec(
    dag_id="d",
    fileloc="/d.py",
    tasks=(
        TaskSpec("a", "bash"),
        TaskSpec("b", "bash", upstream=("a",)),
        TaskSpec("c", "bash", upstream=("a",)),
        TaskSpec("d", "bash", upstream=("b", "c")),
        TaskSpec("e", "bash", upstream=("d",)),
    ),
)


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (ClearSelection(), {"a", "b", "c", "d", "e"}),
        (ClearSelection(task_ids=("b",)), {"b"}),
        (ClearSelection(task_ids=("b",), include_downstream=True), {"b", "d", "e"}),
        (ClearSelection(task_ids=("d",), include_upstream=True), {"a", "b", "c", "d"}),
        (
            ClearSelection(task_ids=("b",), include_upstream=True, include_downstream=True),
            {"a", "b", "d", "e"},
        ),
    ],
)
def test_the_tasks_a_clear_covers(selection: ClearSelection, expected: set[str]) -> None:
    assert selected_tasks(DIAMOND, selection) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["runs", "mark", "etl", "r1", "success"], [RUNS_MARK, "etl", "r1", "success"]),
        (["runs", "mark", "--help"], [RUNS_MARK, "--help"]),
        (["runs", "etl"], ["runs", "etl"]),
        # a DAG named "mark": listed when nothing but options follows
        (["runs", "mark"], ["runs", "mark"]),
        (["runs", "mark", "--limit", "5"], ["runs", "mark", "--limit", "5"]),
        (["clear", "etl"], ["clear", "etl"]),
    ],
)
def test_runs_mark_is_told_apart_from_runs_dag_id(argv: list[str], expected: list[str]) -> None:
    assert route_subcommands(argv) == expected


def test_deletions_need_the_admin_role_and_the_other_operations_the_operator_role() -> None:
    assert required_role("DELETE", actions.delete_run) == Role.ADMIN
    assert required_role("DELETE", actions.delete_dag) == Role.ADMIN
    for handler in (actions.update_run_state, actions.clear_run, actions.clear_task_instances):
        assert required_role("POST", handler) == Role.OPERATOR
