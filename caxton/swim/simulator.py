# -*- test-case-name: tests.test_swim_simulator -*-
"""
A deterministic simulator for the SWIM core, and a recording transport for
unit tests.

L{Simulation} runs N virtual nodes, each the real L{Membership} speaking
the real codec (every packet is encoded and decoded), on one simulated
clock with one seeded random generator, over a virtual network that loses,
delays (with jitter), duplicates and partitions packets.  Nodes can be
killed, restarted under the same id at a new address with a higher
incarnation, and stalled: a stalled node's timers and inbound packets are
held until the stall ends, as in a Python process whose reactor is blocked,
and it then reports the lag (L{Membership.note_lag}).  Push-pull and the
stream ping are direct calls with the network's delay, subject to
partitions.

The simulator counts packets and bytes per node and classifies every
suspicion and death a node records as true (the victim was killed) or
false, by whether the observer and the victim are healthy or slow
(Lifeguard's FP and FP- counts, notes/swim.md 3.2, 6.5).  It is the ground
for the membership tests and for the benchmarks in C{bench/}.

L{RecordingTransport} is an L{ISwimTransport} that records what the core
sends, for unit tests of the core.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
)

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import Logger
from zope.interface import implementer

from caxton.swim.codec import CodecError, decode_packet
from caxton.swim.config import SwimConfig, profile
from caxton.swim.core import Membership
from caxton.swim.interfaces import IMembershipListener, ISwimTransport, StreamPing
from caxton.swim.messages import Address, Message, State

# --- a transport for unit tests ---------------------------------------------


@implementer(ISwimTransport)
class RecordingTransport:
    """
    An L{ISwimTransport} that records instead of sending.

    @ivar sent: C{(address, packet)} for each datagram, in order.
    @ivar push_pulls: C{(node, address, state, deferred)} for each push-pull
        started; the test fires C{deferred} with the peer's encoded state.
    @ivar stream_pings: C{(node, address, deferred)} for each stream ping;
        the test fires C{deferred} with C{True} or C{False}.
    """

    def __init__(self) -> None:
        self.sent: List[Tuple[Address, bytes]] = []
        self.push_pulls: List[Tuple[Optional[str], Address, bytes, Deferred]] = []
        self.stream_pings: List[Tuple[str, Address, Deferred]] = []

    def send_packet(self, addr: Address, packet: bytes) -> None:
        """
        Record a datagram.
        """
        self.sent.append((addr, packet))

    def push_pull(self, node: Optional[str], addr: Address, state: bytes) -> Deferred:
        """
        Record a push-pull and return its unfired Deferred.
        """
        d: Deferred = Deferred()
        self.push_pulls.append((node, addr, state, d))
        return d

    def stream_ping(self, node: str, addr: Address) -> Deferred:
        """
        Record a stream ping and return its unfired Deferred.
        """
        d: Deferred = Deferred()
        self.stream_pings.append((node, addr, d))
        return d

    def messages(self) -> List[Tuple[Address, Tuple[Message, ...]]]:
        """
        The recorded datagrams, decoded.
        """
        return [(addr, decode_packet(packet)) for addr, packet in self.sent]

    def messages_to(self, addr: Address) -> List[Message]:
        """
        Every message sent to C{addr}, in order, packets flattened.
        """
        return [m for a, ms in self.messages() if a == addr for m in ms]

    def clear(self) -> None:
        """
        Forget what was recorded.
        """
        del self.sent[:]
        del self.push_pulls[:]
        del self.stream_pings[:]


# --- the simulated clock ------------------------------------------------------


class _Call:
    """
    A pending call on L{SimClock}, with the C{IDelayedCall} methods the core
    and C{Deferred.addTimeout} use.
    """

    __slots__ = ("time", "func", "args", "kw", "cancelled", "called", "owner")

    def __init__(
        self, time: float, func: Callable[..., Any], args: Any, kw: Any, owner: Optional["SimNode"]
    ) -> None:
        self.time = time
        self.func = func
        self.args = args
        self.kw = kw
        self.cancelled = False
        self.called = False
        self.owner = owner

    def getTime(self) -> float:
        """
        When it is due.
        """
        return self.time

    def active(self) -> bool:
        """
        Neither called nor cancelled yet.
        """
        return not (self.cancelled or self.called)

    def cancel(self) -> None:
        """
        Do not call it.
        """
        self.cancelled = True


class SimClock:
    """
    A simulated C{IReactorTime} on a heap (C{task.Clock} re-sorts its list on
    every C{callLater}, too slow for hundreds of nodes).  Calls run in time
    order, and each sees C{seconds()} equal to its due time.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: List[Tuple[float, int, _Call]] = []
        self._seq = 0

    def seconds(self) -> float:
        """
        The simulated time.
        """
        return self.now

    def callLater(self, delay: float, func: Callable[..., Any], *args: Any, **kw: Any) -> _Call:
        """
        Call C{func} after C{delay} simulated seconds.
        """
        return self._schedule(delay, func, args, kw, None)

    def _schedule(
        self, delay: float, func: Callable[..., Any], args: Any, kw: Any, owner: Optional["SimNode"]
    ) -> _Call:
        call = _Call(self.now + max(0.0, delay), func, args, kw, owner)
        self._seq += 1
        heapq.heappush(self._heap, (call.time, self._seq, call))
        return call

    def getDelayedCalls(self) -> List[_Call]:
        """
        The pending calls.
        """
        return [c for _, _, c in self._heap if c.active()]

    def run_until(self, end: float) -> None:
        """
        Run every call due up to C{end}, then set the time to C{end}.
        """
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= end:
            when, _, call = pop(heap)
            if call.cancelled:
                continue
            self.now = when
            owner = call.owner
            if owner is not None and owner.stalled:
                owner.postponed.append(call)
                continue
            call.called = True
            call.func(*call.args, **call.kw)
        if end > self.now:
            self.now = end


class _NodeClock:
    """
    One node's view of the L{SimClock}: its calls wait while it is stalled.
    """

    def __init__(self, clock: SimClock, node: "SimNode") -> None:
        self._clock = clock
        self._node = node

    def seconds(self) -> float:
        """
        The simulated time.
        """
        return self._clock.now

    def callLater(self, delay: float, func: Callable[..., Any], *args: Any, **kw: Any) -> _Call:
        """
        Call C{func} after C{delay}, or when the node's stall ends.
        """
        return self._clock._schedule(delay, func, args, kw, self._node)


# --- nodes and the network -----------------------------------------------------


def _discard(event: Any) -> None:
    return None


_QUIET = Logger(observer=_discard)


class SimNode:
    """
    One simulated node: its L{Membership}, address and health.

    @ivar index: its position in L{Simulation.nodes}.
    @ivar node_id: its node id (C{n<index>}).
    @ivar membership: the running core (replaced on restart).
    @ivar killed: whether it is down.
    @ivar slow: whether it was ever stalled (an anomalous node for the
        false-positive counts).
    @ivar generation: how many times it was restarted.
    """

    def __init__(self, sim: "Simulation", index: int) -> None:
        self.sim = sim
        self.index = index
        self.node_id = f"n{index}"
        self.generation = 0
        self.killed = False
        self.slow = False
        self.stalled = False
        self.stall_started = 0.0
        self.postponed: List[_Call] = []
        self.held: List[Tuple[Callable[..., Any], Tuple[Any, ...]]] = []
        self.clock = _NodeClock(sim.clock, self)
        self.addr = self._address()
        self.membership: Membership = None  # type: ignore[assignment]

    def _address(self) -> Address:
        i = self.index
        return Address(f"10.{self.generation % 256}.{i // 256}.{i % 256}", 7946 + self.generation)

    @property
    def live(self) -> bool:
        """
        Whether it is running (stalled or not).
        """
        return not self.killed


@implementer(ISwimTransport)
class _SimTransport:
    """
    A node's way into the virtual network.
    """

    def __init__(self, sim: "Simulation", node: SimNode) -> None:
        self._sim = sim
        self._node = node
        self._generation = node.generation

    def send_packet(self, addr: Address, packet: bytes) -> None:
        self._sim._send(self._node, self._generation, addr, packet)

    def push_pull(self, node: Optional[str], addr: Address, state: bytes) -> Deferred:
        return self._sim._push_pull(self._node, self._generation, node, addr, state)

    def stream_ping(self, node: str, addr: Address) -> Deferred:
        return self._sim._stream_ping(self._node, self._generation, node, addr)


@implementer(IMembershipListener)
class _Observer:
    """
    Tells the simulation what one node concludes about the others.
    """

    def __init__(self, sim: "Simulation", node: SimNode) -> None:
        self._sim = sim
        self._node = node

    def member_suspected(self, member: Any) -> None:
        self._sim._record("suspect", self._node, member.node)

    def member_failed(self, member: Any) -> None:
        self._sim._record("dead", self._node, member.node)

    def member_joined(self, member: Any) -> None:
        pass

    def member_updated(self, member: Any) -> None:
        pass

    def member_alive(self, member: Any) -> None:
        pass

    def member_left(self, member: Any) -> None:
        pass


class Simulation:
    """
    N nodes running the real core and codec on a virtual network.

    @param n: how many nodes.
    @param seed: seeds every random choice (the network's and each node's).
    @param config: the nodes' L{SwimConfig} (LAN profile by default).
    @param loss: probability that a datagram is lost.
    @param delay: one-way network delay in seconds.
    @param jitter: extra delay, uniform in C{[0, jitter]}, per packet.
    @param duplicate: probability that a datagram arrives twice.
    @param join: whether every node but the first joins through node 0 at
        once (C{False}: the nodes start alone; call L{join_all}).
    @param record_events: keep every suspicion and death in L{events}.

    @ivar clock: the L{SimClock}.
    @ivar nodes: the L{SimNode}s.
    @ivar fp: L{Counter} of C{(event, observer_kind, victim_kind)} where
        event is C{"suspect"} or C{"dead"} and a kind is C{"healthy"},
        C{"slow"} or C{"killed"}; a killed victim is a true positive.
    @ivar events: C{(time, event, observer index, victim node id)} when
        C{record_events}.
    @ivar dead_seen: victim node id -> observer index -> when that observer
        first declared the victim dead.
    @ivar killed_at: node index -> when it was last killed.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        config: Optional[SwimConfig] = None,
        loss: float = 0.0,
        delay: float = 0.001,
        jitter: float = 0.0,
        duplicate: float = 0.0,
        join: bool = True,
        record_events: bool = False,
    ) -> None:
        self.clock = SimClock()
        self.rng = random.Random(seed)
        self.config = config if config is not None else profile("lan")
        self.loss = loss
        self.delay = delay
        self.jitter = jitter
        self.duplicate = duplicate
        self.link_loss: Dict[Tuple[int, int], float] = {}
        self.fp: Counter = Counter()
        self.record_events = record_events
        self.events: List[Tuple[float, str, int, str]] = []
        self.dead_seen: Dict[str, Dict[int, float]] = {}
        self.killed_at: Dict[int, float] = {}
        self._groups: Optional[Dict[int, int]] = None
        self._by_addr: Dict[Address, SimNode] = {}
        # Addresses of killed processes whose host is still up: a stream
        # ping there is refused (C{kill(i, host_down=True)} makes a silent
        # black hole instead).
        self._refusing: Dict[Address, SimNode] = {}
        self._by_id: Dict[str, SimNode] = {}
        self.packets_sent = [0] * n
        self.bytes_sent = [0] * n
        self.packets_received = [0] * n
        self.bytes_received = [0] * n
        self.packets_lost = 0
        self.stream_bytes = [0] * n
        self.nodes: List[SimNode] = []
        for i in range(n):
            node = SimNode(self, i)
            self.nodes.append(node)
            self._by_id[node.node_id] = node
            self._boot(node, incarnation=0)
        if join:
            self.join_all()

    # --- control ----------------------------------------------------------

    @property
    def now(self) -> float:
        """
        The simulated time.
        """
        return self.clock.now

    def run(self, seconds: float) -> None:
        """
        Let C{seconds} of simulated time pass.
        """
        self.clock.run_until(self.clock.now + seconds)

    def run_until(
        self, predicate: Callable[[], bool], timeout: float, step: float = 0.1
    ) -> Optional[float]:
        """
        Run in steps of C{step} until C{predicate()} holds; return how long
        that took, or C{None} if it did not within C{timeout}.
        """
        start = self.clock.now
        end = start + timeout
        if predicate():
            return 0.0
        while self.clock.now < end:
            self.clock.run_until(min(end, self.clock.now + step))
            if predicate():
                return self.clock.now - start
        return None

    def join_all(self, seed_index: int = 0) -> None:
        """
        Every live node but C{seed_index} joins through it, retrying.
        """
        seed = self.nodes[seed_index].addr
        for node in self.nodes:
            if node.index != seed_index and node.live:
                node.membership.join_with_retry([seed])

    def kill(self, i: int, host_down: bool = False) -> None:
        """
        Node C{i} stops: it neither answers nor sends again until
        L{restart}.  Its host stays up and refuses stream connections at
        its address (a crashed or killed process), unless C{host_down}: then
        the address is silent (a machine or network failure).
        """
        node = self.nodes[i]
        if node.killed:
            return
        node.killed = True
        self.killed_at[i] = self.clock.now
        self.dead_seen.pop(node.node_id, None)
        node.stalled = False
        node.postponed = []
        node.held = []
        node.membership.stop()
        self._by_addr.pop(node.addr, None)
        if not host_down:
            self._refusing[node.addr] = node

    def restart(
        self, i: int, seeds: Optional[Sequence[int]] = None, incarnation: Optional[int] = None
    ) -> SimNode:
        """
        Start node C{i} again under the same id at a new address, with a
        fresh state and a higher incarnation (its last plus one unless
        given), joining through C{seeds} (node indexes; by default the
        lowest-numbered other live node).
        """
        node = self.nodes[i]
        last = node.membership.incarnation
        if not node.killed:
            self.kill(i)
        node.killed = False
        node.generation += 1
        node.addr = node._address()
        self._refusing.pop(node.addr, None)
        self._boot(node, incarnation=last + 1 if incarnation is None else incarnation)
        if seeds is None:
            others = [n.index for n in self.nodes if n.live and n.index != i]
            seeds = others[:1]
        addrs = [self.nodes[s].addr for s in seeds if s != i]
        if addrs:
            node.membership.join_with_retry(addrs)
        return node

    def stall(self, i: int, seconds: float) -> None:
        """
        Node C{i} stops running for C{seconds}: its timers and inbound
        packets wait, then run late, and it reports the lag.  It counts as
        slow from now on.
        """
        node = self.nodes[i]
        if node.killed or node.stalled:
            return
        node.slow = True
        node.stalled = True
        node.stall_started = self.clock.now
        self.clock.callLater(seconds, self._unstall, node, node.generation)

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """
        Only nodes in the same group reach each other; nodes in no group
        form one more group together.
        """
        self._groups = {}
        for g, members in enumerate(groups):
            for i in members:
                self._groups[i] = g

    def heal(self) -> None:
        """
        End the partition.
        """
        self._groups = None

    def set_link_loss(self, a: int, b: int, loss: float) -> None:
        """
        Loss probability from node C{a} to node C{b} (one direction).
        """
        self.link_loss[(a, b)] = loss

    # --- views --------------------------------------------------------------

    def live_nodes(self) -> List[SimNode]:
        """
        The nodes that are not killed.
        """
        return [n for n in self.nodes if n.live]

    def view(self, i: int) -> Dict[str, Tuple[State, Address, int]]:
        """
        Node C{i}'s view: node id -> (state, address, incarnation).
        """
        return self.nodes[i].membership.view()

    def sees_dead(self, observer: int, victim: int) -> bool:
        """
        Whether C{observer} holds C{victim} (as it was last addressed) dead
        or left, or has forgotten it.
        """
        member = self.nodes[observer].membership.member(self.nodes[victim].node_id)
        return member is None or member.state >= State.DEAD

    def all_see_dead(self, victim: int) -> bool:
        """
        Whether every live node but C{victim} sees it dead or left.
        """
        return all(
            self.sees_dead(n.index, victim) for n in self.nodes if n.live and n.index != victim
        )

    def converged(self) -> bool:
        """
        Whether every live node sees exactly the live nodes as alive (or
        suspect), each at its current address.
        """
        live = [(n.node_id, n.addr) for n in self.nodes if n.live]
        count = len(live)
        for node in self.nodes:
            if not node.live:
                continue
            view = node.membership.view()
            if sum(1 for entry in view.values() if entry[0] <= State.SUSPECT) != count:
                return False
            for node_id, addr in live:
                entry = view.get(node_id)
                if entry is None or entry[0] > State.SUSPECT or entry[1] != addr:
                    return False
        return True

    def all_see_members(self, count: int) -> bool:
        """
        Whether every live node counts C{count} members alive or suspect.
        """
        return all(n.membership.alive_count() == count for n in self.nodes if n.live)

    def detection_latency(self, victim: int) -> Optional[Tuple[float, float]]:
        """
        For a killed node: how long after the kill the first live node, and
        the last, declared it dead; C{None} until every live node has.
        """
        killed = self.killed_at.get(victim)
        seen = self.dead_seen.get(self.nodes[victim].node_id, {})
        if killed is None or not self.nodes[victim].killed:
            return None
        times = []
        for node in self.nodes:
            if node.live:
                when = seen.get(node.index)
                if when is None:
                    return None
                times.append(when - killed)
        if not times:
            return None
        return min(times), max(times)

    def false_positives(
        self, event: str, observer: str = "healthy", victim: str = "healthy"
    ) -> int:
        """
        How many times an C{observer}-kind node recorded C{event}
        (C{"suspect"} or C{"dead"}) about a C{victim}-kind node.
        """
        return self.fp[(event, observer, victim)]

    # --- machinery ------------------------------------------------------------

    def _boot(self, node: SimNode, incarnation: int) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        membership = Membership(
            self.config,
            node.node_id,
            node.addr,
            node.clock,
            rng,
            _SimTransport(self, node),
            incarnation=incarnation,
            logger=_QUIET,
        )
        membership.add_listener(_Observer(self, node))
        node.membership = membership
        self._by_addr[node.addr] = node
        membership.start()

    def _kind(self, node: SimNode) -> str:
        if node.killed:
            return "killed"
        return "slow" if node.slow else "healthy"

    def _record(self, event: str, observer: SimNode, victim_id: str) -> None:
        victim = self._by_id.get(victim_id)
        victim_kind = self._kind(victim) if victim is not None else "killed"
        self.fp[(event, self._kind(observer), victim_kind)] += 1
        if event == "dead":
            self.dead_seen.setdefault(victim_id, {}).setdefault(observer.index, self.clock.now)
        if self.record_events:
            self.events.append((self.clock.now, event, observer.index, victim_id))

    def _reachable(self, a: SimNode, b: SimNode) -> bool:
        groups = self._groups
        if groups is None:
            return True
        return groups.get(a.index, -1) == groups.get(b.index, -1)

    def _current(self, node: SimNode, generation: int) -> bool:
        return not node.killed and node.generation == generation

    def _link_delay(self) -> float:
        if self.jitter:
            return self.delay + self.rng.random() * self.jitter
        return self.delay

    def _send(self, src: SimNode, generation: int, addr: Address, packet: bytes) -> None:
        if not self._current(src, generation):
            return
        i = src.index
        self.packets_sent[i] += 1
        self.bytes_sent[i] += len(packet)
        dst = self._by_addr.get(addr)
        if dst is None or not self._reachable(src, dst):
            self.packets_lost += 1
            return
        loss = self.link_loss.get((i, dst.index), self.loss) if self.link_loss else self.loss
        rng = self.rng
        if loss and rng.random() < loss:
            self.packets_lost += 1
            return
        copies = 2 if self.duplicate and rng.random() < self.duplicate else 1
        for _ in range(copies):
            self.clock.callLater(
                self._link_delay(), self._deliver, dst, dst.generation, src.addr, packet
            )

    def _deliver(self, dst: SimNode, generation: int, source: Address, packet: bytes) -> None:
        if not self._current(dst, generation):
            return
        self.packets_received[dst.index] += 1
        self.bytes_received[dst.index] += len(packet)
        self._run_at(dst, dst.membership.packet_received, source, packet)

    def _run_at(self, node: SimNode, func: Callable[..., Any], *args: Any) -> None:
        # Work arriving at a stalled node waits for the stall to end.
        if node.stalled:
            node.held.append((func, args))
        else:
            func(*args)

    def _unstall(self, node: SimNode, generation: int) -> None:
        if not self._current(node, generation) or not node.stalled:
            return
        node.stalled = False
        lag = self.clock.now - node.stall_started
        membership = node.membership
        # A lag monitor's tick was among the late timers; the reactor then
        # runs the overdue timers before it reads the sockets.
        membership.note_lag(lag)
        postponed, node.postponed = node.postponed, []
        for call in postponed:
            if not call.cancelled and self._current(node, generation):
                call.called = True
                call.func(*call.args, **call.kw)
        held, node.held = node.held, []
        for func, args in held:
            if self._current(node, generation):
                func(*args)

    def _push_pull(
        self,
        src: SimNode,
        generation: int,
        node_id: Optional[str],
        addr: Address,
        state: bytes,
    ) -> Deferred:
        d: Deferred = Deferred()
        if not self._current(src, generation):
            return d
        self.stream_bytes[src.index] += len(state)
        dst = self._by_addr.get(addr)

        def refuse() -> None:
            if not d.called:
                d.errback(ConnectionRefusedError(str(addr)))

        if dst is None or not self._reachable(src, dst):
            # A refused or unrouted connection: it fails after a round trip
            # (an unroutable one would hang until the core's timeout;
            # refusing is the kinder, faster case).
            self.clock.callLater(2 * self._link_delay(), refuse)
            return d
        dst_generation = dst.generation

        def arrive() -> None:
            if not self._current(dst, dst_generation) or not self._reachable(src, dst):
                refuse()
                return
            self._run_at(dst, answer)

        def answer() -> None:
            if not self._current(dst, dst_generation):
                refuse()
                return
            if node_id is not None and node_id != dst.node_id:
                refuse()
                return
            try:
                reply = dst.membership.push_pull_received(state)
            except CodecError:
                refuse()
                return
            self.stream_bytes[dst.index] += len(reply)
            self.clock.callLater(self._link_delay(), back, reply)

        def back(reply: bytes) -> None:
            if d.called or not self._current(src, generation):
                return
            self._run_at(src, deliver, reply)

        def deliver(reply: bytes) -> None:
            if not d.called:
                d.callback(reply)

        self.clock.callLater(self._link_delay(), arrive)
        return d

    def _stream_ping(
        self, src: SimNode, generation: int, node_id: str, addr: Address
    ) -> Deferred:
        d: Deferred = Deferred()
        if not self._current(src, generation):
            return d
        dst = self._by_addr.get(addr)

        def result(outcome: StreamPing) -> None:
            if d.called or not self._current(src, generation):
                return
            self._run_at(src, fire, outcome)

        def fire(outcome: StreamPing) -> None:
            if not d.called:
                d.callback(outcome)

        if dst is None:
            gone = self._refusing.get(addr)
            refused = gone is not None and self._reachable(src, gone)
            outcome = StreamPing.REFUSED if refused else StreamPing.SILENT
            self.clock.callLater(2 * self._link_delay(), result, outcome)
            return d
        if not self._reachable(src, dst) or dst.node_id != node_id:
            self.clock.callLater(2 * self._link_delay(), result, StreamPing.SILENT)
            return d
        dst_generation = dst.generation

        def arrive() -> None:
            if not self._current(dst, dst_generation):
                result(StreamPing.SILENT)
                return
            self._run_at(dst, answer)

        def answer() -> None:
            alive = self._current(dst, dst_generation)
            outcome = StreamPing.ANSWERED if alive else StreamPing.SILENT
            self.clock.callLater(self._link_delay(), result, outcome)

        self.clock.callLater(self._link_delay(), arrive)
        return d


__all__: Sequence[str] = ["RecordingTransport", "SimClock", "SimNode", "Simulation"]
