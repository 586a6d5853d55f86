"""
Local routing latency on one node, SPEC 11: "message accepted to handler
entered" (target p50 < 100 us, p99 < 1 ms), and the client's round trip.

One process, the real reactor, the real node pieces (SQLiteStore on a temp
file, WasmRuntime, ThreadWorkers, AgentManager, Router; no HTTP).  One
``tests/agents/ping.wat`` agent is deployed as ``probe``.  A client sends N
requests one at a time through ``Router.send``, each starting from a fresh
reactor iteration, and waits for the ``inform`` reply before sending the
next.

Timestamps (``time.perf_counter``; the benchmark wraps methods in its own
process, the product code is untouched):

* t_send: just before ``Router.send`` is called (on the reactor thread);
* t_deliver: entry of ``AgentInstance.deliver`` on the worker thread (the
  batch for this message has been picked up);
* t_handler: just before ``caxton_handle`` is called for this message (the
  instance's ``handle`` callable is wrapped; the message id comes from the
  runtime's thread-local ``HostCall``) -- "handler entered";
* t_accepted: when ``Router.send`` returned the accepted message (the
  worker may already be running it: accepted_to_handler can be negative);
* t_reply: when the ``inform`` reaches the client's mailbox
  (``Router.expect_reply`` fires, right after ``record_mailbox`` queued it
  for the SQLite batch; the SQLite write itself happens later, off the
  reactor).

Reported per road (fast = raw C calls, checked = ``WasmRuntime(fast=False)``):
send->handler (the SPEC figure), send->deliver, and send->reply round trip,
p50/p99 per round and the median over rounds.

    python bench/local_routing.py [--messages 2000] [--rounds 3] [--roads fast,checked]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

import _common  # noqa: F401
from _common import CpuSteal, emit, fmt, median_of_rounds, summarize
from _node import BenchNode, run

from twisted.internet.task import deferLater

from caxton.acl.message import ACLMessage
from caxton.agents import runtime as rt
from caxton.agents.runtime import AgentInstance
from tests.wasmbuild import testing_agent, wat_module

CLIENT = "client:bench"
AGENT = "probe"

_deliver_entered: dict = {}
_handler_entered: dict = {}
_original_deliver = AgentInstance.deliver


def _timed_deliver(self, raw, message):
    _deliver_entered[message.message_id] = time.perf_counter()
    return _original_deliver(self, raw, message)


def _wrap_handle(instance: AgentInstance) -> None:
    handle = instance.handle
    local = rt._local
    clock = time.perf_counter

    def timed_handle(ptr, length):
        call = local.call
        if call is not None and call.current is not None:
            _handler_entered[call.current.message_id] = clock()
        return handle(ptr, length)

    instance.handle = timed_handle


async def one_road(reactor, road: str, messages: int, warmup: int, rounds: int):
    node = BenchNode(reactor, fast=(road == "fast"))
    await node.start()
    try:
        cell = await node.agents.deploy(AGENT, wat_module(testing_agent("ping.wat")), {})
        _wrap_handle(cell.instance)
        router = node.router
        clock = time.perf_counter
        results = {
            "send_to_handler": [],
            "send_to_deliver": [],
            "accepted_to_handler": [],
            "router_send_call": [],
            "round_trip": [],
        }
        for r in range(rounds):
            samples = {k: [] for k in results}
            for i in range(warmup + messages):
                cid = uuid.uuid4().hex
                message = ACLMessage(
                    performative="request",
                    sender=CLIENT,
                    receiver=(AGENT,),
                    content={"i": i},
                    conversation_id=cid,
                )
                reply = router.expect_reply(CLIENT, cid)
                reply.addCallback(lambda m: (clock(), m))
                t_send = clock()
                accepted = router.send(message)
                t_accepted = clock()
                t_reply, answer = await reply
                assert answer.performative == "inform", answer
                mid = accepted.message_id
                t_handler = _handler_entered.pop(mid)
                t_deliver = _deliver_entered.pop(mid)
                if i >= warmup:
                    samples["send_to_handler"].append((t_handler - t_send) * 1e6)
                    samples["send_to_deliver"].append((t_deliver - t_send) * 1e6)
                    samples["accepted_to_handler"].append((t_handler - t_accepted) * 1e6)
                    samples["router_send_call"].append((t_accepted - t_send) * 1e6)
                    samples["round_trip"].append((t_reply - t_send) * 1e6)
                # Start the next send from a fresh reactor iteration, as a
                # request from the network would.
                await deferLater(reactor, 0, lambda: None)
            for k in results:
                results[k].append(summarize(samples[k]))
        await node.flushed()
        counters = dict(router.counters)
        assert cell.instance is not None and cell.handled == rounds * (warmup + messages), cell.handled
    finally:
        await node.stop()
    return {k: median_of_rounds(v) for k, v in results.items()}, counters


async def main(reactor) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="measured messages per round")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured messages per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--roads", default="fast,checked")
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="experiment: sys.setswitchinterval() for this process (CPython default 0.005 s)",
    )
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    AgentInstance.deliver = _timed_deliver

    steal = CpuSteal()
    started = time.perf_counter()
    figures = {}
    for road in args.roads.split(","):
        stats, counters = await one_road(reactor, road, args.messages, args.warmup, args.rounds)
        figures[road] = stats
        figures[road]["router_counters"] = counters
    elapsed = time.perf_counter() - started
    contention = steal.stop()

    print(
        f"local_routing: {args.messages} messages one at a time (+{args.warmup} warm-up) x "
        f"{args.rounds} rounds per road, {elapsed:.1f}s; contention {contention}"
    )
    print("  SPEC 11 target, send -> handler entered: p50 < 100 us, p99 < 1000 us")
    for road, stats in figures.items():
        for key in ("send_to_handler", "send_to_deliver", "accepted_to_handler", "router_send_call", "round_trip"):
            print(f"  {road:7s} {key:20s} {fmt(stats[key])}")
        h = stats["send_to_handler"]
        print(
            f"  {road:7s} target met: p50 {'yes' if h['p50_us'] < 100 else 'NO'}, "
            f"p99 {'yes' if h['p99_us'] < 1000 else 'NO'}"
        )
    emit(
        "local_routing",
        {
            "messages_per_round": args.messages,
            "warmup_per_round": args.warmup,
            "rounds": args.rounds,
            "roads": args.roads,
            "agent": "tests/agents/ping.wat",
            "workers": 4,
            "store": "SQLiteStore on a temp file",
            "gil_switch_interval_s": sys.getswitchinterval(),
            "target": {"p50_us": 100, "p99_us": 1000},
        },
        {**figures, "elapsed_s": round(elapsed, 1)},
        contention,
    )


if __name__ == "__main__":
    run(main)
