"""
Tests for L{caxton.api.site}: request bodies over the cap are refused
while they arrive, over a real loopback socket.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from caxton.api.site import make_site


class _Echo(Resource):
    isLeaf = True

    def render_POST(self, request):
        return b"got %d" % (len(request.content.read()),)


class _Raw(Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.closed: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(self.received)


class CapTests(TestCase):
    """
    A 1 KiB cap, over TCP on 127.0.0.1.
    """

    async def setUp(self) -> None:
        site = make_site(_Echo(), max_body=1024, timeout=5)
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(self.port.stopListening)

    async def exchange(self, payload: bytes) -> bytes:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        protocol = _Raw(payload)
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
        timer = reactor.callLater(10, protocol.transport.abortConnection)
        received = await protocol.closed
        if timer.active():
            timer.cancel()
        return received

    async def test_declared_length_refused_before_body(self) -> None:
        """
        A Content-Length over the cap gets 413 PAYLOAD_TOO_LARGE and the
        connection closes, though not one byte of the body was sent.
        """
        received = await self.exchange(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 413 "), received)
        self.assertIn(b'"PAYLOAD_TOO_LARGE"', received)

    async def test_chunked_refused_past_cap(self) -> None:
        """
        A chunked body is refused as soon as it passes the cap.
        """
        chunk = b"800\r\n" + b"x" * 0x800 + b"\r\n"
        received = await self.exchange(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 413 "), received)

    async def test_small_body_served(self) -> None:
        """
        A body under the cap reaches the resource.
        """
        received = await self.exchange(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 200 "), received)
        self.assertTrue(received.endswith(b"got 5"))
