"""
Tests for L{caxton.swim.core}: memberlist's rules, one test per rule.

The core runs on a C{task.Clock} with a L{RecordingTransport}; messages
reach it as real packets (L{encode_packet}) and leave it as real packets,
decoded again to check what it said.  The clock is advanced in small steps
because C{Clock.advance} runs every due call at the final time, which the
core would rightly read as reactor lag.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from caxton.swim.codec import (
    CodecError,
    decode_packet,
    decode_push_pull,
    encode_packet,
    encode_push_pull,
)
from caxton.swim.config import SwimConfig
from caxton.swim.core import Member, Membership
from caxton.swim.interfaces import IMembershipDelegate, IMembershipListener, ISwimTransport
from caxton.swim.messages import (
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    State,
    Suspect,
    User,
)
from caxton.swim.interfaces import StreamPing
from caxton.swim.simulator import RecordingTransport

HERE = Address("10.0.0.1", 7946)
ELSEWHERE = Address("10.9.9.9", 7946)


def addr_of(name: str) -> Address:
    """
    A stable address for peer C{name}.
    """
    return Address(f"10.0.1.{sum(name.encode()) % 250 + 2}", 7000 + len(name))


@implementer(IMembershipListener)
class RecordingListener:
    """
    Records every membership event as C{(event, node, state)}.
    """

    def __init__(self) -> None:
        self.events: List[Tuple[str, str, State]] = []

    def _record(self, event: str, member: Member) -> None:
        self.events.append((event, member.node, member.state))

    def member_joined(self, member: Any) -> None:
        self._record("joined", member)

    def member_updated(self, member: Any) -> None:
        self._record("updated", member)

    def member_suspected(self, member: Any) -> None:
        self._record("suspected", member)

    def member_alive(self, member: Any) -> None:
        self._record("alive", member)

    def member_failed(self, member: Any) -> None:
        self._record("failed", member)

    def member_left(self, member: Any) -> None:
        self._record("left", member)


@implementer(IMembershipDelegate)
class RecordingDelegate:
    """
    An application that records what SWIM hands it.
    """

    def __init__(self, state: bytes = b"app-state") -> None:
        self.state = state
        self.merged: List[Tuple[bytes, bool]] = []
        self.user: List[bytes] = []

    def local_state(self, join: bool) -> bytes:
        return self.state

    def merge_remote_state(self, data: bytes, join: bool) -> None:
        self.merged.append((data, join))

    def notify_user(self, payload: bytes) -> None:
        self.user.append(payload)


class Harness:
    """
    One core under test, with its clock, transport and listener.

    @ivar silent: peers whose pings go unanswered by L{run}.
    @ivar nackers: helpers that answer indirect pings with a nack.
    """

    def __init__(
        self,
        peers: Sequence[str] = (),
        config: Optional[SwimConfig] = None,
        seed: int = 0,
        node: str = "a",
        **kwargs: Any,
    ) -> None:
        self.clock = Clock()
        self.transport = RecordingTransport()
        self.m = Membership(
            config if config is not None else SwimConfig(),
            node,
            HERE,
            self.clock,
            random.Random(seed),
            self.transport,
            **kwargs,
        )
        self.listener = RecordingListener()
        self.m.add_listener(self.listener)
        for peer in peers:
            self.feed(Alive(1, peer, addr_of(peer)))
        self.silent: set = set()
        self.nackers: set = set()
        self._answered = 0
        self.probed: List[str] = []

    def feed(self, *messages: Message, source: Address = ELSEWHERE) -> None:
        """
        Deliver C{messages} in one packet.
        """
        self.m.packet_received(source, encode_packet(messages))

    def sent(self) -> List[Tuple[Address, Message]]:
        """
        Every message sent so far, with its destination.
        """
        return [(a, m) for a, ms in self.transport.messages() for m in ms]

    def sent_of(self, kind: type) -> List[Tuple[Address, Any]]:
        """
        Every message of type C{kind} sent so far.
        """
        return [(a, m) for a, m in self.sent() if isinstance(m, kind)]

    def run(self, seconds: float, step: float = 0.01, answer: bool = True) -> None:
        """
        Advance the clock in small steps; when C{answer}, peers not in
        L{silent} ack pings and L{nackers} nack indirect pings.
        """
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)
            if answer:
                self.answer()

    def run_until(self, predicate: Any, limit: float = 60.0, step: float = 0.01) -> None:
        """
        Advance until C{predicate()} holds (answering pings), or fail.
        """
        for _ in range(int(limit / step)):
            if predicate():
                return
            self.clock.advance(step)
            self.answer()
        raise AssertionError("condition not reached")

    def answer(self) -> None:
        """
        Answer the probes sent since the last call.
        """
        new = self.transport.sent[self._answered :]
        self._answered = len(self.transport.sent)
        for a, packet in new:
            for message in decode_packet(packet):
                if isinstance(message, Ping):
                    self.probed.append(message.target)
                    if message.target not in self.silent:
                        self.feed(Ack(message.seq))
                elif isinstance(message, IndirectPing):
                    if message.target not in self.silent:
                        self.feed(Ack(message.seq))
                    elif message.nack and any(a == addr_of(peer) for peer in self.nackers):
                        self.feed(Nack(message.seq))

    def piggyback(self) -> List[Message]:
        """
        Ping the node and return the broadcasts its ack carries.
        """
        before = len(self.transport.sent)
        self.feed(Ping(999, self.m.node_id, "zz", addr_of("zz")))
        packets = self.transport.messages()[before:]
        return [m for _, ms in packets for m in ms if not isinstance(m, Ack)]


def states(h: Harness) -> Dict[str, State]:
    return {m.node: m.state for m in h.m.members()}


class InterfaceTests(SynchronousTestCase):
    """
    The fakes provide the interfaces the core relies on.
    """

    def test_fakes_provide_interfaces(self) -> None:
        """
        L{RecordingTransport} is an L{ISwimTransport}; the test listener and
        delegate are what they claim.
        """
        verifyObject(ISwimTransport, RecordingTransport())
        verifyObject(IMembershipListener, RecordingListener())
        verifyObject(IMembershipDelegate, RecordingDelegate())

    def test_bad_construction(self) -> None:
        """
        A bad node id, oversized meta, an incarnation beyond 32 bits or a
        host that is no IP literal are refused at once.
        """
        clock, rng, t = Clock(), random.Random(0), RecordingTransport()
        config = SwimConfig()
        self.assertRaises(ValueError, Membership, config, "bad id", HERE, clock, rng, t)
        self.assertRaises(ValueError, Membership, config, "a", HERE, clock, rng, t, meta=b"x" * 513)
        self.assertRaises(
            ValueError, Membership, config, "a", HERE, clock, rng, t, incarnation=2**32
        )
        self.assertRaises(ValueError, Membership, config, "a", Address("host", 1), clock, rng, t)


class PrecedenceTests(SynchronousTestCase):
    """
    Incarnation precedence, notes/swim.md 1.1 and 2.5.
    """

    def test_alive_needs_higher_incarnation(self) -> None:
        """
        An alive message updates a known member only with a higher
        incarnation; an equal or lower one is ignored.
        """
        h = Harness(["b"])
        h.feed(Alive(1, "b", addr_of("b"), b"new-meta"))
        self.assertEqual(h.m.member("b").meta, b"")
        h.feed(Alive(0, "b", addr_of("b"), b"new-meta"))
        self.assertEqual(h.m.member("b").incarnation, 1)
        h.feed(Alive(2, "b", addr_of("b"), b"new-meta"))
        self.assertEqual((h.m.member("b").incarnation, h.m.member("b").meta), (2, b"new-meta"))
        self.assertIn(("updated", "b", State.ALIVE), h.listener.events)

    def test_suspect_beats_alive_at_equal_incarnation(self) -> None:
        """
        Suspect(i) beats Alive(j) when i >= j; an older suspicion is ignored.
        """
        h = Harness(["b", "c"])
        h.feed(Alive(3, "c", addr_of("c")))
        h.feed(Suspect(2, "c", "b"))
        self.assertEqual(h.m.member("c").state, State.ALIVE)
        h.feed(Suspect(1, "b", "c"))
        self.assertEqual(h.m.member("b").state, State.SUSPECT)
        self.assertIn(("suspected", "b", State.SUSPECT), h.listener.events)

    def test_alive_beats_suspect_only_when_higher(self) -> None:
        """
        Alive(i) beats Suspect(j) only when i > j.
        """
        h = Harness(["b", "c"])
        h.feed(Suspect(1, "b", "c"))
        h.feed(Alive(1, "b", addr_of("b")))
        self.assertEqual(h.m.member("b").state, State.SUSPECT)
        h.feed(Alive(2, "b", addr_of("b")))
        self.assertEqual(h.m.member("b").state, State.ALIVE)
        self.assertIn(("alive", "b", State.ALIVE), h.listener.events)

    def test_dead_beats_alive_and_suspect(self) -> None:
        """
        Dead(i) applies when i >= the known incarnation, whatever the
        state; an older one is ignored; a dead member is revived only by a
        higher incarnation.
        """
        h = Harness(["b", "c", "d"])
        h.feed(Dead(0, "b", "c"))
        self.assertEqual(h.m.member("b").state, State.ALIVE)
        h.feed(Dead(1, "b", "c"))
        self.assertEqual(h.m.member("b").state, State.DEAD)
        h.feed(Suspect(1, "d", "c"), Dead(1, "d", "c"))
        self.assertEqual(h.m.member("d").state, State.DEAD)
        h.feed(Alive(1, "b", addr_of("b")))
        self.assertEqual(h.m.member("b").state, State.DEAD)
        h.feed(Alive(2, "b", addr_of("b")))
        self.assertEqual(h.m.member("b").state, State.ALIVE)
        self.assertEqual(
            [e for e in h.listener.events if e[1] == "b"],
            [
                ("joined", "b", State.ALIVE),
                ("failed", "b", State.DEAD),
                ("joined", "b", State.ALIVE),
            ],
        )

    def test_unknown_suspect_and_dead_ignored(self) -> None:
        """
        Suspicions and deaths about members never heard of are ignored.
        """
        h = Harness([])
        h.feed(Suspect(5, "x", "y"), Dead(5, "z", "y"))
        self.assertEqual(h.m.member("x"), None)
        self.assertEqual(h.m.member("z"), None)

    def test_new_member_any_incarnation(self) -> None:
        """
        A member first heard of joins at whatever incarnation it announces,
        0 included (memberlist never uses 0, Caxton's callers may).
        """
        h = Harness([])
        h.feed(Alive(0, "b", addr_of("b")))
        self.assertEqual(h.m.member("b").state, State.ALIVE)
        self.assertEqual(h.listener.events, [("joined", "b", State.ALIVE)])


class RefutationTests(SynchronousTestCase):
    """
    Only a node raises its own incarnation, to refute (notes 2.5).
    """

    def test_refute_suspect_with_accused_plus_one(self) -> None:
        """
        A suspicion about this node at incarnation 5 (its own being 2)
        makes it alive at 6 and broadcast that, never suspect.
        """
        h = Harness(["b"], incarnation=2)
        h.feed(Suspect(5, "a", "b"))
        self.assertEqual(h.m.incarnation, 6)
        self.assertEqual(h.m.member("a").state, State.ALIVE)
        self.assertIn(Alive(6, "a", HERE, b""), h.piggyback())
        self.assertEqual(h.m.stats.refutations, 1)

    def test_refute_equal_incarnation(self) -> None:
        """
        An accusation at this node's own incarnation is beaten by one more.
        """
        h = Harness(["b"], incarnation=3)
        h.feed(Dead(3, "a", "b"))
        self.assertEqual((h.m.incarnation, h.m.member("a").state), (4, State.ALIVE))

    def test_refute_alive_from_previous_life(self) -> None:
        """
        An alive message about this node with a higher incarnation (a
        previous run of it) or other metadata at its incarnation is refuted;
        an exact echo is not.
        """
        h = Harness(["b"], incarnation=1)
        h.feed(Alive(1, "a", HERE, b""))
        self.assertEqual(h.m.incarnation, 1)
        h.feed(Alive(1, "a", HERE, b"other"))
        self.assertEqual(h.m.incarnation, 2)
        h.feed(Alive(7, "a", HERE, b""))
        self.assertEqual(h.m.incarnation, 8)

    def test_old_accusation_repeats_alive(self) -> None:
        """
        An accusation at an incarnation below this node's own (a peer that
        missed a restart or a refutation) queues this node's alive message
        again, without a new incarnation (Caxton's answer to memberlist#311).
        """
        h = Harness(["b"], incarnation=5)
        h.piggyback()
        for _ in range(5):
            h.piggyback()  # drain the queue
        self.assertEqual(h.m.pending_broadcasts(), 0)
        h.feed(Suspect(2, "a", "b"))
        self.assertEqual(h.m.incarnation, 5)
        self.assertIn(Alive(5, "a", HERE, b""), h.piggyback())


class SuspicionTimerTests(SynchronousTestCase):
    """
    Lifeguard's suspicion timer: starts at max, decays with independent
    confirmations (notes 2.2).
    """

    peers = ["b", "c", "d", "e", "f", "g", "h", "i", "j"]  # n = 10: min 4 s, max 24 s, k = 2

    def test_timer_starts_at_max(self) -> None:
        """
        Without confirmations a suspect member dies after the maximum.
        """
        h = Harness(self.peers)
        h.feed(Suspect(1, "c", "b"))
        h.run(23.99, answer=False)
        self.assertEqual(h.m.member("c").state, State.SUSPECT)
        h.run(0.02, answer=False)
        self.assertEqual(h.m.member("c").state, State.DEAD)
        self.assertEqual(h.m.stats.degraded_timeouts, 1)

    def test_confirmations_shorten(self) -> None:
        """
        One independent confirmation cuts the timer to
        24 - 20 * ln 2 / ln 3 = 11.381 s; a second, to the 4 s minimum.
        """
        h = Harness(self.peers)
        h.feed(Suspect(1, "c", "b"))
        h.feed(Suspect(1, "c", "d"))
        h.run(11.37, answer=False)
        self.assertEqual(h.m.member("c").state, State.SUSPECT)
        h.run(0.02, answer=False)
        self.assertEqual(h.m.member("c").state, State.DEAD)

        h2 = Harness(self.peers)
        h2.feed(Suspect(1, "c", "b"))
        h2.run(1.0, answer=False)
        h2.feed(Suspect(1, "c", "d"), Suspect(1, "c", "e"))
        h2.run(2.99, answer=False)
        self.assertEqual(h2.m.member("c").state, State.SUSPECT)
        h2.run(0.02, answer=False)
        self.assertEqual(h2.m.member("c").state, State.DEAD)

    def test_accuser_and_repeats_do_not_confirm(self) -> None:
        """
        The accuser repeating itself, or one confirmer repeating itself,
        does not shorten the timer.
        """
        h = Harness(self.peers)
        h.feed(Suspect(1, "c", "b"))
        h.feed(Suspect(1, "c", "b"), Suspect(1, "c", "b"))
        h.feed(Suspect(1, "c", "d"), Suspect(1, "c", "d"), Suspect(1, "c", "d"))
        h.run(11.37, answer=False)
        self.assertEqual(h.m.member("c").state, State.SUSPECT)
        h.run(0.02, answer=False)
        self.assertEqual(h.m.member("c").state, State.DEAD)

    def test_new_confirmation_regossiped(self) -> None:
        """
        A suspicion that adds a confirmation is gossiped on; a repeat is
        not.
        """
        h = Harness(self.peers)
        h.feed(Suspect(1, "c", "b"))
        self.assertIn(Suspect(1, "c", "b"), h.piggyback())
        h.feed(Suspect(1, "c", "d"))
        self.assertIn(Suspect(1, "c", "d"), h.piggyback())
        for _ in range(20):
            h.piggyback()
        h.feed(Suspect(1, "c", "d"))
        self.assertNotIn(Suspect(1, "c", "d"), h.piggyback())

    def test_small_cluster_uses_minimum(self) -> None:
        """
        With n - 2 < k_s no confirmations are expected and the timer is the
        minimum (4 s for n = 3).
        """
        h = Harness(["b", "c"])
        h.feed(Suspect(1, "c", "b"))
        h.run(3.99, answer=False)
        self.assertEqual(h.m.member("c").state, State.SUSPECT)
        h.run(0.02, answer=False)
        self.assertEqual(h.m.member("c").state, State.DEAD)

    def test_plain_swim_fixed_timeout(self) -> None:
        """
        Without Lifeguard the timer is the minimum and confirmations change
        nothing.
        """
        h = Harness(self.peers, config=SwimConfig(lifeguard=False))
        h.feed(Suspect(1, "c", "b"))
        h.run(3.99, answer=False)
        self.assertEqual(h.m.member("c").state, State.SUSPECT)
        h.run(0.02, answer=False)
        self.assertEqual(h.m.member("c").state, State.DEAD)

    def test_refutation_cancels_timer(self) -> None:
        """
        An alive message with a higher incarnation ends the suspicion.
        """
        h = Harness(self.peers)
        h.feed(Suspect(1, "c", "b"))
        h.feed(Alive(2, "c", addr_of("c")))
        h.run(30, step=0.1, answer=False)
        self.assertEqual(h.m.member("c").state, State.ALIVE)


class BuddyTests(SynchronousTestCase):
    """
    Lifeguard's buddy system: the suspect is told with the probe.
    """

    def test_ping_to_suspect_carries_suspect(self) -> None:
        """
        The ping that probes a suspect member travels in one packet with a
        L{Suspect} about it from this node.
        """
        h = Harness(["b"])
        h.feed(Suspect(1, "b", "x"))
        h.m.start()
        h.run(1.0)
        [(packet_addr, messages)] = [
            (a, ms) for a, ms in h.transport.messages() if any(isinstance(m, Ping) for m in ms)
        ][:1]
        self.assertEqual(packet_addr, addr_of("b"))
        self.assertIn(Suspect(1, "b", "a"), messages)

    def test_no_buddy_without_lifeguard(self) -> None:
        """
        Plain SWIM pings a suspect without telling it.
        """
        h = Harness(["b"], config=SwimConfig(lifeguard=False))
        h.feed(Suspect(1, "b", "x"))
        h.m.start()
        h.run(1.0)
        ping_packets = [
            ms for _, ms in h.transport.messages() if any(isinstance(m, Ping) for m in ms)
        ]
        self.assertTrue(ping_packets)
        self.assertNotIn(Suspect(1, "b", "a"), ping_packets[0])


class LocalHealthTests(SynchronousTestCase):
    """
    Lifeguard's local health score (notes 2.3 step 6, 3.1).
    """

    def test_missed_nacks_raise(self) -> None:
        """
        A failed probe whose three helpers sent no nack adds 3.
        """
        h = Harness(["b", "c", "d", "e"])
        h.silent.update("bcde")
        h.m.start()
        h.run_until(lambda: h.m.stats.probe_failures == 1)
        self.assertEqual(h.m.local_health, 3)

    def test_nacks_spare(self) -> None:
        """
        Nacks from every helper prove the path works: no penalty; one
        missing nack costs one.
        """
        for nackers, expected in (("bcde", 2), ("bc", 3)):
            h = Harness(["b", "c", "d", "e"])
            h.feed(Suspect(0, "a", "b"), Suspect(1, "a", "b"))  # two refutations: score 2
            self.assertEqual(h.m.local_health, 2)
            h.silent.update("bcde")
            h.nackers.update(nackers)
            h.m.start()
            h.run_until(lambda: h.m.stats.probe_failures == 1)
            self.assertEqual(h.m.local_health, expected, nackers)

    def test_refutation_raises(self) -> None:
        """
        Each refutation adds one.
        """
        h = Harness(["b"])
        h.feed(Suspect(0, "a", "b"))
        self.assertEqual(h.m.local_health, 1)

    def test_one_stall_counts_once(self) -> None:
        """
        One stall reported by several late timers (the lag monitor and the
        probe's) raises local health once.
        """
        h = Harness(["b"])
        h.clock.advance(10.0)
        h.m.note_lag(2.0)
        h.clock.advance(0.01)
        h.m.note_lag(2.01)
        self.assertEqual((h.m.local_health, h.m.stats.lag_events), (1, 1))
        h.clock.advance(5.0)
        h.m.note_lag(1.0)
        self.assertEqual((h.m.local_health, h.m.stats.lag_events), (2, 2))

    def test_lag_raises(self) -> None:
        """
        Reactor lag above the threshold adds one; below it, nothing.
        """
        h = Harness(["b"])
        h.m.note_lag(0.1)
        self.assertEqual(h.m.local_health, 0)
        h.m.note_lag(1.0)
        self.assertEqual(h.m.local_health, 1)
        self.assertEqual(h.m.stats.lag_events, 1)

    def test_success_lowers(self) -> None:
        """
        A successful probe takes one off.
        """
        h = Harness(["b"])
        h.feed(Suspect(0, "a", "b"), Suspect(1, "a", "b"))
        h.m.start()
        h.run_until(lambda: h.m.stats.acks_received == 1)
        self.assertEqual(h.m.local_health, 1)

    def test_clamped(self) -> None:
        """
        The score stays in 0..awareness_max_multiplier - 1, and at 0
        without Lifeguard.
        """
        h = Harness(["b"])
        for i in range(20):
            h.feed(Suspect(h.m.incarnation, "a", "b"))
        self.assertEqual(h.m.local_health, 7)
        h2 = Harness(["b"])
        h2.m.start()
        h2.run(5)
        self.assertEqual(h2.m.local_health, 0)
        plain = Harness(["b"], config=SwimConfig(lifeguard=False))
        plain.feed(Suspect(0, "a", "b"))
        plain.m.note_lag(5)
        self.assertEqual(plain.m.local_health, 0)

    def test_scaled_probe_interval(self) -> None:
        """
        With score 2 a failed probe waits three probe intervals before it
        suspects the target.
        """
        h = Harness(["b", "c"])
        h.feed(Suspect(0, "a", "b"), Suspect(1, "a", "b"))
        h.silent.update("bc")
        h.m.start()
        h.run_until(lambda: h.m.stats.probes == 1)
        started = h.clock.seconds()
        h.run_until(lambda: h.m.stats.probe_failures == 1)
        self.assertTrue(abs(h.clock.seconds() - started - 3.0) < 0.02, h.clock.seconds() - started)

    def test_lag_makes_probe_inconclusive(self) -> None:
        """
        A probe during which this node lagged accuses nobody: the node
        cannot tell its own stall from the target's silence.
        """
        h = Harness(["b", "c"])
        h.silent.update("bc")
        h.m.start()
        h.run_until(lambda: h.m.stats.probes == 1)
        h.run(0.3)
        h.m.note_lag(0.3)
        h.run(1.0)
        self.assertEqual(h.m.stats.probes_inconclusive, 1)
        self.assertEqual(h.m.stats.probe_failures, 0)
        self.assertEqual(h.m.stats.suspicions, 0)

    def test_lag_before_probe_spares_it(self) -> None:
        """
        Lag that ended before the probe in flight began does not spoil it.
        """
        h = Harness(["b", "c"])
        h.silent.update("bc")
        h.m.start()
        h.run_until(lambda: h.m.stats.probes == 1)
        h.run(0.1)
        h.m.note_lag(0.5)
        h.run(1.0)
        self.assertEqual(h.m.stats.probes_inconclusive, 0)
        self.assertEqual(h.m.stats.probe_failures, 1)

    def test_late_timer_counts_as_lag(self) -> None:
        """
        A probe timer that fires far later than due (the reactor was
        blocked) is noticed as lag without anyone calling C{note_lag}.
        """
        h = Harness(["b", "c"])
        h.silent.update("bc")
        h.m.start()
        h.run_until(lambda: h.m.stats.probes == 1)
        h.clock.advance(2.0)  # every due call runs 2 s late
        self.assertEqual(h.m.stats.probe_failures, 0)
        self.assertEqual(h.m.stats.probes_inconclusive, 1)
        self.assertGreaterEqual(h.m.local_health, 1)


class RoundRobinTests(SynchronousTestCase):
    """
    Probe target selection (notes 1.1, 2.3 step 1).
    """

    peers = ["b", "c", "d", "e", "f", "g", "h", "i", "j"]

    def test_every_member_each_round(self) -> None:
        """
        n - 1 consecutive probes cover every other member exactly once,
        and the next round is a reshuffled order.
        """
        h = Harness(self.peers, seed=3)
        h.m.start()
        h.run_until(lambda: len(h.probed) == 18, step=0.05)
        first, second = h.probed[:9], h.probed[9:18]
        self.assertEqual(sorted(first), self.peers)
        self.assertEqual(sorted(second), self.peers)
        self.assertNotEqual(first, second)

    def test_new_member_probed(self) -> None:
        """
        A member that joins mid-round is inserted at a random position and
        probed within two rounds.
        """
        h = Harness(self.peers, seed=1)
        h.m.start()
        h.run_until(lambda: len(h.probed) == 3, step=0.05)
        h.feed(Alive(1, "k", addr_of("k")))
        h.run_until(lambda: "k" in h.probed, limit=21, step=0.05)

    def test_skips_self_and_dead_and_reaps(self) -> None:
        """
        Dead and left members are never probed, and are reaped at a wrap
        once older than gossip_to_the_dead_time.
        """
        h = Harness(self.peers, config=SwimConfig(gossip_to_the_dead_time=5.0))
        h.feed(Dead(1, "c", "b"), Dead(1, "d", "d"))
        h.m.start()
        h.run(30, step=0.05)
        self.assertNotIn("c", h.probed)
        self.assertNotIn("d", h.probed)
        self.assertNotIn("a", h.probed)
        self.assertEqual(h.m.member("c"), None)
        self.assertEqual(h.m.member("d"), None)
        self.assertEqual(len(h.m.members()), 8)


class ProbeSoonTests(SynchronousTestCase):
    """
    L{Membership.probe_soon} jumps the round-robin queue.
    """

    def test_probed_now(self) -> None:
        """
        Between probes, the member asked for is pinged at once, ahead of
        the round-robin order; then the walk goes on.
        """
        h = Harness(["b", "c", "d", "e", "f"])
        h.m.start()
        h.run_until(lambda: h.m.stats.probes == 2)
        h.run(0.3)
        walk = [m.target for _, m in h.sent_of(Ping)]
        later = [n for n in "bcdef" if n not in walk][-1]
        h.m.probe_soon(later)
        h.clock.advance(0)
        self.assertEqual(h.sent_of(Ping)[-1][1].target, later)
        self.assertEqual(h.m.stats.probes, 3)

    def test_ignored(self) -> None:
        """
        Unknown, dead or self: nothing happens.
        """
        h = Harness(["b"])
        h.m.start()
        h.run_until(lambda: h.m.stats.probes == 1)
        h.run(0.3)
        before = h.m.stats.probes
        h.feed(Dead(1, "b", "c"))
        for node in ("b", "zz", "a"):
            h.m.probe_soon(node)
        h.clock.advance(0)
        self.assertEqual(h.m.stats.probes, before)


class IndirectProbeTests(SynchronousTestCase):
    """
    Indirect probes and their helpers (notes 2.3 steps 3-7).
    """

    def test_indirect_after_timeout(self) -> None:
        """
        After probe_timeout without an ack, k alive helpers (never the
        target) are asked, with nacks requested, and the stream is tried;
        an ack relayed by a helper before the deadline saves the target.
        """
        h = Harness(["b", "c", "d", "e"])
        h.silent.update("bcde")
        h.m.start()
        h.run_until(lambda: h.m.stats.probes == 1)
        target = h.sent_of(Ping)[0][1].target
        h.run(0.51)
        requests = h.sent_of(IndirectPing)
        self.assertEqual(len(requests), 3)
        helpers = {a for a, _ in requests}
        self.assertNotIn(addr_of(target), helpers)
        for _, r in requests:
            self.assertEqual((r.target, r.target_addr, r.nack), (target, addr_of(target), True))
        [(node, addr, _)] = h.transport.stream_pings
        self.assertEqual((node, addr), (target, addr_of(target)))
        h.feed(Ack(requests[0][1].seq))
        h.run(1.0, answer=False)
        self.assertEqual(h.m.stats.probe_failures, 0)
        self.assertEqual(h.m.member(target).state, State.ALIVE)

    def test_no_ack_suspects(self) -> None:
        """
        Without any ack by the deadline, the target is suspected by this
        node at the incarnation it was probed at.
        """
        h = Harness(["b"])
        h.silent.add("b")
        h.m.start()
        h.run_until(lambda: h.m.stats.probe_failures == 1)
        self.assertEqual(h.m.member("b").state, State.SUSPECT)
        self.assertIn(Suspect(1, "b", "a"), h.piggyback())

    def test_stream_ping_rescues(self) -> None:
        """
        A target only the stream ping reached is not suspected.
        """
        h = Harness(["b"])
        h.silent.add("b")
        h.m.start()
        h.run_until(lambda: h.transport.stream_pings != [])
        h.transport.stream_pings[0][2].callback(StreamPing.ANSWERED)
        h.run(1.0, answer=False)
        self.assertEqual(h.m.stats.stream_ping_rescues, 1)
        self.assertEqual(h.m.member("b").state, State.ALIVE)

    def _failed_probe(self, outcome: StreamPing, **config: Any) -> Harness:
        """
        Five members, b silent; b's stream ping ends with C{outcome}; run
        until b is suspected.
        """
        h = Harness(["b", "c", "d", "e"], config=SwimConfig(**config))
        h.silent.add("b")
        h.m.start()

        def stream_pinged() -> bool:
            for node, _, d in h.transport.stream_pings:
                if node == "b" and not d.called:
                    d.callback(outcome)
                    return True
            return False

        h.run_until(stream_pinged)
        h.run_until(lambda: h.m.member("b").state == State.SUSPECT)
        return h

    def test_refused_fails_fast(self) -> None:
        """
        A failed probe whose stream ping was refused by b's host (nothing
        listens there: the process is gone) suspects b for one probe
        interval, not Lifeguard's 4 s minimum, and no confirmation
        lengthens that.
        """
        h = self._failed_probe(StreamPing.REFUSED)
        suspected = h.clock.seconds()
        self.assertEqual(h.m.stats.refused_probes, 1)
        h.feed(Suspect(1, "b", "c"))
        h.run_until(lambda: h.m.member("b").state == State.DEAD, limit=5.0)
        self.assertLessEqual(abs(h.clock.seconds() - suspected - 1.0), 0.02)

    def test_silent_keeps_lifeguard_timer(self) -> None:
        """
        A stream ping that was merely unanswered (a slow or cut-off node)
        leaves the suspicion on Lifeguard's timer: nothing happens in the
        first 4 s.
        """
        h = self._failed_probe(StreamPing.SILENT)
        self.assertEqual(h.m.stats.refused_probes, 0)
        h.run(3.9, answer=False)
        self.assertEqual(h.m.member("b").state, State.SUSPECT)

    def test_refused_fast_path_off(self) -> None:
        """
        With C{fast_fail_refused} off, a refusal is treated like silence.
        """
        h = self._failed_probe(StreamPing.REFUSED, fast_fail_refused=False)
        h.run(3.9, answer=False)
        self.assertEqual(h.m.member("b").state, State.SUSPECT)

    def test_refused_can_be_refuted(self) -> None:
        """
        The accused still gets its probe interval: an alive message with a
        higher incarnation within it (a node that came back) clears the
        suspicion.
        """
        h = self._failed_probe(StreamPing.REFUSED)
        h.feed(Alive(2, "b", addr_of("b")))
        h.silent.discard("b")
        h.run(2.0)
        self.assertEqual(h.m.member("b").state, State.ALIVE)

    def test_plain_swim_no_nack(self) -> None:
        """
        Without Lifeguard, indirect pings do not ask for nacks.
        """
        h = Harness(["b", "c"], config=SwimConfig(lifeguard=False))
        h.silent.update("bc")
        h.m.start()
        h.run_until(lambda: h.sent_of(IndirectPing) != [])
        self.assertFalse(h.sent_of(IndirectPing)[0][1].nack)

    def test_helper_relays_ack(self) -> None:
        """
        A helper pings the target under its own sequence number and relays
        the ack to the origin under the origin's.
        """
        h = Harness(["b", "c"])
        h.feed(IndirectPing(77, "c", addr_of("c"), True, "b", addr_of("b")))
        [(to, ping)] = h.sent_of(Ping)
        self.assertEqual((to, ping.target, ping.source), (addr_of("c"), "c", "a"))
        h.feed(Ack(ping.seq))
        self.assertIn((addr_of("b"), Ack(77)), h.sent())
        h.run(1.0, answer=False)
        self.assertEqual(h.sent_of(Nack), [])

    def test_helper_nacks(self) -> None:
        """
        A helper whose ping goes unanswered sends a nack after probe_timeout
        when asked, and nothing when not.
        """
        h = Harness(["b", "c"])
        h.feed(IndirectPing(77, "c", addr_of("c"), True, "b", addr_of("b")))
        h.run(0.49, answer=False)
        self.assertEqual(h.sent_of(Nack), [])
        h.run(0.02, answer=False)
        self.assertEqual(h.sent_of(Nack), [(addr_of("b"), Nack(77))])
        h.feed(IndirectPing(78, "c", addr_of("c"), False, "b", addr_of("b")))
        h.run(1.0, answer=False)
        self.assertEqual(len(h.sent_of(Nack)), 1)

    def test_ping_answered_and_misdirected(self) -> None:
        """
        A ping for this node is acked to its source address; a ping for
        another node id (someone took over the address) is ignored.
        """
        h = Harness([])
        h.feed(Ping(5, "a", "b", addr_of("b")))
        h.feed(Ping(6, "someone-else", "b", addr_of("b")))
        self.assertEqual([(a, m) for a, m in h.sent_of(Ack)], [(addr_of("b"), Ack(5))])
        self.assertEqual(h.m.stats.misdirected_pings, 1)


class LeftDeadReclaimTests(SynchronousTestCase):
    """
    Left versus dead, and names reclaimed at new addresses (notes 2.5).
    """

    def test_left_vs_dead(self) -> None:
        """
        A death announced by the node itself is a leave; by anyone else, a
        failure.
        """
        h = Harness(["b", "c"])
        h.feed(Dead(1, "b", "b"), Dead(1, "c", "b"))
        self.assertEqual(states(h)["b"], State.LEFT)
        self.assertEqual(states(h)["c"], State.DEAD)
        self.assertIn(("left", "b", State.LEFT), h.listener.events)
        self.assertIn(("failed", "c", State.DEAD), h.listener.events)
        self.assertEqual((h.m.stats.leaves, h.m.stats.deaths), (1, 1))

    def test_conflicting_address_refused(self) -> None:
        """
        An alive member's name announced at another address is refused
        while the old address is not known to be gone, whatever the
        incarnation; a newer claim makes this node ask the old address over
        the stream.
        """
        h = Harness(["b"])
        h.feed(Alive(9, "b", ELSEWHERE))
        self.assertEqual(h.m.member("b").addr, addr_of("b"))
        self.assertEqual(h.m.stats.conflicts, 1)
        [(node, addr, _)] = h.transport.stream_pings
        self.assertEqual((node, addr), ("b", addr_of("b")))

    def test_moved_when_old_address_is_gone(self) -> None:
        """
        If nothing answers as the member at its old address (refused,
        silent), the newer claim is taken at once: the member moved, and
        listeners hear it as an update, not a failure and a join.
        """
        for outcome in (StreamPing.REFUSED, StreamPing.SILENT):
            h = Harness(["b"])
            h.feed(Alive(9, "b", ELSEWHERE))
            h.transport.stream_pings[0][2].callback(outcome)
            member = h.m.member("b")
            self.assertEqual((member.addr, member.incarnation, member.state), (ELSEWHERE, 9, State.ALIVE))
            self.assertEqual(h.listener.events[-1], ("updated", "b", State.ALIVE))
            self.assertNotIn("failed", [event for event, _, _ in h.listener.events])

    def test_stale_claim_not_taken(self) -> None:
        """
        A claim refused because the old address answered, and then
        superseded by newer news from the member where it is, is not taken
        when the member later dies: the member stays dead, at its address.
        """
        h = Harness(["b"])
        h.feed(Alive(2, "b", ELSEWHERE))
        h.transport.stream_pings[0][2].callback(StreamPing.ANSWERED)
        h.feed(Alive(50, "b", addr_of("b")))
        h.feed(Dead(50, "b", "c"))
        member = h.m.member("b")
        self.assertEqual((member.state, member.addr, member.incarnation), (State.DEAD, addr_of("b"), 50))
        self.assertNotIn("joined", [event for event, node, _ in h.listener.events[1:] if node == "b"])

    def test_two_processes_one_id(self) -> None:
        """
        If the old address still answers as the member, two processes
        claim one id: the conflict stands (memberlist's rule).
        """
        h = Harness(["b"])
        h.feed(Alive(9, "b", ELSEWHERE))
        h.transport.stream_pings[0][2].callback(StreamPing.ANSWERED)
        self.assertEqual(h.m.member("b").addr, addr_of("b"))

    def test_reclaim_dead_at_new_address(self) -> None:
        """
        With dead_node_reclaim_time 0 a dead member's name is reclaimed at a
        new address at once, even at a lower incarnation, and it joins
        again.
        """
        h = Harness(["b"])
        h.feed(Alive(5, "b", addr_of("b")), Dead(5, "b", "x"))
        h.feed(Alive(1, "b", ELSEWHERE))
        member = h.m.member("b")
        self.assertEqual(
            (member.state, member.addr, member.incarnation), (State.ALIVE, ELSEWHERE, 1)
        )
        self.assertEqual(h.listener.events[-1], ("joined", "b", State.ALIVE))

    def test_dead_member_told_directly(self) -> None:
        """
        An alive message that does not beat a member's death (it never
        heard it was declared dead) makes this node send the member its
        death directly, once per probe interval, so it refutes.
        """
        h = Harness(["b", "c"])
        h.feed(Dead(1, "b", "c"))
        h.feed(Alive(1, "b", addr_of("b")))
        h.feed(Alive(1, "b", addr_of("b")))
        self.assertEqual(h.m.member("b").state, State.DEAD)
        told = [
            m for a, m in h.sent() if a == addr_of("b") and isinstance(m, Dead) and m.sender == "a"
        ]
        self.assertEqual(told, [Dead(1, "b", "a")])

    def test_reconnect_to_failed(self) -> None:
        """
        A member declared dead is retried with a push-pull every
        reconnect_interval, even after it was reaped; a left one is not.
        """
        config = SwimConfig(reconnect_interval=5.0, gossip_to_the_dead_time=1.0)
        h = Harness(["b", "c"], config=config)
        h.feed(Dead(1, "b", "c"), Dead(1, "c", "c"))
        h.m.start()
        h.run(12.0, step=0.05)
        self.assertEqual(h.m.member("b"), None)
        tried = {(node, addr) for node, addr, _, _ in h.transport.push_pulls}
        self.assertEqual(tried, {("b", addr_of("b"))})
        self.assertGreaterEqual(len(h.transport.push_pulls), 2)

    def test_reclaim_waits(self) -> None:
        """
        With a reclaim time, the name stays taken until the member has been
        dead that long; a left member's name is free at once.
        """
        h = Harness(["b", "c"], config=SwimConfig(dead_node_reclaim_time=10.0))
        h.feed(Dead(1, "b", "x"), Dead(1, "c", "c"))
        h.feed(Alive(2, "b", ELSEWHERE))
        self.assertEqual(h.m.member("b").state, State.DEAD)
        h.feed(Alive(2, "c", ELSEWHERE))
        self.assertEqual(h.m.member("c").addr, ELSEWHERE)
        h.run(10.5, step=0.1, answer=False)
        h.feed(Alive(2, "b", ELSEWHERE))
        self.assertEqual((h.m.member("b").state, h.m.member("b").addr), (State.ALIVE, ELSEWHERE))


class DisseminationTests(SynchronousTestCase):
    """
    Broadcasts piggybacked and gossiped (notes 2.4).
    """

    def test_piggyback_fits(self) -> None:
        """
        An ack carries as many broadcasts as fit, and the packet stays
        within max_packet minus the envelope's overhead.
        """
        peers = [f"p{i}" for i in range(300)]
        h = Harness([], overhead=29)
        for i, p in enumerate(peers):
            h.feed(Alive(1, p, Address(f"10.1.{i // 250}.{i % 250}", 7946)))
        before = len(h.transport.sent)
        h.feed(Ping(1, "a", "p1", ELSEWHERE))
        [(_, packet)] = h.transport.sent[before:]
        self.assertLessEqual(len(packet), 1400 - 29)
        # Full: no queued alive (at most ~20 bytes) would have fit.
        self.assertGreater(len(packet), 1400 - 29 - 20)
        self.assertGreater(len(h.transport.messages()[-1][1]), 50)

    def test_gossip_only_when_queued(self) -> None:
        """
        The gossip timer sends nothing while the queue is empty and sends
        to gossip_nodes peers once something is queued.
        """
        h = Harness(["b", "c", "d", "e"])
        h.m.start()
        h.run_until(lambda: h.m.pending_broadcasts() == 0, step=0.05)
        quiet_since = h.m.stats.gossip_packets
        h.run(3.0, step=0.05)
        self.assertEqual(h.m.stats.gossip_packets, quiet_since)
        h.m.broadcast_user("registry", b"news")
        h.run(0.21, step=0.01, answer=False)
        self.assertEqual(h.m.stats.gossip_packets, quiet_since + 3)
        users = [a for a, m in h.sent() if isinstance(m, User)]
        self.assertEqual(len(set(users)), 3)

    def test_gossip_to_the_dead(self) -> None:
        """
        A member declared dead keeps receiving gossip (a chance to refute)
        for gossip_to_the_dead_time, and not after.
        """
        h = Harness(["b"], config=SwimConfig(gossip_to_the_dead_time=5.0))
        h.feed(Dead(1, "b", "x"))
        h.m.start()
        h.m.broadcast_user("k", b"early")
        h.run(1.0, answer=False)
        self.assertIn(addr_of("b"), [a for a, m in h.sent() if m == User(b"early")])
        h.run(5.0, answer=False)
        h.m.broadcast_user("k", b"late")
        h.run(1.0, answer=False)
        self.assertEqual([a for a, m in h.sent() if m == User(b"late")], [])

    def test_user_broadcast(self) -> None:
        """
        A user broadcast replaces a queued one with the same key, reaches
        the delegate at the receiver, and must fit in a packet.
        """
        h = Harness(["b"])
        h.m.broadcast_user("k", b"one")
        h.m.broadcast_user("k", b"two")
        carried = h.piggyback()
        self.assertIn(User(b"two"), carried)
        self.assertNotIn(User(b"one"), carried)
        self.assertRaises(ValueError, h.m.broadcast_user, "k", b"x" * 1400)
        delegate = RecordingDelegate()
        h2 = Harness([], delegate=delegate)
        h2.feed(User(b"hello"))
        self.assertEqual(delegate.user, [b"hello"])

    def test_malformed_dropped(self) -> None:
        """
        Garbage is counted and dropped; it never raises.
        """
        h = Harness([])
        h.m.packet_received(ELSEWHERE, b"\xff\x00garbage")
        h.m.packet_received(ELSEWHERE, b"")
        self.assertEqual(h.m.stats.malformed_dropped, 2)
        self.assertEqual(h.m.stats.packets_received, 2)


class PushPullTests(SynchronousTestCase):
    """
    Full-state exchange (notes 2.5, 2.7).
    """

    def test_merge_rules(self) -> None:
        """
        Remote alive is applied as alive, remote suspect and dead as a
        suspicion (dead is never taken on trust), remote left as left; the
        answer is this node's state from before the merge, and the
        application's state reaches the delegate.
        """
        delegate = RecordingDelegate(b"mine")
        h = Harness(["c", "d", "e"], delegate=delegate)
        remote = PushPull(
            False,
            (
                MemberState("b", addr_of("b"), 1, State.ALIVE),
                MemberState("c", addr_of("c"), 1, State.DEAD),
                MemberState("d", addr_of("d"), 1, State.LEFT),
                MemberState("e", addr_of("e"), 1, State.SUSPECT),
            ),
            b"theirs",
        )
        reply = decode_push_pull(h.m.push_pull_received(encode_push_pull(remote)))
        self.assertEqual(
            {s.node: s.state for s in states_of(reply)},
            {"a": State.ALIVE, "c": State.ALIVE, "d": State.ALIVE, "e": State.ALIVE},
        )
        self.assertEqual(reply.user_state, b"mine")
        self.assertEqual(
            states(h),
            {
                "a": State.ALIVE,
                "b": State.ALIVE,
                "c": State.SUSPECT,
                "d": State.LEFT,
                "e": State.SUSPECT,
            },
        )
        self.assertEqual(delegate.merged, [(b"theirs", False)])

    def test_garbage_refused(self) -> None:
        """
        An inbound exchange that does not decode raises L{CodecError}.
        """
        h = Harness([])
        self.assertRaises(CodecError, h.m.push_pull_received, b"\x00nonsense")

    def test_periodic_push_pull(self) -> None:
        """
        Every push_pull_interval the node exchanges state with one alive
        peer, by node id.
        """
        h = Harness(["b"], config=SwimConfig(push_pull_interval=5.0))
        h.m.start()
        h.run(5.0, step=0.05)
        self.assertEqual(len(h.transport.push_pulls), 1)
        node, addr, state, d = h.transport.push_pulls[0]
        self.assertEqual((node, addr), ("b", addr_of("b")))
        self.assertFalse(decode_push_pull(state).join)
        h.run(5.0, step=0.05)
        self.assertEqual(len(h.transport.push_pulls), 2)

    def test_exchange_times_out(self) -> None:
        """
        An exchange that never answers fails after tcp_timeout.
        """
        h = Harness([])
        d = h.m.join([ELSEWHERE])
        h.run(10.5, step=0.1, answer=False)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(h.m.stats.push_pull_failures, 1)


def states_of(pp: PushPull) -> Iterable[MemberState]:
    return pp.members


class JoinLeaveTests(SynchronousTestCase):
    """
    Joining through seeds and leaving gracefully.
    """

    def test_join_through_seed(self) -> None:
        """
        Joining push-pulls (join set) with the seed, merges its members and
        fires with the number of seeds reached.
        """
        h = Harness([])
        d = h.m.join([ELSEWHERE, HERE])
        [(node, addr, state, exchange)] = h.transport.push_pulls
        self.assertEqual((node, addr), (None, ELSEWHERE))
        sent = decode_push_pull(state)
        self.assertTrue(sent.join)
        self.assertEqual([m.node for m in sent.members], ["a"])
        exchange.callback(
            encode_push_pull(
                PushPull(
                    True,
                    (
                        MemberState("s", ELSEWHERE, 3, State.ALIVE),
                        MemberState("t", addr_of("t"), 1, State.ALIVE),
                    ),
                )
            )
        )
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(h.m.alive_count(), 3)

    def test_join_failure(self) -> None:
        """
        A seed that cannot be reached counts as 0.
        """
        h = Harness([])
        d = h.m.join([ELSEWHERE])
        h.transport.push_pulls[0][3].errback(ConnectionError("refused"))
        self.assertEqual(self.successResultOf(d), 0)

    def test_join_retries(self) -> None:
        """
        L{Membership.join_with_retry} tries again after a back-off until a
        seed answers.
        """
        h = Harness([])
        d = h.m.join_with_retry([ELSEWHERE], initial_delay=1.0)
        h.transport.push_pulls[0][3].errback(ConnectionError("refused"))
        self.assertNoResult(d)
        h.run(1.3, step=0.05, answer=False)
        self.assertEqual(len(h.transport.push_pulls), 2)
        h.transport.push_pulls[1][3].callback(
            encode_push_pull(PushPull(True, (MemberState("s", ELSEWHERE, 1, State.ALIVE),)))
        )
        self.assertEqual(self.successResultOf(d), 1)

    def test_leave(self) -> None:
        """
        Leaving broadcasts a death about this node sent by itself, marks it
        left, and fires C{True} once the broadcast went out its full count.
        """
        h = Harness(["b", "c"])
        d = h.m.leave(10.0)
        self.assertEqual(h.m.member("a").state, State.LEFT)
        self.assertNoResult(d)
        h.m.start()
        h.run(3.0, step=0.05)
        self.assertTrue(self.successResultOf(d))
        deaths = [m for _, m in h.sent_of(Dead)]
        self.assertEqual(len(deaths), 4)  # 4 * ceil(log10(3 + 1))
        self.assertEqual(set(deaths), {Dead(0, "a", "a")})
        # A leaving node ignores alive news about itself.
        h.feed(Alive(9, "a", HERE))
        self.assertEqual(h.m.member("a").state, State.LEFT)

    def test_leave_fires_outside_send(self) -> None:
        """
        A leave's waiter may stop the node as soon as it fires (the node
        shuts down), so it hears of the leave from a fresh stack, never
        from the middle of the probe whose ping carried the last copy (the
        gossip timer is slowed so the copies ride on pings): the stop then
        leaves nothing on the clock.
        """
        h = Harness(["b", "c"], config=SwimConfig(gossip_interval=1000.0))
        h.m.start()
        d = h.m.leave(10.0)
        d.addCallback(lambda sent: h.m.stop())
        h.run_until(lambda: d.called, limit=10.0, step=0.05)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stopped_while_probing(self) -> None:
        """
        A node stopped while it sends a ping (by whatever the transport
        set off) starts no probe timers.
        """
        h = Harness(["b"], config=SwimConfig(gossip_interval=1000.0))
        h.transport.send_packet = lambda addr, packet: h.m.stop()  # type: ignore[method-assign]
        h.m.start()
        h.run_until(lambda: h.m.stats.pings_sent, limit=2.0, step=0.05)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_leave_timeout(self) -> None:
        """
        If the broadcast cannot go out, leave fires C{False} at the timeout.
        """
        h = Harness(["b"])
        d = h.m.leave(2.0)
        h.run(2.01, step=0.01, answer=False)
        self.assertFalse(self.successResultOf(d))

    def test_leave_alone(self) -> None:
        """
        With nobody alive to tell, leave is done at once.
        """
        h = Harness([])
        self.assertTrue(self.successResultOf(h.m.leave(5.0)))

    def test_stop_cancels_everything(self) -> None:
        """
        After L{Membership.stop} nothing is pending on the clock, exchanges
        are cancelled and packets are ignored.
        """
        h = Harness(["b", "c", "d"])
        h.silent.update("bcd")
        h.m.start()
        h.feed(Suspect(1, "c", "b"))
        h.feed(IndirectPing(1, "d", addr_of("d"), True, "b", addr_of("b")))
        d = h.m.join_with_retry([ELSEWHERE])
        h.run(0.7)
        h.m.stop()
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(d), 0)
        received = h.m.stats.packets_received
        h.feed(Ping(1, "a", "b", addr_of("b")))
        self.assertEqual(h.m.stats.packets_received, received)


# --- invariants -----------------------------------------------------------------

NODES = ["a", "b", "c"]
news = st.one_of(
    st.builds(
        Alive,
        st.integers(0, 6),
        st.sampled_from(NODES),
        st.just(None),
        st.sampled_from([b"", b"m"]),
    ),
    st.builds(Suspect, st.integers(0, 6), st.sampled_from(NODES), st.sampled_from(NODES + ["x"])),
    st.builds(Dead, st.integers(0, 6), st.sampled_from(NODES), st.sampled_from(NODES + ["x"])),
    st.floats(0.1, 30.0),
)


class InvariantTests(SynchronousTestCase):
    """
    Properties that hold for any sequence of membership news.
    """

    @settings(max_examples=150, deadline=None)
    @given(st.lists(news, max_size=40))
    def test_incarnations_never_drop_and_self_stays_alive(self, steps: List[Any]) -> None:
        """
        Whatever alive, suspect and dead messages arrive (each node at its
        one address) and however much time passes, no member's incarnation
        goes down and this node stays alive in its own view with an
        incarnation above every accusation it received.
        """
        h = Harness(["b", "c"])
        seen: Dict[str, int] = {m.node: m.incarnation for m in h.m.members()}
        worst_accusation = -1
        for step in steps:
            if isinstance(step, float):
                h.run(step, step=0.5, answer=False)
            else:
                if isinstance(step, Alive):
                    where = HERE if step.node == "a" else addr_of(step.node)
                    step = Alive(step.incarnation, step.node, where, step.meta)
                elif step.node == "a":
                    worst_accusation = max(worst_accusation, step.incarnation)
                h.feed(step)
            for member in h.m.members():
                self.assertGreaterEqual(member.incarnation, seen.get(member.node, 0), member)
                seen[member.node] = member.incarnation
            me = h.m.member("a")
            self.assertEqual(me.state, State.ALIVE)
            self.assertGreater(me.incarnation, worst_accusation)
