"""`RunCreator`: the runs triggers ask for, created in batches (group creation).

Every trigger (the API, the scheduler, webhooks, backfills) creates runs through
`Engine.create_run`. Creating one run is one transaction of several statements; under a flood
(a webhook delivered a thousand times a second) those round trips are the daemon's whole cost.
So requests made while a batch is being written wait for the next one, and a batch of any size
is one transaction of four statements (`StateStore.create_runs`): with no load a request is
written at once, as alone; under load, the batch grows with it. Each run is still unique on
(dag_id, run_id) and created at most once. A batch the database refuses (a value it cannot
store, or a lost connection) is written again one run at a time, so only the request at fault
fails.

Once a batch is committed, every created run is published on the event bus (as `queued`), and
the runs its DAGs have room for are admitted in the same transaction (the store claims them, as
an admission pass would, see `admission`) and started before the callers hear back: a trigger
costs one commit. A batch written one run at a time (after a refusal) is admitted by a pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.core.records import NewRun, NewTaskInstance, RunRecord
from orchestrator.engine.admission import MAX_READ_PER_FILL, Admission
from orchestrator.engine.registry import LoadedDag
from orchestrator.engine.supervision import Supervisor
from orchestrator.ports import ActiveRun, Events, RunChanged, StateStore

log = logging.getLogger("orchestrator.engine.creation")

#: the most runs one transaction creates
MAX_BATCH = 500


@dataclass(slots=True)
class _Request:
    run: NewRun
    loaded: LoadedDag
    tasks: Sequence[NewTaskInstance]
    answer: asyncio.Future[tuple[RunRecord, bool]]


class RunCreator:
    """Writes the runs asked for in batches, one batch at a time, and starts those created."""

    def __init__(
        self,
        store: StateStore,
        admission: Admission,
        supervisor: Supervisor,
        events: Events | None = None,
    ) -> None:
        self._store = store
        self._events = events
        self._admission = admission
        self._supervisor = supervisor
        self._pending: list[_Request] = []
        self._writing = False

    async def create(
        self, run: NewRun, loaded: LoadedDag, tasks: Sequence[NewTaskInstance]
    ) -> tuple[RunRecord, bool]:
        """The run (created now, or the one that existed) and whether it was created; started if
        its DAG has room. Raises what the store raised for this run."""
        answer: asyncio.Future[tuple[RunRecord, bool]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(run, loaded, tasks, answer))
        if not self._writing:
            self._writing = True
            self._supervisor.spawn(self._write_all(), name="create runs")
        return await answer

    async def _write_all(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._write(batch)
        finally:
            self._writing = False

    async def _write(self, batch: list[_Request]) -> None:
        try:
            try:
                results, admitted = await self._store.create_and_admit_runs(
                    [(r.run, r.tasks, r.loaded.spec.source_hash) for r in batch],
                    MAX_READ_PER_FILL,
                    self._admission.held(),
                )
            except Exception:
                if len(batch) == 1:
                    raise
                # one request may hold what the database refuses: each then gets its own answer
                await self._write_one_by_one(batch)
                return
            self._started(batch, results, admitted)
        except BaseException as exc:
            for request in batch:
                if not request.answer.done():
                    request.answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _write_one_by_one(self, batch: list[_Request]) -> None:
        for request in batch:
            try:
                source_hash = request.loaded.spec.source_hash
                result = await self._store.create_run(request.run, request.tasks, source_hash)
            except Exception as exc:
                request.answer.set_exception(exc)
                continue
            self._started([request], [result], None)

    def _started(
        self,
        batch: list[_Request],
        results: list[tuple[RunRecord, bool]],
        admitted: list[ActiveRun] | None,
    ) -> None:
        """Tell of the created runs, drive those admitted with them (`admitted`; None: they were
        written without admission, which a pass does now), then answer the callers."""
        created = [(request, record) for request, (record, made) in zip(batch, results, strict=True) if made]
        if created and self._events is not None:
            # committed: told before the run's start (its `running`) can be published
            for _, record in created:
                self._events.publish(RunChanged(record))
        for _, record in created:
            log.info("run %s of %s created (%s)", record.run_id, record.dag_id, record.run_type)
        dag_ids = list(dict.fromkeys(record.dag_id for _, record in created))
        if admitted is not None:
            self._admission.start_admitted(admitted)
            _answer(batch, results)
            return
        if not dag_ids:
            _answer(batch, results)
            return
        # the next batch is written meanwhile: its runs join the admission passes running now
        self._supervisor.spawn(self._admitted(dag_ids, batch, results), name="admit created runs")

    async def _admitted(
        self, dag_ids: list[str], batch: list[_Request], results: list[tuple[RunRecord, bool]]
    ) -> None:
        try:
            await asyncio.gather(*(self._admission.admit_now(dag_id) for dag_id in dag_ids))
        finally:
            _answer(batch, results)


def _answer(batch: list[_Request], results: list[tuple[RunRecord, bool]]) -> None:
    for request, result in zip(batch, results, strict=True):
        if not request.answer.done():
            request.answer.set_result(result)
