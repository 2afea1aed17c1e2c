"""Airflow's template context, Jinja rendering, and the environment a task process gets.

DAGs moved from Airflow keep their templates: ``{{ ds }}``, ``{{ params.x }}``,
``{{ ti.xcom_pull(task_ids='extract') }}``, ``{{ macros.ds_add(ds, 1) }}`` and
``{{ dag_run.conf }}`` mean what they meant there. Rendering uses Jinja2's sandbox with
``StrictUndefined``, Airflow's default: a misspelt variable is an error that names it,
never a silently empty string inside a shell command.

This runs once per task launch, so it is kept cheap: the context holds the run and DAG
values themselves (no copies beyond a shallow one of ``params``), compiled templates are
cached, and strings without template markup skip Jinja entirely. No file access: the
environment has no loader, so ``{% include %}`` is not available.

Limits (`orchestrator.core.template_limits`): no value a template builds, nor its output,
may exceed ``templates.max_output_bytes``, and a template that can loop renders under a
deadline of ``templates.render_timeout``. Going past either is a `TemplateError` naming it.
``shquote`` quotes a value for a shell command (`shlex.quote`).
"""

from __future__ import annotations

import functools
import json
import shlex
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import jinja2

from orchestrator.core.model import DagSpec, TaskSpec, XComRef
from orchestrator.core.records import RunRecord
from orchestrator.core.template_limits import (
    DEFAULT_LIMITS,
    JOIN_AT_ONCE_MAX_EXPRESSIONS,
    Deadline,
    LimitedEnvironment,
    TemplateLimitExceeded,
    TemplateLimits,
    is_cheap,
    output_expressions,
    run_with_deadline,
)
from orchestrator.errors import OrchestratorError

RETURN_VALUE = "return_value"
_SNIPPET_CHARS = 80


class TemplateError(OrchestratorError):
    """A task's template could not be rendered: fix the template in the DAG file."""


# --- the objects a template sees ----------------------------------------------------------


class TaskInstanceContext:
    """``ti`` / ``task_instance`` in a template: the task instance being rendered.

    A plain slotted class rather than a frozen dataclass: one is built per task launch and
    frozen dataclasses pay for ``object.__setattr__`` on every field.
    """

    __slots__ = ("dag_id", "map_index", "run_id", "task_id", "try_number", "xcoms")

    def __init__(
        self,
        dag_id: str,
        task_id: str,
        run_id: str,
        try_number: int,
        map_index: int,
        xcoms: Mapping[tuple[str, str], Any],
    ) -> None:
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = run_id
        self.try_number = try_number
        self.map_index = map_index
        self.xcoms = xcoms

    def __repr__(self) -> str:
        return (
            f"<TaskInstance: {self.dag_id}.{self.task_id} {self.run_id} "
            f"map_index={self.map_index} try_number={self.try_number}>"
        )

    def xcom_pull(
        self,
        task_ids: str | list[str] | tuple[str, ...] | None = None,
        key: str = RETURN_VALUE,
        default: Any = None,
    ) -> Any:
        """A value another task of this run pushed, like Airflow's ``ti.xcom_pull``.

        `task_ids` a string: that task's value (or `default`); a list: a list of values in the
        same order (`default` for each missing one); None: this task's own XCom (Airflow 3).
        """
        if task_ids is None:
            task_ids = self.task_id
        if isinstance(task_ids, str):
            return self.xcoms.get((task_ids, key), default)
        return [self.xcoms.get((task_id, key), default) for task_id in task_ids]


def _ds_add(ds: str, days: int) -> str:
    """Add or subtract days from a YYYY-MM-DD date: ``ds_add('2015-01-01', 5)`` -> '2015-01-06'."""
    if not days:
        return str(ds)
    return (datetime.strptime(str(ds), "%Y-%m-%d") + timedelta(days=days)).strftime("%Y-%m-%d")


def _ds_format(ds: str, input_format: str, output_format: str) -> str:
    """Reformat a date string: ``ds_format('2015-01-01', '%Y-%m-%d', '%m-%d-%y')`` -> '01-01-15'."""
    return datetime.strptime(str(ds), input_format).strftime(output_format)


class Macros:
    """``macros`` in a template: Airflow's date helpers and the modules they expose."""

    __slots__ = ()
    ds_add = staticmethod(_ds_add)
    ds_format = staticmethod(_ds_format)
    datetime = datetime
    timedelta = timedelta
    json = json


MACROS = Macros()


def _ts_nodash_with_tz(ts: str) -> str:
    return ts.replace("-", "").replace(":", "")


# Airflow's template filters: {{ logical_date | ds }} and friends.
_FILTERS = {
    "ds": lambda value: value.strftime("%Y-%m-%d"),
    "ds_nodash": lambda value: value.strftime("%Y%m%d"),
    "ts": lambda value: value.isoformat(),
    "ts_nodash": lambda value: value.strftime("%Y%m%dT%H%M%S"),
    "ts_nodash_with_tz": lambda value: _ts_nodash_with_tz(value.isoformat()),
    # ours: a value made safe to put into a shell command as one word
    "shquote": lambda value: shlex.quote(str(value)),
}


@functools.lru_cache(maxsize=256)
def _date_strings(logical_date: datetime, utcoffset: timedelta | None) -> tuple[str, str, str, str, str]:
    """ds, ds_nodash, ts, ts_nodash, ts_nodash_with_tz -- cached: every task of a run shares them.

    `utcoffset` is part of the cache key because aware datetimes that are the same instant
    in different zones compare (and hash) equal, yet render differently. The strings are
    sliced from one isoformat() ('YYYY-MM-DDTHH:MM:SS[.ffffff][+HH:MM]'), which is several
    times cheaper than strftime and gives the same strings.
    """
    ts = logical_date.isoformat()
    ds = ts[:10]
    return ds, ds.replace("-", ""), ts, ts[:19].replace("-", "").replace(":", ""), _ts_nodash_with_tz(ts)


class TemplateDateTime(datetime):
    """A datetime that prints as ISO 8601 (``2026-03-01T00:00:00+00:00``), as Airflow's pendulum
    dates do in templates (`{{ data_interval_start }}`); otherwise a plain datetime."""

    __slots__ = ()

    @classmethod
    def of(cls, value: datetime) -> TemplateDateTime:
        return cls(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            value.tzinfo,
            fold=value.fold,
        )

    def __str__(self) -> str:
        return self.isoformat()


def build_context(
    dag: DagSpec,
    task: TaskSpec,
    run: RunRecord,
    try_number: int,
    xcoms: Mapping[tuple[str, str], Any],
    map_index: int = -1,
) -> dict[str, Any]:
    """The template context of one task instance, with Airflow's names.

    `xcoms` maps (task_id, key) to the JSON value pushed in this run (map index -1); it is
    referenced, not copied. ``params`` is the DAG's params updated with the run's conf, as
    Airflow does with ``dag_run_conf_overrides_params`` on (its default). ``dag_run`` is the
    run record (``.conf``, ``.run_id``, ``.logical_date``, ``.run_type``, ``.dag_id``),
    ``dag`` the DagSpec and ``task`` the TaskSpec. Airflow's ``conf`` (its configuration)
    is deliberately absent.
    """
    logical_date = run.logical_date
    ds, ds_nodash, ts, ts_nodash, ts_nodash_with_tz = _date_strings(logical_date, logical_date.utcoffset())
    params = dict(dag.params)
    if run.conf:
        params.update(run.conf)
    ti = TaskInstanceContext(
        dag_id=dag.dag_id,
        task_id=task.task_id,
        run_id=run.run_id,
        try_number=try_number,
        map_index=map_index,
        xcoms=xcoms,
    )
    return {
        "dag": dag,
        "dag_run": run,
        "data_interval_end": TemplateDateTime.of(run.data_interval_end),
        "data_interval_start": TemplateDateTime.of(run.data_interval_start),
        "ds": ds,
        "ds_nodash": ds_nodash,
        "logical_date": TemplateDateTime.of(logical_date),
        "macros": MACROS,
        "params": params,
        "run_id": run.run_id,
        "task": task,
        "task_instance": ti,
        "task_instance_key_str": f"{dag.dag_id}__{task.task_id}__{ds_nodash}",
        "ti": ti,
        "ts": ts,
        "ts_nodash": ts_nodash,
        "ts_nodash_with_tz": ts_nodash_with_tz,
    }


# --- rendering ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _environment(max_output_bytes: int) -> LimitedEnvironment:
    env = LimitedEnvironment(
        max_output_bytes,
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.do"],
        autoescape=False,
        cache_size=0,  # no loader: the LRU below is the cache
    )
    env.filters.update(_FILTERS)
    return env


_ENV = _environment(DEFAULT_LIMITS.max_output_bytes)


@functools.lru_cache(maxsize=8)
def _globals(max_output_bytes: int) -> Mapping[str, Any]:
    return MappingProxyType(dict(_environment(max_output_bytes).globals))


#: how a compiled template is rendered
_JOIN = 0  # cheap, few expressions: joined at once, measured after (today's fast path)
_STREAM = 1  # cheap, many expressions: measured while it streams
_DEADLINE = 2  # can loop: streamed, under a deadline


@functools.lru_cache(maxsize=1024)
def _compile(template: str, max_output_bytes: int) -> tuple[jinja2.Template, int]:
    """The compiled template and how to render it (see template_limits)."""
    # lru_cache does not store exceptions: a template that fails to compile is retried each time.
    env = _environment(max_output_bytes)
    tree = env.parse(template)
    if not is_cheap(tree):
        mode = _DEADLINE
    elif output_expressions(tree) <= JOIN_AT_ONCE_MAX_EXPRESSIONS:
        mode = _JOIN
    else:
        mode = _STREAM
    return env.from_string(tree), mode


def _needs_jinja(template: str) -> bool:
    # Jinja also drops one trailing newline and normalises \r\n; plain strings that could be
    # changed by that still go through it, so the fast path never changes a result.
    return "{" in template or "\r" in template or template.endswith("\n")


def _snippet(template: str, lineno: int | None) -> str:
    lines = template.splitlines() or [""]
    text = lines[lineno - 1] if lineno and 0 < lineno <= len(lines) else template
    text = text.strip()
    if len(text) > _SNIPPET_CHARS:
        text = text[: _SNIPPET_CHARS - 3] + "..."
    where = f" (line {lineno})" if lineno and len(lines) > 1 else ""
    return f"{text!r}{where}"


def _template_error(template: str, error: Exception, lineno: int | None) -> TemplateError:
    message = (getattr(error, "message", None) or str(error) or type(error).__name__).rstrip(".")
    if isinstance(error, jinja2.UndefinedError):
        hint = (
            "unknown names are errors, not empty strings (StrictUndefined): check the spelling, "
            "or give an optional value a default, e.g. {{ params.x | default('') }}"
        )
    elif isinstance(error, jinja2.TemplateSyntaxError):
        hint = "fix the Jinja syntax in the DAG file"
    else:
        hint = f"the expression raised {type(error).__name__}: fix the template in the DAG file"
    return TemplateError(f"cannot render template {_snippet(template, lineno)}: {message}; {hint}")


def _template_lineno(error: Exception) -> int | None:
    if isinstance(error, jinja2.TemplateSyntaxError):
        return error.lineno
    # Jinja rewrites tracebacks so that frames of a compiled template report its line.
    lineno = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return lineno


def is_cheap_template(template: str, limits: TemplateLimits = DEFAULT_LIMITS) -> bool:
    """True if `template` renders without a deadline (it cannot loop; see template_limits).
    A template that does not compile counts as cheap: rendering it fails at once."""
    if not _needs_jinja(template):
        return True
    try:
        return _compile(template, limits.max_output_bytes)[1] != _DEADLINE
    except Exception:
        return True


def _join_limited(chunks: Any, limit: int) -> str:
    parts: list[str] = []
    append = parts.append  # the hot loop of every render: no attribute lookups in it
    size = 0
    for chunk in chunks:
        append(chunk)
        size += len(chunk)
        if size > limit:
            raise TemplateLimitExceeded(
                f"the rendered text is longer than templates.max_output_bytes ({limit:,}): "
                "render less, or raise the limit in the configuration"
            )
    text = "".join(parts)
    if size * 4 > limit:
        _check_output(text, size, limit)
    return text


def _check_output(text: str, size: int, limit: int) -> None:
    if size > limit:
        raise TemplateLimitExceeded(
            f"the rendered text is longer than templates.max_output_bytes ({limit:,}): "
            "render less, or raise the limit in the configuration"
        )
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        raise TemplateLimitExceeded(
            f"the rendered text is more than templates.max_output_bytes ({limit:,}) bytes of UTF-8: "
            "render less, or raise the limit in the configuration"
        )


def render_template(
    template: str,
    context: Mapping[str, Any],
    limits: TemplateLimits = DEFAULT_LIMITS,
    now: Callable[[], float] = time.monotonic,
) -> str:
    """Render one Jinja template string with `context`.

    An undefined variable raises (`StrictUndefined`, as in Airflow) instead of rendering
    as an empty string. Compiled templates are cached (LRU, 1024 entries keyed by the
    template text). Every failure -- syntax, undefined name, an exception inside an
    expression, a limit of `limits` -- raises `TemplateError` carrying the template snippet
    and the reason. A template that can loop renders under a deadline of
    `limits.render_timeout` seconds on the clock `now` (None: the caller enforces one).
    """
    if not _needs_jinja(template):
        return template
    limit = limits.max_output_bytes
    try:
        compiled, mode = _compile(template, limit)
        # What Template.render does, minus its per-call merge of the globals through a
        # ChainMap, which costs as much as the rendering itself for a one-line command.
        jinja_context = compiled.new_context({**_globals(limit), **context}, shared=True)
        if mode == _JOIN:
            text = "".join(compiled.root_render_func(jinja_context))
            if len(text) * 4 > limit:
                _check_output(text, len(text), limit)
            return text
        if mode == _STREAM or limits.render_timeout is None:
            return _join_limited(compiled.root_render_func(jinja_context), limit)
        timeout = limits.render_timeout
        deadline = Deadline(now() + timeout, now, timeout)
        return run_with_deadline(
            lambda: _join_limited(compiled.root_render_func(jinja_context), limit), deadline
        )
    except Exception as raised:
        if isinstance(raised, TemplateLimitExceeded):
            raise TemplateError(f"cannot render template {_snippet(template, None)}: {raised}") from raised
        try:
            _ENV.handle_exception()  # re-raises with template line numbers in the traceback
        except Exception as error:
            raise _template_error(template, error, _template_lineno(error)) from error
        raise  # pragma: no cover - handle_exception always raises


def _xcom_ref(value: Mapping[str, Any]) -> XComRef | None:
    if len(value) != 1 or "__xcom__" not in value:
        return None
    ref = value["__xcom__"]
    if not isinstance(ref, Mapping) or not isinstance(ref.get("task_id"), str):
        raise TemplateError(
            f"malformed XCom reference {value!r}: expected {{'__xcom__': {{'task_id': ..., 'key': ...}}}}"
        )
    return XComRef(task_id=ref["task_id"], key=ref.get("key") or RETURN_VALUE)


def _pull(ref: XComRef, xcoms: Mapping[tuple[str, str], Any]) -> Any:
    try:
        return xcoms[(ref.task_id, ref.key)]
    except KeyError:
        if ref.key == RETURN_VALUE:
            # Airflow's XComArg.resolve: a task that returned None pushed nothing, and its
            # output resolves to None (so does the output of an upstream that did not succeed)
            return None
        raise TemplateError(
            f"task {ref.task_id!r} pushed no XCom {ref.key!r}: make sure it is upstream of this task "
            f"and returns (or pushes) a value, or stop using its output here"
        ) from None


def render_value(
    value: Any,
    context: Mapping[str, Any],
    xcoms: Mapping[tuple[str, str], Any],
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> Any:
    """Render a JSON-like value for a task's arguments.

    Strings are rendered as templates; lists, tuples and dicts are rendered element by
    element (dict keys are left alone, as in Airflow); a dict that is exactly
    ``{"__xcom__": {"task_id": t, "key": k}}`` (or an `XComRef`) is replaced by the XCom
    `xcoms[(t, k)]` -- a missing one raises `TemplateError` naming the task. Other values
    (numbers, booleans, None) are returned unchanged.
    """
    if isinstance(value, str):
        return render_template(value, context, limits)
    if isinstance(value, dict):
        ref = _xcom_ref(value)
        if ref is not None:
            return _pull(ref, xcoms)
        return {key: render_value(item, context, xcoms, limits) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, context, xcoms, limits) for item in value]
    if isinstance(value, tuple):
        return tuple(render_value(item, context, xcoms, limits) for item in value)
    if isinstance(value, XComRef):
        return _pull(value, xcoms)
    return value


# --- what a task process receives ---------------------------------------------------------


def task_environment(
    dag: DagSpec,
    task: TaskSpec,
    run: RunRecord,
    try_number: int,
    rendered_env: Mapping[str, str],
    base_env: Mapping[str, str],
) -> dict[str, str]:
    """The environment of a task's process, following Airflow's BashOperator.

    No `env` on the task: the daemon's `base_env`. With `env`: its rendered values alone,
    or `base_env` updated with them when the task sets `append_env`. Always added on top:
    AIRFLOW_CTX_{DAG_ID,TASK_ID,LOGICAL_DATE,DAG_RUN_ID,TRY_NUMBER} and the same values as
    ORCHESTRATOR_{DAG_ID,TASK_ID,LOGICAL_DATE,RUN_ID,TRY_NUMBER}.
    """
    if not task.env:
        env = dict(base_env)
    elif task.append_env:
        env = dict(base_env)
        env.update(rendered_env)
    else:
        env = dict(rendered_env)
    logical_date = run.logical_date.isoformat()
    tries = str(try_number)
    env["AIRFLOW_CTX_DAG_ID"] = env["ORCHESTRATOR_DAG_ID"] = dag.dag_id
    env["AIRFLOW_CTX_TASK_ID"] = env["ORCHESTRATOR_TASK_ID"] = task.task_id
    env["AIRFLOW_CTX_LOGICAL_DATE"] = env["ORCHESTRATOR_LOGICAL_DATE"] = logical_date
    env["AIRFLOW_CTX_DAG_RUN_ID"] = env["ORCHESTRATOR_RUN_ID"] = run.run_id
    env["AIRFLOW_CTX_TRY_NUMBER"] = env["ORCHESTRATOR_TRY_NUMBER"] = tries
    return env


def json_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a context (from `build_context`), sent to a Python task's worker.

    Keys: ds, ds_nodash, ts, ts_nodash, logical_date, data_interval_start and
    data_interval_end (ISO strings), run_id, dag_id, task_id, try_number, map_index,
    params, conf (the run's conf) and run_type.
    """
    run: RunRecord = context["dag_run"]
    ti: TaskInstanceContext = context["ti"]
    return {
        "ds": context["ds"],
        "ds_nodash": context["ds_nodash"],
        "ts": context["ts"],
        "ts_nodash": context["ts_nodash"],
        "logical_date": run.logical_date.isoformat(),
        "data_interval_start": run.data_interval_start.isoformat(),
        "data_interval_end": run.data_interval_end.isoformat(),
        "run_id": run.run_id,
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "try_number": ti.try_number,
        "map_index": ti.map_index,
        "params": context["params"],
        "conf": run.conf,
        "run_type": run.run_type,
    }
