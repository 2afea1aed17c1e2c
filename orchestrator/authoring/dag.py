"""The `DAG` users write: a context manager that collects tasks, and the registry the loader reads.

Everything here runs in the process that imports a DAG file (a worker, never the daemon),
so it stays cheap to import. `DAG.to_spec` turns the authored objects into the frozen
`DagSpec` the daemon schedules; the callables stay behind in the worker.

Every DAG constructed while `collect_dags()` is active is recorded, not only the ones
bound to module globals: a DAG built in a loop or a factory function is still found.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from types import TracebackType
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from orchestrator.authoring.assets import BaseAsset, asset_condition
from orchestrator.core.model import DagSpec, XComRef
from orchestrator.core.validation import (
    DagValidationError,
    DuplicateTaskIdFound,
    check_key,
    topological_order,
    validate_dag,
)

if TYPE_CHECKING:
    from orchestrator.authoring.operators import BaseOperator

_AUTHORING_DIR = os.path.dirname(os.path.abspath(__file__))

#: DAGs entered with `with DAG(...)`, innermost last.
_context_stack: list[DAG] = []
#: Lists that every newly constructed DAG is appended to (see `collect_dags`).
_collectors: list[list[DAG]] = []


def current_dag() -> DAG | None:
    """The DAG of the innermost `with DAG(...)` block, or None outside any."""
    return _context_stack[-1] if _context_stack else None


@contextmanager
def collect_dags() -> Iterator[list[DAG]]:
    """Yield a list that receives every DAG constructed until the block exits (the loader uses it)."""
    found: list[DAG] = []
    depth = len(_context_stack)
    _collectors.append(found)
    try:
        yield found
    finally:
        _collectors.remove(found)
        # a DAG file that entered a DAG and never left it must not leak into the next file
        del _context_stack[depth:]


class DAG:
    """A workflow: tasks and their dependencies, plus how and how often it runs (Airflow's DAG).

    `schedule` is a cron expression or preset (`"0 3 * * *"`, `"@daily"`, `"@once"`,
    `"@continuous"`), a `timedelta`, an `Asset`, a list of assets or an asset condition, or None.
    `start_date`, `end_date` and `catchup` work as in Airflow; the schedule is evaluated in
    `timezone` (an IANA name), else the time zone of an aware `start_date`, else the daemon's
    `dags.default_timezone`. `default_args` supplies defaults for the keyword
    arguments of every operator created in this DAG (explicit arguments win).
    """

    def __init__(
        self,
        dag_id: str,
        *,
        schedule: str | timedelta | BaseAsset | list[BaseAsset] | None = None,
        description: str | None = None,
        max_active_runs: int = 16,
        max_active_tasks: int = 16,
        params: Mapping[str, Any] | None = None,
        tags: list[str] | tuple[str, ...] | set[str] | None = None,
        default_args: Mapping[str, Any] | None = None,
        is_paused_upon_creation: bool | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        catchup: bool = False,
        timezone: str | tzinfo | None = None,
    ) -> None:
        self.dag_id = check_key("dag_id", dag_id)
        where = f"DAG {dag_id!r}"
        self.asset_condition = asset_condition(schedule, where)
        plain = schedule is None or isinstance(schedule, str | timedelta)
        if self.asset_condition is None and not plain:
            raise DagValidationError(
                f"{where}: schedule must be a cron expression or preset string (e.g. '@daily', "
                f"'0 3 * * *'), a timedelta, an Asset or a list of them, or None, "
                f"got {type(schedule).__name__} {schedule!r}"
            )
        if isinstance(schedule, timedelta) and schedule <= timedelta(0):
            raise DagValidationError(f"{where}: a timedelta schedule must be positive, got {schedule!r}")
        for date_name, date in (("start_date", start_date), ("end_date", end_date)):
            if date is not None and not isinstance(date, datetime):
                raise DagValidationError(
                    f"{where}: {date_name} must be a datetime (e.g. datetime(2026, 1, 1)), got {date!r}"
                )
        if not isinstance(catchup, bool):
            raise DagValidationError(f"{where}: catchup must be True or False, got {catchup!r}")
        self.timezone = _timezone_name(timezone, start_date, where)
        for name, value in (("max_active_runs", max_active_runs), ("max_active_tasks", max_active_tasks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DagValidationError(f"{where}: {name} must be an integer of at least 1, got {value!r}")
        if params is not None and not isinstance(params, Mapping):
            raise DagValidationError(f"{where}: params must be a dict, got {type(params).__name__}")
        if default_args is not None and not isinstance(default_args, Mapping):
            raise DagValidationError(
                f"{where}: default_args must be a dict, got {type(default_args).__name__}"
            )
        if tags is not None and (isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags)):
            raise DagValidationError(f"{where}: tags must be a list of strings, got {tags!r}")
        self.schedule = schedule
        self.description = description
        self.max_active_runs = max_active_runs
        self.max_active_tasks = max_active_tasks
        self.params: dict[str, Any] = dict(params or {})
        # a set has no order: sort it so the spec is the same at every parse
        self.tags: tuple[str, ...] = tuple(sorted(tags) if isinstance(tags, set | frozenset) else tags or ())
        self.default_args: dict[str, Any] = dict(default_args or {})
        self.is_paused_upon_creation = is_paused_upon_creation
        self.start_date = start_date
        self.end_date = end_date
        self.catchup = catchup
        self.fileloc, self.lineno = _caller_location()
        self.task_dict: dict[str, BaseOperator] = {}
        for found in _collectors:
            found.append(self)

    def __repr__(self) -> str:
        return f"<DAG: {self.dag_id}>"

    # --- context manager -----------------------------------------------------------------

    def __enter__(self) -> DAG:
        _context_stack.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _context_stack.remove(self)

    # --- tasks ---------------------------------------------------------------------------

    @property
    def tasks(self) -> list[BaseOperator]:
        return list(self.task_dict.values())

    @property
    def task_ids(self) -> list[str]:
        return list(self.task_dict)

    def has_task(self, task_id: str) -> bool:
        return task_id in self.task_dict

    def get_task(self, task_id: str) -> BaseOperator:
        try:
            return self.task_dict[task_id]
        except KeyError:
            raise KeyError(
                f"DAG {self.dag_id!r} has no task {task_id!r}; its tasks are: {', '.join(self.task_dict)}"
            ) from None

    def add_task(self, task: BaseOperator) -> None:
        """Attach `task` (again is a no-op); another task with its task_id raises DuplicateTaskIdFound."""
        if self.task_dict.get(task.task_id) is not task:
            self.check_task_id_free(task.task_id)
            self.task_dict[task.task_id] = task

    def check_task_id_free(self, task_id: str) -> None:
        """Raise DuplicateTaskIdFound, suggesting a free id, if `task_id` is taken in this DAG."""
        if task_id in self.task_dict:
            raise DuplicateTaskIdFound(
                f"DAG {self.dag_id!r} already has a task with task_id {task_id!r}; "
                f"give the new task another task_id, e.g. {self.unique_task_id(task_id)!r}"
            )

    def unique_task_id(self, task_id: str) -> str:
        """`task_id` if unused, else Airflow's next free `name__N` (used by @task)."""
        if task_id not in self.task_dict:
            return task_id
        core = re.split(r"__\d+$", task_id)[0]
        pattern = re.compile(rf"^{re.escape(core)}__(\d+)$")
        suffixes = [int(m.group(1)) for tid in self.task_dict if (m := pattern.match(tid))]
        return f"{core}__{max(suffixes, default=0) + 1}"

    # --- conversion ----------------------------------------------------------------------

    def to_spec(self, fileloc: str | None = None) -> DagSpec:
        """The validated DagSpec of this DAG, tasks in topological order.

        Raises DagValidationError (cycle with its path, values that are not JSON-able, ...).
        """
        where = f"DAG {self.dag_id!r}"
        tasks = tuple(task.to_task_spec() for task in self.task_dict.values())
        spec = DagSpec(
            dag_id=self.dag_id,
            fileloc=fileloc if fileloc is not None else self.fileloc,
            tasks=tasks,
            schedule=self.schedule if isinstance(self.schedule, str) else None,
            schedule_delta=(self.schedule.total_seconds() if isinstance(self.schedule, timedelta) else None),
            asset_condition=self.asset_condition,
            timezone=self.timezone,
            start_date=_spec_datetime(self.start_date),
            end_date=_spec_datetime(self.end_date),
            catchup=self.catchup,
            description=self.description,
            max_active_runs=self.max_active_runs,
            max_active_tasks=self.max_active_tasks,
            params=json_value(self.params, f"{where}: params"),
            tags=self.tags,
            is_paused_upon_creation=(
                None if self.is_paused_upon_creation is None else bool(self.is_paused_upon_creation)
            ),
        )
        by_id = {task.task_id: task for task in tasks}
        spec = replace(spec, tasks=tuple(by_id[tid] for tid in topological_order(spec)))
        validate_dag(spec)
        _check_schedule(spec)
        return spec


def _check_schedule(spec: DagSpec) -> None:
    """A schedule the daemon could not evaluate is the file's import error, not a silent no-op."""
    if spec.schedule is None and spec.schedule_delta is None:
        return
    # imported here: croniter is not needed by files without a schedule, nor by task workers
    from orchestrator.core.schedules import CONTINUOUS, ScheduleError, make_timetable

    try:
        make_timetable(spec.schedule, spec.schedule_delta, spec.timezone or "UTC")
    except ScheduleError as exc:
        raise DagValidationError(f"DAG {spec.dag_id!r}: {exc}") from None
    if spec.schedule == CONTINUOUS and spec.max_active_runs != 1:
        raise DagValidationError(
            f"DAG {spec.dag_id!r}: a @continuous schedule needs max_active_runs=1 (as in Airflow), "
            f"got {spec.max_active_runs}"
        )


def json_value(value: Any, where: str, *, allow_refs: bool = False) -> Any:
    """`value` with tuples made lists, after checking it is JSON-able (str keys, no NaN).

    With `allow_refs`, XComRef markers may appear anywhere (python task arguments).
    """
    if value is None or type(value) in (str, bool, int):
        return value
    if isinstance(value, str):  # StrEnum and friends: store the plain string
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, XComRef) and allow_refs:
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise DagValidationError(f"{where}: {value!r} cannot be stored as JSON; use a finite number")
        return float(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise DagValidationError(f"{where}: dict key {key!r} must be a string to be stored as JSON")
            if key == "__xcom__":
                raise DagValidationError(f"{where}: the dict key '__xcom__' is reserved; rename it")
            out[key] = json_value(item, where, allow_refs=allow_refs)
        return out
    if isinstance(value, list | tuple):
        return [json_value(item, where, allow_refs=allow_refs) for item in value]
    raise DagValidationError(
        f"{where}: {type(value).__name__} value {value!r} is not JSON-able; pass strings, numbers, "
        "booleans, None, lists or dicts (convert dates with .isoformat())"
    )


def _timezone_name(timezone: str | tzinfo | None, start_date: datetime | None, where: str) -> str | None:
    """The IANA name of the DAG's time zone: `timezone`, else that of an aware start_date."""
    if timezone is None and start_date is not None and start_date.tzinfo is not None:
        timezone = start_date.tzinfo
    if timezone is None:
        return None
    if isinstance(timezone, str):
        name = timezone
    else:
        name = getattr(timezone, "key", None) or getattr(timezone, "name", None) or ""
        if not name and timezone.utcoffset(None) == timedelta(0):
            name = "UTC"
    try:
        ZoneInfo(name)
    except Exception:
        raise DagValidationError(
            f"{where}: timezone must be an IANA time zone name such as 'Europe/Berlin' or 'UTC', "
            f"got {timezone!r}"
        ) from None
    return name


def _spec_datetime(value: datetime | None) -> datetime | None:
    """An aware datetime in UTC, or a naive one as it is (a wall time in the DAG's time zone)."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC)


def _caller_location() -> tuple[str, int]:
    """File and line of the first caller outside the authoring package (the user's code)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if os.path.dirname(os.path.abspath(filename)) != _AUTHORING_DIR:
            return filename, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown>", 0
