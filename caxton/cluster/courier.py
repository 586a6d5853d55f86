# -*- test-case-name: tests.test_courier -*-
"""
Messages between nodes (SPEC 4.2, 5.2-5.4): the outbox, batches,
acknowledgements and de-duplication.

The router hands the courier every message bound for an agent (or an API
client) on another node.  From there:

  - B{Outbox.}  The message gets a place in the queue for its node: the
    courier's run (C{epoch}, the node's start time in milliseconds, kept
    increasing across restarts) and a sequence number per destination.  It
    is written to the outbox table in the store's next batch, and only
    sent once that batch is committed, so a message that left this node
    is one a restart would send again.  The queue per node is bounded
    (C{cluster.max_queue}): past it the sender hears C{QUEUE_FULL}.
  - B{Batches.}  Committed messages leave in FORWARD frames of up to
    L{FRAME_MESSAGES} messages (or L{FRAME_BYTES}), at most C{window}
    unacknowledged per node, over the node stream (mutual TLS, one
    connection per pair; frames of one reactor turn leave in one write).
  - B{Acknowledgements.}  The receiving node takes a frame's messages in
    (into its delivery journal, with its record of the sender's last
    sequence number, in one transaction) and, once that is committed,
    acknowledges the highest sequence number: cumulative, so one ACK
    covers every frame before it.  Acknowledged messages leave the outbox.
  - B{Resending.}  A lost connection, or no acknowledgement within
    C{ack_timeout}, sends every unacknowledged message again, in order;
    so does a restart, from the outbox table.  The receiver knows, per
    sender run, the last sequence number it took in, and drops anything
    at or below it: a message's place in its sender's queue stands for its
    C{message_id}, so each is handled once however often it is sent.
  - B{Order.}  One queue per destination, sent in order over one
    connection, resent from the oldest: messages from one sender to one
    receiver arrive in the order they were sent (SPEC 4.2).
  - B{Unreachable nodes.}  Messages wait while the node is suspect, dead
    or cut off, and go out when it is back; a message whose C{reply_by}
    or C{cluster.queue_ttl} passes first is answered with a C{failure}
    C{UNREACHABLE} (and a dead letter), so nothing waits for ever.

Names that no registry entry knows are asked of the reachable members
(LOOKUP requests) before the router answers C{AGENT_NOT_FOUND}.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from typing import Any, Deque, Dict, List, Optional, Tuple

import attr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from caxton.acl.message import ACLMessage, InvalidMessage, parse_message
from caxton.cluster.interfaces import IRemoteRoutes
from caxton.cluster.registry import winner
from caxton.cluster.stream import Kind, StreamError
from caxton.errors import CaxtonError, QueueFull
from caxton.swim.messages import State

log = Logger()

#: Most messages in one FORWARD frame.
FRAME_MESSAGES = 256

#: A FORWARD frame stops growing past this many bytes of messages.
FRAME_BYTES = 1024 * 1024

#: The largest message that can travel to another node.
MAX_MESSAGE = 8 * 1024 * 1024

#: How often waiting messages are checked for their deadline.
SWEEP_INTERVAL = 1.0

#: Back-off between attempts to reach a node, first and largest.
RETRY_INITIAL = 0.2
RETRY_MAX = 10.0

#: API clients remembered with the node they came through.
CLIENT_HOMES = 100_000

#: Names being looked up at once; more fail at once.
MAX_LOOKUPS = 1024


class TooLarge(CaxtonError):
    """
    A message too large to send to another node.
    """

    code = "TOO_LARGE"
    status = 413


@attr.s(slots=True, auto_attribs=True)
class _Out:
    """
    One message in the queue for a node.
    """

    epoch: int
    seq: int
    receiver: str
    raw: bytes
    expires_at: float
    message: Optional[ACLMessage] = None
    committed: bool = False


@attr.s(slots=True, auto_attribs=True)
class _Peer:
    """
    The queue for one node, and how sending to it goes.

    @ivar entries: every message not yet acknowledged, oldest first.
    @ivar sent: how many of them, from the front, are on the wire now.
    """

    node: str
    entries: Deque[_Out] = attr.ib(factory=deque)
    sent: int = 0
    next_seq: int = 1
    sending: bool = False
    high_sent: Tuple[int, int] = (0, 0)
    retry: Any = None
    backoff: float = RETRY_INITIAL
    ack_timer: Any = None


def _forward_frame(epoch: int, batch: List[_Out]) -> bytes:
    """
    A FORWARD payload: the run and C{[seq, receiver, message]} per message,
    the messages spliced in as the JSON they already are.
    """
    parts = [
        b"[%d,%s,%s]" % (out.seq, json.dumps(out.receiver).encode("utf-8"), out.raw)
        for out in batch
    ]
    return b'{"e":%d,"m":[%s]}' % (epoch, b",".join(parts))


def _read_frame(payload: bytes) -> Tuple[int, List[Tuple[int, str, Dict[str, Any]]]]:
    """
    Read a FORWARD payload.

    @raise ValueError: when it is malformed.
    """
    frame = json.loads(payload)
    if not isinstance(frame, dict):
        raise ValueError("a FORWARD frame is an object")
    epoch, messages = frame.get("e"), frame.get("m")
    if not _in_range(epoch) or not isinstance(messages, list):
        raise ValueError("a FORWARD frame has an epoch and messages")
    read = []
    for item in messages:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not _in_range(item[0])
            or not isinstance(item[1], str)
            or not isinstance(item[2], dict)
        ):
            raise ValueError("a forwarded message is [seq, receiver, message]")
        read.append((item[0], item[1], item[2]))
    return epoch, read


#: Epochs and sequence numbers peers may send: positive and well inside
#: SQLite's 64-bit integers.
_MAX_NUMBER = 2**62


def _in_range(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < _MAX_NUMBER


@implementer(IRemoteRoutes)
class Courier(Service):
    """
    This node's messages to and from other nodes.

    A child of the node's root service of its own, started before the
    agents: L{open} reads the outbox, what peers sent and which node each
    API client came through, so messages the delivery journal hands back
    at start find their way.  Sending starts when the cluster is up
    (L{start_sending}).

    @param reactor: timers and C{seconds()}.
    @param cluster: the cluster service: its C{node_id}, and its current
        C{registry}, C{membership} and C{streams} (made when it opens, and
        again when it rejoins after a leave).
    @param store: the node's store (outbox, intake records, C{sync}).
    @param router: the node's router (C{arrived}, C{delivery_failed}).
    @param agents: the node's agents (for LOOKUP answers).
    @param queue_ttl: seconds a message may wait for its node.
    @param max_queue: messages that may wait per node.
    @param window: messages on the wire, unacknowledged, per node.
    @param ack_timeout: seconds without an acknowledgement before the
        unacknowledged messages are sent again.
    @param lookup_timeout: seconds to wait for members to answer a LOOKUP.
    """

    def __init__(
        self,
        reactor: Any,
        cluster: Any,
        store: Any,
        router: Any,
        agents: Any,
        queue_ttl: float = 3600.0,
        max_queue: int = 10_000,
        window: int = 1024,
        ack_timeout: float = 5.0,
        lookup_timeout: float = 1.0,
    ) -> None:
        self._reactor = reactor
        self._cluster = cluster
        self._store = store
        self._router = router
        self._agents = agents
        self.queue_ttl = queue_ttl
        self.max_queue = max_queue
        self.window = window
        self.ack_timeout = ack_timeout
        self.lookup_timeout = lookup_timeout
        self.epoch = 0
        self.sending = False
        self._peers: Dict[str, _Peer] = {}
        self._uncommitted: List[Tuple[_Peer, _Out]] = []
        self._committing = False
        self._intake: Dict[Tuple[str, int], int] = {}
        self._clients: "OrderedDict[Tuple[str, Optional[str]], str]" = OrderedDict()
        self._asking: Dict[str, List[Deferred]] = {}
        self._shadowed: Dict[str, str] = {}
        self._sweep = LoopingCall(self._expire)
        self._sweep.clock = reactor
        self.counters: Dict[str, int] = {
            "forwarded": 0,
            "sent": 0,
            "resent": 0,
            "acked": 0,
            "received": 0,
            "duplicates": 0,
            "expired": 0,
            "queue_full": 0,
            "malformed": 0,
        }

    @property
    def node_id(self) -> str:
        return self._cluster.node_id

    name = "courier"

    # Start and stop -----------------------------------------------------------

    async def open(self) -> None:
        """
        Load the outbox, the intake records and the clients' nodes, and
        take a run number above every earlier one.
        """
        rows = await self._store.load_outbox()
        self._intake.update(await self._store.load_intake())
        for client, conversation_id, node in await self._store.load_client_homes(CLIENT_HOMES):
            self._clients[(client, conversation_id or None)] = node
        # Above this node's own earlier runs (peers' runs do not matter).
        earlier = max((row[1] for row in rows), default=0)
        self.epoch = max(int(self._reactor.seconds() * 1000), earlier + 1)
        kept: Dict[str, List[_Out]] = {}
        for node, epoch, seq, receiver, body, expires_at in rows:
            out = _Out(epoch, seq, receiver, body.encode("utf-8"), expires_at, committed=True)
            kept.setdefault(node, []).append(out)
        for node, outs in kept.items():
            peer = self._peer(node)
            # Kept messages go first, in the order they were queued.
            peer.entries.extendleft(reversed(outs))
        if rows:
            log.info(
                "{count} messages for {nodes} other nodes kept from the last run",
                count=len(rows),
                nodes=len(kept),
            )

    def start_sending(self) -> None:
        """
        The cluster is up: send what waits, and keep deadlines.
        """
        self.sending = True
        if not self._sweep.running:
            self._sweep.start(SWEEP_INTERVAL, now=False)
        for peer in list(self._peers.values()):
            self._pump(peer)

    def register(self, streams: Any) -> None:
        """
        Answer this courier's frames on C{streams} (made by the cluster when
        it binds).
        """
        streams.register_message_handler(Kind.FORWARD, self._forward_received)
        streams.register_message_handler(Kind.ACK, self._ack_received)
        streams.register_handler(Kind.LOOKUP, self._lookup_received)

    async def close(self) -> None:
        """
        Stop sending; what waits stays in the outbox for the next start.
        """
        self.stop_sending()

    def stop_sending(self) -> None:
        """
        The cluster is going down: stop sending and keeping deadlines.
        """
        self.sending = False
        if self._sweep.running:
            self._sweep.stop()
        for peer in self._peers.values():
            self._cancel(peer)
        for waiting in self._asking.values():
            for d in waiting:
                d.callback(None)
        self._asking.clear()

    # IRemoteRoutes --------------------------------------------------------------

    def locate(self, name: str) -> Optional[str]:
        if name in self._asking:
            # Behind a lookup in progress, so messages keep their order.
            return None
        registry = self._cluster.registry
        if registry is None:
            return None
        node = registry.home(name)
        if node == self.node_id:
            return None
        return node

    def shadowed(self, name: str) -> Optional[str]:
        return self._shadowed.get(name)

    def attach(self, registry: Any) -> None:
        """
        Follow C{registry} (the cluster makes a new one when it rejoins)
        for names that this node's agents share with another node's.
        """
        registry.observers.append(self._entry_changed)
        self._shadowed.clear()
        for cell in self._agents:
            self._check_name(registry, cell.name)

    def _entry_changed(self, entry: Any) -> None:
        if not entry.removed:
            self._follow(entry)
        if entry.node != self.node_id and (
            self._agents.get(entry.name) is not None or entry.name in self._shadowed
        ):
            self._check_name(self._cluster.registry, entry.name)

    def _follow(self, entry: Any) -> None:
        """
        Messages waiting for a dead node, for an agent that now runs
        elsewhere (relocated), go to its new home.
        """
        registry = self._cluster.registry
        for node, peer in list(self._peers.items()):
            if node == entry.node or registry is None or not registry.failed(node):
                continue
            moving = [out for out in list(peer.entries)[peer.sent :] if out.receiver == entry.name]
            if not moving:
                continue
            gone = {id(out) for out in moving}
            peer.entries = deque(out for out in peer.entries if id(out) not in gone)
            log.info(
                "{count} messages for {agent} follow it from {old} to {new}",
                count=len(moving),
                agent=entry.name,
                old=node,
                new=entry.node,
            )
            for out in moving:
                self._store.outbox_drop(node, out.epoch, out.seq)
                if entry.node == self.node_id:
                    self._router.redeliver(out.receiver, json.loads(out.raw))
                    continue
                message = out.message or parse_message(json.loads(out.raw))
                try:
                    self.forward(entry.node, out.receiver, message, out.raw)
                except CaxtonError as e:
                    self._router.delivery_failed(message, out.receiver, e.code, str(e))

    def members_changed(self) -> None:
        """
        A member failed, left or came back: names shared with it may be
        decided differently.
        """
        registry = self._cluster.registry
        if registry is not None:
            for name in list(self._shadowed):
                self._check_name(registry, name)
            # Messages waiting for a node now dead, for agents that already
            # run elsewhere (their new entry came before the death).
            for node, peer in list(self._peers.items()):
                if registry.failed(node):
                    for name in {out.receiver for out in peer.entries}:
                        for entry in registry.lookup(name):
                            self._follow(entry)

    def _check_name(self, registry: Any, name: str) -> None:
        live = registry.lookup(name)
        if len(live) > 1 and any(e.node == self.node_id for e in live):
            chosen = winner(live).node
            if chosen != self.node_id:
                if self._shadowed.get(name) != chosen:
                    log.warn(
                        "agent {agent} is also deployed on node {node}, whose agent wins "
                        "(the node id that sorts first): messages for {agent} go there; "
                        "remove one of them",
                        agent=name,
                        node=chosen,
                    )
                self._shadowed[name] = chosen
                return
        self._shadowed.pop(name, None)

    def offering(self, capability: str) -> List[Tuple[str, str]]:
        registry = self._cluster.registry
        if registry is None:
            return []
        return [
            (e.name, e.node)
            for e in registry.offering(capability)
            if e.node != self.node_id and e.status != "failed"
        ]

    def client_home(self, client: str, conversation_id: Optional[str]) -> Optional[str]:
        return self._clients.get((client, conversation_id))

    def forward(self, node: str, receiver: str, message: ACLMessage, body: bytes) -> None:
        if len(body) > MAX_MESSAGE:
            raise TooLarge(f"a message of {len(body)} bytes is larger than nodes exchange ({MAX_MESSAGE})")
        peer = self._peer(node)
        if len(peer.entries) >= self.max_queue:
            self.counters["queue_full"] += 1
            raise QueueFull(f"{len(peer.entries)} messages are waiting for node {node!r}")
        now = self._reactor.seconds()
        expires_at = now + self.queue_ttl
        if message.reply_by is not None:
            expires_at = min(expires_at, message.reply_by.timestamp())
        out = _Out(self.epoch, peer.next_seq, receiver, body, expires_at, message)
        peer.next_seq += 1
        peer.entries.append(out)
        self._store.outbox_add(node, out.epoch, out.seq, receiver, body.decode("utf-8"), expires_at)
        self.counters["forwarded"] += 1
        self._uncommitted.append((peer, out))
        if not self._committing:
            self._committing = True
            self._reactor.callLater(0, self._commit)

    def ask(self, name: str) -> Deferred:
        d: Deferred = Deferred()
        if name in self._asking:
            self._asking[name].append(d)
            return d
        membership, streams = self._cluster.membership, self._cluster.streams
        if not self.sending or membership is None or streams is None or len(self._asking) >= MAX_LOOKUPS:
            return succeed(None)
        peers = [
            m
            for m in membership.members()
            if m.node != self.node_id and _reachable(m)
        ]
        if not peers:
            return succeed(None)
        self._asking[name] = [d]
        payload = json.dumps({"n": name}).encode("utf-8")
        pending = {"left": len(peers)}

        def answered(result: bytes, node: str) -> None:
            try:
                here = json.loads(result).get("h") is True
            except (ValueError, AttributeError):
                here = False
            if here:
                self._answer(name, node)
            else:
                no()

        def no(_: Any = None) -> None:
            pending["left"] -= 1
            if pending["left"] == 0:
                self._answer(name, None)

        for member in peers:
            asked = streams.request(member.node, member.addr, Kind.LOOKUP, payload, self.lookup_timeout)
            asked.addCallbacks(answered, no, callbackArgs=(member.node,))
        return d

    def _answer(self, name: str, node: Optional[str]) -> None:
        for d in self._asking.pop(name, ()):
            d.callback(node)

    # Sending ----------------------------------------------------------------------

    def _peer(self, node: str) -> _Peer:
        peer = self._peers.get(node)
        if peer is None:
            peer = self._peers[node] = _Peer(node)
        return peer

    def _commit(self) -> None:
        """
        Once the store has written what was queued, it may leave.
        """
        batch, self._uncommitted = self._uncommitted, []
        self._committing = False
        if not batch:
            return
        d = self._store.sync()

        def written(_: Any) -> None:
            peers = {}
            for peer, out in batch:
                out.committed = True
                peers[peer.node] = peer
            for peer in peers.values():
                self._pump(peer)

        def not_written(failure: Failure) -> None:
            # The store is closing: the messages stay queued in memory and
            # fail or go out with what the next start reads.
            log.failure("could not write {count} outbound messages", failure, count=len(batch))

        d.addCallbacks(written, not_written)

    def _pump(self, peer: _Peer) -> None:
        """
        Send the next committed messages to C{peer}, a frame at a time,
        within the window.
        """
        if not self.sending or peer.retry is not None:
            return
        streams = self._cluster.streams
        addr = self._address(peer.node)
        if streams is None or addr is None:
            return
        entries = peer.entries
        while (
            not peer.sending
            and peer.retry is None
            and self.sending
            and peer.sent < min(len(entries), self.window)
        ):
            first = entries[peer.sent]
            if not first.committed:
                return
            batch: List[_Out] = []
            size = 0
            for i in range(peer.sent, min(len(entries), self.window)):
                out = entries[i]
                if len(batch) == FRAME_MESSAGES or not out.committed or out.epoch != first.epoch:
                    break
                if batch and size + len(out.raw) > FRAME_BYTES:
                    break
                batch.append(out)
                size += len(out.raw)
            last = batch[-1]
            resent = (first.epoch, first.seq) <= peer.high_sent
            self.counters["resent" if resent else "sent"] += len(batch)
            peer.high_sent = max(peer.high_sent, (last.epoch, last.seq))
            peer.sent += len(batch)
            peer.sending = True
            frame = _forward_frame(first.epoch, batch)
            d = streams.send(peer.node, addr, Kind.FORWARD, frame, timeout=self.ack_timeout)
            d.addCallbacks(self._handed, self._not_sent, callbackArgs=(peer,), errbackArgs=(peer,))

    def _handed(self, _: Any, peer: _Peer) -> None:
        """
        A frame is on the connection: wait for its acknowledgement, and
        send more (unless L{_pump} is still looping over this peer).
        """
        peer.sending = False
        if peer.ack_timer is None or not peer.ack_timer.active():
            peer.ack_timer = self._reactor.callLater(self.ack_timeout, self._ack_overdue, peer)
        self._reactor.callLater(0, self._pump, peer)

    def _not_sent(self, failure: Failure, peer: _Peer) -> None:
        peer.sending = False
        if not failure.check(StreamError):
            log.failure("sending to {node}", failure, node=peer.node)
        log.debug(
            "cannot send to {node} ({error}); {count} messages wait",
            node=peer.node,
            error=str(failure.value),
            count=len(peer.entries),
        )
        self._again(peer)

    def _again(self, peer: _Peer) -> None:
        """
        Send everything unacknowledged again, after a back-off.
        """
        peer.sent = 0
        self._cancel(peer)
        if not self.sending:
            return
        delay, peer.backoff = peer.backoff, min(peer.backoff * 2, RETRY_MAX)
        peer.retry = self._reactor.callLater(delay, self._retry, peer)

    def _retry(self, peer: _Peer) -> None:
        peer.retry = None
        self._pump(peer)

    def _cancel(self, peer: _Peer) -> None:
        for timer in (peer.retry, peer.ack_timer):
            if timer is not None and timer.active():
                timer.cancel()
        peer.retry = peer.ack_timer = None

    def _ack_overdue(self, peer: _Peer) -> None:
        peer.ack_timer = None
        if peer.sent:
            log.info(
                "no acknowledgement from {node} for {seconds}s: sending {count} messages again",
                node=peer.node,
                seconds=self.ack_timeout,
                count=peer.sent,
            )
            self._again(peer)

    def _address(self, node: str) -> Any:
        membership = self._cluster.membership
        if membership is None:
            return None
        member = membership.member(node)
        if member is None or not _reachable(member):
            return None
        return member.addr

    def _ack_received(self, origin: str, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
            epoch, high = ack["e"], ack["h"]
            if not _in_range(epoch) or not _in_range(high):
                raise ValueError("epoch and high are positive integers")
        except (ValueError, KeyError, TypeError) as e:
            self.counters["malformed"] += 1
            log.warn("malformed ACK from {node}: {error}", node=origin, error=str(e))
            return
        peer = self._peers.get(origin)
        if peer is None:
            return
        done: Dict[int, int] = {}
        entries = peer.entries
        while entries and (entries[0].epoch, entries[0].seq) <= (epoch, high) and entries[0].committed:
            out = entries.popleft()
            done[out.epoch] = out.seq
            peer.sent = max(0, peer.sent - 1)
        if not done:
            return
        for acked_epoch, acked_seq in done.items():
            self._store.outbox_acked(origin, acked_epoch, acked_seq)
        self.counters["acked"] += 1
        peer.backoff = RETRY_INITIAL
        if peer.ack_timer is not None and peer.ack_timer.active():
            peer.ack_timer.cancel()
        peer.ack_timer = None
        if peer.sent:
            peer.ack_timer = self._reactor.callLater(self.ack_timeout, self._ack_overdue, peer)
        self._pump(peer)

    def peer_lost(self, node: str) -> None:
        """
        The stream to C{node} closed: what was on it is sent again.
        """
        peer = self._peers.get(node)
        if peer is not None and peer.entries:
            self._again(peer)

    def member_reachable(self, node: str) -> None:
        """
        C{node} is alive (again, or at a new address): try it now.
        """
        peer = self._peers.get(node)
        if peer is None or not peer.entries:
            return
        peer.backoff = RETRY_INITIAL
        if peer.retry is not None and peer.retry.active():
            peer.retry.cancel()
        peer.retry = None
        peer.sent = 0
        self._pump(peer)

    # Deadlines ----------------------------------------------------------------------

    def _expire(self) -> None:
        """
        Fail the waiting messages whose deadline passed (those not on the
        wire now: a message the peer may be taking in is not failed).
        """
        now = self._reactor.seconds()
        for peer in list(self._peers.values()):
            entries = peer.entries
            if not any(out.expires_at <= now for out in list(entries)[peer.sent:]):
                continue
            keep: Deque[_Out] = deque(list(entries)[: peer.sent])
            for out in list(entries)[peer.sent:]:
                if out.expires_at > now or not out.committed:
                    keep.append(out)
                    continue
                self._store.outbox_drop(peer.node, out.epoch, out.seq)
                self.counters["expired"] += 1
                self._unreachable(peer.node, out)
            peer.entries = keep

    def _unreachable(self, node: str, out: _Out) -> None:
        message = out.message
        if message is None:
            try:
                message = parse_message(json.loads(out.raw))
            except (ValueError, InvalidMessage) as e:
                log.warn("dropping an unreadable kept message for {node}: {error}", node=node, error=str(e))
                return
        self._router.delivery_failed(
            message,
            out.receiver,
            "UNREACHABLE",
            f"node {node} could not be reached before the message's deadline",
        )

    # Receiving ------------------------------------------------------------------------

    def _forward_received(self, origin: str, payload: bytes) -> None:
        try:
            epoch, messages = _read_frame(payload)
        except ValueError as e:
            self.counters["malformed"] += 1
            log.warn("malformed FORWARD frame from {node}: {error}", node=origin, error=str(e))
            return
        key = (origin, epoch)
        high = start = self._intake.get(key, 0)
        with self._store.together():
            for seq, receiver, body in messages:
                if seq <= high:
                    self.counters["duplicates"] += 1
                    continue
                high = seq
                self.counters["received"] += 1
                try:
                    self._note_client(origin, body)
                    self._router.arrived(receiver, body)
                except InvalidMessage as e:
                    self.counters["malformed"] += 1
                    log.warn(
                        "dropped a malformed message from {node}: {error}", node=origin, error=str(e)
                    )
                except Exception:
                    # A bug of ours: the rest of the frame still goes in.
                    log.failure("taking in a message from {node}", node=origin)
            if high != start:
                self._intake[key] = high
                self._store.intake_high(origin, epoch, high)
        self._acknowledge(origin, epoch, high)

    def _acknowledge(self, origin: str, epoch: int, high: int) -> None:
        if high == 0:
            return
        payload = b'{"e":%d,"h":%d}' % (epoch, high)

        def send(_: Any) -> None:
            membership, streams = self._cluster.membership, self._cluster.streams
            member = membership.member(origin) if membership is not None else None
            if streams is None or member is None:
                return
            d = streams.send(origin, member.addr, Kind.ACK, payload, timeout=self.ack_timeout)
            d.addErrback(lambda f: f.trap(StreamError))

        d = self._store.sync()
        d.addCallback(send)
        d.addErrback(lambda f: log.failure("acknowledging {node}", f, node=origin))

    def _note_client(self, origin: str, body: Dict[str, Any]) -> None:
        """
        Remember which node an API client came through, so answers go back
        to its mailbox there.
        """
        sender = body.get("sender")
        conversation_id = body.get("conversation_id")
        if not isinstance(sender, str) or not sender.startswith("client:"):
            return
        if not isinstance(conversation_id, str):
            raise InvalidMessage("a forwarded message carries its conversation_id")
        for key in ((sender, conversation_id), (sender, None)):
            if self._clients.get(key) != origin:
                self._store.client_home(key[0], key[1] or "", origin)
            self._clients[key] = origin
            self._clients.move_to_end(key)
        while len(self._clients) > CLIENT_HOMES:
            self._clients.popitem(last=False)

    def _lookup_received(self, origin: str, payload: bytes) -> bytes:
        name = json.loads(payload).get("n")
        here = isinstance(name, str) and self._agents.get(name) is not None
        return b'{"h":true}' if here else b'{"h":false}'

    # Views ---------------------------------------------------------------------------

    def queues(self) -> Dict[str, int]:
        """
        Messages waiting per node (for metrics and status).
        """
        return {node: len(peer.entries) for node, peer in sorted(self._peers.items()) if peer.entries}


def _reachable(member: Any) -> bool:
    return member.state in (State.ALIVE, State.SUSPECT)
