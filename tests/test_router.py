"""
Tests for L{caxton.router.router} and L{caxton.agents.manager} together, on
a deterministic L{LocalNode}: real wasm agents, a real SQLite file, no
threads and no sockets.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attr
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from caxton.acl.message import ACLMessage, CapabilityReceiver, InvalidMessage
from caxton.agents.manager import IMessageSink
from caxton.errors import AgentAlreadyExists, InvalidRequest
from caxton.router.router import NODE
from tests.localnode import LocalNodeTestCase
from tests.wasmbuild import example, testing_agent, wat_module


def echo() -> bytes:
    return wat_module(example("wat", "echo.wat"))


def agent(name: str) -> bytes:
    return wat_module(testing_agent(name))


RouterTestCase = LocalNodeTestCase


class DeliveryTests(RouterTestCase):
    """
    Messages reach agents and clients, or their senders hear why not.
    """

    def test_sink(self) -> None:
        """
        The router is the agents' L{IMessageSink}.
        """
        verifyObject(IMessageSink, self.router)
        self.assertIs(self.agents.sink, self.router)

    def test_request_inform(self) -> None:
        """
        A request to the echo agent comes back as an inform in the client's
        mailbox, threaded in the same conversation, and both are recorded.
        """
        self.deploy("echo", echo())
        sent = self.send(performative="request", receiver=("echo",), content={"n": 1}, reply_with="r1")
        [reply] = self.mailbox()
        self.assertEqual(reply["performative"], "inform")
        self.assertEqual(reply["sender"], "echo")
        self.assertEqual(reply["conversation_id"], sent.conversation_id)
        self.assertEqual(reply["in_reply_to"], "r1")
        self.assertEqual(reply["content"]["content"], {"n": 1})
        record, messages = self.successResultOf(
            self.node.store.get_conversation(sent.conversation_id, 0, 100)
        )
        self.assertEqual([m.message["performative"] for m in messages], ["request", "inform"])
        self.assertEqual(record.participants, ("client:alice", "echo"))

    def test_ids_assigned(self) -> None:
        """
        The node assigns a message id always, and a conversation id when
        none is given; a given conversation id is kept.
        """
        first = self.send(performative="inform", receiver=("client:bob",))
        second = self.send(performative="inform", receiver=("client:bob",), conversation_id="c-1")
        self.assertTrue(first.message_id and first.conversation_id)
        self.assertNotEqual(first.message_id, second.message_id)
        self.assertEqual(second.conversation_id, "c-1")

    def test_fifo(self) -> None:
        """
        Messages from one sender to one receiver are handled in the order
        sent: the echo's replies come back in that order.
        """
        self.deploy("echo", echo())
        for i in range(200):
            self.router.send(
                ACLMessage("request", sender="client:alice", receiver=("echo",), content=i)
            )
        self.node.pump()
        self.assertEqual([m["content"]["content"] for m in self.mailbox()], list(range(200)))

    def test_unknown_agent(self) -> None:
        """
        A message to a name no agent has: failure AGENT_NOT_FOUND from the
        node in the sender's mailbox, and a dead letter.
        """
        sent = self.send(performative="request", receiver=("nobody",), reply_with="q")
        [failure] = self.mailbox()
        self.assertEqual(failure["performative"], "failure")
        self.assertEqual(failure["sender"], NODE)
        self.assertEqual(failure["in_reply_to"], "q")
        self.assertEqual(failure["content"]["reason"], "AGENT_NOT_FOUND")
        self.assertEqual(failure["content"]["message_id"], sent.message_id)
        [letter] = self.dead_letters()
        self.assertEqual((letter.reason, letter.receiver), ("AGENT_NOT_FOUND", "nobody"))

    def test_several_receivers(self) -> None:
        """
        Each receiver gets its own copy; one unknown receiver fails alone.
        """
        self.deploy("echo", echo())
        self.send(performative="request", receiver=("echo", "ghost", "client:bob"))
        performatives = sorted(m["performative"] for m in self.mailbox())
        self.assertEqual(performatives, ["failure", "inform"])
        self.assertEqual(len(self.mailbox("client:bob")), 1)

    def test_capability_one_takes_turns(self) -> None:
        """
        A capability receiver without C{all} reaches one agent offering it,
        the agents taking turns.
        """
        self.deploy("e1", echo(), capabilities=["echo"])
        self.deploy("e2", echo(), capabilities=["echo"])
        for _ in range(4):
            self.send(performative="request", receiver=CapabilityReceiver("echo"))
        senders = [m["sender"] for m in self.mailbox()]
        self.assertEqual(sorted(senders), ["e1", "e1", "e2", "e2"])

    def test_capability_all(self) -> None:
        """
        C{all} reaches every agent offering the capability, and only those.
        """
        self.deploy("e1", echo(), capabilities=["echo"])
        self.deploy("e2", echo(), capabilities=["echo", "x"])
        self.deploy("e3", echo(), capabilities=["other"])
        self.send(performative="request", receiver=CapabilityReceiver("echo", True))
        self.assertEqual(sorted(m["sender"] for m in self.mailbox()), ["e1", "e2"])

    def test_capability_nobody(self) -> None:
        """
        A capability nobody offers: AGENT_NOT_FOUND naming the capability.
        """
        self.send(performative="cfp", receiver=CapabilityReceiver("bid", True))
        [failure] = self.mailbox()
        self.assertEqual(failure["content"]["reason"], "AGENT_NOT_FOUND")
        self.assertIn("bid", failure["content"]["message"])

    def test_to_node_is_absorbed(self) -> None:
        """
        A message addressed to the node's own name ends there: recorded, not
        bounced (an agent answering a node failure must not loop).
        """
        self.send(performative="inform", receiver=(NODE,))
        self.assertEqual(self.mailbox(), [])
        self.assertEqual(self.dead_letters(), [])
        self.assertEqual(self.router.counters["to_node"], 1)

    def test_client_sender_only(self) -> None:
        """
        API clients cannot send under an agent's name.
        """
        with self.assertRaises(InvalidMessage):
            self.router.send(ACLMessage("inform", sender="echo", receiver=("x",)))


class AgentFailureTests(RouterTestCase):
    """
    Traps, refusals and hostile agents cost only the message at hand.
    """

    overrides = {"agents__max_traps": 3, "agents__wall_clock": "100ms"}

    def test_trap_fails_message_then_fresh_instance(self) -> None:
        """
        A trap answers the sender with failure AGENT_FAILED; the next
        message gets a fresh instance; after K traps the agent is failed,
        says why, and further messages fail at once.
        """
        self.deploy("trap", agent("trap.wat"))
        for i in range(3):
            self.send(performative="request", receiver=("trap",))
        failures = self.mailbox()
        self.assertEqual([f["content"]["reason"] for f in failures], ["AGENT_FAILED"] * 3)
        self.assertIn("unreachable", failures[0]["content"]["message"])
        cell = self.agents.get("trap")
        self.assertEqual(cell.status, "failed")
        self.assertIn("3 traps", cell.reason)
        self.send(performative="request", receiver=("trap",))
        self.assertIn("has failed", self.mailbox()[-1]["content"]["message"])

    def test_handler_error_is_not_a_trap(self) -> None:
        """
        A handler returning non-zero fails that message without counting as
        a trap.
        """
        self.deploy("failing", agent("failing.wat"))
        for _ in range(5):
            self.send(performative="request", receiver=("failing",))
        cell = self.agents.get("failing")
        self.assertEqual((cell.status, cell.failed, cell.trapped), ("running", 5, 0))
        self.assertIn("handler returned 1", self.mailbox()[0]["content"]["message"])

    def test_memory_bomb(self) -> None:
        """
        An agent growing memory past its cap traps; its sender gets a
        failure and the agent keeps serving with a fresh instance.
        """
        self.deploy("bomb", agent("membomb.wat"), limits={"memory": "1MiB"})
        self.send(performative="request", receiver=("bomb",))
        self.send(performative="request", receiver=("bomb",))
        self.assertEqual([m["performative"] for m in self.mailbox()], ["failure", "failure"])
        self.assertEqual(self.agents.get("bomb").trapped, 2)

    def test_malformed_send(self) -> None:
        """
        An agent that sends malformed JSON hears not-understood from the
        node, once per attempt, with no ping-pong when it answers that
        with more garbage.
        """
        self.deploy("bad", agent("badsend.wat"))
        self.send(performative="request", receiver=("bad",))
        self.assertEqual(self.router.counters["not_understood"], 2)
        cell = self.agents.get("bad")
        self.assertEqual(cell.handled, 2)

    def test_queue_full(self) -> None:
        """
        Past C{agents.max_queue} waiting messages, senders get QUEUE_FULL.
        """
        self.agents.defaults = attr.evolve(self.agents.defaults, max_queue=2)
        self.deploy("echo", echo())
        self.successResultOf(Deferred.fromCoroutine(self.agents.stop("echo")))
        for _ in range(3):
            self.router.send(ACLMessage("request", sender="client:alice", receiver=("echo",)))
        [failure] = self.mailbox()
        self.assertEqual(failure["content"]["reason"], "QUEUE_FULL")


class ProtocolTests(RouterTestCase):
    """
    The node's help with fipa-request and fipa-contract-net (SPEC 4.3).
    """

    def reply_by(self, seconds: float) -> datetime:
        return datetime.fromtimestamp(self.node.clock.seconds(), timezone.utc) + timedelta(
            seconds=seconds
        )

    def test_request_timeout(self) -> None:
        """
        A request with reply_by to an agent that never answers: at the
        deadline the initiator gets failure TIMEOUT naming the agent.
        """
        self.deploy("silent", agent("silent.wat"))
        self.send(
            performative="request",
            receiver=("silent",),
            protocol="fipa-request",
            reply_by=self.reply_by(2),
            reply_with="ask",
        )
        self.assertEqual(self.mailbox(), [])
        self.node.clock.advance(2.5)
        [failure] = self.mailbox()
        self.assertEqual(failure["content"]["reason"], "TIMEOUT")
        self.assertEqual(failure["content"]["missing"], ["silent"])
        self.assertEqual(failure["in_reply_to"], "ask")

    def test_answered_request_no_timeout(self) -> None:
        """
        An answered request gets no TIMEOUT when its deadline passes.
        """
        self.deploy("echo", echo())
        self.send(performative="request", receiver=("echo",), protocol="fipa-request", reply_by=self.reply_by(1))
        self.node.clock.advance(5)
        self.assertEqual([m["performative"] for m in self.mailbox()], ["inform"])

    def test_late_proposal(self) -> None:
        """
        A proposal after the cfp's reply_by is answered reject-proposal with
        reason late by the node, and is not delivered to the initiator.
        """
        self.send(
            performative="cfp",
            sender="client:mgr",
            receiver=("client:bidder",),
            protocol="fipa-contract-net",
            conversation_id="cnp-1",
            reply_by=self.reply_by(1),
        )
        self.node.clock.advance(2)
        self.assertEqual(self.mailbox("client:mgr")[0]["content"]["reason"], "TIMEOUT")
        self.send(
            performative="propose",
            sender="client:bidder",
            receiver=("client:mgr",),
            protocol="fipa-contract-net",
            conversation_id="cnp-1",
        )
        rejection = self.mailbox("client:bidder")[-1]
        self.assertEqual(rejection["performative"], "reject-proposal")
        self.assertEqual(rejection["content"]["reason"], "late")
        self.assertEqual(len(self.mailbox("client:mgr")), 1)
        self.assertEqual(self.dead_letters()[0].reason, "LATE")

    def test_out_of_order(self) -> None:
        """
        A message that breaks the protocol's order is answered
        not-understood and not delivered.
        """
        self.send(
            performative="request",
            sender="client:a",
            receiver=("client:b",),
            protocol="fipa-request",
            conversation_id="req-1",
        )
        self.send(performative="inform", sender="client:b", receiver=("client:a",), protocol="fipa-request", conversation_id="req-1")
        self.send(performative="agree", sender="client:b", receiver=("client:a",), protocol="fipa-request", conversation_id="req-1")
        [answer] = [m for m in self.mailbox("client:b") if m["sender"] == NODE]
        self.assertEqual(answer["performative"], "not-understood")
        self.assertEqual([m["performative"] for m in self.mailbox("client:a")], ["inform"])

    def test_contract_net_between_agents(self) -> None:
        """
        A whole round between wasm agents: the manager's cfp reaches every
        bidder, the cheapest is accepted and the rest rejected, and the
        winner's inform reaches the client that asked.
        """
        bidder = wat_module(example("wat", "cnp_bidder.wat"))
        for name, price in (("b1", 30), ("b2", 10), ("b3", 20)):
            self.deploy(name, bidder, capabilities=["bid"], config={"price": price})
        self.deploy(
            "manager",
            wat_module(example("wat", "cnp_manager.wat")),
            config={"bidders": 3, "deadline_ms": 5000},
        )
        self.send(performative="request", receiver=("manager",), protocol="fipa-request", content={"task": "t"})
        [result] = self.mailbox()
        self.assertEqual(result["performative"], "inform")
        self.assertEqual(result["content"], {"winner": "b2", "price": 10})
        conversations = self.successResultOf(self.node.store.list_conversations(10, None, "b2"))
        [cfp] = [c for c in conversations if c.protocol == "fipa-contract-net"]
        _, messages = self.successResultOf(self.node.store.get_conversation(cfp.conversation_id, 0, 100))
        replies = {
            (m.message["performative"], m.message["receiver"])
            for m in messages
            if isinstance(m.message["receiver"], str)
        }
        self.assertIn(("accept-proposal", "b2"), replies)
        self.assertIn(("reject-proposal", "b1"), replies)
        self.assertIn(("reject-proposal", "b3"), replies)
        self.assertIn(("inform", "manager"), replies)


class LifecycleTests(RouterTestCase):
    """
    Deploy, stop, start, update and remove through the manager.
    """

    def test_duplicate_and_bad_names(self) -> None:
        """
        A taken name, a malformed name and the reserved name are refused.
        """
        self.deploy("echo", echo())
        for name, error in (("echo", AgentAlreadyExists), ("Bad Name", InvalidRequest), (NODE, InvalidRequest)):
            d = Deferred.fromCoroutine(self.agents.deploy(name, echo(), {}))
            self.node.pump()
            self.failureResultOf(d, error)

    def test_stopped_agent_queues(self) -> None:
        """
        A stopped agent keeps its messages; starting it handles them in order.
        """
        self.deploy("echo", echo())
        self.successResultOf(Deferred.fromCoroutine(self.agents.stop("echo")))
        for i in range(3):
            self.send(performative="request", receiver=("echo",), content=i)
        self.assertEqual(self.mailbox(), [])
        self.successResultOf(Deferred.fromCoroutine(self.agents.start("echo")))
        self.node.pump()
        self.assertEqual([m["content"]["content"] for m in self.mailbox()], [0, 1, 2])

    def test_update_bumps_version(self) -> None:
        """
        An update runs new messages on the new module and bumps the version;
        the store keeps the new version.
        """
        self.deploy("agent", agent("silent.wat"))
        self.send(performative="request", receiver=("agent",))
        self.assertEqual(self.mailbox(), [])
        d = Deferred.fromCoroutine(self.agents.update("agent", echo(), None))
        self.node.pump()
        cell = self.successResultOf(d)
        self.assertEqual(cell.version, 2)
        self.send(performative="request", receiver=("agent",))
        self.assertEqual([m["performative"] for m in self.mailbox()], ["inform"])
        [record] = self.successResultOf(self.node.store.load_agents())
        self.assertEqual(record.version, 2)

    def test_remove_fails_waiting(self) -> None:
        """
        Removing an agent fails the messages still waiting for it.
        """
        self.deploy("echo", echo())
        self.successResultOf(Deferred.fromCoroutine(self.agents.stop("echo")))
        self.send(performative="request", receiver=("echo",))
        self.successResultOf(Deferred.fromCoroutine(self.agents.remove("echo")))
        self.node.pump()
        [failure] = self.mailbox()
        self.assertIn("removed", failure["content"]["message"])
        self.assertIsNone(self.agents.get("echo"))
        self.assertEqual(self.successResultOf(self.node.store.load_agents()), [])


class OneOutcomeTests(RouterTestCase):
    """
    A message ends in exactly one recorded outcome.
    """

    def test_failed_request_no_timeout(self) -> None:
        """
        A tracked request to an unknown agent fails once, with
        AGENT_NOT_FOUND, and no TIMEOUT follows at its deadline.
        """
        self.send(
            performative="request",
            receiver=("ghost",),
            protocol="fipa-request",
            reply_by=datetime.fromtimestamp(self.node.clock.seconds() + 1, timezone.utc),
        )
        self.node.clock.advance(5)
        self.assertEqual([m["content"]["reason"] for m in self.mailbox()], ["AGENT_NOT_FOUND"])


BOOT = r"""
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (import "caxton" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{\"performative\":\"inform\",\"receiver\":\"client:boot\",\"content\":\"up\"}")
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 4096)
  (func (export "caxton_init") (param i32 i32) (result i32)
    (drop (call $send (i32.const 16) (i32.const 65)))
    i32.const 0)
  (func (export "caxton_handle") (param i32 i32) (result i32) i32.const 0))
"""


class InitAndShutdownTests(RouterTestCase):
    """
    What init sends is delivered; shutdown keeps what has not started.
    """

    def test_init_sends_delivered(self) -> None:
        """
        A message an agent sends from caxton_init is delivered, at deploy
        and again (once) when an update starts the new version.
        """
        import wasmtime

        self.deploy("boot", wasmtime.wat2wasm(BOOT))
        self.assertEqual([m["content"] for m in self.mailbox("client:boot")], ["up"])
        d = Deferred.fromCoroutine(self.agents.update("boot", None, {"capabilities": ["x"]}))
        self.node.pump()
        self.successResultOf(d)
        self.send(performative="inform", receiver=("boot",))
        self.assertEqual(len(self.mailbox("client:boot")), 2)

    def test_drain_keeps_unstarted(self) -> None:
        """
        Messages queued when the node drains are handed back, in order,
        rather than run or lost.
        """
        self.deploy("echo", echo())
        for i in range(3):
            self.router.send(ACLMessage("request", sender="client:alice", receiver=("echo",), content=i))
        drained = Deferred.fromCoroutine(self.agents.drain(10))
        self.assertNoResult(drained)
        self.node.pump()
        left = self.successResultOf(drained)
        self.assertEqual([(name, m.content) for name, m in left], [("echo", 0), ("echo", 1), ("echo", 2)])
        self.assertEqual(self.mailbox(), [])


class RestoreTests(RouterTestCase):
    """
    Agents the store knows but the node cannot run come back failed.
    """

    def test_unloadable_agents_come_back_failed(self) -> None:
        """
        A stored agent whose module no longer compiles, or whose spec the
        node's limits now refuse, is listed failed with the reason instead
        of vanishing; updating it with a good module runs it again.
        """
        import hashlib

        from caxton.store.interfaces import AgentRecord

        store = self.node.store
        garbage = b"\0asm\x01\0\0\0garbage"
        digest = hashlib.sha256(garbage).hexdigest()
        self.successResultOf(store.save_module(digest, garbage))
        good = echo()
        good_digest = hashlib.sha256(good).hexdigest()
        self.successResultOf(store.save_module(good_digest, good))
        now = self.node.clock.seconds()
        self.successResultOf(store.save_agent(AgentRecord("broken", 3, digest, {}, "running", None, now, now)))
        self.successResultOf(
            store.save_agent(
                AgentRecord("greedy", 1, good_digest, {"limits": {"memory": "64GiB"}}, "running", None, now, now)
            )
        )
        self.successResultOf(Deferred.fromCoroutine(self.agents.load()))
        broken, greedy = self.agents.get("broken"), self.agents.get("greedy")
        self.assertEqual((broken.status, broken.version), ("failed", 3))
        self.assertIn("does not compile", broken.reason)
        self.assertEqual(greedy.status, "failed")
        self.assertIn("no longer valid", greedy.reason)
        self.assertEqual(greedy.spec.document, {"limits": {"memory": "64GiB"}})
        d = Deferred.fromCoroutine(self.agents.update("broken", good, None))
        self.node.pump()
        self.assertEqual(self.successResultOf(d).status, "running")
        self.send(performative="request", receiver=("broken",))
        self.assertEqual([m["performative"] for m in self.mailbox()], ["inform"])


class ReviewRegressionTests(RouterTestCase):
    """
    Lifecycle changes racing a batch in flight.
    """

    overrides = {"agents__max_traps": 1}

    def test_removed_agent_not_resurrected(self) -> None:
        """
        An agent removed while its batch is in flight stays removed, even
        when that batch traps: no record comes back in the store.
        """
        self.deploy("trap", agent("trap.wat"))
        self.router.send(ACLMessage("request", sender="client:alice", receiver=("trap",)))
        self.successResultOf(Deferred.fromCoroutine(self.agents.remove("trap")))
        self.node.pump()
        self.assertEqual(self.successResultOf(self.node.store.load_agents()), [])
        self.assertIsNone(self.agents.get("trap"))

    def test_update_while_batch_waits(self) -> None:
        """
        A message queued before an update runs on the new version, and the
        old version's traps do not fail the updated agent.
        """
        self.deploy("agent", agent("trap.wat"))
        update = Deferred.fromCoroutine(self.agents.update("agent", echo(), None))
        self.router.send(ACLMessage("request", sender="client:alice", receiver=("agent",)))
        self.node.pump()
        cell = self.successResultOf(update)
        self.assertEqual((cell.status, cell.version), ("running", 2))
        self.assertEqual([m["performative"] for m in self.mailbox()], ["inform"])

    def test_stop_ends_batch_early(self) -> None:
        """
        Stopping an agent with a batch in flight keeps the messages that
        had not started, for when it starts again.
        """
        self.deploy("echo", echo())
        for i in range(3):
            self.router.send(ACLMessage("request", sender="client:alice", receiver=("echo",), content=i))
        self.successResultOf(Deferred.fromCoroutine(self.agents.stop("echo")))
        self.node.pump()
        self.assertEqual(self.mailbox(), [])
        self.assertEqual(len(self.agents.get("echo").inbox), 3)
        self.successResultOf(Deferred.fromCoroutine(self.agents.start("echo")))
        self.node.pump()
        self.assertEqual([m["content"]["content"] for m in self.mailbox()], [0, 1, 2])


class SlicedReportTests(RouterTestCase):
    """
    A flood of sends is routed over several reactor turns.
    """

    def test_flood_routed_in_slices(self) -> None:
        """
        The 1,000 messages a handler sent are routed at most REPORT_SLICE per
        reactor turn, in order; the agent stays busy (its next batch waits)
        until all are routed.
        """
        from caxton.agents.manager import REPORT_SLICE

        self.deploy("flood", agent("flood.wat"))
        self.router.send(ACLMessage("request", sender="client:alice", receiver=("flood",)))
        self.node.workers.pump()
        self.assertEqual(len(self.mailbox("client:sink")), REPORT_SLICE)
        self.assertTrue(self.agents.get("flood").busy)
        self.node.pump()
        sink = self.mailbox("client:sink")
        self.assertEqual(len(sink), 1000)
        self.assertFalse(self.agents.get("flood").busy)


class ModuleReleaseTests(RouterTestCase):
    """
    Modules no agent uses are forgotten, in memory, on disk and in SQLite.
    """

    def stored(self, module_hash: str) -> bool:
        return self.successResultOf(self.node.store.load_module(module_hash)) is not None

    def test_remove_and_update_release_modules(self) -> None:
        """
        A module stays while any agent uses it; removing the last user, or
        updating it to another module, deletes it from the store and its
        compiled artifact from the cache directory.
        """
        import os

        cache = self.mktemp()
        self.node.runtime.cache_dir = cache
        first = self.deploy("a", echo())
        self.deploy("b", echo())
        digest = first.module_hash
        self.assertTrue(self.stored(digest))
        self.successResultOf(Deferred.fromCoroutine(self.agents.remove("a")))
        self.assertTrue(self.stored(digest))
        self.assertTrue(any(name.startswith(digest) for name in os.listdir(cache)))
        d = Deferred.fromCoroutine(self.agents.update("b", agent("silent.wat"), None))
        self.node.pump()
        cell = self.successResultOf(d)
        self.assertFalse(self.stored(digest))
        self.assertFalse(any(name.startswith(digest) for name in os.listdir(cache)))
        self.assertTrue(self.stored(cell.module_hash))
        self.successResultOf(Deferred.fromCoroutine(self.agents.remove("b")))
        self.assertFalse(self.stored(cell.module_hash))
