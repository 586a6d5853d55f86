"""
Tests for L{caxton.swim.lag}.
"""

from typing import List

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from caxton.swim.lag import LagMonitor


class LagMonitorTests(SynchronousTestCase):
    """
    The monitor reports how late its timer fires.
    """

    def test_on_time(self) -> None:
        """
        A timer that fires on time reports no lag.
        """
        clock, seen = Clock(), []
        seen: List[float]
        monitor = LagMonitor(clock, 0.1, seen.append)
        monitor.start()
        clock.pump([0.1] * 5)
        self.assertEqual(seen, [0.0] * 5)

    def test_late(self) -> None:
        """
        A reactor stalled for 2 s reports about 2 s of lag once, then the
        measurements are back to zero.
        """
        clock, seen = Clock(), []
        seen: List[float]
        monitor = LagMonitor(clock, 0.1, seen.append)
        monitor.start()
        clock.advance(2.1)
        clock.pump([0.1] * 2)
        self.assertAlmostEqual(seen[0], 2.0)
        self.assertEqual(seen[1:], [0.0, 0.0])
        self.assertAlmostEqual(monitor.max_lag, 2.0)

    def test_stop(self) -> None:
        """
        A stopped monitor leaves no timer behind.
        """
        clock = Clock()
        monitor = LagMonitor(clock, 0.1, lambda lag: None)
        monitor.start()
        monitor.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
