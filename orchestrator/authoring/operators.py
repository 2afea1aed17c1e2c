"""Operators users write (`Bash`, `Python`), their dependencies (`>>`, `chain`) and `XComArg`.

An operator checks its arguments when it is created, so a mistake fails at the line of
the DAG file that made it, with a message naming the DAG and the task. `to_task_spec`
turns it into the frozen TaskSpec the daemon schedules.

`default_args` works as in Airflow: every subclass's `__init__` is wrapped so that
keyword parameters the caller did not pass are filled from the DAG's default_args.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

from orchestrator.authoring.assets import Asset, outlet_uris
from orchestrator.authoring.dag import DAG, current_dag, json_value
from orchestrator.core.model import DEFAULT_OWNER, TaskSpec, TriggerRule, XComRef
from orchestrator.core.validation import DagValidationError, check_key, check_trigger_rule

#: A duration: seconds (int or float) or a datetime.timedelta.
Duration = float | int | timedelta
#: `a >> b` returns b unchanged, whatever it is (a task, an XComArg, a list)
R = TypeVar("R", bound="BaseOperator | XComArg | Iterable[BaseOperator | XComArg]")


def _apply_default_args(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap an operator __init__ so keyword parameters not passed come from the DAG's default_args."""
    code = init.__code__
    names = set(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
    positional = code.co_varnames[: code.co_argcount]
    if code.co_flags & inspect.CO_VARKEYWORDS:
        # `def __init__(self, task_id, x, **kwargs)` passes the rest on to BaseOperator
        base = BaseOperator.__init__.__code__
        names |= set(base.co_varnames[: base.co_argcount + base.co_kwonlyargcount])

    @functools.wraps(init)
    def wrapper(self: BaseOperator, *args: Any, **kwargs: Any) -> None:
        dag = kwargs.get("dag") or current_dag()
        if isinstance(dag, DAG) and dag.default_args:
            bound = set(positional[: 1 + len(args)]) | set(kwargs)
            for name, value in dag.default_args.items():
                if name in names and name not in bound and name not in ("self", "task_id", "dag"):
                    kwargs[name] = value
        init(self, *args, **kwargs)
        # attach only once every check of every __init__ has passed: a refused task is not in the DAG
        self.dag.add_task(self)

    return wrapper


class BaseOperator:
    """What every task has: its id, its DAG, retries, timeouts, trigger rule and dependencies."""

    #: the registered task kind (`orchestrator.core.kinds`) this operator's tasks have
    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _apply_default_args(init)  # type: ignore[method-assign]

    def __init__(
        self,
        task_id: str,
        *,
        retries: int = 0,
        retry_delay: Duration = 300,
        retry_exponential_backoff: bool = False,
        max_retry_delay: Duration | None = None,
        execution_timeout: Duration | None = None,
        trigger_rule: TriggerRule | str = TriggerRule.ALL_SUCCESS,
        do_xcom_push: bool = True,
        executor: str | None = None,
        owner: str = DEFAULT_OWNER,
        outlets: list[Asset] | Asset | None = None,
        dag: DAG | None = None,
    ) -> None:
        dag = dag if dag is not None else current_dag()
        if dag is None:
            raise DagValidationError(
                f"task {task_id!r} has no DAG: create it inside a `with DAG(...):` block or pass dag=..."
            )
        if not isinstance(dag, DAG):
            raise DagValidationError(f"task {task_id!r}: dag must be a DAG, got {type(dag).__name__}")
        where = f"task {task_id!r} in DAG {dag.dag_id!r}"
        try:
            self.task_id = check_key("task_id", task_id)
            self.trigger_rule = check_trigger_rule(trigger_rule)
        except DagValidationError as exc:
            raise DagValidationError(f"DAG {dag.dag_id!r}: {exc}") from None
        dag.check_task_id_free(task_id)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise DagValidationError(f"{where}: retries must be an integer of 0 or more, got {retries!r}")
        self.dag = dag
        self.retries = retries
        self.retry_delay = seconds(retry_delay, "retry_delay", where)
        self.retry_exponential_backoff = bool(retry_exponential_backoff)
        self.max_retry_delay = (
            None if max_retry_delay is None else seconds(max_retry_delay, "max_retry_delay", where)
        )
        self.execution_timeout = (
            None
            if execution_timeout is None
            else seconds(execution_timeout, "execution_timeout", where, positive=True)
        )
        self.do_xcom_push = bool(do_xcom_push)
        if executor is not None and not (isinstance(executor, str) and executor):
            raise DagValidationError(f"{where}: executor must be an executor name, got {executor!r}")
        self.executor = executor
        if not isinstance(owner, str) or not owner.strip():
            raise DagValidationError(f"{where}: owner must be a non-empty string, got {owner!r}")
        self.owner = owner
        self.outlets = outlet_uris(outlets, where)
        self._upstream: dict[str, None] = {}
        self._downstream: dict[str, None] = {}

    def __repr__(self) -> str:
        return f"<Task({type(self).__name__}): {self.task_id}>"

    # --- dependencies --------------------------------------------------------------------

    @property
    def upstream_task_ids(self) -> set[str]:
        return set(self._upstream)

    @property
    def downstream_task_ids(self) -> set[str]:
        return set(self._downstream)

    @property
    def upstream_list(self) -> list[BaseOperator]:
        return [self.dag.task_dict[tid] for tid in self._upstream]

    @property
    def downstream_list(self) -> list[BaseOperator]:
        return [self.dag.task_dict[tid] for tid in self._downstream]

    def set_downstream(self, other: Relatable) -> None:
        """Make `other` (a task, an XComArg or a list of them) run after this task."""
        for task in _operators(other):
            _add_edge(self, task)

    def set_upstream(self, other: Relatable) -> None:
        """Make this task run after `other` (a task, an XComArg or a list of them)."""
        for task in _operators(other):
            _add_edge(task, self)

    def __rshift__(self, other: R) -> R:
        self.set_downstream(other)
        return other

    def __lshift__(self, other: R) -> R:
        self.set_upstream(other)
        return other

    def __rrshift__(self, other: Relatable) -> BaseOperator:
        # [a, b] >> self
        self.set_upstream(other)
        return self

    def __rlshift__(self, other: Relatable) -> BaseOperator:
        # [a, b] << self
        self.set_downstream(other)
        return self

    @property
    def output(self) -> XComArg:
        """This task's return value as an argument for a later task (Airflow's `.output`)."""
        return XComArg(self)

    # --- conversion ----------------------------------------------------------------------

    def to_task_spec(self) -> TaskSpec:
        """The frozen TaskSpec the daemon schedules."""
        raise NotImplementedError(f"{type(self).__name__} must implement to_task_spec")

    def _spec(self, **fields: Any) -> TaskSpec:
        return TaskSpec(
            task_id=self.task_id,
            kind=self.kind,
            upstream=tuple(sorted(self._upstream)),
            trigger_rule=self.trigger_rule,
            retries=self.retries,
            retry_delay=self.retry_delay,
            retry_exponential_backoff=self.retry_exponential_backoff,
            max_retry_delay=self.max_retry_delay,
            execution_timeout=self.execution_timeout,
            do_xcom_push=self.do_xcom_push,
            executor=self.executor,
            owner=self.owner,
            outlets=self.outlets,
            **fields,
        )


class Bash(BaseOperator):
    """Run a shell command (a Jinja template) with bash; its last stdout line is the XCom (Airflow)."""

    kind: ClassVar[str] = "bash"

    def __init__(
        self,
        task_id: str,
        bash_command: str,
        *,
        env: Mapping[str, str] | None = None,
        append_env: bool = False,
        cwd: str | None = None,
        retries: int = 0,
        retry_delay: Duration = 300,
        retry_exponential_backoff: bool = False,
        max_retry_delay: Duration | None = None,
        execution_timeout: Duration | None = None,
        trigger_rule: TriggerRule | str = TriggerRule.ALL_SUCCESS,
        do_xcom_push: bool = True,
        executor: str | None = None,
        owner: str = DEFAULT_OWNER,
        outlets: list[Asset] | Asset | None = None,
        dag: DAG | None = None,
    ) -> None:
        super().__init__(
            task_id,
            retries=retries,
            retry_delay=retry_delay,
            retry_exponential_backoff=retry_exponential_backoff,
            max_retry_delay=max_retry_delay,
            execution_timeout=execution_timeout,
            trigger_rule=trigger_rule,
            do_xcom_push=do_xcom_push,
            executor=executor,
            owner=owner,
            outlets=outlets,
            dag=dag,
        )
        where = f"task {task_id!r} in DAG {self.dag.dag_id!r}"
        if not isinstance(bash_command, str) or not bash_command.strip():
            raise DagValidationError(
                f"{where}: bash_command must be a non-empty string, got {bash_command!r}"
            )
        self.bash_command = bash_command
        self.env, self.append_env, self.cwd = _process_settings(where, env, append_env, cwd)

    def to_task_spec(self) -> TaskSpec:
        return self._spec(
            args={"bash_command": self.bash_command},
            env=dict(self.env),
            append_env=self.append_env,
            cwd=self.cwd,
        )


class Python(BaseOperator):
    """Call a Python function in a worker process; its return value is the XCom (Airflow).

    op_args/op_kwargs must be JSON-able; an XComArg (or `task.output`) among them is
    replaced by the upstream task's XCom when this task runs, and makes that task upstream.
    """

    kind: ClassVar[str] = "python"

    def __init__(
        self,
        task_id: str,
        python_callable: Callable[..., Any],
        *,
        op_args: Sequence[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        append_env: bool = False,
        cwd: str | None = None,
        retries: int = 0,
        retry_delay: Duration = 300,
        retry_exponential_backoff: bool = False,
        max_retry_delay: Duration | None = None,
        execution_timeout: Duration | None = None,
        trigger_rule: TriggerRule | str = TriggerRule.ALL_SUCCESS,
        do_xcom_push: bool = True,
        executor: str | None = None,
        owner: str = DEFAULT_OWNER,
        outlets: list[Asset] | Asset | None = None,
        dag: DAG | None = None,
    ) -> None:
        super().__init__(
            task_id,
            retries=retries,
            retry_delay=retry_delay,
            retry_exponential_backoff=retry_exponential_backoff,
            max_retry_delay=max_retry_delay,
            execution_timeout=execution_timeout,
            trigger_rule=trigger_rule,
            do_xcom_push=do_xcom_push,
            executor=executor,
            owner=owner,
            outlets=outlets,
            dag=dag,
        )
        where = f"task {task_id!r} in DAG {self.dag.dag_id!r}"
        if not callable(python_callable):
            raise DagValidationError(f"{where}: python_callable must be callable, got {python_callable!r}")
        if isinstance(op_args, str | bytes | Mapping):
            raise DagValidationError(f"{where}: op_args must be a list, got {type(op_args).__name__}")
        if op_kwargs is not None and not isinstance(op_kwargs, Mapping):
            raise DagValidationError(f"{where}: op_kwargs must be a dict, got {type(op_kwargs).__name__}")
        self.python_callable = python_callable
        self.env, self.append_env, self.cwd = _process_settings(where, env, append_env, cwd)
        refs: list[BaseOperator] = []
        self.op_args: list[Any] = json_value(
            _xcom_refs(list(op_args or ()), refs), f"{where}: op_args", allow_refs=True
        )
        self.op_kwargs: dict[str, Any] = json_value(
            _xcom_refs(dict(op_kwargs or {}), refs), f"{where}: op_kwargs", allow_refs=True
        )
        for upstream in refs:
            _add_edge(upstream, self)

    def to_task_spec(self) -> TaskSpec:
        return self._spec(
            args={"op_args": list(self.op_args), "op_kwargs": dict(self.op_kwargs)},
            env=dict(self.env),
            append_env=self.append_env,
            cwd=self.cwd,
        )


def _process_settings(
    where: str, env: Mapping[str, str] | None, append_env: bool, cwd: str | None
) -> tuple[dict[str, str], bool, str | None]:
    """Check the process settings Bash and Python tasks share (env templates, append_env, cwd)."""
    if env is not None and (
        not isinstance(env, Mapping)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise DagValidationError(f"{where}: env must be a dict of strings to strings, got {env!r}")
    if cwd is not None and not isinstance(cwd, str):
        raise DagValidationError(f"{where}: cwd must be a directory path string, got {cwd!r}")
    return dict(env or {}), bool(append_env), cwd


BashOperator = Bash
PythonOperator = Python


class XComArg:
    """A task's XCom used as an argument of a later task; also relatable with `>>` and `<<`.

    `xcom_arg["key"]` refers to another key the same task pushed.
    """

    __slots__ = ("key", "operator")

    def __init__(self, operator: BaseOperator, key: str = "return_value") -> None:
        self.operator = operator
        self.key = key

    def __repr__(self) -> str:
        return f"XComArg({self.operator!r}, key={self.key!r})"

    def __getitem__(self, key: str) -> XComArg:
        if not isinstance(key, str):
            raise TypeError(f"XCom keys are strings, got {key!r}")
        return XComArg(self.operator, key)

    def __iter__(self) -> Any:
        # __getitem__ would otherwise make this silently iterable forever
        raise TypeError(
            f"the XCom of {self.operator.task_id!r} is only known when the DAG runs; it cannot be iterated "
            "while the DAG file is parsed"
        )

    def to_ref(self) -> XComRef:
        return XComRef(self.operator.task_id, self.key)

    def set_downstream(self, other: Relatable) -> None:
        self.operator.set_downstream(other)

    def set_upstream(self, other: Relatable) -> None:
        self.operator.set_upstream(other)

    def __rshift__(self, other: R) -> R:
        self.operator.set_downstream(other)
        return other

    def __lshift__(self, other: R) -> R:
        self.operator.set_upstream(other)
        return other

    def __rrshift__(self, other: Relatable) -> XComArg:
        self.operator.set_upstream(other)
        return self

    def __rlshift__(self, other: Relatable) -> XComArg:
        self.operator.set_downstream(other)
        return self


Relatable = BaseOperator | XComArg | Iterable[BaseOperator | XComArg]


def _operators(value: Any) -> list[BaseOperator]:
    if isinstance(value, BaseOperator):
        return [value]
    if isinstance(value, XComArg):
        return [value.operator]
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        found: list[BaseOperator] = []
        for item in value:
            if isinstance(item, BaseOperator):
                found.append(item)
            elif isinstance(item, XComArg):
                found.append(item.operator)
            else:
                raise TypeError(
                    f"cannot set a dependency on {item!r}: expected a task or an XComArg{_hint(item)}"
                )
        return found
    raise TypeError(
        f"cannot set a dependency on {value!r}: expected a task, an XComArg or a list of them{_hint(value)}"
    )


def _hint(value: Any) -> str:
    # `extract >> transform` where transform is an @task function that was never called
    name = getattr(value, "__name__", None)
    return f" (did you mean to call it: {name}()?)" if callable(value) and name else ""


def _add_edge(upstream: BaseOperator, downstream: BaseOperator) -> None:
    if upstream.dag is not downstream.dag:
        raise DagValidationError(
            f"task {downstream.task_id!r} of DAG {downstream.dag.dag_id!r} cannot depend on task "
            f"{upstream.task_id!r} of DAG {upstream.dag.dag_id!r}: dependencies must stay inside one DAG"
        )
    if upstream is downstream:
        raise DagValidationError(
            f"DAG {upstream.dag.dag_id!r}: task {upstream.task_id!r} cannot depend on itself "
            f"(cycle detected: {upstream.task_id} -> {upstream.task_id})"
        )
    downstream._upstream[upstream.task_id] = None
    upstream._downstream[downstream.task_id] = None


def _xcom_refs(value: Any, found: list[BaseOperator]) -> Any:
    """`value` with every XComArg (nested in lists, tuples, dict values) replaced by its XComRef."""
    if isinstance(value, XComArg):
        found.append(value.operator)
        return value.to_ref()
    if isinstance(value, Mapping):
        return {key: _xcom_refs(item, found) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_xcom_refs(item, found) for item in value]
    return value


def seconds(value: Any, name: str, where: str, *, positive: bool = False) -> float:
    """A duration (seconds or timedelta) as float seconds; negative (or zero if positive) raises."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        raise DagValidationError(
            f"{where}: {name} must be a number of seconds or a datetime.timedelta, got {value!r}"
        )
    if result != result or result < 0 or (positive and result == 0):
        limit = "more than 0" if positive else "0 or more"
        raise DagValidationError(f"{where}: {name} must be {limit} seconds, got {value!r}")
    return result


def chain(*tasks: BaseOperator | XComArg | Sequence[BaseOperator | XComArg]) -> None:
    """Airflow's chain: `chain(a, [b, c], d)` is a >> [b, c] >> d; two adjacent lists pair up."""
    for up, down in itertools.pairwise(tasks):
        if isinstance(up, BaseOperator | XComArg):
            up.set_downstream(down)
        elif isinstance(down, BaseOperator | XComArg):
            down.set_upstream(up)
        else:
            if len(up) != len(down):
                raise DagValidationError(
                    f"chain() cannot pair lists of different lengths ({len(up)} and {len(down)}); "
                    "use cross_downstream() to connect every task of one list to every task of the other"
                )
            for up_task, down_task in zip(up, down, strict=True):
                up_task.set_downstream(down_task)


def cross_downstream(
    from_tasks: Sequence[BaseOperator | XComArg], to_tasks: Sequence[BaseOperator | XComArg]
) -> None:
    """Airflow's cross_downstream: every task of `from_tasks` runs before every task of `to_tasks`."""
    for task in from_tasks:
        task.set_downstream(list(to_tasks))
