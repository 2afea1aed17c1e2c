"""The scheduler: every event that changes a run goes through here.

Events are a run triggered, a task started, a task finished, a retry coming due. Each
handler is synchronous: it changes the in-memory runs through the pure state machine and
resolver, collects the rows it changed in one `ChangeSet`, and hands them to the group
commit writer together with the action to take once they are durable (start the tasks it
queued). So a finished task and the queueing of its ready children are one transaction,
nothing is acted on before it is committed, and no loop ever polls between tasks.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from orchestrator.core.model import DagSpec, TaskSpec
from orchestrator.core.records import (
    ChangeSet,
    DagRecord,
    NewRun,
    NewTaskInstance,
    RunRecord,
    TaskInstanceRecord,
    TaskKey,
    XComRecord,
    evolve_ti,
)
from orchestrator.core.resolver import Resolution, resolve, resolve_after, run_outcome
from orchestrator.core.retry import next_retry_at, retry_jitter_key, should_retry
from orchestrator.core.states import ACTIVE_TASK_STATES, FINISHED_TASK_STATES, RunState, TaskState
from orchestrator.core.templating import TemplateError
from orchestrator.core.transitions import check_run_transition, check_task_transition
from orchestrator.engine.launch import build_launch, log_path_of
from orchestrator.engine.live import DagSlots, LiveRun
from orchestrator.engine.registry import DagRegistry, LoadedDag
from orchestrator.engine.writer import GroupCommitWriter
from orchestrator.errors import DagNotFound, InvalidRequest, ShuttingDown
from orchestrator.ports import NO_XCOM, ActiveRun, Clock, Executor, LaunchRequest, StateStore, TaskOutcome
from orchestrator.tasklog import append_daemon_note, prepare_logs

log = logging.getLogger("orchestrator.engine")

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.~:+-]+$")
OPERATOR_NAMES = {"bash": "BashOperator", "python": "PythonOperator"}


@dataclass(slots=True)
class _Batch:
    """What one event changed: rows to commit, tasks to launch once committed."""

    changes: ChangeSet = field(default_factory=ChangeSet)
    launches: list[LaunchRequest] = field(default_factory=list)


class Scheduler:
    """Drives runs from trigger to outcome. Implements ExecutorEvents and the API's EngineApi."""

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        registry: DagRegistry,
        logs_dir: Path,
        daemon_id: str,
        hostname: str,
        base_env: Mapping[str, str],
    ) -> None:
        self._store = store
        self._clock = clock
        self.registry = registry
        self._logs_dir = logs_dir
        self._daemon_id = daemon_id
        self._hostname = hostname
        self._base_env = dict(base_env)
        self._writer = GroupCommitWriter(store)
        self._executor: Executor | None = None
        self._runs: dict[int, LiveRun] = {}
        self._slots: dict[str, DagSlots] = {}
        self._ready = False
        self._draining = False
        self._retry_timers: dict[TaskKey, asyncio.TimerHandle] = {}
        #: DAGs whose new runs wait in `queued` (Airflow's pause); runs already running go on
        self._paused: set[str] = set()

    # --- wiring ---------------------------------------------------------------------

    @property
    def writer(self) -> GroupCommitWriter:
        return self._writer

    def attach_executor(self, executor: Executor) -> None:
        self._executor = executor

    def is_ready(self) -> bool:
        return self._ready and not self._draining

    def active_run_count(self) -> int:
        return len(self._runs)

    # --- triggering -----------------------------------------------------------------

    async def trigger_run(
        self,
        dag_id: str,
        *,
        run_id: str | None,
        conf: dict[str, Any],
        logical_date: datetime | None,
        run_type: str = "manual",
    ) -> tuple[RunRecord, bool]:
        """Create a run (unique on dag_id + run_id) and start it if max_active_runs allows."""
        if self._draining:
            raise ShuttingDown()
        loaded = self.registry.get(dag_id)
        if loaded is None:
            raise DagNotFound(
                f"DAG {dag_id!r} is not loaded: check `orchestrator dags list` and `orchestrator dags errors`"
            )
        if not isinstance(conf, dict):
            raise InvalidRequest("conf must be a JSON object")
        now = self._clock.now()
        when = logical_date or now
        if logical_date is not None and logical_date.tzinfo is None:
            raise InvalidRequest("logical_date must include a timezone, e.g. 2026-01-01T00:00:00+00:00")
        chosen_run_id = run_id or f"{run_type}__{when.isoformat()}"
        if not RUN_ID_PATTERN.match(chosen_run_id) or len(chosen_run_id) > 250:
            raise InvalidRequest(
                f"dag_run_id {chosen_run_id!r} is invalid: use at most 250 letters, digits and _.~:+-"
            )
        new_run = NewRun(
            dag_id=dag_id,
            run_id=chosen_run_id,
            run_type=run_type,
            conf=conf,
            logical_date=when,
            data_interval_start=when,
            data_interval_end=when,
            queued_at=now,
            external_trigger=True,
        )
        tasks = [
            NewTaskInstance(task.task_id, OPERATOR_NAMES[task.kind], task.max_tries)
            for task in loaded.spec.tasks
        ]
        record, created = await self._store.create_run(new_run, tasks)
        if created:
            log.info("run %s of %s created (%s)", record.run_id, dag_id, run_type)
            await self._refresh_paused([dag_id])
            self._admit(record, loaded)
        return record, created

    async def set_paused(self, dag_id: str, is_paused: bool) -> DagRecord | None:
        """Pause or unpause a DAG; unpausing starts the runs that waited while it was paused."""
        record = await self._store.set_dag_paused(dag_id, is_paused)
        if record is None:
            return None
        if not is_paused and dag_id in self._paused:
            self._paused.discard(dag_id)
            batch = _Batch()
            self._start_waiting_runs(dag_id, batch)
            self._commit(batch)
        elif is_paused:
            self._paused.add(dag_id)
        log.info("DAG %s %s", dag_id, "paused" if is_paused else "unpaused")
        return record

    async def _refresh_paused(self, dag_ids: Iterable[str]) -> None:
        """Read whether these DAGs are paused (the API and other daemons may have changed it)."""
        wanted = set(dag_ids)
        if wanted:
            paused = await self._store.paused_dag_ids(sorted(wanted))
            self._paused = (self._paused - wanted) | paused

    def _admit(
        self, record: RunRecord, loaded: LoadedDag, tis: list[TaskInstanceRecord] | None = None
    ) -> None:
        slots = self._slots_of(record.dag_id)
        if record.dag_id not in self._paused and len(slots.active_runs) < loaded.spec.max_active_runs:
            batch = _Batch()
            self._start_run(record, loaded, tis, batch)
            self._commit(batch)
        else:
            slots.queued_runs.append((record, loaded, tis))
            why = "the DAG is paused" if record.dag_id in self._paused else "max_active_runs reached"
            log.info("run %s of %s waits: %s", record.run_id, record.dag_id, why)

    def _start_waiting_runs(self, dag_id: str, batch: _Batch) -> None:
        """Start held runs of a DAG while it is not paused and max_active_runs allows."""
        slots = self._slots_of(dag_id)
        while slots.queued_runs and dag_id not in self._paused:
            record, loaded, tis = slots.queued_runs[0]
            if len(slots.active_runs) >= loaded.spec.max_active_runs:
                return
            slots.queued_runs.popleft()
            self._start_run(record, loaded, tis, batch)

    def _start_run(
        self, record: RunRecord, loaded: LoadedDag, tis: list[TaskInstanceRecord] | None, batch: _Batch
    ) -> None:
        """Move a queued run to running and queue its first tasks."""
        now = self._clock.now()
        if tis is None:
            tis = [self._new_ti(record, task) for task in loaded.spec.tasks]
        check_run_transition(record.state, RunState.RUNNING)
        running = replace(record, state=RunState.RUNNING, start_date=record.start_date or now)
        batch.changes.runs.append(running)
        live = LiveRun.build(running, loaded, tis)
        self._runs[live.pk] = live
        self._slots_of(record.dag_id).active_runs.add(live.pk)
        for ti in list(live.tis.values()):
            if ti.task_id not in loaded.tasks and ti.state not in FINISHED_TASK_STATES:
                self._set_ti(live, ti, batch, state=TaskState.REMOVED)
        self._apply_resolution(live, resolve(loaded.graph, live.states), batch)
        self._settle_run(live, batch)

    def _new_ti(self, record: RunRecord, task: TaskSpec) -> TaskInstanceRecord:
        return TaskInstanceRecord(
            run_pk=record.pk,
            dag_id=record.dag_id,
            run_id=record.run_id,
            task_id=task.task_id,
            map_index=-1,
            state=TaskState.NONE,
            try_number=0,
            max_tries=task.max_tries,
            operator=OPERATOR_NAMES[task.kind],
        )

    # --- executor events ------------------------------------------------------------

    def task_started(self, key: TaskKey, try_number: int, external_id: str) -> None:
        live, ti = self._lookup(key, try_number)
        if live is None or ti is None or ti.state != TaskState.QUEUED:
            return
        batch = _Batch()
        self._set_ti(
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
        batch = _Batch()
        if outcome.success:
            start = ti.start_date or now
            self._set_ti(
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
            if outcome.xcom_value is not NO_XCOM and outcome.xcom_value is not None:
                live.xcoms[(ti.task_id, "return_value")] = outcome.xcom_value
                batch.changes.xcoms.append(
                    XComRecord(live.pk, ti.task_id, ti.map_index, "return_value", outcome.xcom_value)
                )
        else:
            log.info("task %s of %s/%s failed: %s", ti.task_id, ti.dag_id, ti.run_id, outcome.error)
            self._fail_try(live, ti, batch, now, exit_code=outcome.exit_code)
        self._after_change(live, [ti.task_id], batch)
        self._commit(batch)

    def _lookup(self, key: TaskKey, try_number: int) -> tuple[LiveRun | None, TaskInstanceRecord | None]:
        live = self._runs.get(key.run_pk)
        ti = live.tis.get(key.task_id) if live is not None else None
        if ti is None or ti.try_number != try_number:
            log.warning("ignoring a stale executor event for %s try %s", key, try_number)
            return None, None
        return live, ti

    # --- state changes --------------------------------------------------------------

    def _set_ti(
        self, live: LiveRun, ti: TaskInstanceRecord, batch: _Batch, **fields: Any
    ) -> TaskInstanceRecord:
        new_state: TaskState = fields.get("state", ti.state)
        check_task_transition(ti.state, new_state)
        new = evolve_ti(ti, **fields)
        live.tis[ti.task_id] = new
        live.states[ti.task_id] = new_state
        batch.changes.tasks.append(new)
        was_finished = ti.state in FINISHED_TASK_STATES
        if not was_finished and new_state in FINISHED_TASK_STATES:
            live.unfinished -= 1
        elif was_finished and new_state not in FINISHED_TASK_STATES:
            live.unfinished += 1
        was_active = ti.state in ACTIVE_TASK_STATES
        if was_active != (new_state in ACTIVE_TASK_STATES):
            self._slots_of(ti.dag_id).active_tasks += -1 if was_active else 1
        return new

    def _fail_try(
        self,
        live: LiveRun,
        ti: TaskInstanceRecord,
        batch: _Batch,
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
            self._set_ti(
                live,
                ti,
                batch,
                state=TaskState.UP_FOR_RETRY,
                end_date=now,
                duration=duration,
                next_retry_at=due,
                exit_code=exit_code,
            )
            self._arm_retry(ti.key, due, now)
        else:
            self._set_ti(
                live, ti, batch, state=TaskState.FAILED, end_date=now, duration=duration, exit_code=exit_code
            )

    def _arm_retry(self, key: TaskKey, due: datetime, now: datetime) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, (due - now).total_seconds())
        self._retry_timers[key] = loop.call_later(delay, self._retry_due, key)

    def _retry_due(self, key: TaskKey) -> None:
        self._retry_timers.pop(key, None)
        live = self._runs.get(key.run_pk)
        ti = live.tis.get(key.task_id) if live is not None else None
        if self._draining or live is None or ti is None or ti.state != TaskState.UP_FOR_RETRY:
            return
        batch = _Batch()
        finished = [] if self._make_ready(live, ti.task_id, batch) else [ti.task_id]
        self._after_change(live, finished, batch)
        self._commit(batch)

    def _apply_resolution(self, live: LiveRun, resolution: Resolution, batch: _Batch) -> None:
        """Apply a resolver verdict; tasks that fail while being queued are resolved in turn."""
        now = self._clock.now()
        while True:
            for task_id in resolution.skip:
                self._set_ti(live, live.tis[task_id], batch, state=TaskState.SKIPPED, end_date=now)
            for task_id in resolution.upstream_failed:
                self._set_ti(live, live.tis[task_id], batch, state=TaskState.UPSTREAM_FAILED, end_date=now)
            failed_at_launch = [t for t in resolution.run if not self._make_ready(live, t, batch)]
            if not failed_at_launch:
                return
            resolution = resolve_after(live.dag.graph, live.states, failed_at_launch)

    def _after_change(self, live: LiveRun, finished: Iterable[str], batch: _Batch) -> None:
        """Resolve what the finished tasks unblock, refill capacity, settle the run."""
        finished = list(finished)
        if finished:
            self._apply_resolution(live, resolve_after(live.dag.graph, live.states, finished), batch)
        self._fill_capacity(live.record.dag_id, batch)
        self._settle_run(live, batch)

    def _make_ready(self, live: LiveRun, task_id: str, batch: _Batch) -> bool:
        """Dependencies are met: queue now or wait for max_active_tasks. False if the try failed
        at once (a template error) and the task is now finished."""
        slots = self._slots_of(live.record.dag_id)
        if slots.active_tasks < live.dag.spec.max_active_tasks:
            return self._queue(live, task_id, batch)
        ti = live.tis[task_id]
        if ti.state != TaskState.SCHEDULED:
            self._set_ti(live, ti, batch, state=TaskState.SCHEDULED)
        slots.waiting.append((live.pk, task_id))
        return True

    def _queue(self, live: LiveRun, task_id: str, batch: _Batch) -> bool:
        ti = live.tis[task_id]
        now = self._clock.now()
        ti = self._set_ti(
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
        return self._prepare_launch(live, ti, batch, now)

    def _prepare_launch(self, live: LiveRun, ti: TaskInstanceRecord, batch: _Batch, now: datetime) -> bool:
        try:
            request = build_launch(live, live.dag.tasks[ti.task_id], ti, self._logs_dir, self._base_env)
        except TemplateError as exc:
            append_daemon_note(log_path_of(self._logs_dir, ti), now, f"try {ti.try_number} failed: {exc}")
            self._fail_try(live, ti, batch, now)
            return live.states[ti.task_id] not in FINISHED_TASK_STATES
        batch.launches.append(request)
        return True

    def _fill_capacity(self, dag_id: str, batch: _Batch) -> None:
        slots = self._slots_of(dag_id)
        while slots.waiting:
            run_pk, task_id = slots.waiting[0]
            live = self._runs.get(run_pk)
            if live is None or live.states.get(task_id) != TaskState.SCHEDULED:
                slots.waiting.popleft()
                continue
            if slots.active_tasks >= live.dag.spec.max_active_tasks:
                return
            slots.waiting.popleft()
            if not self._queue(live, task_id, batch):
                self._after_change(live, [task_id], batch)

    def _settle_run(self, live: LiveRun, batch: _Batch) -> None:
        """If every task is finished, record the run's outcome and admit the next queued run."""
        if live.unfinished > 0 or live.pk not in self._runs:
            return
        outcome = run_outcome(live.dag.graph, live.states) or RunState.SUCCESS
        check_run_transition(live.record.state, outcome)
        finished = replace(live.record, state=outcome, end_date=self._clock.now())
        batch.changes.runs.append(finished)
        del self._runs[live.pk]
        log.info("run %s of %s finished: %s", finished.run_id, finished.dag_id, outcome.value)
        self._slots_of(finished.dag_id).active_runs.discard(live.pk)
        self._start_waiting_runs(finished.dag_id, batch)

    def _slots_of(self, dag_id: str) -> DagSlots:
        slots = self._slots.get(dag_id)
        if slots is None:
            slots = self._slots[dag_id] = DagSlots()
        return slots

    # --- committing and acting ------------------------------------------------------

    def _commit(self, batch: _Batch) -> None:
        if batch.launches:
            self._writer.submit(batch.changes, partial(self._dispatch, batch.launches))
            # runs after the writer has sent the commit: file creation overlaps the round trip
            asyncio.get_running_loop().call_soon(prepare_logs, batch.launches)
        elif batch.changes:
            self._writer.submit(batch.changes)

    def _dispatch(self, launches: list[LaunchRequest]) -> None:
        """Runs after the commit that queued these tasks. While draining, queued tasks stay
        queued in the store and are started by the next daemon."""
        if self._draining or self._executor is None:
            return
        for request in launches:
            self._executor.submit(request)

    # --- start-up and shutdown ------------------------------------------------------

    async def recover(self, stored_specs: Mapping[str, DagSpec]) -> None:
        """Resume every active run from the store: re-queue what was queued, count tries that
        died with the previous daemon, re-arm retry timers, start runs still queued."""
        active = await self._store.load_active_runs()
        await self._refresh_paused(item.run.dag_id for item in active)
        now = self._clock.now()
        for item in active:
            loaded = self._dag_for_recovery(item.run.dag_id, stored_specs)
            if loaded is None:
                log.error(
                    "run %s of %s cannot resume: its DAG is not loaded", item.run.run_id, item.run.dag_id
                )
                continue
            if item.run.state == RunState.QUEUED:
                self._admit(item.run, self._fit(loaded, item), item.task_instances)
                continue
            await self._resume_running(item, self._fit(loaded, item), now)
        self._ready = True
        log.info("recovered %d active runs", len(active))

    def _dag_for_recovery(self, dag_id: str, stored_specs: Mapping[str, DagSpec]) -> LoadedDag | None:
        loaded = self.registry.get(dag_id)
        if loaded is not None:
            return loaded
        spec = stored_specs.get(dag_id)
        return LoadedDag.of(spec) if spec is not None else None

    @staticmethod
    def _fit(loaded: LoadedDag, item: ActiveRun) -> LoadedDag:
        """The DAG as this run knows it: tasks without a task instance are left out."""
        known = {ti.task_id for ti in item.task_instances}
        if all(task.task_id in known for task in loaded.spec.tasks):
            return loaded
        tasks = tuple(
            replace(task, upstream=tuple(up for up in task.upstream if up in known))
            for task in loaded.spec.tasks
            if task.task_id in known
        )
        return LoadedDag.of(replace(loaded.spec, tasks=tasks))

    async def _resume_running(self, item: ActiveRun, loaded: LoadedDag, now: datetime) -> None:
        xcoms = {(x.task_id, x.key): x.value for x in item.xcoms if x.map_index == -1}
        live = LiveRun.build(item.run, loaded, [], xcoms)
        self._runs[live.pk] = live
        slots = self._slots_of(live.record.dag_id)
        slots.active_runs.add(live.pk)
        batch = _Batch()
        known = loaded.graph.upstream
        # register every task instance first (counts and capacity), then act on them
        for ti in item.task_instances:
            if ti.map_index != -1:
                continue
            live.tis[ti.task_id] = ti
            live.states[ti.task_id] = ti.state
            if ti.state not in FINISHED_TASK_STATES:
                live.unfinished += 1
            if ti.state in ACTIVE_TASK_STATES:
                slots.active_tasks += 1
        lost: list[str] = []
        for ti in list(live.tis.values()):
            if ti.task_id not in known and ti.state not in FINISHED_TASK_STATES:
                self._set_ti(live, ti, batch, state=TaskState.REMOVED)
            elif ti.state == TaskState.QUEUED:
                append_daemon_note(
                    log_path_of(self._logs_dir, ti),
                    now,
                    "re-queued after a daemon restart (it had not started)",
                )
                self._prepare_launch(live, ti, batch, now)
            elif ti.state == TaskState.RUNNING:
                if self._executor is not None and await self._executor.adopt(ti):
                    continue
                append_daemon_note(
                    log_path_of(self._logs_dir, ti),
                    now,
                    f"the daemon stopped while try {ti.try_number} was running ({ti.external_id} on "
                    f"{ti.hostname}); the try is counted as failed",
                )
                self._fail_try(live, ti, batch, now)
                lost.append(ti.task_id)
            elif ti.state == TaskState.UP_FOR_RETRY:
                due = ti.next_retry_at or now
                self._arm_retry(ti.key, due, now)
            elif ti.state == TaskState.SCHEDULED:
                slots.waiting.append((live.pk, ti.task_id))
        self._apply_resolution(live, resolve(loaded.graph, live.states), batch)
        self._after_change(live, [t for t in lost if live.states[t] in FINISHED_TASK_STATES], batch)
        self._commit(batch)

    async def drain(self, grace: float) -> None:
        """Stop taking new work; let running tasks finish within `grace`; commit everything."""
        self._draining = True
        for handle in self._retry_timers.values():
            handle.cancel()
        self._retry_timers.clear()
        if self._executor is not None:
            await self._executor.drain(grace)
        await self._writer.flushed()
