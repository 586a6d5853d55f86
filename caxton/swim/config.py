# -*- test-case-name: tests.test_swim_config -*-
"""
SWIM's knobs and the formulas memberlist derives from them.

L{SwimConfig} holds every timing and size the core uses; L{profile} gives
memberlist's C{lan}, C{wan} and C{local} defaults (notes/swim.md 2.1) with
overrides.  The pure functions below (L{suspicion_timeout},
L{retransmit_limit}, L{push_pull_scale}, L{remaining_suspicion_time}) are
memberlist's C{util.go}/C{suspicion.go} arithmetic, base-10 logarithms
included, so a Caxton cluster behaves like a memberlist one of the same size.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping

import attr


def _positive(instance: Any, attribute: Any, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be larger than zero")


def _not_negative(instance: Any, attribute: Any, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative")


def _default_lag_threshold(config: "SwimConfig") -> float:
    # Half the probe timeout: a node that stops running for that long can
    # no longer tell its own silence from a peer's (an ack could arrive
    # and go unread past the timeout).
    return config.probe_timeout / 2


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class SwimConfig:
    """
    Every knob of the SWIM core, in seconds, counts and bytes.  The
    defaults are memberlist's LAN profile (L{profile}C{("lan")}).

    @ivar probe_interval: time between probes (scaled by local health).
    @ivar probe_timeout: wait for a direct ack before asking helpers; not
        scaled by local health, as in memberlist.
    @ivar indirect_checks: helpers asked to probe (k).
    @ivar retransmit_mult: a broadcast is sent
        C{retransmit_mult * ceil(log10(n + 1))} times (L{retransmit_limit}).
    @ivar suspicion_mult: alpha, the suspicion timeout multiplier
        (L{suspicion_timeout}).
    @ivar suspicion_max_timeout_mult: beta: the timeout starts at beta times
        the minimum and decays with confirmations.
    @ivar push_pull_interval: time between full-state exchanges, scaled up
        for clusters over 32 nodes (L{push_pull_scale}).
    @ivar gossip_interval: time between gossip rounds.
    @ivar gossip_nodes: peers sent queued broadcasts each gossip round.
    @ivar gossip_to_the_dead_time: how long dead and left members keep
        receiving gossip (a chance to refute) and stay in the member list
        before they are reaped.
    @ivar awareness_max_multiplier: local health ranges over
        C{0 .. awareness_max_multiplier - 1}; the probe interval is
        multiplied by the score plus one.
    @ivar dead_node_reclaim_time: how long a member must have been dead
        before its name may come back at another address.  Caxton reads
        C{0} differently from memberlist (where 0 disables reclaim): a dead
        or left member's name may be reclaimed at a new address at once.
        An alive or suspect member's address never changes under it; that
        is a conflict and the news is refused.
    @ivar tcp_timeout: bound on a push-pull exchange over the stream.
    @ivar max_packet: bytes a datagram may hold, envelope included.
    @ivar lifeguard: C{False} runs plain SWIM for comparison: no local
        health scaling, no nacks, a fixed suspicion timeout (the minimum)
        and no buddy system.
    @ivar lag_threshold: reactor lag (seconds a timer fires late) that
        counts against local health as a missed beat; defaults to half the
        probe timeout.
    @ivar stream_ping: whether a failed probe also tries the stream
        (memberlist's TCP fallback ping).
    @ivar fast_fail_refused: when a failed probe's stream ping was refused
        by the target's host (no process listens there: a crash or kill on
        a host that is up), suspect it for one probe interval only, instead
        of Lifeguard's decaying timer; a Caxton extension (docs/cluster.md).
    @ivar reconnect_interval: how often to try a push-pull with a member
        declared dead (Serf's reconnect, 30 s): what heals a partition that
        outlasted C{gossip_to_the_dead_time}, after which the two sides no
        longer talk to each other at all.
    @ivar reconnect_timeout: how long a dead member keeps being tried
        (Serf's default is 24 hours).
    """

    probe_interval: float = attr.ib(default=1.0, validator=_positive)
    probe_timeout: float = attr.ib(default=0.5, validator=_positive)
    indirect_checks: int = attr.ib(default=3, validator=_not_negative)
    retransmit_mult: int = attr.ib(default=4, validator=_positive)
    suspicion_mult: int = attr.ib(default=4, validator=_positive)
    suspicion_max_timeout_mult: int = attr.ib(default=6, validator=_positive)
    push_pull_interval: float = attr.ib(default=30.0, validator=_positive)
    gossip_interval: float = attr.ib(default=0.2, validator=_positive)
    gossip_nodes: int = attr.ib(default=3, validator=_not_negative)
    gossip_to_the_dead_time: float = attr.ib(default=30.0, validator=_not_negative)
    awareness_max_multiplier: int = attr.ib(default=8, validator=_positive)
    dead_node_reclaim_time: float = attr.ib(default=0.0, validator=_not_negative)
    tcp_timeout: float = attr.ib(default=10.0, validator=_positive)
    max_packet: int = attr.ib(default=1400, validator=_positive)
    lifeguard: bool = True
    lag_threshold: float = attr.ib(
        default=attr.Factory(_default_lag_threshold, takes_self=True),
        validator=_positive,
    )
    stream_ping: bool = True
    fast_fail_refused: bool = True
    reconnect_interval: float = attr.ib(default=30.0, validator=_positive)
    reconnect_timeout: float = attr.ib(default=24 * 3600.0, validator=_not_negative)

    def replace(self, **overrides: Any) -> "SwimConfig":
        """
        A copy with C{overrides} applied.  A C{lag_threshold} that was
        derived from C{probe_timeout} follows a new C{probe_timeout}.
        """
        if "probe_timeout" in overrides and "lag_threshold" not in overrides:
            if self.lag_threshold == _default_lag_threshold(self):
                overrides["lag_threshold"] = overrides["probe_timeout"] / 2
        return attr.evolve(self, **overrides)


#: memberlist's profiles (notes/swim.md 2.1): C{lan} is the default,
#: C{wan} for high-latency links, C{local} for loopback.
PROFILES: Mapping[str, Mapping[str, Any]] = {
    "lan": {
        "probe_interval": 1.0,
        "probe_timeout": 0.5,
        "indirect_checks": 3,
        "retransmit_mult": 4,
        "suspicion_mult": 4,
        "suspicion_max_timeout_mult": 6,
        "push_pull_interval": 30.0,
        "gossip_interval": 0.2,
        "gossip_nodes": 3,
        "gossip_to_the_dead_time": 30.0,
        "awareness_max_multiplier": 8,
        "tcp_timeout": 10.0,
    },
    "wan": {
        "probe_interval": 5.0,
        "probe_timeout": 3.0,
        "indirect_checks": 3,
        "retransmit_mult": 4,
        "suspicion_mult": 6,
        "suspicion_max_timeout_mult": 6,
        "push_pull_interval": 60.0,
        "gossip_interval": 0.5,
        "gossip_nodes": 4,
        "gossip_to_the_dead_time": 60.0,
        "awareness_max_multiplier": 8,
        "tcp_timeout": 30.0,
    },
    "local": {
        "probe_interval": 1.0,
        "probe_timeout": 0.2,
        "indirect_checks": 1,
        "retransmit_mult": 2,
        "suspicion_mult": 3,
        "suspicion_max_timeout_mult": 6,
        "push_pull_interval": 15.0,
        "gossip_interval": 0.1,
        "gossip_nodes": 3,
        "gossip_to_the_dead_time": 15.0,
        "awareness_max_multiplier": 8,
        "tcp_timeout": 1.0,
    },
}


def profile(name: str = "lan", **overrides: Any) -> SwimConfig:
    """
    The configuration of profile C{name} (C{lan}, C{wan} or C{local}) with
    C{overrides} applied.

    @raise ValueError: for an unknown profile or a bad value.
    @raise TypeError: for an unknown knob.
    """
    try:
        values: Dict[str, Any] = dict(PROFILES[name])
    except KeyError:
        raise ValueError(f"unknown SWIM profile {name!r} (use lan, wan or local)") from None
    values.update(overrides)
    return SwimConfig(**values)


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """
    memberlist's minimum suspicion timeout for a cluster of C{n} nodes:
    C{suspicion_mult * max(1, log10(n)) * interval}, truncated to whole
    milliseconds as memberlist does.  The maximum is
    C{suspicion_max_timeout_mult} times this.
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    # memberlist multiplies by int(node_scale * 1000) / 1000.
    return suspicion_mult * math.floor(node_scale * 1000) * interval / 1000


def suspicion_bounds(config: SwimConfig, n: int) -> "tuple[float, float]":
    """
    The (minimum, maximum) suspicion timeout for C{n} nodes under
    C{config}; plain SWIM (C{lifeguard=False}) always uses the minimum.
    """
    low = suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
    if not config.lifeguard:
        return low, low
    return low, config.suspicion_max_timeout_mult * low


def expected_confirmations(config: SwimConfig, n: int) -> int:
    """
    k_s, the independent confirmations a suspicion waits for before its
    timer reaches the minimum: C{suspicion_mult - 2}, or 0 when the cluster
    has too few other nodes to give them (or without Lifeguard).
    """
    if not config.lifeguard:
        return 0
    k = config.suspicion_mult - 2
    # n - 2: neither we nor the suspect can confirm.
    if n - 2 < k:
        return 0
    return max(0, k)


def remaining_suspicion_time(
    confirmations: int, k: int, elapsed: float, low: float, high: float
) -> float:
    """
    Time left on a suspicion timer started C{elapsed} seconds ago, after
    C{confirmations} independent confirmations out of C{k} expected:
    C{high - (high - low) * ln(C + 1) / ln(k + 1)}, truncated to whole
    milliseconds and floored at C{low}, minus C{elapsed} (may be negative:
    the timer is already due).  With no confirmations expected the timer is
    C{low}.
    """
    if k < 1:
        timeout = low
    else:
        frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
        raw = high - frac * (high - low)
        timeout = max(low, math.floor(1000.0 * raw) / 1000.0)
    return timeout - elapsed


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """
    How many times a broadcast is sent in a cluster of C{n} nodes:
    C{retransmit_mult * ceil(log10(n + 1))}.
    """
    return retransmit_mult * int(math.ceil(math.log10(n + 1)))


#: Clusters up to this size push-pull at the configured interval.
PUSH_PULL_SCALE_THRESHOLD = 32


def push_pull_scale(interval: float, n: int) -> float:
    """
    The push-pull interval for C{n} nodes: C{interval} up to 32 nodes, then
    C{interval * (ceil(log2 n - log2 32) + 1)}, so the exchanges a cluster
    makes grow slower than its size.
    """
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0
    return interval * multiplier


def scale_by_health(interval: float, score: int) -> float:
    """
    C{interval} stretched by local health C{score}: C{interval * (score + 1)}.
    """
    return interval * (score + 1)
