"""Turn a queued task instance into a LaunchRequest: render its templates, build its env.

Rendering happens when the task is queued, in the engine, so a template error fails the
try at once with a message in its log instead of reaching an executor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

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
from orchestrator.ports import LaunchRequest, PythonCall


def log_path_of(logs_dir: Path, ti: TaskInstanceRecord) -> Path:
    return task_log_path(logs_dir, ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number)


def build_launch(
    run: LiveRun, task: TaskSpec, ti: TaskInstanceRecord, logs_dir: Path, base_env: Mapping[str, str]
) -> LaunchRequest:
    """Render the task's templates for this try. Raises TemplateError on a bad template."""
    spec = run.dag.spec
    context = build_context(spec, task, run.record, ti.try_number, run.xcoms)
    rendered_env = {name: render_template(value, context) for name, value in task.env.items()}
    env = task_environment(spec, task, run.record, ti.try_number, rendered_env, base_env)
    if task.kind == "bash":
        bash_command, python, json_ctx = render_template(task.bash_command or "", context), None, {}
    else:
        bash_command = None
        python = PythonCall(
            dag_file=spec.fileloc,
            dag_id=spec.dag_id,
            task_id=task.task_id,
            args=list(render_value(list(task.op_args), context, run.xcoms)),
            kwargs=dict(render_value(dict(task.op_kwargs), context, run.xcoms)),
        )
        json_ctx = json_context(context)
    return LaunchRequest(
        key=ti.key,
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        try_number=ti.try_number,
        kind=task.kind,
        env=env,
        log_path=log_path_of(logs_dir, ti),
        bash_command=bash_command,
        python=python,
        cwd=task.cwd,
        timeout=task.execution_timeout,
        do_xcom_push=task.do_xcom_push,
        context=json_ctx,
    )
