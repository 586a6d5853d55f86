"""
Tests for L{caxton.mcp.gateway}: receiver names, allowances, how results
and errors become C{inform} content and failure reasons, bounds, counters,
the catalog's cache, starting and stopping; all with a fake MCP client and
a L{Clock}, no network.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from caxton.config import ConfigError
from caxton.mcp.client import (
    IMcpClient,
    McpError,
    McpProtocolError,
    McpTimeout,
    McpUnreachable,
)
from caxton.mcp.gateway import (
    McpServerConfig,
    ToolGateway,
    allowed,
    is_tool_receiver,
    parse_allowance,
    parse_receiver,
    tool_result_content,
)
from caxton.mcp.interfaces import IToolGateway, ToolFailure


@implementer(IMcpClient)
class FakeMcpClient:
    """
    An L{IMcpClient} whose answers the test gives: each call waits on a
    Deferred the test fires.

    @ivar calls: (tool name, arguments, Deferred) for each C{call_tool}.
    @ivar listings: the Deferred of each C{list_tools}.
    @ivar cancelled: the tool names of the calls cancelled.
    """

    def __init__(self, reactor: Any, name: str, url: str, token: Optional[str], timeout: float) -> None:
        self.name = name
        self.url = url
        self.token = token
        self.timeout = timeout
        self.calls: List[Tuple[str, Dict[str, Any], Deferred]] = []
        self.listings: List[Deferred] = []
        self.cancelled: List[str] = []
        self.closed = False

    def initialize(self) -> Deferred:
        return succeed({"protocolVersion": "2025-11-25"})

    def list_tools(self) -> Deferred:
        listing: Deferred = Deferred()
        self.listings.append(listing)
        return listing

    def call_tool(self, name: str, arguments: Dict[str, Any]) -> Deferred:
        call: Deferred = Deferred(lambda _: self.cancelled.append(name))
        self.calls.append((name, arguments, call))
        return call

    def close(self) -> Deferred:
        self.closed = True
        return succeed(None)


def _text(*texts: str, **extra: Any) -> Dict[str, Any]:
    return {"content": [{"type": "text", "text": t} for t in texts], **extra}


class ReceiverTests(SynchronousTestCase):
    """
    Receiver names and deploy allowances.
    """

    def test_parse(self) -> None:
        """
        C{mcp:<server>/<tool>} names a server and a tool; the tool is
        everything after the first slash.
        """
        self.assertEqual(parse_receiver("mcp:state/store"), ("state", "store"))
        self.assertEqual(parse_receiver("mcp:s-1.x/ns/get_v2"), ("s-1.x", "ns/get_v2"))
        self.assertTrue(is_tool_receiver("mcp:state/store"))
        self.assertFalse(is_tool_receiver("counter"))

    def test_parse_invalid(self) -> None:
        """
        Names without the prefix, the slash, a server or a tool, or with
        characters a name may not hold, are C{INVALID_MESSAGE}.
        """
        for name in [
            "state/store",
            "mcp:state",
            "mcp:/store",
            "mcp:state/",
            "mcp:st*te/store",
            "mcp:state/st ore",
            "mcp:state/*",
            "mcp:" + "s" * 65 + "/t",
            "mcp:state/" + "t" * 129,
        ]:
            with self.assertRaises(ToolFailure, msg=name) as caught:
                parse_receiver(name)
            self.assertEqual(caught.exception.reason, "INVALID_MESSAGE")

    def test_allowed(self) -> None:
        """
        An allowance names one tool, every tool of one server, or every
        tool; nothing else lets a call through.
        """
        self.assertTrue(allowed(["state/store"], "state", "store"))
        self.assertFalse(allowed(["state/store"], "state", "delete"))
        self.assertTrue(allowed(["state/*"], "state", "delete"))
        self.assertFalse(allowed(["state/*"], "other", "delete"))
        self.assertTrue(allowed(["*"], "other", "delete"))
        self.assertFalse(allowed([], "state", "store"))
        self.assertFalse(allowed(["stat*"], "state", "store"))
        self.assertTrue(ToolGateway.allowed(["state/*"], "state", "x"))

    def test_parse_allowance(self) -> None:
        """
        L{parse_allowance} accepts the three forms and refuses the rest.
        """
        for good in ["*", "state/*", "state/store", "state/ns/get"]:
            self.assertEqual(parse_allowance(good), good)
        for bad in ["", "state", "*/store", "state/st*", "st ate/x", "/x"]:
            self.assertRaises(ValueError, parse_allowance, bad)


class ResultTests(SynchronousTestCase):
    """
    L{tool_result_content} turns a C{tools/call} result into C{inform}
    content.
    """

    def test_structured(self) -> None:
        """
        C{structuredContent} wins over the text content.
        """
        result = _text('{"a": 1}', structuredContent={"b": 2})
        self.assertEqual(tool_result_content(result), {"b": 2})

    def test_text_json(self) -> None:
        """
        Text content that is JSON is parsed.
        """
        self.assertEqual(tool_result_content(_text('{"a": [1, 2]}')), {"a": [1, 2]})
        self.assertEqual(tool_result_content(_text("42")), 42)

    def test_text(self) -> None:
        """
        Text content that is not JSON is the text, items joined by newlines.
        """
        self.assertEqual(tool_result_content(_text("hello")), "hello")
        self.assertEqual(tool_result_content(_text("a", "b")), "a\nb")

    def test_mixed(self) -> None:
        """
        Content that is not all text is passed on as the raw list.
        """
        content = [
            {"type": "text", "text": "see"},
            {"type": "image", "data": "AAAA", "mimeType": "image/png"},
        ]
        self.assertEqual(tool_result_content({"content": content}), content)

    def test_empty(self) -> None:
        """
        A result with no content is C{null}.
        """
        self.assertIsNone(tool_result_content({"content": []}))

    def test_is_error(self) -> None:
        """
        A result with C{isError} is C{TOOL_ERROR} with the tool's text, or
        C{NOT_FOUND} when that text says the tool is unknown (as the
        official SDK answers).
        """
        with self.assertRaises(ToolFailure) as caught:
            tool_result_content(_text("disk full", isError=True))
        self.assertEqual((caught.exception.reason, caught.exception.detail), ("TOOL_ERROR", "disk full"))
        with self.assertRaises(ToolFailure) as caught:
            tool_result_content(_text("Unknown tool: nope", isError=True))
        self.assertEqual(caught.exception.reason, "NOT_FOUND")

    def test_not_a_result(self) -> None:
        """
        A result that is not an MCP result is C{UNREACHABLE}.
        """
        for result in [[], {"content": "text"}]:
            with self.assertRaises(ToolFailure) as caught:
                tool_result_content(result)
            self.assertEqual(caught.exception.reason, "UNREACHABLE")


class GatewayTests(SynchronousTestCase):
    """
    L{ToolGateway} over fake clients.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clients: Dict[str, FakeMcpClient] = {}

        def factory(**kwargs: Any) -> FakeMcpClient:
            client = FakeMcpClient(**kwargs)
            self.clients[client.name] = client
            return client

        self.factory = factory

    def gateway(self, servers: Optional[List[McpServerConfig]] = None, **kwargs: Any) -> ToolGateway:
        if servers is None:
            servers = [
                McpServerConfig("state", "http://127.0.0.1:1/mcp"),
                McpServerConfig("other", "https://example.com/mcp"),
            ]
        gateway = ToolGateway(self.clock, servers, client_factory=self.factory, **kwargs)
        gateway.start()
        return gateway

    def fail_with(self, gateway: ToolGateway, error: Exception) -> ToolFailure:
        """
        Call a tool whose client fails with C{error}; the L{ToolFailure}.
        """
        call = gateway.call("state", "store", {"k": "v"})
        self.clients["state"].calls[-1][2].errback(error)
        return self.failureResultOf(call, ToolFailure).value

    def test_fake_client(self) -> None:
        """
        The fake client provides the interface the real one does.
        """
        verifyObject(IMcpClient, FakeMcpClient(self.clock, "x", "http://x/", None, 1.0))

    def test_call(self) -> None:
        """
        A call reaches the named server's client with the tool and its
        arguments, and fires with the result's content; no arguments
        (C{null}) are an empty object.
        """
        gateway = self.gateway()
        call = gateway.call("state", "store", {"key": "a", "value": 1})
        name, arguments, answer = self.clients["state"].calls[0]
        self.assertEqual((name, arguments), ("store", {"key": "a", "value": 1}))
        self.assertNoResult(call)
        answer.callback(_text("{}", structuredContent={"ok": True}))
        self.assertEqual(self.successResultOf(call), {"ok": True})
        gateway.call("other", "list", None)
        self.assertEqual(self.clients["other"].calls[0][:2], ("list", {}))

    def test_errors(self) -> None:
        """
        Each client error becomes its failure reason: unreachable and
        malformed answers C{UNREACHABLE}, timeouts C{TIMEOUT}, a refused
        call C{TOOL_ERROR} with the server's message, an unknown tool or a
        server without tools C{NOT_FOUND}.
        """
        gateway = self.gateway()
        cases = [
            (McpUnreachable("cannot reach"), "UNREACHABLE"),
            (McpProtocolError("bad JSON"), "UNREACHABLE"),
            (McpTimeout("slow"), "TIMEOUT"),
            (McpError(-32602, "Invalid arguments: key missing"), "TOOL_ERROR"),
            (McpError(-32603, "Internal error"), "TOOL_ERROR"),
            (McpError(-32602, "Unknown tool: store"), "NOT_FOUND"),
            (McpError(-32601, "Method not found"), "NOT_FOUND"),
            (ZeroDivisionError(), "UNREACHABLE"),
        ]
        for error, reason in cases:
            self.assertEqual(self.fail_with(gateway, error).reason, reason, error)
        self.assertEqual(
            self.fail_with(gateway, McpError(-32602, "Invalid arguments: key missing")).detail,
            "Invalid arguments: key missing",
        )
        self.flushLoggedErrors(ZeroDivisionError)

    def test_tool_error(self) -> None:
        """
        A result with C{isError} fails the call with C{TOOL_ERROR} and the
        tool's message.
        """
        gateway = self.gateway()
        call = gateway.call("state", "store", {})
        self.clients["state"].calls[0][2].callback(_text("disk full", isError=True))
        failure = self.failureResultOf(call, ToolFailure).value
        self.assertEqual((failure.reason, failure.detail), ("TOOL_ERROR", "disk full"))

    def test_invalid_calls(self) -> None:
        """
        An unknown server is C{NOT_FOUND}; arguments that are not a JSON
        object, and bad tool names, are C{INVALID_MESSAGE}; none reaches a
        client.
        """
        gateway = self.gateway()
        cases = [
            (("nowhere", "store", {}), "NOT_FOUND"),
            (("state", "store", [1, 2]), "INVALID_MESSAGE"),
            (("state", "store", "text"), "INVALID_MESSAGE"),
            (("state", "store", {"x": object()}), "INVALID_MESSAGE"),
            (("state", "st ore", {}), "INVALID_MESSAGE"),
        ]
        for arguments, reason in cases:
            failure = self.failureResultOf(gateway.call(*arguments), ToolFailure).value
            self.assertEqual(failure.reason, reason, arguments)
        self.assertEqual(self.clients["state"].calls, [])

    def test_in_flight_bound(self) -> None:
        """
        Past C{max_in_flight} calls to one server, a call fails at once
        with C{UNREACHABLE}; other servers are not affected, and a finished
        call makes room.
        """
        gateway = self.gateway(max_in_flight=2)
        gateway.call("state", "a", {})
        gateway.call("state", "b", {})
        refused = self.failureResultOf(gateway.call("state", "c", {}), ToolFailure).value
        self.assertEqual(refused.reason, "UNREACHABLE")
        self.assertIn("too many calls in flight", refused.detail)
        self.assertNoResult(gateway.call("other", "a", {}))
        self.clients["state"].calls[0][2].callback(_text("ok"))
        self.assertNoResult(gateway.call("state", "c", {}))
        self.assertEqual(len(self.clients["state"].calls), 3)

    def test_counters(self) -> None:
        """
        Each tool counts its calls, its failures by reason, and the time
        its calls took.
        """
        gateway = self.gateway()
        first = gateway.call("state", "store", {})
        self.clock.advance(0.25)
        self.clients["state"].calls[0][2].callback(_text("ok"))
        self.successResultOf(first)
        self.fail_with(gateway, McpTimeout("slow"))
        self.fail_with(gateway, McpTimeout("slow"))
        self.failureResultOf(gateway.call("nowhere", "x", {}))
        self.assertEqual(
            gateway.counters(),
            {
                "state": {
                    "store": {"calls": 3, "failures": {"TIMEOUT": 2}, "latency_ms_total": 250.0}
                },
                "other": {},
            },
        )

    def test_counters_bounded(self) -> None:
        """
        Tool names beyond the first 256 of a server are counted together,
        so agents calling made-up names cannot grow the counters forever.
        """
        gateway = self.gateway(max_in_flight=1000)
        for n in range(300):
            gateway.call("state", f"t{n}", {})
        counters = gateway.counters()["state"]
        self.assertEqual(len(counters), 257)
        self.assertEqual(counters["(other)"]["calls"], 300 - 256)

    def test_cancel(self) -> None:
        """
        A caller that cancels its call cancels the client's call and gets
        L{CancelledError}; no failure is counted.
        """
        gateway = self.gateway()
        call = gateway.call("state", "store", {})
        call.cancel()
        self.failureResultOf(call, CancelledError)
        self.assertEqual(self.clients["state"].cancelled, ["store"])
        self.assertEqual(gateway.counters()["state"]["store"]["failures"], {})

    def test_stop(self) -> None:
        """
        Stopping fails the calls in flight with C{UNREACHABLE} ("node
        stopping"), closes every client, and fails later calls the same
        way.
        """
        gateway = self.gateway()
        call = gateway.call("state", "store", {})
        self.successResultOf(gateway.stop())
        failure = self.failureResultOf(call, ToolFailure).value
        self.assertEqual((failure.reason, failure.detail), ("UNREACHABLE", "node stopping"))
        self.assertEqual(self.clients["state"].cancelled, ["store"])
        self.assertTrue(all(client.closed for client in self.clients.values()))
        later = self.failureResultOf(gateway.call("state", "store", {}), ToolFailure).value
        self.assertEqual((later.reason, later.detail), ("UNREACHABLE", "node stopping"))

    def test_not_started(self) -> None:
        """
        A gateway not yet started makes no client and refuses calls with
        C{UNREACHABLE}.
        """
        gateway = ToolGateway(
            self.clock, [McpServerConfig("state", "http://x/")], client_factory=self.factory
        )
        self.assertEqual(self.clients, {})
        failure = self.failureResultOf(gateway.call("state", "store", {}), ToolFailure).value
        self.assertEqual(failure.reason, "UNREACHABLE")

    def test_interface(self) -> None:
        """
        L{ToolGateway} provides the L{IToolGateway} the router and the API
        use, and fails with the L{ToolFailure} they catch.
        """
        verifyObject(IToolGateway, self.gateway())
        failure = self.failureResultOf(self.gateway().call("nowhere", "x", {}))
        self.assertIs(failure.type, ToolFailure)

    def test_token_file(self) -> None:
        """
        The token file is read at start, stripped, and handed to the client.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("  s3cret\n")
        self.gateway([McpServerConfig("state", "http://x/", token_file=path)])
        self.assertEqual(self.clients["state"].token, "s3cret")

    def test_token_file_problems(self) -> None:
        """
        A token file that is missing, empty or holds more than one word
        stops the start with a L{ConfigError} naming the server and file,
        before any client is made.
        """
        empty = self.mktemp()
        with open(empty, "w") as f:
            f.write("\n")
        two = self.mktemp()
        with open(two, "w") as f:
            f.write("one two\n")
        missing = self.mktemp()
        for path in [missing, empty, two]:
            gateway = ToolGateway(
                self.clock,
                [McpServerConfig("state", "http://x/", token_file=path)],
                client_factory=self.factory,
            )
            with self.assertRaises(ConfigError) as caught:
                gateway.start()
            self.assertIn("'state'", str(caught.exception))
            self.assertIn(path, str(caught.exception))
        self.assertEqual(self.clients, {})

    def test_bad_config(self) -> None:
        """
        Two servers with one name, a name that cannot appear in a receiver,
        or a URL that is not HTTP are L{ConfigError}s at construction.
        """
        for servers in [
            [McpServerConfig("a", "http://x/"), McpServerConfig("a", "http://y/")],
            [McpServerConfig("a/b", "http://x/")],
            [McpServerConfig("*", "http://x/")],
            [McpServerConfig("a", "ftp://x/")],
        ]:
            self.assertRaises(ConfigError, ToolGateway, self.clock, servers)


class CatalogTests(SynchronousTestCase):
    """
    L{ToolGateway.catalog}: what C{GET /api/v1/tools} shows.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clients: Dict[str, FakeMcpClient] = {}

        def factory(**kwargs: Any) -> FakeMcpClient:
            client = FakeMcpClient(**kwargs)
            self.clients[client.name] = client
            return client

        self.gateway = ToolGateway(
            self.clock,
            [
                McpServerConfig("state", "http://127.0.0.1:1/mcp"),
                McpServerConfig("down", "http://127.0.0.1:2/mcp"),
            ],
            client_factory=factory,
            catalog_ttl=30.0,
        )
        self.gateway.start()

    TOOLS = [
        {"name": "store", "description": "Store a value", "inputSchema": {"type": "object"}},
        {"name": "retrieve", "inputSchema": {"type": "object"}, "annotations": {}},
    ]

    def test_entries(self) -> None:
        """
        Each server is listed in configuration order with its tools (name,
        description, input schema) and counters; one that cannot be reached
        is an entry with its status and error, not a failure.
        """
        catalog = self.gateway.catalog()
        self.clients["state"].listings[0].callback(self.TOOLS)
        self.clients["down"].listings[0].errback(McpUnreachable("connection refused"))
        state, down = self.successResultOf(catalog)
        self.assertEqual(
            state,
            {
                "name": "state",
                "url": "http://127.0.0.1:1/mcp",
                "status": "ok",
                "error": None,
                "tools": [
                    {"name": "store", "description": "Store a value", "input_schema": {"type": "object"}},
                    {"name": "retrieve", "description": None, "input_schema": {"type": "object"}},
                ],
                "counters": {},
            },
        )
        self.assertEqual(
            (down["name"], down["status"], down["error"], down["tools"]),
            ("down", "unreachable", "connection refused", []),
        )

    def test_statuses(self) -> None:
        """
        A timeout and a malformed answer have their own statuses.
        """
        catalog = self.gateway.catalog()
        self.clients["state"].listings[0].errback(McpTimeout("slow"))
        self.clients["down"].listings[0].errback(McpProtocolError("bad JSON"))
        state, down = self.successResultOf(catalog)
        self.assertEqual((state["status"], down["status"]), ("timeout", "error"))

    def test_cache(self) -> None:
        """
        Listings are shared by concurrent askers and reused for
        C{catalog_ttl} seconds; after that the server is asked again.
        """
        first = self.gateway.catalog()
        second = self.gateway.catalog()
        self.assertEqual(len(self.clients["state"].listings), 1)
        self.clients["state"].listings[0].callback(self.TOOLS)
        self.clients["down"].listings[0].callback([])
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.clock.advance(29)
        self.successResultOf(self.gateway.catalog())
        self.assertEqual(len(self.clients["state"].listings), 1)
        self.clock.advance(2)
        self.gateway.catalog()
        self.assertEqual(len(self.clients["state"].listings), 2)

    def test_failure_keeps_tools(self) -> None:
        """
        A server that fails after listing its tools keeps its last tools
        in the entry, with its new status; it is asked again after five
        seconds rather than the full time to live.
        """
        catalog = self.gateway.catalog()
        self.clients["state"].listings[0].callback(self.TOOLS)
        self.clients["down"].listings[0].callback([])
        self.successResultOf(catalog)
        self.clock.advance(31)
        catalog = self.gateway.catalog()
        self.clients["state"].listings[1].errback(McpUnreachable("refused"))
        self.clients["down"].listings[1].callback([])
        state, _ = self.successResultOf(catalog)
        self.assertEqual(state["status"], "unreachable")
        self.assertEqual([t["name"] for t in state["tools"]], ["store", "retrieve"])
        self.clock.advance(4)
        self.gateway.catalog()
        self.assertEqual(len(self.clients["state"].listings), 2)
        self.clock.advance(2)
        self.gateway.catalog()
        self.assertEqual(len(self.clients["state"].listings), 3)

    def test_counters(self) -> None:
        """
        An entry carries its server's call counters.
        """
        call = self.gateway.call("state", "store", {})
        self.clients["state"].calls[0][2].errback(McpTimeout("slow"))
        self.failureResultOf(call)
        catalog = self.gateway.catalog()
        for client in self.clients.values():
            client.listings[0].callback([])
        state, _ = self.successResultOf(catalog)
        self.assertEqual(
            state["counters"],
            {"store": {"calls": 1, "failures": {"TIMEOUT": 1}, "latency_ms_total": 0.0}},
        )

    def test_stop(self) -> None:
        """
        Stopping cancels listings in flight: the catalog still answers,
        with status C{stopped}.
        """
        catalog = self.gateway.catalog()
        self.successResultOf(self.gateway.stop())
        entries = self.successResultOf(catalog)
        self.assertEqual([e["status"] for e in entries], ["stopped", "stopped"])
        self.assertEqual(
            [e["status"] for e in self.successResultOf(self.gateway.catalog())],
            ["stopped", "stopped"],
        )
