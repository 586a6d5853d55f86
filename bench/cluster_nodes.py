"""
SWIM membership with real node processes on 127.0.0.1 (SPEC 11: failure
detection, join convergence, the 2 s stall, steady-state cost).

Starts N ``python -m twisted caxton`` nodes with mTLS certificates from a
throw-away CA, an encrypted gossip key, ephemeral ports and the DEFAULT
``lan`` profile (no timing overrides: every ``CAXTON_*`` variable is
removed from the children's environment), and drives them through their
REST APIs:

1. join convergence: the seed starts first; the other N-1 are spawned at
   once with ``--join <seed>``; the wall time until every node lists all N
   members alive, counted from the spawn and from the moment the last node's
   API was up (process start-up on a busy 2-core machine is most of the
   first figure).
2. failure detection: ``kill -9`` of one node (not the seed), then every
   other node's ``/api/v1/cluster/members`` is polled about every 50 ms
   until each lists it dead; first and all.  The node is restarted (same
   id, same data directory, new ports) and the cluster reconverges between
   rounds.  The poll period bounds the resolution.
3. stall: ``SIGSTOP`` one node for 2 s, ``SIGCONT``, then watch every
   node's view for 10 s more: did any node hold a member other than the
   stalled one suspect or dead (FP-), was the stalled node ever listed dead?
   A stopped process is the real thing the simulator's stall imitates.
4. steady state, idle, no API polling for ``--idle`` seconds: CPU per node
   from ``/proc/<pid>/stat`` (utime + stime), beside a standalone node (not
   clustered) measured over the same window as the baseline; and the
   loopback traffic.  By default the whole benchmark runs in its own network
   namespace (``unshare -n``, needs root or user namespaces), so the
   loopback counters (``/proc/net/dev``, ``/proc/net/snmp``) hold only this
   cluster's traffic: bytes per node per second include every header
   (Ethernet 14 + IP 20 + UDP 8 or TCP 32) and the node streams (push-pull
   over mTLS).  The node's API does not expose its UDP counters; without a
   namespace the bytes are reported as not available.

    python bench/cluster_nodes.py [--nodes 5] [--rounds 4] [--idle 20] [--stalls 2] [--netns auto|off]

Every process is killed at the end (also on error or Ctrl-C; children also
get SIGKILL if this script dies), and the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import _common  # noqa: F401
from _common import REPO, CpuSteal, emit, percentile

from caxton.cluster import pki
from caxton.swim.keyring import generate_key

_PORT = re.compile(r"Site starting on (\d+)")
_IN_NETNS = "CAXTON_BENCH_IN_NETNS"
POLL = 0.05


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: SIGKILL the child if this script dies.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def http_get(port: int, path: str, timeout: float = 2.0) -> Optional[Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        return json.loads(body)
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Node:
    """
    One node process: its id, directories, API port and gossip address.
    """

    def __init__(self, bench: "Cluster", node_id: str, clustered: bool = True) -> None:
        self.bench = bench
        self.node_id = node_id
        self.clustered = clustered
        self.data_dir = os.path.join(bench.tmp, "data-" + node_id)
        self.tls_dir = os.path.join(bench.tmp, "tls-" + node_id)
        if clustered:
            pki.issue(bench.ca_dir, node_id, self.tls_dir)
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = ""
        self.port: Optional[int] = None
        self.address: Optional[str] = None
        self.spawned = 0.0
        self.ready_at: Optional[float] = None
        self.starts = 0

    def spawn(self, join: Optional[str]) -> None:
        self.starts += 1
        self.port = None
        self.address = None
        self.ready_at = None
        self.log_path = os.path.join(self.bench.tmp, f"{self.node_id}-{self.starts}.log")
        argv = [sys.executable, "-m", "twisted", "caxton", "--node-id", self.node_id,
                "--data-dir", self.data_dir, "--api", "tcp:0:interface=127.0.0.1"]
        if self.clustered:
            argv += ["--bind", "127.0.0.1:0", "--tls-dir", self.tls_dir,
                     "--gossip-key-file", self.bench.key_file, "--profile", "lan"]
            if join:
                argv += ["--join", join]
        self.spawned = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=self.bench.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )

    def poll_port(self) -> bool:
        if self.port is not None:
            return True
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.node_id} exited:\n{self.tail()}")
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as f:
                match = _PORT.search(f.read())
        except OSError:
            match = None
        if match:
            self.port = int(match.group(1))
            self.ready_at = time.monotonic()
            return True
        return False

    def tail(self) -> str:
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def members(self) -> Optional[Dict[str, str]]:
        body = http_get(self.port, "/api/v1/cluster/members") if self.port else None
        if not body:
            return None
        return {m["id"]: m["state"] for m in body.get("members", [])}

    def cpu_ticks(self) -> int:
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.ca_dir = os.path.join(tmp, "ca")
        pki.init_ca(self.ca_dir, cluster_name="caxton")
        self.key_file = os.path.join(tmp, "gossip.key")
        with open(self.key_file, "w") as f:
            f.write(generate_key() + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAXTON_")}
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        self.env = env
        self.nodes: List[Node] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=12)

    def wait_ports(self, nodes: List[Node], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n.poll_port() for n in nodes):
                return
            time.sleep(0.02)
        raise RuntimeError("nodes did not start: " + ", ".join(n.node_id for n in nodes if n.port is None))

    def gossip_address(self, node: Node, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = http_get(node.port, "/api/v1/cluster/status")
            if body and body.get("address"):
                node.address = body["address"]
                return node.address
            time.sleep(0.05)
        raise RuntimeError(f"{node.node_id}: no gossip address")

    def views(self, nodes: List[Node]) -> List[Optional[Dict[str, str]]]:
        return list(self.pool.map(lambda n: n.members(), nodes))

    def wait(self, nodes: List[Node], check, timeout: float) -> Optional[float]:
        """
        Poll every node's member list about every POLL s until
        check(views) is true; the time it took, or None.
        """
        start = time.monotonic()
        deadline = start + timeout
        for _ in range(int(timeout / POLL) + 10):
            t = time.monotonic()
            if check(self.views(nodes)):
                return t - start
            if t > deadline:
                return None
            time.sleep(max(0.0, POLL - (time.monotonic() - t)))
        return None

    def all_alive(self, nodes: List[Node]):
        ids = {n.node_id for n in nodes}

        def check(views) -> bool:
            return all(v is not None and {k for k, s in v.items() if s == "alive"} == ids for v in views)

        return check

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        self.pool.shutdown(wait=False)


def stats(values: List[Optional[float]]) -> Dict[str, Any]:
    ok = sorted(v for v in values if v is not None)
    out: Dict[str, Any] = {"n": len(values), "timeouts": len(values) - len(ok)}
    if ok:
        out.update(p50=round(percentile(ok, 50), 3), max=round(ok[-1], 3), min=round(ok[0], 3))
    return out


def fmt(label: str, s: Dict[str, Any]) -> str:
    if "p50" not in s:
        return f"  {label:<42} no samples ({s['timeouts']} timeouts)"
    extra = f", {s['timeouts']} TIMEOUTS" if s["timeouts"] else ""
    return f"  {label:<42} p50 {s['p50']:6.2f} s  max {s['max']:6.2f} s  (min {s['min']:.2f}, n={s['n']}{extra})"


def read_net() -> Dict[str, int]:
    out = {}
    with open("/proc/net/dev", encoding="ascii") as f:
        for line in f:
            if line.strip().startswith("lo:"):
                parts = line.split(":", 1)[1].split()
                out["lo_tx_bytes"] = int(parts[8])
                out["lo_tx_packets"] = int(parts[9])
    with open("/proc/net/snmp", encoding="ascii") as f:
        rows = [line.split() for line in f]
    for i in range(0, len(rows) - 1, 2):
        head, vals = rows[i], rows[i + 1]
        if head[0] == "Udp:":
            d = dict(zip(head[1:], vals[1:]))
            out["udp_out_datagrams"] = int(d["OutDatagrams"])
        if head[0] == "Tcp:":
            d = dict(zip(head[1:], vals[1:]))
            out["tcp_out_segs"] = int(d["OutSegs"])
    return out


def enter_netns(mode: str) -> bool:
    """
    Re-run this script in a fresh network namespace (only loopback); True if
    we are in one.
    """
    if os.environ.get(_IN_NETNS) == "1":
        return True
    if mode == "off" or not shutil.which("unshare"):
        return False
    flags = ["-n"] if os.geteuid() == 0 else ["-r", "-n"]
    probe = subprocess.run(["unshare", *flags, "true"], capture_output=True)
    if probe.returncode != 0:
        print("(no network namespace available: bytes will not be measured)", flush=True)
        return False
    env = dict(os.environ)
    env[_IN_NETNS] = "1"
    script = 'ip link set lo up 2>/dev/null; exec "$@"'
    argv = ["unshare", *flags, "sh", "-c", script, "sh", sys.executable, *sys.argv]
    os.execvpe("unshare", argv, env)
    return False  # not reached


def bring_lo_up() -> None:
    # In case "ip" was missing: SIOCSIFFLAGS on lo with IFF_UP|IFF_RUNNING.
    import fcntl
    import socket
    import struct

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16sH14s", b"lo", 0, b"\0" * 14)
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), 0x8913, ifr))[1]
        if not flags & 1:
            fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH14s", b"lo", flags | 1 | 0x40, b"\0" * 14))
    finally:
        s.close()


def run(args: argparse.Namespace, in_netns: bool) -> None:
    steal = CpuSteal()
    t_begin = time.monotonic()
    n = args.nodes
    tmp = tempfile.mkdtemp(prefix="caxton-bench-cluster-")
    cluster: Optional[Cluster] = None
    figures: Dict[str, Any] = {}
    try:
        cluster = Cluster(tmp)
        nodes = [Node(cluster, f"node-{i:02d}") for i in range(n)]
        cluster.nodes.extend(nodes)
        baseline = Node(cluster, "solo", clustered=False)
        cluster.nodes.append(baseline)
        print(f"{n} nodes on 127.0.0.1, lan profile, encrypted gossip, mTLS streams"
              f"{', own network namespace' if in_netns else ''}; temp {tmp}", flush=True)

        # 1. join
        seed = nodes[0]
        seed.spawn(None)
        baseline.spawn(None)
        cluster.wait_ports([seed, baseline])
        seed_addr = cluster.gossip_address(seed)
        t0 = time.monotonic()
        for node in nodes[1:]:
            node.spawn(seed_addr)
        cluster.wait_ports(nodes)
        last_ready = max(node.ready_at for node in nodes[1:]) - t0
        took = cluster.wait(nodes, cluster.all_alive(nodes), args.timeout)
        if took is None:
            raise RuntimeError("the cluster did not converge")
        from_spawn = time.monotonic() - t0
        join = {
            "from_spawn_s": round(from_spawn, 2),
            "last_api_up_after_spawn_s": round(last_ready, 2),
            "after_last_api_up_s": round(from_spawn - last_ready, 2),
        }
        figures["join"] = join
        for node in nodes:
            cluster.gossip_address(node)
        print("\n1. join convergence (N-1 nodes spawned at once, joining through the seed)")
        print(f"  all {n} see all {n} alive {join['from_spawn_s']:.2f} s after the spawn; the last API was up "
              f"at {join['last_api_up_after_spawn_s']:.2f} s, so {join['after_last_api_up_s']:.2f} s after that", flush=True)

        # 4. steady state (idle) first, while the cluster is fresh.
        print(f"\n4. steady state: {args.idle:g} s idle, no API polling", flush=True)
        time.sleep(args.settle)
        watched = nodes + [baseline]
        c0 = [node.cpu_ticks() for node in watched]
        net0 = read_net() if in_netns else None
        w0 = time.monotonic()
        time.sleep(args.idle)
        window = time.monotonic() - w0
        c1 = [node.cpu_ticks() for node in watched]
        net1 = read_net() if in_netns else None
        hz = os.sysconf("SC_CLK_TCK")
        cpu = [round(100.0 * (b - a) / hz / window, 2) for a, b in zip(c0, c1)]
        steady: Dict[str, Any] = {
            "window_s": round(window, 1),
            "cpu_pct_per_node": cpu[:-1],
            "cpu_pct_per_node_mean": round(sum(cpu[:-1]) / n, 2),
            "cpu_pct_standalone_node": cpu[-1],
            "cpu_pct_membership_estimate": round(sum(cpu[:-1]) / n - cpu[-1], 2),
            "cpu_tick_resolution_pct": round(100.0 / hz / window, 2),
        }
        if net0 and net1:
            d = {k: net1[k] - net0[k] for k in net0}
            steady.update(
                lo_bytes_per_node_per_s=round(d["lo_tx_bytes"] / n / window, 1),
                lo_packets_per_node_per_s=round(d["lo_tx_packets"] / n / window, 2),
                udp_datagrams_per_node_per_s=round(d["udp_out_datagrams"] / n / window, 2),
                tcp_segments_per_node_per_s=round(d["tcp_out_segs"] / n / window, 2),
            )
            if d["udp_out_datagrams"]:
                steady["mean_bytes_per_lo_packet"] = round(d["lo_tx_bytes"] / max(1, d["lo_tx_packets"]), 1)
        else:
            steady["bytes"] = "not available (no network namespace; the API has no UDP counters)"
        figures["steady_state"] = steady
        print(f"  CPU per node {cpu[:-1]} % of a core (mean {steady['cpu_pct_per_node_mean']} %); "
              f"a standalone node {cpu[-1]} % -> membership about {steady['cpu_pct_membership_estimate']} % "
              f"(resolution {steady['cpu_tick_resolution_pct']} %)")
        if "lo_bytes_per_node_per_s" in steady:
            print(f"  loopback, per node: {steady['lo_bytes_per_node_per_s']} B/s "
                  f"({steady['lo_packets_per_node_per_s']} packets/s: {steady['udp_datagrams_per_node_per_s']} UDP datagrams/s, "
                  f"{steady['tcp_segments_per_node_per_s']} TCP segments/s), all headers included", flush=True)
        else:
            print("  bytes: " + steady["bytes"], flush=True)

        # 2. detection
        print(f"\n2. failure detection: kill -9, poll every {POLL * 1000:.0f} ms until every other node lists it dead",
              flush=True)
        first: List[Optional[float]] = []
        last: List[Optional[float]] = []
        rejoin: List[Optional[float]] = []
        for r in range(args.rounds):
            victim = nodes[1 + r % (n - 1)]
            others = [x for x in nodes if x is not victim]
            seen: Dict[str, float] = {}
            t_kill = time.monotonic()
            victim.proc.send_signal(signal.SIGKILL)

            def check(views, others=others, victim=victim, seen=seen, t_kill=t_kill) -> bool:
                now = time.monotonic() - t_kill
                for node, view in zip(others, views):
                    if view is not None and node.node_id not in seen:
                        state = view.get(victim.node_id)
                        if state in (None, "dead", "left"):
                            seen[node.node_id] = now
                return len(seen) == len(others)

            took = cluster.wait(others, check, args.timeout)
            victim.proc.wait(timeout=10)
            a = min(seen.values()) if took is not None else None
            b = max(seen.values()) if took is not None else None
            first.append(a)
            last.append(b)
            # Restart: same id and data, new ports, join through a live node.
            via = others[0].address
            t_r = time.monotonic()
            victim.spawn(via)
            cluster.wait_ports([victim])
            up = time.monotonic() - t_r
            back = cluster.wait(nodes, cluster.all_alive(nodes), args.timeout)
            rejoin.append(None if back is None else back + up)
            cluster.gossip_address(victim)
            print(f"  round {r + 1}: {victim.node_id} first {a if a is None else round(a, 2)} s, "
                  f"all {b if b is None else round(b, 2)} s; restarted and seen alive by all "
                  f"{rejoin[-1] if rejoin[-1] is None else round(rejoin[-1], 2)} s after the spawn", flush=True)
            time.sleep(args.settle)
        det = {"first": stats(first), "all": stats(last), "restart_to_all_alive": stats(rejoin)}
        figures["detection"] = det
        print(fmt("first member lists it dead", det["first"]))
        print(fmt("every member lists it dead", det["all"]))
        print(fmt("restart -> all list it alive (incl. start-up)", det["restart_to_all_alive"]), flush=True)

        # 3. stall
        print(f"\n3. stall: SIGSTOP one node {args.stall_s:g} s, watch every view {args.watch:g} s", flush=True)
        stalls = []
        for r in range(args.stalls):
            slow = nodes[1 + (r + 1) % (n - 1)]
            accused: set = set()

            def check(views, observers, accused=accused) -> bool:
                for node, view in zip(observers, views):
                    for member, state in (view or {}).items():
                        if state in ("suspect", "dead"):
                            accused.add((node.node_id, member, state))
                return False

            t_s = time.monotonic()
            slow.proc.send_signal(signal.SIGSTOP)
            try:
                healthy = [x for x in nodes if x is not slow]
                cluster.wait(healthy, lambda v: check(v, healthy), args.stall_s)
            finally:
                slow.proc.send_signal(signal.SIGCONT)
            stopped = time.monotonic() - t_s
            cluster.wait(nodes, lambda v: check(v, nodes), args.watch)
            # FP-: a healthy observer holds a healthy member suspect or dead.
            healthy_accused = sorted(
                {(o, m, s) for o, m, s in accused if m != slow.node_id and o != slow.node_id}
            )
            by_slow = sorted({(o, m, s) for o, m, s in accused if o == slow.node_id})
            stalled_dead = sorted({o for o, m, s in accused if m == slow.node_id and s == "dead"})
            stalled_susp = sorted({o for o, m, s in accused if m == slow.node_id and s == "suspect"})
            stalls.append({
                "node": slow.node_id,
                "stopped_s": round(stopped, 2),
                "suspected_by": stalled_susp,
                "declared_dead_by": stalled_dead,
                "healthy_members_accused": [list(x) for x in healthy_accused],
                "accused_by_stalled_node": [list(x) for x in by_slow],
            })
            print(f"  {slow.node_id} stopped {stopped:.2f} s: suspected by {len(stalled_susp)} node(s), "
                  f"declared dead by {len(stalled_dead)}; healthy members held suspect/dead by healthy ones: "
                  f"{healthy_accused if healthy_accused else 'none'}; by the stalled node: "
                  f"{by_slow if by_slow else 'none'}", flush=True)
            time.sleep(args.settle)
        figures["stall"] = stalls
        ok_stall = all(not s["declared_dead_by"] and not s["healthy_members_accused"] for s in stalls)

        spec = {
            "detect_all_lt_5s": {"worst_s": det["all"].get("max"), "met": det["all"].get("max") is not None
                                 and det["all"]["timeouts"] == 0 and det["all"]["max"] < 5.0},
            "stall_no_fp": {"met": ok_stall},
            "cpu_le_1pct": {"membership_estimate_pct": steady["cpu_pct_membership_estimate"],
                            "whole_node_pct": steady["cpu_pct_per_node_mean"],
                            "met": steady["cpu_pct_membership_estimate"] <= 1.0},
        }
        if "lo_bytes_per_node_per_s" in steady:
            spec["bytes_le_300"] = {"per_node_B_s": steady["lo_bytes_per_node_per_s"],
                                    "met": steady["lo_bytes_per_node_per_s"] <= 300}
        figures["spec"] = spec
        real = time.monotonic() - t_begin
        print("\nSPEC 11 (real processes):")
        for k, v in spec.items():
            print(f"  {k}: {v}")
        print(f"\n[{real:.1f} s real]", flush=True)
        emit(
            "cluster_nodes",
            {"nodes": n, "profile": "lan", "rounds": args.rounds, "poll_s": POLL, "idle_s": args.idle,
             "stalls": args.stalls, "stall_s": args.stall_s, "netns": in_netns,
             "real_seconds": round(real, 1)},
            figures,
            steal.stop(),
        )
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5, help="cluster size (2..10 on a 2-core machine)")
    parser.add_argument("--rounds", type=int, default=4, help="kill -9 rounds")
    parser.add_argument("--idle", type=float, default=30.0, help="steady-state window, seconds (one push-pull interval)")
    parser.add_argument("--settle", type=float, default=3.0, help="pause after each change, seconds")
    parser.add_argument("--stalls", type=int, default=2)
    parser.add_argument("--stall-s", type=float, default=2.0)
    parser.add_argument("--watch", type=float, default=10.0, help="watch after a stall, seconds")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on every wait, seconds")
    parser.add_argument("--netns", choices=("auto", "off"), default="auto")
    args = parser.parse_args()
    if args.nodes < 3:
        parser.error("--nodes must be at least 3")
    in_netns = enter_netns(args.netns)
    if in_netns:
        try:
            bring_lo_up()
        except OSError:
            pass
    run(args, in_netns)


if __name__ == "__main__":
    main()
