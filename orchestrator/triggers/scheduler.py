"""The scheduler: one timer for every scheduled DAG, and the runs their schedules ask for.

Each DAG with a cron, preset or timedelta schedule has a plan: its timetable
(`orchestrator.core.schedules`), its start/end dates and catchup, and the latest scheduled run
so far (read once from the store). The next fire time of every plan is on one heap; a single
timer on the `Timers` port is armed for the earliest, and when it fires the DAGs that are due
get a pass. A pass creates the runs that are due, in order (every missed interval with
catchup, only the latest without), records the DAG's next run in the store (GET /dags'
`next_dagrun`) and puts the DAG back on the heap. A DAG is planned again when its file
changes, when it is paused or unpaused, and at start-up.

Exactly once, whichever replica fires first: every replica runs a scheduler on the same
database, and nothing in one replica's memory decides for another. A scheduled run's id is
`scheduled__<logical date>`, and the store creates a run once per (dag_id, run_id), so a
restart at the fire time, or several replicas, never double a run. The DAG's next run (GET
/dags' `next_dagrun`) is written under a lock on the DAG's row and never back to a tick whose
run exists, so a replica that planned a moment before another created that run cannot move it
backwards (`ScheduleStore.set_next_dagrun`). A paused DAG creates no scheduled runs; its next
run is still shown, and its timer stays armed: a pause or unpause made through another replica
is read from the database at the next fire time.

`@continuous` has no fire times: a run is created whenever the DAG has none queued or
running (at start, on unpause, and when one of its runs finishes). `@once` creates one run.
Their logical dates come from the clock, so their run ids do not make them unique: the store
creates them under a lock on the DAG's row, only while the DAG has no unfinished run
(`@continuous`) or no scheduled run at all (`@once`) (`ScheduleStore.create_sole_run`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from orchestrator.core.model import DagSpec
from orchestrator.core.records import NewRun, RunRecord
from orchestrator.core.schedules import (
    Restriction,
    RunInfo,
    ScheduleError,
    Timetable,
    due_runs,
    make_timetable,
)
from orchestrator.engine.engine import Engine
from orchestrator.engine.supervision import OnePassAtATime, Supervisor
from orchestrator.errors import DagNotFound, ShuttingDown
from orchestrator.ports import Clock, StateStore, TimerHandle, Timers

log = logging.getLogger("orchestrator.triggers.scheduler")

#: seconds before a pass that failed on the database is tried again
RETRY_DELAY = 5.0
#: seconds before a pass that failed otherwise (a bug, a value the database refused) is tried again
FAILED_PASS_DELAY = 60.0
#: the most runs one pass creates; a catchup of more goes on in the next pass, at once
MAX_RUNS_PER_PASS = 1000


def scheduled_run_id(logical_date: datetime) -> str:
    """Airflow's id of a scheduled run: ``scheduled__2026-01-01T00:00:00+00:00``."""
    return f"scheduled__{logical_date.astimezone(UTC).isoformat()}"


def restriction_of(spec: DagSpec, zone: ZoneInfo) -> Restriction:
    """The DAG's start_date, end_date and catchup; a naive date is a wall time in `zone`."""

    def aware(value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=zone) if value.tzinfo is None else value

    return Restriction(earliest=aware(spec.start_date), latest=aware(spec.end_date), catchup=spec.catchup)


def timetable_of(spec: DagSpec, default_timezone: str) -> tuple[Timetable, ZoneInfo] | None:
    """The DAG's timetable and time zone, None for a DAG without a time-based schedule.
    Raises ScheduleError for a schedule that cannot be evaluated."""
    if spec.schedule is None and spec.schedule_delta is None:
        return None
    zone_name = spec.timezone or default_timezone
    timetable = make_timetable(spec.schedule, spec.schedule_delta, zone_name)
    if timetable is None:
        return None
    return timetable, ZoneInfo(zone_name)


@dataclass
class _Plan:
    """What the scheduler knows of one DAG's schedule."""

    spec: DagSpec
    timetable: Timetable
    restriction: Restriction
    #: the latest scheduled run (None: none yet); read from the store once, then kept
    last: RunInfo | None
    #: the next run (None: none planned, or paused)
    upcoming: RunInfo | None = None
    #: when its heap entry fires (None: not armed); a paused DAG is armed too, to read its
    #: pause flag again (another replica may unpause it)
    armed_at: datetime | None = None


class Scheduler:
    """Creates the scheduled runs of every loaded DAG, on one timer."""

    def __init__(
        self,
        engine: Engine,
        store: StateStore,
        clock: Clock,
        timers: Timers,
        supervisor: Supervisor,
        default_timezone: str = "UTC",
    ) -> None:
        self._engine = engine
        self._store = store
        self._clock = clock
        self._timers = timers
        self._default_timezone = default_timezone
        self._plans: dict[str, _Plan] = {}
        #: (run_after, sequence, dag_id); an entry whose DAG's upcoming run moved is skipped
        self._heap: list[tuple[datetime, int, str]] = []
        self._sequence = itertools.count()
        self._timer: TimerHandle | None = None
        self._timer_at: datetime | None = None
        #: passes over one DAG, one at a time per DAG
        self._passes = OnePassAtATime(supervisor, self._pass, "schedule")
        #: schedules refused with an error already logged (logged again only when it changes)
        self._refused: dict[str, str] = {}
        self._stopped = False
        engine.add_run_finished_listener(self._run_finished)

    # --- what makes a DAG planned again ------------------------------------------------------

    def start(self) -> None:
        """Plan every DAG loaded so far (call once the engine has recovered)."""
        self.refresh(dag.spec.dag_id for dag in self._engine.registry)

    def refresh(self, dag_ids: Iterable[str]) -> None:
        """These DAGs were (re)loaded, removed, paused or unpaused: plan them again."""
        for dag_id in dag_ids:
            if self._stopped:
                return
            self._passes.request(dag_id)

    def stop(self) -> None:
        """Create no more runs (the daemon is draining)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def upcoming(self, dag_id: str) -> RunInfo | None:
        """The DAG's next scheduled run as planned now (None: none, or not planned yet)."""
        plan = self._plans.get(dag_id)
        return None if plan is None else plan.upcoming

    def _run_finished(self, run: RunRecord) -> None:
        plan = self._plans.get(run.dag_id)
        if plan is not None and plan.spec.schedule == "@continuous":
            self.refresh([run.dag_id])

    # --- one pass over one DAG ---------------------------------------------------------------

    async def _pass(self, dag_id: str) -> None:
        if self._stopped:
            return
        try:
            more = await self._plan(dag_id)
        except (DagNotFound, ShuttingDown):
            return
        except (OSError, ConnectionError) as exc:
            log.warning("scheduling %s failed (%s); trying again in %g s", dag_id, exc, RETRY_DELAY)
            self._timers.call_later(RETRY_DELAY, lambda: self.refresh([dag_id]))
            return
        except Exception:
            # one DAG's schedule must not stop the daemon nor the other DAGs' schedules
            log.exception("scheduling %s failed; trying again in %g s", dag_id, FAILED_PASS_DELAY)
            self._timers.call_later(FAILED_PASS_DELAY, lambda: self.refresh([dag_id]))
            return
        if more:  # a catchup longer than one pass goes on at once
            self.refresh([dag_id])

    async def _plan(self, dag_id: str) -> bool:
        """Create the DAG's due runs and arm its next one; True if more are due at once."""
        loaded = self._engine.registry.get(dag_id)
        spec = loaded.spec if loaded is not None else None
        plan = self._plans.get(dag_id)
        if spec is None or plan is None or plan.spec != spec:  # new, changed or gone: read it again
            made = None
            if spec is not None:
                try:
                    made = timetable_of(spec, self._default_timezone)
                    self._refused.pop(dag_id, None)
                except ScheduleError as exc:
                    if self._refused.get(dag_id) != str(exc):
                        log.error("DAG %s is not scheduled: %s", dag_id, exc)
                    self._refused[dag_id] = str(exc)
            if spec is None or made is None:
                if self._plans.pop(dag_id, None) is not None and spec is not None:
                    await self._store.set_next_dagrun(dag_id, None, None, None, None)
                return False
            timetable, zone = made
            plan = _Plan(spec, timetable, restriction_of(spec, zone), await self._latest(dag_id))
            self._plans[dag_id] = plan
        timetable = plan.timetable
        paused = bool(await self._store.paused_dag_ids([dag_id]))
        now = self._clock.now()
        if not timetable.periodic and spec.schedule == "@continuous":
            if not paused and await self._store.count_unfinished_runs(dag_id) == 0:
                plan.last = await self._latest(dag_id)  # another replica's run may be the latest
                info = timetable.next_run(plan.last, plan.restriction, now)
                if info is not None and await self._create_sole(dag_id, info, now, "unfinished"):
                    plan.last = info
            return False
        due, upcoming = due_runs(timetable, plan.last, plan.restriction, now, limit=MAX_RUNS_PER_PASS)
        more = False
        if paused:
            shown = due[0] if due else upcoming
            # armed anyway at the next fire time still to come, to read the pause flag again then
            armed = upcoming if upcoming is not None and upcoming.run_after > now else None
        else:
            for info in due:
                if timetable.periodic:
                    await self._create(dag_id, info, now)
                else:  # @once: its logical date may be the clock's, so its id is no key
                    await self._create_sole(dag_id, info, now, "scheduled")
                plan.last = info
            more = len(due) >= MAX_RUNS_PER_PASS
            shown = armed = upcoming
        plan.upcoming = None if paused else upcoming
        plan.armed_at = None if armed is None or more else armed.run_after
        await self._store.set_next_dagrun(
            dag_id,
            None if shown is None else shown.logical_date,
            None if shown is None else shown.data_interval_start,
            None if shown is None else shown.data_interval_end,
            None if shown is None else shown.run_after,
        )
        if plan.armed_at is not None:
            heapq.heappush(self._heap, (plan.armed_at, next(self._sequence), dag_id))
            self._arm()
        return more

    async def _latest(self, dag_id: str) -> RunInfo | None:
        latest = await self._store.latest_scheduled_run(dag_id)
        if latest is None:
            return None
        logical_date, start, end = latest
        return RunInfo(
            logical_date=logical_date, data_interval_start=start, data_interval_end=end, run_after=end
        )

    async def _create(self, dag_id: str, info: RunInfo, now: datetime) -> None:
        record, created = await self._engine.create_run(_new_run(dag_id, info, now))
        if not created:
            log.debug("scheduled run %s of %s existed already", record.run_id, dag_id)

    async def _create_sole(
        self, dag_id: str, info: RunInfo, now: datetime, unless: Literal["unfinished", "scheduled"]
    ) -> bool:
        """Create the run of @continuous or @once unless the DAG's runs forbid it (another replica
        made it first); True if created."""
        loaded = self._engine.loaded_dag(dag_id)
        record = await self._store.create_sole_run(
            _new_run(dag_id, info, now),
            self._engine.new_task_instances(loaded),
            loaded.spec.source_hash,
            unless,
        )
        if record is None:
            log.debug("no %s run of %s: it has a %s run already", loaded.spec.schedule, dag_id, unless)
            return False
        await self._engine.admit_created(record)
        return True

    # --- the one timer -----------------------------------------------------------------------

    def _arm(self) -> None:
        """Arm the timer for the earliest live heap entry (dropping stale ones)."""
        while self._heap:
            when, _, dag_id = self._heap[0]
            plan = self._plans.get(dag_id)
            if plan is None or plan.armed_at != when:
                heapq.heappop(self._heap)  # the DAG was planned again since
                continue
            break
        else:
            return
        if self._stopped or (
            self._timer is not None and self._timer_at is not None and self._timer_at <= when
        ):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._timers.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._clock.now()
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            when, _, dag_id = heapq.heappop(self._heap)
            plan = self._plans.get(dag_id)
            if plan is not None and plan.armed_at == when:
                plan.armed_at = None
                plan.upcoming = None
                due.append(dag_id)
        self.refresh(due)
        self._arm()


def _new_run(dag_id: str, info: RunInfo, now: datetime) -> NewRun:
    return NewRun(
        dag_id=dag_id,
        run_id=scheduled_run_id(info.logical_date),
        run_type="scheduled",
        conf={},
        logical_date=info.logical_date,
        data_interval_start=info.data_interval_start,
        data_interval_end=info.data_interval_end,
        queued_at=now,
        external_trigger=False,
    )
