"""DagSpec <-> JSON-able dict: how a parsed DAG travels from a worker to the daemon and into the store.

Workers import DAG files; the daemon never does. A worker sends each DagSpec as this
dict (orjson-encoded), the daemon rebuilds the DagSpec with `spec_from_dict`, and the
store keeps the dict in a jsonb column. The round trip is exact. Reading is strict:
a malformed dict raises SpecFormatError naming the field, because a silently defaulted
field would make the daemon run a different DAG from the one the user wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from orchestrator.core.kinds import UnknownTaskKind, get_kind
from orchestrator.core.model import DEFAULT_OWNER, DagSpec, TaskSpec, TriggerRule, XComRef
from orchestrator.errors import OrchestratorError

#: Bumped when the dict layout changes incompatibly.
FORMAT_VERSION = 1
XCOM_MARKER = "__xcom__"

T = TypeVar("T")


class SpecFormatError(OrchestratorError, ValueError):
    """A serialized DAG is malformed: the message names the field; re-parse the DAG file to rebuild it."""


# --- writing ---------------------------------------------------------------------------------


def spec_to_dict(spec: DagSpec) -> dict[str, Any]:
    """The JSON-able form of `spec` (strings, numbers, bools, None, lists, dicts)."""
    return {
        "format_version": FORMAT_VERSION,
        "dag_id": spec.dag_id,
        "fileloc": spec.fileloc,
        "schedule": spec.schedule,
        "description": spec.description,
        "max_active_runs": spec.max_active_runs,
        "max_active_tasks": spec.max_active_tasks,
        "params": _value_to_json(spec.params),
        "tags": list(spec.tags),
        "is_paused_upon_creation": spec.is_paused_upon_creation,
        "schedule_delta": spec.schedule_delta,
        "asset_condition": spec.asset_condition,
        "timezone": spec.timezone,
        "start_date": None if spec.start_date is None else spec.start_date.isoformat(),
        "end_date": None if spec.end_date is None else spec.end_date.isoformat(),
        "catchup": spec.catchup,
        "source_hash": spec.source_hash,
        "tasks": [task_to_dict(task) for task in spec.tasks],
    }


def task_to_dict(task: TaskSpec) -> dict[str, Any]:
    """The JSON-able form of one task (XComRefs become ``{"__xcom__": {...}}`` markers)."""
    return {
        "task_id": task.task_id,
        "kind": task.kind,
        "args": {key: _value_to_json(value) for key, value in task.args.items()},
        "executor": task.executor,
        "upstream": list(task.upstream),
        "trigger_rule": task.trigger_rule.value,
        "retries": task.retries,
        "retry_delay": task.retry_delay,
        "retry_exponential_backoff": task.retry_exponential_backoff,
        "max_retry_delay": task.max_retry_delay,
        "execution_timeout": task.execution_timeout,
        "env": dict(task.env),
        "append_env": task.append_env,
        "cwd": task.cwd,
        "do_xcom_push": task.do_xcom_push,
        "owner": task.owner,
        "outlets": list(task.outlets),
    }


def _value_to_json(value: Any) -> Any:
    if isinstance(value, XComRef):
        return {XCOM_MARKER: {"task_id": value.task_id, "key": value.key}}
    if isinstance(value, Mapping):
        return {key: _value_to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_value_to_json(item) for item in value]
    return value


# --- reading ---------------------------------------------------------------------------------

_DAG_KEYS = frozenset(spec_to_dict(DagSpec("d", "f", ())))
_TASK_KEYS = frozenset(task_to_dict(TaskSpec("t", "bash", {"bash_command": "true"})))
#: the flat per-kind fields of specs stored before kinds had their own `args` (read, never written)
_LEGACY_ARG_KEYS = frozenset({"bash_command", "op_args", "op_kwargs"})


def spec_from_dict(data: Any) -> DagSpec:
    """Rebuild the DagSpec written by `spec_to_dict`; raise SpecFormatError on a malformed dict."""
    where = "DAG"
    obj = _mapping(data, where)
    if isinstance(obj.get("dag_id"), str):
        where = f"DAG {obj['dag_id']!r}"
    _check_keys(obj, _DAG_KEYS, {"dag_id", "fileloc", "tasks"}, where)
    version = obj.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SpecFormatError(
            f"{where}: format_version {version!r} is not supported (expected {FORMAT_VERSION}); "
            "re-parse the DAG file with this version of the orchestrator"
        )
    tasks = _field(obj, "tasks", list, where)
    return DagSpec(
        dag_id=_field(obj, "dag_id", str, where),
        fileloc=_field(obj, "fileloc", str, where),
        tasks=tuple(_task_from_dict(task, f"{where}, tasks[{i}]") for i, task in enumerate(tasks)),
        schedule=_optional(obj, "schedule", str, where),
        description=_optional(obj, "description", str, where),
        max_active_runs=_field(obj, "max_active_runs", int, where, 16),
        max_active_tasks=_field(obj, "max_active_tasks", int, where, 16),
        params=_value_from_json(_field(obj, "params", dict, where, {}), f"{where}, params"),
        tags=tuple(_str_list(obj, "tags", where)),
        is_paused_upon_creation=_optional(obj, "is_paused_upon_creation", bool, where),
        schedule_delta=_optional_number(obj, "schedule_delta", where),
        asset_condition=_optional(obj, "asset_condition", dict, where),
        timezone=_optional(obj, "timezone", str, where),
        start_date=_optional_datetime(obj, "start_date", where),
        end_date=_optional_datetime(obj, "end_date", where),
        catchup=_field(obj, "catchup", bool, where, False),
        source_hash=_optional(obj, "source_hash", str, where),
    )


def _task_from_dict(data: Any, where: str) -> TaskSpec:
    obj = _mapping(data, where)
    if isinstance(obj.get("task_id"), str):
        where = f"{where} ({obj['task_id']!r})"
    legacy = {key: obj[key] for key in _LEGACY_ARG_KEYS & set(obj) if obj[key] is not None}
    if _LEGACY_ARG_KEYS & set(obj):
        obj = {key: value for key, value in obj.items() if key not in _LEGACY_ARG_KEYS}
    _check_keys(obj, _TASK_KEYS, {"task_id", "kind"}, where)
    kind = _field(obj, "kind", str, where)
    try:
        kind_fields = set(get_kind(kind).template_fields)
    except UnknownTaskKind as exc:
        raise SpecFormatError(f"{where}: {exc}") from None
    legacy = {key: value for key, value in legacy.items() if key in kind_fields}
    raw_args = {**legacy, **_field(obj, "args", dict, where, {})}
    rule = _field(obj, "trigger_rule", str, where, TriggerRule.ALL_SUCCESS.value)
    try:
        trigger_rule = TriggerRule(rule)
    except ValueError:
        raise SpecFormatError(f"{where}: trigger_rule {rule!r} is not a known trigger rule") from None
    env = _field(obj, "env", dict, where, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SpecFormatError(f"{where}: env must map strings to strings")
    return TaskSpec(
        task_id=_field(obj, "task_id", str, where),
        kind=kind,
        args={key: _value_from_json(value, f"{where}, args.{key}") for key, value in raw_args.items()},
        executor=_optional(obj, "executor", str, where),
        upstream=tuple(_str_list(obj, "upstream", where)),
        trigger_rule=trigger_rule,
        retries=_field(obj, "retries", int, where, 0),
        retry_delay=_number(obj, "retry_delay", where, 300.0),
        retry_exponential_backoff=_field(obj, "retry_exponential_backoff", bool, where, False),
        max_retry_delay=_optional_number(obj, "max_retry_delay", where),
        execution_timeout=_optional_number(obj, "execution_timeout", where),
        env=dict(env),
        append_env=_field(obj, "append_env", bool, where, False),
        cwd=_optional(obj, "cwd", str, where),
        do_xcom_push=_field(obj, "do_xcom_push", bool, where, True),
        owner=_field(obj, "owner", str, where, DEFAULT_OWNER),
        outlets=tuple(_str_list(obj, "outlets", where)),
    )


def _value_from_json(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        if XCOM_MARKER in value:
            return _xcom_ref(value, where)
        return {key: _value_from_json(item, where) for key, item in value.items()}
    if isinstance(value, list):
        return [_value_from_json(item, where) for item in value]
    return value


def _xcom_ref(value: dict[str, Any], where: str) -> XComRef:
    ref = value[XCOM_MARKER]
    if (
        len(value) != 1
        or not isinstance(ref, dict)
        or set(ref) - {"task_id", "key"}
        or not isinstance(ref.get("task_id"), str)
        or not isinstance(ref.get("key", "return_value"), str)
    ):
        raise SpecFormatError(
            f'{where}: malformed XCom reference {value!r}; expected {{"__xcom__": '
            '{"task_id": "...", "key": "..."}}'
        )
    return XComRef(ref["task_id"], ref.get("key", "return_value"))


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecFormatError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _check_keys(obj: Mapping[str, Any], known: frozenset[str], required: set[str], where: str) -> None:
    missing = sorted(required - set(obj))
    if missing:
        raise SpecFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(obj) - known, key=str)
    if unknown:
        raise SpecFormatError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")


_MISSING: Any = object()
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "an object"}


def _field(obj: Mapping[str, Any], key: str, kind: type[T], where: str, default: T = _MISSING) -> T:
    if key not in obj:
        if default is _MISSING:
            raise SpecFormatError(f"{where}: missing field {key}")
        return default
    value = obj[key]
    # bool is an int subclass; a bool where a number is expected is a mistake
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SpecFormatError(f"{where}: {key} must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {value!r}")
    return value


def _optional(obj: Mapping[str, Any], key: str, kind: type[T], where: str) -> T | None:
    if obj.get(key) is None:
        return None
    return _field(obj, key, kind, where)


def _optional_datetime(obj: Mapping[str, Any], key: str, where: str) -> datetime | None:
    text = _optional(obj, key, str, where)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise SpecFormatError(f"{where}: {key} must be an ISO 8601 date and time, got {text!r}") from None
    return value  # naive: a wall time in the DAG's time zone


def _number(obj: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecFormatError(f"{where}: {key} must be a number of seconds, got {value!r}")
    return float(value)


def _optional_number(obj: Mapping[str, Any], key: str, where: str) -> float | None:
    if obj.get(key) is None:
        return None
    return _number(obj, key, where, 0.0)


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> list[str]:
    values = _field(obj, key, list, where, [])
    if not all(isinstance(v, str) for v in values):
        raise SpecFormatError(f"{where}: {key} must be a list of strings, got {values!r}")
    return values
