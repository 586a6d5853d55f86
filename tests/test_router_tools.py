"""
Tests for MCP tool receivers in the router (SPEC 8): C{mcp:<server>/<tool>}
answered with C{inform} from the tool, or C{failure} from the node with the
reason; agents call only the tools their spec lists.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from caxton.acl.message import ACLMessage
from caxton.mcp.interfaces import IToolGateway, ToolFailure
from caxton.testing import FakeTools, LocalNode
from tests.localnode import LocalNodeTestCase
from tests.wasmbuild import testing_agent, wat_module


def _tool_error(arguments: Any) -> Any:
    raise ToolFailure("TOOL_ERROR", "disk full")


class ToolReceiverTests(LocalNodeTestCase):
    """
    Requests to tools through a L{FakeTools} gateway.
    """

    def setUp(self) -> None:
        self.later: Deferred = Deferred()
        self.tools = FakeTools(
            {
                ("state", "store"): lambda arguments: {"stored": arguments["key"]},
                ("state", "broken"): _tool_error,
                ("state", "slow"): lambda arguments: self.later,
            }
        )
        self.node = LocalNode(self.mktemp(), time.time(), tools=self.tools)
        self.successResultOf(self.node.open())
        self.addCleanup(lambda: self.successResultOf(self.node.store.close()))
        self.router = self.node.router
        self.agents = self.node.agents

    def test_fake_is_a_gateway(self) -> None:
        """
        The fake provides the interface the router uses.
        """
        verifyObject(IToolGateway, self.tools)

    def test_client_request_informed(self) -> None:
        """
        A client's request gets an inform from the tool's name, threaded on
        the request, with the tool's result as content.
        """
        sent = self.send(performative="request", receiver=("mcp:state/store",), content={"key": "k"},
                         reply_with="r1")
        [reply] = self.mailbox()
        self.assertEqual(
            (reply["performative"], reply["sender"], reply["content"], reply["in_reply_to"],
             reply["conversation_id"]),
            ("inform", "mcp:state/store", {"stored": "k"}, "r1", sent.conversation_id),
        )
        self.assertEqual(self.tools.calls, [("state", "store", {"key": "k"})])

    def test_failures(self) -> None:
        """
        A tool error, an unknown tool, a malformed tool name and a
        performative other than request each end in a failure from the
        node naming the reason, and a dead letter.
        """
        cases = [
            ("mcp:state/broken", "request", "TOOL_ERROR", "disk full"),
            ("mcp:state/nope", "request", "NOT_FOUND", "no tool"),
            ("mcp:state", "request", "INVALID_MESSAGE", "not a valid mcp:"),
            ("mcp:state/store", "inform", "NOT_UNDERSTOOD", "only request"),
        ]
        for receiver, performative, reason, detail in cases:
            self.send(performative=performative, receiver=(receiver,), content={"key": "k"})
        failures = [m for m in self.mailbox() if m["performative"] == "failure"]
        self.assertEqual([(f["sender"], f["content"]["reason"]) for f in failures],
                         [("caxton", reason) for _, _, reason, _ in cases])
        for failure, (_, _, _, detail) in zip(failures, cases):
            self.assertIn(detail, failure["content"]["message"])
        self.assertEqual(len(self.dead_letters()), len(cases))

    def test_answer_later(self) -> None:
        """
        A slow tool's answer is routed when it comes.
        """
        self.send(performative="request", receiver=("mcp:state/slow",), content={})
        self.assertEqual(self.mailbox(), [])
        self.later.callback({"done": True})
        self.node.pump()
        [reply] = self.mailbox()
        self.assertEqual(reply["content"], {"done": True})

    def test_agent_allowed(self) -> None:
        """
        An agent whose spec lists the tool (or its server with a star)
        calls it.
        """
        for tools in (["state/store"], ["state/*"], ["*"]):
            name = f"caller-{len(self.tools.calls)}"
            self.deploy(name, wat_module(testing_agent("toolcaller.wat")), tools=tools)
            self.send(performative="request", receiver=(name,), content={})
        self.assertEqual(len(self.tools.calls), 3)
        self.assertEqual([m["performative"] for m in self.mailbox()], ["inform"] * 3)

    def test_agent_forbidden(self) -> None:
        """
        An agent whose spec does not list the tool gets failure FORBIDDEN,
        and the tool is never called.
        """
        self.deploy("caller", wat_module(testing_agent("toolcaller.wat")), tools=["state/retrieve"])
        self.send(performative="request", receiver=("caller",), content={})
        self.assertEqual(self.tools.calls, [])
        [letter] = self.dead_letters()
        self.assertEqual((letter.reason, letter.receiver), ("FORBIDDEN", "mcp:state/store"))

    def test_no_gateway(self) -> None:
        """
        A node without MCP servers answers tool requests NOT_FOUND.
        """
        plain = LocalNode(self.mktemp(), time.time())
        self.successResultOf(plain.open())
        self.addCleanup(lambda: self.successResultOf(plain.store.close()))
        plain.router.send(ACLMessage(performative="request", sender="client:alice",
                                     receiver=("mcp:state/store",), content={}))
        plain.pump()
        [item] = self.successResultOf(plain.store.read_mailbox("client:alice", 0, 10))
        self.assertEqual(item.message["content"]["reason"], "NOT_FOUND")


class ToolsRouteTests(LocalNodeTestCase):
    """
    C{GET /api/v1/tools} lists the gateway's catalog.
    """

    def test_catalog(self) -> None:
        """
        Each configured server with its tools; an empty list without MCP
        servers.
        """
        import json

        from treq.testing import StubTreq

        from caxton.api.app import CaxtonAPI

        tools = FakeTools({("state", "store"): lambda a: None, ("state", "list"): lambda a: None})
        for gateway, expected in ((tools, [("state", ["list", "store"])]), (None, [])):
            api = CaxtonAPI(self.node.clock, self.agents, self.router, self.node.store, tools=gateway)
            http = StubTreq(api.resource())
            response = self.successResultOf(http.get("http://node/api/v1/tools"))
            body = json.loads(self.successResultOf(response.content()))
            self.assertEqual(response.code, 200)
            self.assertEqual([(s["name"], [t["name"] for t in s["tools"]]) for s in body["servers"]], expected)


class ToolAnswerTooLargeTests(LocalNodeTestCase):
    """
    A tool's answer the asking agent cannot take ends in a failure to that
    agent, not in silence.
    """

    def test_too_large(self) -> None:
        """
        An answer over the agent's max_message is refused at its inbox; the
        agent hears why from the node, and both are dead letters.
        """
        tools = FakeTools({("state", "store"): lambda arguments: {"blob": "x" * 4096}})
        self.node = LocalNode(self.mktemp(), time.time(), tools=tools)
        self.successResultOf(self.node.open())
        self.addCleanup(lambda: self.successResultOf(self.node.store.close()))
        self.router, self.agents = self.node.router, self.node.agents
        self.deploy("caller", wat_module(testing_agent("silent.wat")), tools=["state/*"],
                    limits={"max_message": 1024})
        request = ACLMessage(
            performative="request", sender="caller", receiver=("mcp:state/store",), content={},
            conversation_id="big-answer",
        )
        self.router.agent_sent("caller", request)
        self.node.pump()
        [letter] = [d for d in self.dead_letters() if d.receiver == "caller"]
        self.assertEqual((letter.reason, letter.message["sender"]), ("TOO_LARGE", "mcp:state/store"))
        _, messages = self.successResultOf(self.node.store.get_conversation("big-answer", 0, 100))
        kinds = [(m.message["performative"], m.message["sender"], m.message["receiver"]) for m in messages]
        self.assertIn(("failure", "caxton", "caller"), kinds)


class SpecToolsTests(LocalNodeTestCase):
    """
    The deploy spec's C{tools}: checked at deploy, kept, and shown.
    """

    def test_bad_allowances_refused(self) -> None:
        """
        Anything but server/tool, server/* or * is refused, naming the
        field.
        """
        from caxton.agents.manager import parse_spec
        from caxton.errors import InvalidRequest

        defaults = self.node.config.agent_defaults
        for bad in (["state"], ["/x"], ["a b/c"], "state/*", [1], ["state/*", "**"]):
            with self.assertRaises(InvalidRequest) as caught:
                parse_spec({"tools": bad}, defaults)
            self.assertIn("tools", str(caught.exception))
        spec = parse_spec({"tools": ["state/store", "state/store", "other/*", "*"]}, defaults)
        self.assertEqual(spec.tools, ("state/store", "other/*", "*"))

    def test_shown_and_kept(self) -> None:
        """
        The agent view lists the tools, and an update of other fields
        keeps them.
        """
        cell = self.deploy("caller", wat_module(testing_agent("silent.wat")), tools=["state/*"])
        self.assertEqual(cell.view("n")["tools"], ["state/*"])
        d = Deferred.fromCoroutine(self.agents.update("caller", None, dict(cell.spec.document, config={"a": 1})))
        self.node.pump()
        updated = self.successResultOf(d)
        self.assertEqual((updated.spec.tools, updated.spec.config), (("state/*",), {"a": 1}))
