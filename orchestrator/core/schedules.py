"""Schedule math: which runs a DAG's schedule asks for, and from when each may be created.

This is the model of Airflow 2's timetables (``CronDataIntervalTimetable``,
``DeltaDataIntervalTimetable``, ``OnceTimetable``, ``ContinuousTimetable``), written for our own
types so DAGs moved from Airflow get the same runs with the same logical dates. It is pure: the
current time is always an argument (``now``), nothing here reads a clock or does I/O beyond the
time-zone data ``zoneinfo`` loads.

Intervals. A cron or timedelta schedule cuts time into data intervals ``[fire_k, fire_k+1)``. A
run's ``logical_date`` is its interval's start and it may be created once the interval is over
(``run_after`` = the interval's end). The first run is the first interval starting at or after the
DAG's ``start_date`` (cron: the start date rounded up to a fire time; timedelta: the start date
itself). With ``catchup`` every interval since the last run is due; without it only the latest
complete interval (the one ending at the latest fire time at or before ``now``) is, never one
before ``start_date``. A DAG without a ``start_date`` starts from that latest complete interval
(there is nothing to catch up from); after its first run ``catchup`` applies as usual. No run's
logical date is after ``end_date``.

Time zones and daylight saving time. A cron expression is read on the DAG's wall clock (its
``timezone``) and each fire time is converted to UTC:

* a wall time that does not exist, because the clocks spring forward over it, fires once, at the
  instant it would have had without the jump: ``30 2 * * *`` fires at 03:30 local on the day the
  clocks go from 02:00 to 03:00 (if that instant is a fire time of its own, one run serves both);
* a wall time that happens twice, because the clocks fall back over it, fires once, at its first
  occurrence, unless the cron's hour field is ``*`` (``@hourly``, ``*/15 * * * *``): such a cron
  fires on both passes, so every real hour still gets its runs.

So a daily, weekly or monthly cron follows the wall clock and never skips a day nor runs twice;
an hourly cron runs once per real hour (23 runs on the spring-forward day, 25 on the fall-back
day); a cron at chosen hours (``0 */2 * * *``, ``0 9-17 * * 1-5``) keeps to its wall hours, the
interval across the change being an hour shorter or longer. Consecutive runs always have strictly
increasing, distinct UTC instants. A timedelta schedule steps in absolute time and ignores the
zone.
"""

from __future__ import annotations

import difflib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadDateError, CroniterError, croniter

from orchestrator.errors import OrchestratorError

#: Airflow's cron presets.
CRON_PRESETS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_PRESET_WORDS: dict[str, str] = {
    "@hourly": "Hourly, at minute 0",
    "@daily": "Daily at midnight",
    "@midnight": "Daily at midnight",
    "@weekly": "Weekly, Sunday at midnight",
    "@monthly": "Monthly, on the 1st at midnight",
    "@quarterly": "Quarterly, on the 1st of January, April, July and October at midnight",
    "@yearly": "Yearly, on January 1st at midnight",
    "@annually": "Yearly, on January 1st at midnight",
}
ONCE = "@once"
CONTINUOUS = "@continuous"
PRESETS: tuple[str, ...] = (*CRON_PRESETS, ONCE, CONTINUOUS)

#: A backfill larger than this is refused: narrow its range instead.
MAX_BACKFILL_RUNS = 100_000

# How far from a fire time a daylight-saving change can matter: more than any zone's jump (2 h).
_DST_MARGIN = timedelta(hours=3)
_TICK = timedelta(microseconds=1)
_CLOSE = timedelta(minutes=1)
_KNOWN_FIRES = 256
_CRON_FIELDS = "minute hour day-of-month month day-of-week"


class ScheduleError(OrchestratorError, ValueError):
    """The DAG's schedule is invalid: fix the value the message names."""


def _aware_utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(
            f"{what} is a naive datetime ({value.isoformat()}); schedules need aware ones: "
            "attach a time zone, e.g. value.replace(tzinfo=datetime.UTC)"
        )
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run a schedule asks for. All four are aware and normalised to UTC."""

    logical_date: datetime
    data_interval_start: datetime
    data_interval_end: datetime
    #: the earliest moment the run may be created
    run_after: datetime

    def __post_init__(self) -> None:
        for name in ("logical_date", "data_interval_start", "data_interval_end", "run_after"):
            object.__setattr__(self, name, _aware_utc(getattr(self, name), f"RunInfo.{name}"))

    @classmethod
    def interval(cls, start: datetime, end: datetime) -> RunInfo:
        """The run of a periodic schedule: logical date = start, created once the interval ends."""
        return cls(logical_date=start, data_interval_start=start, data_interval_end=end, run_after=end)


@dataclass(frozen=True, slots=True)
class Restriction:
    """What bounds a DAG's runs: its start_date, end_date (aware, or None) and catchup flag."""

    earliest: datetime | None
    latest: datetime | None
    catchup: bool

    def __post_init__(self) -> None:
        for name in ("earliest", "latest"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _aware_utc(value, f"Restriction.{name}"))


class Timetable(ABC):
    """A schedule: the runs it asks for, one after another (`next_run`) or over a range (backfill)."""

    #: what the user wrote: "0 3 * * *", "@daily", "1:00:00", "@once", "@continuous"
    summary: str
    #: the schedule in words, for the UI and the CLI
    description: str
    #: True when the schedule has fire times (cron, timedelta), False for @once and @continuous
    periodic: ClassVar[bool]

    @abstractmethod
    def next_run(self, last: RunInfo | None, restriction: Restriction, now: datetime) -> RunInfo | None:
        """The run after `last` (the latest scheduled run, None if none yet); None when no more come."""

    @abstractmethod
    def runs_between(self, start: datetime, end: datetime, restriction: Restriction) -> list[RunInfo]:
        """For a backfill: the runs whose logical date is in [start, end], oldest first."""


def _skips_to_latest(last: RunInfo | None, restriction: Restriction) -> bool:
    return not restriction.catchup or (restriction.earliest is None and last is None)


def _backfill_bounds(start: datetime, end: datetime, restriction: Restriction) -> tuple[datetime, datetime]:
    start, end = _aware_utc(start, "backfill start"), _aware_utc(end, "backfill end")
    if start > end:
        raise ScheduleError(
            f"backfill start {start.isoformat()} is after its end {end.isoformat()}: swap them"
        )
    if restriction.earliest is not None:
        start = max(start, restriction.earliest)
    if restriction.latest is not None:
        end = min(end, restriction.latest)
    return start, end


def _check_backfill_size(count: int, timetable: Timetable) -> None:
    if count > MAX_BACKFILL_RUNS:
        raise ScheduleError(
            f"this backfill holds more than {MAX_BACKFILL_RUNS} runs of schedule "
            f"{timetable.summary!r}: backfill a shorter range, in several steps"
        )


class _CronClock:
    """The fire times of a cron expression read on one zone's wall clock, as UTC instants.

    croniter steps through naive wall times; this maps them to instants with the rule in the
    module docstring. Away from a daylight-saving change that is one croniter step; near one it
    looks at every wall time that could map to the nearest instant and takes the nearest.
    """

    __slots__ = ("_both_passes", "_cron", "_expression", "_known", "_lock", "zone")

    def __init__(self, expression: str, zone: ZoneInfo) -> None:
        self.zone = zone
        self._expression = expression
        self._cron = croniter(expression, datetime(2000, 1, 1))
        # croniter normalises an hour field covering all 24 hours ("0-23", "*/1") to "*"
        self._both_passes: bool = self._cron.expanded[1] == ["*"]
        # a croniter is a cursor: one query at a time
        self._lock = threading.Lock()
        # fire times found lately, so that aligning a run's interval end costs no croniter step
        self._known: dict[datetime, None] = {}

    def after(self, t: datetime) -> datetime:
        """The first fire time strictly after the UTC instant `t`."""
        return self._step(t, forward=True)

    def before(self, t: datetime) -> datetime:
        """The last fire time strictly before the UTC instant `t`."""
        return self._step(t, forward=False)

    def at_or_after(self, t: datetime) -> datetime:
        return t if t in self._known else self.after(t - _TICK)

    def at_or_before(self, t: datetime) -> datetime:
        return t if t in self._known else self.before(t + _TICK)

    def _wall(self, t: datetime) -> datetime:
        return t.astimezone(self.zone).replace(tzinfo=None)

    def _offset(self, t: datetime) -> timedelta:
        offset = t.astimezone(self.zone).utcoffset()
        assert offset is not None  # a ZoneInfo always has one
        return offset

    def _instants(self, wall: datetime) -> tuple[datetime, ...]:
        """The instants at which the wall time `wall` fires: one, or both passes of a repeated time."""
        first = wall.replace(tzinfo=self.zone).astimezone(UTC)
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if first >= second:
            # equal: an ordinary time; first later: a skipped time, and fold=0 maps it past the gap
            return (first,)
        return (first, second) if self._both_passes else (first,)

    def _croniter_step(self, forward: bool) -> datetime:
        result: datetime = self._cron.get_next(datetime) if forward else self._cron.get_prev(datetime)
        return result

    def _step(self, t: datetime, forward: bool) -> datetime:
        with self._lock:
            try:
                fire = self._step_locked(t, forward)
            except CroniterBadDateError as exc:
                raise ScheduleError(
                    f"cron expression {self._expression!r} has no fire time "
                    f"{'after' if forward else 'before'} {t.isoformat()}: check its day and month fields"
                ) from exc
            if len(self._known) >= _KNOWN_FIRES:
                del self._known[next(iter(self._known))]
            self._known[fire] = None
            return fire

    def _step_locked(self, t: datetime, forward: bool) -> datetime:
        wall = self._wall(t)
        self._cron.set_current(wall, force=True)
        candidate = self._instants(self._croniter_step(forward))[0]
        if not (candidate > t if forward else candidate < t):
            return self._search(t, wall, forward, _DST_MARGIN)
        probes = self._offsets_around((t, candidate), _DST_MARGIN)
        if len(probes) == 1:
            return candidate
        # A change of offset is near: croniter's answer stands if the change is further from
        # both instants than its own size (see _search), else search around it.
        spread = max(probes) - min(probes)
        if len(self._offsets_around((t, candidate), spread + _CLOSE)) == 1:
            return candidate
        return self._search(t, wall, forward, spread)

    def _offsets_around(self, instants: tuple[datetime, ...], margin: timedelta) -> set[timedelta]:
        return {self._offset(x + side) for x in instants for side in (-margin, margin)}

    def _search(self, t: datetime, wall: datetime, forward: bool, spread: timedelta) -> datetime:
        # An instant's wall time differs from its UTC time by an offset varying by at most
        # `spread` here, so the nearest fire instant comes from a wall time within `spread` of
        # `wall`; and once the wall times are `spread` past the best one, none can beat it.
        self._cron.set_current(wall - spread if forward else wall + spread, force=True)
        best: datetime | None = None
        best_wall = wall
        while True:
            candidate_wall = self._croniter_step(forward)
            if best is not None and abs(candidate_wall - best_wall) > spread:
                return best
            for instant in self._instants(candidate_wall):
                if forward and instant > t and (best is None or instant < best):
                    best, best_wall = instant, candidate_wall
                elif not forward and instant < t and (best is None or instant > best):
                    best, best_wall = instant, candidate_wall


@dataclass(frozen=True, slots=True)
class CronTimetable(Timetable):
    """A cron expression on a zone's wall clock: Airflow's CronDataIntervalTimetable."""

    expression: str
    zone: ZoneInfo
    summary: str
    description: str
    periodic: ClassVar[bool] = True
    _clock: _CronClock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_clock", _CronClock(self.expression, self.zone))

    def next_run(self, last: RunInfo | None, restriction: Restriction, now: datetime) -> RunInfo | None:
        now = _aware_utc(now, "now")
        clock = self._clock
        earliest = restriction.earliest
        start: datetime | None = None
        if last is None:
            start = None if earliest is None else clock.at_or_after(earliest)
        else:
            # aligned down: the schedule may have changed since `last` was made
            start = clock.at_or_before(last.data_interval_end)
            if start <= last.logical_date:
                start = clock.after(last.logical_date)
            if earliest is not None and start < earliest:  # the start date was moved later
                start = clock.at_or_after(earliest)
        if _skips_to_latest(last, restriction):
            latest_complete = clock.before(clock.at_or_before(now))
            start = latest_complete if start is None else max(start, latest_complete)
        assert start is not None  # no start date and no last run always skips to the latest
        if restriction.latest is not None and start > restriction.latest:
            return None
        return RunInfo.interval(start, clock.after(start))

    def runs_between(self, start: datetime, end: datetime, restriction: Restriction) -> list[RunInfo]:
        low, high = _backfill_bounds(start, end, restriction)
        runs: list[RunInfo] = []
        if low > high:
            return runs
        fire = self._clock.at_or_after(low)
        while fire <= high:
            following = self._clock.after(fire)
            runs.append(RunInfo.interval(fire, following))
            _check_backfill_size(len(runs), self)
            fire = following
        return runs


@dataclass(frozen=True, slots=True)
class DeltaTimetable(Timetable):
    """A fixed timedelta in absolute time: Airflow's DeltaDataIntervalTimetable.

    Runs lie on a grid anchored at the start date (or, after a run, at that run's interval
    end). Without catchup the latest complete interval of that grid is due, so a scheduler that
    asks a little late gets the same logical dates as one that asks on time (Airflow takes
    ``[now - delta, now)``, which drifts by the lateness; that form is kept only for a DAG's first
    run when it has no start date, where there is no grid yet).
    """

    delta: timedelta
    summary: str
    description: str
    periodic: ClassVar[bool] = True

    def next_run(self, last: RunInfo | None, restriction: Restriction, now: datetime) -> RunInfo | None:
        now = _aware_utc(now, "now")
        step, earliest = self.delta, restriction.earliest
        anchor = earliest
        if last is not None:
            anchor = last.data_interval_end
            if anchor <= last.logical_date:  # a run of another schedule kind: no interval to follow
                anchor = last.logical_date + step
            if earliest is not None:
                anchor = max(anchor, earliest)
        if anchor is None:
            start = now - step
        elif _skips_to_latest(last, restriction):
            complete = (now - anchor) // step
            start = anchor + max(complete - 1, 0) * step
        else:
            start = anchor
        if restriction.latest is not None and start > restriction.latest:
            return None
        return RunInfo.interval(start, start + step)

    def runs_between(self, start: datetime, end: datetime, restriction: Restriction) -> list[RunInfo]:
        low, high = _backfill_bounds(start, end, restriction)
        step = self.delta
        # on the start date's grid, so backfilled runs meet the scheduled ones
        first = low if restriction.earliest is None else low - ((low - restriction.earliest) % step)
        if first < low:
            first += step
        count = 0 if first > high else (high - first) // step + 1
        _check_backfill_size(count, self)
        return [RunInfo.interval(first + k * step, first + (k + 1) * step) for k in range(count)]


def _not_backfillable(timetable: Timetable) -> ScheduleError:
    return ScheduleError(
        f"a {timetable.summary} schedule cannot be backfilled: it has no intervals to fill; "
        "trigger the DAG instead"
    )


@dataclass(frozen=True, slots=True)
class OnceTimetable(Timetable):
    """@once: a single run, at the start date (or as soon as asked if there is none)."""

    summary: str = ONCE
    description: str = "Once"
    periodic: ClassVar[bool] = False

    def next_run(self, last: RunInfo | None, restriction: Restriction, now: datetime) -> RunInfo | None:
        now = _aware_utc(now, "now")
        if last is not None:
            return None
        at = restriction.earliest if restriction.earliest is not None else now
        if restriction.latest is not None and at > restriction.latest:
            return None
        return RunInfo(logical_date=at, data_interval_start=at, data_interval_end=at, run_after=at)

    def runs_between(self, start: datetime, end: datetime, restriction: Restriction) -> list[RunInfo]:
        raise _not_backfillable(self)


@dataclass(frozen=True, slots=True)
class ContinuousTimetable(Timetable):
    """@continuous: a new run as soon as the last one is over (the scheduler asks when none is active).

    A run's data interval goes from the last run's interval end (or the start date, or now) to
    now. Its logical date is now, moved a microsecond past the last run's if the clock has not
    moved on, so logical dates stay unique; and never before the start date.
    """

    summary: str = CONTINUOUS
    description: str = "Continuous"
    periodic: ClassVar[bool] = False

    def next_run(self, last: RunInfo | None, restriction: Restriction, now: datetime) -> RunInfo | None:
        at = _aware_utc(now, "now")
        if restriction.earliest is not None:
            at = max(at, restriction.earliest)
        if last is not None and at <= last.logical_date:
            at = last.logical_date + _TICK
        if restriction.latest is not None and at > restriction.latest:
            return None
        if last is not None:
            start = last.data_interval_end
        else:
            start = restriction.earliest if restriction.earliest is not None else at
        start = min(start, at)
        return RunInfo(logical_date=at, data_interval_start=start, data_interval_end=at, run_after=at)

    def runs_between(self, start: datetime, end: datetime, restriction: Restriction) -> list[RunInfo]:
        raise _not_backfillable(self)


def due_runs(
    tt: Timetable, last: RunInfo | None, restriction: Restriction, now: datetime, limit: int = 10_000
) -> tuple[list[RunInfo], RunInfo | None]:
    """The runs due at `now` after `last` (run_after <= now), oldest first, and the next one after them.

    The next one is None when the schedule has no more runs. If `limit` runs are due the list
    stops there and the next one may itself be due: call again with the list's last run.
    """
    now = _aware_utc(now, "now")
    due: list[RunInfo] = []
    upcoming = tt.next_run(last, restriction, now)
    while upcoming is not None and upcoming.run_after <= now and len(due) < limit:
        due.append(upcoming)
        upcoming = tt.next_run(upcoming, restriction, now)
    return due, upcoming


def _zone(name: str) -> ZoneInfo:
    fix = "use an IANA time zone name such as 'UTC', 'Europe/Berlin' or 'America/New_York'"
    if not isinstance(name, str) or not name.strip():
        raise ScheduleError(f"the DAG's time zone is empty ({name!r}): {fix}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    known = available_timezones()
    same_but_case = [zone for zone in known if zone.lower() == name.lower()]
    close = same_but_case or difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ScheduleError(f"unknown time zone {name!r}{hint}: {fix}")


def _cron(expression: str) -> str:
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"cron expression {expression!r} has {len(fields)} fields: write the 5 fields "
            f"{_CRON_FIELDS} (e.g. '0 3 * * *' for 03:00 daily), or a preset such as @daily; "
            "seconds and year fields are not supported"
        )
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise ScheduleError(
            f"cron expression {expression!r} never fires: check its day-of-month and month fields"
        ) from None
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        raise ScheduleError(
            f"invalid cron expression {expression!r} ({exc}): write the 5 fields {_CRON_FIELDS}, "
            "e.g. '0 3 * * *' or '*/15 * * * *'"
        ) from None
    return expression


def _delta(seconds: float) -> timedelta:
    try:
        delta = timedelta(seconds=seconds)
    except (OverflowError, ValueError, TypeError):
        delta = timedelta(0)
    if not delta > timedelta(0):
        raise ScheduleError(
            f"timedelta schedule of {seconds!r} seconds: give a positive, finite duration "
            "(e.g. timedelta(hours=1))"
        )
    return delta


def make_timetable(schedule: str | None, delta_seconds: float | None, timezone: str) -> Timetable | None:
    """The timetable for a DAG's schedule: a cron expression or preset, or a timedelta in seconds.

    Both None: the DAG has no schedule (None). `timezone` is the DAG's IANA time zone, which
    cron expressions are read in.
    """
    zone = _zone(timezone)
    if schedule is not None and delta_seconds is not None:
        raise ScheduleError(
            f"a DAG has one schedule, got both {schedule!r} and a timedelta of {delta_seconds} seconds: "
            "keep one"
        )
    if delta_seconds is not None:
        delta = _delta(delta_seconds)
        return DeltaTimetable(delta, summary=str(delta), description=f"Every {delta}")
    if schedule is None:
        return None
    text = schedule.strip()
    if not text:
        raise ScheduleError(
            "the schedule is an empty string: write a cron expression or a preset, or None for no schedule"
        )
    where = "" if zone.key == "UTC" else f" ({zone.key})"
    if not text.startswith("@"):
        return CronTimetable(_cron(text), zone, summary=text, description=f"Cron: {text}{where}")
    preset = text.lower()
    if preset == ONCE:
        return OnceTimetable(summary=text)
    if preset == CONTINUOUS:
        return ContinuousTimetable(summary=text)
    if preset not in CRON_PRESETS:
        close = difflib.get_close_matches(preset, PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ScheduleError(
            f"unknown schedule preset {text!r}{hint}: use one of {', '.join(PRESETS)}, "
            "or a 5-field cron expression"
        )
    expression = CRON_PRESETS[preset]
    return CronTimetable(
        expression, zone, summary=text, description=f"{_PRESET_WORDS[preset]}{where} ({expression})"
    )
