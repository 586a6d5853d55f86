# -*- test-case-name: tests.test_node_stream -*-
"""
Node-to-node streams: persistent, mutually authenticated TLS connections
that carry requests, responses and one-way messages between nodes
(SPEC 5.3).

Three layers, from the wire up:

  - a sans-I/O frame codec (L{encode_frame}, L{FrameDecoder}): every frame
    is a big-endian C{u32} length (of what follows it), a C{u8} frame type
    and a body.  A frame longer than the configured maximum, an unknown
    type or a malformed body is a L{FrameError}, and the connection that
    sent it is closed;
  - L{_StreamProtocol}, one connection: the HELLO exchange, correlation
    ids, handlers, back-pressure;
  - L{NodeStreams}, the node's set of connections: one listener, dials on
    demand, at most one connection per pair of nodes, back-off, timeouts.

The handshake
=============

TLS first (L{caxton.cluster.pki.NodeTLS}: both ends present a certificate
from the cluster CA).  Then the dialing end sends L{Hello} (protocol
version, its node id, cluster name, and a random instance number drawn at
start) and the accepting end answers with its own L{Hello} or a
L{Refuse}.  Each end refuses a peer:

  - whose HELLO names a node other than the one in its certificate
    (C{IDENTITY});
  - whose cluster name differs (C{CLUSTER}) or protocol version is not
    spoken here (C{VERSION});
  - that is not the node the dialer expected at that address
    (C{UNEXPECTED_NODE}; a seed dialed without a known id accepts any
    valid cluster certificate and learns the id);
  - that is the node itself (C{SELF}, for a seed list naming this node).

A refusal travels as a C{Refuse} frame before the close, so the other end
fails its requests with a L{PeerRefused} that says why.

One connection per pair
=======================

When both nodes dial each other at once, the connection dialed by the node
whose id sorts first (Python string order) is kept.  The accepting end
decides at HELLO time, before either connection carries a request: if it
is itself dialing that peer (or already holds a live connection it dialed)
and its own id sorts first, it refuses the new one with C{DUPLICATE};
otherwise it accepts, and its own dial will be refused by the peer by the
same rule.  A dialer refused with C{DUPLICATE} hands its waiting requests
to the connection the peer keeps.  A new connection from a peer whose
instance number differs from the live one's means the peer restarted: the
old connection is stale and is closed.  When a C{DUPLICATE} refusal is
made because of a live connection, that connection is pinged, so a
half-open one is found and closed instead of blocking the peer for good.

Reconnecting and idling
=======================

Nothing reconnects in the background: the next request to a node dials
again.  After a failed dial, requests to that address fail at once
(L{PeerUnreachable}) for a back-off delay that doubles from
C{backoff_initial} to C{backoff_max} and resets on success, so a dead
peer is not hammered.  A connection the node dialed closes after
C{idle_timeout} seconds without traffic and with nothing in flight; an
accepted one after twice that (the dialer normally goes first, which keeps
a request racing the close rare).

Writes and back-pressure
========================

Frames written in one reactor turn leave together: Twisted's TLS
transport coalesces them into one write, so bursts are batched without a
timer of our own.

The protocol registers as the transport's producer.  While the transport
says it is full, outgoing frames wait in a per-connection backlog bounded
by C{max_queued_bytes}; past that, requests and sends fail at once with
L{PeerQueueFull} rather than buffer without bound.  Requests waiting for a
connection to be dialed are bounded by C{max_waiting} per address.
"""

from __future__ import annotations

import collections
import enum
import os
import struct
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    List,
    Optional,
    Tuple,
    Union,
)

import attr
from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.error import ConnectionRefusedError as TCPConnectionRefused
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from caxton.cluster.pki import NODE_ID, NodeTLS, TLSConfigError, node_id_of
from caxton.swim.interfaces import StreamPing
from caxton.swim.messages import Address

log = Logger()

#: The stream protocol version this node speaks (sent in HELLO).
PROTOCOL_VERSION = 1

#: Default largest frame (type byte and body): room for a big push-pull.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

#: The largest frame accepted before the HELLO exchange is done.
_HANDSHAKE_FRAME_SIZE = 4096

_HEADER = struct.Struct(">IB")
_HELLO = struct.Struct(">HQ")
_REQUEST = struct.Struct(">IH")
_ID = struct.Struct(">I")
_KIND = struct.Struct(">H")
_REASON = struct.Struct(">B")

_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFFFFFF


class FrameType(enum.IntEnum):
    """
    What a frame is.
    """

    HELLO = 1
    REFUSE = 2
    REQUEST = 3
    RESPONSE = 4
    ERROR = 5
    MESSAGE = 6


class Kind(enum.IntEnum):
    """
    Request and message kinds Caxton itself uses.  Kinds below 16 are
    reserved for Caxton; an application picks from 16 up.
    """

    #: Answered by L{NodeStreams} with its node id (L{NodeStreams.ping}).
    PING = 1
    #: SWIM's full state exchange; the handler is registered by the node.
    PUSH_PULL = 2
    #: A batch of ACL messages for agents or clients on the receiving node
    #: (one-way; L{caxton.cluster.courier}).
    FORWARD = 3
    #: The receiving node took in a sender's messages up to a sequence
    #: number (one-way).
    ACK = 4
    #: Does the receiving node host this agent? (request)
    LOOKUP = 5
    #: A copy of a relocatable agent's module and spec (request).
    FETCH = 6


class RefuseReason(enum.IntEnum):
    """
    Why a connection is refused or closed by its peer.
    """

    PROTOCOL = 1
    VERSION = 2
    CLUSTER = 3
    IDENTITY = 4
    UNEXPECTED_NODE = 5
    DUPLICATE = 6
    SELF = 7
    SHUTTING_DOWN = 8
    #: Not sent: the TLS handshake itself failed (bad or unknown
    #: certificate).
    TLS = 100


def _reason_name(reason: int) -> str:
    try:
        return RefuseReason(reason).name.lower()
    except ValueError:
        return f"reason-{reason}"


# --- frames -----------------------------------------------------------------


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Hello:
    """
    The first frame each way: who is speaking, in which cluster, and which
    run of that node (C{instance}, random per start, tells a restarted peer
    from a duplicate connection).  Later versions may append fields; they
    are ignored here.
    """

    version: int
    node_id: str
    cluster: str
    instance: int


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Refuse:
    """
    The sender is closing the connection, because of C{reason} (a
    L{RefuseReason}); C{message} says more, for logs and errors.
    """

    reason: int
    message: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Request:
    """
    A request of C{kind}, to be answered with a L{Response} or L{Error}
    carrying the same C{correlation} id.
    """

    correlation: int
    kind: int
    payload: bytes


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Response:
    """
    The answer to the request with this C{correlation} id.
    """

    correlation: int
    payload: bytes


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Error:
    """
    The request with this C{correlation} id failed at the peer.
    """

    correlation: int
    message: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Message:
    """
    A one-way frame of C{kind}: nothing answers it.
    """

    kind: int
    payload: bytes


Frame = Union[Hello, Refuse, Request, Response, Error, Message]


class FrameError(Exception):
    """
    Bytes that are not a valid frame: the connection must be closed.
    """


def _short_str(value: str, what: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 255:
        raise ValueError(f"{what} is longer than 255 bytes")
    return bytes([len(data)]) + data


def encode_frame(frame: Frame) -> bytes:
    """
    The wire form of C{frame}, header included.

    @raise ValueError: a field does not fit (a kind above 65535, a node id
        longer than 255 bytes, ...).
    """
    if isinstance(frame, Request):
        ftype = FrameType.REQUEST
        body = _REQUEST.pack(frame.correlation, frame.kind) + frame.payload
    elif isinstance(frame, Response):
        ftype, body = FrameType.RESPONSE, _ID.pack(frame.correlation) + frame.payload
    elif isinstance(frame, Message):
        ftype, body = FrameType.MESSAGE, _KIND.pack(frame.kind) + frame.payload
    elif isinstance(frame, Error):
        ftype, body = FrameType.ERROR, _ID.pack(frame.correlation) + frame.message.encode("utf-8")
    elif isinstance(frame, Hello):
        ftype = FrameType.HELLO
        body = (
            _HELLO.pack(frame.version, frame.instance)
            + _short_str(frame.node_id, "node id")
            + _short_str(frame.cluster, "cluster name")
        )
    elif isinstance(frame, Refuse):
        ftype, body = FrameType.REFUSE, _REASON.pack(frame.reason) + frame.message.encode("utf-8")
    else:
        raise TypeError(f"not a frame: {frame!r}")
    try:
        return _HEADER.pack(len(body) + 1, ftype) + body
    except struct.error as e:
        raise ValueError(f"frame does not fit: {e}") from None


#: The most of a peer's own words (refusals, errors) kept for logs and
#: exceptions: they come from the network.
_MAX_SAID = 500


def _said(text: str) -> str:
    """
    A peer's message, cut to L{_MAX_SAID} characters.
    """
    return text if len(text) <= _MAX_SAID else text[:_MAX_SAID] + "..."


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(f"{what} is not UTF-8") from None


def _decode_body(ftype: int, body: bytes) -> Frame:
    if ftype == FrameType.REQUEST:
        if len(body) < _REQUEST.size:
            raise FrameError("truncated REQUEST")
        correlation, kind = _REQUEST.unpack_from(body)
        return Request(correlation, kind, body[_REQUEST.size :])
    if ftype == FrameType.RESPONSE:
        if len(body) < _ID.size:
            raise FrameError("truncated RESPONSE")
        return Response(_ID.unpack_from(body)[0], body[_ID.size :])
    if ftype == FrameType.MESSAGE:
        if len(body) < _KIND.size:
            raise FrameError("truncated MESSAGE")
        return Message(_KIND.unpack_from(body)[0], body[_KIND.size :])
    if ftype == FrameType.ERROR:
        if len(body) < _ID.size:
            raise FrameError("truncated ERROR")
        return Error(_ID.unpack_from(body)[0], _text(body[_ID.size :], "ERROR message"))
    if ftype == FrameType.HELLO:
        if len(body) < _HELLO.size + 2:
            raise FrameError("truncated HELLO")
        version, instance = _HELLO.unpack_from(body)
        offset = _HELLO.size
        strings = []
        for what in ("node id", "cluster name"):
            if offset >= len(body):
                raise FrameError("truncated HELLO")
            size = body[offset]
            offset += 1
            if offset + size > len(body):
                raise FrameError(f"truncated HELLO {what}")
            strings.append(_text(body[offset : offset + size], f"HELLO {what}"))
            offset += size
        return Hello(version, strings[0], strings[1], instance)
    if ftype == FrameType.REFUSE:
        if len(body) < _REASON.size:
            raise FrameError("truncated REFUSE")
        return Refuse(body[0], _text(body[_REASON.size :], "REFUSE message"))
    raise FrameError(f"unknown frame type {ftype}")


class FrameDecoder:
    """
    Turns a byte stream into frames, sans I/O.

    Feed it what arrives; it returns the complete frames so far and keeps
    the rest.  Once it has raised L{FrameError} it raises again on every
    call: a stream that went wrong cannot be resynchronised.

    @ivar max_frame_size: the largest length (type byte and body) accepted;
        a longer frame is refused as soon as its header arrives.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._broken: Optional[str] = None

    @property
    def buffered(self) -> int:
        """
        How many bytes wait for the rest of their frame.
        """
        return len(self._buffer)

    def feed(self, data: bytes) -> List[Frame]:
        """
        Add C{data} and return the frames it completes, in order.

        @raise FrameError: the stream holds an invalid frame.
        """
        if self._broken is not None:
            raise FrameError(self._broken)
        buffer = self._buffer
        buffer += data
        frames: List[Frame] = []
        offset = 0
        try:
            while len(buffer) - offset >= _ID.size:
                (length,) = _ID.unpack_from(buffer, offset)
                if length < 1:
                    raise FrameError("empty frame")
                if length > self.max_frame_size:
                    raise FrameError(
                        f"frame of {length} bytes is larger than the limit of "
                        f"{self.max_frame_size}"
                    )
                end = offset + _ID.size + length
                if len(buffer) < end:
                    break
                ftype = buffer[offset + _ID.size]
                frames.append(_decode_body(ftype, bytes(buffer[offset + _HEADER.size : end])))
                offset = end
        except FrameError as e:
            self._broken = str(e)
            del buffer[:]
            raise
        del buffer[:offset]
        return frames


# --- errors -----------------------------------------------------------------


class StreamError(Exception):
    """
    A request or message over a node stream did not succeed.
    """


class PeerRefused(StreamError):
    """
    The connection was refused, by the peer or by this node, before it
    carried anything: wrong identity, wrong cluster, untrusted
    certificate, ...

    @ivar reason: a L{RefuseReason}.
    """

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PeerUnreachable(StreamError):
    """
    No connection could be made (refused, timed out, or backing off after
    recent failures).

    @ivar refused: the peer's host refused the TCP connection (nothing
        listens there), now or at the failure being backed off from.
    """

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class PeerConnectionLost(StreamError):
    """
    The connection closed while the request was in flight.
    """


class RequestTimeout(StreamError):
    """
    No answer within the request's timeout.
    """


class RemoteError(StreamError):
    """
    The peer's handler failed; the message is the peer's.
    """


class PeerQueueFull(StreamError):
    """
    Too much is already waiting for this peer; try later.
    """


class FrameTooLarge(StreamError):
    """
    A request, response or message is larger than the frame limit.
    """


# --- one connection ---------------------------------------------------------


#: A request handler: (peer node id, payload) -> bytes or Deferred[bytes].
RequestHandler = Callable[[str, bytes], Union[bytes, Deferred, Awaitable[bytes]]]
#: A one-way message handler: (peer node id, payload) -> None.
MessageHandler = Callable[[str, bytes], Any]


@attr.s(auto_attribs=True, eq=False)
class _Dial:
    """
    One outgoing connection attempt and the requests waiting for it.
    """

    addr: Address
    expected: Optional[str]
    waiters: List[Tuple[Optional[str], Deferred]] = attr.ib(factory=list)
    connecting: Optional[Deferred] = None
    protocol: Optional["_StreamProtocol"] = None
    done: bool = False


@attr.s(auto_attribs=True)
class _Backoff:
    failures: int
    until: float
    error: str
    refused: bool = False


_TLS_STATE = "tls"
_HELLO_STATE = "hello"
_READY = "ready"
_CLOSED = "closed"


@implementer(IHandshakeListener, IPushProducer)
class _StreamProtocol(Protocol):
    """
    One node stream, either end.  L{NodeStreams} makes the decisions that
    involve other connections (HELLO checks, duplicates); this class keeps
    the connection's own state.
    """

    def __init__(self, streams: "NodeStreams", dial: Optional[_Dial] = None) -> None:
        self._streams = streams
        self.dial = dial
        self.outbound = dial is not None
        #: The source address of an inbound connection, if known.
        self.remote_host: Optional[str] = None
        # Until the peer has said who it is, it gets room for a HELLO and
        # no more: an unidentified connection cannot pin megabytes.
        self.decoder = FrameDecoder(min(streams.max_frame_size, _HANDSHAKE_FRAME_SIZE))
        self.state = _TLS_STATE
        self.cert_node: Optional[str] = None
        self.peer_certificate: Optional[x509.Certificate] = None
        self.peer_node: Optional[str] = None
        self.peer_instance: Optional[int] = None
        self.peer_address = "?"
        self.refusal: Optional[StreamError] = None
        self.pending: Dict[int, Deferred] = {}
        self.handling = 0
        self.retired = False
        self._retire_at = 0.0
        self.was_ready = False
        self.probing = False
        self.last_activity = streams.clock.seconds()
        self.lost: Deferred = Deferred()
        self._next_id = 0
        self._timer: Optional[IDelayedCall] = None
        self._paused = False
        self._backlog: Deque[bytes] = collections.deque()
        self._backlog_bytes = 0

    # -- identity, for logs and errors

    def describe(self) -> str:
        """
        The peer as logs name it: node id (when known) and address.
        """
        who = self.peer_node or self.cert_node or "unknown node"
        where = str(self.dial.addr) if self.dial is not None else self.peer_address
        return f"{who} at {where}"

    @property
    def usable(self) -> bool:
        """
        Whether new requests may go on this connection.
        """
        return self.state == _READY and not self.retired

    # -- Twisted

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        if host is not None:
            self.peer_address = str(Address(host, port))
        self.transport.registerProducer(self, True)
        self._set_timer(self._streams.handshake_timeout, self._handshake_timed_out)
        self._streams._connection_made(self)

    def handshakeCompleted(self) -> None:
        if self.state != _TLS_STATE:
            return
        cert = self.transport.getPeerCertificate()
        if isinstance(cert, crypto.X509):
            cert = cert.to_cryptography()
        self.peer_certificate = cert
        self.cert_node = node_id_of(cert)
        self.state = _HELLO_STATE
        if self.cert_node is None:
            self.refuse(RefuseReason.IDENTITY, "its certificate names no node")
            return
        if self.outbound:
            self.send_frame(self._streams._hello())

    def dataReceived(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        self._streams.counters["bytes_in"] += len(data)
        self.last_activity = self._streams.clock.seconds()
        try:
            frames = self.decoder.feed(data)
        except FrameError as e:
            self.protocol_error(str(e))
            return
        for frame in frames:
            if self.state == _CLOSED:
                return
            self._streams.counters["frames_in"] += 1
            self._frame(frame)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        was = self.state
        self.state = _CLOSED
        self._cancel_timer()
        self._backlog.clear()
        error = self.refusal
        if error is None:
            if was in (_TLS_STATE, _HELLO_STATE) and reason.check(SSL.Error):
                error = PeerRefused(
                    RefuseReason.TLS,
                    f"TLS handshake with {self.describe()} failed: {_ssl_message(reason)}",
                )
            elif was in (_TLS_STATE, _HELLO_STATE):
                error = PeerUnreachable(
                    f"connection to {self.describe()} closed during the handshake"
                )
            else:
                error = PeerConnectionLost(
                    f"connection to {self.describe()} lost: {reason.getErrorMessage()}"
                )
        pending, self.pending = self.pending, {}
        lost = error if isinstance(error, PeerConnectionLost) else PeerConnectionLost(str(error))
        for d in pending.values():
            d.errback(lost)
        self._streams._connection_lost(self, was, error)
        self.lost.callback(None)

    # -- IPushProducer: the transport's buffer fills and drains

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._backlog and not self._paused and self.state != _CLOSED:
            data = self._backlog.popleft()
            self._backlog_bytes -= len(data)
            self.transport.write(data)

    def stopProducing(self) -> None:
        self._paused = True

    # -- sending

    def send_frame(self, frame: Frame) -> None:
        """
        Write C{frame}, or queue it while the transport is full.

        @raise FrameTooLarge: it exceeds the frame limit.
        @raise PeerQueueFull: the backlog is full.
        """
        try:
            data = encode_frame(frame)
        except ValueError as e:
            raise FrameTooLarge(str(e)) from None
        if len(data) - _ID.size > self._streams.max_frame_size:
            raise FrameTooLarge(
                f"a frame of {len(data) - _ID.size} bytes exceeds the limit of "
                f"{self._streams.max_frame_size}"
            )
        if self.state == _CLOSED:
            return
        if self._paused or self._backlog:
            if self._backlog_bytes + len(data) > self._streams.max_queued_bytes:
                self._streams.counters["queue_full"] += 1
                raise PeerQueueFull(f"the outgoing queue to {self.describe()} is full")
            self._backlog.append(data)
            self._backlog_bytes += len(data)
        else:
            self.transport.write(data)
        self._streams.counters["frames_out"] += 1
        self._streams.counters["bytes_out"] += len(data)
        self.last_activity = self._streams.clock.seconds()

    def request(self, kind: int, payload: bytes) -> Deferred:
        """
        Send a request; the Deferred fires with the response payload.
        """
        if not self.usable:
            return fail(PeerConnectionLost(f"connection to {self.describe()} is closing"))
        correlation = self._allocate_id()

        def cancel(d: Deferred) -> None:
            self.pending.pop(correlation, None)
            self._maybe_finish_retirement()

        d: Deferred = Deferred(cancel)
        self.pending[correlation] = d
        try:
            self.send_frame(Request(correlation, kind, payload))
        except StreamError as e:
            del self.pending[correlation]
            return fail(e)
        return d

    def _allocate_id(self) -> int:
        while True:
            self._next_id = (self._next_id + 1) & _MAX_U32
            if self._next_id not in self.pending:
                return self._next_id

    # -- closing

    def refuse(self, reason: int, message: str) -> None:
        """
        Refuse the peer: tell it why, close, and fail what waited for this
        connection with L{PeerRefused}.
        """
        if self.state == _CLOSED:
            return
        self._streams._count_refusal("local", reason)
        log.warn(
            "refusing stream with {peer}: {reason}: {message}",
            peer=self.describe(),
            reason=_reason_name(reason),
            message=message,
        )
        self.refusal = PeerRefused(reason, f"{self.describe()} refused: {message}")
        self._close_with(Refuse(reason, message))

    def protocol_error(self, message: str) -> None:
        """
        The peer broke the protocol: close the connection.
        """
        if self.state == _CLOSED:
            return
        self._streams.counters["protocol_errors"] += 1
        log.warn(
            "protocol error from {peer}, closing: {message}",
            peer=self.describe(),
            message=message,
        )
        if self.state != _READY:
            self.refusal = PeerRefused(
                RefuseReason.PROTOCOL, f"protocol error from {self.describe()}: {message}"
            )
        self._close_with(Refuse(RefuseReason.PROTOCOL, message))

    def _close_with(self, frame: Optional[Refuse]) -> None:
        if self.state != _TLS_STATE:
            # Closing: what waits in the backlog, and the reason, go to the
            # transport now, which sends them before the close.
            while self._backlog:
                self.transport.write(self._backlog.popleft())
            self._backlog_bytes = 0
            if frame is not None:
                self.transport.write(encode_frame(frame))
                self._streams.counters["frames_out"] += 1
        self.state = _CLOSED
        self._cancel_timer()
        # The TLS transport will not start its close while a producer is
        # registered.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def retire(self, grace: float = 0.0) -> None:
        """
        Take no new requests; close once nothing is in flight, and not
        before C{grace} seconds from now.

        @param grace: time for requests the peer already sent on this
            connection to arrive (a duplicate connection is retired while
            the peer may not yet know).
        """
        if self.retired or self.state == _CLOSED:
            return
        self.retired = True
        self._retire_at = self._streams.clock.seconds() + grace
        if grace > 0:
            self._set_timer(grace, self._maybe_finish_retirement)
        else:
            self._cancel_timer()
        self._maybe_finish_retirement()

    def _maybe_finish_retirement(self) -> None:
        if (
            self.retired
            and not self.pending
            and not self.handling
            and self.state != _CLOSED
            and self._streams.clock.seconds() >= self._retire_at
        ):
            self._close_with(None)

    # -- timers

    def _set_timer(self, delay: float, what: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self._streams.clock.callLater(delay, what)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.state in (_TLS_STATE, _HELLO_STATE):
            self._streams.counters["handshake_timeouts"] += 1
            log.warn("stream handshake with {peer} timed out", peer=self.describe())
            self.refusal = PeerUnreachable(f"handshake with {self.describe()} timed out")
            self.state = _CLOSED
            self.transport.abortConnection()

    def became_ready(self) -> None:
        """
        The HELLO exchange succeeded: start idling.
        """
        self.state = _READY
        self.was_ready = True
        self.decoder.max_frame_size = self._streams.max_frame_size
        self._schedule_idle(self._idle_limit())

    def _idle_limit(self) -> float:
        timeout = self._streams.idle_timeout
        return timeout if self.outbound else 2 * timeout

    def _schedule_idle(self, delay: float) -> None:
        self._set_timer(max(delay, 0.001), self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        if self.state != _READY:
            return
        limit = self._idle_limit()
        idle = self._streams.clock.seconds() - self.last_activity
        if idle >= limit and not self.pending and not self.handling:
            log.info("closing idle stream with {peer}", peer=self.describe())
            self._streams._retire(self)
            return
        self._schedule_idle(limit - idle if idle < limit else limit)

    # -- frames

    def _frame(self, frame: Frame) -> None:
        if self.state == _HELLO_STATE:
            if isinstance(frame, Hello):
                self._streams._hello_received(self, frame)
            elif isinstance(frame, Refuse):
                self._refused_by_peer(frame)
            else:
                self.protocol_error(f"expected HELLO, got {type(frame).__name__}")
            return
        if self.state != _READY:
            self.protocol_error(f"unexpected {type(frame).__name__} during the TLS handshake")
            return
        if isinstance(frame, Request):
            self._request_received(frame)
        elif isinstance(frame, (Response, Error)):
            d = self.pending.pop(frame.correlation, None)
            if d is None:
                # The request timed out or was cancelled: drop the late answer.
                return
            if isinstance(frame, Response):
                d.callback(frame.payload)
            else:
                d.errback(RemoteError(_said(frame.message)))
            self._maybe_finish_retirement()
        elif isinstance(frame, Message):
            self._message_received(frame)
        elif isinstance(frame, Refuse):
            self._refused_by_peer(frame)
        else:
            self.protocol_error("HELLO after the handshake")

    def _refused_by_peer(self, frame: Refuse) -> None:
        self._streams._count_refusal("peer", frame.reason)
        said = _said(frame.message)
        if self.state == _READY:
            log.info(
                "{peer} closed the stream: {reason}: {message}",
                peer=self.describe(),
                reason=_reason_name(frame.reason),
                message=said,
            )
            self.refusal = PeerConnectionLost(
                f"{self.describe()} closed the stream: {said}"
            )
        else:
            log.warn(
                "{peer} refused the stream: {reason}: {message}",
                peer=self.describe(),
                reason=_reason_name(frame.reason),
                message=said,
            )
            self.refusal = PeerRefused(
                frame.reason, f"{self.describe()} refused the stream: {said}"
            )
        self._close_with(None)

    def _request_received(self, frame: Request) -> None:
        peer = self.peer_node
        assert peer is not None
        if frame.kind == Kind.PING:
            self._answer(frame.correlation, self._streams.node_id.encode("utf-8"))
            return
        handler = self._streams._handlers.get(frame.kind)
        if handler is None:
            self._answer_error(frame.correlation, f"no handler for request kind {frame.kind}")
            return
        self.handling += 1
        d = maybeDeferred(handler, peer, frame.payload)
        # A handler may be a coroutine function: run it like Deferred.
        d.addCallback(_ensure_deferred)

        def answered(result: object) -> None:
            if not isinstance(result, bytes):
                log.error(
                    "handler for kind {kind} returned {type} to {peer}, not bytes",
                    kind=frame.kind,
                    type=type(result).__name__,
                    peer=self.describe(),
                )
                self._answer_error(frame.correlation, "the handler returned no bytes")
            else:
                self._answer(frame.correlation, result)

        def failed(failure: Failure) -> None:
            if not failure.check(StreamError):
                log.failure(
                    "handler for kind {kind} failed on a request from {peer}",
                    failure,
                    kind=frame.kind,
                    peer=self.describe(),
                )
            self._answer_error(
                frame.correlation, failure.getErrorMessage() or failure.type.__name__
            )

        def finished(_: object) -> None:
            self.handling -= 1
            self._maybe_finish_retirement()

        d.addCallbacks(answered, failed)
        d.addBoth(finished)

    def _answer(self, correlation: int, payload: bytes) -> None:
        if self.state != _READY:
            return
        try:
            self.send_frame(Response(correlation, payload))
        except FrameTooLarge as e:
            self._answer_error(correlation, f"response too large: {e}")
        except StreamError as e:
            log.warn("cannot answer {peer}: {error}", peer=self.describe(), error=str(e))

    def _answer_error(self, correlation: int, message: str) -> None:
        if self.state != _READY:
            return
        try:
            self.send_frame(Error(correlation, message[:4096]))
        except StreamError as e:
            log.warn("cannot answer {peer}: {error}", peer=self.describe(), error=str(e))

    def _message_received(self, frame: Message) -> None:
        handler = self._streams._message_handlers.get(frame.kind)
        if handler is None:
            log.warn(
                "dropping a message of unknown kind {kind} from {peer}",
                kind=frame.kind,
                peer=self.describe(),
            )
            self._streams.counters["messages_dropped"] += 1
            return
        d = maybeDeferred(handler, self.peer_node, frame.payload)
        d.addCallback(_ensure_deferred)
        d.addErrback(
            lambda f: log.failure(
                "message handler for kind {kind} failed on a message from {peer}",
                f,
                kind=frame.kind,
                peer=self.describe(),
            )
        )


def _ensure_deferred(result: object) -> object:
    if hasattr(result, "__await__") and not isinstance(result, Deferred):
        return Deferred.fromCoroutine(result)  # type: ignore[arg-type]
    return result


def _ssl_message(reason: Failure) -> str:
    # pyOpenSSL errors are lists of (lib, func, reason) tuples: keep the
    # reasons, which are what a person can act on.
    value = reason.value
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list):
        reasons = [str(item[-1]) for item in args[0] if isinstance(item, tuple) and item]
        if reasons:
            return ", ".join(reasons)
    return reason.getErrorMessage() or reason.type.__name__


#: Addresses whose back-off is remembered before expired ones are pruned.
_MAX_BACKOFF_ENTRIES = 1024

#: Inbound connections not yet identified (TLS and HELLO) held at once, in
#: all and from one source address.
MAX_UNIDENTIFIED = 256
MAX_UNIDENTIFIED_PER_HOST = 32


class _AcceptFactory(Factory):
    """
    Makes the accepting end of streams.
    """

    noisy = False

    def __init__(self, streams: "NodeStreams") -> None:
        self._streams = streams

    def buildProtocol(self, addr: object) -> Optional[_StreamProtocol]:
        if not self._streams.accepting:
            return None
        conn = _StreamProtocol(self._streams)
        conn.remote_host = getattr(addr, "host", None)
        return conn


class _Gate(Factory):
    """
    In front of the TLS layer of the listener: before its TLS handshake and
    HELLO a connection is a stranger's, so hold only so many, in all and per
    source address; past that, close new ones at once.  Strangers then
    cannot pin the node's memory with half-open handshakes.
    """

    noisy = False

    def __init__(self, streams: "NodeStreams", inner: Factory) -> None:
        self._streams = streams
        self._inner = inner

    def buildProtocol(self, addr: object) -> Optional[Protocol]:
        streams = self._streams
        if not streams.accepting:
            return None
        host = getattr(addr, "host", None)
        waiting = [
            c for c in streams._connections if not c.outbound and c.state in (_TLS_STATE, _HELLO_STATE)
        ]
        same_host = sum(1 for c in waiting if c.remote_host == host)
        if len(waiting) >= MAX_UNIDENTIFIED or same_host >= MAX_UNIDENTIFIED_PER_HOST:
            streams.counters["refused_accept_limit"] += 1
            return None
        return self._inner.buildProtocol(addr)


class _DialFactory(Factory):
    """
    Makes the dialing end of one stream.
    """

    noisy = False

    def __init__(self, streams: "NodeStreams", dial: _Dial) -> None:
        self._streams = streams
        self._dial = dial

    def buildProtocol(self, addr: object) -> _StreamProtocol:
        protocol = _StreamProtocol(self._streams, self._dial)
        self._dial.protocol = protocol
        return protocol


def _default_connect(reactor: Any, timeout: float) -> Callable[[Address], IStreamClientEndpoint]:
    def connect(addr: Address) -> IStreamClientEndpoint:
        if ":" in addr.host:
            return TCP6ClientEndpoint(reactor, addr.host, addr.port, timeout=timeout)
        return TCP4ClientEndpoint(reactor, addr.host, addr.port, timeout=timeout)

    return connect


# --- the node's streams -----------------------------------------------------


class NodeStreams(Service):
    """
    This node's streams to other nodes: a TLS listener, connections made
    on demand, requests and one-way messages (see the module docstring for
    the rules).

    Like L{caxton.service.StoreService}, the work is in L{open} and
    L{close}: C{startService} only marks the service running, and the
    root service awaits L{open} after it (and L{close} before
    C{stopService}, which also closes if that was not done).

    @ivar node_id: this node's id; its certificate must name it.
    @ivar cluster_name: peers in another cluster are refused.
    @ivar clock: the time source for every timeout and back-off.
    @ivar counters: connections, refusals by reason and side, frames and
        bytes each way, protocol errors, timeouts (see L{stats}).
    """

    name = "streams"

    def __init__(
        self,
        reactor: Any,
        node_id: str,
        cluster_name: str,
        tls: NodeTLS,
        endpoint: IStreamServerEndpoint,
        connect: Optional[Callable[[Address], IStreamClientEndpoint]] = None,
        clock: Optional[IReactorTime] = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_queued_bytes: int = 2 * DEFAULT_MAX_FRAME_SIZE,
        max_waiting: int = 1024,
        connect_timeout: float = 5.0,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        close_timeout: float = 5.0,
    ) -> None:
        """
        @param reactor: used for TCP connections and the TLS layer.
        @param tls: the node's TLS directory.
        @param endpoint: where to listen, as a plain (non-TLS) stream
            server endpoint: TCP on the SWIM host and port, or an onion
            service; TLS is added here.
        @param connect: makes the plain client endpoint to reach an
            address (default: TCP, IPv4 or IPv6 by the address's form).
        @param clock: defaults to C{reactor}.
        @param max_frame_size: largest frame sent or accepted.
        @param max_queued_bytes: per connection, while the transport is
            full.
        @param max_waiting: requests waiting for one dial.
        @param idle_timeout: seconds before an unused dialed connection
            closes.
        """
        if not NODE_ID.match(node_id):
            raise ValueError(f"{node_id!r} is not a node id")
        if not cluster_name or len(cluster_name.encode("utf-8")) > 255:
            raise ValueError("the cluster name must be 1 to 255 bytes of UTF-8")
        self._reactor = reactor
        self.node_id = node_id
        self.cluster_name = cluster_name
        self._tls = tls
        self._endpoint = endpoint
        self.clock: IReactorTime = clock if clock is not None else reactor
        self._connect = connect or _default_connect(reactor, connect_timeout)
        self.max_frame_size = max_frame_size
        self.max_queued_bytes = max_queued_bytes
        self.max_waiting = max_waiting
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.close_timeout = close_timeout
        self.instance = int.from_bytes(os.urandom(8), "big")
        self.counters: collections.Counter = collections.Counter()
        self.accepting = False
        self._port: Optional[IListeningPort] = None
        self._handlers: Dict[int, RequestHandler] = {}
        self._message_handlers: Dict[int, MessageHandler] = {}
        self._connections: List[_StreamProtocol] = []
        self._peers: Dict[str, _StreamProtocol] = {}
        self._by_addr: Dict[Address, _StreamProtocol] = {}
        self._dials: Dict[Address, _Dial] = {}
        self._node_waiters: Dict[str, List[Tuple[Deferred, IDelayedCall]]] = {}
        self._backoff: Dict[Address, _Backoff] = {}
        #: Told C{on_peer_lost(node_id)} when a ready connection is lost
        #: without the peer saying why (no shutdown or refusal frame) and
        #: not by this side's doing: a hint that the peer's process died.
        self.on_peer_lost: Optional[Callable[[str], None]] = None

    # -- life

    async def open(self) -> None:
        """
        Load the TLS directory and start listening.

        @raise TLSConfigError: the TLS directory is unusable or its
            certificate names another node.
        """
        if self._port is not None:
            return
        material = self._tls.reload()
        if material.node_id != self.node_id:
            raise TLSConfigError(
                f"the certificate in {self._tls.directory} is for node "
                f"{material.node_id}, not {self.node_id}"
            )
        tls = TLSMemoryBIOFactory(self._tls, False, _AcceptFactory(self), clock=self._reactor)
        factory = _Gate(self, tls)
        self.accepting = True
        try:
            self._port = await self._endpoint.listen(factory)
        except BaseException:
            self.accepting = False
            raise
        log.info(
            "node streams for {node_id} listening on {address}",
            node_id=self.node_id,
            address=str(self.address),
        )

    @property
    def address(self) -> Optional[Address]:
        """
        Where the listener is bound (after L{open}), if it has a host and
        port.
        """
        if self._port is None:
            return None
        host = self._port.getHost()
        if not hasattr(host, "port"):
            return None
        return Address(host.host, host.port)

    async def close(self) -> None:
        """
        Stop listening, fail what waits, close every connection (telling
        peers we are shutting down) and wait for them to go, at most
        C{close_timeout} seconds before aborting the rest.
        """
        self.accepting = False
        port, self._port = self._port, None
        if port is not None:
            await port.stopListening()
        stopping = StreamError("node streams are stopping")
        for dial in list(self._dials.values()):
            if dial.connecting is not None and not dial.connecting.called:
                dial.connecting.cancel()
            self._finish_dial(dial, error=stopping)
        for node in list(self._node_waiters):
            for d, timer in self._node_waiters.pop(node):
                if timer.active():
                    timer.cancel()
                d.errback(stopping)
        connections = list(self._connections)
        if not connections:
            return
        for conn in connections:
            if conn.state == _READY:
                conn._close_with(Refuse(RefuseReason.SHUTTING_DOWN, "node is shutting down"))
            elif conn.state != _CLOSED:
                conn._close_with(None)
            else:
                conn.transport.loseConnection()
        gone = DeferredList([conn.lost for conn in connections])

        def abort() -> None:
            for conn in connections:
                if not conn.lost.called:
                    conn.transport.abortConnection()

        timer = self.clock.callLater(self.close_timeout, abort)
        await gone
        if timer.active():
            timer.cancel()

    def stopService(self) -> Deferred:
        """
        Close (if not done yet) and stop.
        """
        Service.stopService(self)
        return Deferred.fromCoroutine(self.close())

    # -- handlers

    def register_handler(self, kind: int, handler: RequestHandler) -> None:
        """
        Answer requests of C{kind} with C{handler(peer_node_id, payload)},
        which returns bytes, a Deferred or a coroutine of bytes.  If it
        raises or fails, the requester's Deferred fails with
        L{RemoteError} carrying the error's message.
        """
        if kind == Kind.PING:
            raise ValueError("PING is answered by NodeStreams itself")
        self._handlers[kind] = handler

    def register_message_handler(self, kind: int, handler: MessageHandler) -> None:
        """
        Handle one-way messages of C{kind} with C{handler(peer_node_id,
        payload)}; what it returns is ignored, its failures are logged.
        """
        self._message_handlers[kind] = handler

    # -- requests

    def request(
        self,
        node: Optional[str],
        addr: Address,
        kind: int,
        payload: bytes,
        timeout: float,
        at_address: bool = False,
    ) -> Deferred:
        """
        Send a request to C{node} at C{addr} and wait for its answer,
        dialing if there is no connection.

        @param node: the peer's node id, or C{None} for an address whose
            node is unknown (a seed): then any node of the cluster will do.
        @param timeout: seconds, dialing included.
        @param at_address: use only a connection dialed to C{addr} (or dial
            one), not the node's connection from elsewhere.
        @return: a Deferred that fires with the response payload, or fails
            with L{PeerRefused}, L{PeerUnreachable}, L{RequestTimeout},
            L{PeerConnectionLost}, L{RemoteError}, L{PeerQueueFull} or
            L{FrameTooLarge}.
        """
        if not self.accepting:
            return fail(StreamError("node streams are not running"))
        if len(payload) + _HEADER.size + _REQUEST.size - _ID.size > self.max_frame_size:
            return fail(FrameTooLarge(f"a request of {len(payload)} bytes exceeds the frame limit"))

        async def go() -> bytes:
            conn = await self._connection(node, addr, at_address)
            return await conn.request(kind, payload)

        d = Deferred.fromCoroutine(go())
        return self._deadline(d, timeout, f"request of kind {kind} to {node or '?'} at {addr}")

    def send(
        self,
        node: Optional[str],
        addr: Address,
        kind: int,
        payload: bytes,
        timeout: float = 10.0,
    ) -> Deferred:
        """
        Send a one-way message of C{kind}, dialing if needed.  Fires with
        C{None} once the frame is handed to the connection (not when the
        peer has it: put acks in the messages for that), or fails like
        L{request} does when no connection could be had within C{timeout}.
        """
        if not self.accepting:
            return fail(StreamError("node streams are not running"))

        async def go() -> None:
            conn = await self._connection(node, addr)
            if not conn.usable:
                raise PeerConnectionLost(f"connection to {conn.describe()} is closing")
            conn.send_frame(Message(kind, payload))

        d = Deferred.fromCoroutine(go())
        return self._deadline(d, timeout, f"message of kind {kind} to {node or '?'} at {addr}")

    def ping(self, node: str, addr: Address, timeout: float) -> Deferred:
        """
        Probe C{node} at C{addr} over a stream.

        @return: a Deferred that fires with C{True} when the peer proved to
            be C{node} (certificate, HELLO and PING answer agree), C{False}
            otherwise; it never fails.
        """
        return self.probe(node, addr, timeout).addCallback(lambda found: found is StreamPing.ANSWERED)

    def probe(self, node: str, addr: Address, timeout: float) -> Deferred:
        """
        Probe C{node} at C{addr} over a stream, for SWIM (its
        L{ISwimTransport.stream_ping}).

        @return: a Deferred that fires with L{StreamPing.ANSWERED} when the
            peer proved to be C{node}, L{StreamPing.REFUSED} when its host
            refused the TCP connection (nothing listens there), and
            L{StreamPing.SILENT} for anything else; it never fails.
        """
        d = self.request(node, addr, Kind.PING, b"", timeout, at_address=True)

        def answered(payload: bytes) -> StreamPing:
            if payload == node.encode("utf-8"):
                return StreamPing.ANSWERED
            return StreamPing.SILENT

        def failed(failure: Failure) -> StreamPing:
            log.debug(
                "stream ping of {node} at {addr} failed: {error}",
                node=node,
                addr=str(addr),
                error=failure.getErrorMessage(),
            )
            if failure.check(PeerUnreachable) and failure.value.refused:
                return StreamPing.REFUSED
            return StreamPing.SILENT

        return d.addCallbacks(answered, failed)

    def _deadline(self, d: Deferred, timeout: float, what: str) -> Deferred:
        def timed_out(result: object, seconds: float) -> object:
            self.counters["requests_timed_out"] += 1
            raise RequestTimeout(f"{what} timed out after {seconds:g}s")

        return d.addTimeout(timeout, self.clock, onTimeoutCancel=timed_out)

    # -- introspection

    def connected_peers(self) -> List[str]:
        """
        The node ids with a usable connection.
        """
        return sorted(node for node, conn in self._peers.items() if conn.usable)

    def connection_count(self) -> int:
        """
        Open connections in any state (handshaking, usable, closing).
        """
        return len(self._connections)

    def peer_certificate(self, node: str) -> Optional[x509.Certificate]:
        """
        The certificate C{node} presented on its current connection.
        """
        conn = self._peers.get(node)
        return conn.peer_certificate if conn is not None else None

    def stats(self) -> Dict[str, int]:
        """
        The counters, plus current connection and dial counts.
        """
        stats = dict(self.counters)
        stats["connections_open"] = len(self._connections)
        stats["peers_connected"] = len(self._peers)
        stats["dials_in_progress"] = len(self._dials)
        return stats

    def disconnect(self, node: str) -> Deferred:
        """
        Close the connection to C{node} (say, it was declared dead) once
        what is in flight on it is done.  Fires when it is closed.
        """
        conn = self._peers.get(node)
        if conn is None:
            return succeed(None)
        lost = Deferred()
        conn.lost.addBoth(lambda r: (lost.callback(None), r)[1])
        self._retire(conn)
        return lost

    # -- connections

    def _connection(self, node: Optional[str], addr: Address, at_address: bool = False) -> Deferred:
        """
        A usable connection to C{node} at C{addr}: an existing one, or a
        dial.  With C{at_address}, only a connection this node dialed to
        C{addr} will do (a probe of that address must not be answered by
        the node's connection from somewhere else).
        """
        if node == self.node_id:
            return fail(PeerRefused(RefuseReason.SELF, f"{node} is this node"))
        if at_address:
            conn = self._by_addr.get(addr)
            if conn is not None and conn.usable and conn.peer_node == node:
                return succeed(conn)
        elif node is not None:
            conn = self._peers.get(node)
            if conn is not None and conn.usable:
                return succeed(conn)
        else:
            conn = self._by_addr.get(addr)
            if conn is not None and conn.usable:
                return succeed(conn)
        dial = self._dials.get(addr)
        if dial is None:
            backoff = self._backoff.get(addr)
            now = self.clock.seconds()
            if backoff is not None and now < backoff.until:
                self.counters["dials_backed_off"] += 1
                return fail(
                    PeerUnreachable(
                        f"{addr} failed {backoff.failures} time(s), last: {backoff.error}; "
                        f"next attempt in {backoff.until - now:.1f}s",
                        refused=backoff.refused,
                    )
                )
            dial = self._start_dial(node, addr)
        if len(dial.waiters) >= self.max_waiting:
            self.counters["queue_full"] += 1
            return fail(PeerQueueFull(f"too many requests wait for a connection to {addr}"))

        d: Deferred = Deferred(self._forget_waiter)
        dial.waiters.append((node, d))
        return d

    def _start_dial(self, node: Optional[str], addr: Address) -> _Dial:
        dial = _Dial(addr=addr, expected=node)
        self._dials[addr] = dial
        self.counters["dials"] += 1
        log.debug("dialing {node} at {addr}", node=node or "?", addr=str(addr))
        endpoint = wrapClientTLS(self._tls, self._connect(addr))
        connecting = endpoint.connect(_DialFactory(self, dial))
        dial.connecting = connecting

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError) or dial.done:
                return
            self.counters["dial_failures"] += 1
            self._finish_dial(
                dial,
                error=PeerUnreachable(
                    f"cannot connect to {addr}: {failure.getErrorMessage()}",
                    refused=failure.check(TCPConnectionRefused) is not None,
                ),
            )

        connecting.addErrback(failed)
        return dial

    def _finish_dial(
        self,
        dial: _Dial,
        conn: Optional[_StreamProtocol] = None,
        error: Optional[StreamError] = None,
    ) -> None:
        if dial.done:
            return
        dial.done = True
        if self._dials.get(dial.addr) is dial:
            del self._dials[dial.addr]
        waiters, dial.waiters = dial.waiters, []
        if conn is not None:
            self._backoff.pop(dial.addr, None)
            for node, d in waiters:
                if node is not None and node != conn.peer_node:
                    d.errback(
                        PeerRefused(
                            RefuseReason.UNEXPECTED_NODE,
                            f"expected node {node} at {dial.addr}, found {conn.peer_node}",
                        )
                    )
                else:
                    d.callback(conn)
            return
        assert error is not None
        peer = dial.protocol.cert_node if dial.protocol is not None else None
        if isinstance(error, PeerRefused) and error.reason == RefuseReason.DUPLICATE and peer:
            # The peer keeps the connection it dialed to us: wait for it.
            for node, d in waiters:
                self._wait_for_node(peer, d)
            return
        if self.accepting:
            self._record_failure(dial.addr, error)
        for node, d in waiters:
            d.errback(error)

    def _record_failure(self, addr: Address, error: StreamError) -> None:
        previous = self._backoff.get(addr)
        failures = previous.failures + 1 if previous is not None else 1
        delay = min(self.backoff_initial * 2 ** (failures - 1), self.backoff_max)
        refused = isinstance(error, PeerUnreachable) and error.refused
        now = self.clock.seconds()
        self._backoff[addr] = _Backoff(failures, now + delay, str(error), refused)
        if len(self._backoff) > _MAX_BACKOFF_ENTRIES:
            # Addresses tried once and long since quiet (gone members,
            # seeds that moved) are forgotten.
            for old in [a for a, b in self._backoff.items() if now - b.until > self.backoff_max]:
                del self._backoff[old]

    def _wait_for_node(self, node: str, d: Deferred) -> None:
        conn = self._peers.get(node)
        if conn is not None and conn.usable:
            d.callback(conn)
            return
        waiters = self._node_waiters.setdefault(node, [])

        def expire() -> None:
            waiters[:] = [(w, t) for w, t in waiters if w is not d]
            d.errback(
                PeerUnreachable(f"{node} kept its own connection, which did not arrive in time")
            )

        waiters.append((d, self.clock.callLater(self.handshake_timeout, expire)))

    def _forget_waiter(self, d: Deferred) -> None:
        """
        A request waiting for a connection was cancelled (timed out):
        forget it wherever it waits.
        """
        for dial in self._dials.values():
            dial.waiters[:] = [(n, w) for n, w in dial.waiters if w is not d]
        for waiters in self._node_waiters.values():
            for w, timer in waiters:
                if w is d and timer.active():
                    timer.cancel()
            waiters[:] = [(w, t) for w, t in waiters if w is not d]

    def _dialing(self, node: str) -> bool:
        for dial in self._dials.values():
            if dial.expected == node:
                return True
            if dial.protocol is not None and dial.protocol.cert_node == node:
                return True
        return False

    def _hello(self) -> Hello:
        return Hello(PROTOCOL_VERSION, self.node_id, self.cluster_name, self.instance)

    def _hello_received(self, conn: _StreamProtocol, hello: Hello) -> None:
        peer = hello.node_id
        if hello.version != PROTOCOL_VERSION:
            conn.refuse(
                RefuseReason.VERSION,
                f"stream protocol version {hello.version} is not spoken here "
                f"(this node speaks {PROTOCOL_VERSION})",
            )
            return
        if hello.cluster != self.cluster_name:
            conn.refuse(
                RefuseReason.CLUSTER,
                f"cluster {hello.cluster!r} is not this node's cluster {self.cluster_name!r}",
            )
            return
        if peer != conn.cert_node:
            conn.refuse(
                RefuseReason.IDENTITY,
                f"it claims to be node {peer} but its certificate names {conn.cert_node}",
            )
            return
        if peer == self.node_id:
            conn.refuse(RefuseReason.SELF, f"{peer} is this node")
            return
        existing = self._peers.get(peer)
        if conn.outbound:
            assert conn.dial is not None
            expected = conn.dial.expected
            if expected is not None and peer != expected:
                conn.refuse(
                    RefuseReason.UNEXPECTED_NODE,
                    f"expected node {expected} at {conn.dial.addr}, found {peer}",
                )
                return
            # The peer accepted this connection although one to it exists:
            # by the rule it applies (the same as below), the new one wins
            # and the old one retires, here as there.
        else:
            same_run = existing is not None and existing.peer_instance == hello.instance
            if existing is not None and existing.usable and same_run:
                if existing.outbound and self.node_id < peer:
                    conn.refuse(
                        RefuseReason.DUPLICATE,
                        f"{self.node_id} already has a connection to {peer} and dialed it first",
                    )
                    self._probe(existing)
                    return
            elif self._dialing(peer) and self.node_id < peer:
                conn.refuse(
                    RefuseReason.DUPLICATE,
                    f"{self.node_id} is dialing {peer} too, and its connection wins",
                )
                return
            conn.send_frame(self._hello())
        if existing is not None and existing is not conn:
            if existing.peer_instance != hello.instance:
                log.info(
                    "{peer} restarted: closing its old stream",
                    peer=existing.describe(),
                )
                existing._close_with(None)
            else:
                self._retire(existing, grace=self.handshake_timeout)
        conn.peer_node = peer
        conn.peer_instance = hello.instance
        conn.became_ready()
        self._peers[peer] = conn
        self.counters["connections_ready"] += 1
        if conn.outbound:
            assert conn.dial is not None
            self._by_addr[conn.dial.addr] = conn
        log.info(
            "stream {direction} {peer} ready ({tls})",
            direction="to" if conn.outbound else "from",
            peer=conn.describe(),
            tls=_tls_version(conn),
        )
        if conn.outbound:
            assert conn.dial is not None
            self._finish_dial(conn.dial, conn=conn)
        for d, timer in self._node_waiters.pop(peer, []):
            if timer.active():
                timer.cancel()
            d.callback(conn)

    def _probe(self, conn: _StreamProtocol) -> None:
        """
        Ping a connection whose peer dialed again: close it if it is dead.
        """
        if conn.probing:
            return
        conn.probing = True
        d = conn.request(Kind.PING, b"")
        d.addTimeout(self.handshake_timeout, self.clock)

        def dead(failure: Failure) -> None:
            log.info("stream with {peer} is dead, closing it", peer=conn.describe())
            if conn.state != _CLOSED:
                conn.transport.abortConnection()

        def done(result: object) -> object:
            conn.probing = False
            return result

        d.addBoth(done).addErrback(dead)

    def _retire(self, conn: _StreamProtocol, grace: float = 0.0) -> None:
        if conn.peer_node is not None and self._peers.get(conn.peer_node) is conn:
            del self._peers[conn.peer_node]
        if conn.dial is not None and self._by_addr.get(conn.dial.addr) is conn:
            del self._by_addr[conn.dial.addr]
        conn.retire(grace)

    def _connection_made(self, conn: _StreamProtocol) -> None:
        self._connections.append(conn)
        self.counters["connections_opened" if conn.outbound else "connections_accepted"] += 1

    def _connection_lost(self, conn: _StreamProtocol, was: str, error: StreamError) -> None:
        if conn in self._connections:
            self._connections.remove(conn)
        if conn.peer_node is not None and self._peers.get(conn.peer_node) is conn:
            del self._peers[conn.peer_node]
        if conn.dial is not None and self._by_addr.get(conn.dial.addr) is conn:
            del self._by_addr[conn.dial.addr]
        if isinstance(error, PeerRefused) and error.reason == RefuseReason.TLS:
            self._count_refusal("tls", RefuseReason.TLS)
            log.warn("stream with {peer}: {error}", peer=conn.describe(), error=str(error))
        if conn.dial is not None and not conn.dial.done:
            self._finish_dial(conn.dial, error=error)
        if conn.was_ready:
            log.info("stream with {peer} closed", peer=conn.describe())
        if (
            was == _READY
            and conn.refusal is None
            and conn.peer_node is not None
            and self.accepting
            and self.on_peer_lost is not None
        ):
            # The peer went without a word (no shutdown frame): its process
            # may have died.  Membership probes it at once.
            try:
                self.on_peer_lost(conn.peer_node)
            except Exception:
                log.failure("on_peer_lost for {peer}", peer=conn.peer_node)

    def _count_refusal(self, side: str, reason: int) -> None:
        self.counters[f"refused_{side}_{_reason_name(reason)}"] += 1


def _tls_version(conn: _StreamProtocol) -> str:
    handle = getattr(conn.transport, "getHandle", None)
    if handle is None:
        return "TLS"
    try:
        return str(handle().get_protocol_version_name())
    except Exception:
        return "TLS"
