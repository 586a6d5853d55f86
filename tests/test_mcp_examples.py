"""
The MCP examples (SPEC 8): the example state server
(examples/mcp-state-server/server.py) as a real process, spoken to over
streamable HTTP both by the raw JSON-RPC client the tests share
(L{tests.mcpserver.McpClient}, what a Twisted client sends) and by the
official C{mcp} SDK's client in a child process; and the counter agent
(examples/agents/wat/counter.wat) on the node's own wasm runtime, fed the
messages the node would hand it (tool answers from C{mcp:state/...},
failures from C{caxton}).

The end-to-end test (node, server and agent together, across a node
restart) lives with the router's MCP integration.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any, Dict, List, Optional

import wasmtime
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from caxton.acl.message import decode_message, encode_body, message_to_dict
from caxton.agents.runtime import InvalidWasm, Limits, WasmRuntime
from tests.mcpserver import REPO, SERVER, McpClient, McpError, StateServerProcess, mcp_available, parse_sse
from tests.test_examples_abi import abi_problems
from tests.wasmbuild import example, wat_module

TOOLS = {"store", "retrieve", "delete", "list"}

# The official SDK's client in a child process (it runs its own asyncio
# loop, which must stay off trial's reactor thread): argv is the URL and
# optionally the token; it prints one JSON line with what each call gave.
SDK_CLIENT = r"""
import asyncio, json, sys
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

async def main(url, token):
    headers = {"Authorization": "Bearer " + token} if token else None
    transport = streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))
    out = {}
    async with Client(transport) as client:
        out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
        async def call(name, args):
            r = await client.call_tool(name, args)
            text = " ".join(getattr(c, "text", "") for c in r.content)
            return {"isError": r.is_error, "structured": r.structured_content, "text": text}
        out["store"] = await call("store", {"key": "sdk/a", "value": {"n": 1, "s": "\u00e9"}})
        out["retrieve"] = await call("retrieve", {"key": "sdk/a"})
        out["list"] = await call("list", {"prefix": "sdk/"})
        out["delete"] = await call("delete", {"key": "sdk/a"})
        out["missing"] = await call("retrieve", {"key": "sdk/a"})
        out["bad"] = await call("store", {"key": "", "value": 1})
    print(json.dumps(out), flush=True)

asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None), 60))
"""


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", 0))


async def run_python(code: str, args: List[str], timeout: float = 90.0) -> tuple:
    """
    Run C{python -c code args...} off the reactor's thread; C{(exit code,
    stdout, stderr)}. Killed after C{timeout} seconds.
    """
    proto = _Collect()
    process = reactor.spawnProcess(
        proto, sys.executable, [sys.executable, "-c", code, *args], env=dict(os.environ), path=REPO
    )

    def kill() -> None:
        try:
            process.signalProcess("KILL")
        except Exception:
            pass

    timer = reactor.callLater(timeout, kill)
    try:
        code_ = await proto.ended
    finally:
        if timer.active():
            timer.cancel()
    return code_, bytes(proto.out).decode("utf-8", "replace"), bytes(proto.err).decode("utf-8", "replace")


def load_server_module() -> Any:
    """examples/mcp-state-server/server.py as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("caxton_example_state_server", SERVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# The state server


class StateServerTests(TestCase):
    """The example MCP state server, as its own process."""

    timeout = 180

    def setUp(self) -> None:
        reason = mcp_available()
        if reason:
            raise SkipTest(reason)
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    async def server(self, token: Optional[str] = None, args: tuple = ()) -> StateServerProcess:
        token_file = None
        if token is not None:
            token_file = os.path.join(self.dir, "token")
            with open(token_file, "w") as f:
                f.write(token + "\n")
        process = StateServerProcess(os.path.join(self.dir, "state.db"), token_file=token_file, args=args)
        self.addCleanup(process.stop)
        await process.start()
        return process

    async def client(self, url: str, token: Optional[str] = None) -> McpClient:
        client = McpClient(url, token=token)
        info = await client.initialize()
        self.addCleanup(client.close)
        self.assertEqual(info["serverInfo"]["name"], "caxton-state")
        self.assertIn("tools", info["capabilities"])
        return client

    async def test_url_line_names_a_real_port(self) -> None:
        """Started with --port 0, the server prints the URL of the port the kernel chose."""
        process = await self.server()
        self.assertRegex(process.url, r"^http://127\.0\.0\.1:[1-9][0-9]*/mcp$")
        self.assertTrue(os.path.exists(os.path.join(self.dir, "state.db")))

    async def test_tools_listed_with_schemas(self) -> None:
        """tools/list names the four tools, each with an input and an output schema."""
        client = await self.client((await self.server()).url)
        tools = {t["name"]: t for t in await client.list_tools()}
        self.assertEqual(set(tools), TOOLS)
        self.assertEqual(tools["store"]["inputSchema"]["required"], ["key", "value"])
        self.assertEqual(tools["retrieve"]["outputSchema"]["required"], ["key", "value", "found"])
        self.assertNotIn("required", tools["list"]["inputSchema"])

    async def test_store_retrieve_list_delete(self) -> None:
        """The four tools over raw JSON-RPC: any JSON value round-trips, list is sorted by prefix."""
        client = await self.client((await self.server()).url)
        values = {
            "counter/b": 41,
            "counter/a": {"nested": [1, 2.5, None, True], "text": "h\u00e9llo \u2603"},
            "counter/c": None,
            "other": "x",
            "counter%_": [],
        }
        for key, value in values.items():
            self.assertEqual(await client.call("store", {"key": key, "value": value}), {"key": key, "stored": True})
        for key, value in values.items():
            self.assertEqual(
                await client.call("retrieve", {"key": key}), {"key": key, "value": value, "found": True}
            )
        self.assertEqual(
            await client.call("retrieve", {"key": "nope"}), {"key": "nope", "value": None, "found": False}
        )
        self.assertEqual(
            await client.call("list", {"prefix": "counter/"}),
            {"keys": ["counter/a", "counter/b", "counter/c"], "truncated": False},
        )
        # '%' and '_' are not wildcards
        self.assertEqual(await client.call("list", {"prefix": "counter%"}), {"keys": ["counter%_"], "truncated": False})
        self.assertEqual(len((await client.call("list", {}))["keys"]), 5)
        # replacing a value
        await client.call("store", {"key": "counter/b", "value": 42})
        self.assertEqual((await client.call("retrieve", {"key": "counter/b"}))["value"], 42)
        self.assertEqual(await client.call("delete", {"key": "counter/b"}), {"key": "counter/b", "deleted": True})
        self.assertEqual(await client.call("delete", {"key": "counter/b"}), {"key": "counter/b", "deleted": False})
        self.assertEqual((await client.call("list", {"prefix": "counter/"}))["keys"], ["counter/a", "counter/c"])

    async def test_tool_errors(self) -> None:
        """Bad arguments are tool errors (isError) carrying the reason; an unknown tool too."""
        client = await self.client((await self.server()).url)
        with self.assertRaises(McpError) as caught:
            await client.call("store", {"key": "", "value": 1})
        self.assertIn("key must be a non-empty string", str(caught.exception))
        with self.assertRaises(McpError) as caught:
            await client.call("retrieve", {"key": "k" * 2000})
        self.assertIn("longer than", str(caught.exception))
        with self.assertRaises(McpError):
            await client.call("store", {"key": "k"})
        with self.assertRaises(McpError):
            await client.call("no-such-tool", {})
        # the server is unharmed
        self.assertEqual((await client.call("retrieve", {"key": "k"}))["found"], False)

    async def test_state_survives_a_restart(self) -> None:
        """What was stored is there after the server restarts on the same file."""
        process = await self.server()
        client = await self.client(process.url)
        await client.call("store", {"key": "counter/demo", "value": 7})
        await client.close()
        await process.stop()
        url = await process.start()
        client = await self.client(url)
        self.assertEqual(
            await client.call("retrieve", {"key": "counter/demo"}),
            {"key": "counter/demo", "value": 7, "found": True},
        )

    async def test_json_response_and_stateless(self) -> None:
        """--json-response answers application/json; --stateless gives no session id; the tools work."""
        process = await self.server(args=("--json-response", "--stateless"))
        client = McpClient(process.url)
        status, headers, body = await client.post(
            {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"}}}
        )
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type")[0].split(b";")[0], b"application/json")
        self.assertIsNone(headers.getRawHeaders(b"mcp-session-id"))
        self.assertEqual(json.loads(body)["result"]["serverInfo"]["name"], "caxton-state")
        client = await self.client(process.url)
        await client.call("store", {"key": "a", "value": 1})
        self.assertEqual((await client.call("retrieve", {"key": "a"}))["value"], 1)

    async def test_token_required(self) -> None:
        """With --token-file, requests without the right bearer token are answered 401."""
        process = await self.server(token="s3cret")
        initialize = {
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}},
        }
        for token in (None, "wrong", "s3cret2", "S3CRET"):
            status, headers, _ = await McpClient(process.url, token=token).post(initialize)
            self.assertEqual(status, 401, token)
            self.assertTrue(headers.getRawHeaders(b"www-authenticate")[0].startswith(b"Bearer"))
        with self.assertRaises(McpError) as caught:
            await McpClient(process.url).initialize()
        self.assertEqual(caught.exception.code, 401)
        client = await self.client(process.url, token="s3cret")
        await client.call("store", {"key": "a", "value": 1})
        self.assertEqual((await client.call("retrieve", {"key": "a"}))["value"], 1)

    async def test_official_sdk_client(self) -> None:
        """The mcp SDK's own client (streamable HTTP, bearer token) sees the tools and their results."""
        process = await self.server(token="tok")
        code, out, err = await run_python(SDK_CLIENT, [process.url, "tok"])
        self.assertEqual(code, 0, err)
        result = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(result["tools"], sorted(TOOLS))
        self.assertEqual(result["store"]["structured"], {"key": "sdk/a", "stored": True})
        self.assertEqual(
            result["retrieve"]["structured"], {"key": "sdk/a", "value": {"n": 1, "s": "\u00e9"}, "found": True}
        )
        # the text content carries the same JSON, for clients that ignore structuredContent
        self.assertEqual(json.loads(result["retrieve"]["text"])["value"], {"n": 1, "s": "\u00e9"})
        self.assertEqual(result["list"]["structured"], {"keys": ["sdk/a"], "truncated": False})
        self.assertEqual(result["delete"]["structured"], {"key": "sdk/a", "deleted": True})
        self.assertEqual(result["missing"]["structured"], {"key": "sdk/a", "value": None, "found": False})
        self.assertTrue(result["bad"]["isError"])
        self.assertIn("key must be a non-empty string", result["bad"]["text"])

    async def test_node_mcp_client(self) -> None:
        """The node's own MCP client (caxton.mcp.client) lists and calls the tools, with the token."""
        try:
            from caxton.mcp.client import McpClient as NodeMcpClient
        except ImportError as e:  # pragma: no cover - the node's client is part of the tree
            raise SkipTest(f"caxton.mcp.client is not importable: {e}")
        process = await self.server(token="tok")
        client = NodeMcpClient(reactor, "state", process.url, token="tok", timeout=30.0)
        self.addCleanup(client.close)
        self.assertEqual({t["name"] for t in await client.list_tools()}, TOOLS)
        result = await client.call_tool("store", {"key": "counter/demo", "value": 3})
        self.assertEqual(result["structuredContent"], {"key": "counter/demo", "stored": True})
        result = await client.call_tool("retrieve", {"key": "counter/demo"})
        self.assertEqual(result["structuredContent"], {"key": "counter/demo", "value": 3, "found": True})
        result = await client.call_tool("store", {"key": "", "value": 3})
        self.assertTrue(result["isError"])

    async def test_stops_on_sigterm(self) -> None:
        """SIGTERM ends the server promptly and cleanly."""
        process = await self.server()
        client = await self.client(process.url)
        await client.call("store", {"key": "a", "value": 1})
        self.assertIn(await process.stop(), (0, None))


class StateStoreTests(SynchronousTestCase):
    """The SQLite table behind the tools, without HTTP."""

    def setUp(self) -> None:
        reason = mcp_available()
        if reason:
            raise SkipTest(reason)
        self.module = load_server_module()
        path = os.path.join(self.mktemp(), "sub", "state.db")
        self.store = self.module.StateStore(path)
        self.addCleanup(self.store.close)
        self.path = path

    def test_created_in_wal_mode(self) -> None:
        """The file (and its directory) is created, in WAL mode."""
        import sqlite3

        self.assertTrue(os.path.exists(self.path))
        with sqlite3.connect(self.path) as db:
            self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_list_is_bounded(self) -> None:
        """list returns at most LIST_LIMIT keys, sorted, and says it truncated."""
        limit = self.module.LIST_LIMIT
        for i in range(limit + 5):
            self.store.store("k/%05d" % i, i)
        self.store.store("l/0", 0)
        keys, truncated = self.store.list("k/")
        self.assertEqual(len(keys), limit)
        self.assertTrue(truncated)
        self.assertEqual(keys, sorted(keys))
        self.assertEqual(keys[0], "k/00000")
        keys, truncated = self.store.list("k/0100")
        self.assertEqual(len(keys), 5)
        self.assertFalse(truncated)

    def test_values_must_be_json(self) -> None:
        """NaN and oversized values are refused as tool errors."""
        from mcp.server.mcpserver.exceptions import ToolError

        with self.assertRaises(ToolError):
            self.store.store("a", float("nan"))
        with self.assertRaises(ToolError):
            self.store.store("a", "x" * (self.module.MAX_VALUE + 1))
        self.assertEqual(self.store.retrieve("a"), (False, None))


class SseTests(SynchronousTestCase):
    """parse_sse, the test client's reading of SSE answers."""

    def test_events(self) -> None:
        """message events are parsed; other events and comments are skipped; data lines are joined."""
        body = (
            b": comment\n\nevent: message\ndata: {\"id\":1,\ndata: \"result\":{}}\n\n"
            b"event: ping\ndata: {}\n\r\n\r\ndata: {\"id\":2}\n\n"
        )
        self.assertEqual(parse_sse(body), [{"id": 1, "result": {}}, {"id": 2}])


# ---------------------------------------------------------------------------
# The counter agent, on the node's runtime


LIMITS = Limits(memory=16 * 2**20, fuel=10**9, wall_clock=5.0, max_message=256 * 1024, max_sends=1000)


class Counter:
    """
    One instance of counter.wat in the node's L{WasmRuntime}, with the
    node's host functions: what it sends comes back as the node's own
    message dicts (replies already addressed by the node).
    """

    runtime: Optional[WasmRuntime] = None

    def __init__(self, config: Any = None, limits: Limits = LIMITS) -> None:
        if Counter.runtime is None:
            Counter.runtime = WasmRuntime()
        runtime = Counter.runtime
        self.instance = runtime.instantiate(
            runtime.compile(wat_module(example("wat", "counter.wat"))), "counter", limits
        )
        # the node hands init the spec's config as JSON, "null" when none
        self.init_outcome = self.instance.run_init(encode_body(config) if config is not None else b"null")
        self.logs = [(line.level, line.text) for line in self.init_outcome.logs]

    def sent_at_init(self) -> List[Dict[str, Any]]:
        return [message_to_dict(m) for m in self.init_outcome.sent]

    def deliver(self, **message: Any) -> List[Dict[str, Any]]:
        """Hand it one message; what it sent (replies included), as dicts."""
        message.setdefault("message_id", "m%d" % id(message))
        message.setdefault("receiver", "counter")
        message.setdefault("conversation_id", "conv-" + message["message_id"])
        # None means "absent", as in the node's messages
        raw = encode_body({k: v for k, v in message.items() if v is not None})
        outcome = self.instance.deliver(raw, decode_message(raw))
        assert outcome.ok, outcome.detail
        assert not outcome.refused, outcome.refused
        self.logs.extend((line.level, line.text) for line in outcome.logs)
        return [message_to_dict(m) for m in outcome.sent]

    def request(self, n: int, sender: str = "client:alice", **extra: Any) -> List[Dict[str, Any]]:
        fields = dict(
            performative="request", sender=sender, message_id="q%d" % n, conversation_id="c%d" % n,
            reply_with="r%d" % n, protocol="fipa-request", content={"n": n},
        )
        fields.update(extra)
        return self.deliver(**fields)

    def restore(
        self, value: Any = None, found: bool = True, key: str = "counter", wrap: bool = False
    ) -> List[Dict[str, Any]]:
        """The retrieve's answer; C{wrap} gives the whole CallToolResult instead of its structuredContent."""
        result: Dict[str, Any] = {"key": key, "value": value if found else None, "found": found}
        if wrap:
            result = {
                "content": [{"type": "text", "text": json.dumps(result)}],
                "structuredContent": result,
                "isError": False,
            }
        return self.deliver(performative="inform", sender="mcp:state/retrieve", content=result)

    def stored(self, key: str = "counter") -> List[Dict[str, Any]]:
        return self.deliver(performative="inform", sender="mcp:state/store", content={"key": key, "stored": True})

    def tool_failed(self, tool: str, reason: str = "UNREACHABLE") -> List[Dict[str, Any]]:
        return self.deliver(
            performative="failure", sender="caxton",
            content={"reason": reason, "message": "no answer", "message_id": "x", "receiver": "mcp:state/" + tool},
        )


def store_of(count: int, key: str = "counter", server: str = "state") -> Dict[str, Any]:
    return {"performative": "request", "sender": "counter", "receiver": f"mcp:{server}/store",
            "content": {"key": key, "value": count}}


def informs(sent: List[Dict[str, Any]]) -> List[tuple]:
    """(receiver, conversation_id, in_reply_to, count) of each inform sent."""
    return [
        (m["receiver"], m.get("conversation_id"), m.get("in_reply_to"), m["content"]["count"])
        for m in sent if m["performative"] == "inform"
    ]


def stores(sent: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [m for m in sent if isinstance(m["receiver"], str) and m["receiver"].startswith("mcp:")]


class CounterAgentTests(SynchronousTestCase):
    """counter.wat: counting, checkpointing and restoring through MCP tools."""

    def test_module_follows_the_abi(self) -> None:
        """It is a core module with the ABI's exports and only caxton.send/reply/log imports."""
        wasm = wat_module(example("wat", "counter.wat"))
        module = wasmtime.Module(wasmtime.Engine(), wasm)
        self.assertEqual(abi_problems(module), [])
        self.assertEqual(sorted((i.module, i.name) for i in module.imports),
                         [("caxton", "log"), ("caxton", "reply"), ("caxton", "send")])
        # the node's own compile and ABI validation accept it
        try:
            WasmRuntime().compile(wasm)
        except InvalidWasm as e:  # pragma: no cover - the assertion is the point
            self.fail(f"the node refuses counter.wat: {e}")

    def test_init_asks_for_the_stored_count(self) -> None:
        """init sends a retrieve for the configured key (default "counter") to mcp:<server>/retrieve."""
        self.assertEqual(Counter().sent_at_init(), [
            {"performative": "request", "sender": "counter", "receiver": "mcp:state/retrieve",
             "content": {"key": "counter"}}])
        agent = Counter({"key": "counter/demo", "server": "kv"})
        self.assertTrue(agent.init_outcome.ok)
        self.assertEqual(agent.sent_at_init(), [
            {"performative": "request", "sender": "counter", "receiver": "mcp:kv/retrieve",
             "content": {"key": "counter/demo"}}])
        # a key with escapes is passed on as written
        agent = Counter({"key": "a\"b\\c\u00e9"})
        self.assertEqual(agent.sent_at_init()[0]["content"], {"key": "a\"b\\c\u00e9"})

    def test_bad_config_fails_init(self) -> None:
        """A key or server that is not a non-empty string (or is too long) fails init with a log line."""
        for config in ({"key": 5}, {"key": ""}, {"key": "k" * 255}, {"server": ["x"]}, {"server": ""},
                       {"server": "s" * 64}):
            agent = Counter(config)
            self.assertFalse(agent.init_outcome.ok, config)
            self.assertEqual(agent.sent_at_init(), [], config)
            self.assertEqual(agent.logs[0][0], 3, config)
        self.assertTrue(Counter({"key": "k" * 254, "server": "s" * 63}).init_outcome.ok)
        self.assertTrue(Counter(5).init_outcome.ok)

    def test_counts_on_from_the_restored_value(self) -> None:
        """After the restore, each request is answered inform {"count": N} and checkpointed."""
        agent = Counter({"key": "counter/demo"})
        self.assertEqual(agent.restore(41, key="counter/demo"), [])
        self.assertIn((1, "restored the count from the state server"), agent.logs)
        sent = agent.request(1)
        self.assertEqual(sent, [
            {"performative": "inform", "sender": "counter", "receiver": "client:alice",
             "protocol": "fipa-request", "conversation_id": "c1", "in_reply_to": "r1",
             "content": {"count": 42}},
            store_of(42, "counter/demo")])

    def test_nothing_stored_starts_from_zero(self) -> None:
        """found: false means 0; nothing is stored until there is something to store."""
        agent = Counter()
        self.assertEqual(agent.restore(found=False), [])
        self.assertIn((1, "no stored count; starting from 0"), agent.logs)
        self.assertEqual(informs(agent.request(1)), [("client:alice", "c1", "r1", 1)])

    def test_requests_before_the_restore_wait_and_are_not_lost(self) -> None:
        """
        Requests that arrive before the restore are counted; once the stored
        count arrives each gets its answer in order, on top of it, and one
        store carries the total. Nothing is stored before the restore.
        """
        agent = Counter()
        self.assertEqual(agent.request(1), [])
        self.assertEqual(agent.request(2, sender="worker", reply_to=["client:bob", "client:carol"]), [])
        self.assertEqual(agent.request(3, reply_with=None, protocol=None), [])
        sent = agent.restore(10)
        self.assertEqual(informs(sent), [
            ("client:alice", "c1", "r1", 11),
            (["client:bob", "client:carol"], "c2", "r2", 12),
            ("client:alice", "c3", None, 13)])
        self.assertEqual(sent[0]["protocol"], "fipa-request")
        self.assertNotIn("protocol", sent[2])
        self.assertEqual(stores(sent), [store_of(13)])
        self.assertEqual(informs(agent.request(4)), [("client:alice", "c4", "r4", 14)])
        # a second restore answer changes nothing
        self.assertEqual(agent.restore(100), [])
        self.assertEqual(agent.stored(), [store_of(14)])
        self.assertEqual(informs(agent.request(5)), [("client:alice", "c5", "r5", 15)])

    def test_restore_from_a_whole_call_tool_result(self) -> None:
        """A restore whose content is the whole CallToolResult is read through structuredContent."""
        agent = Counter()
        agent.restore(5, wrap=True)
        self.assertEqual(informs(agent.request(1))[0][3], 6)

    def test_stored_value_not_an_integer(self) -> None:
        """A stored value that is not a whole integer counts as 0, with a warning."""
        for value in ("12", 1.5, 1e3, {"n": 3}, [4], True, 10**19):
            agent = Counter()
            agent.restore(value)
            self.assertIn((2, "the stored count is not an integer; starting from 0"), agent.logs, value)
            self.assertEqual(informs(agent.request(1))[0][3], 1, value)
        agent = Counter()
        agent.restore(-3)
        self.assertEqual(informs(agent.request(1))[0][3], -2)

    def test_one_store_in_flight(self) -> None:
        """While a store is in flight, requests are answered but the next store waits for its answer."""
        agent = Counter()
        agent.restore(0)
        self.assertEqual(stores(agent.request(1)), [store_of(1)])
        self.assertEqual(stores(agent.request(2)), [])
        self.assertEqual(stores(agent.request(3)), [])
        # the first store's answer sends the latest count
        self.assertEqual(agent.stored(), [store_of(3)])
        self.assertEqual(agent.stored(), [])
        self.assertEqual(stores(agent.request(4)), [store_of(4)])

    def test_store_failure_is_logged_and_retried_with_the_next_request(self) -> None:
        """A failed store is logged at warn; the next request checkpoints again."""
        agent = Counter()
        agent.restore(7)
        agent.request(1)
        self.assertEqual(agent.tool_failed("store", "TIMEOUT"), [])
        self.assertIn(
            (2, 'could not store the count: {"reason":"TIMEOUT","message":"no answer","message_id":"x",'
                '"receiver":"mcp:state/store"}'),
            agent.logs)
        self.assertEqual(stores(agent.request(2)), [store_of(9)])

    def test_retrieve_failure(self) -> None:
        """
        When the retrieve fails, the waiting requesters get failure
        {"reason":"state-unavailable"} and are not counted; the next request
        retries the retrieve.
        """
        agent = Counter()
        agent.request(1)
        agent.request(2)
        sent = agent.tool_failed("retrieve", "TOOL_ERROR")
        self.assertEqual([(m["performative"], m["receiver"], m["conversation_id"], m["in_reply_to"], m["content"])
                          for m in sent],
                         [("failure", "client:alice", "c1", "r1", {"reason": "state-unavailable"}),
                          ("failure", "client:alice", "c2", "r2", {"reason": "state-unavailable"})])
        self.assertTrue(any(level == 2 and text.startswith("could not retrieve the count: ")
                            for level, text in agent.logs))
        sent = agent.request(3)
        self.assertEqual(sent, [{"performative": "request", "sender": "counter",
                                 "receiver": "mcp:state/retrieve", "content": {"key": "counter"}}])
        self.assertEqual(agent.request(4), [])
        sent = agent.restore(20)
        self.assertEqual(informs(sent), [("client:alice", "c3", "r3", 21), ("client:alice", "c4", "r4", 22)])
        self.assertEqual(stores(sent), [store_of(22)])

    def test_too_many_waiting(self) -> None:
        """Past 16 waiting requests, a request is refused {"reason":"restoring"} and not counted."""
        agent = Counter()
        for n in range(16):
            self.assertEqual(agent.request(n), [])
        sent = agent.request(16)
        self.assertEqual([(m["performative"], m["content"]) for m in sent],
                         [("refuse", {"reason": "restoring"})])
        sent = agent.restore(100)
        self.assertEqual([c for *_, c in informs(sent)], list(range(101, 117)))
        self.assertEqual(stores(sent), [store_of(116)])

    def test_long_requester_fields(self) -> None:
        """
        The longest ids the node accepts are kept while restoring, even
        non-ASCII; a reply_to list too long to keep is refused rather than
        lost (and answered normally once restored).
        """
        agent = Counter()
        long_id = "\u00e9" * 255          # 510 bytes of UTF-8
        self.assertEqual(agent.request(1, conversation_id=long_id, reply_with=long_id), [])
        many = ["client:" + "x" * 200 + str(i) for i in range(6)]
        sent = agent.request(2, reply_to=many)
        self.assertEqual([(m["performative"], m["receiver"]) for m in sent], [("refuse", many)])
        sent = agent.restore(0)
        self.assertEqual(informs(sent), [("client:alice", long_id, long_id, 1)])
        self.assertEqual(informs(agent.request(3, reply_to=many)), [(many, "c3", "r3", 2)])

    def test_node_notices_and_strangers_are_not_counted(self) -> None:
        """not-understood from the node, informs from clients and tools' requests are logged, not counted."""
        agent = Counter()
        agent.restore(0)
        self.assertEqual(agent.deliver(performative="not-understood", sender="caxton", content={"reason": "x"}), [])
        self.assertEqual(agent.deliver(performative="inform", sender="client:alice", content=1), [])
        self.assertEqual(agent.deliver(performative="request", sender="mcp:state/list", content={}), [])
        self.assertEqual(agent.deliver(performative="inform", sender="mcp:state/list", content={}), [])
        self.assertEqual(agent.deliver(performative="failure", sender="caxton",
                                       content={"reason": "AGENT_NOT_FOUND", "receiver": "nobody"}), [])
        self.assertEqual(sum(1 for level, _ in agent.logs if level == 2), 5)
        self.assertEqual(informs(agent.request(1))[0][3], 1)

    def test_memory_does_not_grow(self) -> None:
        """The heap is reset per message: 2000 requests leave memory as it was."""
        agent = Counter()
        agent.restore(0)
        agent.request(0)
        before = agent.instance.memory_bytes()
        for n in range(1, 2001):
            agent.request(n)
            if n % 2:
                agent.stored()
        self.assertEqual(agent.instance.memory_bytes(), before)
        self.assertEqual(informs(agent.request(2001))[0][3], 2002)
