"""
Tests for L{caxton.observability.events}: the event hub (ids, ring,
resume, filters, keep-alives, back-pressure and its bound), and the sources
of events (the agent manager, SWIM membership), with a L{task.Clock}.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from caxton.errors import InvalidRequest, NotAccepting
from caxton.observability.events import (
    KEEPALIVE,
    KINDS,
    AgentEvents,
    EventHub,
    IEventConsumer,
    MembershipEvents,
    TooManySubscribers,
    parse_types,
    rfc3339,
)
from caxton.observability.service import ObservabilityService
from caxton.swim.core import Member
from caxton.swim.interfaces import IMembershipListener
from caxton.swim.messages import Address, State
from tests.localnode import LocalNodeTestCase
from tests.wasmbuild import example, testing_agent, wat_module

#: 2026-01-01T00:00:00Z
NOW = 1_767_225_600.0


@implementer(IEventConsumer)
class FakeConsumer:
    """
    Collects what a subscription writes, and whether it was aborted.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.aborted = 0

    def write(self, data: bytes) -> None:
        self.data += data

    def abort(self) -> None:
        self.aborted += 1

    def frames(self) -> List[Dict[str, Any]]:
        """
        The events written, parsed from their SSE frames: C{id}, C{event}
        and the decoded C{data}; comments are left out.
        """
        events = []
        for block in bytes(self.data).decode("utf-8").split("\n\n"):
            lines = [line for line in block.split("\n") if line and not line.startswith(":")]
            if not lines:
                continue
            fields = dict(line.split(": ", 1) for line in lines)
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
        return events

    def comments(self) -> List[str]:
        return [line for line in bytes(self.data).decode("utf-8").split("\n") if line.startswith(":")]


def hub(**kwargs: Any) -> tuple:
    clock = Clock()
    clock.advance(NOW)
    return clock, EventHub(clock, **kwargs)


def deployed(events: EventHub, name: str = "echo", version: int = 1) -> Any:
    return events.publish("agent.deployed", agent=name, node="n1", version=version)


class PublishTests(SynchronousTestCase):
    """
    Events get increasing ids, an RFC 3339 time, their fields, and one SSE
    frame.
    """

    def test_ids_time_fields(self) -> None:
        """
        Ids count from 1; the time is the clock's, in UTC with milliseconds;
        fields that are None are left out; the JSON has id, type, time and
        the fields.
        """
        clock, events = hub()
        first = deployed(events)
        clock.advance(1.5)
        second = events.publish("agent.failed", agent="echo", node="n1", version=1, reason="5 traps")
        third = events.publish("agent.stopped", agent="echo", node="n1", version=1, reason=None)
        self.assertEqual((first.id, second.id, third.id), (1, 2, 3))
        self.assertEqual(first.time, "2026-01-01T00:00:00.000Z")
        self.assertEqual(second.time, "2026-01-01T00:00:01.500Z")
        self.assertEqual(
            second.as_json(),
            {"id": 2, "type": "agent.failed", "time": "2026-01-01T00:00:01.500Z",
             "agent": "echo", "node": "n1", "version": 1, "reason": "5 traps"},
        )
        self.assertNotIn("reason", third.as_json())
        self.assertEqual(events.last_id, 3)

    def test_frame(self) -> None:
        """
        The frame is C{id:}, C{event:} and one C{data:} line of JSON, then a
        blank line; newlines in values stay escaped inside the JSON.
        """
        _, events = hub()
        event = events.publish("agent.failed", agent="a", node="n1", version=2, reason="line 1\nline 2")
        id_line, event_line, data_line, blank, end = event.frame.decode("utf-8").split("\n")
        self.assertEqual((id_line, event_line, blank, end), ("id: 1", "event: agent.failed", "", ""))
        self.assertTrue(data_line.startswith("data: "))
        self.assertEqual(json.loads(data_line[len("data: "):]), event.as_json())

    def test_unknown(self) -> None:
        """
        A kind not in KINDS, or a field the kind does not carry, is a bug in
        the caller: ValueError, and no id is used up.
        """
        _, events = hub()
        self.assertRaises(ValueError, events.publish, "agent.exploded", agent="a")
        self.assertRaises(ValueError, events.publish, "member.joined", member="n2", agent="a")
        self.assertEqual(deployed(events).id, 1)

    def test_rfc3339(self) -> None:
        """
        Times are UTC with a Z.
        """
        self.assertEqual(rfc3339(0.25), "1970-01-01T00:00:00.250Z")

    def test_ring_bounded(self) -> None:
        """
        The ring keeps the newest C{capacity} events.
        """
        _, events = hub(capacity=3)
        for i in range(5):
            deployed(events, f"a{i}")
        self.assertEqual(len(events), 3)
        self.assertEqual([e.id for e in events.events()], [3, 4, 5])
        self.assertEqual([e.id for e in events.events(after=4)], [5])


class ParseTypesTests(SynchronousTestCase):
    """
    The C{?types=} filter.
    """

    def test_kinds(self) -> None:
        """
        Kinds are comma-separated; C{agent.*} stands for every agent kind.
        """
        self.assertIsNone(parse_types(None))
        self.assertIsNone(parse_types(" "))
        self.assertEqual(parse_types("agent.deployed, member.failed"), {"agent.deployed", "member.failed"})
        self.assertEqual(parse_types("member.*"), {k for k in KINDS if k.startswith("member.")})

    def test_unknown(self) -> None:
        """
        An unknown kind is refused, naming the known ones.
        """
        with self.assertRaises(InvalidRequest) as caught:
            parse_types("agent.deployed,agent.exploded")
        self.assertIn("agent.exploded", str(caught.exception))
        self.assertIn("member.left", str(caught.exception))
        self.assertRaises(InvalidRequest, parse_types, "nothing.*")


class SubscriptionTests(SynchronousTestCase):
    """
    Subscribers get what they are owed from the ring, then new events.
    """

    def subscribe(self, events: EventHub, after: Any = None, types: Any = None) -> tuple:
        consumer = FakeConsumer()
        subscription = events.subscribe(consumer, after, types)
        verifyObject(IPushProducer, subscription)
        subscription.start()
        return consumer, subscription

    def test_new_only(self) -> None:
        """
        Without a last id, a subscriber gets a C{: connected} comment and
        then only events published from now on.
        """
        _, events = hub()
        deployed(events, "old")
        consumer, _ = self.subscribe(events)
        self.assertEqual(consumer.frames(), [])
        self.assertEqual(consumer.comments(), [": connected"])
        deployed(events, "new")
        self.assertEqual([(f["id"], f["data"]["agent"]) for f in consumer.frames()], [(2, "new")])

    def test_resume(self) -> None:
        """
        With a last id, the ring's later events come first, in order, then
        new ones; nothing twice.
        """
        _, events = hub()
        for name in ("a", "b", "c"):
            deployed(events, name)
        consumer, _ = self.subscribe(events, after=1)
        deployed(events, "d")
        self.assertEqual([f["id"] for f in consumer.frames()], [2, 3, 4])

    def test_resume_gap(self) -> None:
        """
        When events the subscriber has not seen were pushed out of the
        ring, a comment says which, before the ones still kept.
        """
        _, events = hub(capacity=2)
        for name in ("a", "b", "c", "d"):
            deployed(events, name)
        consumer, _ = self.subscribe(events, after=0)
        self.assertEqual([f["id"] for f in consumer.frames()], [3, 4])
        self.assertIn(": events 1 to 2 are no longer kept", consumer.comments())

    def test_resume_after_restart(self) -> None:
        """
        A last id above the newest means the node restarted (ids start
        again): everything the ring holds is sent.
        """
        _, events = hub()
        deployed(events, "a")
        deployed(events, "b")
        consumer, _ = self.subscribe(events, after=500)
        self.assertEqual([f["id"] for f in consumer.frames()], [1, 2])

    def test_filter(self) -> None:
        """
        A subscriber with types gets only those kinds, from the ring and
        live.
        """
        _, events = hub()
        deployed(events, "a")
        events.publish("agent.removed", agent="a", node="n1", version=1)
        consumer, _ = self.subscribe(events, after=0, types=frozenset({"agent.removed", "member.failed"}))
        events.publish("member.failed", member="n2", address="10.0.0.2:7946", incarnation=4)
        deployed(events, "b")
        self.assertEqual([f["event"] for f in consumer.frames()], ["agent.removed", "member.failed"])
        self.assertEqual(consumer.frames()[1]["data"]["incarnation"], 4)

    def test_keepalive(self) -> None:
        """
        Every C{keepalive} seconds each subscriber gets a comment; the timer
        runs only while someone subscribes.
        """
        clock, events = hub(keepalive=15.0)
        self.assertEqual(clock.getDelayedCalls(), [])
        consumer, subscription = self.subscribe(events)
        clock.advance(14.9)
        self.assertNotIn(KEEPALIVE, bytes(consumer.data))
        clock.advance(0.1)
        self.assertEqual(bytes(consumer.data).count(KEEPALIVE), 1)
        clock.advance(15)
        self.assertEqual(bytes(consumer.data).count(KEEPALIVE), 2)
        subscription.stopProducing()
        self.assertEqual(events.subscribers, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_paused(self) -> None:
        """
        While paused (the connection's send buffer is full) events queue;
        resuming sends them in order.
        """
        _, events = hub()
        consumer, subscription = self.subscribe(events)
        subscription.pauseProducing()
        deployed(events, "a")
        deployed(events, "b")
        self.assertEqual(consumer.frames(), [])
        self.assertGreater(subscription.pending_bytes, 0)
        subscription.resumeProducing()
        self.assertEqual([f["data"]["agent"] for f in consumer.frames()], ["a", "b"])
        self.assertEqual(subscription.pending_bytes, 0)

    def test_overflow(self) -> None:
        """
        A subscriber more than C{max_pending} bytes behind is dropped: its
        connection aborted, its queue freed, its C{done} fired with
        C{overflow}; the others carry on.
        """
        _, events = hub(max_pending=1000)
        slow, subscription = self.subscribe(events)
        fast, _ = self.subscribe(events)
        ended: List[str] = []
        subscription.done.addCallback(ended.append)
        subscription.pauseProducing()
        for i in range(4):
            deployed(events, f"agent-{i:03d}")
        self.assertEqual((slow.aborted, ended), (0, []))
        for i in range(4, 20):
            deployed(events, f"agent-{i:03d}")
        self.assertEqual((slow.aborted, ended), (1, ["overflow"]))
        self.assertEqual((subscription.pending_bytes, events.subscribers, events.dropped), (0, 1, 1))
        subscription.resumeProducing()
        self.assertEqual(slow.frames(), [])
        self.assertEqual(len(fast.frames()), 20)

    def test_max_subscribers(self) -> None:
        """
        Past C{max_subscribers} open streams a new one is refused; one that
        ends frees its place.
        """
        _, events = hub(max_subscribers=2)
        _, first = self.subscribe(events)
        self.subscribe(events)
        with self.assertRaises(TooManySubscribers) as caught:
            events.subscribe(FakeConsumer())
        self.assertEqual((caught.exception.status, caught.exception.code), (429, "RATE_LIMITED"))
        first.stopProducing()
        self.subscribe(events)

    def test_cancel(self) -> None:
        """
        Cancelling C{done} (the client went away) ends the subscription
        without firing it with a reason.
        """
        _, events = hub()
        consumer, subscription = self.subscribe(events)
        subscription.done.cancel()
        self.failureResultOf(subscription.done)
        self.assertTrue(subscription.closed)
        self.assertEqual(events.subscribers, 0)
        deployed(events)
        self.assertEqual(consumer.frames(), [])

    def test_close(self) -> None:
        """
        Closing the hub (the node stops) ends every subscription with
        C{closed} and refuses new ones.
        """
        clock, events = hub()
        _, subscription = self.subscribe(events)
        events.close()
        self.assertEqual(self.successResultOf(subscription.done), "closed")
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertRaises(NotAccepting, events.subscribe, FakeConsumer())


def echo() -> bytes:
    return wat_module(example("wat", "echo.wat"))


class AgentEventsTests(LocalNodeTestCase):
    """
    The agent manager's changes become agent events.
    """

    overrides = {"agents__max_traps": 1}

    def setUp(self) -> None:
        super().setUp()
        self.hub = EventHub(self.node.clock)
        self.source = AgentEvents(self.hub, "test-node")

    def settle(self, coroutine: Any) -> Any:
        d = Deferred.fromCoroutine(coroutine)
        self.node.pump()
        return self.successResultOf(d)

    def kinds(self) -> List[tuple]:
        return [(e.type, e.fields["agent"], e.fields["version"]) for e in self.hub.events()]

    def test_lifecycle(self) -> None:
        """
        Deploy, stop, start, update and remove each publish their event,
        with the agent, this node and the version.
        """
        self.source.attach(self.agents)
        self.deploy("echo", echo())
        self.settle(self.agents.stop("echo"))
        self.settle(self.agents.stop("echo"))
        self.settle(self.agents.start("echo"))
        self.settle(self.agents.update("echo", echo(), None))
        self.settle(self.agents.remove("echo"))
        self.assertEqual(
            self.kinds(),
            [
                ("agent.deployed", "echo", 1),
                ("agent.stopped", "echo", 1),
                ("agent.started", "echo", 1),
                ("agent.updated", "echo", 2),
                ("agent.removed", "echo", 2),
            ],
        )
        self.assertEqual({e.fields["node"] for e in self.hub.events()}, {"test-node"})

    def test_failed(self) -> None:
        """
        An agent that traps past the node's limit publishes
        C{agent.failed} with the reason.
        """
        self.source.attach(self.agents)
        self.deploy("trap", wat_module(testing_agent("trap.wat")))
        self.send(performative="request", receiver=("trap",), content={})
        failed = [e for e in self.hub.events() if e.type == "agent.failed"]
        self.assertEqual(len(failed), 1)
        self.assertIn("traps", failed[0].fields["reason"])

    def test_attach_takes_hosted_as_known(self) -> None:
        """
        Agents already hosted when it attaches (restored at start) are no
        events; changes to them afterwards are.
        """
        self.deploy("echo", echo())
        self.source.attach(self.agents)
        self.assertEqual(self.kinds(), [])
        self.settle(self.agents.stop("echo"))
        self.assertEqual(self.kinds(), [("agent.stopped", "echo", 1)])

    def test_detach(self) -> None:
        """
        Detached, it hears nothing more.
        """
        self.source.attach(self.agents)
        self.source.detach()
        self.deploy("echo", echo())
        self.assertEqual(self.kinds(), [])

    def test_service(self) -> None:
        """
        The observability service attaches the source when it opens, and
        at close detaches it and ends the event streams.
        """
        service = ObservabilityService(self.hub, self.source, self.agents)
        self.successResultOf(Deferred.fromCoroutine(service.open()))
        self.deploy("echo", echo())
        subscription = self.hub.subscribe(FakeConsumer())
        self.successResultOf(Deferred.fromCoroutine(service.close()))
        self.assertEqual(self.successResultOf(subscription.done), "closed")
        self.assertEqual(self.kinds(), [("agent.deployed", "echo", 1)])
        self.assertNotIn(self.source.changed, self.agents.observers)


class MembershipEventsTests(SynchronousTestCase):
    """
    SWIM membership changes become member events.
    """

    def test_listener(self) -> None:
        """
        Each listener call but C{member_updated} publishes its kind, with
        the member's id, address and incarnation.
        """
        _, events = hub()
        listener = MembershipEvents(events)
        verifyObject(IMembershipListener, listener)
        member = Member("n2", Address("10.0.0.2", 7946), b"", 7, State.ALIVE, NOW)
        listener.member_joined(member)
        listener.member_updated(member)
        listener.member_suspected(member)
        listener.member_alive(member)
        listener.member_failed(member)
        listener.member_left(member)
        self.assertEqual(
            [e.type for e in events.events()],
            ["member.joined", "member.suspected", "member.alive", "member.failed", "member.left"],
        )
        self.assertEqual(
            events.events()[0].as_json(),
            {"id": 1, "type": "member.joined", "time": "2026-01-01T00:00:00.000Z",
             "member": "n2", "address": "10.0.0.2:7946", "incarnation": 7},
        )
