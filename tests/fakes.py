"""Fakes of the time ports, so engine tests advance time instead of sleeping or racing.

`FakeClock` is a wall clock that moves only when told; `FakeTimers` arms timers against it
and fires, in due order, every timer that `advance` moves past. Callbacks run synchronously
inside `advance`, as the loop would run them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class FakeClock:
    """UTC time that starts at `start` and moves only with `advance`."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._monotonic = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def _move(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """The Timers port on a FakeClock. `sleep` waits until `advance` passes its deadline."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, _Handle, Callable[[], None]]] = []
        self._order = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle()
        heapq.heappush(
            self._heap, (self.clock.monotonic() + max(0.0, delay), next(self._order), handle, callback)
        )
        return handle

    def call_at(self, when: datetime, callback: Callable[[], None]) -> _Handle:
        return self.call_later((when - self.clock.now()).total_seconds(), callback)

    async def sleep(self, delay: float) -> None:
        done = asyncio.get_running_loop().create_future()
        self.call_later(delay, lambda: done.done() or done.set_result(None))
        await done

    def pending(self) -> list[float]:
        """Seconds from now until each armed (not cancelled) timer is due, soonest first."""
        now = self.clock.monotonic()
        return sorted(due - now for due, _, handle, _ in self._heap if not handle.cancelled)

    def advance(self, seconds: float) -> int:
        """Move time forward by `seconds`, firing every timer due by then; how many fired."""
        target = self.clock.monotonic() + seconds
        fired = 0
        while self._heap and self._heap[0][0] <= target:
            due, _, handle, callback = heapq.heappop(self._heap)
            self.clock._move(due - self.clock.monotonic())
            if not handle.cancelled:
                callback()
                fired += 1
        self.clock._move(target - self.clock.monotonic())
        return fired
