# -*- test-case-name: tests.test_registry -*-
"""
The agent registry: which node hosts which agent, learned by gossip
(SPEC 5.2).

Each node owns the entries of its own agents.  It publishes a new entry
whenever one of its agents changes (deployed, updated, stopped, failed) and
a tombstone when one is removed; the news rides SWIM's broadcasts
(L{caxton.swim.messages.User}) and, in full, every push-pull exchange.

Entries are versioned by C{(epoch, seq)}: the owner's start time and a
counter, so news from a restarted owner beats whatever was said before the
restart, and stale news loses wherever it arrives.  Removal leaves a
tombstone (kept for L{TOMBSTONE_TTL}) so a late copy of the old entry
cannot bring the agent back.

Entries of a member that is dead or left are withdrawn: hidden from every
query, and not re-learned from peers that have not heard of the death yet.
They come back if the member does (a refuted false alarm), and are
superseded by its fresh entries when it restarts.  A node that hears of
entries it owns but does not know (its data directory was wiped, say)
answers with tombstones, so they disappear everywhere.

The registry is sans-I/O: it is given a clock and a function that queues a
broadcast, and implements L{IMembershipDelegate} and
L{IMembershipListener} for the SWIM core.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import attr
from twisted.logger import Logger
from zope.interface import implementer

from caxton.swim.interfaces import IMembershipDelegate, IMembershipListener

log = Logger()

#: How long a removal is remembered, in seconds.
TOMBSTONE_TTL = 24 * 3600.0

#: A user broadcast carrying registry entries starts with this byte.
ENTRIES = b"R"

#: Largest entry sent by broadcast; bigger ones travel in push-pull only
#: (a datagram holds 1400 bytes with everything else).
MAX_BROADCAST = 1000

#: Most entries merged from one push-pull exchange.
MAX_REMOTE_ENTRIES = 200_000


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Entry:
    """
    One agent as the cluster knows it.

    @ivar name: the agent's name.
    @ivar node: the node that hosts it (and owns this entry).
    @ivar epoch: the owner's start time in milliseconds.
    @ivar seq: the owner's counter within that epoch.
    @ivar version: the agent's deployment version.
    @ivar status: the agent's status (C{running}, C{stopped}, ...).
    @ivar capabilities: what it offers.
    @ivar removed: a tombstone.
    @ivar module: the SHA-256 of a relocatable agent's module (peers keep
        a copy of it, to restart the agent if its node dies), else C{""}.
    @ivar moves: how many times a relocatable agent was restarted on
        another node; the entry that moved most wins (L{winner}).
    @ivar seen_at: when this node learned it (local time; not sent).
    """

    name: str
    node: str
    epoch: int
    seq: int
    version: int = 0
    status: str = "running"
    capabilities: Tuple[str, ...] = ()
    removed: bool = False
    module: str = ""
    moves: int = 0
    seen_at: float = attr.ib(default=0.0, eq=False)

    @property
    def key(self) -> Tuple[str, str]:
        """
        Entries are kept per owner and name.
        """
        return (self.node, self.name)

    @property
    def stamp(self) -> Tuple[int, int]:
        """
        The entry's order among news about the same key.
        """
        return (self.epoch, self.seq)

    def to_json(self) -> List[Any]:
        """
        The compact form sent on the wire.
        """
        fields = [
            self.name,
            self.node,
            self.epoch,
            self.seq,
            self.version,
            self.status,
            list(self.capabilities),
            1 if self.removed else 0,
        ]
        if self.module:
            fields += [self.module, self.moves]
        return fields

    @classmethod
    def from_json(cls, value: Any, now: float) -> "Entry":
        """
        Read one entry; C{ValueError} when it is malformed.
        """
        if not isinstance(value, list) or len(value) not in (8, 10):
            raise ValueError("an entry is a list of 8 fields (10 for a relocatable agent)")
        name, node, epoch, seq, version, status, capabilities, removed = value[:8]
        module, moves = value[8:] if len(value) == 10 else ("", 0)
        if not isinstance(module, str) or not (module == "" or len(module) == 64):
            raise ValueError("module must be a SHA-256 hex digest")
        if not isinstance(moves, int) or isinstance(moves, bool) or not 0 <= moves < 2**31:
            raise ValueError("moves must be a non-negative integer")
        strings = (name, node, status)
        if not all(isinstance(s, str) and 0 < len(s) <= 256 for s in strings):
            raise ValueError("name, node and status must be short strings")
        numbers = (epoch, seq, version)
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**63 for n in numbers):
            raise ValueError("epoch, seq and version must be non-negative integers")
        if not isinstance(capabilities, list) or len(capabilities) > 64:
            raise ValueError("capabilities must be a list of at most 64 strings")
        if not all(isinstance(c, str) and 0 < len(c) <= 256 for c in capabilities):
            raise ValueError("capabilities must be short strings")
        if removed not in (0, 1):
            raise ValueError("removed must be 0 or 1")
        return cls(
            name=name,
            node=node,
            epoch=epoch,
            seq=seq,
            version=version,
            status=status,
            capabilities=tuple(capabilities),
            removed=bool(removed),
            module=module,
            moves=moves,
            seen_at=now,
        )


def winner(entries: Iterable[Entry]) -> Entry:
    """
    The one of several live entries for one name that messages go to
    (two nodes host an agent of that name after a partition healed, or a
    relocated agent's old node came back): the one that was relocated
    most, then the one whose node id sorts first.  Every node applies the
    same rule to the same entries, so all send to the same agent.
    """
    return min(entries, key=lambda e: (-e.moves, e.node))


def encode_entries(entries: Iterable[Entry]) -> bytes:
    """
    Entries as the bytes of a broadcast or a push-pull state.
    """
    body = json.dumps([e.to_json() for e in entries], separators=(",", ":"), ensure_ascii=False)
    return ENTRIES + body.encode("utf-8")


def decode_entries(data: bytes, now: float, limit: int = MAX_REMOTE_ENTRIES) -> List[Entry]:
    """
    Read entries; C{ValueError} for anything malformed.
    """
    if not data.startswith(ENTRIES):
        raise ValueError("not registry entries")
    try:
        values = json.loads(data[len(ENTRIES):].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"malformed entries: {e}")
    if not isinstance(values, list) or len(values) > limit:
        raise ValueError("entries must be a list of bounded length")
    return [Entry.from_json(v, now) for v in values]


@implementer(IMembershipDelegate, IMembershipListener)
class Registry:
    """
    This node's view of which agent runs where.

    @param node_id: this node's id.
    @param epoch: this node's start time in milliseconds (orders its news
        after whatever it said before a restart).
    @param clock: C{seconds()} for tombstone expiry.
    @param broadcast: queues a user broadcast, C{broadcast(key, payload)};
        a newer broadcast under the same key replaces a queued one.
    """

    def __init__(
        self,
        node_id: str,
        epoch: int,
        clock: Any,
        broadcast: Callable[[str, bytes], None],
        tombstone_ttl: float = TOMBSTONE_TTL,
    ) -> None:
        self.node_id = node_id
        self.epoch = epoch
        self._clock = clock
        self._broadcast = broadcast
        self._tombstone_ttl = tombstone_ttl
        self._seq = 0
        self._entries: Dict[Tuple[str, str], Entry] = {}
        # The nodes with an entry for each name: routing looks names up on
        # every message for another node.
        self._nodes_of: Dict[str, Set[str]] = {}
        # Members known dead or left, and since when: their entries are
        # withdrawn, and forgotten after the tombstone TTL.
        self._gone: Dict[str, float] = {}
        # Of those, the members that failed rather than left: their agents
        # are expected back, and messages for them wait.
        self._failed: Set[str] = set()
        self.observers: List[Callable[[Entry], None]] = []

    # This node's agents ---------------------------------------------------------

    def _next(self, name: str, **fields: Any) -> Entry:
        self._seq += 1
        entry = Entry(
            name=name,
            node=self.node_id,
            epoch=self.epoch,
            seq=self._seq,
            seen_at=self._clock.seconds(),
            **fields,
        )
        self._store(entry)
        if not self._spread(entry):
            log.info(
                "registry entry for {agent} is too big to broadcast; it spreads by push-pull",
                agent=name,
            )
        return entry

    def _spread(self, entry: Entry) -> bool:
        """
        Broadcast C{entry}, under a key per agent so newer news replaces
        older in the queue; False if it is too big (push-pull carries it).
        """
        payload = encode_entries([entry])
        if len(payload) > MAX_BROADCAST:
            return False
        self._broadcast(f"agent/{entry.node}/{entry.name}", payload)
        return True

    def publish(
        self,
        name: str,
        version: int,
        status: str,
        capabilities: Iterable[str],
        module: str = "",
        moves: int = 0,
    ) -> Entry:
        """
        Announce one of this node's agents as it is now (with its module's
        hash when it is relocatable).
        """
        return self._next(
            name,
            version=version,
            status=status,
            capabilities=tuple(capabilities),
            module=module,
            moves=moves,
        )

    def withdraw(self, name: str) -> Entry:
        """
        Announce that one of this node's agents was removed.
        """
        return self._next(name, removed=True)

    # Queries ----------------------------------------------------------------------

    def entries(self, node: Optional[str] = None) -> List[Entry]:
        """
        The agents the cluster has, by name then node, without tombstones
        or the agents of members that are gone.
        """
        found = [
            e
            for e in self._entries.values()
            if not e.removed and e.node not in self._gone and (node is None or e.node == node)
        ]
        return sorted(found, key=lambda e: (e.name, e.node))

    def lookup(self, name: str) -> List[Entry]:
        """
        The live entries for agent C{name} (more than one if two nodes host
        an agent of that name), by node.
        """
        found = []
        for node in sorted(self._nodes_of.get(name, ())):
            entry = self._entries[(node, name)]
            if not entry.removed and node not in self._gone:
                found.append(entry)
        return found

    def home(self, name: str) -> Optional[str]:
        """
        Where messages for agent C{name} go: the node hosting it (by
        L{winner} when two do), or, when its node failed (not left), that
        node, where messages wait for it to come back; else C{None}.
        """
        live = self.lookup(name)
        if live:
            return winner(live).node
        for node in sorted(self._nodes_of.get(name, ())):
            if node in self._failed and not self._entries[(node, name)].removed:
                return node
        return None

    def failed(self, node: str) -> bool:
        """
        Whether C{node} was declared dead (not left) and has not come back.
        """
        return node in self._failed

    def offering(self, capability: str) -> List[Entry]:
        """
        The live entries of agents offering C{capability}.
        """
        return [e for e in self.entries() if capability in e.capabilities]

    def count(self) -> int:
        """
        How many agents the cluster has.
        """
        return len(self.entries())

    # Merging news ------------------------------------------------------------------

    def _store(self, entry: Entry) -> None:
        self._entries[entry.key] = entry
        self._nodes_of.setdefault(entry.name, set()).add(entry.node)
        for observer in self.observers:
            observer(entry)

    def _merge(self, entries: Iterable[Entry], relay: bool = False) -> int:
        """
        Keep what is newer than what we know; answer stale news about our
        own agents with tombstones.  Returns how many entries changed.

        @param relay: pass news that was new to us on by broadcast, as SWIM
            passes on membership news (infection-style dissemination: the
            owner's own broadcasts alone reach only a few nodes).
        """
        changed = 0
        for entry in entries:
            if entry.node == self.node_id:
                self._own_news(entry)
                continue
            if entry.node in self._gone:
                # Do not re-learn a dead member's agents from a peer that
                # has not heard of the death yet.
                continue
            known = self._entries.get(entry.key)
            if known is not None and known.stamp >= entry.stamp:
                continue
            self._store(entry)
            changed += 1
            if relay:
                self._spread(entry)
        return changed

    def _own_news(self, entry: Entry) -> None:
        known = self._entries.get(entry.key)
        if known is not None and known.stamp >= entry.stamp:
            return
        if entry.removed:
            return
        # Someone believes we host an agent we do not know at this version:
        # news from before a restart (the agent is gone, or the data dir
        # was wiped).  Say it is gone; if the agent exists, our manager
        # republishes it with a newer stamp anyway.
        if known is None or known.removed:
            log.info(
                "peers list agent {agent} on this node, which does not host it: withdrawing",
                agent=entry.name,
            )
            self._seq = max(self._seq, entry.seq if entry.epoch == self.epoch else 0)
            self.withdraw(entry.name)

    def expire(self) -> int:
        """
        Forget tombstones older than the tombstone TTL, and the entries of
        members gone for that long; returns how many entries went.
        """
        horizon = self._clock.seconds() - self._tombstone_ttl
        forgotten = {node for node, since in self._gone.items() if since < horizon}
        old = [
            k
            for k, e in self._entries.items()
            if (e.removed and e.seen_at < horizon) or e.node in forgotten
        ]
        for key in old:
            del self._entries[key]
            node, name = key
            nodes = self._nodes_of.get(name)
            if nodes is not None:
                nodes.discard(node)
                if not nodes:
                    del self._nodes_of[name]
        for node in forgotten:
            del self._gone[node]
            self._failed.discard(node)
        return len(old)

    # IMembershipDelegate -----------------------------------------------------------

    def local_state(self, join: bool) -> bytes:
        """
        Every entry we know, tombstones included, except those of members
        that are gone.
        """
        return encode_entries(e for e in self._entries.values() if e.node not in self._gone)

    def merge_remote_state(self, data: bytes, join: bool) -> None:
        """
        Merge a peer's entries from push-pull; drop malformed state.
        """
        if not data:
            return
        try:
            entries = decode_entries(data, self._clock.seconds())
        except ValueError as e:
            log.warn("dropped a malformed registry state: {error}", error=str(e))
            return
        self._merge(entries)

    def notify_user(self, payload: bytes) -> None:
        """
        Merge entries from a broadcast; drop malformed ones.
        """
        try:
            entries = decode_entries(payload, self._clock.seconds(), limit=64)
        except ValueError as e:
            log.debug("dropped a malformed registry broadcast: {error}", error=str(e))
            return
        self._merge(entries, relay=True)

    # IMembershipListener -----------------------------------------------------------

    def member_joined(self, member: Any) -> None:
        """
        A member (re)appeared: its entries count again.
        """
        self._gone.pop(member.node, None)
        self._failed.discard(member.node)

    def member_updated(self, member: Any) -> None:
        """
        Nothing to do: entries do not depend on addresses.
        """

    def member_suspected(self, member: Any) -> None:
        """
        A suspect keeps its entries until it is declared dead.
        """

    def member_alive(self, member: Any) -> None:
        """
        A refuted suspicion changes nothing.
        """
        self._gone.pop(member.node, None)
        self._failed.discard(member.node)

    def member_failed(self, member: Any) -> None:
        """
        A dead member's agents are withdrawn (and remembered as its, for
        messages that wait for it).
        """
        if member.node != self.node_id:
            self._failed.add(member.node)
        self._withdraw_member(member.node, "failed")

    def member_left(self, member: Any) -> None:
        """
        A member that left takes its agents with it.
        """
        self._failed.discard(member.node)
        self._withdraw_member(member.node, "left")

    def _withdraw_member(self, node: str, why: str) -> None:
        if node == self.node_id:
            return
        self._gone.setdefault(node, self._clock.seconds())
        count = sum(1 for e in self._entries.values() if e.node == node and not e.removed)
        if count:
            log.info(
                "withdrew {count} agents of {node} ({why})", count=count, node=node, why=why
            )
