"""Run progress: how the task instances of running runs move, one event at a time.

Every handler here is synchronous. It changes the in-memory runs through the pure state
machine and resolver, collects the rows it changed in one `Batch`, and hands them to the
group-commit writer together with the action to take once they are durable (start the
tasks it queued). So a finished task and the queueing of its ready children are one
transaction, nothing is acted on before it is committed, and no loop ever polls.

What a task instance goes through here: ready (resolver) → scheduled (waiting for
max_active_tasks) or queued (rendered, routed to an executor) → running → success, or
failed → up_for_retry (a timer) → queued again, or failed for good. A run whose instances
are all finished is settled, and its DAG's admission is told a slot is free.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from orchestrator.core.kinds import UnknownTaskKind
from orchestrator.core.records import (
    ChangeSet,
    NewAssetEvent,
    RunRecord,
    TaskInstanceRecord,
    TaskKey,
    XComRecord,
    evolve_ti,
)
from orchestrator.core.resolver import Resolution, resolve_after, run_outcome
from orchestrator.core.retry import next_retry_at, retry_jitter_key, should_retry
from orchestrator.core.states import ACTIVE_TASK_STATES, FINISHED_TASK_STATES, RunState, TaskState
from orchestrator.core.template_limits import DEFAULT_LIMITS, TemplateLimitExceeded, TemplateLimits
from orchestrator.core.templating import TemplateError
from orchestrator.core.transitions import check_run_transition, check_task_transition
from orchestrator.engine.dispatch import Dispatcher, NoExecutorForTask
from orchestrator.engine.launch import RenderPool, build_launch, renders_inline
from orchestrator.engine.live import Batch, DagSlots, LiveRun, TiId
from orchestrator.engine.supervision import Supervisor
from orchestrator.engine.writer import GroupCommitWriter
from orchestrator.ports import (
    NO_XCOM,
    Clock,
    LaunchRequest,
    TaskLogs,
    TaskOutcome,
    TimerHandle,
    Timers,
    TryLog,
)

log = logging.getLogger("orchestrator.engine")

#: how many settled runs `repair_refused` can still correct
SETTLED_KEPT = 256

#: checks a value a task returned before it is committed: None if it can be stored, else why not
ValueCheck = Callable[[Any], str | None]


class RunProgress:
    """The runs this daemon drives, and every change to their task instances."""

    def __init__(
        self,
        *,
        clock: Clock,
        timers: Timers,
        writer: GroupCommitWriter,
        supervisor: Supervisor,
        logs_dir: Path,
        task_logs: TaskLogs,
        base_env: Mapping[str, str],
        daemon_id: str,
        hostname: str,
        check_value: ValueCheck | None = None,
        template_limits: TemplateLimits = DEFAULT_LIMITS,
    ) -> None:
        self._clock = clock
        self._timers = timers
        self._writer = writer
        self._supervisor = supervisor
        self._logs_dir = logs_dir
        self._task_logs = task_logs
        self._base_env = dict(base_env)
        self._daemon_id = daemon_id
        self._hostname = hostname
        self._check_value = check_value
        self._limits = template_limits
        #: renders the tries whose templates can loop, off the event loop
        self.render_pool = RenderPool(template_limits)
        writer.repair_refused = self.repair_refused
        self.runs: dict[int, LiveRun] = {}
        self.slots: dict[str, DagSlots] = {}
        self.dispatcher: Dispatcher | None = None
        #: identifies this database's tries in their processes' environment (see launch.try_token)
        self.installation = ""
        self.draining = False
        self._retry_timers: dict[TaskKey, TimerHandle] = {}
        #: the runs settled last, should a commit refused later change their outcome
        self._settled: OrderedDict[int, RunRecord] = OrderedDict()
        #: the `triggering_asset_events` of asset-triggered runs, by run pk (set by the asset
        #: trigger when it creates a run, and at recovery; dropped when the run settles)
        self.triggering_asset_events: dict[int, Mapping[str, Any]] = {}
        #: runs settled in memory whose outcome is not committed yet (see `held_runs`)
        self.settling: set[int] = set()
        #: runs this replica let go (another one owns them now): their pending launches are dropped
        self._dropped: OrderedDict[int, None] = OrderedDict()
        #: told when a run of a DAG finishes, so that admission can start the next one
        #: called when a run reaches its outcome (before that is committed: `batch` carries it)
        self.on_run_finished: Callable[[RunRecord, Batch], None] = lambda finished, batch: None

    def slots_of(self, dag_id: str) -> DagSlots:
        slots = self.slots.get(dag_id)
        if slots is None:
            slots = self.slots[dag_id] = DagSlots()
        return slots

    # --- executor events ------------------------------------------------------------------

    def task_started(self, key: TaskKey, try_number: int, external_id: str) -> None:
        live, ti = self._lookup(key, try_number)
        if live is None or ti is None or ti.state != TaskState.QUEUED:
            return
        batch = Batch()
        self.set_ti(
            live,
            ti,
            batch,
            state=TaskState.RUNNING,
            start_date=self._clock.now(),
            external_id=external_id,
            daemon_id=self._daemon_id,
            hostname=self._hostname,
        )
        # nothing is acted on because a task started: the row rides the next commit
        self._writer.submit(batch.changes, lazy=True)

    def task_finished(self, outcome: TaskOutcome) -> None:
        live, ti = self._lookup(outcome.key, outcome.try_number)
        if live is None or ti is None or ti.state not in ACTIVE_TASK_STATES:
            return
        now = self._clock.now()
        batch = Batch()
        value = outcome.xcom_value
        pushes = outcome.success and value is not NO_XCOM and value is not None
        refusal = self._check_value(value) if pushes and self._check_value is not None else None
        if outcome.success and refusal is None:
            start = ti.start_date or now
            self.set_ti(
                live,
                ti,
                batch,
                state=TaskState.SUCCESS,
                start_date=start,
                end_date=now,
                duration=(now - start).total_seconds(),
                exit_code=outcome.exit_code,
            )
            # Airflow pushes no XCom for a None return value (and none is needed to pull None)
            if pushes:
                live.xcoms[(ti.task_id, "return_value")] = value
                batch.changes.xcoms.append(
                    XComRecord(live.pk, ti.task_id, ti.map_index, "return_value", value)
                )
            task = live.dag.tasks.get(ti.task_id)
            if task is not None and task.outlets:  # recorded in the transaction of the success
                batch.changes.asset_events.extend(
                    NewAssetEvent(uri, now, {}, ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
                    for uri in task.outlets
                )
        else:
            error = outcome.error if refusal is None else refusal
            if refusal is not None:
                self.note(ti, now, f"try {ti.try_number} failed: {refusal}")
            log.info("task %s of %s/%s failed: %s", ti.task_id, ti.dag_id, ti.run_id, error)
            self.fail_try(live, ti, batch, now, exit_code=outcome.exit_code)
        self.after_change(live, [ti.task_id], batch)
        self.commit(batch)

    def _lookup(self, key: TaskKey, try_number: int) -> tuple[LiveRun | None, TaskInstanceRecord | None]:
        live = self.runs.get(key.run_pk)
        ti = live.get(key) if live is not None else None
        if ti is None or ti.try_number != try_number:
            log.warning("ignoring a stale executor event for %s try %s", key, try_number)
            return None, None
        return live, ti

    def handler_failed(self, key: TaskKey, what: str, exc: BaseException, trace: str) -> None:
        """An engine handler raised halfway through an event about `key`: fail that task
        instance with the error in its log. If even that is impossible, stop the daemon."""
        log.error("the engine failed while handling %s of %s:\n%s", what, key, trace)
        live = self.runs.get(key.run_pk)
        ti = live.get(key) if live is not None else None
        if live is None or ti is None or ti.state in FINISHED_TASK_STATES:
            return
        try:
            now = self._clock.now()
            self.note(ti, now, f"try {ti.try_number} failed: {what} failed: {type(exc).__name__}: {exc}")
            batch = Batch()
            if ti.state in (TaskState.QUEUED, TaskState.RUNNING):
                # like a failed launch: the task's retries apply (an API error may pass)
                self.fail_try(live, ti, batch, now)
            else:
                # the handler of a waiting task (its retry timer) failed: do not loop on it
                if ti.state != TaskState.UP_FOR_RETRY:
                    ti = self.set_ti(live, ti, batch, state=TaskState.QUEUED)
                self.set_ti(live, ti, batch, state=TaskState.FAILED, end_date=now)
            self.after_change(live, [ti.task_id], batch)
            self.commit(batch)
        except Exception as second:
            self._supervisor.fatal(
                f"could not fail {key} after an internal error while handling {what} ({exc!r}): {second!r}"
            )

    # --- state changes ------------------------------------------------------------------

    def set_ti(
        self, live: LiveRun, ti: TaskInstanceRecord, batch: Batch, *, by_user: bool = False, **fields: Any
    ) -> TaskInstanceRecord:
        """Change one task instance in memory and put its row in `batch` (`by_user`: a person
        marks it, see `check_task_transition`)."""
        new_state: TaskState = fields.get("state", ti.state)
        check_task_transition(ti.state, new_state, by_user=by_user)
        new = evolve_ti(ti, **fields)
        live.tis[(ti.task_id, ti.map_index)] = new
        if ti.map_index < 0:
            live.states[ti.task_id] = new_state
        else:
            live.refresh_task_state(ti.task_id)
        batch.changes.tasks.append(new)
        was_finished = ti.state in FINISHED_TASK_STATES
        if not was_finished and new_state in FINISHED_TASK_STATES:
            live.unfinished -= 1
        elif was_finished and new_state not in FINISHED_TASK_STATES:
            live.unfinished += 1
        was_active = ti.state in ACTIVE_TASK_STATES
        if was_active != (new_state in ACTIVE_TASK_STATES):
            self.slots_of(ti.dag_id).active_tasks += -1 if was_active else 1
        return new

    def note(self, ti: TaskInstanceRecord, when: datetime, message: str) -> None:
        """A line of the daemon's own in the log of `ti`'s current try."""
        try:
            log_of = TryLog(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number)
            self._task_logs.append(log_of, f"[{when.isoformat()}] orchestrator: {message}\n")
        except OSError as exc:
            log.warning("cannot write to the log of %s: %s (%s)", ti.key, exc, message)

    def fail_try(
        self,
        live: LiveRun,
        ti: TaskInstanceRecord,
        batch: Batch,
        now: datetime,
        *,
        exit_code: int | None = None,
    ) -> None:
        """A try failed: up_for_retry with a timer if tries are left, else failed."""
        task = live.dag.tasks.get(ti.task_id)
        duration = (now - ti.start_date).total_seconds() if ti.start_date is not None else None
        if task is not None and should_retry(ti.try_number, ti.max_tries):
            jitter_key = retry_jitter_key(ti.dag_id, ti.task_id, live.record.logical_date, ti.try_number)
            due = next_retry_at(task, ti.try_number, now, jitter_key)
            self.set_ti(
                live,
                ti,
                batch,
                state=TaskState.UP_FOR_RETRY,
                end_date=now,
                duration=duration,
                next_retry_at=due,
                exit_code=exit_code,
            )
            self.arm_retry(ti.key, due)
        else:
            self.set_ti(
                live, ti, batch, state=TaskState.FAILED, end_date=now, duration=duration, exit_code=exit_code
            )

    def arm_retry(self, key: TaskKey, due: datetime) -> None:
        previous = self._retry_timers.pop(key, None)
        if previous is not None:
            previous.cancel()
        self._retry_timers[key] = self._timers.call_at(due, partial(self._guarded_retry_due, key))

    def _guarded_retry_due(self, key: TaskKey) -> None:
        try:
            self._retry_due(key)
        except Exception as exc:
            self.handler_failed(key, "a retry coming due", exc, traceback.format_exc())

    def _retry_due(self, key: TaskKey) -> None:
        self._retry_timers.pop(key, None)
        live = self.runs.get(key.run_pk)
        ti = live.get(key) if live is not None else None
        if self.draining or live is None or ti is None or ti.state != TaskState.UP_FOR_RETRY:
            return
        batch = Batch()
        finished = [] if self.make_ready(live, (ti.task_id, ti.map_index), batch) else [ti.task_id]
        self.after_change(live, finished, batch)
        self.commit(batch)

    def cancel_timers(self) -> None:
        for handle in self._retry_timers.values():
            handle.cancel()
        self._retry_timers.clear()

    def apply_resolution(self, live: LiveRun, resolution: Resolution, batch: Batch) -> None:
        """Apply a resolver verdict; tasks that fail while being queued are resolved in turn."""
        now = self._clock.now()
        while True:
            for task_id in resolution.skip:
                for ti in live.instances(task_id):
                    if ti.state not in FINISHED_TASK_STATES:
                        self.set_ti(live, ti, batch, state=TaskState.SKIPPED, end_date=now)
            for task_id in resolution.upstream_failed:
                for ti in live.instances(task_id):
                    if ti.state not in FINISHED_TASK_STATES:
                        self.set_ti(live, ti, batch, state=TaskState.UPSTREAM_FAILED, end_date=now)
            failed_at_launch = []
            for task_id in resolution.run:
                for ti in live.instances(task_id):
                    if ti.state == TaskState.NONE and not self.make_ready(
                        live, (task_id, ti.map_index), batch
                    ):
                        failed_at_launch.append(task_id)
            if not failed_at_launch:
                return
            resolution = resolve_after(live.dag.graph, live.states, failed_at_launch)

    def after_change(self, live: LiveRun, finished: Iterable[str], batch: Batch) -> None:
        """Resolve what the finished tasks unblock, refill capacity, settle the run."""
        finished = list(finished)
        if finished:
            self.apply_resolution(live, resolve_after(live.dag.graph, live.states, finished), batch)
        self.fill_capacity(live.record.dag_id, batch)
        self.settle_run(live, batch)

    def make_ready(self, live: LiveRun, ti_id: TiId, batch: Batch) -> bool:
        """Dependencies are met: queue now or wait for max_active_tasks. False if the try failed
        at once (a template error) and the task is now finished."""
        slots = self.slots_of(live.record.dag_id)
        if slots.active_tasks < live.dag.spec.max_active_tasks:
            return self.queue(live, ti_id, batch)
        ti = live.tis[ti_id]
        if ti.state != TaskState.SCHEDULED:
            self.set_ti(live, ti, batch, state=TaskState.SCHEDULED)
        slots.waiting.append((live.pk, ti_id))
        return True

    def queue(self, live: LiveRun, ti_id: TiId, batch: Batch) -> bool:
        ti = live.tis[ti_id]
        now = self._clock.now()
        ti = self.set_ti(
            live,
            ti,
            batch,
            state=TaskState.QUEUED,
            try_number=ti.try_number + 1,
            queued_at=now,
            start_date=None,
            end_date=None,
            duration=None,
            next_retry_at=None,
            external_id=None,
            exit_code=None,
        )
        return self.prepare_launch(live, ti, batch, now)

    def prepare_launch(self, live: LiveRun, ti: TaskInstanceRecord, batch: Batch, now: datetime) -> bool:
        """Build the try's launch request, or fail the try at once with the reason in its log.
        False if the task is now finished."""
        task = live.dag.tasks[ti.task_id]
        try:
            if self.dispatcher is None:
                raise NoExecutorForTask("no executor is attached to the engine")
            executor = self.dispatcher.route(task)
            if not renders_inline(task, self._limits):
                self._render_off_loop(live, task, ti, executor)
                return True
            request = build_launch(
                live,
                task,
                ti,
                self._logs_dir,
                self._base_env,
                self.installation,
                self._limits,
                asset_events=self.triggering_asset_events.get(live.pk),
            )
        except (TemplateError, NoExecutorForTask, UnknownTaskKind) as exc:
            self.note(ti, now, f"try {ti.try_number} failed: {exc}")
            self.fail_try(live, ti, batch, now)
            return live.states[ti.task_id] not in FINISHED_TASK_STATES
        batch.launches.append((executor, request))
        return True

    def _render_off_loop(self, live: LiveRun, task: Any, ti: TaskInstanceRecord, executor: str) -> None:
        """Render on the render pool; the try launches (or fails) when the render is done. Its
        `queued` row is in the batch being built now, so it is committed before the launch."""
        future = self.render_pool.render(
            live,
            task,
            ti,
            self._logs_dir,
            self._base_env,
            self.installation,
            asset_events=self.triggering_asset_events.get(live.pk),
        )
        future.add_done_callback(partial(self._rendered, ti.key, ti.try_number, executor))

    def _rendered(
        self, key: TaskKey, try_number: int, executor: str, future: asyncio.Future[LaunchRequest]
    ) -> None:
        try:
            self._launch_rendered(key, try_number, executor, future)
        except Exception as exc:
            self.handler_failed(key, "the end of a template render", exc, traceback.format_exc())

    def _launch_rendered(
        self, key: TaskKey, try_number: int, executor: str, future: asyncio.Future[LaunchRequest]
    ) -> None:
        if future.cancelled():
            return
        if self.draining:
            future.exception()  # retrieved: the render was stopped by the drain, not by its template
            return  # the try stays queued: the next start renders it again
        live, ti = self._lookup(key, try_number)
        if live is None or ti is None or ti.state != TaskState.QUEUED:
            return
        batch = Batch()
        try:
            request = future.result()
        except (TemplateError, TemplateLimitExceeded, UnknownTaskKind) as exc:
            now = self._clock.now()
            self.note(ti, now, f"try {ti.try_number} failed: {exc}")
            log.info("task %s of %s/%s failed: %s", ti.task_id, ti.dag_id, ti.run_id, exc)
            self.fail_try(live, ti, batch, now)
            self.after_change(live, [ti.task_id], batch)
            self.commit(batch)
            return
        batch.launches.append((executor, request))
        self.commit(batch)

    def repair_refused(self, changes: ChangeSet, error: Exception) -> ChangeSet | None:
        """The database refused `changes` (the writer's hook). If they hold XComs, the likely
        culprits: the same rows without them, each try that pushed one recorded as failed (here
        too, with the reason in its log). A run settled as a success by the same changes is
        recorded failed (so is one settled already). Tasks whose trigger rules were already
        resolved by the refused success keep that resolution. None: not repairable."""
        if not changes.xcoms:
            return None
        refused = {(x.run_pk, x.task_id, x.map_index) for x in changes.xcoms}
        now = self._clock.now()
        reason = f"the database refused this try's return value ({error!r}); the try is failed"
        tasks = []
        for row in changes.tasks:
            if (row.run_pk, row.task_id, row.map_index) in refused and row.state == TaskState.SUCCESS:
                row = evolve_ti(row, state=TaskState.FAILED)
                self._record_refused_value(row, now, reason)
            tasks.append(row)
        runs = [
            replace(run, state=RunState.FAILED)
            if run.pk in {pk for pk, _, _ in refused} and run.state == RunState.SUCCESS
            else run
            for run in changes.runs
        ]
        # a failed try updated no asset: only the outlets of the successes that stay are recorded
        failed = {(t.dag_id, t.run_id, t.task_id, t.map_index) for t in tasks if t.state == TaskState.FAILED}
        events = [
            event
            for event in changes.asset_events
            if (event.source_dag_id, event.source_run_id, event.source_task_id, event.source_map_index)
            not in failed
        ]
        return ChangeSet(tasks=tasks, runs=runs, xcoms=[], asset_events=events)

    def _record_refused_value(self, failed: TaskInstanceRecord, now: datetime, reason: str) -> None:
        self.note(failed, now, reason)
        log.error("task %s of %s/%s failed: %s", failed.task_id, failed.dag_id, failed.run_id, reason)
        live = self.runs.get(failed.run_pk)
        if live is None:
            # settled in memory already (the outcome was decided before the commit was refused):
            # a success becomes a failure, committed after the rows that settled it
            settled = self._settled.get(failed.run_pk)
            if settled is not None and settled.state == RunState.SUCCESS:
                self._settled[failed.run_pk] = corrected = replace(settled, state=RunState.FAILED)
                self._writer.submit(ChangeSet(runs=[corrected]))
            return
        live.xcoms.pop((failed.task_id, "return_value"), None)
        current = live.tis.get((failed.task_id, failed.map_index))
        if (
            current is not None
            and current.try_number == failed.try_number
            and current.state == TaskState.SUCCESS
        ):
            # not a transition the state machine allows (success is final): the success was
            # never stored, so the outcome the database will hold is this failure
            live.tis[(failed.task_id, failed.map_index)] = evolve_ti(current, state=TaskState.FAILED)
            if failed.map_index < 0:
                live.states[failed.task_id] = TaskState.FAILED
            else:
                live.refresh_task_state(failed.task_id)

    def fill_capacity(self, dag_id: str, batch: Batch) -> None:
        slots = self.slots_of(dag_id)
        while slots.waiting:
            run_pk, ti_id = slots.waiting[0]
            live = self.runs.get(run_pk)
            ti = live.tis.get(ti_id) if live is not None else None
            if live is None or ti is None or ti.state != TaskState.SCHEDULED:
                slots.waiting.popleft()
                continue
            if slots.active_tasks >= live.dag.spec.max_active_tasks:
                return
            slots.waiting.popleft()
            if not self.queue(live, ti_id, batch):
                self.after_change(live, [ti_id[0]], batch)

    def settle_run(self, live: LiveRun, batch: Batch, outcome: RunState | None = None) -> None:
        """If every task is finished, record the run's outcome and tell admission. `outcome`:
        the one a user set (marking the run), instead of the one its task states give."""
        if live.unfinished > 0 or live.pk not in self.runs:
            return
        by_user = outcome is not None
        if outcome is None:
            outcome = run_outcome(live.dag.graph, live.states) or RunState.SUCCESS
        check_run_transition(live.record.state, outcome, by_user=by_user)
        finished = replace(live.record, state=outcome, end_date=self._clock.now())
        batch.changes.runs.append(finished)
        del self.runs[live.pk]
        # not in memory any more, not committed yet: no takeover pass may take it for unheld
        self.settling.add(live.pk)
        batch.settled.append(live.pk)
        if self.triggering_asset_events:
            self.triggering_asset_events.pop(live.pk, None)
        self._settled[live.pk] = finished
        if len(self._settled) > SETTLED_KEPT:
            self._settled.popitem(last=False)
        log.info("run %s of %s finished: %s", finished.run_id, finished.dag_id, outcome.value)
        self.slots_of(finished.dag_id).active_runs.discard(live.pk)
        self.on_run_finished(finished, batch)

    # --- holding and letting runs go ---------------------------------------------------------

    def hold_run(self, live: LiveRun) -> DagSlots:
        """Drive this run from now on (admitted, taken over or recovered); its DAG's slots."""
        self._dropped.pop(live.pk, None)
        self.runs[live.pk] = live
        slots = self.slots_of(live.record.dag_id)
        slots.active_runs.add(live.pk)
        return slots

    def drop_runs(self, run_pks: Iterable[int], why: str) -> int:
        """Another replica drives these runs now (their commit was fenced), or this replica lost
        its lease: forget them and stop the work of theirs this replica can reach. Nothing is
        written: their rows are the new owner's. Returns how many were held."""
        now = self._clock.now()
        dropped = 0
        for pk in run_pks:
            self._dropped[pk] = None
            while len(self._dropped) > SETTLED_KEPT:
                self._dropped.popitem(last=False)
            live = self.runs.pop(pk, None)
            if live is None:
                continue
            dropped += 1
            slots = self.slots_of(live.record.dag_id)
            slots.active_runs.discard(pk)
            self.triggering_asset_events.pop(pk, None)
            for ti in live.tis.values():
                timer = self._retry_timers.pop(ti.key, None)
                if timer is not None:
                    timer.cancel()
                if ti.state in ACTIVE_TASK_STATES:
                    slots.active_tasks -= 1
                    self.note(
                        ti, now, f"this replica let the run go ({why}): try {ti.try_number} is stopped here"
                    )
                    if self.dispatcher is not None:
                        self.dispatcher.stop(ti.key)
            log.warning("run %s of %s let go: %s", live.record.run_id, live.record.dag_id, why)
        return dropped

    # --- committing and acting --------------------------------------------------------------

    def after_commits(self, callback: Callable[[], None]) -> None:
        """Call `callback` once everything submitted to the writer so far is committed."""
        self._writer.submit(ChangeSet(), callback)

    def held_runs(self) -> list[int]:
        """The runs this replica drives: in memory, or settled with the outcome on its way."""
        return [*self.runs, *self.settling]

    def _committed_settles(self, runs: list[int]) -> None:
        for pk in runs:
            self.settling.discard(pk)

    def commit(self, batch: Batch) -> None:
        if batch.settled:
            self._writer.submit(batch.changes, partial(self._after_settles, batch))
            self._prepare_logs(batch.launches)
            return
        if batch.stops:
            self._writer.submit(batch.changes, partial(self._stop_and_dispatch, batch.stops, batch.launches))
            self._prepare_logs(batch.launches)
        elif batch.launches:
            self._writer.submit(batch.changes, partial(self._dispatch, batch.launches))
            # runs after the writer has sent the commit: file creation overlaps the round trip
            asyncio.get_running_loop().call_soon(
                self._task_logs.prepare, [request for _, request in batch.launches]
            )
        elif batch.changes:
            self._writer.submit(batch.changes)

    def _prepare_logs(self, launches: list[tuple[str, LaunchRequest]]) -> None:
        if launches:
            asyncio.get_running_loop().call_soon(
                self._task_logs.prepare, [request for _, request in launches]
            )

    def _after_settles(self, batch: Batch) -> None:
        self._committed_settles(batch.settled)
        self._stop_and_dispatch(batch.stops, batch.launches)

    def _stop_and_dispatch(self, stops: list[TaskKey], launches: list[tuple[str, LaunchRequest]]) -> None:
        """After the commit that marked or cleared them: stop these tries' work, then launch."""
        if self.dispatcher is not None:
            for key in stops:
                self.dispatcher.stop(key)
        self._dispatch(launches)

    def _dispatch(self, launches: list[tuple[str, LaunchRequest]]) -> None:
        """Runs after the commit that queued these tasks. While draining, queued tasks stay
        queued in the store and are started by the next daemon."""
        if self.draining or self.dispatcher is None:
            return
        for executor, request in launches:
            if self._dropped and request.key.run_pk in self._dropped:
                continue  # another replica drives its run now
            try:
                self.dispatcher.submit(executor, request)
            except Exception as exc:
                self.handler_failed(
                    request.key, f"the launch on executor {executor!r}", exc, traceback.format_exc()
                )
