"""
SWIM membership in the simulator (SPEC 11 membership targets; the metrics
of notes/swim.md 6.5 and 8.5).

Runs the real SWIM core (``caxton/swim/core.py``) and the real codec on N
virtual nodes (``caxton.swim.simulator.Simulation``: one simulated clock, a
seeded network with loss, delay and jitter, kill, restart and stall).  All
times below are **simulated seconds**, so they do not depend on how busy
the machine is; only the benchmark's own run time does.  Default profile
``lan`` (memberlist's DefaultLANConfig), network delay 1 ms + 0..1 ms jitter.

1. join convergence: N nodes start at once and join through node 0; the
   time until every node sees exactly the N nodes alive at their addresses
   (``Simulation.converged``).  SPEC: 50 nodes, every run < 3 s.
2. failure detection: in a converged cluster one node (chosen at random,
   at a random moment) is killed; the time until the first and until the
   last live member declares it dead.  The node is restarted (same id, new
   address, next incarnation) and the cluster reconverges between rounds.
   SPEC: all members < 5 s for up to 10 nodes.  Compared with the
   expectation from memberlist's formulas (notes/swim.md 1.2, 2.2).
3. false positives: one node stalls for 2 s every 20-40 s (its timers and
   inbound packets wait, as a blocked reactor), for an hour of simulated
   time, Lifeguard on and off, with and without packet loss; and a run
   with loss but no stall.  Every suspicion and death of a node that was
   not killed is a false positive, split by who accused whom
   (observer -> victim: healthy or slow).
4. steady state: packets and bytes each node sends per second after
   convergence, without churn, as a function of N.  The simulator counts
   the plaintext packet; the encryption envelope (``Envelope.overhead``,
   for the id length used) is added per packet, and so are 28 bytes of
   IPv4+UDP header for the "wire" figure.  Push-pull state exchanged over
   the node streams is counted separately (payload only, without TLS).
5. loss sweep (0/1/5/10 %) at one size: join, detection, and the
   dissemination of one alive broadcast (``update_meta``) against the
   Serf logistic model (notes/swim.md 6.3).
6. mass restart: every node but the seed restarts at once (new addresses),
   with the next incarnation and, harder, with incarnation 0 (a node that
   did not keep its incarnation).

    python bench/swim_sim.py [--sizes 8,32,128] [--join-rounds 5] [--detect-rounds 10]
                             [--fp-hours 1] [--fp-n 16] [--sweep-n 32] [--quick]

``--sizes 512`` works but takes minutes (the join of 512 nodes alone is
about a minute of real time).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import _common  # noqa: F401
from _common import CpuSteal, emit, percentile

from caxton.swim.config import (
    expected_confirmations,
    profile,
    retransmit_limit,
    suspicion_bounds,
)
from caxton.swim.keyring import Envelope, Keyring
from caxton.swim.simulator import Simulation

DELAY = 0.001
JITTER = 0.001
#: IPv4 (20) + UDP (8) header bytes per datagram.
IP_UDP = 28


def _r(x: Optional[float], nd: int = 3) -> Optional[float]:
    return None if x is None else round(x, nd)


def stats(values: Sequence[Optional[float]]) -> Dict[str, Any]:
    """
    p50/p99/max/mean of the values that are not None, and how many were None
    (did not happen within the timeout).
    """
    ok = sorted(v for v in values if v is not None)
    out: Dict[str, Any] = {"n": len(values), "timeouts": len(values) - len(ok)}
    if ok:
        out.update(
            p50=_r(percentile(ok, 50)),
            p99=_r(percentile(ok, 99)),
            max=_r(ok[-1]),
            min=_r(ok[0]),
            mean=_r(statistics.fmean(ok)),
        )
    return out


def line(label: str, s: Dict[str, Any], unit: str = "s") -> str:
    if "p50" not in s:
        return f"  {label:<34} no samples ({s['timeouts']} timeouts)"
    extra = f", {s['timeouts']} TIMEOUTS" if s["timeouts"] else ""
    return (
        f"  {label:<34} p50 {s['p50']:7.3f} {unit}  p99 {s['p99']:7.3f} {unit}  "
        f"max {s['max']:7.3f} {unit}  (min {s['min']:.3f}, n={s['n']}{extra})"
    )


def make_sim(n: int, seed: int, loss: float = 0.0, lifeguard: bool = True, join: bool = True) -> Simulation:
    config = profile("lan") if lifeguard else profile("lan", lifeguard=False)
    return Simulation(n, seed=seed, config=config, loss=loss, delay=DELAY, jitter=JITTER, join=join)


# --- 1. join convergence -------------------------------------------------------


def join_convergence(n: int, rounds: int, seed: int, loss: float = 0.0, timeout: float = 120.0) -> List[Optional[float]]:
    times = []
    for r in range(rounds):
        sim = make_sim(n, seed * 1000 + r, loss=loss)
        times.append(sim.run_until(sim.converged, timeout, step=0.02))
    return times


# --- 2. failure detection --------------------------------------------------------


def detection(
    n: int, rounds: int, seed: int, loss: float = 0.0, lifeguard: bool = True, timeout: float = 180.0
) -> Dict[str, Any]:
    """
    Kill one node per round in a converged cluster; first / all detection.
    """
    rng = random.Random(seed)
    sim = make_sim(n, seed, loss=loss, lifeguard=lifeguard)
    first: List[Optional[float]] = []
    last: List[Optional[float]] = []
    reconverge: List[Optional[float]] = []
    if sim.run_until(sim.converged, 120, step=0.05) is None:
        return {"error": "did not converge"}
    sim.run(5.0)
    for _ in range(rounds):
        sim.run(rng.uniform(0.0, 2.0))  # a random phase against the probe timers
        victim = rng.randrange(n)
        sim.kill(victim)
        took = sim.run_until(lambda: sim.detection_latency(victim) is not None, timeout, step=0.05)
        if took is None:
            first.append(None)
            last.append(None)
        else:
            a, b = sim.detection_latency(victim)
            first.append(a)
            last.append(b)
        sim.restart(victim)
        reconverge.append(sim.run_until(sim.converged, 120, step=0.05))
        sim.run(rng.uniform(3.0, 6.0))
    return {
        "first": stats(first),
        "all": stats(last),
        "restart_reconverge": stats(reconverge),
        "false_dead_healthy": sim.false_positives("dead", "healthy", "healthy"),
    }


def detection_expectation(n: int, lifeguard: bool = True) -> Dict[str, float]:
    """
    What memberlist's design predicts for a kill in a cluster of n, LAN:
    the victim is first probed after about 1/(1 - e^-q) protocol periods on
    average (SWIM paper; q ~ 1), that probe fails one probe interval later
    (the indirect probes wait until the interval's end), then the suspicion
    timer runs at its minimum if k_s confirmations arrive in time (else
    longer), then the dead message spreads in about a gossip round or two.
    """
    config = profile("lan", lifeguard=lifeguard)
    low, high = suspicion_bounds(config, n)
    first_probe = config.probe_interval / (1 - math.exp(-1.0))
    # The first probe can also happen right away; the mean wait for it is
    # roughly half a period in a large cluster.  Report the range.
    fail = config.probe_interval
    return {
        "suspicion_min_s": low,
        "suspicion_max_s": high,
        "expected_confirmations": expected_confirmations(config, n),
        "first_dead_expected_min_s": round(fail + low, 2),
        "first_dead_expected_typical_s": round(first_probe / 2 + fail + low, 2),
        "retransmit_limit": retransmit_limit(config.retransmit_mult, n),
    }


# --- 3. false positives -------------------------------------------------------------


def false_positives(
    n: int, hours: float, seed: int, lifeguard: bool, loss: float, stall: bool, stall_s: float = 2.0
) -> Dict[str, Any]:
    rng = random.Random(seed)
    sim = make_sim(n, seed, loss=loss, lifeguard=lifeguard)
    if sim.run_until(sim.converged, 120, step=0.05) is None:
        return {"error": "did not converge"}
    sim.run(10.0)
    sim.fp.clear()
    slow = 1
    duration = hours * 3600.0
    end = sim.now + duration
    stalls = 0
    while sim.now < end:
        gap = rng.uniform(20.0, 40.0)
        if stall:
            sim.stall(slow, stall_s)
            stalls += 1
        sim.run(min(gap, end - sim.now))
    fp = sim.fp
    per_h = 1.0 / hours

    def count(event: str, obs: Optional[str] = None, vic: Optional[str] = None) -> int:
        return sum(
            v
            for (e, o, vk), v in fp.items()
            if e == event and vk != "killed" and (obs is None or o == obs) and (vic is None or vk == vic)
        )

    out = {
        "n": n,
        "hours": hours,
        "lifeguard": lifeguard,
        "loss": loss,
        "stalls": stalls,
        "stall_s": stall_s if stall else 0,
        # FP: every false suspicion / death, at any observer.
        "fp_suspect_per_h": round(count("suspect") * per_h, 1),
        "fp_dead_per_h": round(count("dead") * per_h, 1),
        # FP-: false ones raised by healthy observers about healthy members.
        "fpminus_suspect_per_h": round(count("suspect", "healthy", "healthy") * per_h, 1),
        "fpminus_dead_per_h": round(count("dead", "healthy", "healthy") * per_h, 1),
        # The stalled node's own accusations of healthy members.
        "slow_accuses_suspect_per_h": round(count("suspect", "slow", "healthy") * per_h, 1),
        "slow_accuses_dead_per_h": round(count("dead", "slow", "healthy") * per_h, 1),
        # Accusations of the stalled node (suspect is expected: it is silent).
        "stalled_suspected_per_h": round(count("suspect", None, "slow") * per_h, 1),
        "stalled_declared_dead": count("dead", None, "slow"),
        "converged_at_end": bool(sim.run_until(sim.converged, 60, step=0.1) is not None),
    }
    return out


# --- 4. steady state ---------------------------------------------------------------------


def envelope_overhead(node_id: str) -> int:
    keyring = Keyring([os.urandom(32)])
    return Envelope(node_id, "caxton", keyring, lambda: 1.0e9).overhead


def steady_state(n: int, seed: int, window: float, real_id_len: int) -> Dict[str, Any]:
    sim = make_sim(n, seed)
    if sim.run_until(sim.converged, 120, step=0.05) is None:
        return {"error": "did not converge"}
    # Past the join's broadcasts (retransmit limit x gossip interval) and one
    # push-pull period, so only the periodic traffic is left.
    sim.run(60.0)
    p0, b0, s0 = sum(sim.packets_sent), sum(sim.bytes_sent), sum(sim.stream_bytes)
    sim.run(window)
    pkts = (sum(sim.packets_sent) - p0) / n / window
    plain = (sum(sim.bytes_sent) - b0) / n / window
    stream = (sum(sim.stream_bytes) - s0) / n / window
    sim_overhead = envelope_overhead("n%d" % (n - 1))
    id_overhead = envelope_overhead("x" * real_id_len)
    # The sim's ids are "n<i>"; a packet carries the sender's id in the
    # envelope and ids in the messages.  Envelope cost is recomputed for an
    # id of real_id_len characters; the ids inside messages stay the sim's.
    sealed = plain + pkts * id_overhead
    wire = sealed + pkts * IP_UDP
    return {
        "n": n,
        "window_s": window,
        "packets_per_s": round(pkts, 3),
        "plain_bytes_per_s": round(plain, 1),
        "mean_packet_plain_bytes": round(plain / pkts, 1) if pkts else None,
        "envelope_overhead_bytes": id_overhead,
        "envelope_overhead_sim_id_bytes": sim_overhead,
        "sealed_bytes_per_s": round(sealed, 1),
        "wire_bytes_per_s": round(wire, 1),
        "push_pull_payload_bytes_per_s": round(stream, 1),
        "total_sealed_plus_push_pull_bytes_per_s": round(sealed + stream, 1),
    }


# --- 5. dissemination ------------------------------------------------------------------


def logistic_times(n: int, loss: float, fanout: int, interval: float) -> Dict[str, float]:
    """
    Serf's convergence model (notes/swim.md 6.3): infected fraction after x
    rounds f = 1/(1 + (N+1) e^(-c N x)), c = fanout/N (1-loss) 0.5; time
    for f in seconds (continuous rounds x interval).
    """
    cn = fanout * (1 - loss) * 0.5
    out = {}
    # "all": fewer than half a node left uninformed, f = 1 - 0.5/N.
    for label, f in (("50", 0.5), ("99", 0.99), ("9999", 0.9999), ("all", 1 - 0.5 / n)):
        x = math.log((n + 1) / (1 / f - 1)) / cn
        out[f"t{label}_s"] = round(x * interval, 3)
    return out


def dissemination(n: int, rounds: int, seed: int, loss: float) -> Dict[str, Any]:
    rng = random.Random(seed)
    sim = make_sim(n, seed, loss=loss)
    if sim.run_until(sim.converged, 120, step=0.05) is None:
        return {"error": "did not converge"}
    sim.run(30.0)
    t50: List[Optional[float]] = []
    t99: List[Optional[float]] = []
    t100: List[Optional[float]] = []
    curve: List[List[float]] = []
    for r in range(rounds):
        sim.run(rng.uniform(0.0, 1.0))
        src = rng.randrange(n)
        meta = b"round-%d" % r
        node_id = sim.nodes[src].node_id
        sim.nodes[src].membership.update_meta(meta)
        start = sim.now
        marks: Dict[str, Optional[float]] = {"50": None, "99": None, "100": None}
        points = []
        while sim.now - start < 60.0:
            have = 1 + sum(
                1
                for node in sim.nodes
                if node.index != src and (m := node.membership.member(node_id)) is not None and m.meta == meta
            )
            frac = have / n
            el = sim.now - start
            if r == 0:
                points.append([round(el, 3), round(frac, 3)])
            if marks["50"] is None and frac >= 0.5:
                marks["50"] = el
            if marks["99"] is None and frac >= 0.99:
                marks["99"] = el
            if frac >= 1.0:
                marks["100"] = el
                break
            sim.run(0.01)
        t50.append(marks["50"])
        t99.append(marks["99"])
        t100.append(marks["100"])
        if r == 0:
            curve = points[:: max(1, len(points) // 25)]
        sim.run(5.0)
    config = sim.config
    return {
        "n": n,
        "loss": loss,
        "t50": stats(t50),
        "t99": stats(t99),
        "t100": stats(t100),
        "model": logistic_times(n, loss, config.gossip_nodes, config.gossip_interval),
        "curve_round0": curve,
    }


# --- 6. mass restart ----------------------------------------------------------------------


def mass_restart(
    n: int, rounds: int, seed: int, reset_incarnation: bool, timeout: float = 900.0
) -> List[Optional[float]]:
    out = []
    for r in range(rounds):
        sim = make_sim(n, seed * 100 + r)
        if sim.run_until(sim.converged, 120, step=0.05) is None:
            out.append(None)
            continue
        sim.run(5.0)
        for i in range(1, n):
            sim.restart(i, seeds=[0], incarnation=0 if reset_incarnation else None)
        out.append(sim.run_until(sim.converged, timeout, step=0.1))
    return out


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8,32,128", help="cluster sizes for the N sweep")
    parser.add_argument("--join-rounds", type=int, default=5, help="join runs per size")
    parser.add_argument("--spec-join-n", type=int, default=50)
    parser.add_argument("--spec-join-rounds", type=int, default=20)
    parser.add_argument("--detect-rounds", type=int, default=10, help="kills per size")
    parser.add_argument("--spec-detect-n", default="5,10", help="sizes for the <5 s detection target")
    parser.add_argument("--spec-detect-rounds", type=int, default=40)
    parser.add_argument("--fp-n", type=int, default=16)
    parser.add_argument("--fp-hours", type=float, default=1.0, help="simulated hours per FP run")
    parser.add_argument("--steady-window", type=float, default=240.0, help="simulated seconds")
    parser.add_argument("--id-len", type=int, default=8, help="node id length for the envelope")
    parser.add_argument("--sweep-n", type=int, default=32)
    parser.add_argument("--losses", default="0,0.01,0.05,0.10")
    parser.add_argument("--sweep-rounds", type=int, default=5)
    parser.add_argument("--restart-n", type=int, default=50)
    parser.add_argument("--restart-rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sizes = "8,32"
        args.join_rounds = 2
        args.spec_join_rounds = 3
        args.detect_rounds = 3
        args.spec_detect_rounds = 5
        args.fp_hours = 0.05
        args.sweep_rounds = 2
        args.restart_rounds = 1
        args.restart_n = 8
        args.steady_window = 30.0
    sizes = [int(x) for x in args.sizes.split(",") if x]
    spec_detect = [int(x) for x in args.spec_detect_n.split(",") if x]
    losses = [float(x) for x in args.losses.split(",") if x]

    steal = CpuSteal()
    t_start = time.perf_counter()
    figures: Dict[str, Any] = {}
    print("SWIM in the simulator: real core and codec, simulated time, lan profile,")
    print(f"network delay {DELAY * 1000:.0f} ms + 0..{JITTER * 1000:.0f} ms jitter; all times simulated seconds.\n")

    # 1. join
    print("1. join convergence (N start at once, join through one seed; every node sees all N)")
    join: Dict[str, Any] = {}
    for n in sorted(set(sizes + [args.spec_join_n])):
        rounds = args.spec_join_rounds if n == args.spec_join_n else args.join_rounds
        t = time.perf_counter()
        s = stats(join_convergence(n, rounds, args.seed))
        join[str(n)] = s
        print(line(f"N={n:<4} ({rounds} runs)", s) + f"   [{time.perf_counter() - t:.1f} s real]")
    figures["join_convergence_s"] = join

    # 2. detection
    print("\n2. failure detection (kill -9 of one node; time until first / all live members say dead)")
    det: Dict[str, Any] = {}
    for n in sorted(set(sizes + spec_detect)):
        rounds = args.spec_detect_rounds if n in spec_detect else args.detect_rounds
        t = time.perf_counter()
        d = detection(n, rounds, args.seed + n)
        d["expectation"] = detection_expectation(n)
        det[str(n)] = d
        e = d["expectation"]
        print(f" N={n} ({rounds} kills)   [{time.perf_counter() - t:.1f} s real]")
        print(line("first member says dead", d["first"]))
        print(line("all members say dead", d["all"]))
        print(line("restarted node reconverged", d["restart_reconverge"]))
        print(
            f"  formulas: suspicion {e['suspicion_min_s']:.1f}..{e['suspicion_max_s']:.1f} s, "
            f"k_s={e['expected_confirmations']}; first dead >= {e['first_dead_expected_min_s']} s "
            f"(probe interval + min suspicion), typically ~{e['first_dead_expected_typical_s']} s"
        )
    figures["detection_s"] = det

    # 3. false positives
    print(f"\n3. false positives, N={args.fp_n}, {args.fp_hours:g} simulated hour(s) per run, node n1 stalls 2 s every 20-40 s")
    fps: List[Dict[str, Any]] = []
    for lifeguard, loss, stall in (
        (True, 0.0, True),
        (False, 0.0, True),
        (True, 0.01, True),
        (False, 0.01, True),
        (True, 0.01, False),
        (False, 0.01, False),
    ):
        t = time.perf_counter()
        r = false_positives(args.fp_n, args.fp_hours, args.seed, lifeguard, loss, stall)
        fps.append(r)
        print(
            f"  lifeguard {'on ' if lifeguard else 'off'} loss {loss * 100:3.0f}% stall {'yes' if stall else 'no '}: "
            f"FP suspect/dead per h {r['fp_suspect_per_h']:6.1f}/{r['fp_dead_per_h']:5.1f}  "
            f"FP- {r['fpminus_suspect_per_h']:6.1f}/{r['fpminus_dead_per_h']:5.1f}  "
            f"slow->healthy {r['slow_accuses_suspect_per_h']:5.1f}/{r['slow_accuses_dead_per_h']:4.1f}  "
            f"stalled node: suspected {r['stalled_suspected_per_h']:5.1f}/h, declared dead {r['stalled_declared_dead']}x "
            f"({r['stalls']} stalls)  [{time.perf_counter() - t:.1f} s real]"
        )
    figures["false_positives"] = fps

    # 4. steady state
    print(f"\n4. steady state per node (after convergence + 60 s, {args.steady_window:g} s window, no churn)")
    steady: Dict[str, Any] = {}
    for n in sorted(set(sizes + [100])):
        s = steady_state(n, args.seed, args.steady_window, args.id_len)
        steady[str(n)] = s
        print(
            f"  N={n:<4} {s['packets_per_s']:5.2f} pkt/s  plain {s['plain_bytes_per_s']:6.1f} B/s "
            f"(mean {s['mean_packet_plain_bytes']} B/pkt)  +envelope {s['envelope_overhead_bytes']} B/pkt "
            f"-> {s['sealed_bytes_per_s']:6.1f} B/s  wire (+IP/UDP) {s['wire_bytes_per_s']:6.1f} B/s  "
            f"push-pull payload {s['push_pull_payload_bytes_per_s']:6.1f} B/s"
        )
    figures["steady_state"] = steady

    # 5. loss sweep + dissemination
    print(f"\n5. loss sweep, N={args.sweep_n}: join, detection, dissemination of one alive broadcast vs the logistic model")
    sweep: List[Dict[str, Any]] = []
    for loss in losses:
        t = time.perf_counter()
        j = stats(join_convergence(args.sweep_n, args.sweep_rounds, args.seed + 7, loss=loss))
        d = detection(args.sweep_n, args.sweep_rounds, args.seed + 11, loss=loss)
        dis = dissemination(args.sweep_n, args.sweep_rounds * 2, args.seed + 13, loss)
        sweep.append({"loss": loss, "join": j, "detection_first": d["first"], "detection_all": d["all"],
                      "false_dead_healthy": d["false_dead_healthy"], "dissemination": dis})
        m = dis["model"]
        print(f" loss {loss * 100:.0f}%   [{time.perf_counter() - t:.1f} s real]")
        print(line("join", j))
        print(line("detection, all members", d["all"]))
        print(line("dissemination 50 %", dis["t50"]) + f"   model {m['t50_s']:.2f} s")
        print(line("dissemination 99 %", dis["t99"]) + f"   model {m['t99_s']:.2f} s")
        print(line("dissemination 100 %", dis["t100"]) + f"   model (f=1-0.5/N) {m['tall_s']:.2f} s, 99.99 % {m['t9999_s']:.2f} s")
    figures["loss_sweep"] = sweep

    # 6. mass restart
    print(f"\n6. mass restart: N={args.restart_n}, every node but the seed restarts at once at a new address")
    mr: Dict[str, Any] = {}
    for reset in (False, True):
        s = stats(mass_restart(args.restart_n, args.restart_rounds, args.seed, reset))
        key = "incarnation_0" if reset else "next_incarnation"
        mr[key] = s
        print(line("with " + ("incarnation 0" if reset else "the next incarnation"), s))
    figures["mass_restart_s"] = mr

    # SPEC summary
    j50 = join.get(str(args.spec_join_n), {})
    det_spec = [det[str(n)]["all"] for n in spec_detect if str(n) in det]
    worst_all = max((d.get("max", float("inf")) for d in det_spec), default=None)
    stall_runs = [r for r in fps if r["stall_s"] and r["lifeguard"]]
    spec = {
        "join_50_every_run_lt_3s": {"worst_s": j50.get("max"), "runs": j50.get("n"),
                                     "met": j50.get("max") is not None and j50["timeouts"] == 0 and j50["max"] < 3.0},
        "detect_le10_all_lt_5s": {"worst_s": worst_all, "sizes": spec_detect,
                                  "met": worst_all is not None and worst_all < 5.0},
        "stall_2s_no_fp": {
            "fpminus_dead": sum(r["fpminus_dead_per_h"] for r in stall_runs),
            "fpminus_suspect": sum(r["fpminus_suspect_per_h"] for r in stall_runs),
            "stalled_declared_dead": sum(r["stalled_declared_dead"] for r in stall_runs),
            "met": all(r["fpminus_suspect_per_h"] == 0 and r["fpminus_dead_per_h"] == 0
                       and r["stalled_declared_dead"] == 0 for r in stall_runs if r["loss"] == 0),
        },
        "bytes_per_s_le_300": {
            str(n): s["total_sealed_plus_push_pull_bytes_per_s"] for n, s in steady.items()
        },
    }
    figures["spec"] = spec
    real = time.perf_counter() - t_start
    print("\nSPEC 11 (simulated):")
    print(f"  join, {args.spec_join_n} nodes, every run < 3 s: worst {spec['join_50_every_run_lt_3s']['worst_s']} s "
          f"over {j50.get('n')} runs -> {'met' if spec['join_50_every_run_lt_3s']['met'] else 'NOT met'}")
    print(f"  kill detected by all, N in {spec_detect}, < 5 s: worst {worst_all} s "
          f"-> {'met' if spec['detect_le10_all_lt_5s']['met'] else 'NOT met'}")
    print(f"  2 s stall, lifeguard on, no loss: FP- and stalled-node deaths zero -> "
          f"{'met' if spec['stall_2s_no_fp']['met'] else 'NOT met'}")
    print(f"  bytes/s per node (sealed UDP + push-pull payload): {spec['bytes_per_s_le_300']}")
    print(f"\n[{real:.1f} s real]")
    emit(
        "swim_sim",
        {
            "profile": "lan",
            "delay_s": DELAY,
            "jitter_s": JITTER,
            "sizes": sizes,
            "join_rounds": args.join_rounds,
            "spec_join_n": args.spec_join_n,
            "spec_join_rounds": args.spec_join_rounds,
            "detect_rounds": args.detect_rounds,
            "spec_detect_n": spec_detect,
            "spec_detect_rounds": args.spec_detect_rounds,
            "fp_n": args.fp_n,
            "fp_hours": args.fp_hours,
            "steady_window_s": args.steady_window,
            "id_len": args.id_len,
            "sweep_n": args.sweep_n,
            "losses": losses,
            "sweep_rounds": args.sweep_rounds,
            "restart_n": args.restart_n,
            "restart_rounds": args.restart_rounds,
            "seed": args.seed,
            "quick": args.quick,
            "real_seconds": round(real, 1),
        },
        figures,
        steal.stop(),
    )


if __name__ == "__main__":
    main()
