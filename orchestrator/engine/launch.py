"""Turn a queued task instance into a LaunchRequest: render its templates, build its env and
its kind's payload.

Rendering happens when the task is queued, in the engine, so a template error fails the
try at once with a message in its log instead of reaching an executor. Which fields are
templates, and what payload they make, is the task kind's business (`orchestrator.core.kinds`).

Most templates are cheap by construction (no loops: see `orchestrator.core.template_limits`)
and render inline, in the event loop, in microseconds. A task with a template that can loop
is rendered by `RenderPool` instead: a small bounded pool of threads, each render under one
deadline for the whole try (`templates.render_timeout`), so a runaway template neither blocks
the loop nor runs on.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.core.kinds import RenderInput, get_kind
from orchestrator.core.model import TaskSpec
from orchestrator.core.records import TaskInstanceRecord
from orchestrator.core.template_limits import DEFAULT_LIMITS, Deadline, TemplateLimits, run_with_deadline
from orchestrator.core.templating import (
    build_context,
    is_cheap_template,
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
    limits: TemplateLimits = DEFAULT_LIMITS,
    xcoms: Mapping[tuple[str, str], Any] | None = None,
    *,
    asset_events: Mapping[str, Any] | None = None,
) -> LaunchRequest:
    """Render the task's templates for this try. Raises TemplateError on a bad template and
    UnknownTaskKind when no module registered the task's kind. `xcoms` (default: the run's)
    is what templates may pull; `asset_events` the run's `triggering_asset_events` (if any)."""
    spec = run.dag.spec
    kind = get_kind(task.kind)
    if xcoms is None:
        xcoms = run.xcoms
    context = build_context(spec, task, run.record, ti.try_number, xcoms, asset_events=asset_events)
    rendered_env = {name: render_template(value, context, limits) for name, value in task.env.items()}
    env = task_environment(spec, task, run.record, ti.try_number, rendered_env, base_env)
    if installation:
        env[TRY_TOKEN_VARIABLE] = try_token(installation, ti)
    rendered: dict[str, Any] = {
        name: render_value(task.args[name], context, xcoms, limits)
        for name in kind.template_fields
        if name in task.args
    }
    given = RenderInput(
        dag_id=spec.dag_id,
        dag_file=spec.fileloc,
        task_id=task.task_id,
        source_hash=spec.source_hash,
        render=lambda value: render_value(value, context, xcoms, limits),
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


def _template_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _template_strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _template_strings(item)


#: renders_inline's answers by task object (held, so that its id is not reused meanwhile)
_INLINE: dict[int, tuple[TaskSpec, bool]] = {}
_INLINE_KEPT = 4096


def renders_inline(task: TaskSpec, limits: TemplateLimits = DEFAULT_LIMITS) -> bool:
    """True if every template of the task is cheap by construction (rendered in the loop).
    Asked at every launch, so the answer is kept per task object (a DAG version's tasks)."""
    known = _INLINE.get(id(task))
    if known is not None and known[0] is task:
        return known[1]
    inline = _renders_inline(task, limits)
    if len(_INLINE) >= _INLINE_KEPT:
        _INLINE.clear()
    _INLINE[id(task)] = (task, inline)
    return inline


def _renders_inline(task: TaskSpec, limits: TemplateLimits) -> bool:
    if not all(is_cheap_template(value, limits) for value in task.env.values()):
        return False
    try:
        fields = get_kind(task.kind).template_fields
    except Exception:
        return True  # build_launch reports the unknown kind
    return all(
        is_cheap_template(template, limits)
        for name in fields
        if name in task.args
        for template in _template_strings(task.args[name])
    )


class RenderPool:
    """A few threads that render the tasks whose templates can loop, each under a deadline.

    Closing the pool (the daemon drains) stops the renders under way at their next check and
    starts no more: their tries stay queued, and the next start renders them again.
    """

    #: threads rendering at once; more tries wait in the pool's queue (their deadline starts
    #: when their render starts)
    THREADS = 2

    def __init__(self, limits: TemplateLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def _now(self) -> float:
        return math.inf if self._closed else time.monotonic()

    def render(
        self,
        run: LiveRun,
        task: TaskSpec,
        ti: TaskInstanceRecord,
        logs_dir: Path,
        base_env: Mapping[str, str],
        installation: str = "",
        *,
        asset_events: Mapping[str, Any] | None = None,
    ) -> asyncio.Future[LaunchRequest]:
        """`build_launch` on a pool thread; the future raises what build_launch raises, or
        `TemplateLimitExceeded` once templates.render_timeout has passed. Cancelled once the
        pool is closed."""
        loop = asyncio.get_running_loop()
        if self._closed:
            refused: asyncio.Future[LaunchRequest] = loop.create_future()
            refused.cancel()
            return refused
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="template-render")
        timeout = self.limits.render_timeout
        # the render's own limits set no deadline: the one below covers the whole try
        limits = replace(self.limits, render_timeout=None)
        xcoms = dict(run.xcoms)  # the loop adds XComs meanwhile: the thread reads a copy

        def work() -> LaunchRequest:
            def launch() -> LaunchRequest:
                return build_launch(
                    run, task, ti, logs_dir, base_env, installation, limits, xcoms, asset_events=asset_events
                )

            if timeout is None:
                return launch()
            return run_with_deadline(launch, Deadline(time.monotonic() + timeout, self._now, timeout))

        return loop.run_in_executor(self._pool, work)

    def close(self) -> None:
        """Stop the renders under way (at their next check) and take no more."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
