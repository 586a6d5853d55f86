"""
Tests for C{caxton events}: the server-sent events parser
(L{caxton.cli.sse}, with hypothesis splitting the stream anywhere), the
lines it prints, the stream protocol's limits, and the command run as a
user runs it against a fake event stream in the test (dropped once, so it
reconnects with C{Last-Event-ID}) and against a real node.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Dict, List, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web._newclient import ResponseDone
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from caxton.cli.events import event_data, event_line
from caxton.cli.eventstream import EventStream
from caxton.cli.sse import Event, SSEError, SSEParser
from tests.clirunner import start
from tests.nodes import Client, NodeProcess
from tests.wasmbuild import example, wat_module


def feed_all(parser: SSEParser, chunks: List[bytes]) -> List[Event]:
    events: List[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events


class ParserTests(SynchronousTestCase):
    """
    L{SSEParser} follows the event-stream format of the HTML standard.
    """

    def test_fields(self) -> None:
        """
        C{id}, C{event} and C{data} make an event at the blank line;
        several data lines are joined with line feeds; one space after
        the colon is dropped; comments are skipped.
        """
        parser = SSEParser()
        events = parser.feed(
            b": keepalive\n\nid: 7\nevent: agent.deployed\ndata: {\"a\":\ndata:  1}\n\n"
            b"data:plain\n\n"
        )
        self.assertEqual(
            events, [Event("agent.deployed", '{"a":\n 1}', "7"), Event("message", "plain", "7")]
        )
        self.assertEqual(parser.last_event_id, "7")

    def test_line_endings(self) -> None:
        """
        CRLF, CR and LF all end lines, mixed in one stream; a byte order
        mark at the start is skipped.
        """
        parser = SSEParser()
        events = parser.feed(b"\xef\xbb\xbfid: 1\r\ndata: a\r\rid: 2\rdata: b\n\n")
        self.assertEqual(events, [Event("message", "a", "1"), Event("message", "b", "2")])

    def test_id_without_data(self) -> None:
        """
        An event with no data is not dispatched, but its id counts for
        reconnecting; an empty id forgets it; C{retry} sets the delay; an
        event still open when the stream ends is never dispatched.
        """
        parser = SSEParser()
        self.assertEqual(parser.feed(b"id: 9\nretry: 2500\n\n"), [])
        self.assertEqual((parser.last_event_id, parser.retry), ("9", 2500))
        parser.feed(b"retry: soon\nid\n\n")
        self.assertEqual((parser.last_event_id, parser.retry), (None, 2500))
        self.assertEqual(parser.feed(b"id: 10\ndata: unfinished\n"), [])
        self.assertIsNone(parser.last_event_id)

    def test_limits(self) -> None:
        """
        A line longer than C{max_line}, or an event larger than
        C{max_event}, is an L{SSEError}.
        """
        parser = SSEParser(max_line=16)
        parser.feed(b"data: " + b"x" * 10)
        self.assertRaises(SSEError, parser.feed, b"x" * 10)
        parser = SSEParser(max_line=100, max_event=50)
        parser.feed(b"data: " + b"y" * 40 + b"\n")
        self.assertRaises(SSEError, parser.feed, b"data: " + b"y" * 40 + b"\n")

    @settings(max_examples=200, deadline=None)
    @given(
        events=st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=10**6),
                st.sampled_from(["agent.deployed", "member.joined", "message"]),
                st.lists(st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\0"), max_size=12), min_size=1, max_size=3),
            ),
            max_size=6,
        ),
        endings=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=1, max_size=8),
        keepalives=st.booleans(),
        cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    )
    def test_chunks_anywhere(self, events: Any, endings: Any, keepalives: bool, cuts: List[int]) -> None:
        """
        However the stream is cut into chunks (between a CR and its LF,
        inside a UTF-8 character, anywhere), the same events come out as
        from the whole stream, with their ids.
        """
        lines: List[bytes] = []
        expected: List[Event] = []
        for number, kind, data in events:
            if keepalives:
                lines += [b": keepalive", b""]
            lines.append(f"id: {number}".encode())
            lines.append(f"event: {kind}".encode())
            lines += [f"data: {part}".encode() for part in data]
            lines.append(b"")
            # "data: " loses one space: a value starting with a space keeps it.
            expected.append(Event(kind, "\n".join(data), str(number)))
        parts = []
        ending = b"\n"
        for i, line in enumerate(lines):
            # CR, then a blank line ended by LF, would read as one CRLF.
            ending = b"\r" if ending == b"\r" and not line else endings[i % len(endings)]
            parts.append(line + ending)
        stream = b"".join(parts)
        points = sorted({min(cut, len(stream)) for cut in cuts})
        chunks = [stream[a:b] for a, b in zip([0] + points, points + [len(stream)])]
        self.assertEqual(feed_all(SSEParser(), chunks), expected)
        self.assertEqual(feed_all(SSEParser(), [stream[i : i + 1] for i in range(len(stream))]), expected)


class LineTests(SynchronousTestCase):
    """
    What C{caxton events} prints for an event.
    """

    def test_agent_and_member(self) -> None:
        """
        Time (local; UTC here), type, subject and the other fields as
        C{key=value}, quoted when they have spaces.
        """
        os.environ["TZ"] = "UTC"
        time.tzset()
        self.addCleanup(time.tzset)
        self.addCleanup(os.environ.pop, "TZ")
        agent = {"id": 4, "type": "agent.failed", "time": "2030-01-02T03:04:05Z", "agent": "echo",
                 "node": "n1", "version": 2, "reason": "too many traps"}
        self.assertEqual(event_line(agent),
                         '2030-01-02 03:04:05  agent.failed      echo on n1  reason="too many traps" version=2')
        member = {"id": 5, "type": "member.joined", "time": "2030-01-02T03:04:05.250+01:00",
                  "member": "n2", "address": "10.0.0.2:7946", "incarnation": 3}
        self.assertEqual(event_line(member),
                         "2030-01-02 02:04:05  member.joined     n2  address=10.0.0.2:7946 incarnation=3")
        self.assertEqual(event_line({"type": "odd"}), "-  odd")

    def test_data_not_json(self) -> None:
        """
        Data that is not a JSON object is kept as text, with the event's
        type and id.
        """
        self.assertEqual(event_data(Event("ping", "hello", "3")), {"type": "ping", "data": "hello", "id": "3"})
        self.assertEqual(event_data(Event("x", '{"type": "y"}')), {"type": "y"})


class _Transport:
    def __init__(self) -> None:
        self.stopped = 0

    def stopProducing(self) -> None:
        self.stopped += 1


class StreamProtocolTests(SynchronousTestCase):
    """
    L{EventStream} hands complete events on, and ends on silence, on a
    malformed stream and when the body ends.
    """

    def stream(self) -> tuple:
        clock = Clock()
        seen: List[Event] = []
        protocol = EventStream(SSEParser(max_line=64), seen.append, clock, idle=45.0)
        transport = _Transport()
        protocol.makeConnection(transport)
        return clock, seen, protocol, transport

    def test_events_and_end(self) -> None:
        """
        Events come out as their blank lines arrive; the end of the body
        fires C{ended} with its reason.
        """
        clock, seen, protocol, transport = self.stream()
        protocol.dataReceived(b"data: 1\n")
        protocol.dataReceived(b"\ndata: 2\n\n")
        self.assertEqual([e.data for e in seen], ["1", "2"])
        self.assertEqual(protocol.events, 2)
        protocol.connectionLost(Failure(ResponseDone()))
        self.assertIsInstance(self.successResultOf(protocol.ended), ResponseDone)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idle(self) -> None:
        """
        Keep-alives keep the stream open; 45 s without a byte drops it.
        """
        clock, seen, protocol, transport = self.stream()
        for _ in range(5):
            clock.advance(30)
            protocol.dataReceived(b": keepalive\n\n")
        self.assertNoResult(protocol.ended)
        clock.advance(45)
        self.assertIsInstance(self.successResultOf(protocol.ended), TimeoutError)
        self.assertEqual(transport.stopped, 1)

    def test_malformed(self) -> None:
        """
        A line over the limit drops the connection with the parser's
        error.
        """
        clock, seen, protocol, transport = self.stream()
        protocol.dataReceived(b"data: " + b"z" * 100)
        self.assertIsInstance(self.successResultOf(protocol.ended), SSEError)
        self.assertEqual(transport.stopped, 1)

    def test_cancel(self) -> None:
        """
        Cancelling C{ended} (Ctrl-C) drops the connection.
        """
        clock, seen, protocol, transport = self.stream()
        protocol.ended.cancel()
        self.failureResultOf(protocol.ended)
        self.assertEqual((transport.stopped, clock.getDelayedCalls()), (1, []))


class FakeEvents(Resource):
    """
    C{GET /api/v1/events} of a fake node: the first connection gets two
    events and a keep-alive, then ends; later ones get one event each and
    stay open.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: List[Dict[str, Any]] = []
        self.open: List[Any] = []

    def render_GET(self, request: Any) -> Any:
        if request.path != b"/api/v1/events":
            request.setResponseCode(404)
            return b'{"error": {"code": "INVALID_REQUEST", "message": "no such route"}}'
        self.requests.append(
            {
                "last_event_id": request.getHeader("last-event-id"),
                "types": (request.args.get(b"types") or [b""])[0].decode(),
                "accept": request.getHeader("accept"),
            }
        )
        request.setHeader("content-type", "text/event-stream")
        if len(self.requests) == 1:
            request.write(b"retry: 100\n")
            request.write(_event(1, "agent.deployed", agent="echo", node="n1", version=1))
            request.write(b": keepalive\n\n")
            request.write(_event(2, "member.joined", member="n2", address="127.0.0.1:7947", incarnation=5))
            request.finish()
            return NOT_DONE_YET
        request.write(_event(3, "agent.failed", agent="echo", node="n1", version=1, reason="too many traps"))
        self.open.append(request)
        return NOT_DONE_YET


def _event(number: int, kind: str, **fields: Any) -> bytes:
    data = {"id": number, "type": kind, "time": f"2030-01-02T03:04:0{number}Z", **fields}
    return f"id: {number}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


class _Drop(Protocol):
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


async def _status_only(url: str) -> int:
    """
    The status of a C{GET url}, without reading a body that may never end.
    """
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(b"GET", url.encode("ascii"))
    response.deliverBody(_Drop())
    return response.code


class EventsCommandTests(TestCase):
    """
    C{caxton events} as a user runs it: lines until Ctrl-C or SIGTERM,
    which end it with status 0; it reconnects after a drop, sending the
    last id it saw.
    """

    timeout = 120

    def fake(self) -> tuple:
        resource = FakeEvents()
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def close() -> None:
            for request in resource.open:
                if not request.finished and request.channel is not None:
                    request.channel.transport.loseConnection()

        self.addCleanup(close)
        return resource, f"http://127.0.0.1:{port.getHost().port}"

    async def test_lines_and_reconnect(self) -> None:
        """
        Readable lines for each event; after the stream drops, a notice
        on stderr and a new request with C{Last-Event-ID: 2}; SIGTERM ends
        it with status 0.
        """
        fake, url = self.fake()
        command = start(self, ["events", "--url", url])
        lines = await command.lines(3)
        self.assertEqual(
            lines,
            [
                "2030-01-02 03:04:01  agent.deployed    echo on n1  version=1",
                "2030-01-02 03:04:02  member.joined     n2  address=127.0.0.1:7947 incarnation=5",
                '2030-01-02 03:04:03  agent.failed      echo on n1  reason="too many traps" version=1',
            ],
        )
        self.assertEqual(await command.signal(signal.SIGTERM), 0)
        self.assertEqual([r["last_event_id"] for r in fake.requests], [None, "2"])
        self.assertEqual(fake.requests[0]["accept"], "text/event-stream")
        self.assertIn("caxton: the event stream ended (the node closed it); trying again in", command.err)
        self.assertIn("caxton: reconnected to the event stream", command.err)

    async def test_json_types_after(self) -> None:
        """
        C{--json} prints each event's JSON on one line; C{--types} goes to
        the node as C{types}, C{--after} as C{Last-Event-ID}; Ctrl-C ends
        it with status 0 and nothing on stderr.
        """
        fake, url = self.fake()
        fake.requests.append({})  # straight to the stream that stays open
        command = start(self, ["events", "--json", "--types", "agent.failed,agent.deployed", "--after", "2", "--url", url])
        [line] = await command.lines(1)
        self.assertEqual(json.loads(line), {"id": 3, "type": "agent.failed", "time": "2030-01-02T03:04:03Z",
                                            "agent": "echo", "node": "n1", "version": 1, "reason": "too many traps"})
        self.assertEqual(await command.signal(signal.SIGINT), 0)
        self.assertEqual(fake.requests[1]["types"], "agent.failed,agent.deployed")
        self.assertEqual(fake.requests[1]["last_event_id"], "2")
        self.assertEqual(command.err, "")

    async def test_against_node(self) -> None:
        """
        Against a real node: deploying an agent prints its
        C{agent.deployed} event; Ctrl-C ends the command with status 0.
        """
        process = NodeProcess(os.path.abspath(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(process.stop(signal.SIGKILL)))
        client = Client(await process.start())
        if await _status_only(client.url + "/api/v1/events") == 404:
            raise SkipTest("needs GET /api/v1/events")
        command = start(self, ["events", "--json", "--url", client.url])
        echo = wat_module(example("wat", "echo.wat"))
        deployed: List[str] = []
        line: Optional[Dict[str, Any]] = None
        # The command may connect after the first deploy: deploy until one
        # shows, a bounded number of times.
        for attempt in range(20):
            name = f"echo-{attempt}"
            status, body = await client.deploy(name, echo)
            self.assertEqual(status, 201, body)
            deployed.append(name)
            await deferLater(reactor, 0.5, lambda: None)
            if command.out.strip():
                line = json.loads(command.out.splitlines()[0])
                break
        self.assertIsNotNone(line, f"no event printed:\n{command.err}")
        self.assertEqual(line["type"], "agent.deployed")
        self.assertIn(line["agent"], deployed)
        self.assertEqual(await command.signal(signal.SIGINT), 0)
