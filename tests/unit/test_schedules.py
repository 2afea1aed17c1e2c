"""Schedule math follows Airflow's timetables: intervals, catchup, start/end dates, DST, backfill ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from orchestrator.core.schedules import (
    CRON_PRESETS,
    MAX_BACKFILL_RUNS,
    Restriction,
    RunInfo,
    ScheduleError,
    Timetable,
    due_runs,
    make_timetable,
)
from orchestrator.errors import OrchestratorError

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type]


def timetable(schedule: str | None, tz: str = "UTC", delta: float | None = None) -> Timetable:
    tt = make_timetable(schedule, delta, tz)
    assert tt is not None
    return tt


def chain(tt: Timetable, earliest: datetime, count: int) -> list[RunInfo]:
    """`count` consecutive runs from `earliest` with catchup, as a scheduler would make them."""
    restriction = Restriction(earliest, None, catchup=True)
    runs: list[RunInfo] = []
    last = None
    for _ in range(count):
        last = tt.next_run(last, restriction, FAR_FUTURE)
        assert last is not None
        runs.append(last)
    return runs


def assert_well_formed(runs: list[RunInfo]) -> None:
    for run in runs:
        assert run.logical_date == run.data_interval_start < run.data_interval_end == run.run_after
        assert run.logical_date.tzinfo is UTC
    for before, after in pairwise(runs):
        assert before.data_interval_end == after.data_interval_start  # contiguous intervals
    starts = [run.logical_date for run in runs]
    assert starts == sorted(set(starts))  # strictly increasing, unique


# --- presets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "expected_first", "expected_second"),
    [
        # from Wednesday 2026-05-13 10:30 UTC
        ("@hourly", utc(2026, 5, 13, 11), utc(2026, 5, 13, 12)),
        ("@daily", utc(2026, 5, 14), utc(2026, 5, 15)),
        ("@midnight", utc(2026, 5, 14), utc(2026, 5, 15)),
        ("@weekly", utc(2026, 5, 17), utc(2026, 5, 24)),  # Sundays
        ("@monthly", utc(2026, 6, 1), utc(2026, 7, 1)),
        ("@quarterly", utc(2026, 7, 1), utc(2026, 10, 1)),
        ("@yearly", utc(2027, 1, 1), utc(2028, 1, 1)),
        ("@annually", utc(2027, 1, 1), utc(2028, 1, 1)),
    ],
)
def test_each_preset_fires_at_its_airflow_times(
    preset: str, expected_first: datetime, expected_second: datetime
) -> None:
    tt = timetable(preset)
    first, second = chain(tt, utc(2026, 5, 13, 10, 30), 2)
    assert (first.logical_date, first.data_interval_end) == (expected_first, expected_second)
    assert second.logical_date == expected_second
    assert tt.summary == preset and tt.periodic
    assert CRON_PRESETS[preset] in tt.description


def test_presets_are_case_insensitive_and_keep_what_the_user_wrote() -> None:
    tt = timetable("@Daily")
    assert tt.summary == "@Daily"
    assert chain(tt, utc(2026, 1, 1), 3) == chain(timetable("0 0 * * *"), utc(2026, 1, 1), 3)


@pytest.mark.parametrize(
    ("schedule", "tz", "summary", "description"),
    [
        ("0 3 * * *", "UTC", "0 3 * * *", "Cron: 0 3 * * *"),
        (" 0 3 * * * ", "Europe/Berlin", "0 3 * * *", "Cron: 0 3 * * * (Europe/Berlin)"),
        ("@daily", "UTC", "@daily", "Daily at midnight (0 0 * * *)"),
        ("@once", "UTC", "@once", "Once"),
        ("@continuous", "UTC", "@continuous", "Continuous"),
    ],
)
def test_summary_and_description(schedule: str, tz: str, summary: str, description: str) -> None:
    tt = timetable(schedule, tz)
    assert (tt.summary, tt.description) == (summary, description)
    assert tt.periodic == (schedule not in ("@once", "@continuous"))


def test_delta_summary_is_the_timedelta_as_python_prints_it() -> None:
    tt = timetable(None, delta=3600.0)
    assert (tt.summary, tt.description, tt.periodic) == ("1:00:00", "Every 1:00:00", True)


def test_no_schedule_is_no_timetable() -> None:
    assert make_timetable(None, None, "UTC") is None


# --- cron in time zones ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "tz", "earliest", "expected"),
    [
        ("0 3 * * *", "UTC", utc(2026, 1, 10), [utc(2026, 1, 10, 3), utc(2026, 1, 11, 3)]),
        ("0 3 * * *", "Europe/Berlin", utc(2026, 1, 10), [utc(2026, 1, 10, 2), utc(2026, 1, 11, 2)]),
        ("0 3 * * *", "Europe/Berlin", utc(2026, 7, 10), [utc(2026, 7, 10, 1), utc(2026, 7, 11, 1)]),
        ("30 14 * * *", "Asia/Kolkata", utc(2026, 7, 10), [utc(2026, 7, 10, 9), utc(2026, 7, 11, 9)]),
        (
            "0 9 * * 1-5",  # weekdays 09:00 New York, from Friday 2026-07-10
            "America/New_York",
            utc(2026, 7, 10),
            [utc(2026, 7, 10, 13), utc(2026, 7, 13, 13), utc(2026, 7, 14, 13)],
        ),
        (
            "0 0 1 * *",
            "Australia/Sydney",  # +11 in January (summer), +10 in July
            utc(2025, 12, 15),
            [utc(2025, 12, 31, 13), utc(2026, 1, 31, 13), utc(2026, 2, 28, 13)],
        ),
        ("0 0 29 2 *", "UTC", utc(2026, 1, 1), [utc(2028, 2, 29), utc(2032, 2, 29)]),  # leap days only
        ("*/20 * * * *", "Asia/Kathmandu", utc(2026, 7, 10, 0, 5), [utc(2026, 7, 10, 0, 15)]),  # +05:45
    ],
)
def test_cron_is_read_on_the_dag_wall_clock(
    cron: str, tz: str, earliest: datetime, expected: list[datetime]
) -> None:
    runs = chain(timetable(cron, tz), earliest, len(expected))
    assert [run.logical_date for run in runs] == expected
    assert_well_formed(runs)


# --- daylight saving time ----------------------------------------------------------------------
# New York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z); 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
# Berlin:   2026-03-29 02:00 CET -> 03:00 CEST (01:00Z); 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z).

DST_CASES = [
    # one fixed hour: the wall clock; a skipped time fires after the gap, a repeated one once
    (
        "30 2 * * *",
        "America/New_York",
        [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)],
    ),
    (
        "30 1 * * *",
        "America/New_York",
        [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
    ),
    (
        "30 2 * * *",
        "Europe/Berlin",
        [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)],
    ),
    (
        "30 2 * * *",
        "Europe/Berlin",
        [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
    ),
    ("0 0 * * *", "America/New_York", [utc(2026, 3, 7, 5), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)]),
    ("0 0 * * *", "Europe/Berlin", [utc(2026, 10, 23, 22), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23)]),
    # every hour: once per real hour, both passes of a repeated hour, nothing twice in a gap
    ("0 * * * *", "America/New_York", [utc(2026, 3, 8, h) for h in (5, 6, 7, 8)]),
    ("0 * * * *", "America/New_York", [utc(2026, 11, 1, h) for h in (4, 5, 6, 7, 8)]),
    ("0 * * * *", "Europe/Berlin", [utc(2026, 3, 29, h) for h in (0, 1, 2, 3)]),
    ("0 * * * *", "Europe/Berlin", [utc(2026, 10, 24, 23), *(utc(2026, 10, 25, h) for h in (0, 1, 2))]),
    ("30 * * * *", "America/New_York", [utc(2026, 3, 8, h, 30) for h in (5, 6, 7, 8)]),
    (
        "*/15 * * * *",
        "America/New_York",
        [utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 6, 45), utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 15)],
    ),
    (
        "*/15 * * * *",
        "America/New_York",
        [utc(2026, 11, 1, 5, 45), utc(2026, 11, 1, 6), utc(2026, 11, 1, 6, 15)],
    ),
    (
        "*/15 * * * *",
        "Europe/Berlin",
        [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 1), utc(2026, 10, 25, 1, 15)],
    ),
    # chosen hours: keep to the wall hours, the interval across the change an hour longer or shorter
    (
        "0 */2 * * *",
        "America/New_York",
        [utc(2026, 3, 8, 5), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8), utc(2026, 3, 8, 10)],
    ),
    (
        "0 */2 * * *",
        "America/New_York",
        [utc(2026, 11, 1, 2), utc(2026, 11, 1, 4), utc(2026, 11, 1, 7), utc(2026, 11, 1, 9)],
    ),
    (
        "0 */2 * * *",
        "Europe/Berlin",
        [utc(2026, 3, 28, 23), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2), utc(2026, 3, 29, 4)],
    ),
    (
        "0 */2 * * *",
        "Europe/Berlin",
        [utc(2026, 10, 24, 22), utc(2026, 10, 25, 0), utc(2026, 10, 25, 3), utc(2026, 10, 25, 5)],
    ),
    ("0 2,14 * * *", "America/New_York", [utc(2026, 10, 31, 18), utc(2026, 11, 1, 7), utc(2026, 11, 1, 19)]),
]


@pytest.mark.parametrize(("cron", "tz", "expected"), DST_CASES)
def test_dst_changes_neither_skip_nor_double_runs(cron: str, tz: str, expected: list[datetime]) -> None:
    tt = timetable(cron, tz)
    runs = chain(tt, expected[0], len(expected))
    assert [run.logical_date for run in runs] == expected
    assert_well_formed(runs)
    # a backfill over the same range agrees with the scheduler
    assert tt.runs_between(expected[0], expected[-1], Restriction(None, None, True)) == runs


@pytest.mark.parametrize(("cron", "tz", "expected"), DST_CASES)
def test_dst_latest_complete_interval_is_found_backwards(
    cron: str, tz: str, expected: list[datetime]
) -> None:
    # catchup=False looks back from now: the interval ending at the latest fire time <= now
    tt = timetable(cron, tz)
    for start, end in pairwise(expected):
        for now in (end, end + timedelta(seconds=59)):
            run = tt.next_run(None, Restriction(None, None, catchup=False), now)
            assert run is not None
            assert (run.logical_date, run.data_interval_end) == (start, end)


@pytest.mark.parametrize(
    ("cron", "tz", "day", "expected_runs"),
    [
        ("0 * * * *", "America/New_York", (2026, 3, 8), 23),
        ("0 * * * *", "America/New_York", (2026, 11, 1), 25),
        ("0 * * * *", "Europe/Berlin", (2026, 3, 29), 23),
        ("0 * * * *", "Europe/Berlin", (2026, 10, 25), 25),
        ("*/15 * * * *", "Europe/Berlin", (2026, 10, 25), 100),
        ("0 */2 * * *", "Europe/Berlin", (2026, 10, 25), 12),
        ("30 2 * * *", "America/New_York", (2026, 3, 8), 1),
        ("30 1 * * *", "America/New_York", (2026, 11, 1), 1),
    ],
)
def test_runs_in_a_local_day_across_a_dst_change(
    cron: str, tz: str, day: tuple[int, int, int], expected_runs: int
) -> None:
    zone = ZoneInfo(tz)
    start = datetime(*day, tzinfo=zone)
    end = (start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone) - timedelta(microseconds=1)
    runs = timetable(cron, tz).runs_between(start, end, Restriction(None, None, True))
    assert len(runs) == expected_runs
    assert_well_formed(runs)


def test_every_minute_across_fall_back_is_every_real_minute() -> None:
    tt = timetable("* * * * *", "America/New_York")
    due, upcoming = due_runs(tt, None, Restriction(utc(2026, 11, 1, 4), None, True), utc(2026, 11, 1, 8))
    assert len(due) == 4 * 60
    assert all(b.logical_date - a.logical_date == timedelta(minutes=1) for a, b in pairwise(due))
    assert upcoming is not None and upcoming.logical_date == utc(2026, 11, 1, 8)


# --- catchup, start_date, end_date -------------------------------------------------------------

DAILY_START = utc(2026, 1, 1)
LAST_RUN = RunInfo.interval(utc(2026, 1, 4), utc(2026, 1, 5))
NOW = utc(2026, 1, 10, 12)


@pytest.mark.parametrize(
    ("catchup", "last", "expected_due", "expected_next"),
    [
        (True, LAST_RUN, [utc(2026, 1, d) for d in range(5, 10)], utc(2026, 1, 10)),
        (False, LAST_RUN, [utc(2026, 1, 9)], utc(2026, 1, 10)),
        (True, None, [utc(2026, 1, d) for d in range(1, 10)], utc(2026, 1, 10)),
        (False, None, [utc(2026, 1, 9)], utc(2026, 1, 10)),
    ],
)
def test_catchup_after_downtime(
    catchup: bool, last: RunInfo | None, expected_due: list[datetime], expected_next: datetime
) -> None:
    due, upcoming = due_runs(timetable("@daily"), last, Restriction(DAILY_START, None, catchup), NOW)
    assert [run.logical_date for run in due] == expected_due
    assert_well_formed(due)
    assert upcoming is not None and upcoming.logical_date == expected_next
    assert upcoming.run_after == utc(2026, 1, 11) > NOW


def test_without_catchup_a_run_due_exactly_now_is_the_one_ending_now() -> None:
    due, upcoming = due_runs(
        timetable("@daily"), LAST_RUN, Restriction(DAILY_START, None, False), utc(2026, 1, 10)
    )
    assert [run.logical_date for run in due] == [utc(2026, 1, 9)]
    assert upcoming is not None and upcoming.logical_date == utc(2026, 1, 10)


def test_on_time_scheduler_gets_one_run_per_interval() -> None:
    tt = timetable("0 * * * *")
    restriction = Restriction(utc(2026, 1, 1), None, catchup=False)
    last = None
    seen = []
    for minute in range(0, 5 * 60, 7):  # asked at irregular moments over five hours
        due, _ = due_runs(tt, last, restriction, utc(2026, 1, 1) + timedelta(minutes=minute))
        seen += due
        last = due[-1] if due else last
    assert [run.logical_date for run in seen] == [utc(2026, 1, 1, h) for h in range(4)]


def test_due_runs_stops_at_the_limit_and_the_next_one_is_still_due() -> None:
    due, upcoming = due_runs(timetable("@daily"), None, Restriction(DAILY_START, None, True), NOW, limit=3)
    assert [run.logical_date for run in due] == [utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 1, 3)]
    assert upcoming is not None and upcoming.logical_date == utc(2026, 1, 4) and upcoming.run_after <= NOW


@pytest.mark.parametrize(
    ("cron", "start_date", "expected_first"),
    [
        ("@daily", utc(2026, 1, 1, 10, 17), utc(2026, 1, 2)),
        ("@daily", utc(2026, 1, 1), utc(2026, 1, 1)),  # on a fire time: that one
        ("*/15 * * * *", utc(2026, 1, 1, 10, 17), utc(2026, 1, 1, 10, 30)),
        ("0 3 * * *", datetime(2026, 1, 1, 4, tzinfo=ZoneInfo("Europe/Berlin")), utc(2026, 1, 1, 3)),
        ("@monthly", utc(2026, 1, 1, 0, 0, 1), utc(2026, 2, 1)),
    ],
)
def test_first_run_is_the_first_interval_starting_at_or_after_start_date(
    cron: str, start_date: datetime, expected_first: datetime
) -> None:
    for catchup in (True, False):
        run = timetable(cron).next_run(None, Restriction(start_date, None, catchup), start_date)
        assert run is not None and run.logical_date == expected_first


def test_future_start_date_without_catchup_waits_for_it() -> None:
    restriction = Restriction(utc(2026, 3, 1, 12), None, catchup=False)
    due, upcoming = due_runs(timetable("@daily"), None, restriction, NOW)
    assert due == []
    assert upcoming == RunInfo.interval(utc(2026, 3, 2), utc(2026, 3, 3))


def test_no_start_date_starts_from_the_latest_complete_interval_even_with_catchup() -> None:
    due, upcoming = due_runs(
        timetable("@hourly"), None, Restriction(None, None, catchup=True), utc(2026, 1, 1, 5, 30)
    )
    assert [run.logical_date for run in due] == [utc(2026, 1, 1, 4)]
    assert upcoming is not None and upcoming.logical_date == utc(2026, 1, 1, 5)


@pytest.mark.parametrize(
    ("end_date", "expected_last"),
    [
        (utc(2026, 1, 5), utc(2026, 1, 5)),  # a run starting on the end date is still made
        (utc(2026, 1, 4, 12), utc(2026, 1, 4)),
    ],
)
def test_end_date_cuts_off_runs_starting_after_it(end_date: datetime, expected_last: datetime) -> None:
    due, upcoming = due_runs(timetable("@daily"), None, Restriction(DAILY_START, end_date, True), NOW)
    assert due[-1].logical_date == expected_last
    assert upcoming is None


def test_schedule_change_never_repeats_or_goes_back_on_a_logical_date() -> None:
    last = RunInfo.interval(utc(2026, 1, 1, 10), utc(2026, 1, 1, 11))  # made by an hourly schedule
    run = timetable("@daily").next_run(last, Restriction(DAILY_START, None, True), NOW)
    assert run == RunInfo.interval(utc(2026, 1, 2), utc(2026, 1, 3))


def test_inputs_in_any_zone_come_back_in_utc() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    run = timetable("@daily").next_run(
        None, Restriction(datetime(2026, 1, 1, 1, tzinfo=berlin), None, True), NOW
    )
    assert run == RunInfo.interval(utc(2026, 1, 1), utc(2026, 1, 2))
    assert run is not None and run.logical_date.tzinfo is UTC
    info = RunInfo.interval(
        datetime(2026, 1, 1, 1, tzinfo=berlin), datetime(2026, 1, 2, tzinfo=timezone(timedelta(hours=-5)))
    )
    assert (info.logical_date, info.run_after) == (utc(2026, 1, 1), utc(2026, 1, 2, 5))


# --- timedelta schedules -----------------------------------------------------------------------

HOUR = 3600.0


@pytest.mark.parametrize(
    ("catchup", "last", "now", "expected_due", "expected_next"),
    [
        # start date 10:17, hourly: runs at 10:17, 11:17, ...
        (
            True,
            None,
            utc(2026, 1, 1, 13, 30),
            [utc(2026, 1, 1, h, 17) for h in (10, 11, 12)],
            utc(2026, 1, 1, 13, 17),
        ),
        (False, None, utc(2026, 1, 1, 13, 30), [utc(2026, 1, 1, 12, 17)], utc(2026, 1, 1, 13, 17)),
        (
            True,
            RunInfo.interval(utc(2026, 1, 1, 10, 17), utc(2026, 1, 1, 11, 17)),
            utc(2026, 1, 1, 14, 20),
            [utc(2026, 1, 1, h, 17) for h in (11, 12, 13)],
            utc(2026, 1, 1, 14, 17),
        ),
        # late by seconds, no catchup: the grid holds (no drift by the lateness)
        (
            False,
            RunInfo.interval(utc(2026, 1, 1, 10, 17), utc(2026, 1, 1, 11, 17)),
            utc(2026, 1, 1, 12, 17, 3),
            [utc(2026, 1, 1, 11, 17)],
            utc(2026, 1, 1, 12, 17),
        ),
        # down for hours, no catchup: the latest complete interval of the grid
        (
            False,
            RunInfo.interval(utc(2026, 1, 1, 10, 17), utc(2026, 1, 1, 11, 17)),
            utc(2026, 1, 1, 16, 0),
            [utc(2026, 1, 1, 14, 17)],
            utc(2026, 1, 1, 15, 17),
        ),
    ],
)
def test_delta_schedule(
    catchup: bool, last: RunInfo | None, now: datetime, expected_due: list[datetime], expected_next: datetime
) -> None:
    tt = timetable(None, delta=HOUR)
    due, upcoming = due_runs(tt, last, Restriction(utc(2026, 1, 1, 10, 17), None, catchup), now)
    assert [run.logical_date for run in due] == expected_due
    assert_well_formed(due)
    assert upcoming is not None and upcoming.logical_date == expected_next


def test_delta_without_start_date_takes_the_interval_ending_now() -> None:
    now = utc(2026, 1, 1, 12, 34, 56)
    run = timetable(None, delta=HOUR).next_run(None, Restriction(None, None, True), now)
    assert run == RunInfo.interval(now - timedelta(hours=1), now)


def test_delta_steps_in_absolute_time_across_dst() -> None:
    runs = chain(timetable(None, "America/New_York", delta=86400.0), utc(2026, 3, 7, 5), 3)
    assert [run.logical_date for run in runs] == [utc(2026, 3, 7, 5), utc(2026, 3, 8, 5), utc(2026, 3, 9, 5)]


def test_delta_end_date() -> None:
    restriction = Restriction(utc(2026, 1, 1), utc(2026, 1, 1, 2), True)
    due, upcoming = due_runs(timetable(None, delta=HOUR), None, restriction, NOW)
    assert [run.logical_date for run in due] == [utc(2026, 1, 1, h) for h in (0, 1, 2)]
    assert upcoming is None


# --- @once and @continuous ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("earliest", "latest", "expected_at"),
    [
        (utc(2026, 1, 5), None, utc(2026, 1, 5)),
        (None, None, NOW),
        (utc(2026, 1, 5), utc(2026, 1, 4), None),  # end date before start date: never
    ],
)
def test_once(earliest: datetime | None, latest: datetime | None, expected_at: datetime | None) -> None:
    tt = timetable("@once")
    restriction = Restriction(earliest, latest, catchup=False)
    due, upcoming = due_runs(tt, None, restriction, NOW)
    if expected_at is None:
        assert (due, upcoming) == ([], None)
        return
    assert due == [RunInfo(expected_at, expected_at, expected_at, expected_at)]
    assert upcoming is None
    assert tt.next_run(due[0], restriction, NOW + timedelta(days=9)) is None


def test_once_in_the_future_is_the_next_run() -> None:
    due, upcoming = due_runs(timetable("@once"), None, Restriction(utc(2026, 2, 1), None, True), NOW)
    assert due == [] and upcoming is not None and upcoming.run_after == utc(2026, 2, 1)


def test_continuous_first_run_covers_start_date_to_now() -> None:
    run = timetable("@continuous").next_run(None, Restriction(utc(2026, 1, 1), None, False), NOW)
    assert run == RunInfo(
        logical_date=NOW, data_interval_start=utc(2026, 1, 1), data_interval_end=NOW, run_after=NOW
    )


def test_continuous_next_run_starts_where_the_last_ended() -> None:
    tt = timetable("@continuous")
    last = RunInfo(utc(2026, 1, 10, 11), utc(2026, 1, 10, 10), utc(2026, 1, 10, 11), utc(2026, 1, 10, 11))
    run = tt.next_run(last, Restriction(utc(2026, 1, 1), None, False), NOW)
    assert run == RunInfo(NOW, utc(2026, 1, 10, 11), NOW, NOW)


@pytest.mark.parametrize(
    ("earliest", "latest", "expected"),
    [
        (None, None, RunInfo(NOW, NOW, NOW, NOW)),
        (utc(2026, 2, 1), None, RunInfo(utc(2026, 2, 1), utc(2026, 2, 1), utc(2026, 2, 1), utc(2026, 2, 1))),
        (utc(2026, 1, 1), utc(2026, 1, 9), None),  # end date passed
    ],
)
def test_continuous_bounds(
    earliest: datetime | None, latest: datetime | None, expected: RunInfo | None
) -> None:
    assert timetable("@continuous").next_run(None, Restriction(earliest, latest, True), NOW) == expected


def test_continuous_is_due_once_and_never_repeats_a_logical_date() -> None:
    due, upcoming = due_runs(timetable("@continuous"), None, Restriction(None, None, True), NOW)
    assert [run.logical_date for run in due] == [NOW]
    assert upcoming is not None and upcoming.logical_date == NOW + timedelta(microseconds=1) > NOW


# --- backfill ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "earliest", "latest", "expected"),
    [
        (utc(2026, 1, 1), utc(2026, 1, 10), None, None, [utc(2026, 1, d) for d in range(1, 11)]),  # inclusive
        (utc(2026, 1, 1, 12), utc(2026, 1, 5, 12), None, None, [utc(2026, 1, d) for d in range(2, 6)]),
        (
            utc(2026, 1, 1),
            utc(2026, 1, 10),
            utc(2026, 1, 4, 6),
            None,
            [utc(2026, 1, d) for d in range(5, 11)],
        ),
        (utc(2026, 1, 1), utc(2026, 1, 10), None, utc(2026, 1, 3), [utc(2026, 1, d) for d in range(1, 4)]),
        (
            utc(2026, 1, 1),
            utc(2026, 1, 10),
            utc(2026, 1, 3),
            utc(2026, 1, 6),
            [utc(2026, 1, d) for d in range(3, 7)],
        ),
        (utc(2026, 1, 1), utc(2026, 1, 10), utc(2026, 2, 1), None, []),  # all before the start date
        (utc(2026, 1, 1, 12), utc(2026, 1, 1, 13), None, None, []),  # no fire time inside
    ],
)
def test_cron_backfill_range(
    start: datetime,
    end: datetime,
    earliest: datetime | None,
    latest: datetime | None,
    expected: list[datetime],
) -> None:
    runs = timetable("@daily").runs_between(start, end, Restriction(earliest, latest, catchup=False))
    assert [run.logical_date for run in runs] == expected
    assert_well_formed(runs)


@pytest.mark.parametrize(
    ("earliest", "expected"),
    [
        (None, [utc(2026, 1, 1, h, 30) for h in range(0, 4)]),  # no start date: from the range start
        (utc(2025, 12, 31, 23, 15), [utc(2026, 1, 1, h, 15) for h in range(1, 4)]),  # the start date's grid
    ],
)
def test_delta_backfill_range(earliest: datetime | None, expected: list[datetime]) -> None:
    runs = timetable(None, delta=HOUR).runs_between(
        utc(2026, 1, 1, 0, 30), utc(2026, 1, 1, 3, 30), Restriction(earliest, None, True)
    )
    assert [run.logical_date for run in runs] == expected
    assert_well_formed(runs)


@pytest.mark.parametrize("schedule", ["@once", "@continuous"])
def test_once_and_continuous_cannot_be_backfilled(schedule: str) -> None:
    with pytest.raises(ScheduleError, match=f"{schedule} schedule cannot be backfilled"):
        timetable(schedule).runs_between(utc(2026, 1, 1), utc(2026, 1, 2), Restriction(None, None, True))


def test_backfill_range_backwards_is_refused() -> None:
    with pytest.raises(ScheduleError, match="is after its end"):
        timetable("@daily").runs_between(utc(2026, 1, 2), utc(2026, 1, 1), Restriction(None, None, True))


def test_huge_backfill_is_refused() -> None:
    with pytest.raises(ScheduleError, match=f"more than {MAX_BACKFILL_RUNS} runs"):
        timetable(None, delta=1.0).runs_between(
            utc(2026, 1, 1), utc(2026, 1, 3), Restriction(None, None, True)
        )


# --- invalid input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "delta", "tz", "message"),
    [
        ("0 0 3 * * *", None, "UTC", r"cron expression '0 0 3 \* \* \*' has 6 fields.*seconds and year"),
        ("0 0 3 * * * 2026", None, "UTC", r"has 7 fields"),
        ("0 3 * *", None, "UTC", r"'0 3 \* \*' has 4 fields"),
        ("61 * * * *", None, "UTC", r"invalid cron expression '61 \* \* \* \*'"),
        ("0 3 * * funday", None, "UTC", r"invalid cron expression '0 3 \* \* funday'"),
        ("0 0 30 2 *", None, "UTC", r"'0 0 30 2 \*' never fires"),
        (
            "@dialy",
            None,
            "UTC",
            r"unknown schedule preset '@dialy' \(did you mean '@daily'\?\).*@hourly.*@continuous",
        ),
        ("@fortnightly", None, "UTC", r"unknown schedule preset '@fortnightly'.*@quarterly"),
        ("", None, "UTC", r"empty string"),
        ("@daily", 60.0, "UTC", r"one schedule, got both"),
        (None, 0.0, "UTC", r"positive, finite"),
        (None, -5.0, "UTC", r"positive, finite"),
        (None, float("nan"), "UTC", r"positive, finite"),
        (None, float("inf"), "UTC", r"positive, finite"),
        ("@daily", None, "Mars/Olympus_Mons", r"unknown time zone 'Mars/Olympus_Mons'.*IANA.*Europe/Berlin"),
        ("@daily", None, "europe/berlin", r"did you mean 'Europe/Berlin'\?"),
        ("@daily", None, "", r"time zone is empty"),
        (None, None, "Not/AZone", r"unknown time zone"),
    ],
)
def test_invalid_schedules_say_what_to_fix(
    schedule: str | None, delta: float | None, tz: str, message: str
) -> None:
    with pytest.raises(ScheduleError, match=message):
        make_timetable(schedule, delta, tz)


def test_schedule_error_is_ours_and_a_value_error() -> None:
    assert issubclass(ScheduleError, OrchestratorError) and issubclass(ScheduleError, ValueError)


NAIVE = datetime(2026, 1, 1)


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda: timetable("@daily").next_run(None, Restriction(None, None, True), NAIVE), "now"),
        (lambda: Restriction(NAIVE, None, True), "Restriction.earliest"),
        (lambda: Restriction(None, NAIVE, True), "Restriction.latest"),
        (lambda: RunInfo.interval(NAIVE, utc(2026, 1, 2)), "RunInfo.logical_date"),
        (
            lambda: timetable(None, delta=HOUR).runs_between(
                NAIVE, utc(2026, 1, 2), Restriction(None, None, True)
            ),
            "backfill start",
        ),
        (lambda: due_runs(timetable("@once"), None, Restriction(None, None, True), NAIVE), "now"),
    ],
)
def test_naive_datetimes_are_refused(call: object, what: str) -> None:
    with pytest.raises(ScheduleError, match=rf"{what} is a naive datetime \(2026-01-01T00:00:00\).*tzinfo"):
        call()  # type: ignore[operator]
