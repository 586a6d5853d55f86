# -*- test-case-name: tests.test_api_site -*-
"""
The HTTP site the API is served from: capped request bodies, timeouts, and
protection from slow clients.

twisted.web buffers a whole request body before any resource sees it and
sets no limit of its own, so the cap is enforced here, while the body
arrives: a declared C{Content-Length} over the cap is refused before its
first byte is read, and a chunked body is refused as soon as it passes the
cap.  Either way the client gets 413 C{PAYLOAD_TOO_LARGE} and the
connection is closed, so an oversized upload costs the node nothing more.

Slow clients (slowloris and the like) are bounded three ways:

  - the idle timeout (C{http.timeout}): a connection that sends nothing
    for that long while no request is being answered is closed;
  - a deadline per request (C{http.request_timeout}): from the first byte
    of a request, its line, headers and body must all have arrived within
    that time, however the bytes trickle in, or the client gets 408 and
    the connection is closed.  A body earns one more second per
    C{http.min_body_rate} bytes received, so a large upload at a decent
    rate finishes while a trickle does not;
  - a cap on open connections per client address
    (C{http.max_connections_per_client}); past it a new connection gets
    429 C{RATE_LIMITED} and is closed.  Loopback and Unix-socket clients
    are not counted: they are the node's own host (a local reverse proxy
    carries many clients on one address).

A site may also have a I{gate} (L{caxton.auth.resource.Gatekeeper.early}):
called when a request's headers are complete and a body is announced, it
can refuse the request (a missing or bad token) before the body is read,
so nobody without a key can make the node buffer a body at all.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger
from twisted.internet.protocol import Protocol
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

log = Logger()

#: Seconds a refused or timed-out client gets to read its answer before
#: its connection is dropped.
ABORT_AFTER = 5.0


def raw_response(
    status: int, reason: str, code: str, message: str, headers: Sequence[Tuple[str, str]] = ()
) -> bytes:
    """
    A whole HTTP/1.1 response with an error in the SPEC 6 shape, that
    closes the connection: for answers written before (or instead of) a
    request's resource.
    """
    body = json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")
    lines = [f"HTTP/1.1 {status} {reason}".encode("ascii"), b"Content-Type: application/json",
             b"Connection: close"]
    for name, value in headers:
        lines.append(f"{name}: {value}".encode("latin-1"))
    lines.append(b"Content-Length: %d" % (len(body),))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _payload_too_large(limit: int) -> bytes:
    return raw_response(
        413, "Payload Too Large", "PAYLOAD_TOO_LARGE", f"request body is larger than {limit} bytes"
    )


def client_host(address: Any) -> Optional[str]:
    """
    The IP address of a TCP client, IPv4-mapped IPv6 addresses written as
    IPv4; C{None} for anything else (a Unix socket).
    """
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return None
    try:
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return address.host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def is_local(address: Any) -> bool:
    """
    Whether a client is on the node's own host: a loopback address
    (127.0.0.0/8, ::1, or IPv4-mapped loopback) or a Unix socket.  Only
    the connection's own address counts, never C{X-Forwarded-For}.
    """
    if isinstance(address, UNIXAddress):
        return True
    host = client_host(address)
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CappedRequest(Request):
    """
    A request that refuses bodies larger than C{max_body} bytes, and
    (with a site gate) requests the gate refuses, before their body.
    """

    max_body = 32 * 1024 * 1024
    _received = 0
    _refused = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        # The API parses multipart bodies itself, off the reactor thread and
        # for PUT as well as POST; Twisted would parse every POST form into
        # request.args on the reactor thread first.
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)

    def gotLength(self, length: Optional[int]) -> None:
        """
        Refuse a declared length over the cap before reading the body, or
        a request the site's gate refuses.
        """
        if length is not None and length > self.max_body:
            self._refuse(_payload_too_large(self.max_body))
            length = 0
        elif length != 0:
            refusal = self._gate()
            if refusal is not None:
                self._refuse(refusal)
                length = 0
        super().gotLength(length)

    def _gate(self) -> Optional[bytes]:
        gate = getattr(getattr(self.channel, "site", None), "gate", None)
        # The request line is kept by the channel until the body is in.
        method = getattr(self.channel, "_command", None)
        uri = getattr(self.channel, "_path", None)
        if gate is None or method is None or uri is None:
            return None
        try:
            return gate(method, uri, self.requestHeaders, self.channel.transport.getPeer())
        except Exception:
            # The resource decides again when the request is rendered.
            log.failure("the site's gate failed on {method} {uri}", method=method, uri=uri)
            return None

    def handleContentChunk(self, data: bytes) -> None:
        """
        Keep a chunk, or refuse the request once the body passes the cap.
        """
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse(_payload_too_large(self.max_body))
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Process the request, unless it was already refused.
        """
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self, response: bytes) -> None:
        if self._refused:
            return
        self._refused = True
        refuse = getattr(self.channel, "refuse", None)
        if refuse is not None:
            refuse(response)
        else:
            self.channel.transport.write(response)
            self.channel.loseConnection()


class GuardedChannel(HTTPChannel):
    """
    An HTTP/1.1 channel with a deadline for receiving each request, that
    tells its site when it closes (for the per-client count).

    @ivar request_timeout: seconds from a request's first byte until the
        whole of it must have arrived; C{None} for no deadline.
    @ivar min_body_rate: bytes of body that earn one more second.
    @ivar client_host: the address this connection is counted under, if
        it is counted.
    """

    request_timeout: Optional[float] = None
    min_body_rate: Optional[int] = None
    client_host: Optional[str] = None
    _deadline: Any = None
    _answering = False
    _cut = False
    _abort: Any = None

    def dataReceived(self, data: bytes) -> None:
        """
        Start the deadline at the first byte of a request.
        """
        if self._cut:
            return
        if data and self._deadline is None and not self._answering and self.request_timeout:
            self._deadline = self.callLater(self.request_timeout, self._too_slow)
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        """
        Body bytes push the deadline back at C{min_body_rate}.
        """
        if self._cut:
            return
        if self._deadline is not None and self.min_body_rate:
            self._deadline.delay(len(data) / self.min_body_rate)
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        """
        The request is in: no deadline while it is answered.
        """
        self._stop_deadline()
        self._answering = True
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        """
        The answer is out: the next byte starts the next deadline.
        """
        self._answering = False
        super().requestDone(request)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        log.info("request from {peer} not received within {timeout}s; closing",
                 peer=str(self.transport.getPeer()), timeout=self.request_timeout)
        self.refuse(raw_response(
            408, "Request Timeout", "INVALID_REQUEST",
            f"the request was not received within {self.request_timeout:g}s",
        ))

    def refuse(self, response: bytes) -> None:
        """
        Write C{response} (a whole HTTP response), read nothing more, and
        close the connection; drop it if the client does not take the
        answer within L{ABORT_AFTER} seconds.
        """
        if self._cut:
            return
        self._cut = True
        self._stop_deadline()
        self.transport.write(response)
        self.loseConnection()
        self._abort = self.callLater(ABORT_AFTER, self.transport.abortConnection)

    def connectionLost(self, reason: Any) -> None:
        """
        Stop the timers and give the connection back to the site's count.
        """
        self._stop_deadline()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        if self.client_host is not None:
            release = getattr(self.site, "release", None)
            if release is not None:
                release(self.client_host)
            self.client_host = None
        super().connectionLost(reason)


class _TooManyConnections(Protocol):
    """
    Answers 429 and closes: a client already has its share of connections.
    """

    _abort: Any = None

    def connectionMade(self) -> None:
        self.transport.write(raw_response(
            429, "Too Many Requests", "RATE_LIMITED",
            "too many open connections from this address", [("Retry-After", "1")],
        ))
        self.transport.loseConnection()
        self._abort = self.factory.reactor.callLater(ABORT_AFTER, self.transport.abortConnection)

    def connectionLost(self, reason: Any) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()


class GuardedSite(Site):
    """
    A L{Site} of L{GuardedChannel}s that caps open connections per client
    address.

    @ivar connections: open connections by client address, shared by the
        sites of one node.
    @ivar gate: called with C{(method, uri, headers, peer)} when a request
        announces a body; a whole response (bytes) refuses it.
    """

    protocol = GuardedChannel
    request_timeout: Optional[float] = None
    min_body_rate: Optional[int] = None
    max_connections_per_client: Optional[int] = None
    gate: Optional[Callable[..., Optional[bytes]]] = None

    def __init__(self, resource: Any, connections: Optional[Dict[str, int]] = None, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.connections: Dict[str, int] = connections if connections is not None else {}

    def buildProtocol(self, addr: Any) -> Any:
        """
        A channel for a new connection, or a refusal when its address has
        too many open already.
        """
        host = None if is_local(addr) else client_host(addr)
        limit = self.max_connections_per_client
        if host is not None and limit and self.connections.get(host, 0) >= limit:
            log.debug("refused a connection from {host}: {limit} open already", host=host, limit=limit)
            protocol = _TooManyConnections()
            protocol.factory = self
            return protocol
        channel = super().buildProtocol(addr)
        channel.request_timeout = self.request_timeout
        channel.min_body_rate = self.min_body_rate
        if host is not None and limit:
            self.connections[host] = self.connections.get(host, 0) + 1
            channel.client_host = host
        return channel

    def release(self, host: str) -> None:
        """
        A counted connection from C{host} closed.
        """
        left = self.connections.get(host, 0) - 1
        if left > 0:
            self.connections[host] = left
        else:
            self.connections.pop(host, None)


def make_site(
    resource: Any,
    max_body: int,
    timeout: float,
    request_timeout: Optional[float] = None,
    min_body_rate: Optional[int] = None,
    max_connections_per_client: Optional[int] = None,
    connections: Optional[Dict[str, int]] = None,
    gate: Optional[Callable[..., Optional[bytes]]] = None,
    reactor: Any = None,
) -> Site:
    """
    A site for C{resource}.

    @param max_body: the largest request body, in bytes.
    @param timeout: close connections idle this many seconds.
    @param request_timeout: each request must arrive whole within this many
        seconds of its first byte (C{None}: no deadline).
    @param min_body_rate: body bytes that earn one more second.
    @param max_connections_per_client: open connections allowed per
        non-local client address (C{None}: no cap).
    @param connections: the count of open connections, to share it between
        the sites of one node.
    @param gate: refuses requests before their body is read (see
        L{GuardedSite.gate}).
    @param reactor: for timers (default: the global one, at start).
    """
    request_factory = type("CappedRequest", (CappedRequest,), {"max_body": max_body})
    kwargs: Dict[str, Any] = {"timeout": timeout}
    if reactor is not None:
        kwargs["reactor"] = reactor
    site = GuardedSite(resource, connections=connections, **kwargs)
    site.requestFactory = request_factory
    site.displayTracebacks = False
    site.request_timeout = request_timeout
    site.min_body_rate = min_body_rate
    site.max_connections_per_client = max_connections_per_client
    site.gate = gate
    return site
