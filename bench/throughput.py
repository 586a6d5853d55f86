"""
Messages per second through trivial agents on one node (SPEC 11 target:
100,000).

One process, the real reactor, the real node pieces (SQLiteStore on a temp
file, WasmRuntime, 4 ThreadWorkers, AgentManager, Router; no HTTP).  P
``tests/agents/ping.wat`` agents are deployed.  Clients send M ``request``
messages through ``Router.send``, spread round-robin over the agents, as
fast as the reactor takes them, with at most W requests in flight (so no
inbox reaches agents.max_queue).  Every request produces one ``inform``
back to the client's mailbox.

Counted as routed messages: each request AND each reply (2 M), which is
also what ``Router.counters["routed"]`` counts.  The clock runs from the
first send to the moment the last reply is queued for the client's mailbox
(``SQLiteStore.record_mailbox`` is wrapped in this process to count
replies); a second figure also waits until the SQLite batches holding every
record (conversation messages and mailbox entries) are written.

    python bench/throughput.py [--requests 6000] [--agents 1,4,16] [--window 1000] [--rounds 3]
        [--road fast|checked] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common  # noqa: F401
from _common import CpuSteal, emit
from _node import BenchNode, run

from twisted.internet.defer import Deferred

from caxton.acl.message import ACLMessage
from tests.wasmbuild import testing_agent, wat_module


async def one_run(reactor, agents: int, requests: int, window: int, fast: bool, timeout: float):
    node = BenchNode(reactor, fast=fast)
    await node.start()
    try:
        wasm = wat_module(testing_agent("ping.wat"))
        names = [f"ping-{i}" for i in range(agents)]
        for name in names:
            await node.agents.deploy(name, wasm, {})
        router, store = node.router, node.store
        clients = [f"client:c{i}" for i in range(agents)]
        state = {"sent": 0, "replies": 0, "pump_scheduled": False}
        done: Deferred = Deferred()
        record_mailbox = store.record_mailbox

        def pump() -> None:
            state["pump_scheduled"] = False
            sent = state["sent"]
            while sent < requests and sent - state["replies"] < window:
                k = sent % agents
                router.send(
                    ACLMessage(
                        performative="request",
                        sender=clients[k],
                        receiver=(names[k],),
                        content={"i": sent},
                    )
                )
                sent += 1
            state["sent"] = sent

        def counting_record_mailbox(client, message):
            record_mailbox(client, message)
            state["replies"] += 1
            if state["replies"] == requests:
                done.callback(time.perf_counter())
            elif not state["pump_scheduled"] and state["sent"] < requests:
                state["pump_scheduled"] = True
                reactor.callLater(0, pump)

        store.record_mailbox = counting_record_mailbox
        routed_before = router.counters["routed"]
        timer = reactor.callLater(timeout, lambda: done.called or done.errback(TimeoutError(
            f"only {state['replies']} of {requests} replies after {timeout}s")))
        t0 = time.perf_counter()
        pump()
        t_replies = await done
        await node.flushed()
        t_flushed = time.perf_counter()
        if timer.active():
            timer.cancel()
        routed = router.counters["routed"] - routed_before
        failed = {k: v for k, v in router.counters.items() if k.startswith("failed")}
        handled = sum(node.agents.get(n).handled for n in names)
    finally:
        await node.stop()
    return {
        "routed": routed,
        "handled": handled,
        "failed": failed,
        "seconds_to_last_reply": t_replies - t0,
        "seconds_to_flushed": t_flushed - t0,
        "routed_per_s": routed / (t_replies - t0),
        "routed_per_s_flushed": routed / (t_flushed - t0),
    }


async def main(reactor) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000, help="requests per run (M)")
    parser.add_argument("--agents", default="1,4,16", help="agent counts to try (P)")
    parser.add_argument("--window", type=int, default=1000, help="requests in flight at most (W)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--road", choices=["fast", "checked"], default="fast")
    parser.add_argument("--timeout", type=float, default=30.0, help="per run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the measured runs, one extra run (4 agents) under cProfile on the reactor "
        "thread only, printing where the reactor's time goes (not part of the figures)",
    )
    args = parser.parse_args()

    steal = CpuSteal()
    started = time.perf_counter()
    figures = {}
    for p in [int(x) for x in args.agents.split(",")]:
        runs = []
        for _ in range(args.rounds):
            runs.append(await one_run(reactor, p, args.requests, args.window, args.road == "fast", args.timeout))
        rates = [r["routed_per_s"] for r in runs]
        flushed = [r["routed_per_s_flushed"] for r in runs]
        figures[f"agents={p}"] = {
            "routed_per_s_median": round(statistics.median(rates)),
            "routed_per_s_range": [round(min(rates)), round(max(rates))],
            "routed_per_s_flushed_median": round(statistics.median(flushed)),
            "requests_per_s_median": round(statistics.median(rates) / 2),
            "runs": [
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in runs
            ],
        }
    elapsed = time.perf_counter() - started
    contention = steal.stop()

    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        await one_run(reactor, 4, args.requests, args.window, args.road == "fast", args.timeout)
        profiler.disable()
        print("  reactor thread profile (one extra run, 4 agents, slowed by cProfile), top by own time:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)

    print(
        f"throughput: {args.requests} requests (+ as many replies) per run, window {args.window}, "
        f"{args.road} road, {args.rounds} rounds, {elapsed:.1f}s; contention {contention}"
    )
    print("  SPEC 11 target: 100,000 messages/s; routed = requests + replies")
    for key, f in figures.items():
        print(
            f"  {key:10s} routed/s median {f['routed_per_s_median']:7d} "
            f"(range {f['routed_per_s_range'][0]}..{f['routed_per_s_range'][1]}), "
            f"incl. SQLite written {f['routed_per_s_flushed_median']:7d}, "
            f"= {f['requests_per_s_median']} request/reply exchanges/s; "
            f"failed {f['runs'][0]['failed'] or 'none'}"
        )
    emit(
        "throughput",
        {
            "requests_per_run": args.requests,
            "agents": args.agents,
            "window": args.window,
            "rounds": args.rounds,
            "road": args.road,
            "workers": 4,
            "agent": "tests/agents/ping.wat",
            "counted": "request + reply each count as one routed message",
            "target_per_s": 100000,
        },
        {**figures, "elapsed_s": round(elapsed, 1)},
        contention,
    )


if __name__ == "__main__":
    run(main)
