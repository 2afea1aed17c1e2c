"""Records as the JSON objects of Airflow 3's REST API (/api/v2).

The 3.x client's response models are strict pydantic models: every required field must be
there with its type (an enum value it knows, a UUID, an RFC 3339 datetime with its offset), so
these functions give them all, taking what v1's serializers already compute (`iso`, the
timetable description, the process id) and filling what this daemon has no notion of (bundles,
DAG versions, triggerers) with Airflow 3's defaults. Pure functions: records in, dicts out.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from orchestrator.api.serializers import iso, pid_of, timetable_description
from orchestrator.api.sources import file_token
from orchestrator.core.records import DagRecord, ImportErrorRecord, RunRecord, TaskInstanceRecord
from orchestrator.core.states import TaskState

#: Airflow 3's name of the bundle DAG files come from when they are read from a folder
BUNDLE_NAME = "dags-folder"

#: our run types -> Airflow 3's DagRunType, and who triggered such a run (DagRunTriggeredByType)
_RUN_TYPES = {"manual", "scheduled", "backfill", "asset_triggered"}
_TRIGGERED_BY = {"scheduled": "timetable", "backfill": "backfill", "asset_triggered": "asset"}

#: the namespace of the stable task-instance ids (uuid5 of the task instance's key)
_TI_NAMESPACE = uuid.UUID("6f1c1e0a-5b8e-4c56-9a55-0d4b1f0c2a31")


def _schedule(dag: DagRecord) -> tuple[str | None, bool]:
    """(timetable_summary, periodic): the cron expression or interval, and whether it repeats."""
    spec = dag.spec if isinstance(dag.spec, dict) else {}
    if spec.get("asset_condition") is not None:
        return "Asset", False
    if spec.get("schedule_delta") is not None:
        return str(spec["schedule_delta"]), True
    schedule = spec.get("schedule", dag.schedule)
    if schedule is None:
        return None, False
    return schedule, schedule not in ("@once", "@continuous")


def dag_to_json(dag: DagRecord, signing_key: bytes) -> dict[str, Any]:
    """Airflow 3's DAGResponse."""
    summary, periodic = _schedule(dag)
    return {
        "dag_id": dag.dag_id,
        "dag_display_name": dag.dag_id,
        "is_paused": dag.is_paused,
        "is_stale": not dag.is_active,
        "last_parsed_time": iso(dag.last_parsed_time),
        "last_parse_duration": None,
        "last_expired": None,
        "bundle_name": BUNDLE_NAME,
        "bundle_version": None,
        "relative_fileloc": None,
        "fileloc": dag.fileloc,
        "description": dag.description,
        "timetable_summary": summary,
        "timetable_description": timetable_description(dag),
        "timetable_periodic": periodic,
        "timetable_partitioned": False,
        "tags": [{"name": tag, "dag_id": dag.dag_id, "dag_display_name": dag.dag_id} for tag in dag.tags],
        "max_active_tasks": dag.max_active_tasks,
        "max_active_runs": dag.max_active_runs,
        "max_consecutive_failed_dag_runs": 0,
        "has_task_concurrency_limits": False,
        "has_import_errors": dag.has_import_errors,
        "is_backfillable": periodic,
        "allowed_run_types": None,
        "next_dagrun_logical_date": iso(dag.next_dagrun),
        "next_dagrun_data_interval_start": iso(dag.next_dagrun_data_interval_start),
        "next_dagrun_data_interval_end": iso(dag.next_dagrun_data_interval_end),
        "next_dagrun_run_after": iso(dag.next_dagrun_create_after),
        "owners": list(dag.owners),
        "file_token": file_token(signing_key, dag.fileloc),  # v1 dagSources serves it
    }


def run_after(run: RunRecord) -> datetime:
    """When the run was due: the end of its data interval (its logical date for manual runs)."""
    return run.data_interval_end


def run_to_json(run: RunRecord) -> dict[str, Any]:
    """Airflow 3's DAGRunResponse."""
    duration = None
    if run.start_date is not None and run.end_date is not None:
        duration = (run.end_date - run.start_date).total_seconds()
    return {
        "dag_run_id": run.run_id,
        "dag_id": run.dag_id,
        "dag_display_name": run.dag_id,
        "logical_date": iso(run.logical_date),
        "queued_at": iso(run.queued_at),
        "start_date": iso(run.start_date),
        "end_date": iso(run.end_date),
        "duration": duration,
        "data_interval_start": iso(run.data_interval_start),
        "data_interval_end": iso(run.data_interval_end),
        "run_after": iso(run_after(run)),
        "last_scheduling_decision": None,
        "run_type": run.run_type if run.run_type in _RUN_TYPES else "manual",
        "state": str(run.state),
        "triggered_by": _TRIGGERED_BY.get(run.run_type),
        "triggering_user_name": None,
        "conf": run.conf,
        "note": run.note,
        "dag_versions": [],
        "bundle_version": None,
        "partition_key": None,
        "partition_date": None,
    }


def task_instance_id(ti: TaskInstanceRecord) -> str:
    """A stable UUID for a task instance try-independent key (Airflow 3 keys them by UUID)."""
    key = f"{ti.dag_id}\x00{ti.run_id}\x00{ti.task_id}\x00{ti.map_index}"
    return str(uuid.uuid5(_TI_NAMESPACE, key))


def task_instance_to_json(ti: TaskInstanceRecord, run: RunRecord, unixname: str) -> dict[str, Any]:
    """Airflow 3's TaskInstanceResponse."""
    return {
        "id": task_instance_id(ti),
        "task_id": ti.task_id,
        "dag_id": ti.dag_id,
        "dag_run_id": ti.run_id,
        "map_index": ti.map_index,
        "logical_date": iso(run.logical_date),
        "run_after": iso(run_after(run)),
        "start_date": iso(ti.start_date),
        "end_date": iso(ti.end_date),
        "duration": ti.duration,
        "state": None if ti.state == TaskState.NONE else str(ti.state),
        "try_number": ti.try_number,
        "max_tries": ti.max_tries,
        "task_display_name": ti.task_id,
        "dag_display_name": ti.dag_id,
        "hostname": ti.hostname or None,
        "unixname": unixname,
        "pool": "default_pool",
        "pool_slots": 1,
        "queue": "default",
        "priority_weight": 1,
        "operator": ti.operator,
        "operator_name": ti.operator,
        "queued_when": iso(ti.queued_at),
        "scheduled_when": None,
        "pid": pid_of(ti.external_id),
        "executor": None,
        "executor_config": "{}",
        "note": None,
        "rendered_map_index": None,
        "rendered_fields": {},
        "trigger": None,
        "triggerer_job": None,
        "dag_version": None,
    }


def import_error_to_json(error: ImportErrorRecord) -> dict[str, Any]:
    """Airflow 3's ImportErrorResponse."""
    return {
        "import_error_id": error.import_error_id,
        "timestamp": iso(error.timestamp),
        "filename": error.filename,
        "bundle_name": BUNDLE_NAME,
        "stack_trace": error.message,
    }
