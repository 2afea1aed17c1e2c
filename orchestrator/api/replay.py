"""`EventReplay`: the event bus's recent past, numbered, so that a stream can resume.

The server-sent event stream (`orchestrator.api.events`) gives every event an id and lets a
client that lost its connection say the last id it saw (`Last-Event-ID`). One subscriber of the
bus numbers the events in commit order and keeps the last `capacity` of them in a ring (memory
is bounded whatever the load); a stream opened after an id gets the ring's events after it,
then the live ones. An id the ring no longer covers (too old, from before a restart, or across
a gap the bus reported) cannot be resumed exactly: the stream is told so (`missed`) and the
client re-reads the state it shows.

Ids are integers that only grow, also across restarts: they start at the daemon's start time
in microseconds (below 2**53, so JavaScript reads them exactly), and an id from an earlier life
of the daemon is therefore always "too old".

Each stream has its own bounded queue of live events. A stream that cannot keep up (its queue
is full) is ended rather than allowed to grow memory or hold up the others: its client
reconnects with its last id and is replayed what it missed from the ring. Nothing here blocks
the publisher: `add` appends to a deque and sets an `asyncio.Event` per stream.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from orchestrator.ports import Event, Subscription

log = logging.getLogger("orchestrator.api.events")

#: events kept for resumption
DEFAULT_CAPACITY = 10_000
#: live events one stream may have waiting to be written before it is ended
DEFAULT_QUEUE = 1_000


@dataclass(frozen=True, slots=True)
class NumberedEvent:
    """One committed state change, its stream id, and when the stream numbered it."""

    id: int
    event: Event
    at: datetime


class Ended(enum.Enum):
    """Why a feed ended."""

    OVERFLOW = "overflow"
    GAP = "gap"
    SHUTDOWN = "shutdown"


class StreamFeed:
    """What one open stream has yet to write: the replayed backlog, then live events."""

    def __init__(self, replay: EventReplay, backlog: list[NumberedEvent], queue: int) -> None:
        self._replay = replay
        self._backlog = backlog
        self._live: deque[NumberedEvent] = deque()
        self._queue = max(1, queue)
        self._ready = asyncio.Event()
        #: set once the feed gets no more events (the stream ends when it has written the rest)
        self.ended: Ended | None = None
        if backlog:
            self._ready.set()

    def _put(self, item: NumberedEvent) -> None:
        if len(self._live) >= self._queue:
            self.end(Ended.OVERFLOW)
            return
        self._live.append(item)
        self._ready.set()

    def take(self, most: int = 500) -> list[NumberedEvent]:
        """Up to `most` events to write now, oldest first (an ended feed still gives what it
        holds: a stream ended for falling behind tells its client the last id it can resume at)."""
        taken: list[NumberedEvent] = []
        if self._backlog:
            taken, self._backlog = self._backlog[:most], self._backlog[most:]
        while self._live and len(taken) < most:
            taken.append(self._live.popleft())
        if not self._backlog and not self._live and self.ended is None:
            self._ready.clear()
        return taken

    async def wait(self) -> None:
        """Until there is something to take or the feed has ended."""
        await self._ready.wait()

    def end(self, reason: Ended) -> None:
        """Take no more events; a waiting stream wakes up and ends."""
        if self.ended is None:
            self.ended = reason
        self._replay._remove(self)
        self._ready.set()

    def close(self) -> None:
        """The stream is gone (its client left): stop feeding it."""
        self._replay._remove(self)


class EventReplay:
    """Numbers the bus's events, keeps the last `capacity`, and feeds the open streams."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        first_id: int | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._now = now
        self._ring: deque[NumberedEvent] = deque(maxlen=max(1, capacity))
        self._next_id = first_id if first_id is not None else time.time_ns() // 1000
        #: resuming after an id below this cannot be exact (a gap in the bus's events)
        self._complete_after = self._next_id - 1
        self._feeds: set[StreamFeed] = set()

    @property
    def last_id(self) -> int:
        """The id of the newest event (one below the first id while there is none)."""
        return self._next_id - 1

    def add(self, event: Event) -> NumberedEvent:
        """Number `event`, keep it, and hand it to every open stream."""
        item = NumberedEvent(self._next_id, event, self._now())
        self._next_id += 1
        self._ring.append(item)
        for feed in list(self._feeds):
            feed._put(item)
        return item

    def gap(self, missed: int) -> None:
        """The bus lost `missed` events before this subscriber read them: their ids are skipped,
        no resume across them is exact, and every open stream (which missed them) is ended."""
        self._next_id += missed
        self._complete_after = self._next_id - 1
        log.warning("the event stream missed %d events of the bus: open streams are reset", missed)
        for feed in list(self._feeds):
            feed.end(Ended.GAP)

    def open(self, after: int | None, queue: int = DEFAULT_QUEUE) -> tuple[StreamFeed, bool]:
        """A feed of the events after id `after` (None: live events only) and whether events
        after `after` were missed (then the feed holds only live events)."""
        missed = False
        backlog: list[NumberedEvent] = []
        if after is not None:
            oldest = self._ring[0].id if self._ring else self._next_id
            if after < max(oldest - 1, self._complete_after) or after >= self._next_id:
                missed = True
            else:
                backlog = [item for item in self._ring if item.id > after]
        feed = StreamFeed(self, backlog, queue)
        self._feeds.add(feed)
        return feed, missed

    def streams(self) -> int:
        """How many streams are open."""
        return len(self._feeds)

    def end_all(self) -> None:
        """Shutdown: every open stream ends once it has written what it holds."""
        for feed in list(self._feeds):
            feed.end(Ended.SHUTDOWN)

    def _remove(self, feed: StreamFeed) -> None:
        self._feeds.discard(feed)

    async def follow(self, subscription: Subscription) -> None:
        """Number every event of the bus subscription until it is closed (run as a task)."""
        seen_dropped = 0
        async for event in subscription:
            if subscription.dropped > seen_dropped:
                self.gap(subscription.dropped - seen_dropped)
                seen_dropped = subscription.dropped
            self.add(event)
