"""
Tests for L{caxton.swim.udp}: the SWIM datagram protocol.
"""

from __future__ import annotations

import errno
from typing import List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from caxton.swim.codec import MAX_PACKET_SIZE, decode_packet, encode_packet
from caxton.swim.keyring import DropReason, Envelope, Keyring
from caxton.swim.messages import Ack, Address, Ping
from caxton.swim.udp import RateLimiter, SwimDatagramProtocol, UDPStats

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
PEER = ("10.0.0.2", 7946)
PACKET = encode_packet([Ping(1, "node-r", "node-s", Address("10.0.0.2", 7946))])


class _RaisingTransport:
    """
    A datagram transport whose every write fails like a full socket
    buffer.
    """

    def __init__(self) -> None:
        self.attempts = 0

    def write(self, datagram: bytes, addr: Tuple[str, int]) -> None:
        self.attempts += 1
        raise OSError(errno.EWOULDBLOCK, "would block")


class _Harness:
    """
    A receiving protocol on a fake transport, a clock, and a sender's
    envelope with the same key.
    """

    def __init__(self, keys: Optional[List[bytes]] = None) -> None:
        self.clock = Clock()
        self.delivered: List[Tuple[Address, bytes]] = []
        keyring = Keyring(keys) if keys else None
        self.envelope = Envelope("node-r", "prod", keyring, self.clock, epoch_ms=1)
        self.protocol = SwimDatagramProtocol(
            self.envelope, lambda addr, packet: self.delivered.append((addr, packet))
        )
        self.transport = FakeDatagramTransport()
        self.protocol.makeConnection(self.transport)
        sender_ring = Keyring(keys) if keys else None
        self.sender = Envelope("node-s", "prod", sender_ring, self.clock, epoch_ms=1)

    def valid(self) -> bytes:
        return self.sender.seal(PACKET)


class ReceiveTests(SynchronousTestCase):
    """
    Incoming datagrams are opened and delivered, or dropped and counted
    without disturbing the next one.
    """

    def test_delivers(self) -> None:
        """
        A valid datagram's packet reaches the core with the sender's
        address, and is counted.
        """
        h = _Harness([KEY])
        datagram = h.valid()
        h.protocol.datagramReceived(datagram, PEER)
        self.assertEqual(h.delivered, [(Address("10.0.0.2", 7946), PACKET)])
        self.assertEqual(h.protocol.stats.packets_in, 1)
        self.assertEqual(h.protocol.stats.bytes_in, len(datagram))
        self.assertEqual(h.protocol.stats.delivered, 1)

    def test_ipv6_source(self) -> None:
        """
        An IPv6 source address (a four-tuple) becomes an L{Address} of its
        host and port.
        """
        h = _Harness([KEY])
        h.protocol.datagramReceived(h.valid(), ("fd00::2", 7946, 0, 0))
        self.assertEqual(h.delivered[0][0], Address("fd00::2", 7946))

    def _assert_dropped_then_works(self, h: _Harness, datagram: bytes, reason: DropReason) -> None:
        h.protocol.datagramReceived(datagram, PEER)
        self.assertEqual(h.delivered, [])
        self.assertEqual(h.protocol.stats.drops[reason], 1)
        h.protocol.datagramReceived(h.valid(), PEER)
        self.assertEqual(len(h.delivered), 1)

    def test_garbage(self) -> None:
        """
        Random bytes are dropped as MALFORMED (unknown envelope version) and
        a following valid datagram is delivered.
        """
        self._assert_dropped_then_works(
            _Harness([KEY]), b"\xde\xad\xbe\xef" * 10, DropReason.MALFORMED
        )

    def test_truncated(self) -> None:
        """
        A valid datagram cut short fails authentication, is dropped, and the
        port keeps working.
        """
        h = _Harness([KEY])
        self._assert_dropped_then_works(h, h.valid()[:-5], DropReason.UNAUTHENTICATED)

    def test_empty(self) -> None:
        """
        An empty datagram is dropped as MALFORMED.
        """
        self._assert_dropped_then_works(_Harness([KEY]), b"", DropReason.MALFORMED)

    def test_oversized(self) -> None:
        """
        A datagram over the budget is dropped as TOO_LARGE.
        """
        self._assert_dropped_then_works(
            _Harness([KEY]), b"\x02" * (MAX_PACKET_SIZE + 1), DropReason.TOO_LARGE
        )

    def test_wrong_key(self) -> None:
        """
        A datagram under another key is dropped as UNAUTHENTICATED.
        """
        h = _Harness([KEY])
        stranger = Envelope("node-x", "prod", Keyring([OTHER_KEY]), h.clock)
        self._assert_dropped_then_works(h, stranger.seal(PACKET), DropReason.UNAUTHENTICATED)

    def test_replayed(self) -> None:
        """
        A datagram received a second time is dropped as REPLAYED and counted,
        and fresh datagrams still pass.
        """
        h = _Harness([KEY])
        datagram = h.valid()
        h.protocol.datagramReceived(datagram, PEER)
        h.delivered.clear()
        self._assert_dropped_then_works(h, datagram, DropReason.REPLAYED)

    def test_undecodable_packet(self) -> None:
        """
        When the core cannot decode a packet (it raises L{CodecError}), the
        datagram counts as a MALFORMED drop, not a delivery, and nothing is
        raised.
        """
        h = _Harness([KEY])

        def deliver(addr: Address, packet: bytes) -> None:
            decode_packet(packet)

        h.protocol.deliver = deliver
        h.protocol.datagramReceived(h.sender.seal(b"\x01\x01\xff"), PEER)
        self.assertEqual(h.protocol.stats.drops[DropReason.MALFORMED], 1)
        self.assertEqual(h.protocol.stats.delivered, 0)

    def test_core_bug(self) -> None:
        """
        An unexpected exception from the core is counted and logged, not
        raised into the reactor, and the next datagram is delivered.
        """
        h = _Harness([KEY])
        calls: List[bytes] = []

        def deliver(addr: Address, packet: bytes) -> None:
            calls.append(packet)
            if len(calls) == 1:
                raise RuntimeError("core bug")

        h.protocol.deliver = deliver
        h.protocol.datagramReceived(h.valid(), PEER)
        h.protocol.datagramReceived(h.valid(), PEER)
        self.assertEqual(h.protocol.stats.delivery_errors, 1)
        self.assertEqual(h.protocol.stats.delivered, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bad_source_address(self) -> None:
        """
        A source address that is not a host and port is a MALFORMED drop.
        """
        h = _Harness([KEY])
        h.protocol.datagramReceived(h.valid(), None)
        self.assertEqual(h.protocol.stats.drops[DropReason.MALFORMED], 1)

    def test_flood_of_garbage(self) -> None:
        """
        A thousand garbage datagrams are all counted, logged only once per
        reason within the log interval, and the port then delivers a valid
        datagram; the next log line after the interval reports how many
        were suppressed.
        """
        h = _Harness([KEY])
        with capturedLogs() as events:
            for i in range(1000):
                h.protocol.datagramReceived(bytes((i % 256,)) * 50, PEER)
            h.protocol.datagramReceived(h.valid(), PEER)
        drops = h.protocol.stats.drops
        self.assertEqual(drops[DropReason.MALFORMED] + drops[DropReason.UNAUTHENTICATED], 1000)
        self.assertEqual(len(h.delivered), 1)
        lines = [e for e in events if "dropped a SWIM datagram" in e.get("log_format", "")]
        self.assertEqual(len(lines), 2)
        self.assertTrue(all(e["log_level"] == LogLevel.warn for e in lines))
        h.clock.advance(10)
        with capturedLogs() as events:
            h.protocol.datagramReceived(b"\x00", PEER)
        (line,) = events
        self.assertEqual(line["suppressed"], 999 - drops[DropReason.UNAUTHENTICATED])

    def test_logs_hold_no_key(self) -> None:
        """
        Drop logs name the peer and the reason but never the key.
        """
        h = _Harness([KEY])
        with capturedLogs() as events:
            h.protocol.datagramReceived(b"\x02" + b"x" * 40, PEER)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["peer"], "10.0.0.2:7946")
        self.assertEqual(events[0]["reason"], "unauthenticated")
        for value in events[0].values():
            self.assertNotIn(KEY, repr(value).encode())


class SendTests(SynchronousTestCase):
    """
    Outgoing packets are sealed and written; failures are counted, not
    raised.
    """

    def test_sends_sealed(self) -> None:
        """
        C{send_packet} writes one sealed datagram to the address, which the
        peer's envelope opens to the packet.
        """
        h = _Harness([KEY])
        h.protocol.send_packet(Address("10.0.0.3", 7000), PACKET)
        ((datagram, addr),) = h.transport.written
        self.assertEqual(addr, ("10.0.0.3", 7000))
        peer = Envelope("node-p", "prod", Keyring([KEY]), h.clock)
        self.assertEqual(peer.open(datagram), PACKET)
        self.assertEqual(h.protocol.stats.packets_out, 1)
        self.assertEqual(h.protocol.stats.bytes_out, len(datagram))

    def test_plaintext(self) -> None:
        """
        Without a keyring, datagrams carry the packet behind one version
        byte, and are delivered on the other side.
        """
        h = _Harness()
        h.protocol.send_packet(Address("10.0.0.3", 7000), PACKET)
        ((datagram, _),) = h.transport.written
        self.assertEqual(datagram[1:], PACKET)
        h.protocol.datagramReceived(datagram, PEER)
        self.assertEqual(h.delivered[0][1], PACKET)

    def test_oversized_refused(self) -> None:
        """
        A packet that would exceed the datagram budget once sealed is not
        sent; it is counted and logged as an error; a packet of exactly
        C{max_packet} bytes is sent.
        """
        h = _Harness([KEY])
        with capturedLogs() as events:
            h.protocol.send_packet(Address("10.0.0.3", 7000), b"p" * (h.protocol.max_packet + 1))
        self.assertEqual(h.transport.written, [])
        self.assertEqual(h.protocol.stats.send_refused, 1)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.error])
        h.protocol.send_packet(Address("10.0.0.3", 7000), b"p" * h.protocol.max_packet)
        self.assertEqual(len(h.transport.written[0][0]), MAX_PACKET_SIZE)

    def test_transport_errors(self) -> None:
        """
        A transport that fails to write (EWOULDBLOCK) is counted as a send
        error, logged once per interval, and not raised.
        """
        h = _Harness([KEY])
        transport = _RaisingTransport()
        h.protocol.transport = transport  # type: ignore[assignment]
        with capturedLogs() as events:
            for _ in range(5):
                h.protocol.send_packet(Address("10.0.0.3", 7000), PACKET)
        self.assertEqual(transport.attempts, 5)
        self.assertEqual(h.protocol.stats.send_errors, 5)
        self.assertEqual(h.protocol.stats.packets_out, 0)
        self.assertEqual(len(events), 1)

    def test_not_listening(self) -> None:
        """
        Sending before the port is listening counts a send error.
        """
        h = _Harness([KEY])
        protocol = SwimDatagramProtocol(h.envelope, lambda a, p: None)
        protocol.send_packet(Address("10.0.0.3", 7000), PACKET)
        self.assertEqual(protocol.stats.send_errors, 1)


class StatsTests(SynchronousTestCase):
    """
    L{UDPStats} and L{RateLimiter}.
    """

    def test_as_dict(self) -> None:
        """
        The counters flatten to names, with one drop counter per reason.
        """
        stats = UDPStats()
        stats.drops[DropReason.REPLAYED] += 2
        flat = stats.as_dict()
        self.assertEqual(flat["drops_replayed"], 2)
        self.assertEqual(flat["drops_too_large"], 0)
        self.assertEqual(flat["packets_in"], 0)

    def test_rate_limiter(self) -> None:
        """
        One event per key per interval gets through, reporting how many
        were held back; keys are independent.
        """
        clock = Clock()
        limiter = RateLimiter(10, clock.seconds)
        self.assertEqual(limiter.allow("a"), 0)
        self.assertIsNone(limiter.allow("a"))
        self.assertIsNone(limiter.allow("a"))
        self.assertEqual(limiter.allow("b"), 0)
        clock.advance(10)
        self.assertEqual(limiter.allow("a"), 2)
        self.assertIsNone(limiter.allow("a"))


class LoopbackTests(TestCase):
    """
    Two real UDP ports on 127.0.0.1 (the only test on the global reactor).
    """

    timeout = 10

    @defer.inlineCallbacks
    def test_round_trip_over_loopback(self) -> object:
        """
        A packet sent by one port is delivered by the other over real UDP on
        loopback, garbage sent first to the same port is dropped and
        counted, and both ports are closed afterwards.
        """
        from twisted.internet import reactor

        got: defer.Deferred[Tuple[Address, bytes]] = defer.Deferred()
        keyring = Keyring([KEY])
        receiver = SwimDatagramProtocol(
            Envelope("node-r", "prod", keyring, reactor),
            lambda addr, packet: got.callback((addr, packet)) if not got.called else None,
        )
        sender = SwimDatagramProtocol(
            Envelope("node-s", "prod", keyring, reactor), lambda addr, packet: None
        )
        receiving_port = reactor.listenUDP(0, receiver, interface="127.0.0.1")
        self.addCleanup(receiving_port.stopListening)
        sending_port = reactor.listenUDP(0, sender, interface="127.0.0.1")
        self.addCleanup(sending_port.stopListening)

        target = Address("127.0.0.1", receiving_port.getHost().port)
        sending_port.write(b"garbage", (target.host, target.port))
        packet = encode_packet([Ack(42)])
        sender.send_packet(target, packet)
        addr, delivered = yield got
        self.assertEqual(delivered, packet)
        self.assertEqual(addr, Address("127.0.0.1", sending_port.getHost().port))
        self.assertEqual(receiver.stats.drops[DropReason.MALFORMED], 1)
        self.assertEqual(sender.stats.packets_out, 1)
