"""
Tests for the slow-client limits of L{caxton.api.site}: the per-request
deadline, the per-client connection cap and the gate that refuses a body
before it is read.  The rules are checked on a L{Clock} with in-memory
transports; then each one once more with real sockets against a real
listening site on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from caxton.api import site as site_module
from caxton.api.site import GuardedSite, is_local, make_site

REMOTE = IPv4Address("TCP", "10.0.0.1", 40000)


class _Echo(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok"

    def render_POST(self, request: Any) -> bytes:
        return b"got %d" % (len(request.content.read()),)


def _site(clock: Any = None, **kwargs: Any) -> Any:
    options = dict(max_body=10**6, timeout=60, request_timeout=10.0, min_body_rate=1000)
    options.update(kwargs)
    return make_site(_Echo(), reactor=clock, **options)


class DeadlineTests(SynchronousTestCase):
    """
    The deadline of one request, on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = _site(self.clock)

    def connect(self, address: Any = REMOTE) -> tuple:
        channel = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        return channel, transport

    def test_trickled_headers_cut(self) -> None:
        """
        A client that sends one header byte a second (never idle long
        enough for the idle timeout) gets 408 once the deadline passes,
        and the connection is closed.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        for _ in range(9):
            self.clock.advance(1)
            channel.dataReceived(b"X")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"), transport.value())
        self.assertIn(b'"INVALID_REQUEST"', transport.value())
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"more\r\n\r\n")  # ignored
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)

    def test_abort_when_client_does_not_read(self) -> None:
        """
        A refused client that does not take its answer is dropped.
        """
        channel, transport = self.connect()
        transport.abortConnection = lambda: aborted.append(True)
        aborted: List[bool] = []
        channel.dataReceived(b"G")
        self.clock.advance(10)
        self.clock.advance(site_module.ABORT_AFTER)
        self.assertEqual(aborted, [True])

    def test_body_earns_time_at_min_rate(self) -> None:
        """
        Each C{min_body_rate} bytes of body push the deadline back one
        second: a body arriving at that rate finishes, a slower one not.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 15000\r\n\r\n")
        for _ in range(14):
            self.clock.advance(1)
            channel.dataReceived(b"x" * 1000)  # 1000 bytes: one more second each
        self.clock.advance(1)
        channel.dataReceived(b"x" * 1000)
        self.assertIn(b"got 15000", transport.value())

        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 15000\r\n\r\n")
        for _ in range(20):
            self.clock.advance(1)
            channel.dataReceived(b"x" * 100)
        self.assertIn(b"HTTP/1.1 408 ", transport.value())

    def test_each_request_its_own_deadline(self) -> None:
        """
        On a kept-alive connection the deadline starts at each request's
        first byte: waiting between requests does not count (the idle
        timeout covers that), and a finished request stops its deadline.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"ok", transport.value())
        self.clock.advance(30)  # idle, under the 60 s idle timeout
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(9)
        channel.dataReceived(b"\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.clock.advance(100)
        self.assertNotIn(b"408", transport.value())

    def test_no_deadline(self) -> None:
        site = _site(self.clock, request_timeout=None)
        channel = site.buildProtocol(REMOTE)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(50)
        self.assertEqual(transport.value(), b"")


class ConnectionCapTests(SynchronousTestCase):
    """
    Open connections per client address.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.counts: dict = {}
        self.site = _site(self.clock, max_connections_per_client=2, connections=self.counts)

    def open(self, address: Any) -> tuple:
        protocol = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_cap_then_release(self) -> None:
        """
        The third connection from one address gets 429 RATE_LIMITED and is
        closed; another address is not affected; closing one frees a place.
        """
        first, _ = self.open(REMOTE)
        self.open(REMOTE)
        _, refused = self.open(REMOTE)
        self.assertTrue(refused.value().startswith(b"HTTP/1.1 429 Too Many Requests\r\n"))
        self.assertIn(b'"RATE_LIMITED"', refused.value())
        self.assertIn(b"Retry-After: 1", refused.value())
        self.assertTrue(refused.disconnecting)
        _, other = self.open(IPv4Address("TCP", "10.0.0.2", 1))
        self.assertEqual(other.value(), b"")
        self.assertEqual(self.counts, {"10.0.0.1": 2, "10.0.0.2": 1})
        first.connectionLost(None)
        self.assertEqual(self.counts["10.0.0.1"], 1)
        _, again = self.open(REMOTE)
        self.assertEqual(again.value(), b"")

    def test_local_not_counted(self) -> None:
        """
        Loopback and Unix-socket clients are not counted (the node's host,
        or a local proxy carrying many clients).
        """
        for _ in range(5):
            _, transport = self.open(IPv4Address("TCP", "127.0.0.1", 1))
            self.assertEqual(transport.value(), b"")
            self.open(UNIXAddress(b"/s"))
        self.assertEqual(self.counts, {})

    def test_shared_between_sites(self) -> None:
        """
        The sites of one node (one per endpoint) share one count.
        """
        other = _site(self.clock, max_connections_per_client=2, connections=self.counts)
        self.open(REMOTE)
        protocol = other.buildProtocol(REMOTE)
        protocol.makeConnection(StringTransport())
        _, refused = self.open(REMOTE)
        self.assertIn(b" 429 ", refused.value())

    def test_is_local(self) -> None:
        self.assertTrue(is_local(IPv4Address("TCP", "127.1.2.3", 1)))
        self.assertTrue(is_local(UNIXAddress(b"/s")))
        self.assertFalse(is_local(REMOTE))
        self.assertFalse(is_local(None))


class _Raw(Protocol):
    """
    Writes what it is told, keeps what it gets, notes when the server
    closes.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred = Deferred()
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lost = True
        self.closed.callback(self.received)


class RealSocketTests(TestCase):
    """
    The same limits over TCP on 127.0.0.1, against a real listening site.
    """

    timeout = 60

    async def listen(self, **kwargs: Any) -> GuardedSite:
        site = _site(**kwargs)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        return site

    async def connect(self) -> _Raw:
        protocol = _Raw()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(lambda: protocol))
        self.addCleanup(lambda: None if protocol.lost else protocol.transport.abortConnection())
        return protocol

    async def test_slowloris_cut(self) -> None:
        """
        A client trickling header bytes faster than the idle timeout is
        answered 408 and closed by the server at the request deadline,
        long before it would have finished.
        """
        await self.listen(timeout=30, request_timeout=1.0)
        client = await self.connect()
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        for sent in range(1, 101):  # at most 100 x 0.1 s
            if client.lost:
                break
            client.transport.write(b"X-Slow-%d: y\r\n" % sent)
            await deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(client.lost, "the server never closed the connection")
        self.assertLess(sent, 100)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 408 "), client.received)

    async def test_connection_cap(self) -> None:
        """
        With loopback counted (as a remote address would be), the third
        connection is answered 429 and closed while two stay open.
        """
        self.patch(site_module, "is_local", lambda address: False)
        await self.listen(max_connections_per_client=2)
        first = await self.connect()
        second = await self.connect()
        third = await self.connect()
        received = await third.closed
        self.assertTrue(received.startswith(b"HTTP/1.1 429 "), received)
        self.assertFalse(first.lost or second.lost)
        first.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertIn(b"ok", await first.closed)

    async def test_gate_refuses_before_body(self) -> None:
        """
        A request the gate refuses is answered as soon as its headers are
        in, though its announced body never comes.
        """
        seen: List[Optional[bytes]] = []

        def gate(method: bytes, uri: bytes, headers: Any, peer: Any) -> Optional[bytes]:
            seen.append(uri)
            if headers.getRawHeaders(b"authorization"):
                return None
            return site_module.raw_response(401, "Unauthorized", "UNAUTHORIZED", "no key")

        await self.listen(gate=gate)
        client = await self.connect()
        client.transport.write(b"POST /api/v1/agents?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n")
        received = await client.closed
        self.assertTrue(received.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), received)
        self.assertEqual(seen, [b"/api/v1/agents?x=1"])
        allowed = await self.connect()
        allowed.transport.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\nabc"
        )
        self.assertIn(b"got 3", await allowed.closed)
