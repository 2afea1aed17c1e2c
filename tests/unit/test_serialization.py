"""spec_to_dict / spec_from_dict: an exact round trip through JSON, and clear errors on malformed dicts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator import DAG, Bash, task
from orchestrator.core.model import DagSpec, TaskSpec, TriggerRule, XComRef
from orchestrator.core.serialization import SpecFormatError, spec_from_dict, spec_to_dict


def _authored() -> DagSpec:
    with DAG("authored", params={"day": "2026-01-01", "n": [1, 2]}, tags=["x", "y"]) as d:
        a = Bash("a", "echo {{ params.day }}", retries=2, retry_delay=1.5, execution_timeout=10)

        @task(trigger_rule="all_done")
        def b(x: Any, y: Any) -> None: ...

        b(a.output, y={"k": a.output["other"]})
    return d.to_spec(fileloc="/dags/authored.py")


SPECS = [
    DagSpec("empty", "/dags/empty.py", ()),
    DagSpec(
        "full",
        "/dags/full.py",
        (
            TaskSpec(
                "a",
                "bash",
                args={"bash_command": "echo hi"},
                env={"A": "1"},
                append_env=True,
                cwd="/tmp",
                retries=3,
                retry_delay=2.5,
                retry_exponential_backoff=True,
                max_retry_delay=60.0,
                execution_timeout=30.0,
                do_xcom_push=False,
            ),
            TaskSpec(
                "b",
                "python",
                upstream=("a",),
                trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
                args={
                    "op_args": [1, "two", None, True, 2.5, [XComRef("a")], {"n": {"m": XComRef("a", "k")}}],
                    "op_kwargs": {"ref": XComRef("a"), "list": [1, [2, {"x": None}]]},
                },
                executor="local",
            ),
        ),
        schedule="0 3 * * *",
        description="everything set",
        max_active_runs=2,
        max_active_tasks=7,
        params={"nested": {"list": [1, 2, {"k": "v"}]}, "none": None},
        tags=("a", "b"),
        is_paused_upon_creation=True,
    ),
    DagSpec(
        "rules",
        "/dags/rules.py",
        tuple(
            TaskSpec(rule.value, "bash", args={"bash_command": "true"}, trigger_rule=rule)
            for rule in TriggerRule
        ),
    ),
    _authored(),
]


@pytest.mark.parametrize("spec", SPECS, ids=[s.dag_id for s in SPECS])
def test_round_trip_is_exact_through_json(spec: DagSpec) -> None:
    data = spec_to_dict(spec)
    text = json.dumps(data, allow_nan=False)  # JSON-able, nothing custom
    assert spec_from_dict(json.loads(text)) == spec
    assert spec_from_dict(data) == spec


def test_xcomrefs_and_trigger_rules_are_written_as_documented() -> None:
    data = spec_to_dict(SPECS[1])
    b = data["tasks"][1]
    assert b["trigger_rule"] == "none_failed_min_one_success"
    assert b["args"]["op_kwargs"]["ref"] == {"__xcom__": {"task_id": "a", "key": "return_value"}}
    assert b["args"]["op_args"][6] == {"n": {"m": {"__xcom__": {"task_id": "a", "key": "k"}}}}
    assert data["tags"] == ["a", "b"]
    assert type(data["tasks"][0]["upstream"]) is list


def test_optional_fields_may_be_missing() -> None:
    spec = spec_from_dict(
        {
            "dag_id": "d",
            "fileloc": "/f.py",
            "tasks": [{"task_id": "a", "kind": "bash", "bash_command": "true"}],
        }
    )
    assert spec == DagSpec("d", "/f.py", (TaskSpec("a", "bash", args={"bash_command": "true"}),))


def _good() -> dict[str, Any]:
    return spec_to_dict(SPECS[1])


def _with(path: str, value: Any) -> dict[str, Any]:
    data = _good()
    target: Any = data
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    key: Any = int(last) if last.isdigit() else last
    if value is _DELETE:
        del target[key]
    else:
        target[key] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], "expected an object"),
        (_with("dag_id", _DELETE), "missing field(s) dag_id"),
        (_with("tasks", _DELETE), "missing field(s) tasks"),
        (_with("tasks", {}), "tasks must be a list"),
        (_with("surprise", 1), "unknown field(s) surprise"),
        (_with("format_version", 99), "format_version 99 is not supported"),
        (_with("max_active_runs", "4"), "max_active_runs must be an integer"),
        (_with("max_active_runs", True), "max_active_runs must be an integer"),
        (_with("tags", ["a", 1]), "tags must be a list of strings"),
        (_with("is_paused_upon_creation", "yes"), "is_paused_upon_creation must be true or false"),
        (_with("tasks.0", "a"), "tasks[0]: expected an object"),
        (_with("tasks.0.kind", "docker"), "tasks[0] ('a'): task kind 'docker' is not known"),
        (_with("tasks.0.kind", _DELETE), "missing field(s) kind"),
        (_with("tasks.0.trigger_rule", "sometimes"), "trigger_rule 'sometimes' is not a known trigger rule"),
        (_with("tasks.0.retry_delay", "5m"), "retry_delay must be a number of seconds"),
        (_with("tasks.0.execution_timeout", False), "execution_timeout must be a number of seconds"),
        (_with("tasks.0.env", {"A": 1}), "env must map strings to strings"),
        (_with("tasks.0.upstream", "a"), "upstream must be a list"),
        (_with("tasks.1.args.op_kwargs", {"r": {"__xcom__": {"key": "k"}}}), "malformed XCom reference"),
        (_with("tasks.1.args.op_args", [{"__xcom__": "a"}]), "malformed XCom reference"),
        (
            _with("tasks.1.args.op_args", [{"__xcom__": {"task_id": "a"}, "extra": 1}]),
            "malformed XCom reference",
        ),
        (_with("tasks.1.colour", "red"), "tasks[1] ('b'): unknown field(s) colour"),
    ],
)
def test_malformed_dicts_raise_a_clear_error(data: Any, expected: str) -> None:
    with pytest.raises(SpecFormatError) as info:
        spec_from_dict(data)
    assert expected in str(info.value)


def test_specs_stored_before_kinds_had_args_are_read_into_args() -> None:
    """A spec written with the flat bash_command/op_args/op_kwargs fields still loads."""
    spec = spec_from_dict(
        {
            "dag_id": "d",
            "fileloc": "/f.py",
            "tasks": [
                {"task_id": "a", "kind": "bash", "bash_command": "true", "op_args": [], "op_kwargs": {}},
                {
                    "task_id": "b",
                    "kind": "python",
                    "bash_command": None,
                    "op_args": [1],
                    "op_kwargs": {"k": 2},
                },
            ],
        }
    )
    assert spec.task("a").args == {"bash_command": "true"}
    assert spec.task("b").args == {"op_args": [1], "op_kwargs": {"k": 2}}
