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

Once a change set is committed its rows are published on the event bus, then the follow-up
actions run. A follow-up that raises is handed to the supervisor's fatal path: memory and the
database may then disagree, and only a restart (recovery from the database) is sure to fix it.

A commit that fails on a lost connection is retried, with a backoff, until it succeeds;
nothing after it is committed or acted on meanwhile. Retrying is safe even when the first
attempt did commit: change sets hold whole rows, and no later change exists to overwrite.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.core.records import ChangeSet
from orchestrator.engine.supervision import Supervisor
from orchestrator.ports import Events, StateStore, TimerHandle, Timers

log = logging.getLogger("orchestrator.engine.writer")

AfterCommit = Callable[[], None]

#: longest a lazy change waits for a commit to ride (seconds)
LAZY_DELAY = 0.005

#: backoff between attempts when the database refuses a commit (seconds)
RETRY_BACKOFF = (0.05, 0.2, 1.0, 2.0, 5.0)


@dataclass(slots=True)
class _Pending:
    changes: ChangeSet
    after: AfterCommit | None


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
                if merged is not None:
                    self._events.publish_changes(merged)
                for item in batch:
                    if item.after is not None:
                        try:
                            item.after()
                        except Exception as exc:
                            self._supervisor.fatal(f"an action after a commit failed: {exc!r}")
            self._idle.set()

    async def _commit(self, batch: list[_Pending]) -> ChangeSet | None:
        merged = ChangeSet()
        for item in batch:
            merged.extend(item.changes)
        if not merged:
            return None
        attempt = 0
        while True:
            try:
                await self._store.commit(merged)
                break
            except OSError as exc:  # ConnectionError: the store's word for "retry me"
                delay = RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)]
                attempt += 1
                log.error("commit failed (%s); retrying in %.2f s, nothing is acted on meanwhile", exc, delay)
                await self._timers.sleep(delay)  # backoff while the database is unreachable
        self.commits += 1
        self.changes_committed += len(batch)
        return merged
