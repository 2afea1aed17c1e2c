"""`Engine`: the one object the daemon, the API and the executors talk to.

It wires the engine's rooms together and adds nothing of its own but the entry points:
triggering (`trigger_run`, `set_paused`) for the API, the executor events
(`task_started`, `task_finished`, guarded so that a failing handler fails its task
instance instead of leaving the run stuck), start-up (`recover`) and shutdown (`drain`).

- `progress.RunProgress`: task-instance state changes, retries, capacity, run outcomes;
- `admission.Admission`: pause and max_active_runs, waiting runs admitted from the store;
- `recovery.Recovery`: resuming active runs after a restart;
- `dispatch.Dispatcher`: the executors by name and the routing rule;
- `writer.GroupCommitWriter`: one commit at a time, rows published on the event bus;
- `supervision.Supervisor`: background tasks and fatal errors;
- `operations.Operations`: what a person asks for (mark, clear, delete), through the above.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.core.ids import check_run_id, default_run_id
from orchestrator.core.model import DagSpec
from orchestrator.core.records import DagRecord, NewAssetEvent, NewRun, NewTaskInstance, RunRecord, TaskKey
from orchestrator.core.template_limits import DEFAULT_LIMITS, TemplateLimits
from orchestrator.engine.admission import Admission
from orchestrator.engine.creation import RunCreator
from orchestrator.engine.dispatch import Dispatcher
from orchestrator.engine.events import EventBus
from orchestrator.engine.live import Batch
from orchestrator.engine.operations import Operations
from orchestrator.engine.progress import RunProgress, ValueCheck
from orchestrator.engine.recovery import Recovery
from orchestrator.engine.registry import DagRegistry, LoadedDag
from orchestrator.engine.supervision import Supervisor
from orchestrator.engine.writer import GroupCommitWriter
from orchestrator.errors import DagNotFound, InvalidRequest, ShuttingDown
from orchestrator.ports import Clock, Events, RunChanged, StateStore, TaskLogs, TaskOutcome, Timers

log = logging.getLogger("orchestrator.engine")


class Engine:
    """Drives runs from trigger to outcome. Implements ExecutorEvents and the API's EngineApi."""

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        timers: Timers,
        registry: DagRegistry,
        logs_dir: Path,
        daemon_id: str,
        hostname: str,
        base_env: Mapping[str, str],
        *,
        task_logs: TaskLogs,
        events: Events | None = None,
        supervisor: Supervisor | None = None,
        check_value: ValueCheck | None = None,
        template_limits: TemplateLimits = DEFAULT_LIMITS,
    ) -> None:
        self._store = store
        self._clock = clock
        self.registry = registry
        self.events: Events = events if events is not None else EventBus()
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.writer = GroupCommitWriter(store, timers, self.events, self.supervisor)
        self.progress = RunProgress(
            clock=clock,
            timers=timers,
            writer=self.writer,
            supervisor=self.supervisor,
            logs_dir=logs_dir,
            task_logs=task_logs,
            base_env=base_env,
            daemon_id=daemon_id,
            hostname=hostname,
            check_value=check_value,
            template_limits=template_limits,
        )
        self._recovery: Recovery
        self.admission = Admission(
            store, clock, self.progress, self.supervisor, self._dag_of_run, registry=registry
        )
        self._recovery = Recovery(store, self.progress, self.admission, registry)
        self._creator = RunCreator(store, self.admission, self.supervisor, self.events)
        self._ready = False
        #: told of every run that reached its outcome, once that is committed (triggers use it)
        self._run_finished_listeners: list[Callable[[RunRecord], None]] = []
        #: told of every pause or unpause, once it is committed
        self._paused_listeners: list[Callable[[str, bool], None]] = []
        self.progress.on_run_finished = self._run_finished
        #: the API's operations (mark, clear, delete): EngineApi's methods of that name
        self.operations = Operations(
            store,
            clock,
            self.progress,
            self.admission,
            registry,
            self.writer,
            self._run_finished,
            self._recovery.resume_claimed,
        )
        # every commit is fenced on the runs this replica owns; a refused one is let go
        store.set_owner(daemon_id)
        self.daemon_id = daemon_id
        self.writer.on_fenced = self._fenced
        self.admission.knows_dag = self._knows_dag
        self.admission.events = self.events
        self.set_run_state = self.operations.set_run_state
        self.clear_task_instances = self.operations.clear_task_instances
        self.set_task_instance_state = self.operations.set_task_instance_state
        self.delete_run = self.operations.delete_run
        self.delete_dag = self.operations.delete_dag

    def _fenced(self, runs: frozenset[int]) -> None:
        self.progress.drop_runs(runs, "another replica owns it now")

    def _knows_dag(self, dag_id: str) -> bool:
        return self.registry.get(dag_id) is not None or dag_id in self._recovery.stored_specs

    def _dag_of_run(self, item: Any) -> Any:
        return self._recovery.dag_of_run(item)

    # --- wiring ---------------------------------------------------------------------

    def attach_executors(self, dispatcher: Dispatcher) -> None:
        self.progress.dispatcher = dispatcher

    def set_installation(self, installation: str) -> None:
        """The database's installation id, carried in every try's token (see launch.try_token)."""
        self.progress.installation = installation

    def is_ready(self) -> bool:
        return self._ready and not self.progress.draining

    @property
    def draining(self) -> bool:
        return self.progress.draining

    def add_run_finished_listener(self, callback: Callable[[RunRecord], None]) -> None:
        """Call `callback(run)` for every run that reaches its outcome, once that is committed."""
        self._run_finished_listeners.append(callback)

    def add_paused_listener(self, callback: Callable[[str, bool], None]) -> None:
        """Call `callback(dag_id, is_paused)` after every pause or unpause through `set_paused`."""
        self._paused_listeners.append(callback)

    def set_asset_events_listener(self, callback: Callable[[list[NewAssetEvent]], None]) -> None:
        """Call `callback(events)` after every commit that recorded asset events (task outlets)."""
        self.writer.on_asset_events = callback

    def set_triggering_asset_events(self, run_pk: int, events: Mapping[str, Any]) -> None:
        """What the templates of an asset-triggered run see as `triggering_asset_events` (kept
        until the run settles; set before the run is admitted)."""
        self.progress.triggering_asset_events[run_pk] = events

    def _run_finished(self, finished: RunRecord, batch: Batch) -> None:
        self.admission.run_finished(finished, batch)
        # the listeners are those of the moment of the commit: one added meanwhile (a trigger
        # started after recovery) still hears of a run whose outcome it could not read yet
        self.progress.after_commits(lambda: self._tell_run_finished(finished))

    def _tell_run_finished(self, run: RunRecord) -> None:
        for listener in tuple(self._run_finished_listeners):
            try:
                listener(run)
            except Exception:
                log.exception("a listener of finished runs failed on run %s of %s", run.run_id, run.dag_id)

    # --- triggering -----------------------------------------------------------------

    async def trigger_run(
        self,
        dag_id: str,
        *,
        run_id: str | None,
        conf: dict[str, Any],
        logical_date: datetime | None,
        run_type: str = "manual",
        note: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """Create a run (unique on dag_id + run_id) and start it if its DAG has room."""
        self.loaded_dag(dag_id)
        if not isinstance(conf, dict):
            raise InvalidRequest("conf must be a JSON object")
        if logical_date is not None and logical_date.tzinfo is None:
            raise InvalidRequest("logical_date must include a timezone, e.g. 2026-01-01T00:00:00+00:00")
        now = self._clock.now()
        when = logical_date or now
        chosen_run_id = run_id or default_run_id(run_type, when)
        problem = check_run_id(chosen_run_id)
        if problem is not None:
            raise InvalidRequest(problem)
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
            note=note,
        )
        return await self.create_run(new_run)

    def loaded_dag(self, dag_id: str) -> LoadedDag:
        """The DAG as loaded now; DagNotFound if it is not (ShuttingDown while draining)."""
        if self.progress.draining:
            raise ShuttingDown()
        loaded = self.registry.get(dag_id)
        if loaded is None:
            raise DagNotFound(
                f"DAG {dag_id!r} is not loaded: check `orchestrator dags list` and `orchestrator dags errors`"
            )
        return loaded

    def new_task_instances(self, loaded: LoadedDag) -> list[NewTaskInstance]:
        """The task instances a new run of `loaded` starts with."""
        return [
            NewTaskInstance(task.task_id, loaded.operators[task.task_id], task.max_tries)
            for task in loaded.spec.tasks
        ]

    async def create_run(self, new_run: NewRun) -> tuple[RunRecord, bool]:
        """Create a run of a loaded DAG, whatever triggered it (the API, the scheduler, a webhook,
        a backfill), with the DAG's current version; start it if its DAG has room. Unique on
        (dag_id, run_id): an existing run is returned with False and nothing is written. Requests
        made at the same time are written together (`creation.RunCreator`)."""
        loaded = self.loaded_dag(new_run.dag_id)
        return await self._creator.create(new_run, loaded, self.new_task_instances(loaded))

    async def admit_created(self, record: RunRecord) -> None:
        """A run was just written to the store (by `create_run`, or by a store method that creates
        runs in a transaction of its own, as asset-triggered runs are): start it if there is room."""
        log.info("run %s of %s created (%s)", record.run_id, record.dag_id, record.run_type)
        self.events.publish(RunChanged(record))
        await self.admission.admit_now(record.dag_id)

    async def set_paused(self, dag_id: str, is_paused: bool) -> DagRecord | None:
        """Pause or unpause a DAG; unpausing starts the runs that waited while it was paused."""
        record = await self._store.set_dag_paused(dag_id, is_paused)
        if record is None:
            return None
        if not is_paused:
            self.admission.fill_from_store(dag_id)
        log.info("DAG %s %s", dag_id, "paused" if is_paused else "unpaused")
        for listener in tuple(self._paused_listeners):
            try:
                listener(dag_id, is_paused)
            except Exception:
                log.exception("a listener of pauses failed on DAG %s", dag_id)
        return record

    # --- executor events (guarded: a failing handler fails its task instance) ---------

    def task_started(self, key: TaskKey, try_number: int, external_id: str) -> None:
        try:
            self.progress.task_started(key, try_number, external_id)
        except Exception as exc:
            self.progress.handler_failed(key, "its start", exc, traceback.format_exc())

    def task_finished(self, outcome: TaskOutcome) -> None:
        try:
            self.progress.task_finished(outcome)
        except Exception as exc:
            self.progress.handler_failed(outcome.key, "its outcome", exc, traceback.format_exc())
        finally:
            self._launch_held(outcome.key)

    def _launch_held(self, key: TaskKey) -> None:
        """A try ended: a new try of its task instance held meanwhile (it was cleared) starts."""
        dispatcher = self.progress.dispatcher
        held = dispatcher.finished(key) if dispatcher is not None else None
        if dispatcher is None or held is None:
            return
        try:
            dispatcher.submit(*held)
        except Exception as exc:
            self.progress.handler_failed(
                key, f"the launch on executor {held[0]!r}", exc, traceback.format_exc()
            )

    # --- start-up and shutdown ------------------------------------------------------

    async def recover(self, stored_specs: Mapping[str, DagSpec]) -> None:
        """Resume every active run from the store, then take new work."""
        count = await self._recovery.recover(stored_specs, self._clock.now())
        await self.fill_waiting()
        self._ready = True
        log.info("recovered %d active runs", count)

    async def take_over(self, *, take_expired: bool) -> int:
        """Claim and resume the running runs no live replica drives (a takeover pass)."""
        if self.progress.draining:
            return 0
        return await self._recovery.take_over(self._clock.now(), take_expired=take_expired)

    async def fill_waiting(self) -> None:
        """Admission passes for every DAG with waiting runs (after a NOTIFY may have been missed)."""
        for dag_id in await self._store.dags_with_waiting_runs():
            self.admission.fill_from_store(dag_id)

    async def keep_owned_runs(self) -> int:
        """Let go of the runs in memory that this replica no longer owns (after it was cut off
        from the database); returns how many."""
        held = list(self.progress.runs)
        if not held:
            return 0
        owned = await self._store.owned_runs(held)
        return self.progress.drop_runs([pk for pk in held if pk not in owned], "another replica took it over")

    def let_go_all(self, why: str) -> int:
        """Drop every run in memory and stop their tasks here (this replica lost its lease)."""
        return self.progress.drop_runs(list(self.progress.runs), why)

    async def drain(self, grace: float) -> None:
        """Stop taking new work; let running tasks finish within `grace`; commit everything."""
        self.progress.draining = True
        self.progress.cancel_timers()
        self.progress.render_pool.close()
        dispatcher = self.progress.dispatcher
        if dispatcher is not None:
            await dispatcher.drain(grace)
        await self.writer.flushed()
