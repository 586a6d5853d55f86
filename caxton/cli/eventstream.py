# -*- test-case-name: tests.test_cli_events -*-
"""
The Twisted side of C{caxton events}: L{EventStream} feeds a response body
to the sans-I/O L{SSEParser} as it arrives, and L{follow_events} keeps a
stream open, reconnecting with back-off and C{Last-Event-ID}, until it is
cancelled (Ctrl-C, SIGTERM) or the node refuses it.

Imported only when C{caxton events} runs (see L{caxton.cli.events}).
"""

from __future__ import annotations

import argparse
import os
import random
from typing import Any, Callable, List, Optional, TextIO

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone, ResponseFailed

from caxton.cli import output
from caxton.cli.errors import CommandError
from caxton.cli.events import event_data, event_line
from caxton.cli.http import NodeClient
from caxton.cli.sse import Event, SSEError, SSEParser

#: The first wait before reconnecting, and the longest, in seconds.
FIRST_DELAY = 1.0
LONGEST_DELAY = 30.0

#: The node sends a keep-alive comment every 15 s; this long without a
#: byte means the connection is dead even if TCP has not noticed.
IDLE = 45.0

#: The most a 429's C{Retry-After} makes the command wait, in seconds.
LONGEST_RETRY_AFTER = 300.0

#: Statuses worth reconnecting after once connected (the node restarts,
#: or a proxy in front of it does); any other error status ends the
#: command with its message.
_TRANSIENT = {502, 503, 504}


class EventStream(Protocol):
    """
    The body of one C{text/event-stream} response.

    @param parser: the stream's parser (its last event id and retry carry
        over to the next connection).
    @param on_event: called with each complete L{Event}.
    @param clock: for the idle timer.
    @param idle: drop the connection after this many seconds without a
        byte.

    @ivar ended: fires with the reason the body ended (a L{ResponseDone},
        a L{ResponseFailed}, an L{SSEError}, a L{TimeoutError}); it never
        errbacks, except with L{CancelledError} when cancelled, which
        drops the connection.
    @ivar events: how many events this connection delivered.
    """

    def __init__(self, parser: SSEParser, on_event: Callable[[Event], None], clock: Any, idle: float = IDLE) -> None:
        self._parser = parser
        self._on_event = on_event
        self.events = 0
        self.ended: Deferred = Deferred(lambda _: self._drop())
        self._idle = idle
        self._timer = clock.callLater(idle, self._expired)

    def _drop(self) -> None:
        if self._timer.active():
            self._timer.cancel()
        if self.transport is not None:
            self.transport.stopProducing()

    def abort(self, reason: BaseException) -> None:
        """
        End the stream now: C{ended} fires with C{reason}.
        """
        if not self.ended.called:
            self.ended.callback(reason)
        self._drop()

    def _expired(self) -> None:
        self.abort(TimeoutError(f"no data for {self._idle:g}s"))

    def dataReceived(self, data: bytes) -> None:
        if self.ended.called:
            return
        if self._timer.active():
            self._timer.reset(self._idle)
        try:
            events = self._parser.feed(data)
        except SSEError as e:
            self.abort(e)
            return
        for event in events:
            self.events += 1
            self._on_event(event)
            if self.ended.called:
                return

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self._timer.active():
            self._timer.cancel()
        if not self.ended.called:
            self.ended.callback(reason.value)


def why(reason: Any) -> str:
    """
    Why a stream ended, in a few words.
    """
    if reason is None or isinstance(reason, ResponseDone):
        return "the node closed it"
    if isinstance(reason, ResponseFailed):
        inner = [" ".join(str(f.value).split()) or type(f.value).__name__ for f in reason.reasons]
        return "; ".join(inner) or "the connection broke"
    return " ".join(str(reason).split()) or type(reason).__name__


def _quiet_stdout(out: TextIO) -> None:
    """
    After a broken pipe (C{caxton events | head}), point stdout at
    /dev/null so that Python's flush at exit does not complain again.
    """
    try:
        fileno = out.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)


def _delay_of(parser: SSEParser) -> float:
    if parser.retry is None:
        return FIRST_DELAY
    return min(max(parser.retry / 1000.0, 0.1), LONGEST_DELAY)


async def follow_events(args: argparse.Namespace, client: NodeClient, out: TextIO, err: TextIO) -> int:
    """
    Print the node's events until cancelled; 0 then.

    @raise CommandError: when the first connection fails, or the node
        refuses the stream (an error status other than 429 and, once
        connected, 502 to 504).
    """
    reactor = client.reactor
    as_json = client.settings.json
    parser = SSEParser()
    if args.after:
        parser.last_event_id = args.after
    delay = FIRST_DELAY
    connected = False
    stream: Optional[EventStream] = None
    piped: List[bool] = []

    def show(event: Event) -> None:
        data = event_data(event)
        try:
            print(output.json_line(data) if as_json else event_line(data), file=out)
            out.flush()
        except BrokenPipeError:
            piped.append(True)
            _quiet_stdout(out)
            if stream is not None:
                stream.abort(BrokenPipeError("stdout was closed"))

    def note(line: str) -> None:
        print(f"caxton: {line}", file=err)
        err.flush()

    async def later(seconds: float, what: str) -> None:
        note(f"{what}; trying again in {output.duration(seconds)}")
        await deferLater(reactor, seconds, lambda: None)

    try:
        while True:
            headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
            if parser.last_event_id:
                headers["last-event-id"] = parser.last_event_id
            try:
                response = await client.send("GET", "/api/v1/events", params=[("types", args.types)], headers=headers)
            except CommandError as e:
                if not connected:
                    raise
                await later(delay * random.uniform(0.8, 1.0), str(e))
                delay = min(delay * 2, LONGEST_DELAY)
                continue
            if response.code != 200:
                content = await client.read(response)
                if response.code == 429 or (connected and response.code in _TRANSIENT):
                    retry = (response.headers.getRawHeaders(b"retry-after") or [b""])[0].decode("latin-1").strip()
                    wait = min(float(retry), LONGEST_RETRY_AFTER) if retry.isdigit() else delay
                    await later(wait, f"the node answered {response.code}")
                    delay = min(delay * 2, LONGEST_DELAY)
                    continue
                if response.code == 404:
                    raise CommandError(
                        f"the node at {client.url} has no event stream (GET /api/v1/events answered 404); "
                        "it is older than this client"
                    )
                client.check(response, content)
                raise CommandError(f"the node answered {response.code} to GET /api/v1/events")
            kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
            if not kind.lower().startswith("text/event-stream"):
                raise CommandError(
                    f"the node answered GET /api/v1/events with {kind or 'no content type'}, not an event stream"
                )
            if connected:
                note("reconnected to the event stream")
            connected = True
            stream = EventStream(parser, show, reactor)
            response.deliverBody(stream)
            reason = await stream.ended
            if piped:
                return 0
            if isinstance(reason, SSEError):
                note(f"the event stream is malformed ({reason})")
            # Start afresh, keeping what carries over to the next connection.
            carried, parser = parser, SSEParser()
            parser.last_event_id, parser.retry = carried.last_event_id, carried.retry
            if stream.events:
                delay = _delay_of(carried)
            await later(delay * random.uniform(0.8, 1.0), f"the event stream ended ({why(reason)})")
            delay = min(delay * 2, LONGEST_DELAY)
    except CancelledError:
        # Ctrl-C or SIGTERM: following ends here, and that is success.
        if stream is not None and not stream.ended.called:
            stream.ended.cancel()
        return 0
    return 0
