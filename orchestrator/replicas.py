"""`Replica`: this daemon as one of several on one database: its lease, takeovers and wake-ups.

Several daemons with one `database.dsn` share the runs; the database is the only thing they
coordinate through (see storage/migrations/0009_run_ownership.sql):

- **Joining.** A daemon registers with a lease of `lease` seconds from the database's `now()`.
  It refuses to start beside a daemon from before replicas (which holds the old single-daemon
  advisory lock) and beside a live daemon with the same `daemon.daemon_id`. A registered daemon
  on this host whose process is gone (this one's previous incarnation, SIGKILLed) has its lease
  ended at once, so its runs are resumed now rather than when the lease would run out.
- **The heartbeat** renews the lease every `takeover_after / 5` seconds. If renewals keep
  failing until the lease could have run out, this replica lets go of every run it holds and
  stops their tasks: survivors may be taking them over, and a task must not run on two
  replicas. Once it reaches the database again it lets go of what others took meanwhile and
  claims back what is still its own.
- **Takeovers.** Every `takeover_after / 5` seconds, and at once when a replica hands its runs
  over (a NOTIFY), a pass claims the running runs nobody drives: released ones and, unless this
  replica was itself cut off from the database within the last lease, those of replicas whose
  lease ran out. With a lease of 2/3 of `takeover_after`, a SIGKILLed replica's runs are taken
  over within `takeover_after` seconds.
- **Wake-ups.** A run that waits to be started wakes every replica (LISTEN/NOTIFY on
  `orchestrator_runs`), not a poll interval; the listening connection is re-opened when it is
  lost, and what it may have missed meanwhile is looked at again.
- **Leaving.** After the drain, the daemon releases its runs (the survivors claim them at
  once) and removes its row.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from orchestrator.engine.engine import Engine
from orchestrator.errors import AnotherDaemonRunning
from orchestrator.ports import Clock, Listener, StateStore, TimerHandle, Timers

log = logging.getLogger("orchestrator.replicas")

#: heartbeats (and takeover passes) per `takeover_after`
BEATS_PER_TAKEOVER = 5
#: the lease, as a fraction of `takeover_after` (the rest is the takeover pass's delay)
LEASE_FRACTION = 2 / 3
#: backoff while the LISTEN connection cannot be opened again
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Replica:
    """Registers this daemon, keeps its lease, takes over runs, and wakes admission on NOTIFY."""

    def __init__(
        self,
        store: StateStore,
        engine: Engine,
        clock: Clock,
        timers: Timers,
        *,
        daemon_id: str,
        hostname: str,
        version: str,
        takeover_after: float,
        pid: int | None = None,
        alive: Callable[[int], bool] = process_alive,
    ) -> None:
        self._store = store
        self._engine = engine
        self._clock = clock
        self._timers = timers
        self.daemon_id = daemon_id
        self._hostname = hostname
        self._version = version
        self._pid = os.getpid() if pid is None else pid
        self._alive = alive
        #: seconds between heartbeats and between takeover passes
        self.interval = takeover_after / BEATS_PER_TAKEOVER
        #: how long a renewed lease holds
        self.lease = takeover_after * LEASE_FRACTION
        #: monotonic time at which the last renewal that succeeded was sent
        self._renewed_at: float | None = None
        #: since when renewals have succeeded in a row (None: the last one failed)
        self._contact_since: float | None = None
        #: this replica let go of its runs because its lease may have run out
        self.let_go = False
        self._deadline: TimerHandle | None = None
        self._takeover_wanted = asyncio.Event()
        self._listener: Listener | None = None
        self._listener_lost = asyncio.Event()
        #: how many takeover passes claimed something (for logs and tests)
        self.passes_that_took_over = 0

    # --- joining and leaving ----------------------------------------------------------

    async def join(self) -> None:
        """Register this daemon, or refuse to start beside one it cannot share the database with."""
        legacy = await self._store.legacy_daemon_lock_holder()
        if legacy is not None:
            raise AnotherDaemonRunning(
                f"a daemon of an orchestrator from before replicas (database session pid {legacy}) "
                "is running on this database and does not know about run ownership: stop it, or "
                "upgrade it, before starting this one"
            )
        for other in await self._store.list_daemons():
            if not other.alive:
                continue
            gone = other.hostname == self._hostname and (other.pid == self._pid or not self._alive(other.pid))
            if other.daemon_id == self.daemon_id and not gone:
                raise AnotherDaemonRunning(
                    f"daemon {other.daemon_id} (pid {other.pid} on {other.hostname}, last heartbeat "
                    f"{other.heartbeat_age:.0f} s ago) is running with this daemon.daemon_id: give "
                    "each replica its own daemon.daemon_id (or leave it unset), or, if it was just "
                    f"killed, start again in {self.lease:.0f} s when its lease has run out"
                )
            if gone and other.daemon_id != self.daemon_id:
                log.info(
                    "daemon %s (pid %d on this host) is gone: its runs are taken over now",
                    other.daemon_id,
                    other.pid,
                )
                await self._store.expire_daemon(other.daemon_id)
        await self._register()

    async def _register(self) -> None:
        sent = self._clock.monotonic()
        await self._store.register_daemon(
            self.daemon_id,
            self._hostname,
            self._pid,
            self._clock.now(),
            version=self._version,
            lease_seconds=self.lease,
        )
        self._renewed_at = sent
        self._arm_deadline()
        if self._contact_since is None:
            self._contact_since = sent

    async def advertise(self, api_url: str) -> None:
        """Where this replica's API listens, for the others (they proxy logs and operations)."""
        await self._store.set_daemon_api_url(self.daemon_id, api_url)

    async def leave(self) -> None:
        """After the drain: hand the runs over to the survivors and remove this daemon's row."""
        await self.stop_listening()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        try:
            released = await self._store.retire_daemon(self.daemon_id)
        except Exception as exc:  # the survivors take the runs over once the lease runs out
            log.warning("could not hand this replica's runs over (%s): they are taken over later", exc)
            return
        if released:
            log.info("handed %d run(s) over to the other replicas", released)

    # --- the heartbeat ------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Renew the lease every `interval` s for the daemon's life (cancel to stop)."""
        while True:
            await self._timers.sleep(self.interval)  # a timer between beats, not a poll of work
            await self.beat()

    async def beat(self) -> None:
        """One renewal of the lease, and what follows from it."""
        sent = self._clock.monotonic()
        try:
            renewed = await asyncio.wait_for(
                self._store.renew_lease(self.daemon_id, self.lease), self.interval
            )
        except Exception as exc:
            self._contact_since = None
            log.warning("cannot renew this replica's lease: %r", exc)
            return
        if not renewed:
            log.error("this replica's row was removed by another replica (it was taken for dead)")
            self._let_go_all("another replica took this one for dead")
            await self._register()
        cut_off = self._contact_since is None or self.let_go
        self._renewed_at = sent
        self._arm_deadline()
        if self._contact_since is None:
            self._contact_since = sent
        if cut_off:
            await self._reconnected()

    def _arm_deadline(self) -> None:
        """Let go of every run shortly before the lease just renewed could run out, unless the
        next renewal comes first."""
        if self._deadline is not None:
            self._deadline.cancel()
        since = self._clock.monotonic() - (self._renewed_at or self._clock.monotonic())
        delay = max(0.0, self.lease - min(1.0, self.interval / 2) - since)
        self._deadline = self._timers.call_later(delay, self._lease_running_out)

    def _lease_running_out(self) -> None:
        self._deadline = None
        if self.let_go:
            return
        self._let_go_all(
            f"this replica could not renew its lease for {self.lease:.0f} s, "
            "so other replicas may be taking its runs over"
        )

    def _let_go_all(self, why: str) -> None:
        self.let_go = True
        count = self._engine.let_go_all(why)
        if count:
            log.error("let go of %d run(s): %s", count, why)

    async def _reconnected(self) -> None:
        """In touch with the database again: keep what is still ours, claim back the rest."""
        self.let_go = False
        try:
            dropped = await self._engine.keep_owned_runs()
            if dropped:
                log.warning("%d run(s) were taken over by other replicas meanwhile", dropped)
            await self._engine.fill_waiting()
        except Exception as exc:
            log.warning("cannot check this replica's runs yet: %r", exc)
        self._takeover_wanted.set()

    # --- takeovers ----------------------------------------------------------------------

    async def takeovers(self) -> None:
        """A takeover pass every `interval` s, or at once when a replica released runs."""
        while True:
            try:
                await asyncio.wait_for(self._takeover_wanted.wait(), self.interval)
            except TimeoutError:
                pass
            self._takeover_wanted.clear()
            await self.take_over()

    async def take_over(self) -> int:
        """One takeover pass; returns how many runs it resumed."""
        if self.let_go or self._contact_since is None:
            return 0
        # just back from being cut off: the others' leases may have run out in the same outage
        take_expired = self._clock.monotonic() - self._contact_since >= self.lease
        try:
            count = await self._engine.take_over(take_expired=take_expired)
        except Exception as exc:
            log.warning("takeover pass failed: %r", exc)
            return 0
        if count:
            self.passes_that_took_over += 1
            log.info("took over %d run(s)", count)
        return count

    # --- wake-ups -----------------------------------------------------------------------

    async def start_listening(self) -> None:
        """LISTEN for waiting and released runs (before recovery, so nothing is missed)."""
        self._listener = await self._store.listen(
            {"orchestrator_runs": self._run_waits, "orchestrator_released": self._runs_released},
            self._listener_lost.set,
        )

    async def stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()

    def _run_waits(self, dag_id: str) -> None:
        self._engine.admission.fill_from_store(dag_id)

    def _runs_released(self, _payload: str) -> None:
        self._takeover_wanted.set()

    async def keep_listening(self) -> None:
        """Open the LISTEN connection again whenever it is lost (for the daemon's life)."""
        while True:
            await self._listener_lost.wait()
            self._listener_lost.clear()
            await self.stop_listening()
            attempt = 0
            while self._listener is None:
                try:
                    await self.start_listening()
                except Exception as exc:
                    delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                    attempt += 1
                    log.warning("cannot LISTEN again yet (%r); retrying in %.1f s", exc, delay)
                    await self._timers.sleep(delay)
            log.info("listening for waiting runs again")
            try:  # what was notified while the connection was down
                await self._engine.fill_waiting()
            except Exception as exc:
                log.warning("cannot look for waiting runs yet: %r", exc)
            self._takeover_wanted.set()
