# -*- test-case-name: tests.test_swim_queue -*-
"""
The broadcast queue: memberlist's C{TransmitLimitedQueue}.

Membership news (and the application's user broadcasts) wait here to be
piggybacked on probes and sent by the gossip timer.  The queue hands out
the least-sent broadcasts first, the largest first among equally-sent ones
and the newest first among equally large ones (memberlist orders its btree
by transmits ascending, length descending, id descending), so fresh news
spreads before old news is repeated.  A broadcast is dropped once it has
been sent L{caxton.swim.config.retransmit_limit} times, and a new broadcast
with the same key (news about the same node) replaces a queued one.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

from caxton.swim.config import retransmit_limit

#: Told C{True} when a broadcast was sent its full count, C{False} when it
#: was replaced, pruned or dropped before that.
FinishedCallback = Callable[[bool], None]

# Smaller than any (negated) id in a tier, for bisecting by size alone.
_BEFORE_ANY = float("-inf")


class _Queued:
    """
    One broadcast in the queue, with its transmit count.
    """

    __slots__ = ("broadcast_id", "key", "message", "size", "transmits", "finished", "order")

    def __init__(
        self,
        broadcast_id: int,
        key: Hashable,
        message: Any,
        size: int,
        finished: Optional[FinishedCallback],
    ) -> None:
        self.broadcast_id = broadcast_id
        self.key = key
        self.message = message
        self.size = size
        self.transmits = 0
        self.finished = finished
        # The order within a transmit tier: largest first, then newest.
        self.order: Tuple[int, int] = (-size, -broadcast_id)


class TransmitLimitedQueue:
    """
    Broadcasts waiting to be sent, each at most a bounded number of times.

    @param retransmit_mult: the limit is
        C{retransmit_mult * ceil(log10(n + 1))} for the current cluster size.
    @param num_nodes: returns the current cluster size estimate C{n}.
    """

    def __init__(self, retransmit_mult: int, num_nodes: Callable[[], int]) -> None:
        self._retransmit_mult = retransmit_mult
        self._num_nodes = num_nodes
        self._next_id = 0
        self._by_key: Dict[Hashable, _Queued] = {}
        self._by_id: Dict[int, _Queued] = {}
        # transmits -> sorted list of the tier's orders.  Sorted lists with
        # bisect stand in for memberlist's btree: a packet takes the first
        # broadcast of a tier that still fits in logarithmic time.
        self._tiers: Dict[int, List[Tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def transmit_limit(self) -> int:
        """
        How many times a broadcast is sent at the current cluster size.
        """
        return retransmit_limit(self._retransmit_mult, self._num_nodes())

    def queue(
        self,
        key: Hashable,
        message: Any,
        size: int,
        finished: Optional[FinishedCallback] = None,
    ) -> None:
        """
        Queue C{message} (C{size} bytes on the wire) under C{key},
        replacing any queued broadcast with the same key (its C{finished}
        is told C{False}).

        @param finished: told C{True} once the broadcast has been sent its
            full count, or C{False} if it leaves the queue earlier.
        """
        old = self._by_key.get(key)
        if old is not None:
            self._remove(old)
            self._finish(old, False)
        self._next_id += 1
        item = _Queued(self._next_id, key, message, size, finished)
        self._by_key[key] = item
        self._by_id[item.broadcast_id] = item
        insort(self._tiers.setdefault(0, []), item.order)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._by_key

    def get_broadcasts(
        self, overhead: int, limit: int, max_count: Optional[int] = None
    ) -> List[Any]:
        """
        The messages to piggyback on one packet: as many as fit in C{limit}
        bytes when each costs its size plus C{overhead}, least-sent first,
        and at most C{max_count} of them.  Each is counted as sent once;
        one that reached the transmit limit leaves the queue.
        """
        if not self._by_id or (max_count is not None and max_count <= 0):
            return []
        transmit_limit = self.transmit_limit()
        used = 0
        out: List[Any] = []
        bumped: List[_Queued] = []
        for transmits in sorted(self._tiers):
            tier = self._tiers[transmits]
            index = 0
            while index < len(tier):
                free = limit - used - overhead
                if free <= 0:
                    break
                # The first entry no larger than what is free: the tier is
                # sorted by size descending, so everything before is too big.
                index = bisect_left(tier, (-free, _BEFORE_ANY), index)
                if index >= len(tier):
                    break
                item = self._by_id[-tier[index][1]]
                del tier[index]
                used += overhead + item.size
                out.append(item.message)
                bumped.append(item)
                if len(out) == max_count:
                    break
            if limit - used - overhead <= 0 or len(out) == max_count:
                break
        done: List[_Queued] = []
        for item in bumped:
            # Reinsert after the walk, or the walk would meet it again in
            # the next tier (memberlist does the same).
            item.transmits += 1
            if item.transmits >= transmit_limit:
                self._forget(item)
                done.append(item)
            else:
                insort(self._tiers.setdefault(item.transmits, []), item.order)
        for transmits in [t for t, tier in self._tiers.items() if not tier]:
            del self._tiers[transmits]
        # Callbacks last: one may queue again, which must find the queue
        # consistent.
        for item in done:
            self._finish(item, True)
        return out

    def prune(self, max_retain: int) -> None:
        """
        Drop the most-sent broadcasts until at most C{max_retain} remain.
        """
        while len(self._by_id) > max_retain:
            worst = max(self._tiers)
            tier = self._tiers[worst]
            # The last entry of the most-sent tier: smallest and oldest.
            item = self._by_id[-tier[-1][1]]
            self._remove(item)
            self._finish(item, False)

    def reset(self) -> None:
        """
        Drop everything queued; each C{finished} is told C{False}.
        """
        items = list(self._by_id.values())
        self._by_key.clear()
        self._by_id.clear()
        self._tiers.clear()
        for item in items:
            self._finish(item, False)

    def queued(self) -> List[Tuple[Hashable, Any, int]]:
        """
        C{(key, message, transmits)} for each queued broadcast, in the
        order they would be sent.
        """
        out = []
        for transmits in sorted(self._tiers):
            for order in self._tiers[transmits]:
                item = self._by_id[-order[1]]
                out.append((item.key, item.message, item.transmits))
        return out

    def _remove(self, item: _Queued) -> None:
        tier = self._tiers[item.transmits]
        index = bisect_left(tier, item.order)
        del tier[index]
        if not tier:
            del self._tiers[item.transmits]
        self._forget(item)

    def _forget(self, item: _Queued) -> None:
        del self._by_id[item.broadcast_id]
        if self._by_key.get(item.key) is item:
            del self._by_key[item.key]

    @staticmethod
    def _finish(item: _Queued, sent: bool) -> None:
        if item.finished is not None:
            callback, item.finished = item.finished, None
            callback(sent)
