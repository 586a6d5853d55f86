"""
Tests for L{caxton.cluster.stream}: the frame codec (hypothesis), and node
streams over real mutual TLS on loopback, with a cluster CA and a rogue CA
made inside the tests.
"""

from __future__ import annotations

import datetime
import os
import struct
from typing import Any, List, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from caxton.cluster import pki
from caxton.cluster.pki import NodeTLS, TLSConfigError
from caxton.cluster.stream import (
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    FrameTooLarge,
    FrameError,
    Hello,
    Kind,
    Message,
    NodeStreams,
    PeerConnectionLost,
    PeerQueueFull,
    PeerRefused,
    PeerUnreachable,
    RefuseReason,
    Refuse,
    RemoteError,
    Request,
    RequestTimeout,
    Response,
    encode_frame,
)
from caxton.swim.interfaces import StreamPing
from caxton.swim.messages import Address

ECHO = 16
SILENT = 17

# --- codec ------------------------------------------------------------------

_u32 = st.integers(0, 0xFFFFFFFF)
_u16 = st.integers(0, 0xFFFF)
_text = st.text(max_size=60)
_short = st.text(max_size=40).filter(lambda s: len(s.encode("utf-8")) <= 255)

frames = st.one_of(
    st.builds(Hello, _u16, _short, _short, st.integers(0, 2**64 - 1)),
    st.builds(Refuse, st.integers(0, 255), _text),
    st.builds(Request, _u32, _u16, st.binary(max_size=200)),
    st.builds(Response, _u32, st.binary(max_size=200)),
    st.builds(Error, _u32, _text),
    st.builds(Message, _u16, st.binary(max_size=200)),
)


def _chunks(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


class CodecTests(SynchronousTestCase):
    """
    The frame codec round-trips every frame, however the bytes are split,
    and turns anything else into L{FrameError} and nothing else.
    """

    @given(st.lists(frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=6))
    @settings(max_examples=300)
    def test_round_trip(self, sent: List[Any], cuts: List[int]) -> None:
        """
        Frames encoded back to back and fed in arbitrary pieces decode to
        the same frames, in order.
        """
        data = b"".join(encode_frame(f) for f in sent)
        decoder = FrameDecoder()
        got: List[Any] = []
        for piece in _chunks(data, cuts):
            got.extend(decoder.feed(piece))
        self.assertEqual(got, sent)
        self.assertEqual(decoder.buffered, 0)

    @given(frames, st.data())
    def test_truncation(self, frame: Any, data: st.DataObject) -> None:
        """
        Any prefix of a frame decodes to nothing (it waits for the rest);
        the body of a frame cut short inside its declared length raises
        only L{FrameError}.
        """
        encoded = encode_frame(frame)
        cut = data.draw(st.integers(0, len(encoded) - 1))
        self.assertEqual(FrameDecoder().feed(encoded[:cut]), [])
        # Now lie about the length: the body is shorter than its header says
        # the typed fields need.
        body = encoded[5:cut] if cut > 5 else b""
        lying = struct.pack(">IB", len(body) + 1, encoded[4]) + body
        try:
            FrameDecoder().feed(lying)
        except FrameError:
            pass

    @given(st.binary(max_size=400), st.integers(1, 1000))
    @settings(max_examples=500)
    def test_garbage(self, garbage: bytes, limit: int) -> None:
        """
        Random bytes give frames or L{FrameError}, never another exception,
        and a decoder that failed keeps failing.
        """
        decoder = FrameDecoder(limit)
        try:
            decoder.feed(garbage)
        except FrameError:
            self.assertRaises(FrameError, decoder.feed, b"")

    def test_oversized(self) -> None:
        """
        A header announcing more than the limit is refused at once, before
        the body arrives.
        """
        decoder = FrameDecoder(1024)
        self.assertRaises(FrameError, decoder.feed, struct.pack(">IB", 1025, 3))
        self.assertEqual(decoder.buffered, 0)

    def test_empty_and_unknown(self) -> None:
        """
        A zero length and an unknown frame type are errors.
        """
        self.assertRaises(FrameError, FrameDecoder().feed, struct.pack(">I", 0))
        self.assertRaises(FrameError, FrameDecoder().feed, struct.pack(">IB", 1, 99))

    def test_bad_utf8(self) -> None:
        """
        Text fields must be UTF-8.
        """
        body = struct.pack(">I", 1) + b"\xff\xfe"
        self.assertRaises(
            FrameError, FrameDecoder().feed, struct.pack(">IB", len(body) + 1, 5) + body
        )


# --- helpers for the TLS tests -----------------------------------------------


def _write_rogue(directory: str, node_id: str, trust: List[bytes]) -> None:
    """
    A TLS directory for C{node_id} whose certificate comes from a rogue CA
    made here, trusting the CA certificates in C{trust} as well as the
    rogue one (so that only the other side's check can fail).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(pki.node_uri(node_id))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    os.makedirs(directory)
    with open(os.path.join(directory, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM) + b"".join(trust))
    with open(os.path.join(directory, "node.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(directory, "node.key"), "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@implementer(IHandshakeListener)
class _RawPeer(Protocol):
    """
    A hand-driven stream client: sends C{greeting} once TLS is up and
    records what comes back, to play a misbehaving node.
    """

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.decoder = FrameDecoder()
        self.frames: List[Any] = []
        self.lost: Deferred = Deferred()

    def handshakeCompleted(self) -> None:
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        try:
            self.frames.extend(self.decoder.feed(data))
        except FrameError:
            pass

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class StreamTestCase(TestCase):
    """
    Real TLS over 127.0.0.1, port 0; every node is stopped in a cleanup.
    """

    timeout = 30

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.ca = os.path.join(self.base, "ca")
        pki.init_ca(self.ca, "test")

    def tls_dir(self, node_id: str, name: Optional[str] = None) -> str:
        directory = os.path.join(self.base, name or node_id)
        pki.issue(self.ca, node_id, directory)
        return directory

    def ca_pem(self) -> bytes:
        with open(os.path.join(self.ca, "ca.pem"), "rb") as f:
            return f.read()

    async def node(
        self,
        node_id: str,
        cluster: str = "test",
        tls_dir: Optional[str] = None,
        **kwargs: Any,
    ) -> NodeStreams:
        from twisted.internet import reactor

        streams = NodeStreams(
            reactor,
            node_id,
            cluster,
            NodeTLS(tls_dir or self.tls_dir(node_id)),
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            **kwargs,
        )
        streams.startService()
        await streams.open()
        self.addCleanup(streams.stopService)
        streams.register_handler(ECHO, lambda peer, payload: peer.encode() + b":" + payload)
        return streams

    async def raw(self, tls_dir: str, addr: Address, greeting: bytes) -> _RawPeer:
        from twisted.internet import reactor

        peer = _RawPeer(greeting)
        endpoint = wrapClientTLS(
            NodeTLS(tls_dir), TCP4ClientEndpoint(reactor, addr.host, addr.port)
        )
        await endpoint.connect(Factory.forProtocol(lambda: peer))
        self.addCleanup(lambda: peer.lost if peer.lost.called else _abort(peer))
        return peer

    async def settle(self, check: Any, what: str, seconds: float = 5.0) -> None:
        """
        Wait until C{check()} is true (connections close asynchronously).
        """
        from twisted.internet import reactor

        for _ in range(int(seconds / 0.02)):
            if check():
                return
            await deferLater(reactor, 0.02, lambda: None)
        self.fail(f"never settled: {what}")


def _abort(peer: _RawPeer) -> Deferred:
    peer.transport.abortConnection()
    return peer.lost


class RoundTripTests(StreamTestCase):
    """
    Requests and answers between two nodes.
    """

    async def test_request_response(self) -> None:
        """
        A request reaches the registered handler, which sees the caller's
        node id, and its answer comes back; the connection is reused.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        self.assertEqual(await a.request("b", b.address, ECHO, b"hi", 5), b"a:hi")
        self.assertEqual(await a.request("b", b.address, ECHO, b"again", 5), b"a:again")
        self.assertEqual(a.connected_peers(), ["b"])
        self.assertEqual(a.stats()["connections_opened"], 1)
        self.assertEqual(b.stats()["connections_accepted"], 1)

    async def test_seed_dial(self) -> None:
        """
        Dialing an address without knowing its node accepts any cluster
        node and learns its id.
        """
        a = await self.node("a")
        b = await self.node("b_1")
        assert b.address is not None
        self.assertEqual(await a.request(None, b.address, ECHO, b"x", 5), b"a:x")
        self.assertEqual(a.connected_peers(), ["b_1"])

    async def test_handler_errors(self) -> None:
        """
        A handler that raises, fails asynchronously, or is missing makes
        the requester's Deferred fail with L{RemoteError} and the message.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None

        def broken(peer: str, payload: bytes) -> bytes:
            raise ValueError("no such thing")

        async def later(peer: str, payload: bytes) -> bytes:
            raise KeyError("gone")

        b.register_handler(20, broken)
        b.register_handler(21, later)
        e = await self.assertFailure(a.request("b", b.address, 20, b"", 5), RemoteError)
        self.assertEqual(str(e), "no such thing")
        e = await self.assertFailure(a.request("b", b.address, 21, b"", 5), RemoteError)
        self.assertIn("gone", str(e))
        e = await self.assertFailure(a.request("b", b.address, 99, b"", 5), RemoteError)
        self.assertIn("no handler", str(e))

        def wordy(peer: str, payload: bytes) -> bytes:
            raise ValueError("x" * 10_000)

        b.register_handler(22, wordy)
        e = await self.assertFailure(a.request("b", b.address, 22, b"", 5), RemoteError)
        # A peer's words are cut before they reach logs and exceptions.
        self.assertLessEqual(len(str(e)), 503)
        self.flushLoggedErrors(ValueError, KeyError)
        # The connection survived all that.
        self.assertEqual(await a.request("b", b.address, ECHO, b"ok", 5), b"a:ok")

    async def test_async_handler(self) -> None:
        """
        A handler may answer later with a Deferred or a coroutine.
        """
        from twisted.internet import reactor

        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        b.register_handler(
            20, lambda peer, p: deferLater(reactor, 0.01, lambda: p.upper())
        )

        async def coro(peer: str, p: bytes) -> bytes:
            return p[::-1]

        b.register_handler(21, coro)
        self.assertEqual(await a.request("b", b.address, 20, b"abc", 5), b"ABC")
        self.assertEqual(await a.request("b", b.address, 21, b"abc", 5), b"cba")

    async def test_one_way(self) -> None:
        """
        A one-way message reaches its handler with the sender's id.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        got: Deferred = Deferred()
        b.register_message_handler(30, lambda peer, p: got.callback((peer, p)))
        await a.send("b", b.address, 30, b"note")
        self.assertEqual(await got, ("a", b"note"))

    async def test_large_payload(self) -> None:
        """
        A payload of several megabytes (a push-pull) goes both ways.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        big = os.urandom(3 * 1024 * 1024)
        b.register_handler(Kind.PUSH_PULL, lambda peer, p: p[::-1])
        self.assertEqual(await a.request("b", b.address, Kind.PUSH_PULL, big, 20), big[::-1])


class IdentityTests(StreamTestCase):
    """
    Who may connect, and as whom.
    """

    async def test_rogue_client(self) -> None:
        """
        A node whose certificate comes from another CA cannot get a
        request through, even if it trusts our CA and names a real node;
        the listener keeps serving.
        """
        a = await self.node("a")
        assert a.address is not None
        called: List[str] = []
        a.register_handler(40, lambda peer, p: called.append(peer) or b"")
        rogue_dir = os.path.join(self.base, "rogue")
        _write_rogue(rogue_dir, "b", [self.ca_pem()])
        rogue = await self.node("b", tls_dir=rogue_dir)
        f = await self.assertFailure(
            rogue.request("a", a.address, 40, b"", 5), PeerRefused, PeerUnreachable
        )
        self.assertEqual(called, [])
        if isinstance(f, PeerRefused):
            self.assertIn(f.reason, (RefuseReason.TLS,))
        await self.settle(lambda: a.stats().get("refused_tls_tls", 0) >= 1, "refusal counted")
        c = await self.node("c")
        self.assertEqual(await c.request("a", a.address, ECHO, b"x", 5), b"c:x")

    async def test_rogue_server(self) -> None:
        """
        A listener whose certificate comes from another CA is refused by
        a dialing node, even though it names the expected node.
        """
        a = await self.node("a")
        rogue_dir = os.path.join(self.base, "rogue")
        _write_rogue(rogue_dir, "b", [self.ca_pem()])
        rogue = await self.node("b", tls_dir=rogue_dir)
        assert rogue.address is not None
        called: List[str] = []
        rogue.register_handler(40, lambda peer, p: called.append(peer) or b"")
        f = await self.assertFailure(a.request("b", rogue.address, 40, b"", 5), PeerRefused)
        self.assertEqual(f.reason, RefuseReason.TLS)
        self.assertEqual(called, [])
        self.assertFalse(await a.ping("b", rogue.address, 5))

    async def test_claims_another_node(self) -> None:
        """
        A peer whose certificate names node B but whose HELLO claims node
        A is refused with C{IDENTITY}, and the connection closes.
        """
        a = await self.node("a")
        assert a.address is not None
        b_dir = self.tls_dir("b")
        hello = encode_frame(Hello(PROTOCOL_VERSION, "c", "test", 1))
        peer = await self.raw(b_dir, a.address, hello)
        await peer.lost
        self.assertEqual([type(f) for f in peer.frames], [Refuse])
        self.assertEqual(peer.frames[0].reason, RefuseReason.IDENTITY)
        self.assertEqual(a.stats()["refused_local_identity"], 1)
        self.assertEqual(a.connected_peers(), [])

    async def test_listener_claims_another_node(self) -> None:
        """
        A dialer refuses a listener whose HELLO claims a node other than
        its certificate names.  (Played by a node whose id and certificate
        disagree, which NodeStreams itself would not start as.)
        """
        a = await self.node("a")
        liar = await self.node("b")
        liar.node_id = "c"
        assert liar.address is not None
        f = await self.assertFailure(a.request(None, liar.address, ECHO, b"", 5), PeerRefused)
        self.assertEqual(f.reason, RefuseReason.IDENTITY)

    async def test_unexpected_node(self) -> None:
        """
        Dialing an address expecting node A but reaching node B is refused.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        f = await self.assertFailure(a.request("c", b.address, ECHO, b"", 5), PeerRefused)
        self.assertEqual(f.reason, RefuseReason.UNEXPECTED_NODE)
        self.assertIn("expected node c", str(f))
        self.assertEqual(a.connected_peers(), [])

    async def test_cluster_mismatch(self) -> None:
        """
        Nodes of another cluster (same CA) are refused in both directions.
        """
        a = await self.node("a")
        c = await self.node("c", cluster="other")
        assert a.address is not None and c.address is not None
        f = await self.assertFailure(a.request("c", c.address, ECHO, b"", 5), PeerRefused)
        self.assertEqual(f.reason, RefuseReason.CLUSTER)
        f = await self.assertFailure(c.request("a", a.address, ECHO, b"", 5), PeerRefused)
        self.assertEqual(f.reason, RefuseReason.CLUSTER)

    async def test_self(self) -> None:
        """
        A seed address that turns out to be this node is refused.
        """
        a = await self.node("a")
        assert a.address is not None
        f = await self.assertFailure(a.request(None, a.address, ECHO, b"", 5), PeerRefused)
        self.assertEqual(f.reason, RefuseReason.SELF)

    async def test_wrong_certificate_for_node(self) -> None:
        """
        NodeStreams will not start with a certificate for another node.
        """
        from twisted.internet import reactor

        streams = NodeStreams(
            reactor,
            "a",
            "test",
            NodeTLS(self.tls_dir("b")),
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        )
        e = await self.assertFailure(Deferred.fromCoroutine(streams.open()), TLSConfigError)
        self.assertIn("is for node b, not a", str(e))


class HostileTests(StreamTestCase):
    """
    Bad frames close the connection that sent them, and nothing else.
    """

    async def _still_serving(self, a: NodeStreams) -> None:
        assert a.address is not None
        c = await self.node("c")
        self.assertEqual(await c.request("a", a.address, ECHO, b"x", 5), b"c:x")

    async def test_oversized_frame(self) -> None:
        """
        A frame header announcing more than the limit closes the
        connection at once, with a C{PROTOCOL} refusal; others still work.
        """
        a = await self.node("a", max_frame_size=64 * 1024)
        assert a.address is not None
        hello = encode_frame(Hello(PROTOCOL_VERSION, "x", "test", 1))
        peer = await self.raw(self.tls_dir("x"), a.address, hello)
        await self.settle(lambda: a.connected_peers() == ["x"], "x connected")
        peer.transport.write(struct.pack(">IB", 10 * 1024 * 1024, 3))
        await peer.lost
        self.assertEqual(peer.frames[-1].reason, RefuseReason.PROTOCOL)
        self.assertEqual(a.stats()["protocol_errors"], 1)
        await self._still_serving(a)

    async def test_malformed_frames(self) -> None:
        """
        An unknown frame type, a truncated request, or a request before
        HELLO each close their connection; the node keeps serving.
        """
        a = await self.node("a")
        assert a.address is not None
        hello = encode_frame(Hello(PROTOCOL_VERSION, "x", "test", 1))
        x_dir = self.tls_dir("x")
        for greeting in (
            hello + struct.pack(">IB", 3, 77) + b"zz",
            hello + struct.pack(">IB", 3, 3) + b"zz",
            encode_frame(Request(1, ECHO, b"early")),
            b"\x00\x00\x00\x00",
        ):
            peer = await self.raw(x_dir, a.address, greeting)
            await peer.lost
        self.assertEqual(a.stats()["protocol_errors"], 4)
        await self.settle(lambda: a.connection_count() == 0, "all closed")
        await self._still_serving(a)

    async def test_silent_connection(self) -> None:
        """
        A connection that never completes its handshake is closed after
        the handshake timeout.
        """
        from twisted.internet import reactor

        a = await self.node("a", handshake_timeout=0.3)
        assert a.address is not None
        lost: Deferred = Deferred()

        class Silent(Protocol):
            def connectionLost(self, reason: Any = None) -> None:
                lost.callback(None)

        await TCP4ClientEndpoint(reactor, "127.0.0.1", a.address.port).connect(
            Factory.forProtocol(Silent)
        )
        await lost
        self.assertEqual(a.stats()["handshake_timeouts"], 1)
        await self._still_serving(a)

    async def test_big_frame_before_hello(self) -> None:
        """
        Before HELLO, a frame larger than a HELLO needs is refused, however
        large the limit for identified peers.
        """
        a = await self.node("a")
        assert a.address is not None
        peer = await self.raw(self.tls_dir("x"), a.address, struct.pack(">IB", 100_000, 1))
        await peer.lost
        self.assertEqual(peer.frames[-1].reason, RefuseReason.PROTOCOL)

    async def test_garbage_instead_of_tls(self) -> None:
        """
        Plain bytes where a TLS handshake should be close the connection.
        """
        from twisted.internet import reactor

        a = await self.node("a")
        assert a.address is not None
        lost: Deferred = Deferred()

        class Plain(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"GET / HTTP/1.0\r\n\r\n" * 10)

            def connectionLost(self, reason: Any = None) -> None:
                lost.callback(None)

        await TCP4ClientEndpoint(reactor, "127.0.0.1", a.address.port).connect(
            Factory.forProtocol(Plain)
        )
        await lost
        await self._still_serving(a)


class ConnectionTests(StreamTestCase):
    """
    One connection per pair, timeouts, losses, idling, back-off.
    """

    async def test_simultaneous_dial(self) -> None:
        """
        When two nodes dial each other at the same moment, both requests
        succeed and one connection remains, the same on both ends.
        """
        for first, second in (("a", "b"), ("d", "c")):
            x = await self.node(first)
            y = await self.node(second)
            assert x.address is not None and y.address is not None
            results = await DeferredList(
                [
                    x.request(second, y.address, ECHO, b"1", 5),
                    y.request(first, x.address, ECHO, b"2", 5),
                ],
                fireOnOneErrback=True,
                consumeErrors=True,
            )
            self.assertEqual(
                [r for _, r in results], [f"{first}:1".encode(), f"{second}:2".encode()]
            )
            await self.settle(
                lambda: x.connection_count() == 1 and y.connection_count() == 1,
                "one connection each",
            )
            xc, yc = x._peers[second], y._peers[first]
            self.assertEqual(xc.transport.getHost().port, yc.transport.getPeer().port)
            # And it keeps working both ways.
            self.assertEqual(
                await x.request(second, y.address, ECHO, b"3", 5), f"{first}:3".encode()
            )
            self.assertEqual(
                await y.request(first, x.address, ECHO, b"4", 5), f"{second}:4".encode()
            )
            self.assertEqual((x.connection_count(), y.connection_count()), (1, 1))

    async def test_seed_dial_with_existing_connection(self) -> None:
        """
        A node that dials by address a peer already connected to it (the
        peer dialed first) ends with one connection, the same at both
        ends, and requests keep working both ways, whichever id sorts
        first.
        """
        for dialer, other in (("a", "b"), ("d", "c")):
            x = await self.node(dialer, handshake_timeout=0.3)
            y = await self.node(other, handshake_timeout=0.3)
            assert x.address is not None and y.address is not None
            await y.request(dialer, x.address, ECHO, b"1", 5)
            self.assertEqual(
                await x.request(None, y.address, ECHO, b"2", 5), f"{dialer}:2".encode()
            )
            self.assertEqual(
                await y.request(dialer, x.address, ECHO, b"3", 5), f"{other}:3".encode()
            )
            await self.settle(
                lambda: x.connection_count() == 1 and y.connection_count() == 1,
                "one connection each",
            )
            xc, yc = x._peers[other], y._peers[dialer]
            self.assertEqual(xc.transport.getHost().port, yc.transport.getPeer().port)
            self.assertEqual(
                await x.request(other, y.address, ECHO, b"4", 5), f"{dialer}:4".encode()
            )

    async def test_many_concurrent_requests_one_dial(self) -> None:
        """
        Requests made while the first dial is in progress share it.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        results = await DeferredList(
            [a.request("b", b.address, ECHO, str(i).encode(), 5) for i in range(20)],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
        self.assertEqual([r for _, r in results], [f"a:{i}".encode() for i in range(20)])
        self.assertEqual(a.stats()["dials"], 1)

    async def test_back_pressure(self) -> None:
        """
        While the transport is full, frames wait in a bounded backlog:
        past C{max_queued_bytes} requests fail at once with
        L{PeerQueueFull}; the waiting ones go out when it drains.
        """
        a = await self.node("a", max_queued_bytes=100_000)
        b = await self.node("b")
        assert b.address is not None
        await a.request("b", b.address, ECHO, b"", 5)
        conn = a._peers["b"]
        conn.pauseProducing()
        waiting = [a.request("b", b.address, ECHO, b"x" * 30_000, 5) for _ in range(3)]
        await self.assertFailure(
            a.request("b", b.address, ECHO, b"x" * 30_000, 5), PeerQueueFull
        )
        conn.resumeProducing()
        results = await DeferredList(waiting, fireOnOneErrback=True, consumeErrors=True)
        self.assertEqual([len(r) for _, r in results], [30_002] * 3)
        self.assertEqual(a.stats()["queue_full"], 1)

    async def test_too_large(self) -> None:
        """
        A request larger than the frame limit fails locally with
        L{FrameTooLarge}; an answer too large becomes a L{RemoteError}.
        """
        a = await self.node("a", max_frame_size=1024)
        b = await self.node("b", max_frame_size=1024)
        assert b.address is not None
        await self.assertFailure(a.request("b", b.address, ECHO, b"x" * 2000, 5), FrameTooLarge)
        b.register_handler(20, lambda peer, p: b"y" * 2000)
        e = await self.assertFailure(a.request("b", b.address, 20, b"", 5), RemoteError)
        self.assertIn("too large", str(e))

    async def test_request_timeout(self) -> None:
        """
        A request nobody answers fails with L{RequestTimeout}; a late
        answer is dropped and the connection stays usable.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        answer: Deferred = Deferred()
        b.register_handler(SILENT, lambda peer, p: answer)
        await self.assertFailure(a.request("b", b.address, SILENT, b"", 0.2), RequestTimeout)
        answer.callback(b"late")
        self.assertEqual(await a.request("b", b.address, ECHO, b"x", 5), b"a:x")
        self.assertEqual(a.stats()["requests_timed_out"], 1)

    async def test_connection_lost(self) -> None:
        """
        A request in flight when the peer goes away fails with
        L{PeerConnectionLost}.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        arrived: List[str] = []
        b.register_handler(SILENT, lambda peer, p: arrived.append(peer) or Deferred())
        d = a.request("b", b.address, SILENT, b"", 10)
        await self.settle(lambda: arrived == ["a"], "request arrived")
        await b.stopService()
        f = await self.assertFailure(d, PeerConnectionLost)
        self.assertIn("b", str(f))

    async def test_unreachable_and_backoff(self) -> None:
        """
        A closed port fails with L{PeerUnreachable}; a second request right
        after fails at once without dialing (back-off).
        """
        a = await self.node("a", backoff_initial=5.0)
        b = await self.node("b")
        assert b.address is not None
        dead = b.address
        await b.stopService()
        await self.assertFailure(a.request("b", dead, ECHO, b"", 5), PeerUnreachable)
        dials = a.stats()["dials"]
        f = await self.assertFailure(a.request("b", dead, ECHO, b"", 5), PeerUnreachable)
        self.assertIn("next attempt in", str(f))
        self.assertEqual(a.stats()["dials"], dials)

    async def test_idle_close(self) -> None:
        """
        An unused connection closes after the idle timeout, and the next
        request dials again.
        """
        a = await self.node("a", idle_timeout=0.2)
        b = await self.node("b")
        assert b.address is not None
        await a.request("b", b.address, ECHO, b"x", 5)
        await self.settle(lambda: a.connection_count() == 0, "idle close", 3)
        await self.settle(lambda: b.connection_count() == 0, "idle close at b", 3)
        self.assertEqual(await a.request("b", b.address, ECHO, b"y", 5), b"a:y")
        self.assertEqual(a.stats()["dials"], 2)

    async def test_cert_reload(self) -> None:
        """
        A certificate re-issued into a running node's TLS directory is used
        for its next connection, without a restart.
        """
        a = await self.node("a")
        b_dir = self.tls_dir("b")
        b = await self.node("b", tls_dir=b_dir)
        assert b.address is not None
        await a.request("b", b.address, ECHO, b"x", 5)
        old = a.peer_certificate("b")
        assert old is not None
        new = pki.issue(self.ca, "b", b_dir)
        await a.disconnect("b")
        self.assertEqual(await a.request("b", b.address, ECHO, b"y", 5), b"a:y")
        current = a.peer_certificate("b")
        assert current is not None
        self.assertEqual(current.serial_number, new.serial_number)
        self.assertNotEqual(current.serial_number, old.serial_number)

    async def test_ping(self) -> None:
        """
        ping is True only when the node at the address proves to be the
        one named, and never fails.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        self.assertTrue(await a.ping("b", b.address, 5))
        self.assertFalse(await a.ping("c", b.address, 5))
        dead = b.address
        await b.stopService()
        self.assertFalse(await a.ping("b", dead, 5))
        self.assertFalse(await a.ping("b", Address("127.0.0.1", 1), 5))

    async def test_probe_tells_refused_from_silent(self) -> None:
        """
        probe says ANSWERED for the node itself; REFUSED where nothing
        listens (a stopped node's address, also while backing off from
        that failure); SILENT for another node at the address or a
        listener that never finishes the TLS handshake.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        self.assertIs(await a.probe("b", b.address, 5), StreamPing.ANSWERED)
        gone = b.address
        await b.stopService()
        self.assertIs(await a.probe("b", gone, 5), StreamPing.REFUSED)
        self.assertIs(await a.probe("b", gone, 5), StreamPing.REFUSED)
        d = await self.node("d")
        assert d.address is not None
        self.assertIs(await a.probe("c", d.address, 5), StreamPing.SILENT)
        from twisted.internet import reactor

        mute = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Protocol)
        )
        self.addCleanup(mute.stopListening)
        quiet = Address("127.0.0.1", mute.getHost().port)
        self.assertIs(await a.probe("b", quiet, 0.5), StreamPing.SILENT)

    async def test_probe_is_about_the_address(self) -> None:
        """
        A probe of a node at an address where nothing listens is REFUSED
        even while that node is connected from elsewhere (it restarted at a
        new address): the old address is what is asked about.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert a.address is not None
        await b.request("a", a.address, ECHO, b"x", 5)
        self.assertEqual(a.connected_peers(), ["b"])
        from twisted.internet import reactor

        gone = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        old = Address("127.0.0.1", gone.getHost().port)
        await gone.stopListening()
        self.assertIs(await a.probe("b", old, 5), StreamPing.REFUSED)

    async def test_strangers_are_limited(self) -> None:
        """
        Connections that never finish the TLS handshake are held only up to
        a limit per source address; past it they are closed at once.  Once
        the strangers go, the node serves its peers (on this one host they
        share the strangers' address, so not before).
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint

        from caxton.cluster.stream import MAX_UNIDENTIFIED_PER_HOST

        a = await self.node("a")
        b = await self.node("b")
        assert a.address is not None
        closed: List[int] = []

        class Silent(Protocol):
            def connectionLost(self, reason: Any = None) -> None:
                closed.append(1)

        strangers = []
        for _ in range(MAX_UNIDENTIFIED_PER_HOST + 8):
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", a.address.port)
            strangers.append(await endpoint.connect(Factory.forProtocol(Silent)))
        await self.settle(lambda: len(closed) >= 8, "connections over the limit closed")
        self.assertGreaterEqual(a.counters["refused_accept_limit"], 8)
        for stranger in strangers:
            stranger.transport.abortConnection()
        await self.settle(lambda: len(closed) == len(strangers), "strangers gone")
        await self.settle(lambda: a.connection_count() == 0, "a let them go")
        self.assertEqual(await b.request("a", a.address, ECHO, b"y", 5), b"b:y")

    async def test_peer_lost_without_a_word(self) -> None:
        """
        A connection that drops without a shutdown frame (the peer's
        process died) is reported through on_peer_lost; a peer that stops
        gracefully, or a close of our own, is not.
        """
        a = await self.node("a")
        lost: List[str] = []
        a.on_peer_lost = lost.append
        b = await self.node("b")
        c = await self.node("c")
        assert b.address is not None and c.address is not None
        await a.request("b", b.address, ECHO, b"x", 5)
        await a.request("c", c.address, ECHO, b"x", 5)
        # b dies: its side of the TCP connection is torn down abruptly.
        for conn in list(b._connections):
            conn.transport.abortConnection()
        await self.settle(lambda: lost == ["b"], "a told b was lost")
        # c shuts down properly and a closes nothing of its own: no report.
        await c.stopService()
        await self.settle(lambda: a.connection_count() == 0, "a saw c close")
        self.assertEqual(lost, ["b"])

    async def test_stop_fails_waiting_requests(self) -> None:
        """
        Stopping fails what is in flight and refuses new requests.
        """
        a = await self.node("a")
        b = await self.node("b")
        assert b.address is not None
        arrived: List[str] = []
        b.register_handler(SILENT, lambda peer, p: arrived.append(peer) or Deferred())
        d = a.request("b", b.address, SILENT, b"", 10)
        await self.settle(lambda: arrived == ["a"], "request arrived")
        await a.stopService()
        await self.assertFailure(d, PeerConnectionLost)
        self.assertFalse(await a.ping("b", b.address, 1))
        await self.settle(lambda: b.connection_count() == 0, "b saw the close")


class ConstructionTests(SynchronousTestCase):
    """
    Making a L{NodeStreams} does no I/O and checks its identity.
    """

    def test_no_io(self) -> None:
        """
        The constructor touches neither the reactor nor the TLS directory;
        the result is a named service.
        """
        from twisted.application.service import IService
        from twisted.internet.testing import MemoryReactorClock
        from zope.interface.verify import verifyObject

        reactor = MemoryReactorClock()
        streams = NodeStreams(
            reactor,
            "a",
            "test",
            NodeTLS(self.mktemp()),
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        )
        verifyObject(IService, streams)
        self.assertEqual(streams.name, "streams")
        self.assertEqual((reactor.tcpServers, reactor.tcpClients), ([], []))
        self.assertIsNone(streams.address)
        self.failureResultOf(streams.request("b", Address("127.0.0.1", 1), ECHO, b"", 1))
        self.assertFalse(self.successResultOf(streams.ping("b", Address("127.0.0.1", 1), 1)))

    def test_bad_identity(self) -> None:
        """
        An invalid node id or an empty cluster name is refused at once.
        """
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        endpoint = TCP4ServerEndpoint(reactor, 0)
        tls = NodeTLS(self.mktemp())
        self.assertRaises(ValueError, NodeStreams, reactor, "bad id", "test", tls, endpoint)
        self.assertRaises(ValueError, NodeStreams, reactor, "a", "", tls, endpoint)
