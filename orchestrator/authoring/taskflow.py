"""Airflow's TaskFlow API: `@task` turns a function into a Python task, `@dag` a function into a DAG.

Calling a decorated function inside a DAG does not run it: it creates a `Python` task
whose arguments are the call's arguments (XComArgs become XCom references and upstream
dependencies) and returns the task's XComArg, so results flow from task to task the way
they read in the code. The function itself runs later, in a worker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypedDict, TypeVar, Unpack, overload

from orchestrator.authoring.dag import DAG, current_dag
from orchestrator.authoring.operators import Duration, Python, XComArg
from orchestrator.core.model import TriggerRule
from orchestrator.core.validation import DagValidationError

R = TypeVar("R")


class TaskOptions(TypedDict, total=False):
    """What `@task(...)` accepts: a task_id, the DAG, and the common operator settings."""

    task_id: str
    dag: DAG
    retries: int
    retry_delay: Duration
    retry_exponential_backoff: bool
    max_retry_delay: Duration | None
    execution_timeout: Duration | None
    trigger_rule: TriggerRule | str
    do_xcom_push: bool
    executor: str | None
    env: dict[str, str] | None
    append_env: bool
    cwd: str | None
    owner: str
    outlets: Any


_OPTION_NAMES = frozenset(TaskOptions.__annotations__)


class TaskFunction(Generic[R]):
    """A function decorated with `@task`. Call it inside a DAG to add a task; `.function` is the original."""

    def __init__(self, function: Callable[..., R], options: TaskOptions) -> None:
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            valid = ", ".join(sorted(_OPTION_NAMES))
            raise TypeError(f"@task got unknown option(s) {', '.join(unknown)}; valid options: {valid}")
        self.function = function
        self.options = options
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> XComArg:
        options: dict[str, Any] = dict(self.options)
        dag = options.pop("dag", None) or current_dag()
        name = options.pop("task_id", None) or self.function.__name__
        if not isinstance(dag, DAG):
            raise DagValidationError(
                f"@task function {name!r} was called outside a DAG: call it inside a `with DAG(...):` "
                "block (or an @dag function), or pass @task(dag=...)"
            )
        task = Python(
            dag.unique_task_id(name),
            self.function,
            op_args=args,
            op_kwargs=kwargs,
            dag=dag,
            **options,
        )
        return task.output

    def override(self, **options: Unpack[TaskOptions]) -> TaskFunction[R]:
        """The same function with some options replaced: `extract.override(task_id="extract_eu")(...)`."""
        return TaskFunction(self.function, {**self.options, **options})


@overload
def task(python_callable: Callable[..., R], /) -> TaskFunction[R]: ...


@overload
def task(**options: Unpack[TaskOptions]) -> Callable[[Callable[..., R]], TaskFunction[R]]: ...


def task(
    python_callable: Callable[..., R] | None = None, /, **options: Unpack[TaskOptions]
) -> TaskFunction[R] | Callable[[Callable[..., R]], TaskFunction[R]]:
    """Decorate a function as a Python task: `@task` or `@task(task_id=..., retries=...)`."""
    if python_callable is not None:
        if not callable(python_callable):
            raise TypeError(f"@task decorates a function, got {python_callable!r}")
        return TaskFunction(python_callable, options)

    def decorate(function: Callable[..., R]) -> TaskFunction[R]:
        return TaskFunction(function, options)

    return decorate


class DagFunction:
    """A function decorated with `@dag`; calling it builds the DAG (tasks created in its body)."""

    def __init__(self, function: Callable[..., Any], dag_id: str | None, dag_kwargs: dict[str, Any]) -> None:
        self.function = function
        self.dag_id = dag_id or function.__name__
        self.dag_kwargs = dag_kwargs
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> DAG:
        kwargs_for_dag = dict(self.dag_kwargs)
        if "description" not in kwargs_for_dag and self.function.__doc__:
            kwargs_for_dag["description"] = self.function.__doc__.strip()
        with DAG(self.dag_id, **kwargs_for_dag) as built:
            self.function(*args, **kwargs)
        return built


@overload
def dag(function: Callable[..., Any], /) -> DagFunction: ...


@overload
def dag(
    dag_id: str | None = None,
    /,
    *,
    schedule: Any = None,
    description: str | None = None,
    max_active_runs: int = 16,
    max_active_tasks: int = 16,
    params: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    default_args: dict[str, Any] | None = None,
    is_paused_upon_creation: bool | None = None,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
    catchup: bool = False,
    timezone: str | None = None,
) -> Callable[[Callable[..., Any]], DagFunction]: ...


def dag(
    function_or_id: Callable[..., Any] | str | None = None, /, **dag_kwargs: Any
) -> DagFunction | Callable[[Callable[..., Any]], DagFunction]:
    """Decorate a function as a DAG (Airflow's `@dag`): the dag_id is the function name unless given.

    Call the decorated function at module level (`my_dag()`) to create the DAG.
    """
    if callable(function_or_id):
        return DagFunction(function_or_id, None, dag_kwargs)
    dag_id = function_or_id

    def decorate(function: Callable[..., Any]) -> DagFunction:
        return DagFunction(function, dag_id, dag_kwargs)

    return decorate
