"""Recovery: resume every active run from the store after a start or a crash.

What was committed is the truth. A succeeded task is never run again. A try that was
`queued` and had not started is started again as the same try. A try that was `running`,
or `queued` while a process carrying its token is found alive (it had started, but its
`running` row was still waiting on the lazy write when the daemon died), is offered to its
executor for adoption; if the executor cannot adopt it, what is left of it is killed and the
try counts as failed, then is retried or failed per its policy, with the reason in its log.
Retry timers are re-armed. Runs still `queued` are admitted from the store.

With replicas, a replica resumes only the runs it claims (`StateStore.claim_orphaned_runs`): at
start-up its own from before a restart, released ones and those of replicas whose lease ran
out, up to its fair share; later, the same on every takeover pass. A run taken over from a
replica that died is resumed exactly as after a crash of this one: its tries that were running
there are counted as failed (what is left of them on this host is killed first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime

from orchestrator.core.model import DagSpec
from orchestrator.core.resolver import resolve
from orchestrator.core.states import ACTIVE_TASK_STATES, FINISHED_TASK_STATES, RunState, TaskState
from orchestrator.engine.admission import Admission, fit_to_instances
from orchestrator.engine.launch import try_token
from orchestrator.engine.live import Batch, LiveRun
from orchestrator.engine.progress import RunProgress
from orchestrator.engine.registry import DagRegistry, LoadedDag
from orchestrator.ports import ActiveRun, StateStore

log = logging.getLogger("orchestrator.engine.recovery")

#: the most runs one claim takes
CLAIM_BATCH = 100


class Recovery:
    """Rebuilds the engine's runs from the store."""

    def __init__(
        self, store: StateStore, progress: RunProgress, admission: Admission, registry: DagRegistry
    ) -> None:
        self._store = store
        self._progress = progress
        self._admission = admission
        self._registry = registry
        self.stored_specs: Mapping[str, DagSpec] = {}
        #: earlier DAG versions that recovered or waiting runs use, shared between their runs
        self._version_cache: dict[tuple[str, str | None], LoadedDag] = {}
        #: one takeover pass at a time (a pass awaits the executors while it resumes runs)
        self._passes = asyncio.Lock()

    def dag_of_run(self, item: ActiveRun) -> LoadedDag | None:
        """The DAG a stored run runs: its recorded version, else the loaded DAG, else the stored one."""
        loaded = self._registry.get(item.run.dag_id)
        if item.spec is not None:
            if loaded is not None and loaded.spec.source_hash == item.spec.source_hash:
                return loaded  # the version the file has now: share it
            key = (item.spec.dag_id, item.spec.source_hash)
            version = self._version_cache.get(key)
            if version is None:
                version = self._version_cache[key] = LoadedDag.of(item.spec)
            return version
        if loaded is not None:
            return loaded
        stored = self.stored_specs.get(item.run.dag_id)
        return LoadedDag.of(stored) if stored is not None else None

    async def recover(self, stored_specs: Mapping[str, DagSpec], now: datetime) -> int:
        """Resume the runs this replica claims; returns how many (the engine then admits the
        waiting ones)."""
        self.stored_specs = stored_specs
        return await self.take_over(now, take_expired=True)

    async def take_over(self, now: datetime, *, take_expired: bool) -> int:
        """Claim and resume the running runs nobody drives (see `StateStore.claim_orphaned_runs`),
        batch after batch while batches come back full; returns how many were resumed."""
        total = 0
        async with self._passes:
            while not self._progress.draining:
                held = self._progress.held_runs()
                claimed = await self._store.claim_orphaned_runs(CLAIM_BATCH, held, take_expired=take_expired)
                for item in claimed:
                    await self._resume(item, now)
                total += len(claimed)
                if len(claimed) < CLAIM_BATCH:
                    break
        return total

    async def resume_claimed(self, run_pks: list[int], now: datetime) -> None:
        """Resume runs this replica just claimed (for an operation on them)."""
        for item in await self._store.load_runs(run_pks):
            if item.run.state == RunState.RUNNING and item.run.pk not in self._progress.runs:
                await self._resume(item, now)

    async def _resume(self, item: ActiveRun, now: datetime) -> None:
        if item.run.pk in self._progress.runs:
            return
        loaded = self.dag_of_run(item)
        if loaded is None:
            log.error("run %s of %s cannot resume: its DAG is not loaded", item.run.run_id, item.run.dag_id)
            return
        log.info("resuming run %s of %s", item.run.run_id, item.run.dag_id)
        await self._resume_running(item, fit_to_instances(loaded, item.task_instances), now)

    async def _resume_running(self, item: ActiveRun, loaded: LoadedDag, now: datetime) -> None:
        progress = self._progress
        xcoms = {(x.task_id, x.key): x.value for x in item.xcoms if x.map_index == -1}
        live = LiveRun.build(item.run, loaded, list(item.task_instances), xcoms)
        slots = progress.hold_run(live)
        slots.active_tasks += sum(1 for ti in live.tis.values() if ti.state in ACTIVE_TASK_STATES)
        batch = Batch()
        known = loaded.graph.upstream
        lost: list[str] = []
        dispatcher = progress.dispatcher
        for ti in list(live.tis.values()):
            task = loaded.tasks.get(ti.task_id)
            if ti.task_id not in known or task is None:
                if ti.state not in FINISHED_TASK_STATES:
                    progress.set_ti(live, ti, batch, state=TaskState.REMOVED)
                continue
            if ti.state in ACTIVE_TASK_STATES:
                executor = None
                executor_name = ""
                if dispatcher is not None:
                    try:
                        executor_name = dispatcher.route(task)
                        executor = dispatcher.get(executor_name)
                    except Exception:
                        executor = None
                token = try_token(progress.installation, ti) if progress.installation else ""
                started = ti.state == TaskState.RUNNING
                if executor is not None and not started:
                    # a try whose process started but whose `running` row was not yet written
                    started = await executor.find_started(ti, token)
                if not started:
                    progress.note(ti, now, "re-queued after a daemon restart (it had not started)")
                    progress.prepare_launch(live, ti, batch, now)
                    continue
                if executor is not None and await executor.adopt(ti, token):
                    if dispatcher is not None:
                        dispatcher.adopted(ti.key, executor_name)
                    continue
                progress.note(
                    ti,
                    now,
                    f"the daemon stopped while try {ti.try_number} was running "
                    f"({ti.external_id or 'started'} on {ti.hostname or 'this host'}); "
                    "the try is counted as failed",
                )
                if ti.state == TaskState.QUEUED:
                    ti = progress.set_ti(live, ti, batch, state=TaskState.RUNNING)
                progress.fail_try(live, ti, batch, now)
                lost.append(ti.task_id)
            elif ti.state == TaskState.UP_FOR_RETRY:
                progress.arm_retry(ti.key, ti.next_retry_at or now)
            elif ti.state == TaskState.SCHEDULED:
                slots.waiting.append((live.pk, (ti.task_id, ti.map_index)))
        progress.apply_resolution(live, resolve(loaded.graph, live.states), batch)
        progress.after_change(live, [t for t in lost if live.states.get(t) in FINISHED_TASK_STATES], batch)
        progress.commit(batch)
