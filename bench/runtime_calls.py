"""
Per-message cost inside the wasm runtime, with no Twisted and no threads
besides the epoch ticker.

Measures, on the fast road (raw C calls, ``WasmRuntime()``) and on the
checked road (``WasmRuntime(fast=False)``):

* ``AgentInstance.deliver`` of a small ``request`` to ``tests/agents/ping.wat``
  (the guest calls ``reply`` once) and of an ``inform`` (the guest returns 0
  without calling the host);
* the same for ``examples/agents/wat/echo.wat`` (always replies, with the
  whole incoming message as content, so the host parses ~200 bytes of JSON);
* the bare ``caxton_alloc`` and ``caxton_handle`` crossings;

and the Python-side pieces that a routed message pays for besides the wasm
call (JSON encode/decode, building the reply, ids, Store fuel/epoch resets),
so the summary can say what dominates.

Each figure is measured in several rounds; the summary and RESULT line give
the median over rounds of each round's p50/p99/mean.

    python bench/runtime_calls.py [--calls 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import uuid

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import CpuSteal, emit, fmt, median_of_rounds, summarize

from caxton.acl.message import (
    ACLMessage,
    decode_message,
    encode_message,
    make_reply,
    message_to_dict,
)
from caxton.agents import _fastcall, runtime as rt
from caxton.agents.runtime import HostCall, Limits, Outcome, WasmRuntime
from tests.wasmbuild import example, testing_agent, wat_module

LIMITS = Limits(
    memory=16 * 1024**2,
    fuel=1_000_000_000,
    wall_clock=1.0,
    max_message=256 * 1024,
    max_sends=1000,
)


def per_call(fn, n: int, *args) -> list:
    """
    Microseconds per call, one sample per call.
    """
    clock = time.perf_counter_ns
    out = [0.0] * n
    for i in range(n):
        t0 = clock()
        fn(*args)
        out[i] = (clock() - t0) / 1000.0
    return out


def mean_cost(fn, n: int, *args) -> float:
    """
    Mean microseconds per call over a tight loop (for sub-microsecond pieces).
    """
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        fn(*args)
    return (clock() - t0) / 1000.0 / n


def messages():
    request = ACLMessage(
        performative="request",
        sender="client:bench",
        receiver=("ping",),
        content={"n": 1},
        conversation_id=uuid.uuid4().hex,
        message_id=uuid.uuid4().hex,
    )
    inform = request.evolve(performative="inform")
    return request, inform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per case, fast road")
    parser.add_argument(
        "--checked-calls", type=int, default=5000, help="calls per case, checked road (about 6x slower)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, rounds = args.calls, args.rounds

    request, inform = messages()
    raw_request, raw_inform = encode_message(request), encode_message(inform)
    modules = {
        "ping": wat_module(testing_agent("ping.wat")),
        "echo": wat_module(example("wat", "echo.wat")),
    }

    runtimes = {"fast": WasmRuntime(fast=True), "checked": WasmRuntime(fast=False)}
    instances = {}
    for road, runtime in runtimes.items():
        runtime.start()
        for agent, wasm in modules.items():
            compiled = runtime.compile(wasm)
            inst = runtime.instantiate(compiled, agent, LIMITS)
            assert inst.run_init(b"null").ok
            instances[(road, agent)] = inst

    # Sanity: both roads give the same answers.
    for road in runtimes:
        out = instances[(road, "ping")].deliver(raw_request, request)
        assert out.ok and len(out.sent) == 1 and out.sent[0].performative == "inform", out
        out = instances[(road, "ping")].deliver(raw_inform, inform)
        assert out.ok and not out.sent, out
        out = instances[(road, "echo")].deliver(raw_request, request)
        assert out.ok and len(out.sent) == 1 and out.sent[0].content["conversation_id"], out

    cases = []
    for road in ("fast", "checked"):
        for agent in ("ping", "echo"):
            for kind, raw, msg in (("request", raw_request, request), ("inform", raw_inform, inform)):
                if agent == "echo" and kind == "inform":
                    continue  # echo answers everything the same way
                cases.append((f"deliver/{agent}/{kind}/{road}", instances[(road, agent)].deliver, (raw, msg)))
        ping = instances[(road, "ping")]
        cases.append((f"raw_alloc/{road}", ping.alloc, (len(raw_inform),)))
        if road == "fast":
            # wasmtime-py's Memory.data_len, which _write and the host's
            # _read call once per message (same on both roads).
            cases.append(("memory.data_len", ping.memory.data_len, (ping.store,)))
        ptr = ping.alloc(len(raw_inform))
        assert ping._write(ptr, raw_inform)
        # ping on an inform: scans the JSON, does not call the host.
        cases.append((f"raw_handle_inform/{road}", ping.handle, (ptr, len(raw_inform))))

    fast_ping = instances[("fast", "ping")]
    store = fast_ping.store
    ptr = fast_ping.alloc(len(raw_request))
    reply = make_reply(request, "inform", {}, "ping")
    dict_request = message_to_dict(request)
    pieces = {
        "store.set_fuel": (store.set_fuel, (LIMITS.fuel,)),
        "store.set_epoch_deadline": (store.set_epoch_deadline, (101,)),
        "instance._write (ctypes memmove, ~150 B)": (fast_ping._write, (ptr, raw_request)),
        "HostCall(...) construction": (HostCall, ("ping", LIMITS, fast_ping.memory, store, request)),
        "json.loads(b'{}') (reply content)": (json.loads, (b"{}",)),
        "make_reply": (make_reply, (request, "inform", {}, "ping")),
        "decode_message (agent send path)": (decode_message, (raw_request,)),
        "encode_message (router, per route)": (encode_message, (reply,)),
        "message_to_dict (store, per record)": (message_to_dict, (reply,)),
        "json.dumps(message dict) (store _encode)": (
            lambda d: json.dumps(d, separators=(",", ":")),
            (dict_request,),
        ),
        "Outcome(...) construction": (
            lambda: Outcome(True, False, "", None, (), (), (), 0.0),
            (),
        ),
        "ACLMessage.evolve + 2x uuid4().hex (router _accept)": (
            lambda m: m.evolve(message_id=uuid.uuid4().hex, conversation_id=m.conversation_id or uuid.uuid4().hex),
            (reply.evolve(conversation_id=None),),
        ),
    }

    # Warm up every case.
    def reset_limits():
        # The bare crossings skip deliver(), which resets fuel and the epoch
        # deadline per message; give the stores room for the whole run.
        for inst in instances.values():
            inst.store.set_fuel(10**15)
            inst.store.set_epoch_deadline(10**9)

    reset_limits()
    for _, fn, a in cases:
        per_call(fn, 2000, *a)

    per_round = {name: [] for name, _, _ in cases}
    piece_rounds = {name: [] for name in pieces}
    steal = CpuSteal()
    started = time.perf_counter()
    for r in range(rounds):
        for name, fn, a in cases:
            gc.collect()
            reset_limits()
            calls = args.checked_calls if name.endswith("/checked") else n
            per_round[name].append(summarize(per_call(fn, calls, *a)))
        for name, (fn, a) in pieces.items():
            piece_rounds[name].append(mean_cost(fn, n, *a))
    elapsed = time.perf_counter() - started
    contention = steal.stop()

    for runtime in runtimes.values():
        runtime.stop()

    figures = {name: median_of_rounds(rs) for name, rs in per_round.items()}
    piece_figures = {
        name: round(sorted(v)[len(v) // 2], 3) for name, v in piece_rounds.items()
    }

    print(
        f"runtime_calls: {n} calls per case (checked road: {args.checked_calls}), "
        f"{rounds} rounds, {elapsed:.1f}s; contention {contention}"
    )
    print(f"  fast road available (raw C calls): {_fastcall.raw_calls_available}")
    print(f"  request message: {len(raw_request)} bytes of JSON")
    for name in per_round:
        print(f"  {name:36s} {fmt(figures[name])}")
    print("  Python-side pieces (mean us per op, median of rounds):")
    for name, v in piece_figures.items():
        print(f"    {name:50s} {v:8.3f}")
    fr = figures["deliver/ping/request/fast"]["mean_us"]
    fi = figures["deliver/ping/inform/fast"]["mean_us"]
    cr = figures["deliver/ping/request/checked"]["mean_us"]
    print(
        f"  ping request: checked/fast = {cr / fr:.2f}x; host reply (request - inform, fast) = {fr - fi:.2f} us"
    )

    emit(
        "runtime_calls",
        {
            "calls_per_case": n,
            "calls_per_case_checked": args.checked_calls,
            "rounds": rounds,
            "request_bytes": len(raw_request),
            "raw_calls_available": _fastcall.raw_calls_available,
            "limits": {"fuel": LIMITS.fuel, "wall_clock": LIMITS.wall_clock},
            "epoch_ticker": True,
        },
        {"cases": figures, "pieces_mean_us": piece_figures, "elapsed_s": round(elapsed, 1)},
        contention,
    )


if __name__ == "__main__":
    main()
