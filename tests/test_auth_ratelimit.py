"""
Tests for L{caxton.auth.ratelimit}: token buckets on a L{Clock}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from caxton.auth.ratelimit import RateDecision, RateLimiter


class BucketTests(SynchronousTestCase):
    """
    One bucket: a burst, then the rate.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000)
        self.limiter = RateLimiter(self.clock, rate=2.0, burst=5)

    def test_burst_then_refused(self) -> None:
        """
        C{burst} requests pass at once; the next is refused with the
        seconds until a token is back.
        """
        decisions = [self.limiter.take("k") for _ in range(6)]
        self.assertEqual([d.allowed for d in decisions], [True] * 5 + [False])
        self.assertEqual([d.remaining for d in decisions], [4, 3, 2, 1, 0, 0])
        refused = decisions[-1]
        self.assertEqual(refused.retry_after, 1)
        self.assertEqual(refused.limit, 5)
        self.assertEqual(refused.reset, 3)  # 5 tokens at 2/s

    def test_refills_at_rate(self) -> None:
        """
        Tokens come back at C{rate} a second, up to C{burst}.
        """
        for _ in range(5):
            self.limiter.take("k")
        self.clock.advance(0.5)
        self.assertTrue(self.limiter.take("k").allowed)
        self.assertFalse(self.limiter.take("k").allowed)
        self.clock.advance(100)
        self.assertEqual(self.limiter.take("k").remaining, 4)

    def test_retry_after_at_least_one_second(self) -> None:
        """
        C{Retry-After} is a whole number of seconds, at least 1, rounded
        up: a slow rate gives a long wait.
        """
        slow = RateLimiter(self.clock, rate=0.1, burst=1)
        slow.take("k")
        self.assertEqual(slow.take("k").retry_after, 10)
        fast = RateLimiter(self.clock, rate=1000.0, burst=1)
        fast.take("k")
        self.assertEqual(fast.take("k").retry_after, 1)

    def test_keys_are_separate(self) -> None:
        """
        One key's empty bucket does not touch another's.
        """
        for _ in range(6):
            self.limiter.take("a")
        self.assertFalse(self.limiter.take("a").allowed)
        self.assertTrue(self.limiter.take("b").allowed)

    def test_clock_going_back(self) -> None:
        """
        Wall time that jumps back earns no tokens (and does not break).
        """
        for _ in range(5):
            self.limiter.take("k")
        self.clock.rightNow -= 3600
        self.assertFalse(self.limiter.take("k").allowed)
        self.clock.advance(0.5)
        self.assertTrue(self.limiter.take("k").allowed)

    def test_bounded_buckets(self) -> None:
        """
        At most C{max_buckets} are kept; the least recently used goes.
        """
        limiter = RateLimiter(self.clock, rate=1.0, burst=1, max_buckets=3)
        for key in "abc":
            limiter.take(key)
        limiter.take("a")  # a is now the most recently used
        limiter.take("d")
        self.assertEqual(len(limiter), 3)
        self.assertFalse(limiter.take("a").allowed)  # kept, still empty
        self.assertTrue(limiter.take("b").allowed)  # forgotten: full again

    def test_headers(self) -> None:
        """
        The C{X-RateLimit-*} headers, and C{Retry-After} only on a refusal.
        """
        ok = RateDecision(True, 100, 99, 1)
        self.assertEqual(
            ok.headers(),
            {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "99", "X-RateLimit-Reset": "1"},
        )
        self.assertEqual(RateDecision(False, 1, 0, 2, 2).headers()["Retry-After"], "2")

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, RateLimiter, self.clock, 0, 1)
        self.assertRaises(ValueError, RateLimiter, self.clock, 1, 0)

    @given(
        st.floats(min_value=0.01, max_value=1000),
        st.integers(min_value=1, max_value=200),
        st.lists(st.floats(min_value=0, max_value=10), max_size=60),
    )
    @settings(max_examples=200)
    def test_never_more_than_burst_plus_rate(self, rate: float, burst: int, gaps: list) -> None:
        """
        Over any run, requests allowed never exceed C{burst} plus C{rate}
        times the time elapsed; a refusal always says when to retry.
        """
        clock = Clock()
        limiter = RateLimiter(clock, rate, burst)
        allowed = 0
        for gap in gaps:
            clock.advance(gap)
            decision = limiter.take("k")
            allowed += decision.allowed
            if not decision.allowed:
                self.assertGreaterEqual(decision.retry_after, 1)
            self.assertTrue(0 <= decision.remaining <= burst)
        self.assertLessEqual(allowed, burst + rate * clock.seconds() + 1e-6)
