"""
Tests for L{caxton.cluster.courier}: two deterministic nodes (router,
agents and SQLite store each, on one clock) joined by an in-memory wire
that can drop frames and be cut.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from caxton.acl.message import parse_message
from caxton.cluster.courier import Courier, _read_frame
from caxton.cluster.interfaces import IRemoteRoutes
from caxton.cluster.registry import Registry
from caxton.cluster.stream import Kind, PeerUnreachable
from caxton.swim.messages import Address, State
from caxton.testing import LocalNode
from tests.wasmbuild import example, wat_module

ECHO = wat_module(example("wat", "echo.wat"))


class Wire:
    """
    The node streams between the test's nodes: frames are delivered on the
    next clock turn; C{cut} makes sends fail like an unreachable peer, and
    C{lose} drops frames after they were handed over (a connection that
    died with them).
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.ends: Dict[str, "_End"] = {}
        self.cut = False
        self.lose = 0
        self.frames: List[Tuple[str, str, int]] = []
        self.payloads: List[bytes] = []

    def end(self, node: str) -> "_End":
        end = self.ends[node] = _End(self, node)
        return end


class _End:
    def __init__(self, wire: Wire, node: str) -> None:
        self.wire = wire
        self.node = node
        self.messages: Dict[int, Callable[[str, bytes], Any]] = {}
        self.requests: Dict[int, Callable[[str, bytes], Any]] = {}

    def register_message_handler(self, kind: int, handler: Callable[[str, bytes], Any]) -> None:
        self.messages[kind] = handler

    def register_handler(self, kind: int, handler: Callable[[str, bytes], Any]) -> None:
        self.requests[kind] = handler

    def send(self, node: str, addr: Address, kind: int, payload: bytes, timeout: float = 10.0) -> Deferred:
        if self.wire.cut:
            return fail(PeerUnreachable(f"{node} unreachable"))
        self.wire.frames.append((self.node, node, kind))
        self.wire.payloads.append(payload)
        if self.wire.lose:
            self.wire.lose -= 1
            return succeed(None)
        other = self.wire.ends[node]
        self.wire.clock.callLater(0, other.messages[kind], self.node, payload)
        return succeed(None)

    def request(self, node: str, addr: Address, kind: int, payload: bytes, timeout: float) -> Deferred:
        if self.wire.cut:
            return fail(PeerUnreachable(f"{node} unreachable"))
        return succeed(self.wire.ends[node].requests[kind](self.node, payload))


class _Member:
    def __init__(self, node: str, port: int) -> None:
        self.node = node
        self.addr = Address("127.0.0.1", port)
        self.state = State.ALIVE


class _Membership:
    def __init__(self, members: Dict[str, _Member]) -> None:
        self._members = members

    def members(self) -> List[_Member]:
        return list(self._members.values())

    def member(self, node: str) -> Optional[_Member]:
        return self._members.get(node)


class _Cluster:
    """
    What the courier reads of the cluster service.
    """

    def __init__(self, node_id: str, clock: Any, members: Dict[str, _Member], streams: _End) -> None:
        self.node_id = node_id
        self.registry = Registry(node_id, 1, clock, lambda key, payload: None)
        self.membership = _Membership(members)
        self.streams = streams


class CourierTests(TestCase):
    """
    Two nodes, n1 and n2; echo runs on n2.
    """

    timeout = 20

    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        self.n1 = LocalNode(self.mktemp(), time.time())
        self.clock = self.n1.clock
        self.wire = Wire(self.clock)
        self.members = {"n1": _Member("n1", 1), "n2": _Member("n2", 2)}
        self.n2: Optional[LocalNode] = None
        self.couriers: Dict[str, Courier] = {}
        await self.n1.open()
        self.addCleanup(self.n1.store.close)
        self.c1 = self.courier("n1", self.n1)
        self.n2, self.c2 = await self.start_n2(self.mktemp())
        await self.open()

    def courier(self, node_id: str, node: LocalNode, **settings: Any) -> Courier:
        node.agents.node_id = node_id
        cluster = _Cluster(node_id, self.clock, self.members, self.wire.end(node_id))
        courier = Courier(self.clock, cluster, node.store, node.router, node.agents, **settings)
        courier.register(cluster.streams)
        courier.attach(cluster.registry)
        node.router.remote = courier
        self.couriers[node_id] = courier
        self.addCleanup(courier.stop_sending)
        return courier

    async def start_n2(self, directory: str) -> Tuple[LocalNode, Courier]:
        n2 = LocalNode(directory, 0)
        # One clock for both nodes.
        for part in (n2.store, n2.agents, n2.router):
            part._reactor = self.clock
        await n2.open()
        self.addCleanup(n2.store.close)
        courier = self.courier("n2", n2)
        return n2, courier

    async def open(self) -> None:
        for courier in self.couriers.values():
            if not courier.sending:
                await courier.open()
                courier.start_sending()
        self.couriers["n1"]._cluster.registry._store(
            _entry("echo", "n2")
        )

    async def deploy_echo(self, node: LocalNode) -> None:
        deployed = Deferred.fromCoroutine(node.agents.deploy("echo", ECHO, {}))
        node.pump()
        await deployed

    def settle(self, turns: int = 20) -> None:
        """
        Let frames, acks, SQLite batches and agents run.
        """
        for _ in range(turns):
            self.n1.pump()
            if self.n2 is not None:
                self.n2.pump()
            self.clock.advance(0)

    def send(self, count: int, sender: str = "client:alice") -> List[str]:
        ids = []
        for i in range(count):
            accepted = self.n1.router.send(
                parse_message({"performative": "request", "sender": sender, "receiver": "echo",
                               "content": {"i": i}, "reply_with": f"r{i}"})
            )
            ids.append(accepted.message_id)
        return ids

    async def mailbox(self, node: LocalNode, client: str = "client:alice") -> List[Dict[str, Any]]:
        return [m.message for m in await node.store.read_mailbox(client, 0, 10_000)]

    async def test_interface(self) -> None:
        verifyObject(IRemoteRoutes, self.c1)

    async def test_request_and_reply(self) -> None:
        """
        A client's request on n1 reaches echo on n2, and the inform comes
        back to the client's mailbox on n1, in order; the outbox empties.
        """
        await self.deploy_echo(self.n2)
        self.send(20)
        self.settle()
        replies = await self.mailbox(self.n1)
        self.assertEqual([m["in_reply_to"] for m in replies], [f"r{i}" for i in range(20)])
        self.assertEqual(await self.n1.store.load_outbox(), [])
        self.assertEqual(self.c1.queues(), {})
        self.assertEqual(await self.n2.store.load_journal(), [])
        self.assertEqual(self.c2.counters["received"], 20)

    async def test_nothing_leaves_before_commit(self) -> None:
        """
        A message is sent only once the outbox record is written.
        """
        await self.deploy_echo(self.n2)
        self.send(1)
        self.assertEqual(self.wire.frames, [])
        self.settle()
        self.assertEqual(self.wire.frames[0], ("n1", "n2", Kind.FORWARD))

    async def test_lost_frames_resent_once_handled(self) -> None:
        """
        Frames lost on the wire are sent again after the ack timeout; the
        receiver drops what it already took in, so each request is handled
        once.
        """
        await self.deploy_echo(self.n2)
        self.send(5)
        self.settle()
        self.wire.lose = 1
        self.send(5)
        self.settle()
        self.assertEqual(len(await self.mailbox(self.n1)), 5)
        self.clock.advance(self.c1.ack_timeout)
        self.settle()
        self.clock.advance(1)
        self.settle()
        replies = await self.mailbox(self.n1)
        self.assertEqual([m["in_reply_to"] for m in replies], [f"r{i}" for i in range(5)] * 2)
        self.assertEqual(self.c2.counters["received"], 10)
        self.assertGreater(self.c1.counters["resent"], 0)

    async def test_duplicate_frame(self) -> None:
        """
        A frame taken in twice (a resend after a lost ack) is handled once
        and acknowledged again.
        """
        await self.deploy_echo(self.n2)
        self.send(3)
        self.settle()
        forwarded = [p for p, f in zip(self.wire.payloads, self.wire.frames) if f[:2] == ("n1", "n2")]
        acks = self.c1.counters["acked"]
        self.c2._forward_received("n1", forwarded[0])
        self.settle()
        self.assertEqual(self.c2.counters["duplicates"], 3)
        self.assertEqual(len(await self.mailbox(self.n1)), 3)
        self.assertEqual(self.wire.frames[-1], ("n2", "n1", Kind.ACK))
        self.assertEqual(self.c1.counters["acked"], acks)

    async def test_queue_while_cut_then_deliver(self) -> None:
        """
        While n2 cannot be reached messages wait (in SQLite); when it can,
        they go, in order.
        """
        await self.deploy_echo(self.n2)
        self.wire.cut = True
        self.send(10)
        self.settle()
        self.assertEqual(len(await self.n1.store.load_outbox()), 10)
        self.assertEqual(self.c1.queues(), {"n2": 10})
        self.wire.cut = False
        self.c1.member_reachable("n2")
        self.settle()
        replies = await self.mailbox(self.n1)
        self.assertEqual([m["in_reply_to"] for m in replies], [f"r{i}" for i in range(10)])

    async def test_expire_unreachable(self) -> None:
        """
        A message still waiting when its TTL (or reply_by) passes fails
        back to its sender with UNREACHABLE, and leaves the outbox.
        """
        self.c1.queue_ttl = 30.0
        self.wire.cut = True
        self.send(2)
        self.settle()
        self.clock.advance(31)
        self.settle()
        replies = await self.mailbox(self.n1)
        self.assertEqual([m["performative"] for m in replies], ["failure", "failure"])
        self.assertEqual({m["content"]["reason"] for m in replies}, {"UNREACHABLE"})
        self.assertEqual(await self.n1.store.load_outbox(), [])
        letters = await self.n1.store.list_dead_letters(10, None)
        self.assertEqual([d.reason for d in letters], ["UNREACHABLE"] * 2)

    async def test_queue_full(self) -> None:
        """
        Past max_queue waiting messages for a node, the sender hears
        QUEUE_FULL at once.
        """
        self.c1.max_queue = 3
        self.wire.cut = True
        self.send(5)
        self.settle()
        replies = await self.mailbox(self.n1)
        self.assertEqual([m["content"]["reason"] for m in replies], ["QUEUE_FULL"] * 2)

    async def test_outbox_survives_restart(self) -> None:
        """
        Messages waiting at a stop go out after the next start, under a run
        number above the last one.
        """
        await self.deploy_echo(self.n2)
        self.wire.cut = True
        self.send(4)
        self.settle()
        old_epoch = self.c1.epoch
        self.c1.stop_sending()
        again = Courier(self.clock, self.c1._cluster, self.n1.store, self.n1.router, self.n1.agents)
        again.register(self.c1._cluster.streams)
        self.n1.router.remote = again
        self.wire.cut = False
        await again.open()
        again.start_sending()
        self.addCleanup(again.stop_sending)
        self.assertGreater(again.epoch, old_epoch)
        self.settle()
        replies = await self.mailbox(self.n1)
        self.assertEqual([m["in_reply_to"] for m in replies], [f"r{i}" for i in range(4)])

    async def test_lookup(self) -> None:
        """
        A name no registry entry knows is asked of the members; a node
        hosting it says so, and messages go there.
        """
        await self.deploy_echo(self.n2)
        self.c1._cluster.registry = Registry("n1", 1, self.clock, lambda k, p: None)
        self.send(1)
        self.settle()
        self.assertEqual(self.n1.router.counters["lookups"], 1)
        replies = await self.mailbox(self.n1)
        self.assertEqual([m["performative"] for m in replies], ["inform"])
        self.n2.agents._cells.clear()
        self.send(1, sender="client:bob")
        self.settle()
        replies = await self.mailbox(self.n1, "client:bob")
        self.assertEqual(replies[0]["content"]["reason"], "AGENT_NOT_FOUND")

    async def test_malformed_frames(self) -> None:
        """
        Garbage from a peer is dropped and counted.
        """
        for payload in (b"", b"[]", b'{"e":1}', b'{"e":1,"m":[[1,2,3]]}', b"\xff"):
            self.c2._forward_received("n1", payload)
            self.c2._ack_received("n1", payload)
        self.assertEqual(self.c2.counters["malformed"], 10)


    async def test_arrived_for_client_stays(self) -> None:
        """
        A message another node forwarded for an API client lands in the
        mailbox here, even if this node believes the client is elsewhere:
        two nodes never pass it back and forth.
        """
        self.c1._clients[("client:alice", "cv")] = "n2"
        body = {"performative": "inform", "sender": "echo", "receiver": "client:alice",
                "message_id": "m1", "conversation_id": "cv", "content": 1}
        self.n1.router.arrived("client:alice", body)
        self.settle()
        self.assertEqual([m["message_id"] for m in await self.mailbox(self.n1)], ["m1"])
        self.assertEqual(self.c1.counters["forwarded"], 0)

    async def test_arrived_for_tools_refused(self) -> None:
        """
        Peers cannot address MCP tools or the node itself: tools are called
        by the node of the agent that asked, which checks its allowances.
        """
        from caxton.acl.message import InvalidMessage

        body = {"performative": "request", "sender": "client:x", "receiver": "mcp:state/store",
                "message_id": "m1", "conversation_id": "cv", "content": {}}
        for receiver in ("mcp:state/store", "caxton"):
            self.assertRaises(InvalidMessage, self.n1.router.arrived, receiver, body)

    async def test_out_of_range_numbers(self) -> None:
        """
        Epochs and sequence numbers outside 1..2**62 are malformed frames,
        so no SQLite write can overflow on them.
        """
        for payload in (b'{"e":%d,"m":[]}' % 2**63, b'{"e":1,"m":[[%d,"echo",{}]]}' % 2**62, b'{"e":1,"m":[[0,"echo",{}]]}'):
            self.c2._forward_received("n1", payload)
        self.c1._ack_received("n2", b'{"e":1,"h":%d}' % 2**63)
        self.assertEqual((self.c2.counters["malformed"], self.c1.counters["malformed"]), (3, 1))


class FrameTests(TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_read_frame_garbage(self, data: bytes) -> None:
        """
        Any bytes are a frame or a ValueError.
        """
        try:
            _read_frame(data)
        except ValueError:
            pass

    @settings(max_examples=100, deadline=None)
    @given(st.integers(1, 2**62 - 1), st.lists(st.tuples(st.integers(1, 2**62 - 1), st.text(max_size=20)), max_size=20))
    def test_round_trip(self, epoch: int, items: List[Tuple[int, str]]) -> None:
        from caxton.cluster.courier import _forward_frame, _Out

        outs = [_Out(epoch, seq, receiver, json.dumps({"n": seq}).encode(), 0.0) for seq, receiver in items]
        self.assertEqual(
            _read_frame(_forward_frame(epoch, outs)),
            (epoch, [(seq, receiver, {"n": seq}) for seq, receiver in items]),
        )


def _entry(name: str, node: str) -> Any:
    from caxton.cluster.registry import Entry

    return Entry(name=name, node=node, epoch=1, seq=1)
