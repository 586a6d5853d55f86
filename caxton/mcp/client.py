# -*- test-case-name: tests.test_mcp_client -*-
"""
A Model Context Protocol client for the streamable HTTP transport, on treq.

The node reaches the operator's MCP servers through this client (SPEC 8).
It speaks the part of MCP a tool gateway needs: the C{initialize}
handshake, C{tools/list} and C{tools/call}, as JSON-RPC 2.0 over HTTP POST,
with no event loop or thread of its own: everything runs on the reactor it
is given.

The wire
========

Every JSON-RPC message is one POST to the server's URL with
C{Accept: application/json, text/event-stream} and
C{Content-Type: application/json}.  The server answers a request either
with an C{application/json} body holding the response, or with a
C{text/event-stream} whose C{data:} fields hold JSON-RPC messages; the
response carrying our request id ends the exchange (the client stops
reading there, even if the server keeps the stream open), and the
server's own notifications and requests on that stream are ignored: this
client declares no capability that a server request could need.  A
notification is answered with C{202 Accepted}.

A server may answer with a JSON-RPC error body at a 4xx status (the
official SDK answers C{404} for an unknown method, C{400} for bad
parameters); that body is read and becomes an L{McpError}.

Sessions
========

Nothing is sent before it is needed: the first call runs the handshake
(C{initialize}, offering L{LATEST_PROTOCOL_VERSION}; then the
C{notifications/initialized} notification).  A C{Mcp-Session-Id} header on
the C{initialize} response names the session, and every later request
carries it, with the negotiated C{MCP-Protocol-Version}.  Calls that arrive
while the handshake runs wait for it; there is one handshake at a time.

A server that restarts forgets its sessions and answers C{404} to the old
id; a server that went away refuses or drops the connection.  Either way
the client runs the handshake again and retries the call, once.  A
connection that fails before any byte of the response arrived is retried
too: that is the usual fate of a pooled keep-alive connection to a server
that restarted, but it also means that a tool whose server dropped the
connection after running it may, rarely, run twice (tools that keep state
should be idempotent; the example state server's are).

Bounds
======

Every public call fails with L{McpTimeout} when it has not finished within
C{timeout} seconds, handshake and retry included.  A response body larger
than C{max_body} bytes (8 MiB by default, measured after any content
decoding) is refused with L{McpUnreachable} and its connection closed.
C{tools/list} follows C{nextCursor} for at most L{MAX_TOOL_PAGES} pages.

Errors
======

  - L{McpUnreachable}: connection refused, reset or lost, DNS failure,
    HTTP error status (5xx, 401, ...), a body that is neither JSON nor an
    event stream, a handshake the server refused, a client already closed;
  - L{McpTimeout}: no answer in time;
  - L{McpProtocolError}: the server answered, but not with well-formed
    JSON-RPC or MCP;
  - L{McpError}: the server answered the request with a JSON-RPC error.

The bearer token, when given, goes in the C{Authorization} header and
nowhere else: it is never logged.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, List, Optional, Set

import attr
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from treq.client import HTTPClient
from zope.interface import Interface, implementer

from caxton import __version__

__all__ = [
    "IMcpClient",
    "LATEST_PROTOCOL_VERSION",
    "MAX_TOOL_PAGES",
    "McpClient",
    "McpClientError",
    "McpError",
    "McpProtocolError",
    "McpTimeout",
    "McpUnreachable",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "SseEvent",
    "SseParser",
]

LATEST_PROTOCOL_VERSION = "2025-11-25"
"""The MCP revision this client offers in C{initialize}."""

SUPPORTED_PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
"""
The MCP revisions this client accepts from a server: those that define the
streamable HTTP transport and the initialize handshake.  Their differences
(C{structuredContent} since 2025-06-18, for one) do not change the messages
this client sends.
"""

MAX_TOOL_PAGES = 32
"""At most this many C{tools/list} pages are followed."""

MAX_TOOLS = 4096
"""At most this many tools are accepted from one server."""

DEFAULT_MAX_BODY = 8 * 1024 * 1024
"""Default bound on one response body, in bytes."""

# Error bodies are read only to find a JSON-RPC error in them; a proxy's
# error page does not deserve 8 MiB.
_MAX_ERROR_BODY = 64 * 1024

# Closing a session is a courtesy; a server that does not answer quickly
# must not hold up the node's shutdown.
_CLOSE_TIMEOUT = 5.0

# MCP requires session ids to be visible ASCII.
_SESSION_ID = re.compile(r"^[\x21-\x7e]{1,1024}$")

_BOM = b"\xef\xbb\xbf"

# An event stream's line ends: CRLF, LF or CR.
_LINE_END = re.compile(rb"\r\n|\n|\r")

# The JSON-RPC code that tells an unknown method from an expired session
# when both come as HTTP 404.
METHOD_NOT_FOUND = -32601


class McpClientError(Exception):
    """
    Base of the errors an L{McpClient} call fails with.
    """


class McpUnreachable(McpClientError):
    """
    The server could not be reached or did not answer as an MCP server
    would: connection refused or lost, DNS failure, HTTP error status, a
    body of the wrong type or size, a refused handshake, a closed client.

    @ivar status: the HTTP status, when the server answered with one.
    """

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


class McpTimeout(McpClientError):
    """
    The call did not finish within the client's timeout.
    """


class McpProtocolError(McpClientError):
    """
    The server answered with something that is not well-formed JSON-RPC or
    MCP (bad JSON, a response without result or error, a result of the
    wrong shape, an unsupported protocol version, endless pagination).
    """


class McpError(McpClientError):
    """
    The server answered the request with a JSON-RPC error.

    @ivar code: the JSON-RPC error code.
    @ivar message: the server's error message.
    @ivar data: the error's C{data} member, or L{None}.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class IMcpClient(Interface):
    """
    A client of one MCP server: what L{caxton.mcp.gateway.ToolGateway}
    needs from one.
    """

    def initialize() -> Deferred:
        """
        Make sure a session exists (running the handshake if there is none).

        @return: a L{Deferred} firing with the server's C{initialize} result.
        """

    def list_tools() -> Deferred:
        """
        List the server's tools, following pagination.

        @return: a L{Deferred} firing with a list of tool objects (dicts with
            at least a C{name}).
        """

    def call_tool(name: str, arguments: Dict[str, Any]) -> Deferred:
        """
        Call one tool.

        @return: a L{Deferred} firing with the C{tools/call} result object.
        """

    def close() -> Deferred:
        """
        Fail calls in flight with L{McpUnreachable}, end the session and
        release connections.

        @return: a L{Deferred} firing with L{None} when done; it does not
            fail.
        """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class SseEvent:
    """
    One server-sent event.

    @ivar event: the event type (C{message} when the stream names none).
    @ivar data: the event's data, its C{data:} lines joined by newlines.
    @ivar id: the last event id seen, or L{None}.
    """

    event: str
    data: str
    id: Optional[str] = None


class SseParser:
    """
    A sans-I/O parser of the C{text/event-stream} format (the HTML
    specification's, which MCP uses): feed it bytes as they arrive, get
    complete events back.

    Lines end with CRLF, LF or CR; a line starting with a colon is a
    comment; an empty line dispatches the event being built, unless it has
    no data (as the priming events servers send for resumption).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._first = True
        self._event = ""
        self._data: List[str] = []
        self._last_id: Optional[str] = None
        self._skip_lf = False

    def feed(self, data: bytes) -> List[SseEvent]:
        """
        Take the next bytes of the stream.

        @return: the events completed by these bytes, in order.
        """
        if self._skip_lf and data.startswith(b"\n"):
            data = data[1:]
        self._skip_lf = False
        self._buffer += data
        if self._first:
            if len(self._buffer) < 3 and _BOM.startswith(self._buffer):
                return []
            self._first = False
            if self._buffer.startswith(_BOM):
                self._buffer = self._buffer[3:]
        events: List[SseEvent] = []
        start = 0
        for match in _LINE_END.finditer(self._buffer):
            line = self._buffer[start : match.start()].decode("utf-8", errors="replace")
            start = match.end()
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._buffer = self._buffer[start:]
        # A CR ends its line at once; an LF at the start of the next chunk
        # may belong to it (CRLF cut in two) and is then skipped.
        if start and not self._buffer and data.endswith(b"\r"):
            self._skip_lf = True
        return events

    def _line(self, line: str) -> Optional[SseEvent]:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(
                event=self._event or "message",
                data="\n".join(self._data),
                id=self._last_id,
            )
            self._event = ""
            self._data = []
            return event
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\x00" not in value:
            self._last_id = value
        # "retry" and unknown fields are ignored: this client does not
        # reconnect event streams.
        return None


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body already in memory, written in one go (treq's default
    producer for bytes would go through the global cooperator).
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


_MORE = object()


class _BodyReader(Protocol):
    """
    Reads one response body with a size bound, handing each chunk to
    C{on_chunk}; stops early (closing the connection) when C{on_chunk}
    returns something other than C{_MORE}.

    @ivar done: fires with what C{on_chunk} or C{on_end} returned, or fails
        with an L{McpClientError}.
    """

    def __init__(
        self,
        limit: int,
        expected_length: Any,
        on_chunk: Callable[[bytes], Any],
        on_end: Callable[[], Any],
    ) -> None:
        self.done: Deferred = Deferred(self._cancel)
        self._limit = limit
        self._expected_length = expected_length
        self._on_chunk = on_chunk
        self._on_end = on_end
        self._received = 0

    def connectionMade(self) -> None:
        if (
            self._expected_length is not UNKNOWN_LENGTH
            and self._expected_length > self._limit
        ):
            self._stop(self._too_large())

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._stop(self._too_large())
            return
        try:
            result = self._on_chunk(data)
        except McpClientError as error:
            self._stop(Failure(error))
            return
        if result is not _MORE:
            self._stop(result)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if reason is not None and reason.check(ResponseDone, PotentialDataLoss):
            try:
                result = self._on_end()
            except McpClientError as error:
                self.done.errback(error)
            else:
                self.done.callback(result)
        else:
            self.done.errback(
                McpUnreachable("connection lost while reading the response")
            )

    def _too_large(self) -> Failure:
        return Failure(
            McpUnreachable(f"response body larger than {self._limit} bytes refused")
        )

    def _stop(self, result: Any) -> None:
        # Fire first: stopping the transport may call connectionLost
        # synchronously, and that must find the reader done.
        if isinstance(result, Failure):
            self.done.errback(result)
        else:
            self.done.callback(result)
        if self.transport is not None:
            self.transport.stopProducing()

    def _cancel(self, done: Deferred) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Session:
    """
    What the handshake established.

    @ivar session_id: the server's C{Mcp-Session-Id}, or L{None} for a
        server that keeps no sessions.
    @ivar protocol_version: the negotiated MCP revision.
    @ivar server_result: the server's C{initialize} result.
    """

    session_id: Optional[str]
    protocol_version: str
    server_result: Dict[str, Any]


class _SessionLost(Exception):
    """
    The exchange failed in a way a new handshake may cure (the session
    expired, or the connection failed before the server answered).

    @ivar error: what to raise if no retry is left.
    """

    def __init__(self, error: McpClientError) -> None:
        super().__init__(str(error))
        self.error = error


def _is_cancellation(error: BaseException) -> bool:
    """
    Whether C{error} is what Twisted's HTTP client raises for a request
    that was cancelled (by us, for a timeout or a close) rather than for a
    network failure.
    """
    if isinstance(error, (CancelledError, ConnectingCancelledError)):
        return True
    if isinstance(error, (ResponseFailed, RequestTransmissionFailed)):
        return any(
            reason.check(CancelledError, ConnectingCancelledError)
            for reason in error.reasons
        )
    return False


def _content_type(headers: Any) -> str:
    value = headers.getRawHeaders(b"content-type", [b""])[0]
    return value.split(b";", 1)[0].strip().lower().decode("latin-1")


def _describe(error: BaseException) -> str:
    if isinstance(error, (ResponseFailed, RequestTransmissionFailed)) and error.reasons:
        return ", ".join(
            reason.getErrorMessage() or reason.type.__name__
            for reason in error.reasons
        )
    return str(error) or type(error).__name__


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise McpProtocolError(f"response is not valid JSON: {error}") from None


def _is_response(message: Any, request_id: int) -> bool:
    return (
        isinstance(message, dict)
        and message.get("id") == request_id
        and not isinstance(message.get("id"), bool)
        and "method" not in message
        and ("result" in message or "error" in message)
    )


def _find_response(payload: Any, request_id: int) -> Optional[Dict[str, Any]]:
    """
    The response to C{request_id} in a decoded JSON body: the body itself,
    or a member of a batch.
    """
    candidates = payload if isinstance(payload, list) else [payload]
    for message in candidates:
        if _is_response(message, request_id):
            return message
    return None


def _result_of(message: Dict[str, Any]) -> Dict[str, Any]:
    """
    The C{result} of a JSON-RPC response, or the L{McpError} it carries.
    """
    if message.get("jsonrpc") != "2.0":
        raise McpProtocolError("response is not JSON-RPC 2.0")
    if "error" in message:
        raise _error_of(message["error"])
    result = message.get("result")
    if not isinstance(result, dict):
        raise McpProtocolError("response result is not an object")
    return result


def _error_of(error: Any) -> McpError:
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), int)
        or isinstance(error.get("code"), bool)
        or not isinstance(error.get("message"), str)
    ):
        raise McpProtocolError("malformed JSON-RPC error object")
    return McpError(error["code"], error["message"], error.get("data"))


@implementer(IMcpClient)
class McpClient:
    """
    A client of one MCP server over streamable HTTP (see the module
    docstring for the protocol, its sessions and its bounds).

    Constructing one does no I/O; the first call runs the handshake.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        name: str,
        url: str,
        token: Optional[str] = None,
        http: Any = None,
        timeout: float = 30.0,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        """
        @param reactor: the reactor (time, TCP and, for C{https} URLs, TLS).
        @param name: the server's name in the node's configuration, for
            logs and error messages.
        @param url: the server's MCP endpoint (C{http://} or C{https://}).
        @param token: a bearer token to send, or L{None}.
        @param http: a C{treq.client.HTTPClient} to use; by default the
            client makes its own, with a persistent connection pool that
            L{close} closes.
        @param timeout: seconds each public call may take.
        @param max_body: the largest response body accepted, in bytes.
        """
        self.name = name
        self.url = url
        self._reactor = reactor
        self._token = token
        self._timeout = timeout
        self._max_body = max_body
        self._pool: Optional[HTTPConnectionPool] = None
        if http is None:
            # Constructing a pool and an agent does no I/O.
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            http = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = http
        self._next_id = 0
        self._session: Optional[_Session] = None
        self._handshake_running: Optional[Deferred] = None
        self._handshake_waiters: List[Deferred] = []
        self._in_flight: Set[Deferred] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<McpClient {self.name} {self.url}>"

    # Public API

    def initialize(self) -> Deferred:
        """
        Make sure a session exists, running the handshake if there is none.

        @return: a L{Deferred} firing with the server's C{initialize}
            result (its C{protocolVersion}, C{capabilities},
            C{serverInfo}, ...).
        """
        return self._operation("initialize", self._initialize)

    def list_tools(self) -> Deferred:
        """
        List the server's tools, following C{nextCursor} for at most
        L{MAX_TOOL_PAGES} pages.

        @return: a L{Deferred} firing with the tool objects as the server
            sent them (dicts, each with a string C{name}; C{description},
            C{inputSchema} and the rest as the server gave them).
        """
        return self._operation("tools/list", self._list_tools)

    def call_tool(self, name: str, arguments: Dict[str, Any]) -> Deferred:
        """
        Call the tool C{name} with C{arguments}.

        @return: a L{Deferred} firing with the C{tools/call} result as the
            server sent it (C{content}, maybe C{structuredContent}, maybe
            C{isError}: a tool's own failure is a result, not an error).
        """
        return self._operation(
            "tools/call",
            lambda: self._request("tools/call", {"name": name, "arguments": arguments}),
        )

    def close(self) -> Deferred:
        """
        Fail the calls in flight with L{McpUnreachable}, end the session
        with a best-effort C{DELETE}, and close the connection pool the
        client made.  Calls after this fail with L{McpUnreachable}.

        @return: a L{Deferred} firing with L{None}; it does not fail.
        """
        if self._closed:
            return succeed(None)
        self._closed = True
        for operation in list(self._in_flight):
            operation.cancel()
        if self._handshake_running is not None:
            self._handshake_running.cancel()
        session, self._session = self._session, None
        return Deferred.fromCoroutine(self._finish_close(session))

    # The operations

    def _operation(self, what: str, run: Callable[[], Any]) -> Deferred:
        """
        Run one public call: refuse it on a closed client, bound it by the
        timeout, turn its cancellation by L{close} into L{McpUnreachable}.
        """
        if self._closed:
            return _failed(McpUnreachable(f"MCP client for {self.name} is closed"))
        operation = Deferred.fromCoroutine(run())
        self._in_flight.add(operation)

        def timed_out(result: Any, timeout: float) -> Failure:
            self.log.info(
                "MCP server {server}: {method} timed out after {timeout}s",
                server=self.name,
                method=what,
                timeout=timeout,
            )
            return Failure(
                McpTimeout(f"{what} on MCP server {self.name} took longer than {timeout}s")
            )

        def closed(failure: Failure) -> Failure:
            if self._closed and failure.check(CancelledError):
                return Failure(McpUnreachable(f"MCP client for {self.name} is closed"))
            return failure

        def done(result: Any) -> Any:
            self._in_flight.discard(operation)
            return result

        operation.addTimeout(self._timeout, self._reactor, onTimeoutCancel=timed_out)
        operation.addErrback(closed)
        operation.addBoth(done)
        return operation

    async def _initialize(self) -> Dict[str, Any]:
        session = await self._session_ready()
        return session.server_result

    async def _list_tools(self) -> List[Dict[str, Any]]:
        tools: List[Dict[str, Any]] = []
        cursor: Optional[str] = None
        seen: Set[str] = set()
        for _ in range(MAX_TOOL_PAGES):
            params = {} if cursor is None else {"cursor": cursor}
            result = await self._request("tools/list", params)
            page = result.get("tools")
            if not isinstance(page, list):
                raise McpProtocolError("tools/list result has no tools list")
            for tool in page:
                if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                    raise McpProtocolError("tools/list holds a tool without a name")
                tools.append(tool)
            if len(tools) > MAX_TOOLS:
                raise McpProtocolError(f"server lists more than {MAX_TOOLS} tools")
            cursor = result.get("nextCursor")
            if cursor is None or cursor == "":
                return tools
            if not isinstance(cursor, str) or cursor in seen:
                raise McpProtocolError("tools/list pagination cursor is invalid or repeats")
            seen.add(cursor)
        raise McpProtocolError(f"tools/list has more than {MAX_TOOL_PAGES} pages")

    async def _request(self, method: str, params: Dict[str, Any]) -> Dict[str, Any]:
        """
        One JSON-RPC request in the current session, with one new handshake
        and retry if the session turns out lost.
        """
        session = await self._session_ready()
        try:
            return await self._exchange(method, params, session)
        except _SessionLost as lost:
            self.log.info(
                "MCP server {server}: {problem}; starting a new session",
                server=self.name,
                problem=str(lost.error),
            )
            if self._session is session:
                self._session = None
        session = await self._session_ready()
        try:
            return await self._exchange(method, params, session)
        except _SessionLost as lost:
            if self._session is session:
                self._session = None
            raise lost.error

    # The handshake

    def _session_ready(self) -> Deferred:
        """
        The current session, or the one the (single, shared) handshake is
        making.  Each caller waits on a Deferred of its own, so a caller
        that gives up does not cancel the handshake the others wait for.
        """
        if self._closed:
            return _failed(McpUnreachable(f"MCP client for {self.name} is closed"))
        if self._session is not None:
            return succeed(self._session)
        waiter: Deferred = Deferred(self._forget_waiter)
        self._handshake_waiters.append(waiter)
        if self._handshake_running is None:
            running = Deferred.fromCoroutine(self._handshake())
            self._handshake_running = running

            def timed_out(result: Any, timeout: float) -> Failure:
                return Failure(
                    McpTimeout(
                        f"initialize on MCP server {self.name} took longer than {timeout}s"
                    )
                )

            running.addTimeout(self._timeout, self._reactor, onTimeoutCancel=timed_out)
            running.addBoth(self._handshake_done)
        return waiter

    def _forget_waiter(self, waiter: Deferred) -> None:
        if waiter in self._handshake_waiters:
            self._handshake_waiters.remove(waiter)

    def _handshake_done(self, result: Any) -> None:
        self._handshake_running = None
        if isinstance(result, Failure) and result.check(CancelledError):
            result = Failure(McpUnreachable(f"MCP client for {self.name} is closed"))
        if isinstance(result, _Session):
            if self._closed:
                result = Failure(McpUnreachable(f"MCP client for {self.name} is closed"))
            else:
                self._session = result
        waiters, self._handshake_waiters = self._handshake_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _handshake(self) -> _Session:
        params = {
            "protocolVersion": LATEST_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "caxton", "version": __version__},
        }
        try:
            result, headers = await self._exchange_once(
                "initialize", params, session=None
            )
            version = result.get("protocolVersion")
            if version not in SUPPORTED_PROTOCOL_VERSIONS:
                raise McpProtocolError(
                    f"MCP server {self.name} speaks protocol version {version!r}; "
                    f"this client speaks {', '.join(SUPPORTED_PROTOCOL_VERSIONS)}"
                )
            session_id = None
            raw = headers.getRawHeaders(b"mcp-session-id")
            if raw:
                session_id = raw[0].decode("latin-1")
                if not _SESSION_ID.match(session_id):
                    raise McpProtocolError("server sent an invalid Mcp-Session-Id")
            session = _Session(session_id, version, result)
            await self._exchange_once(
                "notifications/initialized", None, session=session, notification=True
            )
        except _SessionLost as lost:
            raise lost.error
        except McpError as error:
            # A server that refuses the handshake is not usable at all; that
            # is not the tool's error.
            raise McpUnreachable(
                f"MCP server {self.name} refused the handshake: {error.message}"
            )
        self.log.info(
            "MCP server {server} initialized (protocol {protocol_version}, "
            "session {has_session})",
            server=self.name,
            protocol_version=version,
            has_session=session_id is not None,
        )
        return session

    # One HTTP exchange

    async def _exchange(
        self, method: str, params: Dict[str, Any], session: _Session
    ) -> Dict[str, Any]:
        result, _ = await self._exchange_once(method, params, session=session)
        return result

    async def _exchange_once(
        self,
        method: str,
        params: Optional[Dict[str, Any]],
        session: Optional[_Session],
        notification: bool = False,
    ) -> Any:
        """
        POST one JSON-RPC message and read its answer.

        @return: (the response's result, the response headers), or
            (L{None}, headers) for a notification.
        @raise _SessionLost: the session expired or the connection failed
            before the server answered.
        """
        message: Dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        request_id = None
        if not notification:
            self._next_id += 1
            request_id = self._next_id
            message["id"] = request_id
        if params is not None:
            message["params"] = params
        # ASCII escapes keep lone surrogates (valid in JSON text an agent
        # sent) encodable.
        body = json.dumps(message, separators=(",", ":"))
        headers = self._headers(session)
        try:
            response = await self._http.request(
                "POST",
                self.url,
                headers=headers,
                data=_BytesProducer(body.encode("ascii")),
                allow_redirects=False,
                unbuffered=True,
                reactor=self._reactor,
            )
        except Exception as error:
            if _is_cancellation(error):
                raise CancelledError() from None
            if isinstance(error, ResponseFailed) and not isinstance(
                error, ResponseNeverReceived
            ):
                raise McpUnreachable(
                    f"MCP server {self.name} dropped the connection: {_describe(error)}"
                ) from None
            if isinstance(
                error, (ConnectError, ResponseNeverReceived, RequestTransmissionFailed)
            ):
                raise _SessionLost(
                    McpUnreachable(
                        f"cannot reach MCP server {self.name}: {_describe(error)}"
                    )
                ) from None
            raise McpUnreachable(
                f"cannot reach MCP server {self.name}: {_describe(error)}"
            ) from None

        status = response.code
        content_type = _content_type(response.headers)
        if status >= 300 or (notification and status not in (200, 202, 204)):
            await self._http_error(response, status, content_type, session)
        if notification:
            await self._read(response, _MAX_ERROR_BODY, _collect_all, tolerant=True)
            return None, response.headers
        if status == 202 or status == 204:
            await self._read(response, _MAX_ERROR_BODY, _collect_all, tolerant=True)
            raise McpProtocolError(
                f"MCP server {self.name} answered request {method} with no response"
            )
        if content_type == "application/json":
            payload = await self._read(response, self._max_body, _collect_all)
            answer = _find_response(_decode_json(payload), request_id)
            if answer is None:
                raise McpProtocolError(
                    f"MCP server {self.name} answered {method} without a response "
                    "to the request"
                )
        elif content_type == "text/event-stream":
            answer = await self._read(
                response, self._max_body, _event_stream_finder(request_id, self)
            )
        else:
            await self._read(response, _MAX_ERROR_BODY, _collect_all, tolerant=True)
            raise McpUnreachable(
                f"MCP server {self.name} answered with content type "
                f"{content_type or 'none'!r}",
                status=status,
            )
        result = _result_of(answer)
        return result, response.headers

    async def _http_error(
        self,
        response: Any,
        status: int,
        content_type: str,
        session: Optional[_Session],
    ) -> None:
        """
        Turn an HTTP error status into the right exception, reading a
        JSON-RPC error from the body if the server sent one.
        """
        body = await self._read(response, _MAX_ERROR_BODY, _collect_all, tolerant=True)
        error: Optional[McpError] = None
        if content_type == "application/json" and body:
            try:
                payload = json.loads(body.decode("utf-8"))
                if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                    error = _error_of(payload["error"])
            except (ValueError, McpProtocolError):
                error = None
        if (
            status == 404
            and session is not None
            and session.session_id is not None
            and (error is None or error.code != METHOD_NOT_FOUND)
        ):
            raise _SessionLost(
                McpUnreachable(
                    f"MCP server {self.name} no longer knows the session", status=404
                )
            )
        if error is not None:
            raise error
        hint = " (check its token)" if status in (401, 403) else ""
        raise McpUnreachable(
            f"MCP server {self.name} answered HTTP {status}{hint}", status=status
        )

    async def _read(
        self,
        response: Any,
        limit: int,
        make: Callable[[], Any],
        tolerant: bool = False,
    ) -> Any:
        """
        Read a response body through a L{_BodyReader}.

        @param make: returns (on_chunk, on_end) for the reader.
        @param tolerant: return C{b""} instead of failing (for bodies read
            only to free the connection or to look for an error).
        """
        on_chunk, on_end = make()
        reader = _BodyReader(limit, response.length, on_chunk, on_end)
        response.deliverBody(reader)
        if not tolerant:
            return await reader.done
        try:
            return await reader.done
        except McpClientError:
            return b""

    def _headers(self, session: Optional[_Session]) -> Dict[bytes, List[bytes]]:
        headers = {
            b"Accept": [b"application/json, text/event-stream"],
            b"Content-Type": [b"application/json"],
            b"User-Agent": [f"caxton/{__version__}".encode("ascii")],
        }
        if self._token is not None:
            headers[b"Authorization"] = [b"Bearer " + self._token.encode("utf-8")]
        if session is not None:
            if session.session_id is not None:
                headers[b"Mcp-Session-Id"] = [session.session_id.encode("latin-1")]
            headers[b"MCP-Protocol-Version"] = [session.protocol_version.encode("ascii")]
        return headers

    async def _finish_close(self, session: Optional[_Session]) -> None:
        if session is not None and session.session_id is not None:
            request = self._http.request(
                "DELETE",
                self.url,
                headers=self._headers(session),
                allow_redirects=False,
                unbuffered=True,
                reactor=self._reactor,
            )
            request.addTimeout(_CLOSE_TIMEOUT, self._reactor)
            try:
                response = await request
                await self._read(response, _MAX_ERROR_BODY, _collect_all, tolerant=True)
            except Exception as error:
                # Best effort: the server forgets idle sessions anyway.
                self.log.debug(
                    "MCP server {server}: closing the session failed: {error}",
                    server=self.name,
                    error=_describe(error),
                )
        if self._pool is not None:
            await self._pool.closeCachedConnections()


def _failed(error: Exception) -> Deferred:
    failed: Deferred = Deferred()
    failed.errback(error)
    return failed


def _collect_all() -> tuple:
    """
    Reader callbacks that collect the whole body.
    """
    chunks: List[bytes] = []

    def on_chunk(data: bytes) -> Any:
        chunks.append(data)
        return _MORE

    return on_chunk, lambda: b"".join(chunks)


def _event_stream_finder(request_id: int, client: McpClient) -> Callable[[], tuple]:
    """
    Reader callbacks that parse an event stream and stop at the response
    to C{request_id}, ignoring the server's notifications and requests.
    """

    def make() -> tuple:
        parser = SseParser()

        def on_chunk(data: bytes) -> Any:
            for event in parser.feed(data):
                # Priming events (for resumption) carry an id and no data.
                if event.event != "message" or not event.data.strip():
                    continue
                message = _decode_json(event.data.encode("utf-8"))
                if _is_response(message, request_id):
                    return message
                client.log.debug(
                    "MCP server {server}: ignoring a message on the event stream",
                    server=client.name,
                )
            return _MORE

        def on_end() -> Any:
            raise McpUnreachable(
                f"MCP server {client.name} ended the event stream before answering"
            )

        return on_chunk, on_end

    return make
