"""
Tests for L{caxton.swim.simulator}: whole clusters of real cores on a
simulated network, and the simulator's own machinery.

Every assertion is about simulated time or counts, so runs are exact
replays of their seed.
"""

from __future__ import annotations

from typing import List

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from caxton.swim.config import profile
from caxton.swim.interfaces import ISwimTransport
from caxton.swim.messages import State
from caxton.swim.simulator import SimClock, Simulation, _SimTransport


class MachineryTests(SynchronousTestCase):
    """
    The simulated clock and network.
    """

    def test_clock_runs_calls_at_their_time(self) -> None:
        """
        Each call sees the clock at its own due time, calls run in order,
        and cancelled calls do not run.
        """
        clock = SimClock()
        seen: List[tuple] = []
        clock.callLater(2.0, lambda: seen.append(("b", clock.seconds())))
        clock.callLater(1.0, lambda: seen.append(("a", clock.seconds())))
        clock.callLater(1.5, lambda: seen.append(("x", clock.seconds()))).cancel()
        clock.run_until(5.0)
        self.assertEqual(seen, [("a", 1.0), ("b", 2.0)])
        self.assertEqual(clock.seconds(), 5.0)

    def test_transport_interface(self) -> None:
        """
        The virtual network gives each node an L{ISwimTransport}.
        """
        sim = Simulation(2, join=False)
        verifyObject(ISwimTransport, _SimTransport(sim, sim.nodes[0]))

    def test_loss_and_partition_drop(self) -> None:
        """
        Total loss or a partition keeps packets from arriving; healing lets
        them through again.
        """
        sim = Simulation(2, join=False, loss=1.0)
        sim.nodes[0].membership.join([sim.nodes[1].addr])
        sim.run(5)
        self.assertEqual(sum(sim.packets_received), 0)
        sim = Simulation(4, join=False)
        sim.partition([[0, 1], [2, 3]])
        sim.nodes[0].membership.broadcast_user("k", b"x")
        sim._send(sim.nodes[0], 0, sim.nodes[2].addr, b"\x01\x00")
        sim.run(1)
        self.assertEqual(sim.packets_received[2], 0)
        sim.heal()
        sim._send(sim.nodes[0], 0, sim.nodes[2].addr, b"\x01\x00")
        sim.run(1)
        self.assertEqual(sim.packets_received[2], 1)

    def test_stall_holds_timers_and_packets(self) -> None:
        """
        A stalled node runs nothing until the stall ends, then reports the
        lag and catches up.
        """
        sim = Simulation(3, seed=1)
        self.assertIsNotNone(sim.run_until(sim.converged, 10))
        node = sim.nodes[2]
        probes = node.membership.stats.probes
        received = node.membership.stats.packets_received
        sim.stall(2, 3.0)
        sim.run(2.9)
        self.assertEqual(node.membership.stats.probes, probes)
        self.assertEqual(node.membership.stats.packets_received, received)
        self.assertNotEqual(node.held, [])
        sim.run(0.2)
        self.assertEqual(node.held, [])
        self.assertGreater(node.membership.stats.packets_received, received)
        self.assertGreaterEqual(node.membership.stats.lag_events, 1)


class ClusterTests(SynchronousTestCase):
    """
    Membership as a whole cluster experiences it.
    """

    def test_join_converges(self) -> None:
        """
        20 nodes joining through one seed at once all see all 20 alive,
        within a few simulated seconds, with no false suspicion.
        """
        sim = Simulation(20, seed=1)
        took = sim.run_until(sim.converged, 30)
        self.assertIsNotNone(took)
        self.assertLess(took, 5.0)
        self.assertEqual(sim.false_positives("suspect"), 0)

    def test_join_converges_with_loss(self) -> None:
        """
        With 10% packet loss, jitter and duplicates, 20 nodes still
        converge, and a healthy node is never declared dead.
        """
        sim = Simulation(20, seed=2, loss=0.1, delay=0.005, jitter=0.01, duplicate=0.05)
        self.assertIsNotNone(sim.run_until(sim.converged, 60))
        sim.run(60)
        self.assertEqual(sim.false_positives("dead"), 0)

    def test_killed_node_declared_dead(self) -> None:
        """
        A killed node is declared dead by every live node, and nobody
        healthy is.
        """
        sim = Simulation(10, seed=3)
        self.assertIsNotNone(sim.run_until(sim.converged, 30))
        sim.kill(4)
        took = sim.run_until(lambda: sim.all_see_dead(4), 60)
        self.assertIsNotNone(took)
        self.assertEqual(sim.fp[("dead", "healthy", "killed")], 9)
        first, last = sim.detection_latency(4)
        self.assertTrue(0 < first <= last <= took, (first, last, took))
        self.assertEqual(sim.false_positives("dead"), 0)
        self.assertTrue(all(sim.view(i)["n4"][0] == State.DEAD for i in range(10) if i != 4))

    def test_refused_detected_faster(self) -> None:
        """
        Over the same seeds, a killed process whose host refuses its stream
        (kill -9 on a live machine) is seen dead by all sooner, at the
        median, than one whose host went silent (the machine died), which
        waits out Lifeguard's suspicion timer: at least 4 s (suspicion_mult
        x 1 s).  (Not every run: a member that misses every copy of the
        death still waits out its own timer, as in memberlist.)
        """
        refused, silent = [], []
        for seed in range(9):
            for host_down, times in ((False, refused), (True, silent)):
                sim = Simulation(8, seed=100 + seed)
                self.assertIsNotNone(sim.run_until(sim.converged, 30))
                sim.kill(3, host_down=host_down)
                took = sim.run_until(lambda: sim.all_see_dead(3), 60)
                self.assertIsNotNone(took)
                self.assertEqual(sim.false_positives("dead"), 0)
                times.append(took)
        self.assertGreater(min(silent), 4.0, silent)
        self.assertLess(sorted(refused)[4] + 1.0, sorted(silent)[4], (refused, silent))

    def test_graceful_leave(self) -> None:
        """
        A node that leaves is recorded as left (not failed) everywhere.
        """
        sim = Simulation(8, seed=4)
        self.assertIsNotNone(sim.run_until(sim.converged, 30))
        d = sim.nodes[3].membership.leave(5.0)
        sim.run(3)
        self.assertTrue(self.successResultOf(d))
        self.assertTrue(all(sim.view(i)["n3"][0] == State.LEFT for i in range(8) if i != 3))
        self.assertEqual(sim.fp[("dead", "healthy", "healthy")], 0)

    def _slow_node_run(self, lifeguard: bool) -> Simulation:
        # The worst case for a stalled node: each stall catches one of its
        # probes in flight, so its timers fire before it reads the ack.
        sim = Simulation(20, seed=2, config=profile("lan", lifeguard=lifeguard), delay=0.005)
        self.assertIsNotNone(sim.run_until(sim.converged, 30))
        slow = sim.nodes[19]
        for _ in range(10):
            probes = slow.membership.stats.probes
            sim.run_until(lambda: slow.membership.stats.probes > probes, 10, step=0.001)
            sim.stall(19, 2.0)
            sim.run(4.0)
        sim.run(30)
        self.assertTrue(sim.converged())
        return sim

    def test_slow_node_lifeguard(self) -> None:
        """
        A node stalled for 2 s ten times makes healthy members suspect
        healthy members far less with Lifeguard than without, nobody
        healthy is declared dead either way, and the stalled node is never
        declared dead (SPEC 11).
        """
        guarded = self._slow_node_run(True)
        plain = self._slow_node_run(False)
        counts = {
            name: {
                "suspect@healthy": sim.false_positives("suspect", "healthy", "healthy"),
                "suspect@slow": sim.false_positives("suspect", "slow", "healthy"),
                "dead@healthy": sim.false_positives("dead", "healthy", "healthy"),
                "slow suspected": sim.false_positives("suspect", "healthy", "slow"),
                "slow dead": sim.false_positives("dead", "healthy", "slow"),
            }
            for name, sim in (("lifeguard", guarded), ("swim", plain))
        }
        print(f"\nslow-node false positives: {counts}")
        lg, swim = counts["lifeguard"], counts["swim"]
        self.assertLess(
            lg["suspect@healthy"] + lg["suspect@slow"],
            swim["suspect@healthy"] + swim["suspect@slow"],
        )
        self.assertEqual(lg["suspect@slow"], 0)
        self.assertGreater(swim["suspect@slow"], 0)
        self.assertEqual((lg["dead@healthy"], lg["slow dead"]), (0, 0))
        self.assertEqual((swim["dead@healthy"], swim["slow dead"]), (0, 0))

    def test_partition_heals(self) -> None:
        """
        Two halves split long enough to declare each other dead and reap
        them find each other again after the partition heals, and converge
        to the full membership.
        """
        sim = Simulation(20, seed=3, config=profile("lan", reconnect_interval=10.0))
        self.assertIsNotNone(sim.run_until(sim.converged, 30))
        sim.partition([range(10), range(10, 20)])

        def split() -> bool:
            return all(
                sim.sees_dead(a, b) and sim.sees_dead(b, a)
                for a in range(10)
                for b in range(10, 20)
            )

        self.assertIsNotNone(sim.run_until(split, 120, step=0.5))
        sim.run(60)  # past gossip_to_the_dead_time: the dead are reaped
        self.assertIsNone(sim.nodes[0].membership.member("n15"))
        sim.heal()
        self.assertIsNotNone(sim.run_until(sim.converged, 60, step=0.5))

    def test_mass_restart(self) -> None:
        """
        Every node restarted at once, at new addresses and with higher
        incarnations, converges again.
        """
        sim = Simulation(20, seed=4)
        self.assertIsNotNone(sim.run_until(sim.converged, 30))
        for i in range(20):
            sim.restart(i, seeds=[0])
        self.assertIsNotNone(sim.run_until(sim.converged, 30))
        self.assertTrue(all(sim.nodes[i].membership.incarnation == 1 for i in range(20)))

    def test_restart_around_a_survivor(self) -> None:
        """
        Every node but the seed restarted at a new address: the survivors'
        old entries conflict with the new addresses until they are found
        dead, after which the new addresses are taken (memberlist#311's
        hard case); the cluster converges.
        """
        sim = Simulation(20, seed=5)
        self.assertIsNotNone(sim.run_until(sim.converged, 30))
        for i in range(1, 20):
            sim.restart(i, seeds=[0])
        self.assertIsNotNone(sim.run_until(sim.converged, 300, step=0.5))

    def test_restart_same_node(self) -> None:
        """
        A killed node restarted under its id at a new address comes back
        alive at that address in every view.
        """
        sim = Simulation(10, seed=6)
        self.assertIsNotNone(sim.run_until(sim.converged, 30))
        sim.kill(7)
        self.assertIsNotNone(sim.run_until(lambda: sim.all_see_dead(7), 60))
        sim.restart(7)
        self.assertIsNotNone(sim.run_until(sim.converged, 30))
        self.assertTrue(all(sim.view(i)["n7"][1] == sim.nodes[7].addr for i in range(10)))
