# -*- test-case-name: tests.test_observability_events -*-
"""
The node's event stream (SPEC 6 C{GET /api/v1/events}): agents deployed,
updated, started, stopped, failed and removed; members joined, suspected,
alive again, failed and left.

L{EventHub} numbers each event, keeps the newest in a bounded ring (so a
client that reconnects with C{Last-Event-ID} misses nothing the ring still
holds) and hands it to every L{Subscription}.  A subscription is a push
producer for its consumer (the HTTP response): while the connection's send
buffer is full it queues events, up to a byte cap; a subscriber that falls
further behind is dropped and its connection aborted, so a slow client
costs the node a bounded amount of memory.  The client reconnects and
resumes from the ring.

L{AgentEvents} turns the agent manager's change notifications into agent
events; L{MembershipEvents} is an L{IMembershipListener} that turns SWIM
membership changes into member events.  Neither knows about HTTP.

Sans-I/O apart from time: the hub takes a clock (C{seconds}, C{callLater})
for event times and the keep-alive timer.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from datetime import datetime, timezone
from typing import Any, Deque, Dict, FrozenSet, Iterable, List, Optional, Tuple

import attr
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface, implementer

from caxton.errors import CaxtonError, InvalidRequest, NotAccepting
from caxton.swim.interfaces import IMembershipListener

log = Logger()

#: Every kind of event, with the fields it carries besides C{id}, C{type}
#: and C{time}.
KINDS: Dict[str, Tuple[str, ...]] = {
    "agent.deployed": ("agent", "node", "version"),
    "agent.updated": ("agent", "node", "version"),
    "agent.started": ("agent", "node", "version"),
    "agent.stopped": ("agent", "node", "version"),
    "agent.failed": ("agent", "node", "version", "reason"),
    "agent.removed": ("agent", "node", "version"),
    "member.joined": ("member", "address", "incarnation"),
    "member.suspected": ("member", "address", "incarnation"),
    "member.alive": ("member", "address", "incarnation"),
    "member.failed": ("member", "address", "incarnation"),
    "member.left": ("member", "address", "incarnation"),
}

#: The comment sent every keep-alive interval.
KEEPALIVE = b": keepalive\n\n"


class TooManySubscribers(CaxtonError):
    """
    The node already serves C{events.max_subscribers} event streams.
    """

    code = "RATE_LIMITED"
    status = 429


def parse_types(raw: Optional[str]) -> Optional[FrozenSet[str]]:
    """
    The event kinds a C{?types=} filter asks for: a comma-separated list of
    kinds, where C{agent.*} and C{member.*} stand for every kind of that
    group; C{None} (every kind) when there is no filter.

    @raise InvalidRequest: naming an unknown kind.
    """
    if raw is None or not raw.strip():
        return None
    kinds = set()
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if item.endswith(".*") and any(kind.startswith(item[:-1]) for kind in KINDS):
            kinds.update(kind for kind in KINDS if kind.startswith(item[:-1]))
        elif item in KINDS:
            kinds.add(item)
        else:
            raise InvalidRequest(
                f"types: unknown event type {item!r} (known: {', '.join(sorted(KINDS))}, agent.*, member.*)"
            )
    return frozenset(kinds)


def rfc3339(seconds: float) -> str:
    """
    A Unix time as RFC 3339 in UTC with milliseconds: C{2026-05-01T12:00:00.123Z}.
    """
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Event:
    """
    One event, as stored in the ring.

    @ivar id: its number, increasing from 1 for the life of the process.
    @ivar type: its kind (a key of L{KINDS}).
    @ivar time: when it happened, RFC 3339 in UTC.
    @ivar fields: the kind's fields that are known.
    @ivar frame: the event as one server-sent events frame, encoded once
        for every subscriber.
    """

    id: int
    type: str
    time: str
    fields: Dict[str, Any] = attr.ib(eq=False)
    frame: bytes = attr.ib(eq=False, repr=False)

    def as_json(self) -> Dict[str, Any]:
        """
        The event's JSON object: C{id}, C{type}, C{time} and its fields.
        """
        return {"id": self.id, "type": self.type, "time": self.time, **self.fields}


def _frame(event_id: int, kind: str, data: Dict[str, Any]) -> bytes:
    # json.dumps escapes newlines, so the data is one line.
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event_id}\nevent: {kind}\ndata: {text}\n\n".encode("utf-8")


class IEventConsumer(Interface):
    """
    Where a subscription's bytes go: the response of one event stream.
    """

    def write(data: bytes) -> None:
        """
        Send C{data}: whole frames or comments.
        """

    def abort() -> None:
        """
        Drop the connection at once: the subscriber fell too far behind,
        and what is queued for it will not be sent.
        """


@implementer(IPushProducer)
class Subscription:
    """
    One client's place in the stream.  Its consumer registers it as a push
    producer, so it pauses while the connection's send buffer is full and
    resumes when it drains; meanwhile it keeps what it would have sent, up
    to L{EventHub.max_pending} bytes.

    @ivar done: fires with the reason (C{"closed"}: the node stops;
        C{"overflow"}: too far behind) when the subscription ends on the
        node's side; cancelling it ends the subscription quietly (the
        client went away).
    """

    def __init__(self, hub: "EventHub", consumer: IEventConsumer, after: int, types: Optional[FrozenSet[str]]) -> None:
        self._hub = hub
        self._consumer = consumer
        self._after = after
        self._types = types
        self._started = False
        self._paused = False
        self._pending: Deque[bytes] = deque()
        self._pending_bytes = 0
        self.closed = False
        self.done: Deferred = Deferred(lambda d: self._end(None))

    @property
    def pending_bytes(self) -> int:
        """
        Bytes waiting for the connection to drain.
        """
        return self._pending_bytes

    def start(self) -> None:
        """
        Send what the ring holds after the subscriber's last seen id, then
        follow the stream.
        """
        if self._started or self.closed:
            return
        self._started = True
        self.send(b": connected\n\n")
        for item in self._hub._replay(self._after, self):
            if self.closed:
                return
            if isinstance(item, bytes):
                self.send(item)
            else:
                self.offer(item)

    def offer(self, event: Event) -> None:
        """
        Send C{event} if it passes the filter.
        """
        if not self._started or self.closed:
            return
        if self._types is not None and event.type not in self._types:
            return
        self.send(event.frame)

    def send(self, data: bytes) -> None:
        """
        Write C{data} now, or queue it while paused; past the cap, drop the
        subscriber.
        """
        if self.closed:
            return
        if not self._paused:
            self._consumer.write(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > self._hub.max_pending:
            log.warn(
                "event stream subscriber dropped: {pending} bytes behind (events.max_pending is {limit})",
                pending=self._pending_bytes,
                limit=self._hub.max_pending,
            )
            self._hub.dropped += 1
            self._consumer.abort()
            self._end("overflow")

    # IPushProducer -----------------------------------------------------------

    def pauseProducing(self) -> None:
        """
        The connection's send buffer is full: queue from now on.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The send buffer drained: send what was queued, then carry on.
        """
        self._paused = False
        while self._pending and not self._paused and not self.closed:
            data = self._pending.popleft()
            self._pending_bytes -= len(data)
            self._consumer.write(data)

    def stopProducing(self) -> None:
        """
        The connection is going away.
        """
        self._end(None)

    # Ending ---------------------------------------------------------------------

    def close(self) -> None:
        """
        End the subscription from the node's side (the node stops):
        L{done} fires with C{"closed"}.
        """
        self._end("closed")

    def _end(self, reason: Optional[str]) -> None:
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self._pending_bytes = 0
        self._hub._forget(self)
        if reason is not None and not self.done.called:
            self.done.callback(reason)


class EventHub:
    """
    Numbers, keeps and fans out the node's events.

    @param clock: C{seconds} for event times, C{callLater} for keep-alives.
    @param capacity: how many of the newest events the ring keeps.
    @param max_subscribers: most event streams served at once.
    @param max_pending: bytes a paused subscriber may fall behind before it
        is dropped.
    @param keepalive: seconds between two keep-alive comments.

    @ivar dropped: subscribers dropped for falling behind.
    """

    def __init__(
        self,
        clock: Any,
        capacity: int = 1000,
        max_subscribers: int = 64,
        max_pending: int = 1024 * 1024,
        keepalive: float = 15.0,
    ) -> None:
        self._clock = clock
        self._ring: Deque[Event] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self.last_id = 0
        self.max_subscribers = max_subscribers
        self.max_pending = max_pending
        self.keepalive = keepalive
        self._subscriptions: List[Subscription] = []
        self._keepalive = LoopingCall(self._ping)
        self._keepalive.clock = clock
        self.dropped = 0
        self.closed = False

    def __len__(self) -> int:
        """
        How many events the ring holds.
        """
        return len(self._ring)

    @property
    def subscribers(self) -> int:
        """
        How many event streams are open.
        """
        return len(self._subscriptions)

    def publish(self, kind: str, **fields: Any) -> Event:
        """
        Record an event of C{kind} and send it to every subscriber.
        Fields that are C{None} are left out (and may be any name).

        @raise ValueError: for a kind not in L{KINDS} or a field it does
            not carry (a bug in the caller).
        """
        allowed = KINDS.get(kind)
        if allowed is None:
            raise ValueError(f"unknown event kind {kind!r}")
        unknown = {name for name, value in fields.items() if value is not None} - set(allowed)
        if unknown:
            raise ValueError(f"{kind} has no field(s) {', '.join(sorted(unknown))}")
        event_id = next(self._ids)
        self.last_id = event_id
        kept = {name: fields[name] for name in allowed if fields.get(name) is not None}
        time = rfc3339(self._clock.seconds())
        data = {"id": event_id, "type": kind, "time": time, **kept}
        event = Event(event_id, kind, time, kept, _frame(event_id, kind, data))
        self._ring.append(event)
        for subscription in list(self._subscriptions):
            subscription.offer(event)
        return event

    def events(self, after: int = 0, types: Optional[FrozenSet[str]] = None) -> List[Event]:
        """
        The events the ring holds with an id above C{after}, oldest first.
        """
        return [e for e in self._ring if e.id > after and (types is None or e.type in types)]

    def subscribe(
        self, consumer: IEventConsumer, after: Optional[int] = None, types: Optional[FrozenSet[str]] = None
    ) -> Subscription:
        """
        A new subscription for C{consumer}, not yet started: register it as
        the consumer's producer, then call its C{start}.

        @param after: the last event id the subscriber saw (C{Last-Event-ID});
            C{None} for new events only.  An id above the newest means the
            node restarted since (ids start again at 1): everything the
            ring holds is sent.
        @raise TooManySubscribers: when L{max_subscribers} streams are open.
        @raise NotAccepting: once the hub is closed (the node stops).
        """
        if self.closed:
            raise NotAccepting("the node is shutting down")
        if len(self._subscriptions) >= self.max_subscribers:
            raise TooManySubscribers(
                f"this node already serves {self.max_subscribers} event streams (events.max_subscribers)"
            )
        if after is None:
            after = self.last_id
        elif after > self.last_id:
            after = 0
        subscription = Subscription(self, consumer, after, types)
        self._subscriptions.append(subscription)
        if not self._keepalive.running:
            self._keepalive.start(self.keepalive, now=False)
        return subscription

    def _replay(self, after: int, subscription: Subscription) -> Iterable[Any]:
        """
        What a starting subscription is owed: a comment when events it has
        not seen were already pushed out of the ring, then those the ring
        still holds.
        """
        items: List[Any] = []
        if self._ring and after < self._ring[0].id - 1:
            items.append(
                f": events {after + 1} to {self._ring[0].id - 1} are no longer kept\n\n".encode("ascii")
            )
        items.extend(e for e in self._ring if e.id > after)
        return items

    def _forget(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        if not self._subscriptions and self._keepalive.running:
            self._keepalive.stop()

    def _ping(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.send(KEEPALIVE)

    def close(self) -> None:
        """
        End every subscription (the node stops) and take no new ones.
        """
        self.closed = True
        for subscription in list(self._subscriptions):
            subscription.close()
        if self._keepalive.running:
            self._keepalive.stop()


class AgentEvents:
    """
    Agent events from the agent manager's change notifications
    (C{AgentManager.observers}): told C{(name, cell)} whenever an agent is
    added or its record changes, C{(name, None)} when it is removed, it
    compares the agent's version and state with what it saw last.

    Attach it once the manager has loaded the agents it keeps (L{attach}
    takes them as already known): restoring them at start is no event,
    except for an agent that comes back C{failed}.

    @param hub: where events go.
    @param node_id: this node's id, the C{node} field.
    """

    def __init__(self, hub: EventHub, node_id: str) -> None:
        self._hub = hub
        self._node_id = node_id
        self._known: Dict[str, Tuple[int, str]] = {}
        self._agents: Any = None

    def attach(self, agents: Any) -> None:
        """
        Take C{agents}' hosted agents as known and follow their changes.
        """
        self._agents = agents
        for cell in agents:
            self._known[cell.name] = (cell.version, cell.status)
            if cell.status == "failed":
                self._publish("agent.failed", cell)
        if self.changed not in agents.observers:
            agents.observers.append(self.changed)

    def detach(self) -> None:
        """
        Stop following the manager.
        """
        if self._agents is not None and self.changed in self._agents.observers:
            self._agents.observers.remove(self.changed)
        self._agents = None

    def changed(self, name: str, cell: Any) -> None:
        """
        The manager's notification: publish what changed, if anything.
        """
        before = self._known.get(name)
        if cell is None:
            if before is not None:
                del self._known[name]
                self._hub.publish("agent.removed", agent=name, node=self._node_id, version=before[0])
            return
        version, status = cell.version, cell.status
        self._known[name] = (version, status)
        if before is None:
            self._publish("agent.deployed", cell)
            if status == "failed":
                self._publish("agent.failed", cell)
            return
        if version != before[0]:
            self._publish("agent.updated", cell)
            if status == "failed":
                self._publish("agent.failed", cell)
            return
        if status == before[1]:
            return
        kind = {"running": "agent.started", "stopped": "agent.stopped", "failed": "agent.failed"}.get(status)
        if kind is not None:
            self._publish(kind, cell)

    def _publish(self, kind: str, cell: Any) -> None:
        reason = cell.reason if kind == "agent.failed" else None
        self._hub.publish(kind, agent=cell.name, node=self._node_id, version=cell.version, reason=reason)


@implementer(IMembershipListener)
class MembershipEvents:
    """
    Member events from SWIM: an L{IMembershipListener} for the cluster's
    membership (C{ClusterService.listeners}).
    """

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub

    def _publish(self, kind: str, member: Any) -> None:
        self._hub.publish(kind, member=member.node, address=str(member.addr), incarnation=member.incarnation)

    def member_joined(self, member: Any) -> None:
        self._publish("member.joined", member)

    def member_updated(self, member: Any) -> None:
        # A new address or metadata: no event of its own.
        pass

    def member_suspected(self, member: Any) -> None:
        self._publish("member.suspected", member)

    def member_alive(self, member: Any) -> None:
        self._publish("member.alive", member)

    def member_failed(self, member: Any) -> None:
        self._publish("member.failed", member)

    def member_left(self, member: Any) -> None:
        self._publish("member.left", member)
