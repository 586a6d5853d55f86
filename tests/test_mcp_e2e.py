"""
End-to-end tests of business state through MCP tools (SPEC 8): a real
node process, the real example state server (examples/mcp-state-server/,
the official MCP SDK) as its own process, and the example counter agent
(examples/agents/wat/counter.wat) checkpointing through it.

Everything talks over real HTTP on 127.0.0.1; every process is stopped in
cleanup; every wait is bounded in count and time.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from caxton.mcp.client import McpClient
from tests.mcpserver import StateServerProcess, mcp_available
from tests.nodes import Client, NodeProcess
from tests.wasmbuild import example, wat_module

#: The longest any one wait takes, in seconds.
WAIT = 30.0


class _Silent(Protocol):
    """
    Accepts a connection and never answers: a hung MCP server.
    """


class CheckpointTests(unittest.TestCase):
    """
    A counter agent keeps its count in the state server across a node
    restart, and tool trouble reaches agents as clear failures.
    """

    timeout = 240

    def setUp(self) -> None:
        reason = mcp_available()
        if reason is not None:
            raise unittest.SkipTest(reason)

    async def server(self) -> str:
        """
        Start the example state server on a fresh SQLite file; its URL.
        """
        server = StateServerProcess(os.path.abspath(self.mktemp()) + ".sqlite3")
        self.addCleanup(server.stop)
        return await server.start()

    async def node(self, data_dir: str, servers: Dict[str, str], **env: str) -> tuple:
        """
        Start a node using MCP C{servers} (name to URL); killed at the end.
        """
        variables = {"CAXTON_MCP_SERVERS": ",".join(f"{k}={v}" for k, v in servers.items())}
        variables.update(env)
        process = NodeProcess(data_dir, env=variables)
        self.addCleanup(process.stop, signal.SIGKILL)
        await process.start()
        return process, Client(process.url)

    async def stored(self, url: str, key: str) -> Any:
        """
        What the state server holds under C{key}, read with the node's own
        MCP client.
        """
        client = McpClient(reactor, "check", url, timeout=10.0)
        try:
            result = await client.call_tool("retrieve", {"key": key})
        finally:
            await client.close()
        return result["structuredContent"]

    async def until(self, what: str, check: Any, timeout: float = WAIT) -> Any:
        """
        Poll the coroutine function C{check} until it returns something
        true, at most C{timeout} seconds and 300 tries.
        """
        deadline = time.monotonic() + timeout
        last = None
        for _ in range(300):
            last = await check()
            if last:
                return last
            if time.monotonic() > deadline:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.fail(f"{what}: not within {timeout}s (last: {last!r})")

    async def invoke_count(self, client: Client, agent: str = "counter") -> int:
        status, body = await client.post(f"/api/v1/agents/{agent}/invoke", {"content": {}, "timeout": "10s"})
        self.assertEqual(status, 200, body)
        reply = body["reply"]
        self.assertEqual(reply["performative"], "inform", reply)
        return reply["content"]["count"]

    async def dead_letter(self, client: Client, receiver: str) -> Dict[str, Any]:
        """
        Wait for the dead letter of a message to C{receiver}.
        """

        async def find() -> Optional[Dict[str, Any]]:
            _, body = await client.get("/api/v1/dead-letters?limit=100")
            for letter in body["dead_letters"]:
                if letter["receiver"] == receiver:
                    return letter
            return None

        return await self.until(f"a dead letter for {receiver}", find)

    async def test_count_carries_on_after_restart(self) -> None:
        """
        The counter counts requests and checkpoints each count; after the
        node restarts, it restores the count in init and carries on where
        it was.  GET /api/v1/tools shows the example server's tools.
        """
        url = await self.server()
        data_dir = self.mktemp()
        node, client = await self.node(data_dir, {"state": url})

        status, body = await client.get("/api/v1/tools")
        self.assertEqual(status, 200, body)
        [server] = body["servers"]
        self.assertEqual((server["name"], server["status"]), ("state", "ok"))
        self.assertEqual(sorted(t["name"] for t in server["tools"]), ["delete", "list", "retrieve", "store"])

        status, body = await client.deploy(
            "counter",
            wat_module(example("wat", "counter.wat")),
            tools=["state/*"],
            config={"key": "counter/e2e"},
        )
        self.assertEqual(status, 201, body)
        self.assertEqual([await self.invoke_count(client) for _ in range(3)], [1, 2, 3])

        async def checkpointed() -> bool:
            return (await self.stored(url, "counter/e2e")).get("value") == 3

        await self.until("the count of 3 checkpointed", checkpointed)
        self.assertEqual(await node.stop(signal.SIGTERM), 0)

        node, client = await self.node(data_dir, {"state": url})
        self.assertEqual([await self.invoke_count(client) for _ in range(2)], [4, 5])

    async def test_tool_trouble_is_a_failure(self) -> None:
        """
        A server that is down (UNREACHABLE), one that never answers
        (TIMEOUT), a tool error (TOOL_ERROR, with the server's message) and
        a tool the agent was not given (FORBIDDEN) each end in a failure to
        the caller, recorded as a dead letter; the node stays healthy and a
        counter on the working server keeps counting.
        """
        url = await self.server()
        hung = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(_Silent))
        self.addCleanup(hung.stopListening)
        closed = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(_Silent))
        down = f"http://127.0.0.1:{closed.getHost().port}/mcp"
        await closed.stopListening()
        servers = {"state": url, "down": down, "hung": f"http://127.0.0.1:{hung.getHost().port}/mcp"}
        node, client = await self.node(self.mktemp(), servers, CAXTON_MCP_TIMEOUT="2s")
        counter = wat_module(example("wat", "counter.wat"))

        # Down and hung: the counter's restore in init fails, to the agent.
        for server, reason in (("down", "UNREACHABLE"), ("hung", "TIMEOUT")):
            status, body = await client.deploy(
                f"counter-{server}", counter, tools=[f"{server}/*"], config={"server": server}
            )
            self.assertEqual(status, 201, body)
            letter = await self.dead_letter(client, f"mcp:{server}/retrieve")
            self.assertEqual((letter["reason"], letter["message"]["sender"]), (reason, f"counter-{server}"))

        # A tool the agent's spec does not list: the store is refused.
        status, body = await client.deploy(
            "counter-partial", counter, tools=["state/retrieve"], config={"key": "counter/partial"}
        )
        self.assertEqual(status, 201, body)
        self.assertEqual(await self.invoke_count(client, "counter-partial"), 1)
        letter = await self.dead_letter(client, "mcp:state/store")
        self.assertEqual((letter["reason"], letter["message"]["sender"]), ("FORBIDDEN", "counter-partial"))

        # A tool error: the server's own message comes back.
        status, body = await client.post(
            "/api/v1/messages",
            {"performative": "request", "sender": "client:ops", "receiver": "mcp:state/retrieve",
             "content": {"key": ""}},
        )
        self.assertEqual(status, 202, body)
        failures: List[Dict[str, Any]] = await client.poll(
            "/api/v1/mailboxes/client:ops", lambda seen: any(m["performative"] == "failure" for m in seen)
        )
        [failure] = [m for m in failures if m["performative"] == "failure"]
        self.assertEqual(failure["content"]["reason"], "TOOL_ERROR")
        self.assertIn("key", failure["content"]["message"])

        # The node is unharmed, and the working server still serves.
        status, body = await client.get("/health")
        self.assertEqual(status, 200)
        status, body = await client.deploy("counter", counter, tools=["state/*"], config={"key": "counter/ok"})
        self.assertEqual(status, 201, body)
        self.assertEqual([await self.invoke_count(client) for _ in range(2)], [1, 2])
        status, body = await client.get("/api/v1/tools")
        states = {s["name"]: s["status"] for s in body["servers"]}
        self.assertEqual(states["state"], "ok")
        self.assertIn(states["down"], ("unreachable", "error"))
