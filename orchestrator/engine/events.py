"""`EventBus`: every committed state change goes out here, once, to whoever subscribed.

The writer publishes the rows of each change set after it commits, the DAG folder publishes
import errors; the API's server-sent event stream, the metrics and the UI subscribe. Nobody
polls the database for changes. Publishing never blocks and never fails the publisher: each
subscriber has a bounded buffer, and one that falls too far behind loses its oldest events
and sees how many in `dropped` (it should then re-read the state it shows). With no
subscriber, publishing costs one check, so the hot path pays nothing for the seam.
"""

from __future__ import annotations

import asyncio
from collections import deque

from orchestrator.core.records import ChangeSet
from orchestrator.core.states import FINISHED_RUN_STATES
from orchestrator.ports import Event, RunChanged, TaskInstanceChanged


class BusSubscription:
    """One subscriber's buffered view of the bus; iterate it with `async for`."""

    def __init__(self, bus: EventBus, buffer: int) -> None:
        self._bus = bus
        self._events: deque[Event] = deque()
        self._buffer = max(1, buffer)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def _put(self, event: Event) -> None:
        if len(self._events) >= self._buffer:
            self._events.popleft()
            self.dropped += 1
        self._events.append(event)
        self._ready.set()

    def __aiter__(self) -> BusSubscription:
        return self

    async def __anext__(self) -> Event:
        while not self._events:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()

    def pending(self) -> int:
        return len(self._events)

    def close(self) -> None:
        """Stop receiving; an iteration waiting on it ends once the buffer is empty."""
        self._closed = True
        self._bus._remove(self)
        self._ready.set()

    def __enter__(self) -> BusSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Publish-subscribe of committed state changes, in commit order, within the daemon."""

    def __init__(self) -> None:
        self._subscribers: list[BusSubscription] = []
        self.published = 0

    def subscribe(self, buffer: int = 10_000) -> BusSubscription:
        subscription = BusSubscription(self, buffer)
        self._subscribers.append(subscription)
        return subscription

    def _remove(self, subscription: BusSubscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def publish(self, event: Event) -> None:
        self.published += 1
        for subscriber in self._subscribers:
            subscriber._put(event)

    def publish_changes(self, changes: ChangeSet) -> None:
        """Publish the rows of one commit: a run's start before its tasks' changes, a run's end
        after them (the order a reader expects: running, tasks queued ... success, run success)."""
        if not self._subscribers:
            return
        for run in changes.runs:
            if run.state not in FINISHED_RUN_STATES:
                self.publish(RunChanged(run))
        for ti in changes.tasks:
            self.publish(TaskInstanceChanged(ti))
        for run in changes.runs:
            if run.state in FINISHED_RUN_STATES:
                self.publish(RunChanged(run))
