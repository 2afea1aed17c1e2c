"""The CLI's event-stream parser and its reconnecting reader (orchestrator/sse.py), without I/O."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.cli import event_line
from orchestrator.sse import SseMessage, SseParser, follow


def parse(text: str) -> tuple[list[SseMessage], SseParser]:
    parser = SseParser()
    return list(parser.feed(text.splitlines(keepends=True))), parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id: 7\nevent: dag_run\ndata: {}\n\n", [SseMessage("dag_run", "{}", "7")]),
        # no event name: "message"; no space after the colon is fine too
        ("data:x\n\n", [SseMessage("message", "x", None)]),
        # data lines are joined with newlines; one leading space only is stripped
        ("data: a\ndata:  b\n\n", [SseMessage("message", "a\n b", None)]),
        # comments (keepalives) are not messages
        (": keepalive\n\n: connected\n\n", []),
        # CRLF line ends
        ("event: e\r\ndata: d\r\n\r\n", [SseMessage("e", "d", None)]),
        # a message not yet ended by a blank line is not dispatched
        ("event: e\ndata: d\n", []),
        # the id carries over to later messages without one
        ("id: 3\ndata: a\n\ndata: b\n\n", [SseMessage("message", "a", "3"), SseMessage("message", "b", "3")]),
        # unknown fields are ignored
        ("foo: bar\ndata: x\n\n", [SseMessage("message", "x", None)]),
    ],
)
def test_the_parser_follows_the_event_stream_format(text: str, expected: list[SseMessage]) -> None:
    messages, _ = parse(text)
    assert messages == expected


def test_an_id_without_data_sets_the_last_event_id_but_dispatches_nothing() -> None:
    messages, parser = parse("id: 1\ndata: a\n\n: keepalive\nid: 9\n\n")
    assert [m.id for m in messages] == ["1"]
    assert parser.last_event_id == "9"


def test_retry_sets_the_reconnection_delay_and_an_id_with_nul_is_ignored() -> None:
    _, parser = parse("retry: 2500\nid: 4\n\nid: a\0b\n\n")
    assert parser.retry == 2.5
    assert parser.last_event_id == "4"


def test_follow_reconnects_after_the_last_id_seen_and_drops_a_cut_off_message() -> None:
    streams = [
        "id: 1\nevent: dag_run\ndata: one\n\nid: 2\nevent: dag_run\ndata: cut",  # then the connection drops
        "id: 2\nevent: dag_run\ndata: two\n\n",
    ]
    asked: list[str | None] = []
    seen: list[SseMessage] = []
    drops: list[BaseException | None] = []

    def open_stream(last_event_id: str | None) -> Iterator[str]:
        asked.append(last_event_id)
        text = streams[len(asked) - 1]
        yield from text.splitlines(keepends=True)
        if len(asked) == 1:
            raise ConnectionResetError("reset by peer")

    follow(
        open_stream,
        seen.append,
        on_dropped=drops.append,
        last_event_id="0",
        reconnect=lambda _exc: len(asked) < 2,
        sleep=lambda _s: None,
    )
    assert asked == ["0", "1"]
    assert [(m.id, m.data) for m in seen] == [("1", "one"), ("2", "two")]
    assert len(drops) == 1 and isinstance(drops[0], ConnectionResetError)


def test_event_lines_of_runs_and_tasks() -> None:
    run = SseMessage("dag_run", '{"timestamp": "T", "dag_run_id": "r1", "state": "running"}', "1")
    ti = SseMessage(
        "task_instance",
        '{"timestamp": "T", "dag_run_id": "r1", "task_id": "a", "map_index": 2, "try_number": 1, "state": null}',
        "2",
    )
    assert event_line(run) == "T  run r1  running"
    assert event_line(ti) == "T  task r1 a[2]  try 1  none"
    assert event_line(SseMessage("import_error", "{}", "3")) is None
