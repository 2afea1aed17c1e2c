"""validate_dag and topological_order: every invalid DagSpec is refused with a message that says what to fix."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.core.model import DagSpec, TaskSpec, TriggerRule, XComRef
from orchestrator.core.validation import (
    DagValidationError,
    check_key,
    check_trigger_rule,
    find_cycle,
    topological_order,
    validate_dag,
)


def bash(task_id: str, *upstream: str, **fields: object) -> TaskSpec:
    return TaskSpec(task_id, "bash", upstream=upstream, args={"bash_command": "true"}, **fields)  # type: ignore[arg-type]


def python(task_id: str, *upstream: str, **fields: object) -> TaskSpec:
    return TaskSpec(task_id, "python", upstream=upstream, **fields)  # type: ignore[arg-type]


def dag(*tasks: TaskSpec, **fields: object) -> DagSpec:
    return DagSpec("d", "/dags/d.py", tasks, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec",
    [
        dag(),
        dag(bash("a")),
        dag(bash("a"), bash("b", "a"), python("c", "a", "b", args={"op_args": [XComRef("a")]})),
        dag(bash("a"), python("b", "a", args={"op_kwargs": {"x": [{"y": XComRef("a", "k")}]}})),
        dag(bash("a.b-c_1"), max_active_runs=1, max_active_tasks=1),
        dag(bash("a", execution_timeout=1.0, retries=3, retry_delay=0.0, max_retry_delay=10.0)),
    ],
)
def test_valid_specs_pass(spec: DagSpec) -> None:
    validate_dag(spec)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (dag(bash("a"), bash("b", "c", "a"), bash("c", "b")), "cycle detected: b -> c -> b"),
        (dag(bash("a", "c"), bash("b", "a"), bash("c", "b")), "cycle detected: a -> b -> c -> a"),
        (dag(bash("a", "a")), "cycle detected: a -> a"),
        (
            dag(bash("a"), bash("b", "ghost")),
            "task 'b' has upstream 'ghost', which is not a task of this DAG",
        ),
        (dag(bash("a"), bash("a")), "task_id 'a' is used by more than one task"),
        (dag(bash("bad id")), "task_id 'bad id' is invalid"),
        (dag(bash("x" * 251)), "the limit is 250"),
        (replace(dag(bash("a")), dag_id="no/slash"), "dag_id 'no/slash' is invalid"),
        (dag(bash("a"), max_active_runs=0), "max_active_runs is 0; it must be at least 1"),
        (dag(bash("a"), max_active_tasks=0), "max_active_tasks is 0; it must be at least 1"),
        (dag(bash("a"), python("b", "a", args={"op_args": [XComRef("nope")]})), "pulls the XCom of 'nope'"),
        (dag(python("b", args={"op_kwargs": {"x": {"y": [XComRef("nope")]}}})), "pulls the XCom of 'nope'"),
        (dag(bash("a", retries=-1)), "retries=-1"),
        (dag(bash("a", retry_delay=-1.0)), "retry_delay=-1.0"),
        (dag(bash("a", execution_timeout=0.0)), "execution_timeout=0.0"),
        (dag(TaskSpec("a", "bash")), "bash task without a bash_command"),
        (dag(bash("a", trigger_rule="all_sucess")), "unknown trigger_rule 'all_sucess'"),
        (dag(bash("b", "a"), bash("a")), "not in topological order: 'b' comes before its upstream 'a'"),
    ],
)
def test_invalid_specs_are_refused_with_a_precise_message(spec: DagSpec, expected: str) -> None:
    with pytest.raises(DagValidationError) as info:
        validate_dag(spec)
    assert expected in str(info.value)
    assert "DAG " in str(info.value)


def test_several_problems_are_listed_together() -> None:
    spec = dag(bash("a", retries=-1), bash("b", "ghost"), max_active_runs=0)
    with pytest.raises(DagValidationError) as info:
        validate_dag(spec)
    message = str(info.value)
    assert "max_active_runs" in message and "retries=-1" in message and "'ghost'" in message
    assert message.count("\n  - ") == 3


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (dag(), ()),
        (dag(bash("a"), bash("b"), bash("c")), ("a", "b", "c")),
        (dag(bash("c", "b"), bash("b", "a"), bash("a")), ("a", "b", "c")),
        # ties keep definition order: d is ready before b and c finish but was defined last
        (dag(bash("a"), bash("b", "a"), bash("c", "a"), bash("d")), ("a", "b", "c", "d")),
        (dag(bash("z", "y", "x"), bash("x"), bash("y")), ("x", "y", "z")),
        (dag(bash("b", "a", "a"), bash("a")), ("a", "b")),
    ],
)
def test_topological_order(spec: DagSpec, expected: tuple[str, ...]) -> None:
    assert topological_order(spec) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (dag(bash("a", "b"), bash("b", "a")), "cycle detected: a -> b -> a"),
        (dag(bash("a", "ghost")), "upstream 'ghost'"),
    ],
)
def test_topological_order_refuses_cycles_and_unknown_upstream(spec: DagSpec, expected: str) -> None:
    with pytest.raises(DagValidationError, match=expected):
        topological_order(spec)


def test_long_chains_do_not_hit_the_recursion_limit() -> None:
    n = 10_000
    tasks = [bash("t0")] + [bash(f"t{i}", f"t{i - 1}") for i in range(1, n)]
    spec = dag(*tasks)
    validate_dag(spec)
    assert topological_order(spec)[-1] == f"t{n - 1}"
    cyclic = replace(spec, tasks=(bash("t0", f"t{n - 1}"), *tasks[1:]))
    cycle = find_cycle(cyclic.tasks)
    assert cycle is not None and len(cycle) == n + 1 and cycle[0] == cycle[-1]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a", True),
        ("a.b-c_d", True),
        ("ünïcode", True),
        ("x" * 250, True),
        ("x" * 251, False),
        ("a b", False),
        ("a/b", False),
        ("", False),
        (5, False),
        ("etl\n", False),  # "$" alone would let the trailing newline through
        ("etl\nrm", False),
    ],
)
def test_check_key(value: object, ok: bool) -> None:
    if ok:
        assert check_key("task_id", value) == value
    else:
        with pytest.raises(DagValidationError):
            check_key("task_id", value)


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_check_trigger_rule_accepts_every_airflow_rule_by_name(rule: TriggerRule) -> None:
    assert check_trigger_rule(rule.value) is rule
    assert check_trigger_rule(rule) is rule


def test_check_trigger_rule_lists_valid_rules() -> None:
    with pytest.raises(DagValidationError) as info:
        check_trigger_rule(3)
    assert all(rule.value in str(info.value) for rule in TriggerRule)


@pytest.mark.parametrize(
    ("run_id", "ok"),
    [
        ("manual__2026-01-01T00:00:00+00:00", True),
        ("r" * 250, True),
        ("r" * 251, False),
        ("r1\n", False),
        ("r 1", False),
        ("", False),
    ],
)
def test_check_run_id_matches_the_whole_id(run_id: str, ok: bool) -> None:
    from orchestrator.core.ids import check_run_id

    assert (check_run_id(run_id) is None) == ok
