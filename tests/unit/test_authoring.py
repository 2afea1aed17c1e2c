"""The authoring API: what users write in DAG files becomes the right DagSpec, and mistakes fail early."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from orchestrator import (
    DAG,
    Asset,
    Bash,
    BashOperator,
    Python,
    PythonOperator,
    chain,
    cross_downstream,
    dag,
    task,
)
from orchestrator.core.model import TriggerRule, XComRef
from orchestrator.core.validation import DagValidationError, DuplicateTaskIdFound


def noop(*args: Any, **kwargs: Any) -> None:
    return None


def upstreams(d: DAG) -> dict[str, set[str]]:
    return {t.task_id: set(t.upstream) for t in d.to_spec().tasks}


# --- the example from the brief -------------------------------------------------------------


def test_the_documented_example_builds_the_expected_spec() -> None:
    with DAG("etl", schedule=None, max_active_runs=4, params={"day": "2026-01-01"}) as d:
        extract = Bash(
            "extract",
            "echo extracting {{ params.day }} for run {{ run_id }}",
            retries=2,
            retry_delay=5,
            retry_exponential_backoff=True,
            execution_timeout=600,
        )

        @task
        def transform(rows: int) -> dict[str, int]:
            return {"rows": rows * 2}

        load = Bash("load", "echo load", trigger_rule="all_done")
        extract >> transform(21) >> load

    spec = d.to_spec()
    assert spec.dag_id == "etl"
    assert spec.max_active_runs == 4
    assert spec.params == {"day": "2026-01-01"}
    assert [t.task_id for t in spec.tasks] == ["extract", "transform", "load"]
    ex, tr, lo = spec.tasks
    assert (ex.kind, ex.upstream, ex.retries, ex.retry_delay) == ("bash", (), 2, 5.0)
    assert ex.retry_exponential_backoff is True
    assert ex.execution_timeout == 600.0
    assert ex.args["bash_command"] == "echo extracting {{ params.day }} for run {{ run_id }}"
    assert (tr.kind, tr.upstream, tr.args) == ("python", ("extract",), {"op_args": [21], "op_kwargs": {}})
    assert tr.trigger_rule is TriggerRule.ALL_SUCCESS
    assert (lo.kind, lo.upstream, lo.trigger_rule) == ("bash", ("transform",), TriggerRule.ALL_DONE)
    assert lo.retry_delay == 300.0 and lo.execution_timeout is None


def test_xcomarg_arguments_become_xcomrefs_and_upstream_dependencies() -> None:
    with DAG("xcom") as d:
        a = Bash("a", "echo 1")

        @task
        def b(x: Any, y: Any, z: Any) -> None: ...

        b(a.output, y=[a.output["other"], {"deep": a.output}], z=(1, 2))
    spec = d.to_spec()
    assert spec.task("b").upstream == ("a",)
    assert spec.task("b").args["op_args"] == [XComRef("a")]
    assert spec.task("b").args["op_kwargs"] == {
        "y": [XComRef("a", "other"), {"deep": XComRef("a")}],
        "z": [1, 2],
    }


def test_python_operator_with_op_args_and_output() -> None:
    with DAG("py") as d:
        a = Python("a", noop, op_args=[1, "{{ ds }}"], op_kwargs={"k": None})
        Python("b", noop, op_kwargs={"v": a.output})
    spec = d.to_spec()
    assert spec.task("a").args["op_args"] == [1, "{{ ds }}"]
    assert spec.task("a").args["op_kwargs"] == {"k": None}
    assert spec.task("b").upstream == ("a",)
    assert spec.task("b").args["op_kwargs"] == {"v": XComRef("a")}


def test_airflow_names_are_the_same_operators() -> None:
    assert BashOperator is Bash and PythonOperator is Python


# --- dependency forms -----------------------------------------------------------------------


def _rshift(a: Any, b: Any, c: Any) -> None:
    a >> b >> c


def _lshift(a: Any, b: Any, c: Any) -> None:
    c << b << a


def _fan_out(a: Any, b: Any, c: Any) -> None:
    a >> [b, c]


def _fan_in(a: Any, b: Any, c: Any) -> None:
    [a, b] >> c


def _list_lshift(a: Any, b: Any, c: Any) -> None:
    [b, c] << a


def _lshift_list(a: Any, b: Any, c: Any) -> None:
    c << [a, b]


def _set_downstream(a: Any, b: Any, c: Any) -> None:
    a.set_downstream([b, c])


def _set_upstream(a: Any, b: Any, c: Any) -> None:
    c.set_upstream(b)
    b.set_upstream(a)


def _chain(a: Any, b: Any, c: Any) -> None:
    chain(a, b, c)


def _chain_with_list(a: Any, b: Any, c: Any) -> None:
    chain(a, [b, c])


def _cross(a: Any, b: Any, c: Any) -> None:
    cross_downstream([a, b], [c])


def _xcomarg_shift(a: Any, b: Any, c: Any) -> None:
    a.output >> b.output >> c


@pytest.mark.parametrize(
    ("relate", "expected"),
    [
        (_rshift, {"a": set(), "b": {"a"}, "c": {"b"}}),
        (_lshift, {"a": set(), "b": {"a"}, "c": {"b"}}),
        (_fan_out, {"a": set(), "b": {"a"}, "c": {"a"}}),
        (_fan_in, {"a": set(), "b": set(), "c": {"a", "b"}}),
        (_list_lshift, {"a": set(), "b": {"a"}, "c": {"a"}}),
        (_lshift_list, {"a": set(), "b": set(), "c": {"a", "b"}}),
        (_set_downstream, {"a": set(), "b": {"a"}, "c": {"a"}}),
        (_set_upstream, {"a": set(), "b": {"a"}, "c": {"b"}}),
        (_chain, {"a": set(), "b": {"a"}, "c": {"b"}}),
        (_chain_with_list, {"a": set(), "b": {"a"}, "c": {"a"}}),
        (_cross, {"a": set(), "b": set(), "c": {"a", "b"}}),
        (_xcomarg_shift, {"a": set(), "b": {"a"}, "c": {"b"}}),
    ],
)
def test_dependency_forms(relate: Callable[[Any, Any, Any], None], expected: dict[str, set[str]]) -> None:
    with DAG("deps") as d:
        a, b, c = (Bash(name, "true") for name in "abc")
        relate(a, b, c)
    assert upstreams(d) == expected


def test_shift_returns_its_right_operand_for_chaining() -> None:
    with DAG("ret"):
        a, b, c = (Bash(name, "true") for name in "abc")
        assert (a >> b) is b
        assert (a >> [b, c]) == [b, c]
        assert ([a, b] >> c) is c
        assert a.downstream_task_ids == {"b", "c"}
        assert c.upstream_task_ids == {"a", "b"}


def test_chain_pairs_adjacent_lists_and_rejects_different_lengths() -> None:
    with DAG("pairs") as d:
        a, b, c, e = (Bash(name, "true") for name in "abce")
        chain([a, b], [c, e])
        with pytest.raises(DagValidationError, match="different lengths"):
            chain([a, b], [c])
    assert upstreams(d) == {"a": set(), "b": set(), "c": {"a"}, "e": {"b"}}


def test_tasks_come_out_in_topological_order_whatever_the_definition_order() -> None:
    with DAG("order") as d:
        last = Bash("last", "true")
        first = Bash("first", "true")
        middle = Bash("middle", "true")
        first >> middle >> last
    assert [t.task_id for t in d.to_spec().tasks] == ["first", "middle", "last"]


def test_operators_accept_dag_without_with_block() -> None:
    d = DAG("plain")
    a = Bash("a", "true", dag=d)
    b = Python("b", noop, dag=d)
    a >> b
    assert upstreams(d) == {"a": set(), "b": {"a"}}


def test_durations_accept_timedelta() -> None:
    with DAG("durations") as d:
        Bash(
            "a",
            "true",
            retry_delay=timedelta(minutes=2),
            max_retry_delay=timedelta(hours=1),
            execution_timeout=timedelta(seconds=1.5),
        )
    spec = d.to_spec().task("a")
    assert (spec.retry_delay, spec.max_retry_delay, spec.execution_timeout) == (120.0, 3600.0, 1.5)


def test_bash_specific_arguments_reach_the_spec() -> None:
    with DAG("bash") as d:
        Bash("a", "env", env={"X": "{{ ds }}"}, append_env=True, cwd="/tmp", do_xcom_push=False)
    spec = d.to_spec().task("a")
    assert (spec.env, spec.append_env, spec.cwd, spec.do_xcom_push) == (
        {"X": "{{ ds }}"},
        True,
        "/tmp",
        False,
    )


# --- default_args ---------------------------------------------------------------------------


def test_default_args_fill_unpassed_arguments_and_explicit_ones_win() -> None:
    defaults = {
        "retries": 3,
        "retry_delay": timedelta(seconds=10),
        "trigger_rule": "all_done",
        "cwd": "/srv",
        "owner": "airflow",  # Airflow keys no operator here takes are ignored
        "email_on_failure": False,
    }
    with DAG("defaults", default_args=defaults) as d:
        Bash("a", "true")
        Bash("b", "true", retries=0, trigger_rule="one_success")
        Python("c", noop)

        @task
        def f() -> None: ...

        f()
    spec = d.to_spec()
    a, b, c, f_spec = (spec.task(t) for t in ("a", "b", "c", "f"))
    assert (a.retries, a.retry_delay, a.trigger_rule, a.cwd) == (3, 10.0, TriggerRule.ALL_DONE, "/srv")
    assert (b.retries, b.retry_delay, b.trigger_rule) == (0, 10.0, TriggerRule.ONE_SUCCESS)
    assert (c.retries, c.trigger_rule) == (3, TriggerRule.ALL_DONE)
    assert (f_spec.retries, f_spec.retry_delay) == (3, 10.0)


def test_default_args_apply_to_operator_subclasses() -> None:
    class Greet(Bash):
        def __init__(self, task_id: str, name: str, **kwargs: Any) -> None:
            super().__init__(task_id, f"echo hello {name}", **kwargs)

    with DAG("subclass", default_args={"retries": 4}) as d:
        Greet("g", "world")
    assert d.to_spec().task("g").retries == 4
    assert d.to_spec().task("g").args["bash_command"] == "echo hello world"


# --- TaskFlow -------------------------------------------------------------------------------


def test_taskflow_reuses_names_with_airflow_suffixes() -> None:
    with DAG("names") as d:

        @task
        def step() -> int:
            return 1

        step()
        step()
        step()
        Bash("step__7", "true")
        step()
    assert d.task_ids == ["step", "step__1", "step__2", "step__7", "step__8"]


def test_task_decorator_options_and_override() -> None:
    with DAG("options") as d:

        @task(task_id="custom", retries=2, execution_timeout=30, trigger_rule="none_failed")
        def f(x: int) -> int:
            return x

        first = f(1)
        second = f.override(task_id="other", retries=0)(2)
    spec = d.to_spec()
    assert first.operator.task_id == "custom" and second.operator.task_id == "other"
    assert (spec.task("custom").retries, spec.task("custom").execution_timeout) == (2, 30.0)
    assert spec.task("custom").trigger_rule is TriggerRule.NONE_FAILED
    assert spec.task("other").retries == 0 and spec.task("other").args["op_args"] == [2]


def test_taskflow_callable_is_the_original_function() -> None:
    with DAG("callable") as d:

        @task
        def double(x: int) -> int:
            return x * 2

        double(3)
    op = d.get_task("double")
    assert isinstance(op, Python)
    assert op.python_callable(3) == 6
    assert double.function(4) == 8


def test_dag_decorator_builds_a_dag() -> None:
    @dag(schedule="@daily", tags=["t"])
    def my_pipeline() -> None:
        """Docstring becomes the description."""

        @task
        def one() -> int:
            return 1

        @task
        def two(x: int) -> int:
            return x

        two(one())

    built = my_pipeline()
    spec = built.to_spec()
    assert (spec.dag_id, spec.schedule, spec.tags) == ("my_pipeline", "@daily", ("t",))
    assert spec.description == "Docstring becomes the description."
    assert spec.task("two").upstream == ("one",)


def test_xcomarg_cannot_be_iterated() -> None:
    with DAG("iter"):
        a = Bash("a", "echo 1")
        with pytest.raises(TypeError, match="only known when the DAG runs"):
            list(a.output)


# --- errors ---------------------------------------------------------------------------------


def test_duplicate_task_id_names_dag_id_and_suggests_a_name() -> None:
    with DAG("dup"):
        Bash("extract", "true")
        with pytest.raises(DuplicateTaskIdFound) as info:
            Bash("extract", "true")
    message = str(info.value)
    assert "'dup'" in message and "'extract'" in message and "'extract__1'" in message


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Bash("has space", "true"), "task_id 'has space' is invalid"),
        (lambda: Bash("x" * 251, "true"), "the limit is 250"),
        (lambda: Bash("a", "true", trigger_rule="all_sucess"), "unknown trigger_rule 'all_sucess'"),
        (lambda: Bash("a", "true", trigger_rule="bogus"), "one_failed"),  # lists the valid ones
        (lambda: Bash("a", "true", retries=-1), "retries must be an integer of 0 or more"),
        (lambda: Bash("a", "true", retries=1.5), "retries must be an integer"),  # type: ignore[arg-type,dict-item]
        (lambda: Bash("a", "true", retry_delay=-5), "retry_delay must be 0 or more seconds"),
        (lambda: Bash("a", "true", execution_timeout=0), "execution_timeout must be more than 0"),
        (lambda: Bash("a", "true", execution_timeout="1h"), "number of seconds or a datetime.timedelta"),  # type: ignore[arg-type,dict-item]
        (lambda: Bash("a", ""), "bash_command must be a non-empty string"),
        (lambda: Bash("a", "true", env={"X": 1}), "env must be a dict of strings"),  # type: ignore[arg-type,dict-item]
        (lambda: Python("a", "not callable"), "python_callable must be callable"),  # type: ignore[arg-type]
        (lambda: Python("a", noop, op_args=[object()]), "is not JSON-able"),
        (lambda: Python("a", noop, op_kwargs={"x": float("nan")}), "finite number"),
        (lambda: Python("a", noop, op_kwargs={"d": {1: 2}}), "must be a string"),
    ],
)
def test_operator_argument_errors(make: Callable[[], Any], expected: str) -> None:
    with DAG("errs"), pytest.raises(DagValidationError) as info:
        make()
    assert expected in str(info.value)


def test_operator_errors_name_the_dag_and_task() -> None:
    with DAG("named"), pytest.raises(DagValidationError) as info:
        Bash("t1", "true", retries=-2)
    assert "task 't1' in DAG 'named'" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"dag_id": "bad id"}, "dag_id 'bad id' is invalid"),
        ({"dag_id": "d", "max_active_runs": 0}, "max_active_runs must be an integer of at least 1"),
        ({"dag_id": "d", "max_active_tasks": -1}, "max_active_tasks must be an integer of at least 1"),
        ({"dag_id": "d", "schedule": 86400}, "schedule must be a cron expression"),
        ({"dag_id": "d", "schedule": timedelta(0)}, "a timedelta schedule must be positive"),
        ({"dag_id": "d", "schedule": [1]}, "a list schedule must hold only assets"),
        ({"dag_id": "d", "timezone": "Mars/Olympus"}, "timezone must be an IANA time zone name"),
        ({"dag_id": "d", "start_date": "2026-01-01"}, "start_date must be a datetime"),
        ({"dag_id": "d", "tags": "one"}, "tags must be a list of strings"),
        ({"dag_id": "d", "default_args": ["x"]}, "default_args must be a dict"),
    ],
)
def test_dag_argument_errors(kwargs: dict[str, Any], expected: str) -> None:
    dag_id = kwargs.pop("dag_id")
    with pytest.raises(DagValidationError) as info:
        DAG(dag_id, **kwargs)
    assert expected in str(info.value)


def test_task_outside_a_dag_is_an_error() -> None:
    with pytest.raises(DagValidationError, match="has no DAG"):
        Bash("orphan", "true")

    @task
    def lonely() -> None: ...

    with pytest.raises(DagValidationError, match="called outside a DAG"):
        lonely()


def test_dependencies_across_dags_and_on_itself_are_errors() -> None:
    with DAG("one"):
        a = Bash("a", "true")
    with DAG("two"):
        b = Bash("b", "true")
    with pytest.raises(DagValidationError, match="dependencies must stay inside one DAG"):
        a >> b
    with pytest.raises(DagValidationError, match="cannot depend on itself"):
        a >> a


def test_cycle_is_reported_with_its_path_by_to_spec() -> None:
    with DAG("cyc") as d:
        a, b, c = (Bash(name, "true") for name in "abc")
        a >> b >> c >> a
    with pytest.raises(DagValidationError, match="cycle detected: a -> b -> c -> a"):
        d.to_spec()


def test_non_json_params_are_rejected_when_converting() -> None:
    with DAG("params", params={"when": object()}) as d:
        Bash("a", "true")
    with pytest.raises(DagValidationError, match="params"):
        d.to_spec()


def test_unknown_task_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="multiple_outputs"):
        task(multiple_outputs=True)(noop)  # type: ignore[call-overload]


# --- import cost ----------------------------------------------------------------------------


def test_import_orchestrator_does_not_load_the_daemon_dependencies() -> None:
    heavy = ["asyncpg", "aiohttp", "anyio", "uvloop", "kubernetes", "kubernetes_asyncio", "jinja2", "orjson"]
    code = (
        "import sys, orchestrator\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == ""


def test_relating_an_uncalled_task_function_suggests_calling_it() -> None:
    with DAG("uncalled"):
        a = Bash("a", "true")

        @task
        def transform() -> None: ...

        with pytest.raises(TypeError, match=r"did you mean to call it: transform\(\)\?"):
            a >> transform  # type: ignore[type-var]


def test_a_refused_task_is_not_added_to_the_dag() -> None:
    with DAG("refused") as d:
        with pytest.raises(DagValidationError):
            Bash("a", "")
        with pytest.raises(DagValidationError):
            Python("b", noop, op_args=[object()])
        Bash("a", "true")  # the id is still free
    assert d.task_ids == ["a"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"schedule": "0 0 * * * *"}, "DAG 'bad': "),
        ({"schedule": "@fortnightly"}, "@fortnightly"),
        ({"schedule": "@continuous"}, "a @continuous schedule needs max_active_runs=1"),
        ({"schedule": "@daily", "timezone": "Europe/Berlim"}, "timezone must be an IANA time zone name"),
    ],
)
def test_a_schedule_the_daemon_cannot_evaluate_is_refused_when_the_file_loads(
    kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(DagValidationError, match=re.escape(expected)):
        with DAG("bad", **kwargs) as dag:
            Bash("t", "true")
        dag.to_spec()


def test_schedule_settings_reach_the_spec() -> None:
    with DAG(
        "scheduled",
        schedule=timedelta(hours=6),
        start_date=datetime(2026, 1, 1, 2, tzinfo=ZoneInfo("Europe/Berlin")),
        end_date=datetime(2026, 2, 1),
        catchup=True,
    ) as dag:
        Bash("t", "true", outlets=[Asset("s3://bucket/out")])
    spec = dag.to_spec()
    assert spec.schedule is None and spec.schedule_delta == 6 * 3600
    assert spec.timezone == "Europe/Berlin"  # from the aware start_date
    assert spec.start_date == datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert spec.end_date == datetime(2026, 2, 1)  # naive: a wall time in the DAG's zone
    assert spec.catchup is True
    assert spec.tasks[0].outlets == ("s3://bucket/out",)
    assert spec.schedule_summary == "6:00:00"
