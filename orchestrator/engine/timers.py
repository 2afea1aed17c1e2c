"""`LoopTimers`: the production `Timers` port, on the running event loop.

One place arms every engine timer (retry delays, the writer's lazy commits, heartbeats, and
the cron and sensor wake-ups to come), so tests can swap in a fake that advances time
instead of sleeping (tests/fakes.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from orchestrator.ports import Clock, TimerHandle


class LoopTimers:
    """Timers on the asyncio loop; wall-clock deadlines are converted with `clock` when armed."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    def call_at(self, when: datetime, callback: Callable[[], None]) -> TimerHandle:
        return self.call_later((when - self._clock.now()).total_seconds(), callback)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)
