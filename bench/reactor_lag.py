"""
Reactor lag while hostile agents run.

A LoopingCall asks for a tick every 10 ms on the reactor thread; the lag is
how late each tick fires.  Measured for a quiet node, then while agents
attack: W spinning agents (one per worker, each interrupted at its 1 s
wall-clock limit and sent another message at once), and a send flood.  A
node that keeps its reactor free keeps this lag in the low milliseconds,
which is what SWIM probes (and the API) need.

    python bench/reactor_lag.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import time
from typing import Any, List

from twisted.internet.task import LoopingCall, deferLater

import _common
from _node import DEFAULT_WORKERS, BenchNode, run

from caxton.acl.message import ACLMessage
from tests.wasmbuild import testing_agent, wat_module

TICK = 0.01


async def measure(reactor: Any, seconds: float) -> List[float]:
    lags: List[float] = []
    expected = [time.monotonic() + TICK]

    def tick() -> None:
        now = time.monotonic()
        lags.append(max(0.0, now - expected[0]) * 1e6)
        expected[0] = now + TICK

    loop = LoopingCall(tick)
    loop.clock = reactor
    loop.start(TICK, now=False)
    await deferLater(reactor, seconds, lambda: None)
    loop.stop()
    return lags


async def main(reactor: Any, seconds: float) -> None:
    node = BenchNode(reactor)
    await node.start()
    figures = {}
    try:
        figures["quiet"] = _common.summarize(await measure(reactor, seconds))
        spin = wat_module(testing_agent("spin.wat"))
        for i in range(DEFAULT_WORKERS):
            await node.agents.deploy(f"spin-{i}", spin, {})
            for _ in range(int(seconds) + 2):
                node.router.send(ACLMessage("request", sender="client:attacker", receiver=(f"spin-{i}",)))
        figures["spinning_agents_on_every_worker"] = _common.summarize(await measure(reactor, seconds))
        for i in range(DEFAULT_WORKERS):
            await node.agents.remove(f"spin-{i}")
        await deferLater(reactor, 1.5, lambda: None)
        await node.agents.deploy("flood", wat_module(testing_agent("flood.wat")), {})
        for _ in range(int(seconds) * 5):
            node.router.send(ACLMessage("request", sender="client:attacker", receiver=("flood",)))
        figures["send_flood"] = _common.summarize(await measure(reactor, seconds))
    finally:
        await node.stop()
    print(f"reactor lag, 10 ms LoopingCall, {seconds:g} s per case, {DEFAULT_WORKERS} workers")
    for case, stats in figures.items():
        print(f"  {case:34s} p50 {stats['p50_us'] / 1000:7.2f} ms  p99 {stats['p99_us'] / 1000:7.2f} ms  max {stats['max_us'] / 1000:7.2f} ms")
    _common.emit("reactor_lag", {"seconds": seconds, "tick_s": TICK, "workers": DEFAULT_WORKERS}, figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=5.0)
    options = parser.parse_args()
    run(lambda reactor: main(reactor, options.seconds))
