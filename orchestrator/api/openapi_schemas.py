"""The request and response schemas the OpenAPI documents give the main endpoints.

The documents' paths, methods, parameters in the path, roles and summaries come from the app's
router and handlers (`orchestrator.api.openapi`); what a body holds cannot, so the main
endpoints' bodies are written down here, per API version: `SCHEMAS` (components by name) and
`OPERATIONS` ((method, path) -> its query parameters, request body and response schemas). An
endpoint absent from `OPERATIONS` is documented with a JSON object as its answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Schema = dict[str, Any]


def _type(spec: str) -> Schema:
    """A property from a short spec: "string", "integer", "number", "boolean", "object",
    "date-time", "#Name" (a component), "[spec]" (an array); a trailing "?" makes it nullable."""
    nullable = spec.endswith("?")
    spec = spec.removesuffix("?")
    schema: Schema
    if spec.startswith("["):
        schema = {"type": "array", "items": _type(spec[1:-1])}
    elif spec.startswith("#"):
        schema = {"$ref": f"#/components/schemas/{spec[1:]}"}
    elif spec == "date-time":
        schema = {"type": "string", "format": "date-time"}
    elif spec == "uuid":
        schema = {"type": "string", "format": "uuid"}
    elif spec == "any":
        schema = {}
    else:
        schema = {"type": spec}
    if nullable and schema:
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


def obj(required: str = "", **properties: str) -> Schema:
    """An object schema; `required` names the required properties, space-separated."""
    return {
        "type": "object",
        "properties": {name: _type(spec) for name, spec in properties.items()},
        "required": required.split(),
    }


@dataclass(frozen=True)
class Operation:
    """What an endpoint's query, body and answer hold, beyond its path."""

    response: str | None = None
    request: str | None = None
    query: dict[str, str] = field(default_factory=dict)
    status: int = 200


_PAGE = {"limit": "integer", "offset": "integer"}

V1_SCHEMAS: dict[str, Schema] = {
    "Error": obj("type title status detail", type="string", title="string", status="number", detail="string"),
    "Tag": obj("name", name="string"),
    "DAG": obj(
        "dag_id is_paused is_active fileloc",
        dag_id="string",
        dag_display_name="string",
        description="string?",
        fileloc="string",
        is_paused="boolean",
        is_active="boolean",
        owners="[string]",
        schedule_interval="object?",
        timetable_description="string?",
        tags="[#Tag]",
        max_active_runs="integer?",
        max_active_tasks="integer?",
        last_parsed_time="date-time?",
        has_import_errors="boolean",
        next_dagrun="date-time?",
    ),
    "DAGCollection": obj("dags total_entries", dags="[#DAG]", total_entries="integer"),
    "DAGPatch": obj("is_paused", is_paused="boolean"),
    "DAGRun": obj(
        "dag_id dag_run_id state",
        dag_id="string",
        dag_run_id="string",
        state="string",
        conf="object",
        logical_date="date-time?",
        execution_date="date-time?",
        data_interval_start="date-time?",
        data_interval_end="date-time?",
        start_date="date-time?",
        end_date="date-time?",
        queued_at="date-time?",
        run_type="string",
        external_trigger="boolean",
        note="string?",
    ),
    "TriggerDAGRun": obj(
        "",
        dag_run_id="string?",
        conf="object?",
        logical_date="date-time?",
        execution_date="date-time?",
        note="string?",
    ),
    "DAGRunCollection": obj("dag_runs total_entries", dag_runs="[#DAGRun]", total_entries="integer"),
    "SetDagRunNote": obj("note", note="string"),
    "TaskInstance": obj(
        "task_id dag_id dag_run_id try_number",
        task_id="string",
        dag_id="string",
        dag_run_id="string",
        execution_date="date-time?",
        start_date="date-time?",
        end_date="date-time?",
        duration="number?",
        state="string?",
        try_number="integer",
        max_tries="integer",
        map_index="integer",
        hostname="string",
        operator="string?",
        pid="integer?",
    ),
    "TaskInstanceCollection": obj(
        "task_instances total_entries", task_instances="[#TaskInstance]", total_entries="integer"
    ),
    "Log": obj("content", content="string", continuation_token="string?"),
    "ImportError": obj(
        "import_error_id filename stack_trace",
        import_error_id="integer",
        filename="string",
        stack_trace="string",
        timestamp="date-time?",
    ),
    "ImportErrorCollection": obj(
        "import_errors total_entries", import_errors="[#ImportError]", total_entries="integer"
    ),
    "HealthInfo": obj("metadatabase scheduler", status="string", metadatabase="object", scheduler="object"),
    "Daemon": obj(
        "daemon_id hostname pid version api_url started_at heartbeat_at heartbeat_age_seconds "
        "lease_until alive owned_runs",
        daemon_id="string",
        hostname="string",
        pid="integer",
        version="string",
        api_url="string?",
        started_at="date-time",
        heartbeat_at="date-time",
        heartbeat_age_seconds="number",
        lease_until="date-time?",
        alive="boolean",
        owned_runs="integer",
    ),
    "DaemonCollection": obj("daemons total_entries", daemons="[#Daemon]", total_entries="integer"),
}

V1_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/api/v1/health"): Operation("HealthInfo"),
    ("GET", "/api/v1/dags"): Operation("DAGCollection", query={**_PAGE, "only_active": "boolean"}),
    ("GET", "/api/v1/dags/{dag_id}"): Operation("DAG"),
    ("PATCH", "/api/v1/dags/{dag_id}"): Operation("DAG", "DAGPatch", {"update_mask": "string"}),
    ("POST", "/api/v1/dags/{dag_id}/dagRuns"): Operation("DAGRun", "TriggerDAGRun"),
    ("GET", "/api/v1/dags/{dag_id}/dagRuns"): Operation(
        "DAGRunCollection", query={**_PAGE, "state": "string"}
    ),
    ("GET", "/api/v1/dags/{dag_id}/dagRuns/{run_id}"): Operation("DAGRun"),
    ("PATCH", "/api/v1/dags/{dag_id}/dagRuns/{run_id}/setNote"): Operation("DAGRun", "SetDagRunNote"),
    ("GET", "/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances"): Operation(
        "TaskInstanceCollection", query={**_PAGE, "state": "string"}
    ),
    ("GET", "/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"): Operation("TaskInstance"),
    ("GET", "/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"): Operation(
        "Log", query={"full_content": "boolean", "map_index": "integer", "token": "string"}
    ),
    ("GET", "/api/v1/importErrors"): Operation("ImportErrorCollection", query=_PAGE),
    ("GET", "/api/v1/importErrors/{import_error_id}"): Operation("ImportError"),
    ("GET", "/api/v1/daemons"): Operation("DaemonCollection"),
}

V2_SCHEMAS: dict[str, Schema] = {
    "HTTPExceptionResponse": obj("detail", detail="any"),
    "ValidationError": obj("loc msg type", loc="[any]", msg="string", type="string", input="any"),
    "HTTPValidationError": obj("", detail="[#ValidationError]"),
    "DagTagResponse": obj(
        "name dag_id dag_display_name", name="string", dag_id="string", dag_display_name="string"
    ),
    "DAGResponse": obj(
        "dag_id dag_display_name is_paused is_stale fileloc file_token owners tags max_active_tasks "
        "max_consecutive_failed_dag_runs has_task_concurrency_limits has_import_errors is_backfillable "
        "timetable_periodic timetable_partitioned",
        dag_id="string",
        dag_display_name="string",
        is_paused="boolean",
        is_stale="boolean",
        last_parsed_time="date-time?",
        last_parse_duration="number?",
        last_expired="date-time?",
        bundle_name="string?",
        bundle_version="string?",
        relative_fileloc="string?",
        fileloc="string",
        description="string?",
        timetable_summary="string?",
        timetable_description="string?",
        timetable_periodic="boolean",
        timetable_partitioned="boolean",
        tags="[#DagTagResponse]",
        max_active_tasks="integer",
        max_active_runs="integer?",
        max_consecutive_failed_dag_runs="integer",
        has_task_concurrency_limits="boolean",
        has_import_errors="boolean",
        is_backfillable="boolean",
        allowed_run_types="[string]?",
        next_dagrun_logical_date="date-time?",
        next_dagrun_data_interval_start="date-time?",
        next_dagrun_data_interval_end="date-time?",
        next_dagrun_run_after="date-time?",
        owners="[string]",
        file_token="string",
    ),
    "DAGCollectionResponse": obj("dags total_entries", dags="[#DAGResponse]", total_entries="integer"),
    "DAGPatchBody": obj("is_paused", is_paused="boolean"),
    "DAGRunResponse": obj(
        "dag_run_id dag_id dag_display_name run_after run_type state dag_versions",
        dag_run_id="string",
        dag_id="string",
        dag_display_name="string",
        logical_date="date-time?",
        queued_at="date-time?",
        start_date="date-time?",
        end_date="date-time?",
        duration="number?",
        data_interval_start="date-time?",
        data_interval_end="date-time?",
        run_after="date-time",
        last_scheduling_decision="date-time?",
        run_type="string",
        state="string",
        triggered_by="string?",
        triggering_user_name="string?",
        conf="object?",
        note="string?",
        dag_versions="[object]",
        bundle_version="string?",
        partition_key="string?",
        partition_date="date-time?",
    ),
    "DAGRunCollectionResponse": obj("dag_runs", dag_runs="[#DAGRunResponse]", total_entries="integer?"),
    "TriggerDAGRunPostBody": obj(
        "",
        dag_run_id="string?",
        logical_date="date-time?",
        run_after="date-time?",
        data_interval_start="date-time?",
        data_interval_end="date-time?",
        conf="object?",
        note="string?",
        partition_key="string?",
    ),
    "TaskInstanceResponse": obj(
        "id task_id dag_id dag_run_id map_index run_after try_number max_tries task_display_name "
        "dag_display_name pool pool_slots executor_config",
        id="uuid",
        task_id="string",
        dag_id="string",
        dag_run_id="string",
        map_index="integer",
        logical_date="date-time?",
        run_after="date-time",
        start_date="date-time?",
        end_date="date-time?",
        duration="number?",
        state="string?",
        try_number="integer",
        max_tries="integer",
        task_display_name="string",
        dag_display_name="string",
        hostname="string?",
        unixname="string?",
        pool="string",
        pool_slots="integer",
        queue="string?",
        priority_weight="integer?",
        operator="string?",
        operator_name="string?",
        queued_when="date-time?",
        pid="integer?",
        executor="string?",
        executor_config="string",
        note="string?",
        rendered_fields="object?",
    ),
    "TaskInstanceCollectionResponse": obj(
        "task_instances", task_instances="[#TaskInstanceResponse]", total_entries="integer?"
    ),
    "StructuredLogMessage": obj("event", event="string", timestamp="date-time?"),
    "TaskInstancesLogResponse": obj(
        "content", content="[#StructuredLogMessage]", continuation_token="string?"
    ),
    "ImportErrorResponse": obj(
        "import_error_id timestamp filename stack_trace",
        import_error_id="integer",
        timestamp="date-time",
        filename="string",
        bundle_name="string?",
        stack_trace="string",
    ),
    "ImportErrorCollectionResponse": obj(
        "import_errors total_entries", import_errors="[#ImportErrorResponse]", total_entries="integer"
    ),
    "HealthInfoResponse": obj(
        "metadatabase scheduler triggerer",
        metadatabase="object",
        scheduler="object",
        triggerer="object",
        dag_processor="object?",
    ),
    "VersionInfo": obj("version", version="string", git_version="string?"),
}

_RUN2 = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}"
V2_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/api/v2/monitor/health"): Operation("HealthInfoResponse"),
    ("GET", "/api/v2/version"): Operation("VersionInfo"),
    ("GET", "/api/v2/dags"): Operation("DAGCollectionResponse", query={**_PAGE, "exclude_stale": "boolean"}),
    ("GET", "/api/v2/dags/{dag_id}"): Operation("DAGResponse"),
    ("PATCH", "/api/v2/dags/{dag_id}"): Operation("DAGResponse", "DAGPatchBody", {"update_mask": "string"}),
    ("POST", "/api/v2/dags/{dag_id}/dagRuns"): Operation("DAGRunResponse", "TriggerDAGRunPostBody"),
    ("GET", "/api/v2/dags/{dag_id}/dagRuns"): Operation(
        "DAGRunCollectionResponse", query={**_PAGE, "state": "string"}
    ),
    ("GET", _RUN2): Operation("DAGRunResponse"),
    ("GET", f"{_RUN2}/taskInstances"): Operation(
        "TaskInstanceCollectionResponse", query={**_PAGE, "state": "string"}
    ),
    ("GET", f"{_RUN2}/taskInstances/{{task_id}}"): Operation("TaskInstanceResponse"),
    ("GET", f"{_RUN2}/taskInstances/{{task_id}}/{{map_index}}"): Operation("TaskInstanceResponse"),
    ("GET", f"{_RUN2}/taskInstances/{{task_id}}/logs/{{try_number}}"): Operation(
        "TaskInstancesLogResponse",
        query={"full_content": "boolean", "map_index": "integer", "token": "string"},
    ),
    ("GET", "/api/v2/importErrors"): Operation("ImportErrorCollectionResponse", query=_PAGE),
    ("GET", "/api/v2/importErrors/{import_error_id}"): Operation("ImportErrorResponse"),
}
