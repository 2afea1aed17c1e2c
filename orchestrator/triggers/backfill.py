"""Backfills (Airflow 3's): runs of a DAG for the schedule's logical dates between two dates.

Creating a backfill writes it and the runs it plans (one per logical date, in order: oldest
first, or newest first with `run_backwards`) in one transaction. Dates that already have a
run are skipped unless the reprocess behaviour says otherwise (`none`: skip every date that
has a run; `failed`: run again the dates whose runs all failed; `completed`: run again every
date whose runs are finished); a date whose run is still queued or running is always skipped.
Skipped dates keep their reason (`exception_reason`).

The backfill then creates its runs (run_type `backfill`, id `backfill__<logical date>`) at
most `max_active_runs` at a time: the next one when one of its runs finishes. Its progress is
in the store, so a restarted daemon goes on where it stopped; a run already created for a date
is found again by its id, never made twice. Pausing stops creating runs until resumed;
cancelling stops for good (the runs already created finish). A backfill whose runs have all
finished is completed. One unfinished backfill per DAG at a time, as in Airflow.

Exactly once across replicas: every replica drives every unfinished backfill on the same
database, so what one replica knows in memory decides nothing. A backfill's run is created in
the store transaction that records it for its planned date, while the backfill's row is locked
against a pause or a cancel (`ScheduleStore.create_backfill_run`): two replicas creating the
same date make one run (its id is the key), and once a pause or cancel is committed, through
whichever replica, no replica creates another run. The one unfinished backfill per DAG is
decided under a lock on the DAG's row (`ScheduleStore.create_backfill`). A backfill's run that
finishes drives its backfill on the replica that ran it, found through the run's row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.core.records import BackfillRecord, BackfillRunRecord, NewRun, RunRecord
from orchestrator.core.schedules import ScheduleError
from orchestrator.core.states import RunState
from orchestrator.engine.engine import Engine
from orchestrator.engine.supervision import OnePassAtATime, Supervisor
from orchestrator.errors import DagNotFound, InvalidRequest, OrchestratorError, ShuttingDown
from orchestrator.ports import Clock, StateStore
from orchestrator.triggers.scheduler import restriction_of, timetable_of

log = logging.getLogger("orchestrator.triggers.backfill")

REPROCESS_BEHAVIORS = ("none", "failed", "completed")
#: Airflow's default max_active_runs of a backfill
DEFAULT_MAX_ACTIVE_RUNS = 10
#: the most runs one backfill may plan (a typo in a date should not plan a million runs)
MAX_PLANNED_RUNS = 10_000

_UNFINISHED = (RunState.QUEUED.value, RunState.RUNNING.value)


class BackfillConflict(OrchestratorError):
    """The DAG already has an unfinished backfill, or the backfill is completed (HTTP 409)."""

    http_status = 409


class BackfillNotFound(OrchestratorError):
    """No backfill has this id (HTTP 404)."""

    http_status = 404


def backfill_run_id(logical_date: datetime, backfill_id: int | None = None) -> str:
    """``backfill__2026-01-01T00:00:00+00:00``; with the backfill's id when a date is run again."""
    base = f"backfill__{logical_date.astimezone(UTC).isoformat()}"
    return base if backfill_id is None else f"{base}__{backfill_id}"


@dataclass(frozen=True, slots=True)
class BackfillRequest:
    """What a person asks for (POST /api/v1/backfills, `orchestrator backfill`)."""

    dag_id: str
    from_date: datetime
    to_date: datetime
    reprocess_behavior: str = "none"
    max_active_runs: int = DEFAULT_MAX_ACTIVE_RUNS
    run_backwards: bool = False
    dag_run_conf: dict[str, Any] | None = None


def skip_reason(existing: list[tuple[str, str]], reprocess: str) -> str | None:
    """Why a date with these runs ((state, run_type) pairs) gets no backfill run, or None."""
    if not existing:
        return None
    if any(state in _UNFINISHED for state, _ in existing):
        return "a run at this logical date is still queued or running"
    if reprocess == "completed":
        return None
    if reprocess == "failed" and all(state == RunState.FAILED.value for state, _ in existing):
        return None
    return "already exists" if reprocess == "none" else "a run at this logical date succeeded"


class Backfills:
    """Plans backfills and creates their runs, at most max_active_runs at a time each."""

    def __init__(
        self,
        engine: Engine,
        store: StateStore,
        clock: Clock,
        supervisor: Supervisor,
        default_timezone: str = "UTC",
    ) -> None:
        self._engine = engine
        self._store = store
        self._clock = clock
        self._supervisor = supervisor
        self._default_timezone = default_timezone
        #: run pk -> the backfill that created it (for the runs not finished yet)
        self._owner_of_run: dict[int, int] = {}
        #: passes over one backfill, one at a time per backfill
        self._passes = OnePassAtATime(supervisor, self._pass, "backfill")
        self._stopped = False
        engine.add_run_finished_listener(self._run_finished)

    async def start(self) -> None:
        """Go on with every unfinished backfill (call once the engine has recovered)."""
        offset = 0
        while True:
            page, total = await self._store.list_backfills(None, 500, offset, only_unfinished=True)
            for backfill in page:
                self._drive(backfill.id)
            offset += len(page)
            if not page or offset >= total:
                return

    def stop(self) -> None:
        self._stopped = True

    # --- asking --------------------------------------------------------------------------

    async def plan(self, request: BackfillRequest) -> list[BackfillRunRecord]:
        """The runs a backfill of `request` would plan, with the reason of each skipped date."""
        loaded = self._engine.loaded_dag(request.dag_id)
        spec = loaded.spec
        if request.reprocess_behavior not in REPROCESS_BEHAVIORS:
            raise InvalidRequest(
                f"reprocess_behavior {request.reprocess_behavior!r} is not one of "
                f"{', '.join(REPROCESS_BEHAVIORS)}"
            )
        if isinstance(request.max_active_runs, bool) or request.max_active_runs < 1:
            raise InvalidRequest(f"max_active_runs must be at least 1, got {request.max_active_runs!r}")
        for name, value in (("from_date", request.from_date), ("to_date", request.to_date)):
            if value.tzinfo is None:
                raise InvalidRequest(f"{name} must include a time zone, e.g. 2026-01-01T00:00:00+00:00")
        if request.from_date > request.to_date:
            raise InvalidRequest(
                f"from_date {request.from_date.isoformat()} is after to_date {request.to_date.isoformat()}"
            )
        try:
            made = timetable_of(spec, self._default_timezone)
        except ScheduleError as exc:
            raise InvalidRequest(f"DAG {spec.dag_id!r} cannot be backfilled: {exc}") from None
        if made is None or not made[0].periodic:
            raise InvalidRequest(
                f"DAG {spec.dag_id!r} cannot be backfilled: its schedule ({spec.schedule_summary or 'None'}) "
                "has no logical dates; backfill a DAG with a cron, preset or timedelta schedule"
            )
        timetable, zone = made
        try:
            infos = timetable.runs_between(request.from_date, request.to_date, restriction_of(spec, zone))
        except ScheduleError as exc:
            raise InvalidRequest(str(exc)) from None
        if len(infos) > MAX_PLANNED_RUNS:
            raise InvalidRequest(
                f"the range holds {len(infos)} runs, more than {MAX_PLANNED_RUNS}: backfill a shorter range"
            )
        if request.run_backwards:
            infos.reverse()
        existing: dict[datetime, list[tuple[str, str]]] = {}
        for logical_date, state, run_type, _ in await self._store.runs_at_logical_dates(
            spec.dag_id, [info.logical_date for info in infos]
        ):
            existing.setdefault(logical_date, []).append((state, run_type))
        return [
            BackfillRunRecord(
                backfill_id=0,
                sort_ordinal=index,
                logical_date=info.logical_date,
                data_interval_start=info.data_interval_start,
                data_interval_end=info.data_interval_end,
                exception_reason=skip_reason(existing.get(info.logical_date, []), request.reprocess_behavior),
            )
            for index, info in enumerate(infos)
        ]

    async def create(self, request: BackfillRequest) -> BackfillRecord:
        """Plan and write a backfill, then start creating its runs."""
        if request.dag_run_conf is not None and not isinstance(request.dag_run_conf, dict):
            raise InvalidRequest("dag_run_conf must be a JSON object")
        runs = await self.plan(request)
        unfinished, _ = await self._store.list_backfills(request.dag_id, 1, 0, only_unfinished=True)
        if unfinished:
            raise _unfinished_conflict(request.dag_id, unfinished[0].id)
        backfill = await self._store.create_backfill(
            dag_id=request.dag_id,
            from_date=request.from_date,
            to_date=request.to_date,
            dag_run_conf=dict(request.dag_run_conf or {}),
            reprocess_behavior=request.reprocess_behavior,
            max_active_runs=request.max_active_runs,
            run_backwards=request.run_backwards,
            now=self._clock.now(),
            runs=runs,
        )
        if backfill is None:  # another one was created meanwhile (through another replica, say)
            unfinished, _ = await self._store.list_backfills(request.dag_id, 1, 0, only_unfinished=True)
            raise _unfinished_conflict(request.dag_id, unfinished[0].id if unfinished else None)
        planned = sum(1 for run in runs if run.exception_reason is None)
        log.info(
            "backfill %d of %s: %d runs from %s to %s (%d dates skipped)",
            backfill.id,
            backfill.dag_id,
            planned,
            request.from_date.isoformat(),
            request.to_date.isoformat(),
            len(runs) - planned,
        )
        self._drive(backfill.id)
        return backfill

    async def set_paused(self, backfill_id: int, is_paused: bool) -> BackfillRecord:
        record = await self._store.set_backfill_paused(backfill_id, is_paused, self._clock.now())
        if record is None:
            raise await self._not_found_or_finished(backfill_id)
        if not is_paused:
            self._drive(backfill_id)
        return record

    async def cancel(self, backfill_id: int) -> BackfillRecord:
        """Stop creating runs for good; the runs already created go on and finish."""
        record = await self._store.complete_backfill(backfill_id, self._clock.now())
        if record is None:
            raise await self._not_found_or_finished(backfill_id)
        log.info("backfill %d of %s cancelled", backfill_id, record.dag_id)
        return record

    async def _not_found_or_finished(self, backfill_id: int) -> OrchestratorError:
        if await self._store.get_backfill(backfill_id) is None:
            return BackfillNotFound(
                f"backfill {backfill_id} not found: list them with `orchestrator backfills list`"
            )
        return BackfillConflict(f"backfill {backfill_id} is completed (finished or cancelled)")

    # --- creating the runs ---------------------------------------------------------------

    def _run_finished(self, run: RunRecord) -> None:
        backfill_id = self._owner_of_run.pop(run.pk, None) or run.backfill_id
        if backfill_id is not None:
            self._drive(backfill_id)
        else:
            # a pass in flight may have read this run as unfinished before it was known to be
            # the backfill's (after a restart, say): that pass looks again once it is done
            self._passes.again_if_running()
            if run.run_type == "backfill" and not self._stopped:
                # created by another replica's backfill (this one took the run over): its row says which
                self._supervisor.spawn(self._drive_backfill_of(run), name="backfill of a finished run")

    async def _drive_backfill_of(self, run: RunRecord) -> None:
        try:
            record = await self._store.get_run(run.dag_id, run.run_id)
        except Exception as exc:  # the backfill goes on at its next finished run, or at a restart
            log.warning(
                "could not read which backfill run %s of %s belongs to: %s", run.run_id, run.dag_id, exc
            )
            return
        if record is not None and record.backfill_id is not None:
            self._drive(record.backfill_id)

    def _drive(self, backfill_id: int) -> None:
        if not self._stopped:
            self._passes.request(backfill_id)

    async def _pass(self, backfill_id: int) -> None:
        if self._stopped:
            return
        try:
            await self._advance(backfill_id)
        except (DagNotFound, ShuttingDown) as exc:
            log.warning("backfill %d waits: %s", backfill_id, exc)
        except (OSError, ConnectionError) as exc:
            log.warning(
                "backfill %d could not go on (%s); it does at the next finished run", backfill_id, exc
            )
        except Exception:  # one backfill must not stop the daemon nor the other triggers
            log.exception("backfill %d could not go on; it tries again at its next finished run", backfill_id)

    async def _advance(self, backfill_id: int) -> None:
        backfill = await self._store.get_backfill(backfill_id)
        if backfill is None or backfill.completed_at is not None or backfill.is_paused:
            return
        rows = await self._store.list_backfill_runs(backfill_id)
        active = [row for row in rows if row.run_pk is not None and row.run_state in _UNFINISHED]
        for row in active:
            assert row.run_pk is not None
            self._owner_of_run[row.run_pk] = backfill_id
        pending = [row for row in rows if row.run_pk is None and row.exception_reason is None]
        if not pending and not active:
            if await self._store.complete_backfill(backfill_id, self._clock.now()) is not None:
                log.info("backfill %d of %s completed", backfill_id, backfill.dag_id)
            return
        for row in pending[: max(0, backfill.max_active_runs - len(active))]:
            run = await self._create_run(backfill, row)
            if run is None:  # paused or cancelled meanwhile (through this replica or another)
                return
            if run.state in _UNFINISHED:
                self._owner_of_run[run.pk] = backfill_id
            else:  # finished already (a run made before a restart): take the next one
                self._drive(backfill_id)

    async def _create_run(self, backfill: BackfillRecord, row: BackfillRunRecord) -> RunRecord | None:
        """The backfill's run for this date, recorded for it: created now, or found by its id if it
        was already (by another replica, or before a restart). None: the backfill is paused or
        completed now."""
        loaded = self._engine.loaded_dag(backfill.dag_id)
        tasks = self._engine.new_task_instances(loaded)
        for run_id in (backfill_run_id(row.logical_date), backfill_run_id(row.logical_date, backfill.id)):
            made = await self._store.create_backfill_run(
                NewRun(
                    dag_id=backfill.dag_id,
                    run_id=run_id,
                    run_type="backfill",
                    conf=dict(backfill.dag_run_conf),
                    logical_date=row.logical_date,
                    data_interval_start=row.data_interval_start,
                    data_interval_end=row.data_interval_end,
                    queued_at=self._clock.now(),
                    external_trigger=False,
                    backfill_id=backfill.id,
                ),
                tasks,
                loaded.spec.source_hash,
                row.sort_ordinal,
            )
            if made is None:
                return None
            record, created = made
            if created:
                await self._engine.admit_created(record)
            if created or record.backfill_id == backfill.id:
                return record
        raise InvalidRequest(
            f"backfill {backfill.id}: the run ids for {row.logical_date.isoformat()} are taken by other runs"
        )


def _unfinished_conflict(dag_id: str, backfill_id: int | None) -> BackfillConflict:
    which = f" (id {backfill_id})" if backfill_id is not None else ""
    cancel = f"`orchestrator backfills cancel {'<id>' if backfill_id is None else backfill_id}`"
    return BackfillConflict(
        f"DAG {dag_id!r} already has an unfinished backfill{which}: wait for it or cancel it ({cancel})"
    )
