"""
Tests for L{caxton.swim.queue.TransmitLimitedQueue}.
"""

from __future__ import annotations

from typing import List

from twisted.trial.unittest import SynchronousTestCase

from caxton.swim.queue import TransmitLimitedQueue


def make(n: int = 10, mult: int = 1) -> TransmitLimitedQueue:
    return TransmitLimitedQueue(mult, lambda: n)


class QueueTests(SynchronousTestCase):
    """
    memberlist's queue_test cases: ordering, invalidation, limits.
    """

    def test_order(self) -> None:
        """
        Least-sent first; among equally-sent, largest first; among equal
        sizes, newest first.
        """
        q = make(n=1000, mult=3)
        q.queue("a", "A", 10)
        q.queue("b", "B", 30)
        q.queue("c", "C", 10)
        self.assertEqual([m for _, m, _ in q.queued()], ["B", "C", "A"])
        self.assertEqual(q.get_broadcasts(0, 30), ["B"])
        # B has been sent once, so A and C come first now.
        self.assertEqual([m for _, m, _ in q.queued()], ["C", "A", "B"])

    def test_invalidation(self) -> None:
        """
        A broadcast with a queued key replaces the queued one, whose
        callback hears C{False}.
        """
        q = make()
        told: List[bool] = []
        q.queue("node-1", "old", 5, told.append)
        q.queue("node-2", "other", 5)
        q.queue("node-1", "new", 5)
        self.assertEqual(told, [False])
        self.assertEqual(sorted(m for _, m, _ in q.queued()), ["new", "other"])
        self.assertEqual(len(q), 2)
        self.assertIn("node-1", q)

    def test_transmit_limit(self) -> None:
        """
        A broadcast leaves after C{mult * ceil(log10(n + 1))} sends and its
        callback hears C{True}.
        """
        q = make(n=10, mult=2)  # limit 2 * ceil(log10 11) = 4
        self.assertEqual(q.transmit_limit(), 4)
        told: List[bool] = []
        q.queue("k", "msg", 5, told.append)
        for _ in range(3):
            self.assertEqual(q.get_broadcasts(0, 100), ["msg"])
        self.assertEqual(told, [])
        self.assertEqual(q.get_broadcasts(0, 100), ["msg"])
        self.assertEqual(told, [True])
        self.assertEqual(q.get_broadcasts(0, 100), [])
        self.assertFalse(q)

    def test_budget(self) -> None:
        """
        C{get_broadcasts} takes what fits in the limit, charging C{overhead}
        per message, and skips a large one for smaller ones that fit.
        """
        q = make(n=1000, mult=3)
        q.queue("big", "BIG", 60)
        q.queue("m1", "M1", 20)
        q.queue("m2", "M2", 20)
        q.queue("m3", "M3", 20)
        got = q.get_broadcasts(2, 50)
        # 60 never fits; two of the 20s do (2 * 22 = 44, a third would be 66).
        self.assertEqual(got, ["M3", "M2"])
        self.assertEqual(q.get_broadcasts(0, 10), [])
        self.assertEqual(q.get_broadcasts(0, 100, max_count=1), ["BIG"])

    def test_each_once_per_packet(self) -> None:
        """
        One packet never carries the same broadcast twice, even when its
        transmit count moves it to a tier still to be walked.
        """
        q = make(n=1000, mult=3)
        q.queue("a", "A", 5)
        q.queue("b", "B", 5)
        self.assertEqual(sorted(q.get_broadcasts(0, 1000)), ["A", "B"])

    def test_prune(self) -> None:
        """
        Pruning keeps the least-sent broadcasts and tells the dropped ones.
        """
        q = make(n=1000, mult=3)
        told: List[bool] = []
        q.queue("old", "OLD", 5, told.append)
        q.get_broadcasts(0, 5)
        q.queue("new", "NEW", 5)
        q.prune(1)
        self.assertEqual([m for _, m, _ in q.queued()], ["NEW"])
        self.assertEqual(told, [False])

    def test_requeue_from_callback(self) -> None:
        """
        A finished callback may queue again under its own key.
        """
        q = make(n=0, mult=1)  # limit 0: everything is sent once

        def again(sent: bool) -> None:
            if sent:
                q.queue("k", "second", 5)

        q.queue("k", "first", 5, again)
        self.assertEqual(q.get_broadcasts(0, 100), ["first"])
        self.assertEqual([m for _, m, _ in q.queued()], ["second"])

    def test_reset(self) -> None:
        """
        Reset empties the queue and tells every callback C{False}.
        """
        q = make()
        told: List[bool] = []
        q.queue("a", "A", 5, told.append)
        q.reset()
        self.assertEqual((len(q), told), (0, [False]))
