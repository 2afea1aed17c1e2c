"""Checks that a DagSpec is one the scheduler can run, with messages that say what to fix.

The loader runs `validate_dag` on every DAG it parses, so a broken DAG shows up in
`orchestrator dags errors` instead of failing later inside the engine. The authoring
API uses the same id and trigger-rule checks to fail at the line that made the mistake.
Pure: no I/O, no imports beyond the model.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from orchestrator.core.assets import condition_problems, uri_problem
from orchestrator.core.kinds import UnknownTaskKind, get_kind
from orchestrator.core.model import DagSpec, TaskSpec, TriggerRule, XComRef
from orchestrator.errors import OrchestratorError

#: Airflow's KEY_REGEX: what a dag_id or task_id may contain.
#: matched whole (fullmatch): "$" alone would let a trailing newline through
KEY_REGEX = re.compile(r"[\w.-]+")
MAX_KEY_LENGTH = 250


class DagValidationError(OrchestratorError, ValueError):
    """The DAG is invalid: the message names the DAG, the task and what to change."""


class DuplicateTaskIdFound(DagValidationError):
    """A task id is used twice in one DAG: give one of the tasks another task_id."""


def check_key(kind: str, value: object) -> str:
    """Return `value` if it is a valid dag_id/task_id (Airflow's rules), else raise."""
    if not isinstance(value, str):
        raise DagValidationError(f"{kind} must be a string, got {type(value).__name__} {value!r}")
    if len(value) > MAX_KEY_LENGTH:
        raise DagValidationError(
            f"{kind} {value[:40]!r}... is {len(value)} characters long; the limit is {MAX_KEY_LENGTH}"
        )
    if KEY_REGEX.fullmatch(value) is None:
        raise DagValidationError(
            f"{kind} {value!r} is invalid: use only letters, digits, '_', '-' and '.' (e.g. "
            f"{_suggest_key(value)!r})"
        )
    return value


def _suggest_key(value: str) -> str:
    suggestion = re.sub(r"[^\w.-]+", "_", value).strip("_")
    return suggestion or "my_task"


def check_trigger_rule(value: object) -> TriggerRule:
    """Return the TriggerRule named by `value` (a string or a TriggerRule), else raise."""
    if isinstance(value, str):
        try:
            return TriggerRule(value)
        except ValueError:
            pass
    valid = ", ".join(rule.value for rule in TriggerRule)
    raise DagValidationError(f"unknown trigger_rule {value!r}; valid trigger rules are: {valid}")


def validate_dag(spec: DagSpec) -> None:
    """Raise DagValidationError listing every problem of `spec`; return None when it is runnable.

    Checked: ids, DAG limits, the asset condition and outlet URIs, each task's settings,
    duplicate task ids, upstream ids that name no task, XComRefs to unknown tasks, cycles, and
    that `spec.tasks` is in a topological order (every task after its upstream tasks), which
    the engine relies on.
    """
    problems: list[str] = []
    _collect(problems, lambda: check_key("dag_id", spec.dag_id))
    if spec.max_active_runs < 1:
        problems.append(f"max_active_runs is {spec.max_active_runs}; it must be at least 1")
    if spec.max_active_tasks < 1:
        problems.append(f"max_active_tasks is {spec.max_active_tasks}; it must be at least 1")
    if spec.asset_condition is not None:
        problems.extend(f"schedule: {problem}" for problem in condition_problems(spec.asset_condition))

    seen: set[str] = set()
    for task in spec.tasks:
        if task.task_id in seen:
            problems.append(f"task_id {task.task_id!r} is used by more than one task; rename one of them")
        seen.add(task.task_id)
        problems.extend(_task_problems(task))

    graph_ok = True
    for task in spec.tasks:
        for up in task.upstream:
            if up not in seen:
                graph_ok = False
                problems.append(f"task {task.task_id!r} has upstream {up!r}, which is not a task of this DAG")
        for ref in iter_xcom_refs(task.args):
            if ref.task_id not in seen:
                problems.append(
                    f"task {task.task_id!r} pulls the XCom of {ref.task_id!r}, "
                    "which is not a task of this DAG"
                )

    if graph_ok and len(seen) == len(spec.tasks):
        cycle = find_cycle(spec.tasks)
        if cycle is not None:
            problems.append(_cycle_message(cycle))
        else:
            position = {task.task_id: i for i, task in enumerate(spec.tasks)}
            for i, task in enumerate(spec.tasks):
                late = [up for up in task.upstream if position[up] > i]
                if late:
                    problems.append(
                        f"tasks are not in topological order: {task.task_id!r} comes before its "
                        f"upstream {late[0]!r} (build the spec with DAG.to_spec or topological_order)"
                    )
                    break

    if problems:
        if len(problems) == 1:
            raise DagValidationError(f"DAG {spec.dag_id!r} is invalid: {problems[0]}")
        listed = "".join(f"\n  - {p}" for p in problems)
        raise DagValidationError(f"DAG {spec.dag_id!r} is invalid:{listed}")


def _collect(problems: list[str], check: Any) -> None:
    try:
        check()
    except DagValidationError as exc:
        problems.append(str(exc))


def _task_problems(task: TaskSpec) -> list[str]:
    problems: list[str] = []
    where = f"task {task.task_id!r}"
    _collect(problems, lambda: check_key("task_id", task.task_id))
    try:
        kind = get_kind(task.kind)
    except UnknownTaskKind as exc:
        problems.append(f"{where}: {exc}")
    else:
        problems.extend(f"{where} {problem}" for problem in kind.check(task.args))
    if not isinstance(task.trigger_rule, TriggerRule):
        _collect(problems, lambda: check_trigger_rule(task.trigger_rule))
    if task.retries < 0:
        problems.append(f"{where} has retries={task.retries}; use 0 or more")
    if task.retry_delay < 0:
        problems.append(f"{where} has retry_delay={task.retry_delay}; use 0 seconds or more")
    if task.max_retry_delay is not None and task.max_retry_delay < 0:
        problems.append(f"{where} has max_retry_delay={task.max_retry_delay}; use 0 seconds or more")
    if task.execution_timeout is not None and task.execution_timeout <= 0:
        problems.append(f"{where} has execution_timeout={task.execution_timeout}; use more than 0 seconds")
    if task.task_id in task.upstream:
        problems.append(_cycle_message([task.task_id, task.task_id]))
    for uri in task.outlets:
        problem = uri_problem(uri)
        if problem is not None:
            problems.append(f"{where} outlets: {problem}")
    return problems


def iter_xcom_refs(value: Any) -> Iterator[XComRef]:
    """Every XComRef nested anywhere inside lists, tuples and dict values of `value`."""
    if isinstance(value, XComRef):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from iter_xcom_refs(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from iter_xcom_refs(item)


def find_cycle(tasks: Sequence[TaskSpec]) -> list[str] | None:
    """A cycle as a path in the downstream direction, first node repeated at the end, or None.

    Iterative depth-first search, so a chain of thousands of tasks does not hit the
    recursion limit. Upstream ids that name no task are ignored.
    """
    downstream: dict[str, list[str]] = {task.task_id: [] for task in tasks}
    for task in tasks:
        for up in task.upstream:
            if up in downstream:
                downstream[up].append(task.task_id)
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(downstream, white)
    for root in downstream:
        if colour[root] != white:
            continue
        path = [root]
        children = [iter(downstream[root])]
        colour[root] = grey
        while children:
            child = next(children[-1], None)
            if child is None:
                colour[path.pop()] = black
                children.pop()
            elif colour[child] == grey:
                return [*path[path.index(child) :], child]
            elif colour[child] == white:
                colour[child] = grey
                path.append(child)
                children.append(iter(downstream[child]))
    return None


def _cycle_message(cycle: list[str]) -> str:
    return f"cycle detected: {' -> '.join(cycle)}; remove one of these dependencies"


def topological_order(spec: DagSpec) -> tuple[str, ...]:
    """Task ids with every task after all of its upstream tasks.

    Ties keep the order of `spec.tasks` (the order tasks were defined), so the result
    is deterministic. Raises DagValidationError on a cycle or an unknown upstream id.
    """
    index = {task.task_id: i for i, task in enumerate(spec.tasks)}
    pending = {task.task_id: 0 for task in spec.tasks}
    downstream: dict[str, list[str]] = {task.task_id: [] for task in spec.tasks}
    for task in spec.tasks:
        for up in dict.fromkeys(task.upstream):
            if up not in index:
                raise DagValidationError(
                    f"DAG {spec.dag_id!r} is invalid: task {task.task_id!r} has upstream {up!r}, "
                    "which is not a task of this DAG"
                )
            downstream[up].append(task.task_id)
            pending[task.task_id] += 1

    ready = [index[tid] for tid, count in pending.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        task_id = spec.tasks[heapq.heappop(ready)].task_id
        order.append(task_id)
        for child in downstream[task_id]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, index[child])
    if len(order) != len(pending):
        cycle = find_cycle(spec.tasks) or []
        raise DagValidationError(f"DAG {spec.dag_id!r} is invalid: {_cycle_message(cycle)}")
    return tuple(order)
