# -*- test-case-name: tests.test_auth_ratelimit -*-
"""
Rate limits (SPEC 6): one token bucket per key.

A bucket holds at most C{burst} tokens and gains C{rate} tokens a second;
each request takes one, and a request that finds less than one token is
refused with C{429 RATE_LIMITED} and C{Retry-After}.  So a key may make
C{burst} requests at once, then C{rate} a second for as long as it likes.

What is limited, and by what (see docs/security.md):

  - requests with a valid key: by key (the bucket is the key's, whichever
    address it comes from);
  - refused logins (a bad, unknown or revoked token, or a non-loopback
    client in protected mode): by client address, in a separate, slower
    bucket, so nobody can fill the audit log with refusals;
  - public routes (C{/health}, C{/ready}, ...) and loopback clients in
    protected mode: not limited.  Health probes must not be refused, and
    protected mode only ever serves the node's own host.

The limiter is plain code over an injected clock (C{IReactorTime.seconds}),
so tests drive it with a C{task.Clock}.  It keeps at most C{max_buckets}
buckets, forgetting the least recently used: a forgotten bucket comes back
full, which only ever errs towards letting a request through.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, Hashable, List, Optional

import attr

#: Refused logins allowed per client address: a burst, then one a second.
REFUSED_BURST = 20
REFUSED_RATE = 1.0


@attr.s(frozen=True, slots=True, auto_attribs=True)
class RateDecision:
    """
    Whether one request may go on, and what to tell its client.

    @ivar allowed: whether it may.
    @ivar limit: the bucket's size (C{X-RateLimit-Limit}).
    @ivar remaining: whole tokens left after this request
        (C{X-RateLimit-Remaining}).
    @ivar reset: whole seconds until the bucket is full again
        (C{X-RateLimit-Reset}).
    @ivar retry_after: whole seconds until one token is there again, at
        least 1, when refused (C{Retry-After}); else C{None}.
    """

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: Optional[int] = None

    def headers(self) -> Dict[str, str]:
        """
        The response headers that tell the client about its limit.
        """
        values = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }
        if self.retry_after is not None:
            values["Retry-After"] = str(self.retry_after)
        return values


class RateLimiter:
    """
    Token buckets by key.

    @param clock: an C{IReactorTime}; only C{seconds()} is used.
    @param rate: tokens gained per second (> 0).
    @param burst: the most tokens a bucket holds (>= 1).
    @param max_buckets: the most buckets kept.
    """

    def __init__(self, clock: Any, rate: float, burst: int, max_buckets: int = 10_000) -> None:
        if not rate > 0 or burst < 1 or max_buckets < 1:
            raise ValueError("rate must be > 0, burst and max_buckets >= 1")
        self._clock = clock
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_buckets = max_buckets
        # key -> [tokens, time of the last update]
        self._buckets: "OrderedDict[Hashable, List[float]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: Hashable) -> List[float]:
        now = self._clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [float(self.burst), now]
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            # A clock that went back (wall time) earns nothing.
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(float(self.burst), bucket[0] + elapsed * self.rate)
            bucket[1] = now
        return bucket

    def take(self, key: Hashable) -> RateDecision:
        """
        Take one token from C{key}'s bucket, if there is one.
        """
        bucket = self._bucket(key)
        allowed = bucket[0] >= 1.0
        if allowed:
            bucket[0] -= 1.0
        return self._decision(bucket[0], allowed)

    def _decision(self, tokens: float, allowed: bool) -> RateDecision:
        # Small epsilons keep float noise (0.9999999) from adding a second.
        reset = math.ceil(max(0.0, self.burst - tokens) / self.rate - 1e-9)
        retry_after = None
        if not allowed:
            retry_after = max(1, math.ceil((1.0 - tokens) / self.rate - 1e-9))
        return RateDecision(allowed, self.burst, int(math.floor(tokens + 1e-9)), reset, retry_after)
