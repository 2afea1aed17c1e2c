"""Turn a queued task instance into a LaunchRequest: render its templates, build its env and
its kind's payload.

Rendering happens when the task is queued, in the engine, so a template error fails the
try at once with a message in its log instead of reaching an executor. Which fields are
templates, and what payload they make, is the task kind's business (`orchestrator.core.kinds`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.core.kinds import RenderInput, get_kind
from orchestrator.core.model import TaskSpec
from orchestrator.core.records import TaskInstanceRecord
from orchestrator.core.templating import (
    build_context,
    json_context,
    render_template,
    render_value,
    task_environment,
)
from orchestrator.engine.live import LiveRun
from orchestrator.logpaths import task_log_path
from orchestrator.ports import LaunchRequest

#: the variable that identifies a try's processes for certain after a restart (read back in /proc)
TRY_TOKEN_VARIABLE = "ORCHESTRATOR_TRY_TOKEN"


def log_path_of(logs_dir: Path, ti: TaskInstanceRecord) -> Path:
    return task_log_path(logs_dir, ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number)


def try_token(installation: str, ti: TaskInstanceRecord) -> str:
    """A value only this try's processes carry: the database's installation id and the try's key."""
    return f"{installation}:{ti.run_pk}:{ti.map_index}:{ti.try_number}:{ti.task_id}"


def build_launch(
    run: LiveRun,
    task: TaskSpec,
    ti: TaskInstanceRecord,
    logs_dir: Path,
    base_env: Mapping[str, str],
    installation: str = "",
) -> LaunchRequest:
    """Render the task's templates for this try. Raises TemplateError on a bad template and
    UnknownTaskKind when no module registered the task's kind."""
    spec = run.dag.spec
    kind = get_kind(task.kind)
    context = build_context(spec, task, run.record, ti.try_number, run.xcoms)
    rendered_env = {name: render_template(value, context) for name, value in task.env.items()}
    env = task_environment(spec, task, run.record, ti.try_number, rendered_env, base_env)
    if installation:
        env[TRY_TOKEN_VARIABLE] = try_token(installation, ti)
    xcoms = run.xcoms
    rendered: dict[str, Any] = {
        name: render_value(task.args[name], context, xcoms)
        for name in kind.template_fields
        if name in task.args
    }
    given = RenderInput(
        dag_id=spec.dag_id,
        dag_file=spec.fileloc,
        task_id=task.task_id,
        source_hash=spec.source_hash,
        render=lambda value: render_value(value, context, xcoms),
        json_context=lambda: json_context(context),
    )
    return LaunchRequest(
        key=ti.key,
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        try_number=ti.try_number,
        payload=kind.payload(task.args, rendered, given),
        env=env,
        log_path=log_path_of(logs_dir, ti),
        cwd=task.cwd,
        timeout=task.execution_timeout,
        do_xcom_push=task.do_xcom_push,
    )
