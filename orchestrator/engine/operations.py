"""Operations a person asks for through the API: mark a run or a task instance, clear task
instances so they run again, delete a run or a DAG's records (Airflow's UpdateDagRunState,
ClearDagRun, ClearTaskInstances, UpdateTaskInstance, DeleteDagRun, DeleteDag).

A run this daemon drives is changed in memory, through `RunProgress` as every executor event is
(so memory and the database never disagree), and its rows ride the group-commit writer. A run
that is not in memory (finished, or waiting in the store for admission) is changed by committing
its new rows through the same writer, so they are ordered after everything the engine wrote
before. Nothing is acted on before it is committed: the work of a marked or cleared try is
stopped after the commit (`Batch.stops`), a cleared finished run is admitted from the store
after the commit, and the answer to the API is given after it.

A cleared try that was still running is stopped; its next try is held by the dispatcher until
the old one has ended (an executor runs one try of a task instance at a time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from orchestrator.core.model import DagSpec, TaskSpec
from orchestrator.core.records import ChangeSet, RunRecord, TaskInstanceRecord, TaskKey, evolve_ti
from orchestrator.core.resolver import resolve
from orchestrator.core.serialization import spec_from_dict
from orchestrator.core.states import (
    ACTIVE_RUN_STATES,
    ACTIVE_TASK_STATES,
    FINISHED_TASK_STATES,
    RunState,
    TaskState,
)
from orchestrator.core.transitions import (
    USER_RUN_MARKS,
    USER_TASK_MARKS,
    check_run_transition,
    check_task_transition,
)
from orchestrator.engine.admission import Admission
from orchestrator.engine.live import Batch, LiveRun
from orchestrator.engine.progress import RunProgress
from orchestrator.engine.registry import DagRegistry
from orchestrator.engine.writer import GroupCommitWriter
from orchestrator.errors import (
    DagNotFound,
    InvalidRequest,
    OperationConflict,
    OwnedElsewhere,
    RunNotFound,
    ShuttingDown,
    TaskInstanceNotFound,
)
from orchestrator.ports import ClearSelection, Clock, StateStore

log = logging.getLogger("orchestrator.engine.operations")

#: what only_failed selects (Airflow's: failed and upstream_failed)
FAILED_STATES = frozenset({TaskState.FAILED, TaskState.UPSTREAM_FAILED})

#: (run, task instance) pairs, as the operations answer them
Selected = list[tuple[RunRecord, TaskInstanceRecord]]


def marked_state(current: TaskState, run_state: RunState) -> TaskState:
    """What an unfinished task instance becomes when its run is marked (Airflow's
    set_dag_run_state_to_success / _to_failed): success; or failed if it was running, else
    skipped."""
    if run_state == RunState.SUCCESS:
        return TaskState.SUCCESS
    return TaskState.FAILED if current == TaskState.RUNNING else TaskState.SKIPPED


def selected_tasks(spec: DagSpec, selection: ClearSelection) -> set[str]:
    """The task ids a clear covers: the named ones (all if none) and, if asked, everything
    upstream and/or downstream of them."""
    if not selection.task_ids:
        return {task.task_id for task in spec.tasks}
    upstream = {task.task_id: set(task.upstream) for task in spec.tasks}
    downstream: dict[str, set[str]] = {task_id: set() for task_id in upstream}
    for task_id, ups in upstream.items():
        for up in ups:
            downstream.setdefault(up, set()).add(task_id)
    chosen = set(selection.task_ids)
    if selection.include_upstream:
        chosen |= _reachable(selection.task_ids, upstream)
    if selection.include_downstream:
        chosen |= _reachable(selection.task_ids, downstream)
    return chosen


def _reachable(start: Iterable[str], edges: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(start)
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _wanted(ti: TaskInstanceRecord, selection: ClearSelection) -> bool:
    if selection.only_failed and ti.state not in FAILED_STATES:
        return False
    return not (selection.only_running and ti.state != TaskState.RUNNING)


def _cleared_fields(ti: TaskInstanceRecord, task: TaskSpec | None) -> dict[str, Any]:
    """A cleared task instance: back to `none`, its retries counted again from its last try."""
    retries = task.max_tries if task is not None else 0
    return {
        "state": TaskState.NONE,
        "max_tries": ti.try_number + retries,
        "start_date": None,
        "end_date": None,
        "duration": None,
        "next_retry_at": None,
        "external_id": None,
        "exit_code": None,
    }


def _marked_fields(ti: TaskInstanceRecord, state: TaskState, now: datetime) -> dict[str, Any]:
    duration = (now - ti.start_date).total_seconds() if ti.start_date is not None else None
    return {"state": state, "end_date": now, "duration": duration, "next_retry_at": None}


class Operations:
    """The API's operations on runs, task instances and DAGs, for live and stored runs alike."""

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        progress: RunProgress,
        admission: Admission,
        registry: DagRegistry,
        writer: GroupCommitWriter,
        run_finished: Callable[[RunRecord, Batch], None],
        resume_claimed: Callable[[list[int], datetime], Awaitable[None]],
    ) -> None:
        self._store = store
        self._clock = clock
        self._progress = progress
        self._admission = admission
        self._registry = registry
        self._writer = writer
        #: the engine's handler of a run that reached its outcome (admission, listeners)
        self._run_finished = run_finished
        #: resumes runs this replica claimed for an operation (Recovery.resume_claimed)
        self._resume_claimed = resume_claimed

    # --- helpers ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._progress.draining:
            raise ShuttingDown()

    async def _committed(self) -> None:
        """Wait until everything submitted to the writer so far is committed (and acted on)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def resolve_done() -> None:
            if not done.done():
                done.set_result(None)

        self._progress.after_commits(resolve_done)
        await done

    async def _get_run(self, dag_id: str, run_id: str) -> RunRecord:
        run = await self._store.get_run(dag_id, run_id)
        if run is None:
            await self._dag_spec(dag_id)  # DagNotFound first, as GET says
            raise RunNotFound(
                f"DAG run {run_id!r} of DAG {dag_id!r} not found: "
                f"list the runs with `orchestrator runs {dag_id}`"
            )
        return run

    async def _run_as_committed(self, dag_id: str, run_id: str) -> tuple[RunRecord, LiveRun | None]:
        """The run, and its live copy if this daemon drives it; a run not in memory is read once
        everything submitted so far is committed (a run that just settled reads as settled)."""
        run = await self._get_run(dag_id, run_id)
        live = self._progress.runs.get(run.pk)
        if live is None:
            await self._committed()
            run = await self._get_run(dag_id, run_id)
            live = self._progress.runs.get(run.pk)
        return (live.record if live is not None else run), live

    async def _take(self, run: RunRecord) -> LiveRun | None:
        """Make `run` this replica's to change: its live copy when it runs (taken over first if
        no live replica drives it), None for a run that waits or is finished (claimed, so that
        the fenced commit of the change is this replica's). OwnedElsewhere when another live
        replica drives it: the request is for that one."""
        live = self._progress.runs.get(run.pk)
        if live is not None:
            return live
        owner = await self._store.claim_run(run.pk)
        if owner is not None:
            raise OwnedElsewhere(
                f"run {run.run_id!r} of DAG {run.dag_id!r} is driven by replica {owner.daemon_id} "
                f"on {owner.hostname}: send the request there",
                daemon_id=owner.daemon_id,
                hostname=owner.hostname,
                api_url=owner.api_url,
            )
        if run.state == RunState.RUNNING:
            await self._resume_claimed([run.pk], self._clock.now())
        return self._progress.runs.get(run.pk)

    async def _dag_spec(self, dag_id: str) -> DagSpec:
        loaded = self._registry.get(dag_id)
        if loaded is not None:
            return loaded.spec
        record = await self._store.get_dag(dag_id)
        if record is None:
            raise DagNotFound(f"DAG {dag_id!r} not found: list the DAGs with `orchestrator dags list`")
        return spec_from_dict(record.spec)

    # --- marking runs -----------------------------------------------------------------

    async def set_run_state(self, dag_id: str, run_id: str, state: RunState) -> RunRecord:
        """See `EngineApi.set_run_state`."""
        self._check_open()
        if state not in USER_RUN_MARKS:
            marks = ", ".join(sorted(s.value for s in USER_RUN_MARKS))
            raise InvalidRequest(f"a run can be set to {marks}, not {state.value!r}")
        run, live = await self._run_as_committed(dag_id, run_id)
        live = await self._take(run)
        if state == RunState.QUEUED:
            return await self._requeue(run, live)
        if live is not None:
            self._mark_live(live, state)
        else:
            tis = await self._store.list_task_instances(run.pk)
            live = self._progress.runs.get(run.pk)  # admitted while the store answered
            if live is not None:
                self._mark_live(live, state)
            else:
                self._mark_stored(run, tis, state)
        log.info("run %s of %s marked %s", run_id, dag_id, state.value)
        await self._committed()
        return await self._get_run(dag_id, run_id)

    def _mark_live(self, live: LiveRun, state: RunState) -> None:
        progress = self._progress
        batch = Batch()
        now = self._clock.now()
        for ti in sorted(live.tis.values(), key=lambda t: (t.task_id, t.map_index)):
            if ti.state in FINISHED_TASK_STATES:
                continue
            new = marked_state(ti.state, state)
            if ti.state in ACTIVE_TASK_STATES:
                batch.stops.append(ti.key)
                progress.note(
                    ti, now, f"the run was marked {state.value}: the task is stopped and {new.value}"
                )
            progress.set_ti(live, ti, batch, by_user=True, **_marked_fields(ti, new, now))
        progress.fill_capacity(live.record.dag_id, batch)  # the slots it held go to other runs
        progress.settle_run(live, batch, outcome=state)
        progress.commit(batch)

    def _mark_stored(self, run: RunRecord, tis: list[TaskInstanceRecord], state: RunState) -> None:
        now = self._clock.now()
        rows = []
        for ti in tis:
            if ti.state in FINISHED_TASK_STATES:
                continue
            new = marked_state(ti.state, state)
            check_task_transition(ti.state, new, by_user=True)
            rows.append(evolve_ti(ti, **_marked_fields(ti, new, now)))
        check_run_transition(run.state, state, by_user=True)
        marked = replace(run, state=state, end_date=now)
        self._writer.submit(ChangeSet(tasks=rows, runs=[marked]))
        if run.state in ACTIVE_RUN_STATES:
            self._admission.hold_back(run)  # a waiting run: no pass may start it from an old read
            self._run_finished(marked, Batch())

    async def _requeue(self, run: RunRecord, live: LiveRun | None) -> RunRecord:
        if live is not None or run.state in ACTIVE_RUN_STATES:
            if run.state == RunState.QUEUED and live is None:
                return run  # waiting already
            raise OperationConflict(
                f"run {run.run_id!r} of DAG {run.dag_id!r} is {run.state.value}: only a finished run can be "
                "queued again (to run some of its tasks again now, clear them)"
            )
        check_run_transition(run.state, RunState.QUEUED, by_user=True)
        queued = replace(
            run, state=RunState.QUEUED, queued_at=self._clock.now(), start_date=None, end_date=None
        )
        self._writer.submit(ChangeSet(runs=[queued]))
        await self._committed()
        log.info("run %s of %s queued again", run.run_id, run.dag_id)
        self._admission.fill_from_store(run.dag_id)
        return await self._get_run(run.dag_id, run.run_id)

    # --- clearing ---------------------------------------------------------------------

    async def clear_task_instances(
        self, dag_id: str, selection: ClearSelection, *, dry_run: bool
    ) -> Selected:
        """See `EngineApi.clear_task_instances`."""
        self._check_open()
        spec = await self._dag_spec(dag_id)
        known = {task.task_id for task in spec.tasks}
        unknown = sorted(set(selection.task_ids) - known)
        if unknown:
            raise InvalidRequest(
                f"DAG {dag_id!r} has no task(s) {', '.join(map(repr, unknown))}; "
                f"its tasks: {', '.join(sorted(known))}"
            )
        tasks = selected_tasks(spec, selection)
        await self._committed()
        runs = await self._store.list_runs_between(
            dag_id, selection.run_id, selection.start_date, selection.end_date
        )
        if selection.run_id is not None and not runs:
            await self._get_run(dag_id, selection.run_id)  # raises RunNotFound
        stored: dict[int, list[TaskInstanceRecord]] = {}
        for ti in await self._store.list_task_instances_of([run.pk for run in runs]):
            stored.setdefault(ti.run_pk, []).append(ti)
        if not dry_run:
            for run in runs:
                picked = [
                    ti for ti in stored.get(run.pk, []) if ti.task_id in tasks and _wanted(ti, selection)
                ]
                if picked and run.pk not in self._progress.runs and await self._take(run) is not None:
                    stored.pop(run.pk, None)  # taken over: cleared live, from its copy in memory
        # from here on nothing awaits: live runs are read and changed as they are now
        chosen: Selected = []
        restarted = False
        for run in runs:
            live = self._progress.runs.get(run.pk)
            tis = list(live.tis.values()) if live is not None else stored.get(run.pk, [])
            picked = sorted(
                (ti for ti in tis if ti.task_id in tasks and _wanted(ti, selection)),
                key=lambda t: (t.task_id, t.map_index),
            )
            if not picked:
                continue
            chosen.extend((live.record if live is not None else run, ti) for ti in picked)
            if dry_run:
                continue
            if live is not None:
                self._clear_live(live, picked)
            else:
                restarted |= self._clear_stored(run, picked, spec, selection.reset_dag_runs)
        if not dry_run and chosen:
            log.info("cleared %d task instance(s) of %s", len(chosen), dag_id)
            await self._committed()
            if restarted:
                self._admission.fill_from_store(dag_id)
        return chosen

    def _clear_live(self, live: LiveRun, picked: list[TaskInstanceRecord]) -> None:
        progress = self._progress
        batch = Batch()
        now = self._clock.now()
        for ti in picked:
            if ti.state in ACTIVE_TASK_STATES:
                batch.stops.append(ti.key)
                progress.note(ti, now, "the task was cleared: this try is stopped, the task runs again")
            progress.set_ti(live, ti, batch, **_cleared_fields(ti, live.dag.tasks.get(ti.task_id)))
        progress.apply_resolution(live, resolve(live.dag.graph, live.states), batch)
        progress.fill_capacity(live.record.dag_id, batch)
        progress.settle_run(live, batch)
        progress.commit(batch)

    def _clear_stored(
        self, run: RunRecord, picked: list[TaskInstanceRecord], spec: DagSpec, reset_run: bool
    ) -> bool:
        """Clear a run that is not in memory; True if it waits in the store to be admitted."""
        tasks = {task.task_id: task for task in spec.tasks}
        rows = []
        for ti in picked:
            check_task_transition(ti.state, TaskState.NONE)
            rows.append(evolve_ti(ti, **_cleared_fields(ti, tasks.get(ti.task_id))))
        runs = []
        if reset_run and run.state not in ACTIVE_RUN_STATES:
            check_run_transition(run.state, RunState.QUEUED)
            now = self._clock.now()
            runs.append(replace(run, state=RunState.QUEUED, queued_at=now, start_date=None, end_date=None))
        self._writer.submit(ChangeSet(tasks=rows, runs=runs))
        if run.state == RunState.QUEUED:
            self._admission.hold_back(run)  # a pass that read its old rows must not start it
        return bool(runs) or run.state == RunState.QUEUED

    # --- marking task instances -------------------------------------------------------

    async def set_task_instance_state(
        self, dag_id: str, run_id: str, task_id: str, map_index: int, state: TaskState, *, dry_run: bool
    ) -> tuple[RunRecord, TaskInstanceRecord]:
        """See `EngineApi.set_task_instance_state`."""
        self._check_open()
        if state not in USER_TASK_MARKS:
            marks = ", ".join(sorted(s.value for s in USER_TASK_MARKS))
            raise InvalidRequest(f"a task instance can be marked {marks}, not {state.value!r}")
        run, live = await self._run_as_committed(dag_id, run_id)
        if not dry_run:
            live = await self._take(run)
        key = TaskKey(run.pk, task_id, map_index)
        stored = None if live is not None else await self._store.get_task_instance(key)
        live = self._progress.runs.get(run.pk)  # admitted while the store answered
        ti = live.get(key) if live is not None else stored
        if ti is None:
            mapped = f" (map_index {map_index})" if map_index >= 0 else ""
            raise TaskInstanceNotFound(
                f"task instance {task_id!r}{mapped} not found in run {run_id!r} of DAG {dag_id!r}: "
                f"list them with `orchestrator tasks {dag_id} {run_id}`"
            )
        if dry_run:
            return run, ti
        now = self._clock.now()
        if live is not None:
            batch = Batch()
            if ti.state in ACTIVE_TASK_STATES:
                batch.stops.append(ti.key)
                self._progress.note(ti, now, f"marked {state.value} by a user: this try is stopped")
            self._progress.set_ti(live, ti, batch, by_user=True, **_marked_fields(ti, state, now))
            self._progress.after_change(live, [task_id], batch)  # downstream goes on per trigger rules
            self._progress.commit(batch)
        else:
            check_task_transition(ti.state, state, by_user=True)
            self._writer.submit(ChangeSet(tasks=[evolve_ti(ti, **_marked_fields(ti, state, now))]))
            if run.state == RunState.QUEUED:
                self._admission.hold_back(run)
        log.info("task %s of %s/%s marked %s", task_id, dag_id, run_id, state.value)
        await self._committed()
        run = await self._get_run(dag_id, run_id)
        after = await self._store.get_task_instance(key)
        return run, after or ti

    # --- deleting ---------------------------------------------------------------------

    async def delete_run(self, dag_id: str, run_id: str) -> None:
        """See `EngineApi.delete_run`."""
        self._check_open()
        run, live = await self._run_as_committed(dag_id, run_id)
        if live is not None or run.state in ACTIVE_RUN_STATES:
            raise OperationConflict(
                f"run {run_id!r} of DAG {dag_id!r} is still {run.state.value}: mark it success or failed "
                f"first (`orchestrator runs mark {dag_id} {run_id} failed`), then delete it"
            )
        if not await self._store.delete_finished_run(run.pk):
            again = await self._get_run(dag_id, run_id)  # RunNotFound if it went meanwhile
            raise OperationConflict(f"run {run_id!r} of DAG {dag_id!r} is {again.state.value} again: retry")
        log.info("run %s of %s deleted", run_id, dag_id)

    async def delete_dag(self, dag_id: str) -> None:
        """See `EngineApi.delete_dag`."""
        self._check_open()
        live = [run.record.run_id for run in self._progress.runs.values() if run.record.dag_id == dag_id]
        if live:
            raise self._dag_busy(dag_id, len(live))
        await self._committed()
        before = await self._store.get_dag(dag_id)
        existed, active = await self._store.delete_dag_records(dag_id)
        if active:
            raise self._dag_busy(dag_id, active)
        loaded = self._registry.get(dag_id)
        if not existed and loaded is None:
            raise DagNotFound(f"DAG {dag_id!r} not found: list the DAGs with `orchestrator dags list`")
        log.info("DAG %s deleted: its runs and records", dag_id)
        if loaded is not None:
            # its file is still loaded: it is recorded again, as Airflow's next parse would
            fileloc = loaded.spec.fileloc
            specs = [dag.spec for dag in self._registry if dag.spec.fileloc == fileloc]
            paused = before.is_paused if before is not None else False
            await self._store.sync_dag_file(fileloc, specs, self._clock.now(), paused_on_creation=paused)

    @staticmethod
    def _dag_busy(dag_id: str, count: int) -> OperationConflict:
        return OperationConflict(
            f"DAG {dag_id!r} has {count} queued or running run(s): mark them success or failed "
            "(or wait for them) before deleting the DAG"
        )
