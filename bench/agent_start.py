"""
Agent start time on a warm engine (SPEC 11 target: p50 < 10 ms,
p99 < 100 ms for a core module).

Two measurements:

1. ``WasmRuntime.instantiate`` + ``AgentInstance.run_init`` for an already
   compiled core module (no Twisted, no threads besides the epoch ticker):
   ``tests/agents/ping.wat`` (no ``caxton_init``) and
   ``examples/agents/wat/cnp_bidder.wat`` (``caxton_init`` parses a config).
2. A full ``AgentManager.deploy`` on the real reactor with the real node
   pieces (SQLiteStore on a temp file, ThreadWorkers, ...), compile cache
   warm (the module was compiled by an earlier deploy), distinct names:
   name and spec checks, the compile-cache lookup on the reactor's thread
   pool, instantiate + init on an agent worker, ``save_module`` and
   ``save_agent`` in SQLite.  Also the resident memory added per deployed
   agent (RSS after / before, divided by the agents deployed; approximate).

    python bench/agent_start.py [--starts 1000] [--deploys 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import time

import _common  # noqa: F401
from _common import CpuSteal, emit, fmt, median_of_rounds, summarize
from _node import BenchNode, run

from caxton.agents.runtime import Limits, WasmRuntime
from tests.wasmbuild import example, testing_agent, wat_module

LIMITS = Limits(
    memory=16 * 1024**2, fuel=1_000_000_000, wall_clock=1.0, max_message=256 * 1024, max_sends=1000
)


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    import resource

    return pages * resource.getpagesize()


def instantiate_rounds(starts: int, rounds: int):
    runtime = WasmRuntime()
    runtime.start()
    out = {}
    try:
        for label, wasm, config in (
            ("ping (no init)", wat_module(testing_agent("ping.wat")), b"null"),
            ("cnp_bidder (with init)", wat_module(example("wat", "cnp_bidder.wat")), b'{"price":5}'),
        ):
            compiled = runtime.compile(wasm)
            clock = time.perf_counter_ns
            for _ in range(100):  # warm-up
                assert runtime.instantiate(compiled, "warm", LIMITS).run_init(config).ok
            per_round = []
            for _ in range(rounds):
                gc.collect()
                samples = []
                for i in range(starts):
                    t0 = clock()
                    instance = runtime.instantiate(compiled, f"a{i}", LIMITS)
                    outcome = instance.run_init(config)
                    samples.append((clock() - t0) / 1000.0)
                    assert outcome.ok
                    del instance
                per_round.append(summarize(samples))
            out[label] = median_of_rounds(per_round)
    finally:
        runtime.stop()
    return out


async def deploy_rounds(reactor, deploys: int, rounds: int):
    node = BenchNode(reactor)
    await node.start()
    try:
        wasm = wat_module(testing_agent("ping.wat"))
        await node.agents.deploy("warm-0", wasm, {})  # compiles; the cache is warm from here
        for i in range(1, 20):
            await node.agents.deploy(f"warm-{i}", wasm, {})
        await node.flushed()
        gc.collect()
        rss_before = rss_bytes()
        per_round = []
        clock = time.perf_counter_ns
        for r in range(rounds):
            samples = []
            for i in range(deploys):
                t0 = clock()
                cell = await node.agents.deploy(f"agent-{r}-{i}", wasm, {"capabilities": ["ping"]})
                samples.append((clock() - t0) / 1000.0)
                assert cell.status == "running"
            per_round.append(summarize(samples))
        await node.flushed()
        gc.collect()
        rss_after = rss_bytes()
        deployed = rounds * deploys
    finally:
        await node.stop()
    return median_of_rounds(per_round), {
        "agents_deployed": deployed,
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "rss_per_agent_kib": round((rss_after - rss_before) / deployed / 1024, 1),
    }


async def main(reactor) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=1000, help="instantiate+init per round")
    parser.add_argument("--deploys", type=int, default=200, help="deploys per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    steal = CpuSteal()
    started = time.perf_counter()
    inst = instantiate_rounds(args.starts, args.rounds)
    deploy, memory = await deploy_rounds(reactor, args.deploys, args.rounds)
    elapsed = time.perf_counter() - started
    contention = steal.stop()

    print(
        f"agent_start: {args.starts} starts and {args.deploys} deploys per round, {args.rounds} rounds, "
        f"{elapsed:.1f}s; contention {contention}"
    )
    print("  SPEC 11 target (core module, warm engine): p50 < 10,000 us, p99 < 100,000 us")
    for label, stats in inst.items():
        print(f"  instantiate+init {label:24s} {fmt(stats)}")
    print(f"  AgentManager.deploy (warm cache)          {fmt(deploy)}")
    print(
        f"  memory: {memory['agents_deployed']} agents added {memory['rss_after_mib'] - memory['rss_before_mib']:.1f} MiB "
        f"RSS, about {memory['rss_per_agent_kib']} KiB per agent (idle ping.wat, 2 pages of linear memory)"
    )
    emit(
        "agent_start",
        {
            "starts_per_round": args.starts,
            "deploys_per_round": args.deploys,
            "rounds": args.rounds,
            "engine": "fuel + epoch, 64 MiB memory reservation (WasmRuntime defaults)",
            "target": {"p50_us": 10000, "p99_us": 100000},
        },
        {"instantiate_init": inst, "deploy": deploy, "memory": memory, "elapsed_s": round(elapsed, 1)},
        contention,
    )


if __name__ == "__main__":
    run(main)
