"""Admission: which runs may start, under pause and each DAG's `max_active_runs`.

A created run is `queued` in the store. It starts at once when its DAG is not paused and has
a free run slot; otherwise it simply stays `queued` in PostgreSQL: nothing about it is held
in memory, however many wait. When a run of the DAG finishes, or the DAG is unpaused, the
oldest waiting runs are read back from the store and started (a supervised background task,
one at a time per DAG). A waiting run starts with the DAG version the store recorded for it
when it has one, else the DAG as now loaded. The store can lag behind memory (a run started,
or even finished, whose rows are still on their way to a commit), so the runs this daemon
started are never taken for waiting ones until the store has caught up with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace

from orchestrator.core.records import RunRecord, TaskInstanceRecord
from orchestrator.core.resolver import resolve
from orchestrator.core.states import FINISHED_TASK_STATES, RunState, TaskState
from orchestrator.core.transitions import check_run_transition
from orchestrator.engine.live import Batch, LiveRun
from orchestrator.engine.progress import RunProgress
from orchestrator.engine.registry import DagRegistry, LoadedDag
from orchestrator.engine.supervision import OnePassAtATime, Supervisor
from orchestrator.ports import ActiveRun, Clock, StateStore

log = logging.getLogger("orchestrator.engine.admission")

#: the most waiting runs one admission pass reads from the store
MAX_READ_PER_FILL = 64

#: turns a run read back from the store into the DAG it runs (its version), or None
DagOfRun = Callable[[ActiveRun], LoadedDag | None]


class Admission:
    """Starts runs when their DAG has room; keeps the pause flags of the DAGs it has seen."""

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
        #: the DAGs as loaded (to ask the store for no more waiting runs than there is room for)
        self._registry = registry
        #: DAGs whose new runs wait in `queued` (Airflow's pause); runs already running go on
        self.paused: set[str] = set()
        #: admission passes, one at a time per DAG
        self._fills = OnePassAtATime(supervisor, self._fill_once, "admit waiting runs of")
        #: the DAG version of each run this daemon created that waits (a reference to a shared
        #: LoadedDag, not a copy); after a restart a waiting run takes the store's version
        self._versions: dict[int, LoadedDag] = {}
        #: per DAG, the runs this daemon started -> whether their start is committed yet. The
        #: store may still list such a run as queued (even one that finished at once in memory):
        #: it is never admitted again. An entry goes once a pass that asked the store after its
        #: start was committed has seen the store as it is.
        self._started: dict[str, dict[int, bool]] = {}

    async def refresh_paused(self, dag_ids: Iterable[str]) -> None:
        """Read whether these DAGs are paused (the API and other daemons may have changed it)."""
        wanted = set(dag_ids)
        if wanted:
            paused = await self._store.paused_dag_ids(sorted(wanted))
            self.paused = (self.paused - wanted) | paused

    def has_room(self, dag_id: str, loaded: LoadedDag) -> bool:
        slots = self._progress.slots_of(dag_id)
        return dag_id not in self.paused and len(slots.active_runs) < loaded.spec.max_active_runs

    def admit_new(self, record: RunRecord, loaded: LoadedDag) -> None:
        """A run was just created: start it if its DAG has room, else it waits in the store.

        Its creator awaited something after the commit (the pause flags), so a fill pass may
        have found it in the store and started it meanwhile: then it is not started again."""
        if record.pk in self._progress.runs or record.pk in self._started.get(record.dag_id, {}):
            return
        if self.has_room(record.dag_id, loaded):
            batch = Batch()
            self.start_run(record, loaded, None, batch)
            self._progress.commit(batch)
            self._confirm_after_commit(record.dag_id, [record.pk])
        else:
            self._versions[record.pk] = loaded

    def start_run(
        self, record: RunRecord, loaded: LoadedDag, tis: list[TaskInstanceRecord] | None, batch: Batch
    ) -> None:
        """Move a queued run to running and queue its first tasks."""
        progress = self._progress
        now = self._clock.now()
        self._started.setdefault(record.dag_id, {})[record.pk] = False
        if tis is None:
            tis = [new_task_instance(record, loaded, task_id) for task_id in loaded.tasks]
        check_run_transition(record.state, RunState.RUNNING)
        running = replace(record, state=RunState.RUNNING, start_date=record.start_date or now)
        batch.changes.runs.append(running)
        live = LiveRun.build(running, loaded, tis)
        progress.runs[live.pk] = live
        progress.slots_of(record.dag_id).active_runs.add(live.pk)
        for ti in list(live.tis.values()):
            if ti.task_id not in loaded.tasks and ti.state not in FINISHED_TASK_STATES:
                progress.set_ti(live, ti, batch, state=TaskState.REMOVED)
        progress.apply_resolution(live, resolve(loaded.graph, live.states), batch)
        progress.settle_run(live, batch)

    def hold_back(self, record: RunRecord) -> None:
        """A user changed this waiting run (marked it): a pass that read it from the store before
        that change is committed must not start it. Held like a run this daemon started."""
        self._started.setdefault(record.dag_id, {})[record.pk] = False
        self._versions.pop(record.pk, None)
        self._confirm_after_commit(record.dag_id, [record.pk])

    def forget_dag(self, dag_id: str) -> None:
        """The DAG's records were deleted: forget its pause flag and the runs held for it."""
        self.paused.discard(dag_id)
        self._started.pop(dag_id, None)

    def run_finished(self, finished: RunRecord, batch: Batch) -> None:
        self.fill_from_store(finished.dag_id)

    def fill_from_store(self, dag_id: str) -> None:
        """Start the oldest runs of `dag_id` that wait in the store, as far as room allows."""
        if self._progress.draining:
            return
        self._fills.request(dag_id)

    async def _fill_once(self, dag_id: str) -> None:
        progress = self._progress
        slots = progress.slots_of(dag_id)
        if dag_id in self.paused or progress.draining:
            return
        started = self._started.setdefault(dag_id, {})
        # starts committed before the store is asked: the answer shows them as they are
        settled = [pk for pk, committed in started.items() if committed]
        # runs being started (their `running` row may not be committed yet) are left out
        starting = [pk for pk in slots.active_runs]
        candidates = await self._store.load_queued_runs(dag_id, limit=self._wanted(dag_id), exclude=starting)
        for pk in settled:
            started.pop(pk, None)
        batch = Batch()
        admitted: list[int] = []
        for item in candidates:
            if item.run.pk in progress.runs or item.run.pk in started:
                continue
            loaded = self._versions.get(item.run.pk) or self._dag_of_run(item)
            if loaded is None:
                log.error("run %s of %s cannot start: its DAG is not loaded", item.run.run_id, dag_id)
                continue
            if not self.has_room(dag_id, loaded) or progress.draining:
                break
            self.start_run(
                item.run, fit_to_instances(loaded, item.task_instances), item.task_instances, batch
            )
            self._versions.pop(item.run.pk, None)
            admitted.append(item.run.pk)
        progress.commit(batch)
        if admitted:
            self._confirm_after_commit(dag_id, admitted)

    def _wanted(self, dag_id: str) -> int:
        """How many waiting runs to read: the DAG's free run slots, plus the runs this daemon
        started that the store may still list as queued (they are skipped), at most 64. With
        many runs waiting, each finished run reads one, not 64 with all their task instances."""
        loaded = self._registry.get(dag_id) if self._registry is not None else None
        if loaded is None:
            return MAX_READ_PER_FILL
        room = loaded.spec.max_active_runs - len(self._progress.slots_of(dag_id).active_runs)
        pending = len(self._started.get(dag_id, ()))
        return max(1, min(MAX_READ_PER_FILL, room + pending))

    def _confirm_after_commit(self, dag_id: str, pks: list[int]) -> None:
        """Mark these starts committed once the writer has committed what was submitted so far."""

        def confirm() -> None:
            started = self._started.get(dag_id, {})
            for pk in pks:
                if pk in started:
                    started[pk] = True

        self._progress.after_commits(confirm)


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
