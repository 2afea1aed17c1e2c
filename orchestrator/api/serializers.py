"""Records as the JSON objects of Airflow's stable REST API v1.

Airflow users bring tools, scripts and habits that read these exact field names, so the
shapes follow Airflow 2's API (including its compatibility fields such as `execution_date`
and the `{"__type": ...}` wrappers). Pure functions: records in, JSON-able dicts out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.core.kinds import UnknownTaskKind, get_kind
from orchestrator.core.model import DagSpec, TaskSpec
from orchestrator.core.records import DagRecord, ImportErrorRecord, RunRecord, TaskInstanceRecord
from orchestrator.core.states import TaskState

_PRESETS: Mapping[str, str] = {
    "@once": "Once, as soon as possible",
    "@continuous": "As frequently as possible, but only one run at a time.",
    "@hourly": "At 0 minutes past the hour",
    "@daily": "At 00:00",
    "@midnight": "At 00:00",
    "@weekly": "At 00:00, only on Sunday",
    "@monthly": "At 00:00, on day 1 of the month",
    "@quarterly": "At 00:00, on day 1 of the month, only in January, April, July, and October",
    "@yearly": "At 00:00, on day 1 of the month, only in January",
    "@annually": "At 00:00, on day 1 of the month, only in January",
}


#: Airflow's operator colours (BaseOperator.ui_color), for the Task object
_UI_COLORS: Mapping[str, str] = {"BashOperator": "#f0ede4", "PythonOperator": "#ffefeb"}


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with a timezone (naive datetimes are UTC, as everywhere in the store)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def time_delta(seconds: float | None) -> dict[str, Any] | None:
    """Airflow's TimeDelta object, or None."""
    if seconds is None:
        return None
    delta = timedelta(seconds=seconds)
    return {
        "__type": "TimeDelta",
        "days": delta.days,
        "seconds": delta.seconds,
        "microseconds": delta.microseconds,
    }


def schedule_interval(dag: DagRecord) -> dict[str, Any] | None:
    """Airflow 2's schedule_interval: a CronExpression (cron strings and @presets), a TimeDelta,
    or null (no schedule, or a schedule on assets)."""
    delta = dag.spec.get("schedule_delta") if isinstance(dag.spec, dict) else None
    if delta is not None:
        return time_delta(delta)
    schedule = dag.spec.get("schedule") if isinstance(dag.spec, dict) else dag.schedule
    if schedule is None:
        return None
    return {"__type": "CronExpression", "value": schedule}


def timetable_description(dag: DagRecord) -> str:
    """A short human description of the schedule, like Airflow's timetable_description."""
    spec = dag.spec if isinstance(dag.spec, dict) else {}
    if spec.get("asset_condition") is not None:
        return "Triggered by assets"
    if spec.get("schedule_delta") is not None:
        return f"Every {timedelta(seconds=spec['schedule_delta'])}"
    schedule = spec.get("schedule", dag.schedule)
    if schedule is None:
        return "Never, external triggers only"
    if schedule in _PRESETS:
        return _PRESETS[schedule]
    fields = schedule.split()
    if len(fields) == 5 and fields[2:] == ["*", "*", "*"] and fields[0].isdigit() and fields[1].isdigit():
        return f"At {int(fields[1]):02d}:{int(fields[0]):02d}"
    return f"Cron: {schedule}"


def dag_to_json(dag: DagRecord) -> dict[str, Any]:
    return {
        "dag_id": dag.dag_id,
        "dag_display_name": dag.dag_id,
        "root_dag_id": None,
        "is_subdag": False,
        "description": dag.description,
        "fileloc": dag.fileloc,
        "is_paused": dag.is_paused,
        "is_active": dag.is_active,
        "owners": list(dag.owners),
        "schedule_interval": schedule_interval(dag),
        "timetable_description": timetable_description(dag),
        "next_dagrun": iso(dag.next_dagrun),
        "next_dagrun_data_interval_start": iso(dag.next_dagrun_data_interval_start),
        "next_dagrun_data_interval_end": iso(dag.next_dagrun_data_interval_end),
        "next_dagrun_create_after": iso(dag.next_dagrun_create_after),
        "tags": [{"name": tag} for tag in dag.tags],
        "max_active_runs": dag.max_active_runs,
        "max_active_tasks": dag.max_active_tasks,
        "last_parsed_time": iso(dag.last_parsed_time),
        "has_import_errors": dag.has_import_errors,
        "has_task_concurrency_limits": False,
    }


def downstream_ids(spec: DagSpec) -> dict[str, list[str]]:
    """task_id -> the ids of the tasks directly downstream of it, sorted."""
    downstream: dict[str, list[str]] = {task.task_id: [] for task in spec.tasks}
    for task in spec.tasks:
        for upstream in task.upstream:
            downstream.setdefault(upstream, []).append(task.task_id)
    return {task_id: sorted(ids) for task_id, ids in downstream.items()}


def task_to_json(task: TaskSpec, downstream: Sequence[str]) -> dict[str, Any]:
    try:  # the kind knows the Airflow operator it stands for (orchestrator.core.kinds)
        kind = get_kind(task.kind)
        operator, module = kind.operator, kind.operator_module
    except UnknownTaskKind:
        operator, module = task.kind, ""
    return {
        "task_id": task.task_id,
        "task_display_name": task.task_id,
        "class_ref": {"module_path": module, "class_name": operator},
        "operator_name": operator,
        "owner": task.owner,
        "start_date": None,
        "end_date": None,
        "trigger_rule": str(task.trigger_rule),
        "extra_links": [],
        "depends_on_past": False,
        "wait_for_downstream": False,
        "is_mapped": False,
        "retries": task.retries,
        "retry_delay": time_delta(task.retry_delay),
        "retry_exponential_backoff": task.retry_exponential_backoff,
        "max_retry_delay": time_delta(task.max_retry_delay),
        "execution_timeout": time_delta(task.execution_timeout),
        "queue": "default",
        "pool": "default_pool",
        "pool_slots": 1,
        "priority_weight": 1,
        "weight_rule": "downstream",
        "template_fields": ["bash_command", "env"] if task.kind == "bash" else ["op_args", "op_kwargs"],
        "downstream_task_ids": list(downstream),
        "doc_md": None,
        "sub_dag": None,
        "ui_color": _UI_COLORS.get(operator, "#fff"),
        "ui_fgcolor": "#000",
    }


def run_to_json(run: RunRecord) -> dict[str, Any]:
    logical_date = iso(run.logical_date)
    return {
        "dag_id": run.dag_id,
        "dag_run_id": run.run_id,
        "state": str(run.state),
        "conf": run.conf,
        "logical_date": logical_date,
        "execution_date": logical_date,
        "data_interval_start": iso(run.data_interval_start),
        "data_interval_end": iso(run.data_interval_end),
        "start_date": iso(run.start_date),
        "end_date": iso(run.end_date),
        "queued_at": iso(run.queued_at),
        "run_type": run.run_type,
        "external_trigger": run.external_trigger,
        "last_scheduling_decision": None,
        "note": run.note,
    }


def pid_of(external_id: str | None) -> int | None:
    """The process id in an executor's external id ("pid:123", "worker:123"), else None (pods)."""
    if external_id is None:
        return None
    kind, _, number = external_id.partition(":")
    if kind in ("pid", "worker") and number.isdigit():
        return int(number)
    return None


def task_instance_to_json(ti: TaskInstanceRecord, run: RunRecord, unixname: str) -> dict[str, Any]:
    return {
        "task_id": ti.task_id,
        "task_display_name": ti.task_id,
        "dag_id": ti.dag_id,
        "dag_run_id": ti.run_id,
        "execution_date": iso(run.logical_date),
        "start_date": iso(ti.start_date),
        "end_date": iso(ti.end_date),
        "duration": ti.duration,
        "state": None if ti.state == TaskState.NONE else str(ti.state),
        "try_number": ti.try_number,
        "max_tries": ti.max_tries,
        "map_index": ti.map_index,
        "hostname": ti.hostname or "",
        "unixname": unixname,
        "pool": "default_pool",
        "pool_slots": 1,
        "queue": "default",
        "priority_weight": 1,
        "operator": ti.operator,
        "queued_when": iso(ti.queued_at),
        "pid": pid_of(ti.external_id),
        "executor_config": "{}",
        "sla_miss": None,
        "rendered_fields": {},
        "trigger": None,
        "triggerer_job": None,
        "note": None,
    }


def import_error_to_json(error: ImportErrorRecord) -> dict[str, Any]:
    return {
        "import_error_id": error.import_error_id,
        "filename": error.filename,
        "stack_trace": error.message,
        "timestamp": iso(error.timestamp),
    }
