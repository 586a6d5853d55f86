"""
Tests for L{caxton.mcp.client}: the event-stream parser (examples and
hypothesis), and L{McpClient} over real HTTP on loopback against an
in-process fake MCP server written with twisted.web, plus one test against
a real server built on the official C{mcp} SDK when it is installed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from caxton.mcp.client import (
    LATEST_PROTOCOL_VERSION,
    IMcpClient,
    McpClient,
    McpError,
    McpProtocolError,
    McpTimeout,
    McpUnreachable,
    SseEvent,
    SseParser,
)

# --- the event-stream parser -----------------------------------------------


class SseParserTests(SynchronousTestCase):
    """
    L{SseParser} follows the HTML event-stream format MCP servers use.
    """

    def test_events(self) -> None:
        """
        Events end at a blank line; C{data:} lines join with newlines; one
        space after the colon is dropped; comments and unknown fields are
        ignored; the event type and last id are reported.
        """
        parser = SseParser()
        events = parser.feed(
            b": a comment\n"
            b"event: message\nid: 7\ndata: {\"a\":\ndata:1}\nretry: 10\nfoo: bar\n\n"
            b"data:  two spaces\n\n"
        )
        self.assertEqual(
            events,
            [
                SseEvent("message", '{"a":\n1}', "7"),
                SseEvent("message", " two spaces", "7"),
            ],
        )

    def test_line_endings(self) -> None:
        """
        CRLF, CR and LF all end lines, and a byte-order mark at the start
        of the stream is skipped.
        """
        parser = SseParser()
        events = parser.feed(b"\xef\xbb\xbfdata: a\r\n\r\ndata: b\r\rdata: c\n\n")
        self.assertEqual([e.data for e in events], ["a", "b", "c"])

    def test_event_without_data(self) -> None:
        """
        A block with no C{data:} line (a priming event carrying only an
        id) dispatches nothing, and its event type does not leak into the
        next event.
        """
        parser = SseParser()
        events = parser.feed(b"id: 1\nevent: ping\n\ndata: x\n\n")
        self.assertEqual(events, [SseEvent("message", "x", "1")])

    def test_incomplete(self) -> None:
        """
        An event is reported only once its blank line arrives, and a CRLF
        cut between two chunks is one line end, not two.
        """
        parser = SseParser()
        self.assertEqual(parser.feed(b"data: x\r"), [])
        self.assertEqual(parser.feed(b"\n"), [])
        self.assertEqual(parser.feed(b"\n"), [SseEvent("message", "x")])

    @given(
        st.lists(
            st.text(
                alphabet=st.characters(blacklist_characters="\r\n", codec="utf-8"),
                max_size=30,
            ),
            min_size=1,
            max_size=8,
        ),
        st.sampled_from([b"\n", b"\r\n", b"\r"]),
        st.lists(st.integers(0, 10_000), max_size=12),
    )
    def test_chunking_does_not_matter(
        self, datas: List[str], newline: bytes, cuts: List[int]
    ) -> None:
        """
        However the stream is cut into chunks, the parser reports the same
        events, each with the data that was sent.
        """
        stream = b"".join(
            b"data: " + data.encode("utf-8") + newline + newline for data in datas
        )
        points = sorted({cut % (len(stream) + 1) for cut in cuts})
        chunks = [stream[a:b] for a, b in zip([0] + points, points + [len(stream)])]
        parser = SseParser()
        events: List[SseEvent] = []
        for chunk in chunks:
            events.extend(parser.feed(chunk))
        self.assertEqual([e.data for e in events], datas)


# --- a fake MCP server -------------------------------------------------------


def _text(text: str) -> Dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


class FakeMcpServer(Resource):
    """
    An MCP server over streamable HTTP, small enough to steer: it keeps
    sessions, pages its tool list two tools at a time, and its tools
    misbehave on demand.

    @ivar seen: every POSTed JSON-RPC message, with its request headers.
    @ivar deletes: the session ids of DELETE requests.
    @ivar pending: requests left unanswered, finished at cleanup.
    """

    isLeaf = True

    TOOLS = [
        {"name": "echo", "description": "Echo", "inputSchema": {"type": "object"}},
        {"name": "sse", "inputSchema": {"type": "object"}},
        {"name": "fails", "inputSchema": {"type": "object"}},
        {"name": "huge", "inputSchema": {"type": "object"}},
        {"name": "silent", "inputSchema": {"type": "object"}},
    ]

    def __init__(self) -> None:
        super().__init__()
        self.seen: List[Dict[str, Any]] = []
        self.deletes: List[Optional[str]] = []
        self.pending: List[Any] = []
        self.sessions: set = set()
        self.initializes = 0
        self.protocol_version = LATEST_PROTOCOL_VERSION
        self.expire_next = False
        self.drop_next = False
        self.use_sessions = True

    def render_DELETE(self, request: Any) -> bytes:
        session = request.getHeader("mcp-session-id")
        self.deletes.append(session)
        self.sessions.discard(session)
        return b""

    def render_POST(self, request: Any) -> Any:
        message = json.loads(request.content.read())
        headers = {
            name.decode("latin-1").lower(): value[0].decode("latin-1")
            for name, value in request.requestHeaders.getAllRawHeaders()
        }
        self.seen.append({"message": message, "headers": headers})
        method = message.get("method")
        if method == "initialize":
            return self._initialize(request, message)
        if self.use_sessions and headers.get("mcp-session-id") not in self.sessions:
            return self._error(request, 404, None, -32600, "Session not found")
        if self.expire_next:
            self.expire_next = False
            self.sessions.clear()
            return self._error(request, 404, None, -32600, "Session not found")
        if self.drop_next:
            self.drop_next = False
            request.transport.abortConnection()
            return NOT_DONE_YET
        if "id" not in message:
            request.setResponseCode(202)
            return b""
        if method == "tools/list":
            return self._list(request, message)
        if method == "tools/call":
            return self._call(request, message)
        return self._error(request, 404, message["id"], -32601, "Method not found")

    def _initialize(self, request: Any, message: Dict[str, Any]) -> bytes:
        self.initializes += 1
        if self.use_sessions:
            session = f"session-{self.initializes}"
            self.sessions.add(session)
            request.setHeader("mcp-session-id", session)
        return self._result(
            request,
            message["id"],
            {
                "protocolVersion": self.protocol_version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "fake", "version": "1"},
            },
        )

    def _list(self, request: Any, message: Dict[str, Any]) -> bytes:
        start = int(message.get("params", {}).get("cursor", "0"))
        result: Dict[str, Any] = {"tools": self.TOOLS[start : start + 2]}
        if start + 2 < len(self.TOOLS):
            result["nextCursor"] = str(start + 2)
        return self._result(request, message["id"], result)

    def _call(self, request: Any, message: Dict[str, Any]) -> Any:
        name = message["params"]["name"]
        arguments = message["params"].get("arguments", {})
        if name == "echo":
            return self._result(
                request, message["id"], {**_text("echoed"), "structuredContent": arguments}
            )
        if name == "fails":
            return self._result(request, message["id"], {**_text("disk full"), "isError": True})
        if name == "huge":
            return self._result(request, message["id"], _text("x" * 100_000))
        if name == "silent":
            self.pending.append(request)
            return NOT_DONE_YET
        if name == "sse":
            return self._sse(request, message, arguments)
        return self._error(request, 400, message["id"], -32602, f"Unknown tool: {name}")

    def _sse(self, request: Any, message: Dict[str, Any], arguments: Dict[str, Any]) -> Any:
        request.setHeader("content-type", "text/event-stream")
        # A priming event, a notification, a request from the server and a
        # response to some other id come first; the client must skip them.
        request.write(b"id: prime-1\ndata: \n\n")
        request.write(
            b"event: message\ndata: "
            + json.dumps(
                {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}
            ).encode()
            + b"\n\n"
        )
        request.write(
            b"data: "
            + json.dumps({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"}).encode()
            + b"\n\n"
        )
        request.write(
            b"data: "
            + json.dumps({"jsonrpc": "2.0", "id": 10_000, "result": {}}).encode()
            + b"\n\n"
        )
        if arguments.get("huge"):
            for _ in range(20):
                request.write(b": " + b"y" * 10_000 + b"\n")
        response = json.dumps(
            {"jsonrpc": "2.0", "id": message["id"], "result": _text("streamed")}
        ).encode()
        # Split the response across writes, with CRLF line ends.
        request.write(b"data: " + response[:10])
        request.write(response[10:] + b"\r\n\r\n")
        # The stream stays open: the client must not wait for its end.
        self.pending.append(request)
        return NOT_DONE_YET

    def _result(self, request: Any, request_id: Any, result: Dict[str, Any]) -> bytes:
        request.setHeader("content-type", "application/json")
        return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()

    def _error(
        self, request: Any, status: int, request_id: Any, code: int, text: str
    ) -> bytes:
        request.setResponseCode(status)
        request.setHeader("content-type", "application/json")
        return json.dumps(
            {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": text}}
        ).encode()

    def methods(self) -> List[str]:
        """
        The methods of the JSON-RPC messages seen, in order.
        """
        return [entry["message"].get("method") for entry in self.seen]


class _ConnectionTracker(WrappingFactory):
    """
    Keeps track of the server's connections so a test can close them all
    and wait until they are gone.
    """

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._idle: List[Deferred] = []

    def unregisterProtocol(self, protocol: Any) -> None:
        super().unregisterProtocol(protocol)
        if not self.protocols:
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)

    def close_all(self) -> Deferred:
        if not self.protocols:
            return _fired()
        waiter: Deferred = Deferred()
        self._idle.append(waiter)
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()
        return waiter


def _fired() -> Deferred:
    fired: Deferred = Deferred()
    fired.callback(None)
    return fired


class McpClientTests(TestCase):
    """
    L{McpClient} against L{FakeMcpServer} over real HTTP on loopback.
    """

    timeout = 30

    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.server = FakeMcpServer()
        self.site = _ConnectionTracker(Site(self.server))
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/mcp"

        async def cleanup() -> None:
            for request in self.server.pending:
                if not request.finished and not request._disconnected:
                    request.finish()
            await self.port.stopListening()
            await self.site.close_all()

        self.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))

    def client(self, **kwargs: Any) -> McpClient:
        """
        A client of the fake server, closed at cleanup.
        """
        kwargs.setdefault("timeout", 5.0)
        client = McpClient(self.reactor, "fake", kwargs.pop("url", self.url), **kwargs)
        self.addCleanup(client.close)
        return client

    def test_interface(self) -> None:
        """
        L{McpClient} provides L{IMcpClient}.
        """
        verifyObject(IMcpClient, McpClient(self.reactor, "fake", self.url))

    async def test_handshake(self) -> None:
        """
        The first call runs the handshake: C{initialize} offering the
        latest protocol version with client info and no session header,
        then the C{notifications/initialized} notification and the call,
        both with the session id and the negotiated protocol version; the
        C{Accept} header names both JSON and event streams.
        """
        client = self.client()
        result = await client.call_tool("echo", {"n": 1})
        self.assertEqual(result["structuredContent"], {"n": 1})
        self.assertEqual(
            self.server.methods(), ["initialize", "notifications/initialized", "tools/call"]
        )
        initialize, initialized, call = self.server.seen
        params = initialize["message"]["params"]
        self.assertEqual(params["protocolVersion"], LATEST_PROTOCOL_VERSION)
        self.assertEqual(params["clientInfo"]["name"], "caxton")
        self.assertNotIn("mcp-session-id", initialize["headers"])
        self.assertNotIn("id", initialized["message"])
        for later in (initialized, call):
            self.assertEqual(later["headers"]["mcp-session-id"], "session-1")
            self.assertEqual(
                later["headers"]["mcp-protocol-version"], LATEST_PROTOCOL_VERSION
            )
        self.assertEqual(
            call["headers"]["accept"], "application/json, text/event-stream"
        )
        self.assertEqual(call["headers"]["content-type"], "application/json")
        self.assertNotIn("authorization", call["headers"])

    async def test_one_handshake(self) -> None:
        """
        Calls made together before any session exists share one handshake,
        and later calls reuse the session; request ids are all distinct.
        """
        client = self.client()
        results = await DeferredList(
            [client.call_tool("echo", {"n": n}) for n in range(3)], fireOnOneErrback=True
        )
        self.assertEqual(
            [result["structuredContent"] for _, result in results],
            [{"n": 0}, {"n": 1}, {"n": 2}],
        )
        await client.call_tool("echo", {})
        self.assertEqual(self.server.initializes, 1)
        ids = [e["message"]["id"] for e in self.server.seen if "id" in e["message"]]
        self.assertEqual(len(ids), len(set(ids)))

    async def test_initialize(self) -> None:
        """
        L{McpClient.initialize} fires with the server's initialize result.
        """
        client = self.client()
        result = await client.initialize()
        self.assertEqual(result["serverInfo"], {"name": "fake", "version": "1"})

    async def test_without_session(self) -> None:
        """
        A server that sends no session id gets no session header.
        """
        self.server.use_sessions = False
        client = self.client()
        await client.call_tool("echo", {})
        self.assertNotIn("mcp-session-id", self.server.seen[-1]["headers"])

    async def test_unsupported_version(self) -> None:
        """
        A server answering C{initialize} with a protocol version the client
        does not speak fails the call with L{McpProtocolError}.
        """
        self.server.protocol_version = "2024-11-05"
        client = self.client()
        with self.assertRaises(McpProtocolError):
            await client.call_tool("echo", {})

    async def test_bearer_token(self) -> None:
        """
        A token goes in an C{Authorization: Bearer} header on every
        request.
        """
        client = self.client(token="s3cret")
        await client.call_tool("echo", {})
        self.assertEqual(
            {e["headers"]["authorization"] for e in self.server.seen}, {"Bearer s3cret"}
        )

    async def test_list_tools_pages(self) -> None:
        """
        L{McpClient.list_tools} follows C{nextCursor} through every page.
        """
        client = self.client()
        tools = await client.list_tools()
        self.assertEqual([t["name"] for t in tools], [t["name"] for t in FakeMcpServer.TOOLS])
        cursors = [
            e["message"]["params"].get("cursor")
            for e in self.server.seen
            if e["message"].get("method") == "tools/list"
        ]
        self.assertEqual(cursors, [None, "2", "4"])

    async def test_event_stream(self) -> None:
        """
        A response sent as an event stream is found among the server's
        other messages, and the call returns without waiting for the
        stream to end.
        """
        client = self.client()
        result = await client.call_tool("sse", {})
        self.assertEqual(result, _text("streamed"))

    async def test_event_stream_too_large(self) -> None:
        """
        An event stream that grows past the body bound before the response
        arrives is cut off with L{McpUnreachable}.
        """
        client = self.client(max_body=64 * 1024)
        with self.assertRaises(McpUnreachable) as caught:
            await client.call_tool("sse", {"huge": True})
        self.assertIn("larger than", str(caught.exception))

    async def test_body_too_large(self) -> None:
        """
        A JSON body longer than the bound is refused with L{McpUnreachable}.
        """
        client = self.client(max_body=10_000)
        with self.assertRaises(McpUnreachable) as caught:
            await client.call_tool("huge", {})
        self.assertIn("larger than", str(caught.exception))

    async def test_tool_error_result(self) -> None:
        """
        A tool's own failure is a result with C{isError}, not an exception.
        """
        client = self.client()
        result = await client.call_tool("fails", {})
        self.assertEqual(result, {**_text("disk full"), "isError": True})

    async def test_jsonrpc_error(self) -> None:
        """
        A JSON-RPC error answered at an HTTP error status becomes
        L{McpError} with the server's code and message.
        """
        client = self.client()
        with self.assertRaises(McpError) as caught:
            await client.call_tool("nope", {})
        self.assertEqual(caught.exception.code, -32602)
        self.assertEqual(caught.exception.message, "Unknown tool: nope")

    async def test_method_not_found_is_not_expiry(self) -> None:
        """
        A C{404} carrying a JSON-RPC "method not found" error is that error,
        not an expired session: no new handshake.
        """
        client = self.client()
        await client.initialize()
        with self.assertRaises(McpError) as caught:
            await client._operation(
                "resources/list", lambda: client._request("resources/list", {})
            )
        self.assertEqual(caught.exception.code, -32601)
        self.assertEqual(self.server.initializes, 1)

    async def test_session_expired(self) -> None:
        """
        When the server answers C{404} to the session once, the client runs
        the handshake again and the retried call succeeds in the new
        session.
        """
        client = self.client()
        await client.call_tool("echo", {})
        self.server.expire_next = True
        result = await client.call_tool("echo", {"again": True})
        self.assertEqual(result["structuredContent"], {"again": True})
        self.assertEqual(
            self.server.methods(),
            [
                "initialize",
                "notifications/initialized",
                "tools/call",
                "tools/call",
                "initialize",
                "notifications/initialized",
                "tools/call",
            ],
        )
        self.assertEqual(self.server.seen[-1]["headers"]["mcp-session-id"], "session-2")

    async def test_connection_dropped(self) -> None:
        """
        A connection dropped before any response byte (as a pooled
        connection to a restarted server is) is retried once after a new
        handshake.
        """
        client = self.client()
        await client.call_tool("echo", {})
        self.server.drop_next = True
        result = await client.call_tool("echo", {"again": True})
        self.assertEqual(result["structuredContent"], {"again": True})
        self.assertEqual(self.server.initializes, 2)

    async def test_timeout(self) -> None:
        """
        A server that never answers fails the call with L{McpTimeout}
        after the client's timeout, and the server sees the connection
        go.
        """
        client = self.client(timeout=0.5)
        await client.initialize()
        with self.assertRaises(McpTimeout):
            await client.call_tool("silent", {})
        (request,) = self.server.pending
        lost: Deferred = request.notifyFinish()
        with self.assertRaises(Exception):
            await lost

    async def test_connection_refused(self) -> None:
        """
        A server nobody listens on fails the call with L{McpUnreachable}.
        """
        from twisted.internet import reactor

        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        port = taken.getHost().port
        await taken.stopListening()
        client = self.client(url=f"http://127.0.0.1:{port}/mcp")
        with self.assertRaises(McpUnreachable) as caught:
            await client.call_tool("echo", {})
        self.assertIn("cannot reach", str(caught.exception))

    async def test_wrong_content_type(self) -> None:
        """
        A body that is neither JSON nor an event stream (a proxy's page)
        fails the call with L{McpUnreachable}.
        """
        page = Resource()
        page.isLeaf = True
        page.render_POST = lambda request: b"<html>hello</html>"  # type: ignore[attr-defined]
        tracker = _ConnectionTracker(Site(page))
        port = self.reactor.listenTCP(0, tracker, interface="127.0.0.1")
        self.addCleanup(tracker.close_all)
        self.addCleanup(port.stopListening)
        client = self.client(url=f"http://127.0.0.1:{port.getHost().port}/")
        with self.assertRaises(McpUnreachable) as caught:
            await client.call_tool("echo", {})
        self.assertIn("content type", str(caught.exception))

    async def test_close(self) -> None:
        """
        L{McpClient.close} fails the calls in flight and later calls with
        L{McpUnreachable}, and ends the session with a C{DELETE} naming it.
        """
        client = self.client()
        await client.initialize()
        in_flight = client.call_tool("silent", {})
        await deferLater(self.reactor, 0.1, lambda: None)
        await client.close()
        with self.assertRaises(McpUnreachable):
            await in_flight
        with self.assertRaises(McpUnreachable):
            await client.call_tool("echo", {})
        self.assertEqual(self.server.deletes, ["session-1"])

    async def test_cancel(self) -> None:
        """
        A caller that cancels its call gets L{CancelledError}, not a
        timeout or an unreachable server, and the client stays usable.
        """
        client = self.client()
        call = client.call_tool("silent", {})
        await deferLater(self.reactor, 0.1, lambda: None)
        call.cancel()
        with self.assertRaises(CancelledError):
            await call
        result = await client.call_tool("echo", {"n": 2})
        self.assertEqual(result["structuredContent"], {"n": 2})


# --- against the official SDK ------------------------------------------------

_SDK_SERVER = textwrap.dedent(
    """
    import sys
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("probe")

    @server.tool()
    def add(a: int, b: int) -> int:
        '''Add two numbers.'''
        return a + b

    @server.tool()
    def boom() -> str:
        '''Always fails.'''
        raise ValueError("nope")

    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
    """
)


def _sdk_available() -> bool:
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OfficialSdkTests(TestCase):
    """
    L{McpClient} against a server made with the official C{mcp} SDK, run
    as its own process.
    """

    timeout = 60

    if not _sdk_available():
        skip = "the official mcp SDK (pip install mcp) is not importable"

    async def test_list_and_call(self) -> None:
        """
        The client lists the SDK server's tools (with their schemas), calls
        one, and gets a tool failure back as an C{isError} result.
        """
        from twisted.internet import reactor

        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-c", _SDK_SERVER, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        def stop() -> None:
            process.kill()
            process.wait(10)
            if process.stderr is not None:
                process.stderr.close()

        self.addCleanup(stop)

        for _ in range(150):
            if process.poll() is not None:
                self.fail("the SDK server exited early")
            try:
                protocol = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
                    Factory.forProtocol(Protocol)
                )
            except Exception:
                await deferLater(reactor, 0.1, lambda: None)
                continue
            protocol.transport.loseConnection()
            break
        else:
            self.fail("the SDK server did not listen within 15 seconds")

        client = McpClient(reactor, "sdk", f"http://127.0.0.1:{port}/mcp", timeout=10.0)
        self.addCleanup(client.close)
        tools = {tool["name"]: tool for tool in await client.list_tools()}
        self.assertEqual(set(tools), {"add", "boom"})
        self.assertEqual(tools["add"]["description"], "Add two numbers.")
        self.assertIn("a", tools["add"]["inputSchema"]["properties"])
        result = await client.call_tool("add", {"a": 2, "b": 3})
        self.assertFalse(result.get("isError", False))
        self.assertEqual(result["content"][0]["text"], "5")
        failed = await client.call_tool("boom", {})
        self.assertTrue(failed["isError"])
        unknown = await client.call_tool("missing", {})
        self.assertTrue(unknown["isError"])
        self.assertIn("Unknown tool", unknown["content"][0]["text"])
