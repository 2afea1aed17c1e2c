"""Templates see Airflow's context, render strictly, and tasks get Airflow's environment."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from orchestrator.core.model import DagSpec, TaskSpec, XComRef
from orchestrator.core.records import RunRecord
from orchestrator.core.states import RunState
from orchestrator.core.templating import (
    TemplateError,
    build_context,
    json_context,
    render_template,
    render_value,
    task_environment,
)

LOGICAL_DATE = datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC)
XCOMS: dict[tuple[str, str], Any] = {
    ("extract", "return_value"): {"rows": 3},
    ("extract", "path"): "/tmp/out.csv",
    ("count", "return_value"): 7,
    ("render", "return_value"): "mine",
}


def make_task(**overrides: Any) -> TaskSpec:
    fields: dict[str, Any] = {"task_id": "render", "kind": "bash", "args": {"bash_command": "echo {{ ds }}"}}
    fields.update(overrides)
    return TaskSpec(**fields)


def make_dag(task: TaskSpec, params: dict[str, Any] | None = None) -> DagSpec:
    return DagSpec(dag_id="etl", fileloc="/dags/etl.py", tasks=(task,), params=params or {})


def make_run(conf: dict[str, Any] | None = None, logical_date: datetime = LOGICAL_DATE) -> RunRecord:
    return RunRecord(
        pk=1,
        dag_id="etl",
        run_id="manual__2024-03-05",
        state=RunState.RUNNING,
        run_type="manual",
        conf=conf or {},
        logical_date=logical_date,
        data_interval_start=logical_date - timedelta(days=1),
        data_interval_end=logical_date,
        queued_at=logical_date,
    )


def make_context(
    params: dict[str, Any] | None = None, conf: dict[str, Any] | None = None, try_number: int = 2
) -> dict[str, Any]:
    task = make_task()
    return build_context(make_dag(task, params), task, make_run(conf), try_number, XCOMS)


# --- the context ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ ds }}", "2024-03-05"),
        ("{{ ds_nodash }}", "20240305"),
        ("{{ ts }}", "2024-03-05T06:07:08+00:00"),
        ("{{ ts_nodash }}", "20240305T060708"),
        ("{{ ts_nodash_with_tz }}", "20240305T060708+0000"),
        ("{{ logical_date.year }}-{{ logical_date.hour }}", "2024-6"),
        ("{{ data_interval_start }}", "2024-03-04T06:07:08+00:00"),  # ISO, as pendulum prints
        ("{{ data_interval_end.isoformat() }}", "2024-03-05T06:07:08+00:00"),
        ("{{ run_id }}", "manual__2024-03-05"),
        ("{{ dag_run.run_id }} {{ dag_run.run_type }} {{ dag_run.dag_id }}", "manual__2024-03-05 manual etl"),
        ("{{ dag_run.logical_date.day }}", "5"),
        ("{{ dag_run.conf }}", "{}"),
        ("{{ dag.dag_id }}", "etl"),
        ("{{ task.task_id }}", "render"),
        ("{{ ti.task_id }} {{ ti.dag_id }} {{ ti.run_id }}", "render etl manual__2024-03-05"),
        ("{{ ti.try_number }} {{ ti.map_index }}", "2 -1"),
        ("{{ task_instance.try_number }}", "2"),
        ("{{ task_instance_key_str }}", "etl__render__20240305"),
        ("{{ params }}", "{}"),
        ("{{ logical_date | ds }} {{ logical_date | ts_nodash }}", "2024-03-05 20240305T060708"),
        ("{{ data_interval_start | ds_nodash }}", "20240304"),
    ],
)
def test_context_key(template: str, expected: str) -> None:
    assert render_template(template, make_context()) == expected


def test_context_has_airflows_keys_and_not_airflows_config() -> None:
    context = make_context()
    expected = {
        "ds",
        "ds_nodash",
        "ts",
        "ts_nodash",
        "ts_nodash_with_tz",
        "logical_date",
        "data_interval_start",
        "data_interval_end",
        "run_id",
        "params",
        "dag_run",
        "dag",
        "task",
        "task_instance",
        "ti",
        "macros",
    }
    assert expected <= set(context)
    assert "conf" not in context
    assert isinstance(context["logical_date"], datetime)


@pytest.mark.parametrize(
    ("logical_date", "ts", "ts_nodash", "ts_nodash_with_tz"),
    [
        (datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), "2024-01-02T03:04:05.123456+00:00", "20240102T030405",
         "20240102T030405.123456+0000"),
        # Airflow strips every "-" from ts, the sign of the offset included
        (datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=-5))), "2024-01-02T00:00:00-05:00", "20240102T000000",
         "20240102T0000000500"),
    ],
)  # fmt: skip
def test_date_strings_match_strftime_and_isoformat(
    logical_date: datetime, ts: str, ts_nodash: str, ts_nodash_with_tz: str
) -> None:
    task = make_task()
    context = build_context(make_dag(task), task, make_run(logical_date=logical_date), 1, {})
    assert context["ds"] == logical_date.strftime("%Y-%m-%d")
    assert context["ts"] == ts == logical_date.isoformat()
    assert context["ts_nodash"] == ts_nodash == logical_date.strftime("%Y%m%dT%H%M%S")
    assert context["ts_nodash_with_tz"] == ts_nodash_with_tz


def test_the_same_instant_in_two_zones_renders_in_each_zone() -> None:
    utc = datetime(2024, 1, 2, 3, tzinfo=UTC)
    est = utc.astimezone(timezone(timedelta(hours=-5)))
    task = make_task()
    assert build_context(make_dag(task), task, make_run(logical_date=utc), 1, {})["ds"] == "2024-01-02"
    context = build_context(make_dag(task), task, make_run(logical_date=est), 1, {})
    assert (context["ds"], context["ts"]) == ("2024-01-01", "2024-01-01T22:00:00-05:00")


@pytest.mark.parametrize(
    ("params", "conf", "expected"),
    [
        ({"x": 1}, {}, {"x": 1}),
        ({"x": 1, "y": "a"}, {"x": 2}, {"x": 2, "y": "a"}),  # conf overrides params
        ({}, {"z": 3}, {"z": 3}),  # Airflow's params.update(dag_run.conf) adds new keys too
        ({"x": {"deep": 1}}, {"x": [1]}, {"x": [1]}),
    ],
)
def test_params_are_dag_params_updated_with_run_conf(
    params: dict[str, Any], conf: dict[str, Any], expected: dict[str, Any]
) -> None:
    context = make_context(params=params, conf=conf)
    assert context["params"] == expected
    assert context["dag_run"].conf == conf


def test_building_a_context_does_not_change_the_dag_params() -> None:
    task = make_task()
    dag = make_dag(task, {"x": 1})
    build_context(dag, task, make_run({"x": 2, "new": 1}), 1, {})
    assert dag.params == {"x": 1}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ ti.xcom_pull(task_ids='count') }}", "7"),
        ("{{ ti.xcom_pull('extract')['rows'] }}", "3"),
        ("{{ ti.xcom_pull(task_ids='extract', key='path') }}", "/tmp/out.csv"),
        ("{{ ti.xcom_pull(task_ids=['count', 'extract']) }}", "[7, {'rows': 3}]"),
        ("{{ ti.xcom_pull(task_ids=['count', 'nobody']) }}", "[7, None]"),
        ("{{ ti.xcom_pull(task_ids='nobody') }}", "None"),
        ("{{ ti.xcom_pull(task_ids='nobody', default='-') }}", "-"),
        ("{{ ti.xcom_pull(task_ids='count', key='other') }}", "None"),
        ("{{ ti.xcom_pull() }}", "mine"),  # Airflow 3: no task_ids means this task
        ("{{ task_instance.xcom_pull(task_ids='count') + 1 }}", "8"),
    ],
)
def test_xcom_pull(template: str, expected: str) -> None:
    assert render_template(template, make_context()) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ macros.ds_add(ds, 5) }}", "2024-03-10"),
        ("{{ macros.ds_add('2015-01-06', -5) }}", "2015-01-01"),
        ("{{ macros.ds_add(ds, 0) }}", "2024-03-05"),
        ("{{ macros.ds_format('2015-01-01', '%Y-%m-%d', '%m-%d-%y') }}", "01-01-15"),
        ("{{ macros.ds_format(ds_nodash, '%Y%m%d', '%d/%m/%Y') }}", "05/03/2024"),
        ("{{ (logical_date + macros.timedelta(days=1)).day }}", "6"),
        ("{{ macros.datetime(2020, 1, 2).year }}", "2020"),
        ("{{ macros.json.dumps({'a': 1}) }}", '{"a": 1}'),
    ],
)
def test_macros(template: str, expected: str) -> None:
    assert render_template(template, make_context()) == expected


# --- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("plain text", "plain text"),
        ("", ""),
        ("echo hi\n", "echo hi"),  # Jinja drops one trailing newline, with or without markup
        ("{{ ds }}\n", "2024-03-05"),
        ("a\r\nb", "a\nb"),
        ("{% for i in range(3) %}{{ i }}{% endfor %}", "012"),
        ("{% set x = [] %}{% do x.append(1) %}{{ x }}", "[1]"),
        ("{{ params.get('missing', 'd') }}", "d"),
        ("{{ params.missing | default('d') }}", "d"),
        ("{{ '%s-%s' % (ds, run_id) }}", "2024-03-05-manual__2024-03-05"),
    ],
)
def test_render_template(template: str, expected: str) -> None:
    assert render_template(template, make_context()) == expected


@pytest.mark.parametrize(
    ("template", "fragments"),
    [
        ("echo {{ dss }}", ["'echo {{ dss }}'", "'dss' is undefined", "StrictUndefined", "default("]),
        ("{{ params.nope }}", ["has no attribute 'nope'", "StrictUndefined"]),
        ("line one\n{{ oops }}\nline three", ["'{{ oops }}' (line 2)", "'oops' is undefined"]),
        ("{% if %}", ["'{% if %}'", "Expected an expression", "Jinja syntax"]),
        ("{{ 1 / 0 }}", ["division by zero", "ZeroDivisionError"]),
        ("{{ ti.__class__ }}", ["unsafe"]),
        ("{{ " + "x" * 200 + " }}", ["...", "is undefined"]),
    ],
)
def test_render_errors_carry_the_snippet_and_jinjas_message(template: str, fragments: list[str]) -> None:
    with pytest.raises(TemplateError) as raised:
        render_template(template, make_context())
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_an_undefined_variable_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(TemplateError):
        render_template("rm -rf /data/{{ partition }}", make_context())


def test_compiled_templates_are_reused() -> None:
    from orchestrator.core import templating

    template = "cached {{ ds }} {{ run_id }}"
    render_template(template, make_context())
    hits = templating._compile.cache_info().hits
    render_template(template, make_context(try_number=5))
    assert templating._compile.cache_info().hits == hits + 1
    assert templating._compile.cache_info().maxsize is not None  # bounded


# --- render_value ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{ ds }}", "2024-03-05"),
        (5, 5),
        (1.5, 1.5),
        (True, True),
        (None, None),
        (["{{ ds_nodash }}", 1, None], ["20240305", 1, None]),
        (("{{ run_id }}", 2), ("manual__2024-03-05", 2)),
        ({"{{ ds }}": "{{ ds }}"}, {"{{ ds }}": "2024-03-05"}),  # keys are not rendered
        ({"a": [{"b": "{{ ti.try_number }}"}]}, {"a": [{"b": "2"}]}),
        ({"__xcom__": {"task_id": "count", "key": "return_value"}}, 7),
        ({"__xcom__": {"task_id": "extract"}}, {"rows": 3}),  # key defaults to return_value
        ({"__xcom__": {"task_id": "extract", "key": "path"}}, "/tmp/out.csv"),
        ([{"__xcom__": {"task_id": "count", "key": "return_value"}}, "{{ ds }}"], [7, "2024-03-05"]),
        ({"n": {"__xcom__": {"task_id": "count", "key": "return_value"}}}, {"n": 7}),
        ({"__xcom__": {"task_id": "count"}, "other": 1}, {"__xcom__": {"task_id": "count"}, "other": 1}),
        (XComRef("extract", "path"), "/tmp/out.csv"),
        ({"__xcom__": {"task_id": "render"}}, "mine"),
    ],
)
def test_render_value(value: Any, expected: Any) -> None:
    assert render_value(value, make_context(), XCOMS) == expected


def test_xcom_values_are_not_rendered_as_templates() -> None:
    xcoms = {("a", "return_value"): "{{ ds }}"}
    assert (
        render_value({"__xcom__": {"task_id": "a", "key": "return_value"}}, make_context(), xcoms)
        == "{{ ds }}"
    )


@pytest.mark.parametrize(
    "value",
    [{"__xcom__": {"task_id": "x", "key": "return_value"}}, XComRef("ghost"), [XComRef("ghost")]],
)
def test_a_missing_return_value_resolves_to_none_like_airflow(value: Any) -> None:
    # a task that returned None pushed no XCom; its output is None downstream
    rendered = render_value(value, make_context(), XCOMS)
    assert rendered == ([None] if isinstance(value, list) else None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([{"__xcom__": {"task_id": "count", "key": "other"}}], "task 'count' pushed no XCom 'other'"),
        ({"__xcom__": "count"}, "malformed XCom reference"),
    ],
)
def test_render_value_reports_missing_xcoms_by_task(value: Any, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_value(value, make_context(), XCOMS)


# --- task environment ---------------------------------------------------------------------

BASE_ENV = {"PATH": "/usr/bin", "HOME": "/root", "SHARED": "base"}
CTX_ENV = {
    "AIRFLOW_CTX_DAG_ID": "etl",
    "AIRFLOW_CTX_TASK_ID": "render",
    "AIRFLOW_CTX_LOGICAL_DATE": "2024-03-05T06:07:08+00:00",
    "AIRFLOW_CTX_DAG_RUN_ID": "manual__2024-03-05",
    "AIRFLOW_CTX_TRY_NUMBER": "3",
    "ORCHESTRATOR_DAG_ID": "etl",
    "ORCHESTRATOR_TASK_ID": "render",
    "ORCHESTRATOR_LOGICAL_DATE": "2024-03-05T06:07:08+00:00",
    "ORCHESTRATOR_RUN_ID": "manual__2024-03-05",
    "ORCHESTRATOR_TRY_NUMBER": "3",
}


@pytest.mark.parametrize(
    ("env", "append_env", "rendered", "expected_user_part"),
    [
        ({}, False, {}, BASE_ENV),  # no env: inherit the daemon's environment
        ({}, True, {}, BASE_ENV),
        ({"SHARED": "{{ ds }}"}, False, {"SHARED": "2024-03-05"}, {"SHARED": "2024-03-05"}),  # env alone
        (
            {"SHARED": "{{ ds }}", "X": "1"},
            True,
            {"SHARED": "2024-03-05", "X": "1"},
            {**BASE_ENV, "SHARED": "2024-03-05", "X": "1"},  # base + env, env wins
        ),
    ],
)
def test_task_environment(
    env: dict[str, str], append_env: bool, rendered: dict[str, str], expected_user_part: dict[str, str]
) -> None:
    task = make_task(env=env, append_env=append_env)
    result = task_environment(make_dag(task), task, make_run(), 3, rendered, BASE_ENV)
    assert result == {**expected_user_part, **CTX_ENV}


def test_context_variables_override_user_values_and_inputs_are_not_changed() -> None:
    task = make_task(env={"AIRFLOW_CTX_DAG_ID": "x"})
    rendered = {"AIRFLOW_CTX_DAG_ID": "x"}
    result = task_environment(make_dag(task), task, make_run(), 1, rendered, BASE_ENV)
    assert result["AIRFLOW_CTX_DAG_ID"] == "etl"
    assert rendered == {"AIRFLOW_CTX_DAG_ID": "x"}
    assert "AIRFLOW_CTX_DAG_ID" not in BASE_ENV


# --- json context ---------------------------------------------------------------------------


def test_json_context_is_the_json_able_subset() -> None:
    context = make_context(params={"p": 1}, conf={"c": 2}, try_number=4)
    result = json_context(context)
    assert json.loads(json.dumps(result)) == result
    assert result == {
        "ds": "2024-03-05",
        "ds_nodash": "20240305",
        "ts": "2024-03-05T06:07:08+00:00",
        "ts_nodash": "20240305T060708",
        "logical_date": "2024-03-05T06:07:08+00:00",
        "data_interval_start": "2024-03-04T06:07:08+00:00",
        "data_interval_end": "2024-03-05T06:07:08+00:00",
        "run_id": "manual__2024-03-05",
        "dag_id": "etl",
        "task_id": "render",
        "try_number": 4,
        "map_index": -1,
        "params": {"p": 1, "c": 2},
        "conf": {"c": 2},
        "run_type": "manual",
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01", "2026-01-01"),
        ("$(id)", "'$(id)'"),
        ("a b; rm -rf /", "'a b; rm -rf /'"),
        ("it's", "'it'\"'\"'s'"),
        ("", "''"),
        (3, "3"),
    ],
)
def test_shquote_makes_a_value_one_shell_word(value: Any, expected: str) -> None:
    assert render_template("{{ params.x | shquote }}", {"params": {"x": value}}) == expected
