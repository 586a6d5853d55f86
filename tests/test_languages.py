"""
Agents in four languages on one real node, through the API: WAT, C (zig),
Python (componentize-py) and JavaScript (componentize-js), each built from
source in the test run (SPEC 3.3; issue: "agents in any language").
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from twisted.trial import unittest

from tests import jsbuild
from tests.nodes import Client, NodeProcess
from tests.wasmbuild import (
    c_module,
    componentize_py_available,
    example,
    py_component,
    wat_module,
    zig_available,
)


def _needs_toolchains() -> None:
    missing = [
        name
        for name, available in (
            ("zig (pip install ziglang)", zig_available()),
            ("componentize-py", componentize_py_available()),
            ("node and npm", jsbuild.node_available()),
        )
        if not available
    ]
    if missing:
        raise unittest.SkipTest("needs " + ", ".join(missing))


class LanguagesTests(unittest.TestCase):
    """
    One node, agents in every supported language.
    """

    # Compiling the two components (about 18 and 12 MB) takes a while.
    timeout = 600

    async def setUp(self) -> None:
        _needs_toolchains()
        self.node = NodeProcess(os.path.abspath(self.mktemp()))
        self.addCleanup(self.node.kill)
        self.addCleanup(self.node.stop)
        self.client = Client(await self.node.start())

    async def deploy(self, name: str, wasm: bytes, **spec: Any) -> None:
        code, body = await self.client.deploy(name, wasm, **spec)
        self.assertEqual(code, 201, body)

    async def mailbox(self, client: str, count: int) -> List[Dict[str, Any]]:
        """
        Long-poll C{client}'s mailbox until it holds C{count} messages.
        """
        return await self.client.poll(f"/api/v1/mailboxes/{client}", lambda read: len(read) >= count, timeout=120)

    async def test_echo_in_every_language(self) -> None:
        """
        The echo agent written in WAT, C, Python and JavaScript, each built
        from source and deployed through the API, answers a request with an
        inform carrying the request.
        """
        await self.deploy("echo-wat", wat_module(example("wat", "echo.wat")))
        await self.deploy("echo-c", c_module(example("c", "echo.c")))
        await self.deploy("echo-py", py_component(example("python", "echo")))
        await self.deploy("echo-js", jsbuild.js_component("echo"))
        for name in ("echo-wat", "echo-c", "echo-py", "echo-js"):
            code, body = await self.client.post(
                f"/api/v1/agents/{name}/invoke", {"content": {"to": name}, "timeout": "10s"}
            )
            self.assertEqual(code, 200, body)
            reply = body["reply"]
            self.assertEqual((reply["performative"], reply["sender"]), ("inform", name), reply)
            self.assertEqual(reply["content"]["content"], {"to": name})

    async def test_contract_net_across_languages(self) -> None:
        """
        One conversation between four languages: the WAT contract-net
        manager calls for bids, bidders in WAT, C, Python and JavaScript
        propose, the cheapest (the JavaScript one) is accepted, the others
        rejected, and its inform reaches the client that asked.
        """
        await self.deploy("bid-wat", wat_module(example("wat", "cnp_bidder.wat")), capabilities=["bid"], config={"price": 40})
        await self.deploy("bid-c", c_module(example("c", "bidder.c")), capabilities=["bid"], config={"price": 30})
        await self.deploy("bid-py", py_component(example("python", "bidder")), capabilities=["bid"], config={"price": 20})
        await self.deploy("bid-js", jsbuild.js_component("bidder"), capabilities=["bid"], config={"price": 10})
        await self.deploy(
            "manager",
            wat_module(example("wat", "cnp_manager.wat")),
            config={"bidders": 4, "deadline_ms": 10000},
        )
        code, _ = await self.client.post(
            "/api/v1/messages",
            {"performative": "request", "sender": "client:alice", "receiver": "manager", "protocol": "fipa-request", "content": {"task": "t"}},
        )
        self.assertEqual(code, 202)
        [result] = await self.mailbox("client:alice", 1)
        self.assertEqual(result["performative"], "inform", result)
        self.assertEqual(result["content"], {"winner": "bid-js", "price": 10})

        code, body = await self.client.get("/api/v1/conversations?participant=bid-py")
        [cfp] = [c for c in body["conversations"] if c["protocol"] == "fipa-contract-net"]
        self.assertEqual(
            set(cfp["participants"]), {"manager", "bid-wat", "bid-c", "bid-py", "bid-js"}
        )
        code, body = await self.client.get(f"/api/v1/conversations/{cfp['conversation_id']}")
        seen = {
            (m["message"]["performative"], m["message"]["sender"], str(m["message"].get("receiver")))
            for m in body["messages"]
        }
        for bidder in ("bid-wat", "bid-c", "bid-py", "bid-js"):
            self.assertIn(("propose", bidder, "manager"), seen)
        self.assertIn(("accept-proposal", "manager", "bid-js"), seen)
        for loser in ("bid-wat", "bid-c", "bid-py"):
            self.assertIn(("reject-proposal", "manager", loser), seen)
        self.assertIn(("inform", "bid-js", "manager"), seen)
