"""Group commit: every state change goes through one writer, which commits whatever has
accumulated as one transaction, then runs each change's follow-up action in order.

Why: a task's state change must be durable before it is acted on, and a commit is the most
expensive step of a task's life. With one commit in flight at a time, changes that arrive
meanwhile wait and ride the next commit together. Under light load a change is committed
at once (no added latency); under heavy load batches grow and the number of commits per
task falls. The engine stays synchronous: it mutates its in-memory state, hands the rows to
`submit`, and gives the action (start the queued tasks) as a callback that runs only after
the rows are committed.

A change may be submitted as *lazy* (a task reporting that it started): it does not start a
commit of its own but rides the next one, or is committed after `LAZY_DELAY` if nothing else
comes first. A short task's "running" and "success" rows then share one commit instead of
two commits in a row on the chain's critical path. Nothing is acted on because of a lazy
change, so delaying it a few milliseconds loses nothing that a crash would not lose anyway.

Once a change set is committed its rows are published on the event bus, the asset events it
recorded (task outlets) are handed to `on_asset_events` (the asset trigger), then the follow-up
actions run. A follow-up that raises is handed to the supervisor's fatal path: memory and the
database may then disagree, and only a restart (recovery from the database) is sure to fix it.

A commit that fails on a lost connection is retried, with a backoff, until it succeeds;
nothing after it is committed or acted on meanwhile. Retrying is safe even when the first
attempt did commit: change sets hold whole rows, and no later change exists to overwrite.

A commit the database *refuses* (an error about the rows, not the connection: a value
PostgreSQL will not store that the engine's checks did not foresee) must not stop the daemon
for everyone. The writer commits the merged change sets again one at a time, in order, so
only the culprit is singled out; the engine's `repair_refused` hook turns it into a change
set that can be stored (the try that returned the value is failed, without the value), which
is committed instead. Only a change set that cannot be repaired, or whose repair is refused
too, is fatal: the engine's own rows were refused, which is a bug, and the log says which.
A run whose try was failed by a repair may already have been settled as a success in memory,
by a change set behind the refused one: from then on the writer stores such a run's success as
a failure, so that no reader ever sees the run succeed and then fail.

Every commit is fenced by the store on the runs this replica owns. The rows of a run another
replica claimed meanwhile are not written; the writer hands those runs to `on_fenced` (the
engine drops them and stops their tasks) before any follow-up action runs, publishes none of
their rows, and the follow-ups skip them (the engine no longer holds them).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from orchestrator.core.records import ChangeSet, NewAssetEvent
from orchestrator.core.states import RunState
from orchestrator.engine.supervision import Supervisor
from orchestrator.ports import Events, StateStore, TimerHandle, Timers

log = logging.getLogger("orchestrator.engine.writer")

AfterCommit = Callable[[], None]

#: turns a change set the database refused into one it can store (None: it cannot be repaired)
RepairRefused = Callable[[ChangeSet, Exception], ChangeSet | None]

#: longest a lazy change waits for a commit to ride (seconds)
LAZY_DELAY = 0.005

#: how many runs failed by a repair the writer remembers (to store their success as a failure)
REPAIRED_RUNS_KEPT = 1024

#: backoff between attempts when the database refuses a commit (seconds)
RETRY_BACKOFF = (0.05, 0.2, 1.0, 2.0, 5.0)


@dataclass(slots=True)
class _Pending:
    changes: ChangeSet
    after: AfterCommit | None
    #: the database refused these changes and they could not be repaired: nothing follows them
    refused: bool = False


class GroupCommitWriter:
    """Commits change sets in arrival order, merging those that wait into one transaction."""

    def __init__(self, store: StateStore, timers: Timers, events: Events, supervisor: Supervisor) -> None:
        self._store = store
        self._timers = timers
        self._events = events
        self._supervisor = supervisor
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._lazy_timer: TimerHandle | None = None
        self.commits = 0
        self.changes_committed = 0
        #: set by the engine: see the module docstring
        self.repair_refused: RepairRefused | None = None
        #: runs one of whose tries a repair failed: a success of theirs is stored as failed
        self._failed_by_repair: OrderedDict[int, None] = OrderedDict()
        #: told of the asset events of every commit that recorded some, once it is committed
        self.on_asset_events: Callable[[list[NewAssetEvent]], None] | None = None
        #: told of the runs whose rows a commit refused (another replica owns them now)
        self.on_fenced: Callable[[frozenset[int]], None] | None = None
        #: the runs refused by the commit in progress (see `_commit_retrying`)
        self._fenced: set[int] = set()

    def submit(self, changes: ChangeSet, after: AfterCommit | None = None, *, lazy: bool = False) -> None:
        """Queue rows for the next commit; `after` runs once they are durable. A lazy change
        (no `after`) waits up to LAZY_DELAY for another change to share a commit with."""
        self._pending.append(_Pending(changes, after))
        self._idle.clear()
        if lazy and after is None:
            if self._lazy_timer is None and not self._wake.is_set():
                self._lazy_timer = self._timers.call_later(LAZY_DELAY, self._wake_for_lazy)
            return
        self._wake.set()

    def _wake_for_lazy(self) -> None:
        self._lazy_timer = None
        self._wake.set()

    async def flushed(self) -> None:
        """Wait until everything submitted so far is committed and its follow-ups have run."""
        await self._idle.wait()

    async def run(self) -> None:
        """The writer loop; runs for the daemon's lifetime (cancel to stop)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._lazy_timer is not None:
                self._lazy_timer.cancel()
                self._lazy_timer = None
            while self._pending:
                batch, self._pending = self._pending, []
                merged = await self._commit(batch)
                if self._fenced:
                    fenced, self._fenced = frozenset(self._fenced), set()
                    if merged is not None:
                        merged = _without_runs(merged, fenced)
                    self._tell_fenced(fenced)
                if merged is not None:
                    self._events.publish_changes(merged)
                    if merged.asset_events and self.on_asset_events is not None:
                        self._tell_asset_events(self.on_asset_events, merged.asset_events)
                for item in batch:
                    if item.refused:
                        continue
                    if item.after is not None:
                        try:
                            item.after()
                        except Exception as exc:
                            self._supervisor.fatal(f"an action after a commit failed: {exc!r}")
            self._idle.set()

    def _tell_asset_events(
        self, listener: Callable[[list[NewAssetEvent]], None], events: list[NewAssetEvent]
    ) -> None:
        try:
            listener(events)
        except Exception as exc:  # the events are durable: the trigger's recovery still sees them
            self._supervisor.fatal(f"the asset trigger failed on committed asset events: {exc!r}")

    def _tell_fenced(self, fenced: frozenset[int]) -> None:
        log.error(
            "another replica owns run(s) %s now: their rows were not written, this replica lets them go",
            ", ".join(map(str, sorted(fenced))),
        )
        if self.on_fenced is None:
            return
        try:
            self.on_fenced(fenced)
        except Exception as exc:
            self._supervisor.fatal(f"dropping the runs another replica took failed: {exc!r}")

    def _correct(self, item: _Pending) -> None:
        """A success of a run failed by an earlier repair is stored as the failure it is."""
        if self._failed_by_repair and item.changes.runs:
            item.changes.runs = [
                replace(run, state=RunState.FAILED)
                if run.pk in self._failed_by_repair and run.state == RunState.SUCCESS
                else run
                for run in item.changes.runs
            ]

    async def _commit(self, batch: list[_Pending]) -> ChangeSet | None:
        merged = ChangeSet()
        for item in batch:
            self._correct(item)
            merged.extend(item.changes)
        if not merged:
            return None
        try:
            await self._commit_retrying(merged)
        except Exception as exc:
            if len(batch) == 1:
                return await self._commit_refused(batch[0], exc)
            log.error(
                "the database refused a commit of %d change sets (%r); committing them one at a time "
                "to find the refused one",
                len(batch),
                exc,
            )
            return await self._commit_one_by_one(batch)
        self.commits += 1
        self.changes_committed += len(batch)
        return merged

    async def _commit_retrying(self, changes: ChangeSet) -> None:
        """Commit, retrying (with a backoff) while the connection is lost; any other error is raised."""
        attempt = 0
        while True:
            try:
                self._fenced.update(await self._store.commit(changes))
                return
            except OSError as exc:  # ConnectionError: the store's word for "retry me"
                delay = RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)]
                attempt += 1
                log.error("commit failed (%s); retrying in %.2f s, nothing is acted on meanwhile", exc, delay)
                await self._timers.sleep(delay)  # backoff while the database is unreachable

    async def _commit_one_by_one(self, batch: list[_Pending]) -> ChangeSet:
        committed = ChangeSet()
        for item in batch:
            self._correct(item)  # an earlier item's repair may have failed this item's run
            if not item.changes:
                continue
            try:
                await self._commit_retrying(item.changes)
            except Exception as exc:
                stored = await self._commit_refused(item, exc)
                if stored is not None:
                    committed.extend(stored)
                continue
            self.commits += 1
            self.changes_committed += 1
            committed.extend(item.changes)
        return committed

    async def _commit_refused(self, item: _Pending, error: Exception) -> ChangeSet | None:
        """`item` alone was refused: commit its repair, or stop the daemon saying what was refused."""
        log.error("the database refused a change set (%r): %s", error, _describe(item.changes))
        repaired = self.repair_refused(item.changes, error) if self.repair_refused is not None else None
        if repaired is not None:
            try:
                await self._commit_retrying(repaired)
            except Exception as second:
                self._give_up(item, f"its repair was refused too ({second!r})", error)
                return None
            for run_pk in {xcom.run_pk for xcom in item.changes.xcoms}:
                self._failed_by_repair[run_pk] = None
            while len(self._failed_by_repair) > REPAIRED_RUNS_KEPT:
                self._failed_by_repair.popitem(last=False)
            item.changes = repaired
            self.commits += 1
            self.changes_committed += 1
            return repaired
        self._give_up(item, "it holds no value that could be left out", error)
        return None

    def _give_up(self, item: _Pending, why: str, error: Exception) -> None:
        item.refused = True
        self._supervisor.fatal(
            f"the database refused a change set and {why}: {error!r}; rows: {_describe(item.changes)}"
        )


def _without_runs(changes: ChangeSet, runs: frozenset[int]) -> ChangeSet:
    """The change set less the rows of these runs (the fenced ones, which were not written)."""
    refused = {(t.dag_id, t.run_id) for t in changes.tasks if t.run_pk in runs}
    return ChangeSet(
        tasks=[t for t in changes.tasks if t.run_pk not in runs],
        runs=[r for r in changes.runs if r.pk not in runs],
        xcoms=[x for x in changes.xcoms if x.run_pk not in runs],
        asset_events=[e for e in changes.asset_events if (e.source_dag_id, e.source_run_id) not in refused],
    )


def _describe(changes: ChangeSet) -> str:
    """The rows of a change set, briefly: which task instances, runs and XComs (with their size)."""
    parts = [
        f"task {t.dag_id}/{t.run_id}/{t.task_id}[{t.map_index}] try {t.try_number} -> {t.state.value}"
        for t in changes.tasks
    ]
    parts += [f"run {r.dag_id}/{r.run_id} -> {r.state.value}" for r in changes.runs]
    parts += [
        f"xcom {x.task_id}[{x.map_index}] {x.key!r} ({len(repr(x.value)):,} chars)" for x in changes.xcoms
    ]
    return "; ".join(parts[:20]) + (f"; and {len(parts) - 20} more" if len(parts) > 20 else "")
