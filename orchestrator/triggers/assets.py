"""The asset trigger: a DAG scheduled on assets gets a run when the events queued for it meet
its condition (Airflow 3's data-aware scheduling, with Airflow's asset_dag_run_queue).

Every asset event, a task's outlet (committed with the task's success) or an external one
(`record_asset_event`, the `AssetEventSink` the API and webhooks use), queues one row per
active DAG whose condition names the asset, in the event's own transaction. This module reacts
to what was committed, never polls: the writer tells it of the outlets of each commit
(`events_committed`), the sink of the events it records, the registry of DAGs (re)loaded, the
engine of DAGs unpaused; at start-up every loaded DAG on assets is looked at once (`start`).

Looking at a DAG reads its queue (a paused DAG has none to read, so it keeps its queue and runs
once unpaused, as in Airflow) and, if the queued assets meet its condition, creates ONE run of
run_type `asset_triggered`, in the store transaction that deletes exactly the queue rows read
and links the run to their events. If the delete finds other rows than were read (another
daemon consumed them, or more arrived), nothing is created and the queue is read again. So a
set of events makes one run, also across restarts and with several evaluators.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.core.assets import (
    asset_triggered_run_id,
    condition_met,
    condition_uris,
    triggering_asset_events,
    uri_problem,
)
from orchestrator.core.records import AssetEventRecord, NewAssetEvent, NewRun
from orchestrator.engine.engine import Engine
from orchestrator.errors import DagNotFound, InvalidRequest, ShuttingDown
from orchestrator.ports import AssetStore, Clock, QueuedAsset, Timers

log = logging.getLogger("orchestrator.triggers.assets")

RUN_TYPE = "asset_triggered"
#: how often one pass reads a DAG's queue again after another evaluator consumed it first
MAX_ATTEMPTS = 5
#: seconds before the DAGs of a failed pass are looked at again (the database was unreachable)
RETRY_DELAY = 2.0


class AssetTrigger:
    """Creates the asset-triggered runs; also the `AssetEventSink` for events from outside."""

    def __init__(self, engine: Engine, store: AssetStore, clock: Clock, timers: Timers) -> None:
        self._engine = engine
        self._store = store
        self._clock = clock
        self._timers = timers
        #: DAGs to look at; looked at by one background pass at a time
        self._dirty: set[str] = set()
        self._working = False
        self._started = False
        self._idle = asyncio.Event()
        self._idle.set()
        #: asset URI -> the loaded DAGs whose condition names it (rebuilt after a DAG load)
        self._consumers: dict[str, frozenset[str]] | None = None
        self.runs_created = 0

    def attach(self) -> None:
        """Listen to the engine: outlets committed, DAGs loaded and unpaused."""
        self._engine.set_asset_events_listener(self.events_committed)
        self._engine.registry.add_listener(self.dags_loaded)
        self._engine.add_paused_listener(self.dag_paused_or_unpaused)

    async def recover(self) -> None:
        """Before the engine recovers its runs: the events behind every unfinished asset-triggered
        run, which their templates see (`triggering_asset_events`)."""
        for run_pk, events in (await self._store.triggering_asset_events()).items():
            self._engine.set_triggering_asset_events(run_pk, triggering_asset_events(events))

    def start(self) -> None:
        """Once the engine has recovered: look at every loaded DAG on assets (events queued while
        the daemon was down), then at whatever changes."""
        self._started = True
        self._mark(loaded.spec.dag_id for loaded in self._engine.registry if loaded.spec.asset_condition)

    async def settled(self) -> None:
        """Wait until no DAG is left to look at (tests; the daemon never waits on it)."""
        await self._idle.wait()

    # --- what happened --------------------------------------------------------------------

    def events_committed(self, events: Sequence[NewAssetEvent]) -> None:
        """The writer committed these outlet events (queued for their DAGs in that commit)."""
        self._mark(self._consumers_of(event.uri for event in events))

    def dags_loaded(self, dag_ids: Sequence[str]) -> None:
        self._consumers = None
        self._mark(dag_ids)

    def dag_paused_or_unpaused(self, dag_id: str, is_paused: bool) -> None:
        if not is_paused:  # its queue waited while it was paused
            self._mark([dag_id])

    async def record_asset_event(
        self, uri: str, extra: dict[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[int, bool]:
        """`AssetEventSink`: record one event from outside and trigger every DAG it completes."""
        event, created = await self.record_external_event(uri, extra, idempotency_key=idempotency_key)
        return event.id, created

    async def record_external_event(
        self, uri: str, extra: dict[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[AssetEventRecord, bool]:
        """Record one event of `uri` (the asset is created if unknown: events may come before any
        DAG names it) and look at every DAG waiting on it. Raises InvalidRequest."""
        problem = uri_problem(uri)
        if problem is not None:
            raise InvalidRequest(problem)
        if not isinstance(extra, dict):
            raise InvalidRequest(f"extra must be a JSON object, got {type(extra).__name__}")
        new = NewAssetEvent(uri=uri, timestamp=self._clock.now(), extra=extra)
        event, created, queued_for = await self._store.record_asset_event(new, idempotency_key)
        if created:
            log.info(
                "asset event %d of %s recorded (queued for %s)", event.id, uri, list(queued_for) or "none"
            )
            self._mark({*queued_for, *self._consumers_of([uri])})
        return event, created

    # --- looking at DAGs --------------------------------------------------------------------

    def _consumers_of(self, uris: Iterable[str]) -> set[str]:
        if self._consumers is None:
            index: dict[str, set[str]] = {}
            for loaded in self._engine.registry:
                if loaded.spec.asset_condition:
                    for uri in condition_uris(loaded.spec.asset_condition):
                        index.setdefault(uri, set()).add(loaded.spec.dag_id)
            self._consumers = {uri: frozenset(ids) for uri, ids in index.items()}
        consumers = self._consumers
        return {dag_id for uri in set(uris) for dag_id in consumers.get(uri, ())}

    def _mark(self, dag_ids: Iterable[str]) -> None:
        self._dirty.update(dag_ids)
        if not self._dirty or not self._started or self._working:
            return
        self._working = True
        self._idle.clear()
        self._engine.supervisor.spawn(self._work(), name="asset trigger")

    async def _work(self) -> None:
        try:
            while self._dirty and not self._engine.draining:
                batch = sorted(self._dirty)
                self._dirty.clear()
                try:
                    await self._look_at(batch)
                except ShuttingDown:
                    return
                except Exception as exc:  # the database: the queues are durable, look again later
                    log.error(
                        "could not look at the asset queues of %s (%r); again in %.0f s",
                        batch,
                        exc,
                        RETRY_DELAY,
                        exc_info=True,
                    )
                    self._timers.call_later(RETRY_DELAY, functools.partial(self._mark, batch))
        finally:
            self._working = False
            if self._dirty and not self._engine.draining:
                self._mark(())
            else:
                self._idle.set()

    async def _look_at(self, dag_ids: list[str]) -> None:
        wanted = [dag_id for dag_id in dag_ids if self._condition_of(dag_id) is not None]
        if not wanted:
            return
        queues = await self._store.asset_queues(wanted)
        for dag_id in wanted:
            queue = queues.get(dag_id)
            for _ in range(MAX_ATTEMPTS):
                if not queue or await self._consume(dag_id, queue):
                    break
                queue = (await self._store.asset_queues([dag_id])).get(dag_id)
            else:
                self._mark([dag_id])  # contended: after the others

    def _condition_of(self, dag_id: str) -> dict[str, Any] | None:
        loaded = self._engine.registry.get(dag_id)
        return None if loaded is None else loaded.spec.asset_condition

    async def _consume(self, dag_id: str, queue: list[QueuedAsset]) -> bool:
        """Create the DAG's run if its queue meets its condition. False: the queue changed under
        us (read it again); True otherwise."""
        try:
            loaded = self._engine.loaded_dag(dag_id)
        except DagNotFound:  # unloaded meanwhile: its queue waits for it
            return True
        condition = loaded.spec.asset_condition
        if condition is None:
            return True
        uris = condition_uris(condition)
        relevant = [item for item in queue if item.uri in uris]
        if len(relevant) < len(queue):  # the condition changed: what it no longer names goes
            await self._store.drop_stale_asset_queue(dag_id, uris)
        if not relevant or not condition_met(condition, {item.uri for item in relevant}):
            return True
        now = self._clock.now()
        new_run = NewRun(
            dag_id=dag_id,
            run_id=asset_triggered_run_id(now, max(item.last_event_id for item in relevant)),
            run_type=RUN_TYPE,
            conf={},
            logical_date=now,
            data_interval_start=min(item.first_at for item in relevant),
            data_interval_end=max(item.last_at for item in relevant),
            queued_at=now,
            external_trigger=False,
        )
        tasks = self._engine.new_task_instances(loaded)
        created = await self._store.create_asset_triggered_run(
            new_run, tasks, loaded.spec.source_hash, relevant
        )
        if created is None:
            log.info("the asset queue of %s changed while it was read: reading it again", dag_id)
            return False
        record, events = created
        self.runs_created += 1
        log.info(
            "asset-triggered run %s of %s created from %d events of %s",
            record.run_id,
            dag_id,
            len(events),
            ", ".join(sorted({event.uri for event in events})),
        )
        self._engine.set_triggering_asset_events(record.pk, triggering_asset_events(events))
        await self._engine.admit_created(record)
        return True
