"""
Tests for L{caxton.cluster.relocation}: the rendezvous choice and the copy
format (the failover itself runs against real nodes in
L{tests.test_routing.RelocationTests}).
"""

from collections import Counter

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from caxton.cluster.registry import Entry, winner
from caxton.cluster.relocation import decode_copy, encode_copy, rendezvous

_names = st.text(min_size=1, max_size=20)


class RendezvousTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(_names, st.lists(_names, min_size=1, max_size=10, unique=True), st.randoms())
    def test_order_does_not_matter(self, name, nodes, rng) -> None:
        """
        Every node that sees the same members picks the same home, whatever
        order it lists them in.
        """
        shuffled = list(nodes)
        rng.shuffle(shuffled)
        self.assertEqual(rendezvous(name, nodes), rendezvous(name, shuffled))
        self.assertIn(rendezvous(name, nodes), nodes)

    def test_only_the_dead_nodes_agents_move(self) -> None:
        """
        Removing one node moves only the agents it was chosen for.
        """
        nodes = [f"n{i}" for i in range(5)]
        names = [f"agent-{i}" for i in range(500)]
        before = {n: rendezvous(n, nodes) for n in names}
        after = {n: rendezvous(n, nodes[1:]) for n in names}
        moved = [n for n in names if before[n] != after[n]]
        self.assertEqual({before[n] for n in moved}, {"n0"})
        spread = Counter(after.values())
        self.assertEqual(set(spread), set(nodes[1:]))
        self.assertGreater(min(spread.values()), 60)

    def test_none(self) -> None:
        self.assertIsNone(rendezvous("a", []))

    def test_winner_prefers_moved(self) -> None:
        """
        The copy that moved most wins over the old home, whatever the ids.
        """
        old = Entry("a", "n1", 1, 1, module="0" * 64, moves=0)
        new = Entry("a", "n9", 1, 1, module="0" * 64, moves=1)
        self.assertIs(winner([old, new]), new)
        self.assertIs(winner([Entry("a", "n2", 1, 1), Entry("a", "n1", 1, 1)]).node, "n1")

    def test_entry_wire(self) -> None:
        """
        A relocatable entry carries its module and moves; others keep the
        eight-field form.
        """
        entry = Entry("a", "n1", 5, 6, module="ab" * 32, moves=2)
        self.assertEqual(len(entry.to_json()), 10)
        self.assertEqual(Entry.from_json(entry.to_json(), 0.0), entry)
        plain = Entry("a", "n1", 5, 6)
        self.assertEqual(len(plain.to_json()), 8)
        for bad in (["a", "n1", 5, 6, 0, "running", [], 0, "short", 1],
                    ["a", "n1", 5, 6, 0, "running", [], 0, "ab" * 32, -1]):
            self.assertRaises(ValueError, Entry.from_json, bad, 0.0)


class CopyTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(st.dictionaries(st.text(max_size=5), st.integers()), st.binary(max_size=100))
    def test_round_trip(self, header, wasm) -> None:
        self.assertEqual(decode_copy(encode_copy(header, wasm)), (header, wasm))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=50))
    def test_garbage(self, data) -> None:
        try:
            decode_copy(data)
        except ValueError:
            pass
