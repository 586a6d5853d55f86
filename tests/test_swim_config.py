"""
Tests for L{caxton.swim.config}: profiles and memberlist's formulas.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from caxton.swim.config import (
    PROFILES,
    SwimConfig,
    expected_confirmations,
    profile,
    push_pull_scale,
    remaining_suspicion_time,
    retransmit_limit,
    scale_by_health,
    suspicion_bounds,
    suspicion_timeout,
)


class ProfileTests(SynchronousTestCase):
    """
    The profiles carry memberlist's values (notes/swim.md 2.1).
    """

    def test_lan_is_default(self) -> None:
        """
        C{SwimConfig()} is the LAN profile, with memberlist's LAN numbers.
        """
        config = profile("lan")
        self.assertEqual(config, SwimConfig())
        self.assertEqual(
            (
                config.probe_interval,
                config.probe_timeout,
                config.indirect_checks,
                config.retransmit_mult,
                config.suspicion_mult,
                config.suspicion_max_timeout_mult,
                config.push_pull_interval,
                config.gossip_interval,
                config.gossip_nodes,
                config.gossip_to_the_dead_time,
                config.awareness_max_multiplier,
                config.tcp_timeout,
                config.max_packet,
            ),
            (1.0, 0.5, 3, 4, 4, 6, 30.0, 0.2, 3, 30.0, 8, 10.0, 1400),
        )
        self.assertTrue(config.lifeguard)
        self.assertEqual(config.dead_node_reclaim_time, 0.0)

    def test_wan_and_local(self) -> None:
        """
        WAN and local profiles differ where memberlist's do.
        """
        wan = profile("wan")
        self.assertEqual((wan.probe_interval, wan.probe_timeout, wan.suspicion_mult), (5.0, 3.0, 6))
        self.assertEqual((wan.gossip_interval, wan.gossip_nodes, wan.tcp_timeout), (0.5, 4, 30.0))
        local = profile("local")
        self.assertEqual(
            (local.probe_timeout, local.indirect_checks, local.retransmit_mult), (0.2, 1, 2)
        )
        self.assertEqual((local.suspicion_mult, local.gossip_interval), (3, 0.1))
        self.assertEqual(set(PROFILES), {"lan", "wan", "local"})

    def test_overrides(self) -> None:
        """
        Overrides replace profile values; the derived lag threshold follows
        the probe timeout unless it is given.
        """
        config = profile("wan", probe_interval=2.0, lifeguard=False)
        self.assertEqual(config.probe_interval, 2.0)
        self.assertFalse(config.lifeguard)
        self.assertEqual(config.lag_threshold, 1.5)
        self.assertEqual(profile("lan", probe_timeout=0.1).lag_threshold, 0.05)
        self.assertEqual(profile("lan", lag_threshold=0.7).lag_threshold, 0.7)
        self.assertEqual(SwimConfig().replace(probe_timeout=0.4).lag_threshold, 0.2)

    def test_bad_values(self) -> None:
        """
        Unknown profiles, unknown knobs and impossible values are refused.
        """
        self.assertRaises(ValueError, profile, "moon")
        self.assertRaises(TypeError, profile, "lan", probe_intreval=1.0)
        self.assertRaises(ValueError, profile, "lan", probe_interval=0)
        self.assertRaises(ValueError, profile, "lan", dead_node_reclaim_time=-1)


class FormulaTests(SynchronousTestCase):
    """
    memberlist's arithmetic, with its test vectors.
    """

    def test_suspicion_timeout(self) -> None:
        """
        min = alpha * max(1, log10(n)) * interval: the table in notes 2.2.
        """
        self.assertEqual(suspicion_timeout(4, 3, 1.0), 4.0)
        self.assertEqual(suspicion_timeout(4, 10, 1.0), 4.0)
        self.assertEqual(suspicion_timeout(4, 100, 1.0), 8.0)
        self.assertEqual(suspicion_timeout(4, 1000, 1.0), 12.0)
        self.assertEqual(suspicion_timeout(6, 100, 5.0), 60.0)
        # memberlist's util_test: 3 * log10(1000) * 1s... and a fraction.
        self.assertAlmostEqual(suspicion_timeout(3, 50, 1.0), 3 * 1.698)

    def test_suspicion_bounds(self) -> None:
        """
        max = beta * min with Lifeguard; plain SWIM uses the minimum alone.
        """
        self.assertEqual(suspicion_bounds(SwimConfig(), 100), (8.0, 48.0))
        self.assertEqual(suspicion_bounds(SwimConfig(lifeguard=False), 100), (8.0, 8.0))

    def test_remaining_suspicion_time(self) -> None:
        """
        The decay vector from memberlist's suspicion_test: min 2 s, max 30 s,
        k = 3 gives 30, 16, 7.81 and 2 s for 0..3 confirmations, minus the
        time already elapsed.
        """
        got = [remaining_suspicion_time(c, 3, 0.0, 2.0, 30.0) for c in range(4)]
        self.assertEqual(got, [30.0, 16.0, 7.81, 2.0])
        self.assertAlmostEqual(remaining_suspicion_time(1, 3, 5.0, 2.0, 30.0), 11.0)
        self.assertAlmostEqual(remaining_suspicion_time(3, 3, 25.0, 2.0, 30.0), -23.0)
        # No confirmations expected: the minimum, whatever arrives.
        self.assertEqual(remaining_suspicion_time(0, 0, 0.0, 2.0, 30.0), 2.0)

    def test_expected_confirmations(self) -> None:
        """
        k_s = alpha - 2, forced to 0 when n - 2 < k_s, and 0 without
        Lifeguard.
        """
        config = SwimConfig()
        self.assertEqual(expected_confirmations(config, 10), 2)
        self.assertEqual(expected_confirmations(config, 4), 2)
        self.assertEqual(expected_confirmations(config, 3), 0)
        self.assertEqual(expected_confirmations(SwimConfig(lifeguard=False), 10), 0)

    def test_retransmit_limit(self) -> None:
        """
        mult * ceil(log10(n + 1)), memberlist's util_test values.
        """
        self.assertEqual(retransmit_limit(3, 0), 0)
        self.assertEqual(retransmit_limit(3, 1), 3)
        self.assertEqual(retransmit_limit(3, 99), 6)
        self.assertEqual(retransmit_limit(4, 100), 12)
        self.assertEqual(retransmit_limit(4, 10000), 20)

    def test_push_pull_scale(self) -> None:
        """
        The interval holds up to 32 nodes and then grows with log2(n / 32).
        """
        self.assertEqual(push_pull_scale(30.0, 1), 30.0)
        self.assertEqual(push_pull_scale(30.0, 32), 30.0)
        self.assertEqual(push_pull_scale(30.0, 33), 60.0)
        self.assertEqual(push_pull_scale(30.0, 64), 60.0)
        self.assertEqual(push_pull_scale(30.0, 100), 90.0)
        self.assertEqual(push_pull_scale(30.0, 1000), 180.0)
        self.assertEqual(push_pull_scale(30.0, 10000), 300.0)

    def test_scale_by_health(self) -> None:
        """
        The probe interval is multiplied by the health score plus one.
        """
        self.assertEqual(scale_by_health(1.0, 0), 1.0)
        self.assertEqual(scale_by_health(1.0, 7), 8.0)
