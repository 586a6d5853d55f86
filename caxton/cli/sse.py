# -*- test-case-name: tests.test_cli_events -*-
"""
A sans-I/O parser of server-sent events (the C{text/event-stream} format
of the HTML standard), for C{caxton events}.

Bytes go in as they arrive, split anywhere; complete events come out.
Lines end with CRLF, LF or CR (a CR at the end of one chunk and an LF at
the start of the next are one line end).  A line longer than
C{max_line}, or an event whose data grows past C{max_event}, is an
L{SSEError}: a stream that never ends a line cannot make the client hold
it all in memory.
"""

from __future__ import annotations

import re
from typing import List, Optional

import attr

_EOL = re.compile(rb"\r\n|\r|\n")


class SSEError(Exception):
    """
    The stream broke the format's limits.
    """


@attr.s(frozen=True, auto_attribs=True)
class Event:
    """
    One dispatched event.

    @ivar type: its C{event:} field, C{message} when it had none.
    @ivar data: its C{data:} lines, joined with line feeds.
    @ivar id: the last event id when it was dispatched, or L{None}.
    """

    type: str
    data: str
    id: Optional[str] = None


class SSEParser:
    """
    The state of one event stream: the partial line, the event being
    built, the last event id and the reconnection time the server asked
    for.

    @ivar last_event_id: the id to send as C{Last-Event-ID} when
        reconnecting, or L{None} before the stream gave one.
    @ivar retry: the reconnection delay the server asked for, in
        milliseconds, or L{None}.
    """

    def __init__(self, max_line: int = 1024 * 1024, max_event: int = 4 * 1024 * 1024) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self.last_event_id: Optional[str] = None
        self.retry: Optional[int] = None
        self._partial = b""
        self._skip_lf = False
        self._started = False
        self._type = ""
        self._data: List[str] = []
        self._data_size = 0
        self._id: Optional[str] = None

    def feed(self, data: bytes) -> List[Event]:
        """
        Take the next bytes of the stream; the events they complete.

        @raise SSEError: when a line or an event is too long.
        """
        if not data:
            return []
        if self._skip_lf and data[:1] == b"\n":
            data = data[1:]
        self._skip_lf = False
        buffer = self._partial + data
        events: List[Event] = []
        start = 0
        for end in _EOL.finditer(buffer):
            event = self._line(buffer[start : end.start()])
            if event is not None:
                events.append(event)
            start = end.end()
        self._partial = buffer[start:]
        # A CR ending the buffer may be the first half of a CRLF.
        self._skip_lf = start > 0 and start == len(buffer) and buffer[start - 1 : start] == b"\r"
        if len(self._partial) > self.max_line:
            raise SSEError(f"a line of the event stream is longer than {self.max_line} bytes")
        return events

    def _line(self, raw: bytes) -> Optional[Event]:
        line = raw.decode("utf-8", "replace")
        if not self._started:
            self._started = True
            if line.startswith("\ufeff"):
                line = line[1:]
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data_size += len(value) + 1
            if self._data_size > self.max_event:
                raise SSEError(f"an event of the event stream is larger than {self.max_event} bytes")
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit() and value.isascii():
                self.retry = int(value)
        return None

    def _dispatch(self) -> Optional[Event]:
        # The id counts even for an event without data (the standard's
        # "last event ID buffer" is kept whatever happens).
        if self._id is not None:
            self.last_event_id = self._id or None
        event = None
        if self._data:
            event = Event(type=self._type or "message", data="\n".join(self._data), id=self.last_event_id)
        self._type = ""
        self._data = []
        self._data_size = 0
        self._id = None
        return event
