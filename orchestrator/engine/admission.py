"""Admission: which waiting runs start, under pause and each DAG's `max_active_runs`.

A created run is `queued` in the store and owned by no replica. Starting it is a claim: one
transaction (`StateStore.admit_queued_runs`) that takes the DAG's row lock, counts the DAG's
running runs over every replica against its max_active_runs, skips it when paused, and makes
the oldest waiting runs `running` and owned by this replica. Only then does this replica hold
them in memory and queue their first tasks. So nothing about a waiting run is held in memory,
however many wait, and two replicas never both take a DAG's last free slot.

An admission pass for a DAG is requested when one of its runs is created (here, or on another
replica: a NOTIFY), when one of its runs finished (once that is committed, so the freed slot
counts), when it is unpaused, and at start-up; passes run one at a time per DAG. A run a user
is changing meanwhile (marking it) is held back from passes until that change is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from orchestrator.core.records import RunRecord, TaskInstanceRecord
from orchestrator.core.resolver import resolve
from orchestrator.core.states import FINISHED_TASK_STATES, RunState, TaskState
from orchestrator.core.transitions import check_run_transition
from orchestrator.engine.live import Batch, LiveRun
from orchestrator.engine.progress import RunProgress
from orchestrator.engine.registry import DagRegistry, LoadedDag
from orchestrator.engine.supervision import OnePassAtATime, Supervisor
from orchestrator.ports import ActiveRun, Clock, Events, RunChanged, StateStore

log = logging.getLogger("orchestrator.engine.admission")

#: the most waiting runs one admission pass starts
MAX_READ_PER_FILL = 64

#: turns a run read back from the store into the DAG it runs (its version), or None
DagOfRun = Callable[[ActiveRun], LoadedDag | None]


class Admission:
    """Starts waiting runs when their DAG has room, claiming them for this replica."""

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        progress: RunProgress,
        supervisor: Supervisor,
        dag_of_run: DagOfRun,
        registry: DagRegistry | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._progress = progress
        self._dag_of_run = dag_of_run
        self._registry = registry
        #: admission passes, one at a time per DAG
        self._fills = OnePassAtATime(supervisor, self._fill_once, "admit waiting runs of")
        #: runs a user is changing (their change is not committed yet): no pass starts them
        self._held: dict[int, int] = {}
        #: where the runs it starts are told (`running`, committed by the claim); set by the engine
        self.events: Events | None = None
        #: whether this replica can run a DAG's runs (set by the engine: loaded or stored)
        self.knows_dag: Callable[[str], bool] = lambda dag_id: True

    def start_run(
        self, record: RunRecord, loaded: LoadedDag, tis: list[TaskInstanceRecord] | None, batch: Batch
    ) -> None:
        """Hold an admitted run (running and owned in the store) and queue its first tasks."""
        progress = self._progress
        now = self._clock.now()
        if tis is None:
            tis = [new_task_instance(record, loaded, task_id) for task_id in loaded.tasks]
        if record.state != RunState.RUNNING:
            check_run_transition(record.state, RunState.RUNNING)
            record = replace(record, state=RunState.RUNNING, start_date=record.start_date or now)
            batch.changes.runs.append(record)
        live = LiveRun.build(record, loaded, tis)
        progress.hold_run(live)
        for ti in list(live.tis.values()):
            if ti.task_id not in loaded.tasks and ti.state not in FINISHED_TASK_STATES:
                progress.set_ti(live, ti, batch, state=TaskState.REMOVED)
        progress.apply_resolution(live, resolve(loaded.graph, live.states), batch)
        progress.settle_run(live, batch)

    def hold_back(self, record: RunRecord) -> None:
        """A user changed this waiting run (marked it): no pass may start it from what the store
        says until that change is committed."""
        self._held[record.pk] = self._held.get(record.pk, 0) + 1

        def release() -> None:
            count = self._held.pop(record.pk, 1) - 1
            if count > 0:
                self._held[record.pk] = count

        self._progress.after_commits(release)

    def run_finished(self, finished: RunRecord, batch: Batch) -> None:
        """A run settled: once that is committed its slot is free, for any replica's runs."""
        dag_id = finished.dag_id
        self._progress.after_commits(lambda: self.fill_from_store(dag_id))

    async def admit_now(self, dag_id: str) -> None:
        """An admission pass for `dag_id`, awaited (a creator starts its runs before it answers)."""
        if not self._progress.draining:
            await self._fills.run(dag_id)

    def fill_from_store(self, dag_id: str) -> None:
        """Start the oldest runs of `dag_id` that wait in the store, as far as room allows."""
        if self._progress.draining:
            return
        self._fills.request(dag_id)

    async def _fill_once(self, dag_id: str) -> None:
        progress = self._progress
        if progress.draining or not self._can_run(dag_id):
            return
        admitted = await self._store.admit_queued_runs(dag_id, MAX_READ_PER_FILL, self.held())
        self.start_admitted(admitted)
        if len(admitted) >= MAX_READ_PER_FILL:
            self.fill_from_store(dag_id)  # more may wait: another pass, after this one

    def held(self) -> tuple[int, ...]:
        """The waiting runs a user is changing: no claim may start them now."""
        return tuple(self._held)

    def start_admitted(self, admitted: list[ActiveRun]) -> None:
        """Drive runs the store just admitted for this replica (running and owned: committed)."""
        batch = Batch()
        for item in admitted:
            if item.run.pk in self._progress.runs:
                # a takeover pass saw it committed (ours, not held) before this answer came back,
                # and resumed it already: it is driven once
                continue
            if self.events is not None:  # committed by the claim: told before its tasks' changes
                self.events.publish(RunChanged(item.run))
            loaded = self._dag_of_run(item)
            if loaded is None:  # its DAG is neither loaded nor stored: it cannot be driven here
                log.error(
                    "run %s of %s cannot start: its DAG is not loaded", item.run.run_id, item.run.dag_id
                )
                continue
            self.start_run(
                item.run, fit_to_instances(loaded, item.task_instances), item.task_instances, batch
            )
        self._progress.commit(batch)

    def _can_run(self, dag_id: str) -> bool:
        """Whether this replica knows the DAG (loaded, or stored): else it leaves its runs waiting."""
        return self.knows_dag(dag_id)


def new_task_instance(record: RunRecord, loaded: LoadedDag, task_id: str) -> TaskInstanceRecord:
    task = loaded.tasks[task_id]
    return TaskInstanceRecord(
        run_pk=record.pk,
        dag_id=record.dag_id,
        run_id=record.run_id,
        task_id=task.task_id,
        map_index=-1,
        state=TaskState.NONE,
        try_number=0,
        max_tries=task.max_tries,
        operator=loaded.operators[task_id],
    )


def fit_to_instances(loaded: LoadedDag, tis: list[TaskInstanceRecord]) -> LoadedDag:
    """The DAG as a run knows it: tasks without a task instance are left out."""
    known = {ti.task_id for ti in tis}
    if all(task.task_id in known for task in loaded.spec.tasks):
        return loaded
    tasks = tuple(
        replace(task, upstream=tuple(up for up in task.upstream if up in known))
        for task in loaded.spec.tasks
        if task.task_id in known
    )
    return LoadedDag.of(replace(loaded.spec, tasks=tasks))
