# -*- test-case-name: tests.test_swim_core -*-
"""
The SWIM membership core, with Lifeguard: a sans-I/O state machine.

L{Membership} follows HashiCorp memberlist's rules (notes/swim.md 2.3-2.7,
3): round-robin probing, ping then indirect pings through k helpers (with
nacks) and a stream ping, suspicion with incarnation numbers and
refutation, Lifeguard's local health and confirmation-shortened suspicion
timers, the buddy system, broadcasts piggybacked on every probe packet and
sent by a gossip timer, periodic push-pull, join through seeds, graceful
leave, and reclaiming a dead node's name at a new address.

It does no I/O of its own: packets leave through an L{ISwimTransport},
arrive through L{Membership.packet_received} and
L{Membership.push_pull_received}, and time is an injected C{IReactorTime}
(a C{task.Clock} in tests and in L{caxton.swim.simulator}).  Randomness is
an injected C{random.Random}, so a seeded run replays exactly.

Where Caxton departs from memberlist, the code says so:
  - a node first heard of is accepted at any incarnation (memberlist
    ignores incarnation 0, which its nodes never use);
  - C{dead_node_reclaim_time} of 0 allows reclaim at once;
  - an accusation about this node at an incarnation older than its own
    queues its alive message again, so peers that still hold an old
    incarnation (a restart, memberlist#311) hear the current one;
  - a probe whose timers fired late because this node's reactor lagged
    (Lifeguard on) is inconclusive: the node cannot tell its own stall
    from the target's silence, so it accuses nobody;
  - a member declared dead (not left) is retried with a push-pull every
    C{reconnect_interval}, as Serf's reconnect does, so a partition heals
    even after the dead were reaped;
  - an alive message about a dead member at an incarnation that does not
    beat the death (the member never heard it was declared dead: the
    other side of a healed partition) makes this node tell the member
    directly, so it refutes and comes back everywhere (the idea of
    memberlist PR #345, sent to the member rather than gossiped);
  - an alive message refused as an address conflict is remembered (the
    highest incarnation per member) and applied when the member's current
    entry is declared dead and may be reclaimed; and a newer claim makes
    this node ask the old address over the stream at once: if no process
    answers there as that member, the member moved and the claim is taken
    (an update, not a failure and a join).  A node restarted at a new
    address is so taken back in a round trip instead of minutes
    (memberlist#311's slow mass restart); two live processes with one id
    still conflict, as in memberlist;
  - a failed probe whose stream ping was refused by the target's host
    (nothing listens at its address: the process crashed or was killed on
    a host that is up) suspects the target for one probe interval instead
    of Lifeguard's C{min..max} timer (C{fast_fail_refused}).  A slow, cut
    off or partitioned node does not refuse connections, it is silent, so
    Lifeguard's protection against false positives is untouched; a dead
    process is declared dead in about two probe intervals, not
    C{suspicion_mult} of them;
  - L{Membership.probe_soon} puts a member at the head of the probe
    order (the node stream to it was lost without a word: its process may
    have died), so a crash is noticed without waiting for the round-robin
    walk to come round to it;
  - listeners hear about other members only, never about this node.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Set

import attr
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from caxton.swim.codec import (
    PACKET_OVERHEAD,
    CodecError,
    decode_packet,
    decode_push_pull,
    encode_packet,
    encode_push_pull,
    message_size,
)
from caxton.swim.config import (
    SwimConfig,
    expected_confirmations,
    push_pull_scale,
    remaining_suspicion_time,
    suspicion_bounds,
)
from caxton.swim.interfaces import (
    IMembershipDelegate,
    IMembershipListener,
    ISwimTransport,
    StreamPing,
)
from caxton.swim.messages import (
    MAX_META,
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
from caxton.swim.queue import TransmitLimitedQueue

log = Logger()

#: Incarnation and sequence numbers are unsigned 32-bit on the wire.
MAX_UINT32 = 0xFFFFFFFF

#: A packet counts its messages in one byte.
MAX_MESSAGES = 255

_ALIVE = State.ALIVE
_SUSPECT = State.SUSPECT
_DEAD = State.DEAD
_LEFT = State.LEFT


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Member:
    """
    A member as this node sees it at one moment.

    @ivar node: its node id.
    @ivar addr: where it listens.
    @ivar meta: its metadata (at most L{MAX_META} bytes).
    @ivar incarnation: its incarnation number as last heard.
    @ivar state: alive, suspect, dead or left.
    @ivar state_change: when (clock seconds) it entered C{state}.
    """

    node: str
    addr: Address
    meta: bytes
    incarnation: int
    state: State
    state_change: float


@attr.s(slots=True, auto_attribs=True)
class SwimStats:
    """
    Counters of what the core did, for metrics (SPEC 10) and benchmarks.
    Mutable: the core increments them.
    """

    #: Datagrams and their bytes handed to the transport.
    packets_sent: int = 0
    bytes_sent: int = 0
    #: Datagrams and their bytes received, malformed ones included.
    packets_received: int = 0
    bytes_received: int = 0
    #: Datagrams that did not decode, dropped.
    malformed_dropped: int = 0
    #: Pings for another node id (a node took over the address), ignored.
    misdirected_pings: int = 0
    #: Probes started, and probes that ended in a suspicion.
    probes: int = 0
    probe_failures: int = 0
    #: Probes only the stream ping saved (UDP may be broken).
    stream_ping_rescues: int = 0
    #: Failed probes whose target's host refused the stream (fast path).
    refused_probes: int = 0
    #: Probes left undecided because this node's reactor lagged.
    probes_inconclusive: int = 0
    pings_sent: int = 0
    acks_sent: int = 0
    acks_received: int = 0
    indirect_pings_sent: int = 0
    indirect_pings_received: int = 0
    nacks_sent: int = 0
    nacks_received: int = 0
    #: Gossip packets sent by the gossip timer.
    gossip_packets: int = 0
    #: Members this node marked suspect, dead (failed) or left.
    suspicions: int = 0
    deaths: int = 0
    leaves: int = 0
    #: Suspicions that timed out before the expected confirmations came
    #: (memberlist's C{degraded.timeout}).
    degraded_timeouts: int = 0
    #: Accusations about this node it refuted.
    refutations: int = 0
    #: Alive messages refused because the name is in use at another address.
    conflicts: int = 0
    #: Reactor lag reports above the threshold.
    lag_events: int = 0
    #: Push-pull exchanges this node started that succeeded or failed, and
    #: exchanges it answered.
    push_pulls: int = 0
    push_pull_failures: int = 0
    push_pulls_received: int = 0
    #: User broadcasts delivered to the delegate.
    user_messages: int = 0

    def as_dict(self) -> Dict[str, int]:
        """
        The counters by name.
        """
        return attr.asdict(self)


class _NodeState:
    """
    A member's mutable record inside the core; L{Member} is its snapshot.
    """

    __slots__ = ("node", "addr", "meta", "incarnation", "state", "state_change")

    def __init__(
        self,
        node: str,
        addr: Address,
        meta: bytes,
        incarnation: int,
        state: State,
        state_change: float,
    ) -> None:
        self.node = node
        self.addr = addr
        self.meta = meta
        self.incarnation = incarnation
        self.state = state
        self.state_change = state_change

    def snapshot(self) -> Member:
        return Member(
            self.node, self.addr, self.meta, self.incarnation, self.state, self.state_change
        )


class _AckHandler:
    """
    What to do when an ack or nack with a sequence number arrives.
    """

    __slots__ = ("on_ack", "on_nack", "timer")

    def __init__(
        self,
        on_ack: Callable[[], None],
        on_nack: Optional[Callable[[], None]] = None,
        timer: Any = None,
    ) -> None:
        self.on_ack = on_ack
        self.on_nack = on_nack
        self.timer = timer


class _Probe:
    """
    The probe in flight (there is at most one, as in memberlist).
    """

    __slots__ = (
        "seq",
        "target",
        "addr",
        "incarnation",
        "started",
        "interval",
        "expected_nacks",
        "nacks",
        "stream_ok",
        "stream_refused",
        "stream_d",
        "timeout_call",
        "deadline_call",
        "lagged",
    )

    def __init__(
        self,
        seq: int,
        target: str,
        addr: Address,
        incarnation: int,
        started: float,
        interval: float,
    ) -> None:
        self.seq = seq
        self.target = target
        self.addr = addr
        self.incarnation = incarnation
        self.started = started
        self.interval = interval
        self.expected_nacks = 0
        self.nacks = 0
        self.stream_ok = False
        self.stream_refused = False
        self.stream_d: Optional[Deferred] = None
        self.timeout_call: Any = None
        self.deadline_call: Any = None
        self.lagged = False


class _Suspicion:
    """
    A suspicion timer: memberlist's C{suspicion}, counting distinct
    confirmations (the accuser excluded) toward C{k}.
    """

    __slots__ = ("k", "low", "high", "start", "confirmations", "n", "timer", "state_change")

    def __init__(
        self, k: int, low: float, high: float, start: float, accuser: str, state_change: float
    ) -> None:
        self.k = k
        self.low = low
        self.high = high
        self.start = start
        self.confirmations: Set[str] = {accuser}
        self.n = 0
        self.timer: Any = None
        self.state_change = state_change


def _swallow(failure: Failure) -> None:
    return None


class Membership:
    """
    One node's view of the cluster and the protocol that keeps it true.

    @param config: the knobs (L{SwimConfig}).
    @param node_id: this node's id (as L{caxton.swim.codec.NODE_ID}).
    @param addr: where this node listens (an IP literal and port).
    @param clock: an C{IReactorTime}; only C{seconds} and C{callLater} are
        used.
    @param rng: the source of every random choice.
    @param transport: an L{ISwimTransport}.
    @param meta: this node's metadata, at most L{MAX_META} bytes.
    @param incarnation: this node's starting incarnation (unsigned 32-bit);
        a restarted node should start above any it used before.
    @param delegate: an optional L{IMembershipDelegate}.
    @param overhead: bytes the envelope (encryption, label) adds to every
        packet, taken from L{SwimConfig.max_packet}.
    @param logger: where to log (the module's logger by default).

    @ivar stats: the L{SwimStats} counters.
    """

    def __init__(
        self,
        config: SwimConfig,
        node_id: str,
        addr: Address,
        clock: Any,
        rng: random.Random,
        transport: ISwimTransport,
        meta: bytes = b"",
        incarnation: int = 0,
        delegate: Optional[IMembershipDelegate] = None,
        overhead: int = 0,
        logger: Optional[Logger] = None,
    ) -> None:
        if len(meta) > MAX_META:
            raise ValueError(f"meta is longer than {MAX_META} bytes")
        if not 0 <= incarnation <= MAX_UINT32:
            raise ValueError("incarnation must be an unsigned 32-bit integer")
        self.config = config
        self.node_id = node_id
        self.addr = addr
        self._clock = clock
        self._rng = rng
        self._transport = transport
        self._delegate = delegate
        self._log = logger if logger is not None else log
        #: Bytes of piggybacked and gossiped messages a packet may carry.
        self._budget = config.max_packet - overhead - PACKET_OVERHEAD
        alive = Alive(incarnation, node_id, addr, bytes(meta))
        try:
            alive_size = message_size(alive)
        except CodecError as e:
            raise ValueError(f"cannot announce this node: {e}") from None
        if alive_size > self._budget:
            raise ValueError("this node's alive message does not fit in a packet")

        self.stats = SwimStats()
        self._nodes: List[_NodeState] = []
        self._node_map: Dict[str, _NodeState] = {}
        self._probe_index = 0
        self._seq = 0
        self._ack_handlers: Dict[int, _AckHandler] = {}
        self._suspicions: Dict[str, _Suspicion] = {}
        self._awareness = 0
        self._queue = TransmitLimitedQueue(config.retransmit_mult, self._num_nodes)
        self._listeners: List[IMembershipListener] = []
        self._left = False
        self._running = False
        self._stopped = False
        self._probe: Optional[_Probe] = None
        self._probe_call: Any = None
        self._gossip_call: Any = None
        self._push_pull_call: Any = None
        self._reconnect_call: Any = None
        # Members declared dead (not left): node -> (address, since), kept
        # past reaping for reconnects.
        self._failed: Dict[str, "tuple[Address, float]"] = {}
        # When each dead member was last told directly of its death.
        self._told_dead: Dict[str, float] = {}
        # Alive messages refused as address conflicts, by member, waiting
        # for the member's current entry to die.
        self._claims: Dict[str, Alive] = {}
        self._claim_calls: Dict[str, Any] = {}
        self._claim_checks: Dict[str, Deferred] = {}
        self._exchanges: Set[Deferred] = set()
        self._retry_calls: Set[Any] = set()
        self._leave_d: Optional[Deferred] = None
        self._leave_sent = False
        self._urgent: List[str] = []
        self._lag_counted_until = float("-inf")
        self._leave_call: Any = None
        self._handlers: Dict[type, Callable[[Any], None]] = {
            Ping: self._handle_ping,
            IndirectPing: self._handle_indirect_ping,
            Ack: self._handle_ack,
            Nack: self._handle_nack,
            Alive: self._alive_node,
            Suspect: self._suspect_node,
            Dead: self._dead_node,
            User: self._handle_user,
        }

        self._me = _NodeState(node_id, addr, bytes(meta), incarnation, _ALIVE, clock.seconds())
        self._insert(self._me)
        # memberlist's setAlive: our own alive message is the first news.
        self._broadcast(node_id, alive)

    # --- public API -------------------------------------------------------

    def start(self) -> None:
        """
        Start the probe, gossip and push-pull timers, each after a random
        stagger so that nodes started together do not act in lockstep.
        """
        if self._running or self._stopped:
            return
        self._running = True
        cfg = self.config
        self._probe_call = self._clock.callLater(
            self._rng.random() * cfg.probe_interval, self._probe_tick
        )
        self._gossip_call = self._clock.callLater(
            self._rng.random() * cfg.gossip_interval, self._gossip_tick
        )
        self._push_pull_call = self._clock.callLater(
            self._rng.random() * push_pull_scale(cfg.push_pull_interval, self._num_nodes()),
            self._push_pull_tick,
        )
        self._reconnect_call = self._clock.callLater(
            self._rng.random() * cfg.reconnect_interval, self._reconnect_tick
        )

    def stop(self) -> None:
        """
        Stop for good: cancel every pending call and exchange, and ignore
        packets from now on.  A pending L{leave} fires with C{False}.
        """
        self._running = False
        self._stopped = True
        for call in (
            self._probe_call,
            self._gossip_call,
            self._push_pull_call,
            self._reconnect_call,
            self._leave_call,
        ):
            _cancel(call)
        self._probe_call = self._gossip_call = self._push_pull_call = None
        self._reconnect_call = self._leave_call = None
        probe, self._probe = self._probe, None
        if probe is not None:
            self._end_probe(probe)
        for handler in self._ack_handlers.values():
            _cancel(handler.timer)
        self._ack_handlers.clear()
        for suspicion in self._suspicions.values():
            _cancel(suspicion.timer)
        self._suspicions.clear()
        for call in list(self._retry_calls):
            _cancel(call)
        self._retry_calls.clear()
        for call in self._claim_calls.values():
            _cancel(call)
        self._claim_calls.clear()
        self._claim_checks.clear()
        for d in list(self._exchanges):
            d.cancel()
        self._exchanges.clear()
        self._fire_leave(False)

    def add_listener(self, listener: IMembershipListener) -> None:
        """
        Tell C{listener} about changes to other members from now on.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: IMembershipListener) -> None:
        """
        Stop telling C{listener}.
        """
        self._listeners.remove(listener)

    def members(self) -> List[Member]:
        """
        Every member this node knows, itself included, dead and left ones
        until they are reaped, ordered by node id.
        """
        return sorted((n.snapshot() for n in self._nodes), key=lambda m: m.node)

    def member(self, node_id: str) -> Optional[Member]:
        """
        The member C{node_id}, or C{None} if unknown.
        """
        state = self._node_map.get(node_id)
        return None if state is None else state.snapshot()

    def alive_count(self) -> int:
        """
        How many members (this node included) are alive or suspect: the
        ones that count as in the cluster.
        """
        return sum(1 for n in self._nodes if n.state <= _SUSPECT)

    def view(self) -> Dict[str, "tuple[State, Address, int]"]:
        """
        Every known member's C{(state, address, incarnation)} by node id:
        the cheap form of L{members} for checks over many nodes.
        """
        return {n.node: (n.state, n.addr, n.incarnation) for n in self._nodes}

    def state_of(self, node_id: str) -> Optional[State]:
        """
        The state of C{node_id} in this node's view, or C{None} if unknown;
        cheaper than L{member} for hot loops (the simulator's).
        """
        state = self._node_map.get(node_id)
        return None if state is None else state.state

    @property
    def local_health(self) -> int:
        """
        Lifeguard's local health score, 0 (healthy) up to
        C{awareness_max_multiplier - 1}; the probe interval is multiplied by
        the score plus one.
        """
        return self._awareness

    @property
    def incarnation(self) -> int:
        """
        This node's current incarnation number.
        """
        return self._me.incarnation

    @property
    def left(self) -> bool:
        """
        Whether L{leave} was called.
        """
        return self._left

    def pending_broadcasts(self) -> int:
        """
        How many broadcasts are queued.
        """
        return len(self._queue)

    def packet_received(self, addr: Address, data: bytes) -> None:
        """
        Handle one datagram from C{addr}.  Malformed data is counted in
        L{SwimStats.malformed_dropped} and dropped; this never raises.
        """
        if self._stopped:
            return
        stats = self.stats
        stats.packets_received += 1
        stats.bytes_received += len(data)
        try:
            messages = decode_packet(data)
        except CodecError as e:
            stats.malformed_dropped += 1
            self._log.debug("dropped a malformed packet from {addr}: {error}", addr=str(addr), error=str(e))
            return
        handlers = self._handlers
        for message in messages:
            try:
                handlers[type(message)](message)
            except Exception:
                self._log.failure("handling {message} from {addr}", message=type(message).__name__, addr=str(addr))

    def push_pull_received(self, data: bytes) -> bytes:
        """
        Answer a peer's push-pull: decode its state, merge it, and return
        this node's state as it was before the merge (as memberlist does).

        @raise CodecError: if C{data} is not a push-pull document; the
            caller refuses the exchange.
        """
        remote = decode_push_pull(data)
        self.stats.push_pulls_received += 1
        reply = encode_push_pull(self._local_state(remote.join))
        if not self._stopped:
            self._merge_state(remote)
        return reply

    def join(self, seeds: Sequence[Address]) -> Deferred:
        """
        Push-pull (with C{join} set) with each of C{seeds}; fires with how
        many answered.  Never fails; 0 means nobody was reached, and
        L{join_with_retry} or the caller decides what next.
        """
        exchanges = [self._push_pull_with(None, seed, True) for seed in seeds if seed != self.addr]
        if not exchanges:
            return succeed(0)
        return gatherResults(exchanges).addCallback(lambda results: sum(1 for r in results if r))

    def join_with_retry(
        self,
        seeds: Sequence[Address],
        initial_delay: float = 1.0,
        max_delay: float = 30.0,
        attempts: Optional[int] = None,
    ) -> Deferred:
        """
        L{join} until at least one seed answers, waiting C{initial_delay}
        seconds after the first failed round and doubling up to
        C{max_delay}, with up to 25% random jitter so nodes started together
        spread out.  Fires with the number of seeds reached in the round
        that succeeded, or 0 after C{attempts} failed rounds (forever if
        C{None}).  Cancelling it, or L{stop}, ends the retries.
        """
        state = {"delay": initial_delay, "tries": 0, "call": None}

        def cancel(d: Deferred) -> None:
            call = state["call"]
            if call is not None:
                self._retry_calls.discard(call)
                _cancel(call)

        result = Deferred(cancel)

        def attempt() -> None:
            state["call"] = None
            if self._stopped:
                if not result.called:
                    result.callback(0)
                return
            state["tries"] += 1
            self.join(seeds).addCallback(done)

        def done(reached: int) -> None:
            if result.called:
                return
            if reached or (attempts is not None and state["tries"] >= attempts) or self._stopped:
                result.callback(reached)
                return
            delay = state["delay"] * (1.0 + 0.25 * self._rng.random())
            state["delay"] = min(max_delay, state["delay"] * 2)
            self._log.info(
                "join reached no seed, retrying in {delay:.1f}s", delay=delay
            )
            call = self._clock.callLater(delay, retry)
            state["call"] = call
            self._retry_calls.add(call)

        def retry() -> None:
            self._retry_calls.discard(state["call"])
            attempt()

        attempt()
        return result

    def leave(self, timeout: float) -> Deferred:
        """
        Leave gracefully: broadcast a L{Dead} about this node sent by this
        node (peers record it as left) and wait until it has been sent its
        full count (or replaced by newer news about this node, as in
        memberlist).  Fires with C{True} then, or with C{False} after
        C{timeout} seconds (0: no limit) or if L{stop} comes first.  Timers
        keep running until L{stop}, as in memberlist.
        """
        if self._left:
            return succeed(True)
        self._left = True
        d = Deferred()
        self._leave_d = d
        me = self._me
        self._dead_node(Dead(me.incarnation, me.node, me.node))
        if not any(n.state == _ALIVE for n in self._nodes if n is not me):
            # Nobody to tell (memberlist's anyAlive check).
            self._fire_leave(True)
        elif timeout > 0 and self._leave_d is not None:
            self._leave_call = self._clock.callLater(timeout, self._leave_timed_out)
        return d

    def probe_soon(self, node_id: str) -> None:
        """
        Probe C{node_id} next, and now if no probe is in flight: the node
        stream to it was lost without a word, a hint that its process died.
        A healthy member just answers; a dead one is suspected a round-robin
        wait sooner.
        """
        state = self._node_map.get(node_id)
        if state is None or state is self._me or state.state > _SUSPECT or not self._running:
            return
        if node_id not in self._urgent:
            self._urgent.append(node_id)
        if self._probe is None and self._probe_call is not None:
            _cancel(self._probe_call)
            self._probe_call = None
            self._schedule_probe(0.0)

    def note_lag(self, seconds: float) -> None:
        """
        The reactor ran C{seconds} late.  Above C{lag_threshold} this counts
        against local health (+1) like a missed nack, and the probe in flight
        cannot be judged (Lifeguard only).
        """
        if seconds <= self.config.lag_threshold:
            return
        now = self._clock.seconds()
        began = now - seconds
        # One stall is seen by every timer it delayed (the lag monitor's,
        # the probe's): count it once.
        counted = began < self._lag_counted_until
        self._lag_counted_until = max(self._lag_counted_until, now)
        if not counted:
            self.stats.lag_events += 1
        if not self.config.lifeguard:
            return
        if not counted:
            self._log.info(
                "reactor lagged {lag:.3f}s; counting it against local health", lag=seconds
            )
            self._apply_awareness(1)
        # Only a probe that was under way when the lag began is spoiled; one
        # started as the reactor caught up will read its ack in time.
        probe = self._probe
        if probe is not None and probe.started <= self._clock.seconds() - seconds + 1e-6:
            probe.lagged = True

    def broadcast_user(self, key: str, payload: bytes) -> None:
        """
        Queue an application broadcast; a queued one with the same C{key}
        is replaced.  Receivers hand it to their delegate's C{notify_user}
        and do not forward it; the application re-broadcasts if it wants.

        @raise ValueError: if C{payload} cannot fit in one packet.
        """
        message = User(bytes(payload))
        try:
            size = message_size(message)
        except CodecError as e:
            raise ValueError(str(e)) from None
        if size > self._budget:
            raise ValueError("user payload does not fit in a packet")
        self._queue.queue(("user", key), message, size)

    def update_meta(self, meta: bytes) -> None:
        """
        Change this node's metadata: a new incarnation and an alive message
        carry it to the cluster.

        @raise ValueError: if C{meta} is longer than L{MAX_META} bytes.
        """
        if len(meta) > MAX_META:
            raise ValueError(f"meta is longer than {MAX_META} bytes")
        me = self._me
        me.meta = bytes(meta)
        me.incarnation = min(MAX_UINT32, me.incarnation + 1)
        self._broadcast(me.node, Alive(me.incarnation, me.node, me.addr, me.meta))

    # --- probing ----------------------------------------------------------

    def _probe_tick(self) -> None:
        self._probe_call = None
        if not self._running:
            return
        target = self._next_probe_target()
        if target is None:
            self._schedule_probe(self.config.probe_interval)
            return
        self._probe_node(target)

    def _schedule_probe(self, delay: float) -> None:
        if self._running and self._probe_call is None:
            self._probe_call = self._clock.callLater(max(0.0, delay), self._probe_tick)

    def _next_probe_target(self) -> Optional[_NodeState]:
        # First any member L{probe_soon} asked for; then memberlist's
        # probe(): walk the list round-robin, skipping ourselves and the
        # dead; a wrap reaps and reshuffles.
        while self._urgent:
            urgent = self._node_map.get(self._urgent.pop(0))
            if urgent is not None and urgent is not self._me and urgent.state <= _SUSPECT:
                return urgent
        checked = 0
        while True:
            nodes = self._nodes
            if checked >= len(nodes):
                return None
            if self._probe_index >= len(nodes):
                self._reset_nodes()
                self._probe_index = 0
                checked += 1
                continue
            node = nodes[self._probe_index]
            self._probe_index += 1
            if node is self._me or node.state >= _DEAD:
                checked += 1
                continue
            return node

    def _reset_nodes(self) -> None:
        now = self._clock.seconds()
        limit = self.config.gossip_to_the_dead_time
        keep = []
        for node in self._nodes:
            if node is not self._me and node.state >= _DEAD and now - node.state_change > limit:
                del self._node_map[node.node]
                self._claims.pop(node.node, None)
                _cancel(self._claim_calls.pop(node.node, None))
                continue
            keep.append(node)
        self._rng.shuffle(keep)
        self._nodes = keep

    def _scaled_probe_interval(self) -> float:
        if not self.config.lifeguard:
            return self.config.probe_interval
        return self.config.probe_interval * (self._awareness + 1)

    def _probe_node(self, node: _NodeState) -> None:
        cfg = self.config
        now = self._clock.seconds()
        seq = self._next_seq()
        probe = _Probe(
            seq, node.node, node.addr, node.incarnation, now, self._scaled_probe_interval()
        )
        self._probe = probe
        self._ack_handlers[seq] = _AckHandler(
            lambda: self._probe_succeeded(probe), lambda: self._probe_nacked(probe)
        )
        messages: List[Message] = [Ping(seq, node.node, self.node_id, self.addr)]
        if node.state != _ALIVE and cfg.lifeguard:
            # The buddy system: tell the suspect at once so it can refute.
            messages.append(Suspect(node.incarnation, node.node, self.node_id))
        self.stats.probes += 1
        self.stats.pings_sent += 1
        self._send(node.addr, messages)
        if self._probe is not probe:
            # Stopped while sending (a listener reacted to what went out).
            return
        probe.timeout_call = self._clock.callLater(cfg.probe_timeout, self._probe_timed_out, probe)
        probe.deadline_call = self._clock.callLater(probe.interval, self._probe_deadline, probe)

    def _probe_succeeded(self, probe: _Probe) -> None:
        if self._probe is not probe:
            return
        self._probe = None
        self._end_probe(probe)
        self._apply_awareness(-1)
        # The next probe keeps the base rhythm (memberlist's ticker).
        self._schedule_probe(probe.started + self.config.probe_interval - self._clock.seconds())

    def _probe_nacked(self, probe: _Probe) -> None:
        if self._probe is probe:
            probe.nacks += 1

    def _probe_timed_out(self, probe: _Probe) -> None:
        probe.timeout_call = None
        if self._probe is not probe:
            return
        self._check_lag(probe.started + self.config.probe_timeout)
        cfg = self.config
        me = self._me
        target = probe.target
        helpers = self._k_random(
            cfg.indirect_checks,
            lambda n: n is not me and n.state == _ALIVE and n.node != target,
        )
        request = IndirectPing(
            probe.seq, target, probe.addr, cfg.lifeguard, self.node_id, self.addr
        )
        for helper in helpers:
            self.stats.indirect_pings_sent += 1
            self._send(helper.addr, [request])
        probe.expected_nacks = len(helpers) if cfg.lifeguard else 0
        if cfg.stream_ping:
            d = self._transport.stream_ping(target, probe.addr)
            probe.stream_d = d

            def answered(outcome: object) -> None:
                probe.stream_d = None
                if outcome is StreamPing.ANSWERED:
                    probe.stream_ok = True
                elif outcome is StreamPing.REFUSED:
                    probe.stream_refused = True

            def failed(failure: Failure) -> None:
                probe.stream_d = None

            d.addCallbacks(answered, failed)

    def _probe_deadline(self, probe: _Probe) -> None:
        probe.deadline_call = None
        if self._probe is not probe:
            return
        self._check_lag(probe.started + probe.interval)
        self._probe = None
        self._end_probe(probe)
        stats = self.stats
        if probe.stream_ok:
            self._log.warn(
                "reached {node} over the stream but UDP probes failed; "
                "the network may be misconfigured",
                node=probe.target,
            )
            stats.stream_ping_rescues += 1
            self._apply_awareness(-1)
        elif probe.lagged:
            self._log.info(
                "probe of {node} inconclusive: this node lagged during it", node=probe.target
            )
            stats.probes_inconclusive += 1
        else:
            if probe.expected_nacks > 0:
                missed = probe.expected_nacks - probe.nacks
                self._apply_awareness(max(0, missed))
            else:
                self._apply_awareness(1)
            stats.probe_failures += 1
            refused = probe.stream_refused and self.config.fast_fail_refused
            if refused:
                stats.refused_probes += 1
            self._log.info(
                "suspect {node} has failed, no acks received{refused}",
                node=probe.target,
                refused="; its host refused the stream" if refused else "",
            )
            self._suspect_node(
                Suspect(probe.incarnation, probe.target, self.node_id), refused=refused
            )
        self._schedule_probe(probe.started + self.config.probe_interval - self._clock.seconds())

    def _end_probe(self, probe: _Probe) -> None:
        self._ack_handlers.pop(probe.seq, None)
        _cancel(probe.timeout_call)
        _cancel(probe.deadline_call)
        probe.timeout_call = probe.deadline_call = None
        d, probe.stream_d = probe.stream_d, None
        if d is not None and not d.called:
            d.addErrback(_swallow)
            d.cancel()

    def _check_lag(self, due: float) -> None:
        late = self._clock.seconds() - due
        if late > self.config.lag_threshold:
            self.note_lag(late)

    def _apply_awareness(self, delta: int) -> None:
        if not self.config.lifeguard or not delta:
            return
        score = min(max(self._awareness + delta, 0), self.config.awareness_max_multiplier - 1)
        if score != self._awareness:
            self._log.debug(
                "local health score {old} -> {new}", old=self._awareness, new=score
            )
            self._awareness = score

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & MAX_UINT32
        return self._seq

    def _k_random(self, k: int, accept: Callable[[_NodeState], bool]) -> List[_NodeState]:
        """
        Up to C{k} distinct random members that C{accept} takes.  Small
        lists are filtered and sampled, so a lone eligible member is never
        missed (memberlist PR #350); large ones are sampled at random first.
        """
        nodes = self._nodes
        n = len(nodes)
        if k <= 0 or n == 0:
            return []
        rng = self._rng
        if 4 * k < n:
            picked: List[_NodeState] = []
            for _ in range(8 * k):
                node = nodes[rng.randrange(n)]
                if node not in picked and accept(node):
                    picked.append(node)
                    if len(picked) == k:
                        return picked
            # Too many refused: fall through to the exhaustive way.
        candidates = [node for node in nodes if accept(node)]
        if len(candidates) <= k:
            rng.shuffle(candidates)
            return candidates
        return rng.sample(candidates, k)

    # --- answering probes ---------------------------------------------------

    def _handle_ping(self, ping: Ping) -> None:
        if ping.target != self.node_id:
            self.stats.misdirected_pings += 1
            return
        self.stats.acks_sent += 1
        self._send(ping.source_addr, [Ack(ping.seq)])

    def _handle_indirect_ping(self, request: IndirectPing) -> None:
        # Probe the target with our own sequence number and relay the ack;
        # a nack after probe_timeout proves to the origin that its path to
        # us works (Lifeguard).
        self.stats.indirect_pings_received += 1
        seq = self._next_seq()
        origin = request.source_addr

        def relay() -> None:
            self.stats.acks_sent += 1
            self._send(origin, [Ack(request.seq)])

        def expire() -> None:
            if self._ack_handlers.pop(seq, None) is None:
                return
            if request.nack:
                self.stats.nacks_sent += 1
                self._send(origin, [Nack(request.seq)])

        handler = _AckHandler(relay)
        handler.timer = self._clock.callLater(self.config.probe_timeout, expire)
        self._ack_handlers[seq] = handler
        self.stats.pings_sent += 1
        self._send(request.target_addr, [Ping(seq, request.target, self.node_id, self.addr)])

    def _handle_ack(self, ack: Ack) -> None:
        self.stats.acks_received += 1
        handler = self._ack_handlers.pop(ack.seq, None)
        if handler is None:
            return
        _cancel(handler.timer)
        handler.on_ack()

    def _handle_nack(self, nack: Nack) -> None:
        self.stats.nacks_received += 1
        handler = self._ack_handlers.get(nack.seq)
        if handler is not None and handler.on_nack is not None:
            handler.on_nack()

    def _handle_user(self, message: User) -> None:
        self.stats.user_messages += 1
        if self._delegate is None:
            return
        try:
            self._delegate.notify_user(message.payload)
        except Exception:
            self._log.failure("delegate failed on a user broadcast")

    # --- membership rules -------------------------------------------------

    def _insert(self, node: _NodeState) -> None:
        # A random position keeps the detection bound low on average
        # (memberlist: append, then swap with a random offset).
        nodes = self._nodes
        n = len(nodes)
        offset = self._rng.randrange(n) if n else 0
        nodes.append(node)
        nodes[offset], nodes[n] = nodes[n], nodes[offset]
        self._node_map[node.node] = node

    def _alive_node(self, alive: Alive, verified_move: bool = False) -> None:
        """
        memberlist's C{aliveNode}.  C{verified_move} takes a newer claim of
        a live member's id at another address once its old address was
        found not to answer as that member (L{_check_old_address}).
        """
        state = self._node_map.get(alive.node)
        if (
            state is not None
            and alive.incarnation <= state.incarnation
            and state is not self._me
            and alive.addr == state.addr
        ):
            # Old news, the bulk of what gossip brings: settle it early.
            if state.state == _DEAD:
                self._tell_dead(state)
            return
        if self._left and alive.node == self.node_id:
            return
        now = self._clock.seconds()
        is_new = state is None
        updates_address = False
        if state is None:
            state = _NodeState(alive.node, alive.addr, alive.meta, alive.incarnation, _DEAD, now)
            self._insert(state)
        elif alive.addr != state.addr:
            reclaimable = state.state == _LEFT or (
                state.state == _DEAD
                and now - state.state_change >= self.config.dead_node_reclaim_time
            )
            if not reclaimable and not verified_move:
                self.stats.conflicts += 1
                claim = self._claims.get(alive.node)
                if claim is None or claim.incarnation < alive.incarnation:
                    self._claims[alive.node] = alive
                    if alive.incarnation > state.incarnation and state is not self._me:
                        # A newer claim from elsewhere: most likely the
                        # node restarted at a new address and the old
                        # process is gone.  Ask the old address now rather
                        # than wait for it to be found dead.
                        self._check_old_address(alive.node, state.addr)
                self._log.warn(
                    "conflicting address for {node}: mine {mine}, theirs {theirs} "
                    "(state {state})",
                    node=alive.node,
                    mine=str(state.addr),
                    theirs=str(alive.addr),
                    state=state.state.name,
                )
                return
            self._log.info(
                "updating address for {state} node {node} from {old} to {new}",
                state=state.state.name.lower(),
                node=alive.node,
                old=str(state.addr),
                new=str(alive.addr),
            )
            updates_address = True

        is_local = state is self._me
        if not is_new:
            if alive.incarnation <= state.incarnation and not is_local and not updates_address:
                if state.state == _DEAD and alive.addr == state.addr:
                    self._tell_dead(state)
                return
            if alive.incarnation < state.incarnation and is_local:
                return

        self._cancel_suspicion(alive.node)
        old_state = state.state
        old_meta = state.meta

        if is_local:
            # Same incarnation and same meta is an echo of our own news;
            # anything else (a higher incarnation from our previous life, or
            # other meta at ours) must be beaten.
            if alive.incarnation == state.incarnation and alive.meta == state.meta:
                return
            self._refute(state, alive.incarnation)
            self._log.warn(
                "refuting an alive message about this node at incarnation {incarnation}",
                incarnation=alive.incarnation,
            )
            return

        self._broadcast(alive.node, alive)
        claim = self._claims.get(alive.node)
        if claim is not None and (updates_address or alive.incarnation >= claim.incarnation):
            # The member moved, or said something newer where it is: the
            # claim is old news and must not be taken later.
            del self._claims[alive.node]
        self._failed.pop(alive.node, None)
        self._told_dead.pop(alive.node, None)
        state.incarnation = alive.incarnation
        state.meta = alive.meta
        state.addr = alive.addr
        if state.state != _ALIVE:
            state.state = _ALIVE
            state.state_change = now

        if is_new or old_state >= _DEAD:
            self._log.info("member {node} joined at {addr}", node=alive.node, addr=str(alive.addr))
            self._notify("member_joined", state)
        else:
            if old_state == _SUSPECT:
                self._log.info("member {node} is alive again", node=alive.node)
                self._notify("member_alive", state)
            if old_meta != state.meta or updates_address:
                self._notify("member_updated", state)

    def _check_old_address(self, node: str, old: Address) -> None:
        """
        A member's id is claimed at a new address with a newer incarnation
        while its entry here is alive at C{old}: ask C{old} over the stream.
        If no process answers there as that member (refused, silent, or
        another node), the member moved: take the claim at once.  If one
        does, two processes claim the id; the conflict stands, as in
        memberlist.  Without stream pings, probe it first instead.
        """
        if not self.config.stream_ping:
            self.probe_soon(node)
            return
        if node in self._claim_checks:
            return
        d = self._transport.stream_ping(node, old)
        self._claim_checks[node] = d
        self._exchanges.add(d)

        def checked(outcome: object) -> None:
            self._exchanges.discard(d)
            self._claim_checks.pop(node, None)
            state = self._node_map.get(node)
            claim = self._claims.get(node)
            if (
                self._stopped
                or state is None
                or claim is None
                or state.addr != old
                or claim.incarnation <= state.incarnation
            ):
                return
            if outcome is StreamPing.ANSWERED:
                self._log.warn(
                    "two processes claim node id {node}: at {old}, which answers, and at {new}",
                    node=node,
                    old=str(old),
                    new=str(claim.addr),
                )
                return
            if state.state >= _DEAD:
                return
            self._log.info(
                "{node} no longer answers at {old}: it moved to {new}",
                node=node,
                old=str(old),
                new=str(claim.addr),
            )
            del self._claims[node]
            self._alive_node(claim, verified_move=True)

        d.addCallbacks(checked, _swallow)

    def _suspect_node(self, suspect: Suspect, refused: bool = False) -> None:
        """
        memberlist's C{suspectNode}.  C{refused} is set when this node's own
        probe found the target's host refusing the stream: then the
        suspicion lasts one probe interval, not Lifeguard's min..max (the
        Caxton extension described in the module docstring).
        """
        state = self._node_map.get(suspect.node)
        if state is None:
            return
        if suspect.incarnation < state.incarnation:
            if state is self._me:
                self._stale_accusation()
            return

        suspicion = self._suspicions.get(suspect.node)
        if suspicion is not None:
            # A confirmation that is new to us is gossiped on, so
            # independent confirmations flow even when a node probes a
            # member that is already suspect.
            if self._confirm(suspect.node, suspicion, suspect.sender):
                self._broadcast(suspect.node, suspect)
            return

        if state.state != _ALIVE:
            return

        if state is self._me:
            self._refute(state, suspect.incarnation)
            self._log.warn(
                "refuting a suspect message from {sender}", sender=suspect.sender
            )
            return

        self._broadcast(suspect.node, suspect)
        now = self._clock.seconds()
        self.stats.suspicions += 1
        state.incarnation = suspect.incarnation
        state.state = _SUSPECT
        state.state_change = now

        n = self._num_nodes()
        k = expected_confirmations(self.config, n)
        low, high = suspicion_bounds(self.config, n)
        if refused:
            # No process listens where the member was: give it one probe
            # interval to refute (the buddy system tells it at once), and
            # let no confirmation lengthen that.
            low = high = min(low, self.config.probe_interval)
        suspicion = _Suspicion(k, low, high, now, suspect.sender, now)
        suspicion.timer = self._clock.callLater(
            high if k >= 1 else low, self._suspicion_timeout, suspect.node, suspicion
        )
        self._suspicions[suspect.node] = suspicion
        self._log.info(
            "member {node} suspected by {reporter}", node=suspect.node, reporter=suspect.sender
        )
        self._notify("member_suspected", state)

    def _confirm(self, node: str, suspicion: _Suspicion, sender: str) -> bool:
        if suspicion.n >= suspicion.k or sender in suspicion.confirmations:
            return False
        suspicion.confirmations.add(sender)
        suspicion.n += 1
        now = self._clock.seconds()
        remaining = remaining_suspicion_time(
            suspicion.n, suspicion.k, now - suspicion.start, suspicion.low, suspicion.high
        )
        _cancel(suspicion.timer)
        # Even an expired timer goes through callLater, so the confirmation
        # is gossiped before the death that replaces it in the queue.
        suspicion.timer = self._clock.callLater(
            max(0.0, remaining), self._suspicion_timeout, node, suspicion
        )
        return True

    def _suspicion_timeout(self, node: str, suspicion: _Suspicion) -> None:
        if self._suspicions.get(node) is not suspicion:
            return
        del self._suspicions[node]
        state = self._node_map.get(node)
        if (
            state is None
            or state.state != _SUSPECT
            or state.state_change != suspicion.state_change
        ):
            return
        if suspicion.k > 0 and suspicion.n < suspicion.k:
            self.stats.degraded_timeouts += 1
        self._log.info(
            "marking {node} as failed, suspect timeout reached "
            "({confirmations} peer confirmations)",
            node=node,
            confirmations=suspicion.n,
        )
        self._dead_node(Dead(state.incarnation, node, self.node_id))

    def _cancel_suspicion(self, node: str) -> None:
        suspicion = self._suspicions.pop(node, None)
        if suspicion is not None:
            _cancel(suspicion.timer)

    def _dead_node(self, dead: Dead) -> None:
        state = self._node_map.get(dead.node)
        if state is None:
            return
        if dead.incarnation < state.incarnation:
            if state is self._me and not self._left:
                self._stale_accusation()
            return
        self._cancel_suspicion(dead.node)
        if state.state >= _DEAD:
            return
        if state is self._me:
            if not self._left:
                self._refute(state, dead.incarnation)
                self._log.warn("refuting a dead message from {sender}", sender=dead.sender)
                return
            self._broadcast(dead.node, dead, self._leave_broadcast_finished)
        else:
            self._broadcast(dead.node, dead)

        state.incarnation = dead.incarnation
        state.state_change = self._clock.seconds()
        if dead.node == dead.sender:
            state.state = _LEFT
            if state is not self._me:
                self.stats.leaves += 1
                self._log.info("member {node} left", node=dead.node)
                self._notify("member_left", state)
        else:
            state.state = _DEAD
            self._failed[dead.node] = (state.addr, state.state_change)
            self.stats.deaths += 1
            self._log.info(
                "member {node} declared dead by {reporter}", node=dead.node, reporter=dead.sender
            )
            self._notify("member_failed", state)
        if dead.node in self._claims:
            delay = 0.0 if state.state == _LEFT else self.config.dead_node_reclaim_time
            if delay <= 0:
                self._apply_claim(dead.node)
            else:
                _cancel(self._claim_calls.get(dead.node))
                self._claim_calls[dead.node] = self._clock.callLater(
                    delay, self._apply_claim, dead.node
                )

    def _apply_claim(self, node: str) -> None:
        self._claim_calls.pop(node, None)
        claim = self._claims.pop(node, None)
        state = self._node_map.get(node)
        if (
            claim is not None
            and state is not None
            and state.state >= _DEAD
            and claim.incarnation > state.incarnation
        ):
            self._log.info(
                "taking {node} back at {addr}, where it claimed its name while its old "
                "entry was alive",
                node=node,
                addr=str(claim.addr),
            )
            self._alive_node(claim)

    def _tell_dead(self, state: _NodeState) -> None:
        # At most once per probe interval per member: stale alive messages
        # come in bursts (gossip, push-pull).
        now = self._clock.seconds()
        last = self._told_dead.get(state.node)
        if last is not None and now - last < self.config.probe_interval:
            return
        self._told_dead[state.node] = now
        self._send(state.addr, [Dead(state.incarnation, state.node, self.node_id)])

    def _refute(self, me: _NodeState, accused: int) -> None:
        incarnation = max(me.incarnation, accused) + 1
        if incarnation > MAX_UINT32:
            # Cannot beat the accusation: the incarnation space is spent.
            self._log.error("incarnation numbers exhausted; cannot refute")
            incarnation = MAX_UINT32
        me.incarnation = incarnation
        self.stats.refutations += 1
        self._apply_awareness(1)
        self._broadcast(me.node, Alive(incarnation, me.node, me.addr, me.meta))

    def _stale_accusation(self) -> None:
        # Someone still holds an older incarnation of us (we restarted with
        # a higher one, or our refutation missed them): repeat our alive
        # message unless it is already on its way.
        me = self._me
        if me.node not in self._queue:
            self._broadcast(me.node, Alive(me.incarnation, me.node, me.addr, me.meta))

    # --- dissemination ------------------------------------------------------

    def _num_nodes(self) -> int:
        return len(self._nodes)

    def _broadcast(
        self, key: Hashable, message: Message, finished: Optional[Callable[[bool], None]] = None
    ) -> None:
        self._queue.queue(key, message, message_size(message), finished)

    def _send(self, addr: Address, messages: List[Message]) -> None:
        # Piggyback whatever news fits in the rest of the packet.
        if self._queue:
            free = self._budget
            for message in messages:
                free -= message_size(message)
            if free > 0:
                messages = messages + self._queue.get_broadcasts(
                    0, free, MAX_MESSAGES - len(messages)
                )
        self._send_packet(addr, messages)

    def _send_packet(self, addr: Address, messages: List[Message]) -> None:
        packet = encode_packet(messages)
        stats = self.stats
        stats.packets_sent += 1
        stats.bytes_sent += len(packet)
        try:
            self._transport.send_packet(addr, packet)
        except Exception:
            self._log.failure("sending a packet to {addr}", addr=str(addr))

    def _gossip_tick(self) -> None:
        self._gossip_call = None
        if not self._running:
            return
        self._gossip_call = self._clock.callLater(self.config.gossip_interval, self._gossip_tick)
        if not self._queue:
            return
        now = self._clock.seconds()
        me = self._me
        to_the_dead = self.config.gossip_to_the_dead_time

        def accept(n: _NodeState) -> bool:
            if n is me:
                return False
            if n.state <= _SUSPECT:
                return True
            return n.state == _DEAD and now - n.state_change <= to_the_dead

        for peer in self._k_random(self.config.gossip_nodes, accept):
            messages = self._queue.get_broadcasts(0, self._budget, MAX_MESSAGES)
            if not messages:
                return
            self.stats.gossip_packets += 1
            self._send_packet(peer.addr, messages)

    # --- push-pull ------------------------------------------------------------

    def _local_state(self, join: bool) -> PushPull:
        members = tuple(
            MemberState(n.node, n.addr, n.incarnation, n.state, n.meta) for n in self._nodes
        )
        user_state = b""
        if self._delegate is not None:
            try:
                user_state = self._delegate.local_state(join)
            except Exception:
                self._log.failure("delegate failed to give its local state")
        return PushPull(join, members, user_state)

    def _merge_state(self, remote: PushPull) -> None:
        # memberlist's mergeState: a peer's dead is only a suspicion here
        # (we check for ourselves); a left member is left.
        for r in remote.members:
            try:
                if r.state == _ALIVE:
                    self._alive_node(Alive(r.incarnation, r.node, r.addr, r.meta))
                elif r.state == _LEFT:
                    self._dead_node(Dead(r.incarnation, r.node, r.node))
                else:
                    self._suspect_node(Suspect(r.incarnation, r.node, self.node_id))
            except Exception:
                self._log.failure("merging {member}", member=r.node)
        if remote.user_state and self._delegate is not None:
            try:
                self._delegate.merge_remote_state(remote.user_state, remote.join)
            except Exception:
                self._log.failure("delegate failed to merge remote state")

    def _push_pull_with(self, node: Optional[str], addr: Address, join: bool) -> Deferred:
        """
        One exchange; fires with whether it succeeded, never fails.
        """
        state = encode_push_pull(self._local_state(join))
        try:
            d = self._transport.push_pull(node, addr, state)
        except Exception:
            self._log.failure("starting a push-pull with {addr}", addr=str(addr))
            self.stats.push_pull_failures += 1
            return succeed(False)
        self._exchanges.add(d)
        d.addTimeout(self.config.tcp_timeout, self._clock)

        def received(data: bytes) -> bool:
            self._exchanges.discard(d)
            if self._stopped:
                return False
            try:
                remote = decode_push_pull(data)
            except CodecError as e:
                self.stats.push_pull_failures += 1
                self._log.warn("bad push-pull answer from {addr}: {error}", addr=str(addr), error=str(e))
                return False
            self.stats.push_pulls += 1
            self._merge_state(remote)
            return True

        def failed(failure: Failure) -> bool:
            self._exchanges.discard(d)
            self.stats.push_pull_failures += 1
            self._log.info(
                "push-pull with {addr} failed: {error}",
                addr=str(addr),
                error=failure.getErrorMessage(),
            )
            return False

        d.addCallbacks(received, failed)
        return d

    def _push_pull_tick(self) -> None:
        self._push_pull_call = None
        if not self._running:
            return
        me = self._me
        peers = self._k_random(1, lambda n: n is not me and n.state == _ALIVE)
        if peers:
            self._push_pull_with(peers[0].node, peers[0].addr, False)
        if self._running:
            self._push_pull_call = self._clock.callLater(
                push_pull_scale(self.config.push_pull_interval, self._num_nodes()),
                self._push_pull_tick,
            )

    def _reconnect_tick(self) -> None:
        self._reconnect_call = None
        if not self._running:
            return
        self._reconnect_call = self._clock.callLater(
            self.config.reconnect_interval, self._reconnect_tick
        )
        if not self._failed:
            return
        now = self._clock.seconds()
        timeout = self.config.reconnect_timeout
        for node, (_, since) in list(self._failed.items()):
            if now - since > timeout:
                del self._failed[node]
                self._told_dead.pop(node, None)
        if not self._failed:
            return
        # Serf's odds: failed / alive, so that the cluster as a whole tries
        # each failed member about once per interval.
        others = sum(1 for n in self._nodes if n.state <= _SUSPECT and n is not self._me)
        if others and self._rng.random() > len(self._failed) / others:
            return
        node = self._rng.choice(sorted(self._failed))
        addr, _ = self._failed[node]
        self._log.debug("trying to reconnect to failed member {node}", node=node)
        self._push_pull_with(node, addr, False)

    # --- leave and listeners ------------------------------------------------

    def _leave_broadcast_finished(self, sent: bool) -> None:
        # Called from deep inside sending a packet: whoever waits on the
        # leave may stop this node, so they hear of it from a fresh stack.
        d, self._leave_d = self._leave_d, None
        _cancel(self._leave_call)
        self._leave_call = None
        if d is not None:
            self._leave_d = d
            self._leave_sent = True
            self._leave_call = self._clock.callLater(0, self._fire_leave, True)

    def _leave_timed_out(self) -> None:
        self._leave_call = None
        self._log.warn("timed out waiting for the leave broadcast to go out")
        self._fire_leave(False)

    def _fire_leave(self, result: bool) -> None:
        d, self._leave_d = self._leave_d, None
        _cancel(self._leave_call)
        self._leave_call = None
        if d is not None:
            d.callback(result or self._leave_sent)

    def _notify(self, event: str, state: _NodeState) -> None:
        if not self._listeners or state is self._me:
            return
        member = state.snapshot()
        for listener in list(self._listeners):
            try:
                getattr(listener, event)(member)
            except Exception:
                self._log.failure("membership listener failed on {event}", event=event)


def _cancel(call: Any) -> None:
    if call is not None and call.active():
        call.cancel()


__all__: Iterable[str] = ["Member", "Membership", "SwimStats"]
