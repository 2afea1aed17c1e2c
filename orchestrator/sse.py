"""Reading a server-sent event stream (text/event-stream), as the CLI follows GET /api/v1/events.

`SseParser` is the WHATWG event-stream interpretation, line by line, with no I/O: comment lines
(`: keepalive`) are skipped, `data:` lines are joined, a blank line dispatches the message, and
`id:` sets the last event id once its message ends, even a message with no data (the server
sends one when a filter skipped events, so that a resume starts after them). `follow` reads a stream through a
function that opens it, and reopens it with `Last-Event-ID` when the connection drops, so a
follower sees every event once, in order, across reconnects (or a `reset` when the server no
longer keeps the events it missed). Stdlib only: the CLI must start fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

#: seconds before reconnecting a dropped stream (the server may send `retry:` to change it)
DEFAULT_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class SseMessage:
    """One dispatched message: its type ("message" if the server named none), data and id."""

    event: str
    data: str
    id: str | None


class SseParser:
    """The event-stream parser of the HTML standard, fed one line (without its newline) at a time."""

    def __init__(self) -> None:
        #: the id to send as Last-Event-ID on reconnecting (that of the last completed message)
        self.last_event_id: str | None = None
        self._id: str | None = None
        #: the reconnection delay the server asked for (seconds), if it did
        self.retry: float | None = None
        self._event = ""
        self._data: list[str] = []

    def feed_line(self, line: str) -> SseMessage | None:
        """Interpret one line; returns the message a blank line completes, else None."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit():
                self.retry = int(value) / 1000
        return None

    def _dispatch(self) -> SseMessage | None:
        if self._id is not None:
            self.last_event_id = self._id
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return SseMessage(event, "\n".join(data), self.last_event_id)

    def discard_partial(self) -> None:
        """Forget a message begun but not completed (its connection dropped)."""
        self._event, self._data = "", []
        self._id = self.last_event_id

    def feed(self, lines: Iterable[str]) -> Iterator[SseMessage]:
        """Every message `lines` complete, in order."""
        for line in lines:
            message = self.feed_line(line)
            if message is not None:
                yield message


#: opens the stream, resuming after the given last event id (None: from now); returns its lines
StreamOpener = Callable[[str | None], Iterable[str]]


def follow(
    open_stream: StreamOpener,
    on_message: Callable[[SseMessage], None],
    *,
    on_dropped: Callable[[BaseException | None], None] = lambda _exc: None,
    last_event_id: str | None = None,
    reconnect: Callable[[BaseException | None], bool] = lambda exc: True,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Hand every message of the stream to `on_message`, reopening it after `last_event_id` when
    it ends or fails with OSError, for as long as `reconnect(error)` says so (the error is None
    when the server ended the stream). `on_dropped` hears of each drop before the reconnect."""
    parser = SseParser()
    parser.last_event_id = last_event_id
    parser.discard_partial()
    while True:
        error: BaseException | None = None
        try:
            for message in parser.feed(open_stream(parser.last_event_id)):
                on_message(message)
        except OSError as exc:
            error = exc
        parser.discard_partial()  # a message cut off by the drop is not dispatched
        if not reconnect(error):
            return
        on_dropped(error)
        sleep(parser.retry if parser.retry is not None else DEFAULT_RETRY)
