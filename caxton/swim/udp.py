# -*- test-case-name: tests.test_swim_udp -*-
"""
SWIM over UDP: the Twisted adapter between the network and the core.

L{SwimDatagramProtocol} opens each incoming datagram with the node's
L{Envelope} and hands the packet to the core (its C{packet_received}),
and seals and sends the core's packets (L{send_packet}, the datagram half
of L{caxton.swim.interfaces.ISwimTransport}; the node stream provides the
rest).

Nothing a peer sends can break it: oversized, malformed, unauthenticated
and replayed datagrams, and packets the core cannot decode, are dropped and
counted in L{UDPStats} by L{DropReason}, and the next datagram is handled
as if nothing happened.  Drops are logged at most once per reason every
C{log_interval} seconds, with the number suppressed in between, so a flood
of garbage does not become a flood of log lines.  Sending is best effort
like UDP itself: transport errors are counted and logged the same way,
never raised into the core.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import attr
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel

from caxton.swim.codec import CodecError
from caxton.swim.keyring import DropReason, Dropped, Envelope, EnvelopeError
from caxton.swim.messages import Address

log = Logger()

# Drops that usually mean misconfiguration or an attack are warnings;
# replays happen on their own when the network duplicates datagrams.
_DROP_LEVELS = {
    DropReason.MALFORMED: LogLevel.warn,
    DropReason.UNAUTHENTICATED: LogLevel.warn,
    DropReason.TOO_LARGE: LogLevel.warn,
    DropReason.REPLAYED: LogLevel.debug,
}


def _zero_drops() -> Dict[DropReason, int]:
    return {reason: 0 for reason in DropReason}


@attr.s(auto_attribs=True, slots=True)
class UDPStats:
    """
    What went through the UDP port (mutable counters, for metrics).

    @ivar packets_in: datagrams received, dropped ones included.
    @ivar bytes_in: their bytes.
    @ivar delivered: packets handed to the core.
    @ivar drops: datagrams dropped, by reason.
    @ivar delivery_errors: packets the core failed on with an unexpected
        exception (a bug; logged with its traceback).
    @ivar packets_out: datagrams handed to the transport.
    @ivar bytes_out: their bytes.
    @ivar send_refused: packets not sent because the datagram would exceed
        the budget (a bug in the core's packet budgeting).
    @ivar send_errors: datagrams the transport failed to send (no route,
        buffer full, no transport yet, ...).
    """

    packets_in: int = 0
    bytes_in: int = 0
    delivered: int = 0
    drops: Dict[DropReason, int] = attr.Factory(_zero_drops)
    delivery_errors: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    send_refused: int = 0
    send_errors: int = 0

    def as_dict(self) -> Dict[str, int]:
        """
        The counters as flat names, drops as C{drops_<reason>}.
        """
        counters = {
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "delivered": self.delivered,
            "delivery_errors": self.delivery_errors,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "send_refused": self.send_refused,
            "send_errors": self.send_errors,
        }
        for reason, count in self.drops.items():
            counters[f"drops_{reason.value}"] = count
        return counters


class RateLimiter:
    """
    Lets one event per key through every C{interval} seconds, and counts
    the ones it held back.
    """

    def __init__(self, interval: float, seconds: Callable[[], float]) -> None:
        self.interval = interval
        self._seconds = seconds
        self._last: Dict[object, float] = {}
        self._suppressed: Dict[object, int] = {}

    def allow(self, key: object) -> Optional[int]:
        """
        Whether an event for C{key} may be logged now: None if not, else
        how many were held back since the last one allowed.
        """
        now = self._seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


def _address(addr: Tuple[Any, ...]) -> Address:
    # IPv6 ports report (host, port, flowinfo, scope_id).
    return Address(str(addr[0]), int(addr[1]))


class SwimDatagramProtocol(DatagramProtocol):
    """
    The SWIM UDP port: opens datagrams for the core, seals and sends its
    packets.

    @ivar stats: the L{UDPStats} counters.
    """

    def __init__(
        self,
        envelope: Envelope,
        deliver: Callable[[Address, bytes], None],
        *,
        log_interval: float = 10.0,
    ) -> None:
        """
        @param envelope: seals and opens datagrams; its C{max_datagram} is
            the largest datagram sent or accepted, and its clock paces the
            logs.
        @param deliver: called with the sender's address and the packet
            (the core's C{packet_received}).
        @param log_interval: seconds between two log lines of one kind.
        """
        self.envelope = envelope
        self.deliver = deliver
        self.stats = UDPStats()
        self._limiter = RateLimiter(log_interval, envelope.seconds)

    @property
    def max_packet(self) -> int:
        """
        The largest packet L{send_packet} sends (the datagram budget minus
        the envelope's overhead).
        """
        return self.envelope.max_packet

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Open C{datagram} and deliver its packet; drop and count it if
        anything is wrong with it.
        """
        stats = self.stats
        stats.packets_in += 1
        stats.bytes_in += len(datagram)
        try:
            peer = _address(addr)
        except (TypeError, ValueError, IndexError):
            self._drop(DropReason.MALFORMED, "unusable source address", None)
            return
        if len(datagram) > self.envelope.max_datagram:
            # Checked here as well as in the envelope: no work at all is
            # spent on a datagram that cannot be ours.
            self._drop(DropReason.TOO_LARGE, "datagram larger than the budget", peer)
            return
        try:
            packet = self.envelope.open(datagram)
        except Dropped as e:
            self._drop(e.reason, e.detail, peer)
            return
        except Exception:
            # The envelope is meant to raise only Dropped; anything else is
            # a bug that must still not let a peer stop the port.
            self._drop(DropReason.MALFORMED, "envelope failed to open the datagram", peer)
            return
        try:
            self.deliver(peer, packet)
        except CodecError as e:
            self._drop(DropReason.MALFORMED, str(e), peer)
            return
        except Exception:
            stats.delivery_errors += 1
            if self._limiter.allow("delivery") is not None:
                log.failure("SWIM core failed on a packet from {peer}", peer=str(peer))
            return
        stats.delivered += 1

    def send_packet(self, addr: Address, packet: bytes) -> None:
        """
        Seal C{packet} and send it to C{addr} as one datagram.  Best effort:
        a packet over the budget is refused and logged, a transport error
        counted and logged; neither is raised.
        """
        stats = self.stats
        try:
            datagram = self.envelope.seal(packet)
        except EnvelopeError:
            stats.send_refused += 1
            suppressed = self._limiter.allow("send_refused")
            if suppressed is not None:
                log.error(
                    "refusing to send a {size}-byte SWIM packet to {peer}: over the "
                    "{budget}-byte budget ({suppressed} more suppressed)",
                    size=len(packet),
                    peer=str(addr),
                    budget=self.max_packet,
                    suppressed=suppressed,
                )
            return
        transport = self.transport
        if transport is None:
            stats.send_errors += 1
            return
        try:
            transport.write(datagram, (addr.host, addr.port))
        except Exception as e:
            # EWOULDBLOCK, ENOBUFS, EHOSTUNREACH, an address of the other
            # family, a host name: the datagram is lost, as UDP may lose it.
            stats.send_errors += 1
            suppressed = self._limiter.allow("send_error")
            if suppressed is not None:
                log.warn(
                    "sending a SWIM datagram to {peer} failed: {error} "
                    "({suppressed} more suppressed)",
                    peer=str(addr),
                    error=repr(e),
                    suppressed=suppressed,
                )
            return
        stats.packets_out += 1
        stats.bytes_out += len(datagram)

    def _drop(self, reason: DropReason, detail: str, peer: Optional[Address]) -> None:
        self.stats.drops[reason] += 1
        suppressed = self._limiter.allow(reason)
        if suppressed is not None:
            log.emit(
                _DROP_LEVELS[reason],
                "dropped a SWIM datagram from {peer}: {reason} ({detail}); "
                "{suppressed} more {reason} drops suppressed",
                peer=str(peer) if peer is not None else "?",
                reason=reason.value,
                detail=detail,
                suppressed=suppressed,
            )


__all__ = ["UDPStats", "RateLimiter", "SwimDatagramProtocol"]
