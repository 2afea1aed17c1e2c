"""The serialized DAG: what the daemon knows of a DAG file once it has been parsed.

The daemon never imports user code. DAG files are imported in a worker process
(`executors.workers`), turned into these frozen values by
`orchestrator.core.serialization`, and sent back as JSON. Python callables stay
in the workers; the daemon keeps only `dag_file` + `task_id` to find them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NewType

DagId = NewType("DagId", str)
TaskId = NewType("TaskId", str)
RunId = NewType("RunId", str)


#: Airflow's default task owner (its `[operators] default_owner`)
DEFAULT_OWNER = "airflow"


class TriggerRule(StrEnum):
    """Airflow's trigger rules: when a task may run, given its direct upstream states."""

    ALL_SUCCESS = "all_success"
    ALL_FAILED = "all_failed"
    ALL_DONE = "all_done"
    ALL_DONE_MIN_ONE_SUCCESS = "all_done_min_one_success"
    ALL_SKIPPED = "all_skipped"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    ONE_DONE = "one_done"
    NONE_FAILED = "none_failed"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    NONE_SKIPPED = "none_skipped"
    ALWAYS = "always"


@dataclass(frozen=True, slots=True)
class XComRef:
    """A reference to another task's XCom, resolved when the consuming task is launched.

    Serialized inside op_args/op_kwargs as ``{"__xcom__": {"task_id": ..., "key": ...}}``.
    """

    task_id: str
    key: str = "return_value"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of a DAG, as the scheduler sees it. Durations are seconds.

    `kind` names a registered task kind (`orchestrator.core.kinds`) and `args` holds that
    kind's own arguments (JSON-able, with XComRefs): ``{"bash_command": ...}`` for bash,
    ``{"op_args": [...], "op_kwargs": {...}}`` for python.
    """

    task_id: str
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    upstream: tuple[str, ...] = ()
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    retries: int = 0
    retry_delay: float = 300.0
    retry_exponential_backoff: bool = False
    max_retry_delay: float | None = None
    execution_timeout: float | None = None
    #: extra environment for the task process (values are Jinja templates)
    env: dict[str, str] = field(default_factory=dict)
    #: with env given: also inherit the daemon's environment (Airflow's append_env)
    append_env: bool = False
    cwd: str | None = None
    do_xcom_push: bool = True
    #: the executor that runs it (by name); None: the configured default executor
    executor: str | None = None
    #: who answers for the task (Airflow's `owner`; a DAG's owners are its tasks' distinct owners)
    owner: str = DEFAULT_OWNER
    #: the URIs of the assets this task updates: each success records one asset event per URI
    outlets: tuple[str, ...] = ()

    @property
    def max_tries(self) -> int:
        """Airflow's max_tries: how many tries after the first one are allowed."""
        return self.retries


@dataclass(frozen=True, slots=True)
class DagSpec:
    """One DAG: its settings and its tasks in a topological order."""

    dag_id: str
    fileloc: str
    tasks: tuple[TaskSpec, ...]
    schedule: str | None = None
    description: str | None = None
    max_active_runs: int = 16
    max_active_tasks: int = 16
    params: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    #: None: the daemon's `dags.paused_on_creation` decides
    is_paused_upon_creation: bool | None = None
    #: a timedelta schedule, in seconds (then `schedule` is None)
    schedule_delta: float | None = None
    #: an asset schedule: the condition tree of `orchestrator.core.assets`, e.g.
    #: ``{"all": [{"asset": "s3://a"}, {"any": [{"asset": "s3://b"}, {"asset": "s3://c"}]}]}``
    asset_condition: dict[str, Any] | None = None
    #: the IANA time zone the schedule is evaluated in (None: the daemon's `dags.default_timezone`)
    timezone: str | None = None
    #: aware datetimes (a naive start_date is read in `timezone` by the authoring API)
    start_date: datetime | None = None
    end_date: datetime | None = None
    catchup: bool = False
    #: sha256 of the DAG file's source this spec was parsed from: the DAG version (a run's
    #: Python tasks take their callables from this source, however the file changed since)
    source_hash: str | None = None

    @property
    def schedule_summary(self) -> str | None:
        """The schedule as one string to show: the cron expression or preset, the timedelta
        ("1 day, 0:00:00"), "Asset" for an asset schedule, None for none."""
        if self.schedule is not None:
            return self.schedule
        if self.schedule_delta is not None:
            return str(timedelta(seconds=self.schedule_delta))
        if self.asset_condition is not None:
            return "Asset"
        return None

    def task(self, task_id: str) -> TaskSpec:
        for spec in self.tasks:
            if spec.task_id == task_id:
                return spec
        raise KeyError(f"DAG {self.dag_id!r} has no task {task_id!r}")
