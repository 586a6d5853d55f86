"""
Tests for L{caxton.cluster.registry}: versioned entries, tombstones, and
what happens when their owner dies, comes back, or restarts.
"""

from __future__ import annotations

from typing import List, Tuple

import attr
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from caxton.cluster.registry import (
    MAX_BROADCAST,
    Entry,
    Registry,
    decode_entries,
    encode_entries,
)
from caxton.swim.interfaces import IMembershipDelegate, IMembershipListener


@attr.s(frozen=True, auto_attribs=True)
class _Member:
    node: str


class _Node:
    """
    A registry with the broadcasts it queued.
    """

    def __init__(self, node_id: str, epoch: int = 1000, clock: Clock = None) -> None:
        self.clock = clock or Clock()
        self.sent: List[Tuple[str, bytes]] = []
        self.registry = Registry(node_id, epoch, self.clock, lambda k, p: self.sent.append((k, p)))

    def deliver_to(self, other: "_Node") -> None:
        """
        Hand every queued broadcast to C{other}.
        """
        for _, payload in self.sent:
            other.registry.notify_user(payload)


def _names(registry: Registry) -> List[Tuple[str, str]]:
    return [(e.name, e.node) for e in registry.entries()]


class RegistryTests(SynchronousTestCase):
    """
    Each node owns its entries; news spreads and stale news loses.
    """

    def test_interfaces(self) -> None:
        """
        The registry is the SWIM core's delegate and listener.
        """
        registry = _Node("a").registry
        verifyObject(IMembershipDelegate, registry)
        verifyObject(IMembershipListener, registry)

    def test_publish_broadcasts(self) -> None:
        """
        Publishing one of this node's agents lists it and queues a
        broadcast keyed by node and name, which another node merges.
        """
        a, b = _Node("a"), _Node("b")
        a.registry.publish("echo", 1, "running", ["echo"])
        self.assertEqual(_names(a.registry), [("echo", "a")])
        self.assertEqual(a.sent[0][0], "agent/a/echo")
        a.deliver_to(b)
        [entry] = b.registry.entries()
        self.assertEqual((entry.name, entry.node, entry.capabilities), ("echo", "a", ("echo",)))
        self.assertEqual(b.registry.offering("echo"), [entry])

    def test_stale_news_loses(self) -> None:
        """
        An older entry arriving after a newer one changes nothing.
        """
        a, b = _Node("a"), _Node("b")
        a.registry.publish("echo", 1, "running", [])
        a.registry.publish("echo", 2, "stopped", [])
        old, new = a.sent[0][1], a.sent[1][1]
        b.registry.notify_user(new)
        b.registry.notify_user(old)
        [entry] = b.registry.entries()
        self.assertEqual((entry.version, entry.status), (2, "stopped"))

    def test_tombstone_beats_late_entry(self) -> None:
        """
        After a removal, a late copy of the agent's entry does not bring it
        back; the tombstone is forgotten after its TTL.
        """
        a, b = _Node("a"), _Node("b")
        a.registry.publish("echo", 1, "running", [])
        a.registry.withdraw("echo")
        b.registry.notify_user(a.sent[1][1])
        b.registry.notify_user(a.sent[0][1])
        self.assertEqual(b.registry.entries(), [])
        b.clock.advance(25 * 3600)
        self.assertEqual(b.registry.expire(), 1)

    def test_push_pull_merges_everything(self) -> None:
        """
        Push-pull state carries every entry, including third parties' and
        tombstones, and merging it is idempotent.
        """
        a, b, c = _Node("a"), _Node("b"), _Node("c")
        a.registry.publish("x", 1, "running", [])
        a.deliver_to(b)
        b.registry.publish("y", 1, "running", [])
        state = b.registry.local_state(join=False)
        c.registry.merge_remote_state(state, join=False)
        c.registry.merge_remote_state(state, join=False)
        self.assertEqual(_names(c.registry), [("x", "a"), ("y", "b")])

    def test_dead_member_withdrawn(self) -> None:
        """
        A dead member's agents disappear, are not re-learned from a peer
        that has not heard of the death, and come back if the member does.
        """
        a, b, c = _Node("a"), _Node("b"), _Node("c")
        a.registry.publish("x", 1, "running", [])
        a.deliver_to(b)
        a.deliver_to(c)
        b.registry.member_failed(_Member("a"))
        self.assertEqual(b.registry.entries(), [])
        b.registry.merge_remote_state(c.registry.local_state(False), False)
        self.assertEqual(b.registry.entries(), [])
        self.assertNotIn(b"\"a\"", b.registry.local_state(False))
        b.registry.member_joined(_Member("a"))
        self.assertEqual(_names(b.registry), [("x", "a")])

    def test_news_relayed_once(self) -> None:
        """
        News learned from a broadcast is passed on (under the same key, so
        it replaces older news about that agent in the queue); news already
        known is not, so relaying ends.
        """
        a, b = _Node("a"), _Node("b")
        a.registry.publish("echo", 1, "running", [])
        a.deliver_to(b)
        a.deliver_to(b)
        self.assertEqual([key for key, _ in b.sent], ["agent/a/echo"])
        self.assertEqual(decode_entries(b.sent[0][1], 0.0)[0].name, "echo")

    def test_gone_member_forgotten(self) -> None:
        """
        The entries of a member gone for the tombstone TTL are forgotten,
        with the member's mark; before then they are only hidden.
        """
        a, b = _Node("a"), _Node("b")
        a.registry.publish("x", 1, "running", [])
        a.deliver_to(b)
        b.registry.member_failed(_Member("a"))
        b.clock.advance(3600)
        self.assertEqual(b.registry.expire(), 0)
        b.registry.member_joined(_Member("a"))
        self.assertEqual(_names(b.registry), [("x", "a")])
        b.registry.member_failed(_Member("a"))
        b.clock.advance(25 * 3600)
        self.assertEqual(b.registry.expire(), 1)
        b.registry.member_joined(_Member("a"))
        self.assertEqual(b.registry.entries(), [])

    def test_left_member_withdrawn(self) -> None:
        """
        A member that left takes its agents with it.
        """
        a, b = _Node("a"), _Node("b")
        a.registry.publish("x", 1, "running", [])
        a.deliver_to(b)
        b.registry.member_left(_Member("a"))
        self.assertEqual(b.registry.entries(), [])

    def test_restart_supersedes(self) -> None:
        """
        After a restart (a later epoch, counter from zero), the owner's new
        entries beat what peers remember from before.
        """
        before, b = _Node("a", epoch=1000), _Node("b")
        for version in range(1, 6):
            before.registry.publish("x", version, "running", [])
        before.deliver_to(b)
        after = _Node("a", epoch=2000)
        after.registry.publish("x", 1, "stopped", [])
        after.deliver_to(b)
        [entry] = b.registry.entries()
        self.assertEqual((entry.version, entry.status, entry.epoch), (1, "stopped", 2000))

    def test_unknown_own_entry_withdrawn(self) -> None:
        """
        A node told it hosts an agent it does not know (from before a wiped
        restart) answers with a tombstone that removes it everywhere.
        """
        before, b = _Node("a", epoch=1000), _Node("b")
        before.registry.publish("ghost", 1, "running", [])
        before.deliver_to(b)
        after = _Node("a", epoch=2000)
        after.registry.merge_remote_state(b.registry.local_state(False), False)
        self.assertEqual(len(after.sent), 1)
        after.deliver_to(b)
        self.assertEqual(b.registry.entries(), [])

    def test_node_filter(self) -> None:
        """
        C{entries(node=...)} lists one node's agents.
        """
        a, b = _Node("a"), _Node("b")
        a.registry.publish("x", 1, "running", [])
        b.registry.publish("y", 1, "running", [])
        a.deliver_to(b)
        self.assertEqual(_names(b.registry), [("x", "a"), ("y", "b")])
        self.assertEqual([e.name for e in b.registry.entries(node="b")], ["y"])

    def test_big_entry_not_broadcast(self) -> None:
        """
        An entry too big for a datagram is not broadcast; it still travels
        in push-pull.
        """
        a, b = _Node("a"), _Node("b")
        capabilities = [f"capability-{i:03d}-" + "x" * 40 for i in range(40)]
        a.registry.publish("big", 1, "running", capabilities)
        self.assertEqual(a.sent, [])
        b.registry.merge_remote_state(a.registry.local_state(False), False)
        self.assertEqual(_names(b.registry), [("big", "a")])

    def test_garbage_dropped(self) -> None:
        """
        Malformed broadcasts and states are dropped without raising.
        """
        b = _Node("b").registry
        for garbage in (b"", b"R", b"R[", b"R{}", b"R[[1,2]]", b"X[]", b"R[[\"n\",\"a\",-1,0,0,\"s\",[],0]]"):
            b.notify_user(garbage)
            b.merge_remote_state(garbage, False)
        self.assertEqual(b.entries(), [])


_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
_entries = st.builds(
    Entry,
    name=_text,
    node=_text,
    epoch=st.integers(0, 2**62),
    seq=st.integers(0, 2**62),
    version=st.integers(0, 2**31),
    status=_text,
    capabilities=st.lists(_text, max_size=5).map(tuple),
    removed=st.booleans(),
)


class CodecTests(SynchronousTestCase):
    """
    Entries survive the wire; garbage does not raise anything but
    C{ValueError}.
    """

    @given(st.lists(_entries, max_size=10))
    def test_round_trip(self, entries: List[Entry]) -> None:
        """
        Encoding then decoding gives the same entries.
        """
        self.assertEqual(decode_entries(encode_entries(entries), 0.0), entries)

    @given(st.binary(max_size=200))
    def test_garbage(self, data: bytes) -> None:
        """
        Random bytes decode or raise C{ValueError}, nothing else.
        """
        try:
            decode_entries(b"R" + data, 0.0)
        except ValueError:
            pass

    def test_broadcast_budget(self) -> None:
        """
        A typical entry is far below the broadcast budget.
        """
        entry = Entry("contract-net-bidder-7", "node-17.example", 1_790_000_000_000, 12, 3, "running", ("bid",))
        self.assertLess(len(encode_entries([entry])), MAX_BROADCAST // 4)
