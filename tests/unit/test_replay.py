"""The replay ring of the event stream (orchestrator/api/replay.py): which events a resume gets,
when it is a reset, and how a stream that falls behind or misses events is ended."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.api.replay import Ended, EventReplay
from orchestrator.ports import ImportErrorChanged

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def replay_with(n: int, capacity: int = 5) -> EventReplay:
    replay = EventReplay(capacity, first_id=100, now=lambda: T0)
    for i in range(n):
        replay.add(ImportErrorChanged(f"f{i}", None))
    return replay


@pytest.mark.parametrize(
    ("events", "after", "replayed", "missed"),
    [
        (3, None, [], False),  # live only
        (3, 99, [100, 101, 102], False),  # from before the first event, none evicted yet
        (3, 101, [102], False),
        (3, 102, [], False),  # up to date
        (8, 102, [103, 104, 105, 106, 107], False),  # the oldest kept follows the id at once
        (8, 101, [], True),  # 102 was evicted
        (3, 103, [], True),  # an id never given
        (0, 98, [], True),  # from an earlier life of the daemon
    ],
)
def test_what_a_resume_gets(events: int, after: int | None, replayed: list[int], missed: bool) -> None:
    feed, was_missed = replay_with(events).open(after)
    assert [item.id for item in feed.take()] == replayed
    assert was_missed is missed


def test_a_feed_gets_live_events_after_its_backlog_and_ends_when_its_queue_overflows() -> None:
    replay = replay_with(2)
    feed, _ = replay.open(99, queue=2)
    replay.add(ImportErrorChanged("live1", None))
    replay.add(ImportErrorChanged("live2", None))
    assert feed.ended is None
    replay.add(ImportErrorChanged("live3", None))  # a third waiting event: over the queue
    assert feed.ended is Ended.OVERFLOW and replay.streams() == 0
    assert [item.id for item in feed.take()] == [100, 101, 102, 103]  # what it held, then the end


def test_a_gap_in_the_bus_ends_open_streams_and_makes_older_ids_a_reset() -> None:
    replay = replay_with(3)
    feed, _ = replay.open(None)
    replay.gap(4)
    assert feed.ended is Ended.GAP
    nxt = replay.add(ImportErrorChanged("after", None))
    assert nxt.id == 107  # the lost events' ids are skipped
    _, missed = replay.open(102)
    assert missed
    resumed, missed = replay.open(106)
    assert not missed and [item.id for item in resumed.take()] == [107]


def test_shutdown_ends_every_stream() -> None:
    replay = replay_with(1)
    feeds = [replay.open(None)[0] for _ in range(3)]
    replay.end_all()
    assert all(feed.ended is Ended.SHUTDOWN for feed in feeds) and replay.streams() == 0
