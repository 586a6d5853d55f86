"""
Hostile agents against a real node process (SPEC 3.2): each attack costs
only the attacker's budget, while the node stays healthy and a neighbour
agent keeps answering.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.nodes import Client, NodeProcess
from tests.wasmbuild import example, testing_agent, wat_module

WALL_CLOCK = "500ms"
MAX_SENDS = 100
MAX_TRAPS = 3


class HostileAgentTests(unittest.TestCase):
    """
    One node per test, with a neighbour echo agent and one attacker.
    """

    timeout = 120

    async def setUp(self) -> None:
        self.node = NodeProcess(
            os.path.abspath(self.mktemp()),
            env={
                "CAXTON_AGENTS_WALL_CLOCK": WALL_CLOCK,
                "CAXTON_AGENTS_MAX_SENDS": str(MAX_SENDS),
                "CAXTON_AGENTS_MAX_TRAPS": str(MAX_TRAPS),
            },
        )
        self.addCleanup(self.node.kill)
        self.addCleanup(self.node.stop)
        url = await self.node.start()
        self.client = Client(url)
        code, body = await self.client.deploy("neighbour", wat_module(example("wat", "echo.wat")))
        self.assertEqual(code, 201, body)

    async def mailbox(self, client: str, after: int = 0, wait: str = "0s") -> List[Dict[str, Any]]:
        code, body = await self.client.get(f"/api/v1/mailboxes/{client}?after={after}&wait={wait}")
        self.assertEqual(code, 200, body)
        return [item["message"] for item in body["messages"]]

    async def wait_for(self, client: str, count: int, deadline: float = 30.0) -> List[Dict[str, Any]]:
        """
        Long-poll C{client}'s mailbox until it holds C{count} messages.
        """
        try:
            return await self.client.poll(
                f"/api/v1/mailboxes/{client}", lambda read: len(read) >= count, timeout=deadline
            )
        except unittest.FailTest as e:
            self.fail(f"{client} did not get {count} messages: {e}\n{self.node.output[-2000:]}")

    async def neighbour_answers(self) -> None:
        """
        The node answers /health and the neighbour answers an invoke.
        """
        code, body = await self.client.get("/health")
        self.assertEqual((code, body), (200, {"status": "ok"}))
        code, body = await self.client.post("/api/v1/agents/neighbour/invoke", {"content": "still there?", "timeout": "5s"})
        self.assertEqual(code, 200, body)
        self.assertEqual(body["reply"]["performative"], "inform")
        self.assertEqual(body["reply"]["sender"], "neighbour")

    async def attack(self, wasm_file: str, limits: Optional[dict] = None, during: bool = False) -> Dict[str, Any]:
        """
        Deploy the attacker, send it one request, prove the neighbour serves
        (while the attack still runs, when C{during}), and return the
        attacker's answer to its sender.
        """
        spec: Dict[str, Any] = {}
        if limits:
            spec["limits"] = limits
        code, body = await self.client.deploy("attacker", wat_module(testing_agent(wasm_file)), **spec)
        self.assertEqual(code, 201, body)
        code, _ = await self.client.post(
            "/api/v1/messages",
            {"performative": "request", "sender": "client:victim", "receiver": "attacker"},
        )
        self.assertEqual(code, 202)
        if during:
            await deferLater(reactor, 0.05, lambda: None)
            await self.neighbour_answers()
            self.assertEqual(await self.mailbox("client:victim"), [], "the attack ended before the neighbour was checked")
        [answer] = await self.wait_for("client:victim", 1)
        await self.neighbour_answers()
        return answer

    async def attacker(self) -> Dict[str, Any]:
        code, view = await self.client.get("/api/v1/agents/attacker")
        self.assertEqual(code, 200, view)
        return view

    async def test_infinite_loop(self) -> None:
        """
        An endless loop is interrupted at the wall-clock limit; meanwhile
        the node and the neighbour answer.
        """
        answer = await self.attack("spin.wat", during=True)
        self.assertEqual(answer["content"]["reason"], "AGENT_FAILED")
        self.assertIn("wall-clock", answer["content"]["message"])

    async def test_host_call_storm(self) -> None:
        """
        A loop of host calls (now_ms, log) is interrupted at the wall-clock
        limit too, though it burns no fuel in the host; the neighbour
        answers meanwhile.
        """
        answer = await self.attack("hoststorm.wat", during=True)
        self.assertIn("wall-clock", answer["content"]["message"])

    async def test_memory_bomb(self) -> None:
        """
        Growing memory past the cap ends in a trap for that message only;
        the agent stays running with a fresh instance.
        """
        answer = await self.attack("membomb.wat", limits={"memory": "2MiB"})
        self.assertEqual(answer["content"]["reason"], "AGENT_FAILED")
        view = await self.attacker()
        self.assertEqual((view["status"], view["counters"]["traps"]), ("running", 1))

    async def test_deep_recursion(self) -> None:
        """
        Unbounded recursion overflows the wasm stack: a trap, nothing more.
        """
        answer = await self.attack("recursion.wat")
        self.assertIn("stack overflow", answer["content"]["message"])

    async def test_ten_megabyte_message(self) -> None:
        """
        A 10 MB outgoing message is refused (TOO_LARGE, -2) and never
        routed; the handler's error reaches its sender.
        """
        answer = await self.attack("bigsend.wat", limits={"memory": "16MiB"})
        self.assertEqual(answer["content"]["message"], "handler returned -2")
        self.assertEqual(await self.mailbox("client:sink"), [])

    async def test_send_flood(self) -> None:
        """
        A million sends while handling one message: exactly max_sends are
        accepted and delivered, the rest refused, the node unharmed.
        """
        await self.attack("flood.wat")
        sink = await self.wait_for("client:sink", MAX_SENDS)
        await deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(len(await self.mailbox("client:sink")), MAX_SENDS)
        self.assertEqual(len(sink), MAX_SENDS)

    async def test_trap_every_message(self) -> None:
        """
        An agent that traps on every message goes to failed after K traps,
        with the reason visible through the API, and later messages fail at
        once; the neighbour is untouched.
        """
        code, _ = await self.client.deploy("attacker", wat_module(testing_agent("trap.wat")))
        self.assertEqual(code, 201)
        for _ in range(MAX_TRAPS + 1):
            await self.client.post(
                "/api/v1/messages",
                {"performative": "request", "sender": "client:victim", "receiver": "attacker"},
            )
        answers = await self.wait_for("client:victim", MAX_TRAPS + 1)
        self.assertEqual([a["content"]["reason"] for a in answers], ["AGENT_FAILED"] * (MAX_TRAPS + 1))
        self.assertIn("has failed", answers[-1]["content"]["message"])
        view = await self.attacker()
        self.assertEqual(view["status"], "failed")
        self.assertIn(f"{MAX_TRAPS} traps", view["reason"])
        await self.neighbour_answers()
