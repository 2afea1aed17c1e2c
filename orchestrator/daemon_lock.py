"""`DaemonLock`: the database's daemon lock, held and watched for as long as the daemon runs.

One daemon per database (until replicas share work): the lock is a PostgreSQL session
advisory lock on a connection of its own. If that connection ends (the server restarted, a
proxy cut it, an administrator terminated the session), PostgreSQL releases the lock and a
second daemon could start on the same runs. So the connection is watched: its end is an
event (asyncpg's termination listener), and a silent one is caught by the heartbeat, which
asks the connection to answer. On loss the daemon takes the lock again at once (retrying
while the database is unreachable: nothing commits, so nothing starts, meanwhile); if
another daemon took it first, this one stops with a clear message rather than run the
same work twice. This is where the replicas' heartbeat lease will live.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from orchestrator.ports import StateStore, Timers

log = logging.getLogger("orchestrator.daemon_lock")

#: seconds the lock connection has to answer the heartbeat's question
CHECK_TIMEOUT = 10.0
#: backoff while the database cannot be reached to take the lock again
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


class DaemonLock:
    """Take, watch and re-take the daemon lock; `on_taken_over(message)` if another daemon got it."""

    def __init__(self, store: StateStore, timers: Timers, on_taken_over: Callable[[str], None]) -> None:
        self._store = store
        self._timers = timers
        self._on_taken_over = on_taken_over
        self._lost = asyncio.Event()
        #: how many times the lock was lost and taken again (for tests and logs)
        self.retaken = 0

    async def acquire(self) -> bool:
        """Take the lock now; False if another daemon holds it."""
        return await self._store.try_lock_single_daemon(on_lost=self._lost.set)

    async def check(self) -> None:
        """Ask the lock connection to answer (the heartbeat calls this)."""
        if not await self._store.daemon_lock_held(CHECK_TIMEOUT):
            self._lost.set()

    async def guard(self) -> None:
        """Run for the daemon's life: take the lock again whenever it is lost."""
        while True:
            await self._lost.wait()
            self._lost.clear()
            log.warning("the daemon lock was lost with its database connection: taking it again")
            if not await self._retake():
                return

    async def _retake(self) -> bool:
        attempt = 0
        while True:
            try:
                taken = await self.acquire()
            except ConnectionError as exc:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                attempt += 1
                log.warning("cannot take the daemon lock again yet (%s); retrying in %.1f s", exc, delay)
                await self._timers.sleep(delay)
                continue
            if taken:
                self.retaken += 1
                log.info("the daemon lock is held again")
                return True
            self._on_taken_over(
                "another daemon took the database's daemon lock while this daemon's lock "
                "connection was down; this daemon stops so that no run is worked on twice"
            )
            return False
