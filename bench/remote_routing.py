"""
Messages between two real nodes over mutual TLS on 127.0.0.1 (SPEC 11:
remote routing p50 < 5 ms, p99 < 50 ms), cross-node messages per second,
and the time to drain a queue after the receiving node comes back.

Starts two ``python -m twisted caxton`` nodes (default ``lan`` profile,
mTLS, encrypted gossip), deploys the WAT echo agent on n2, and sends
requests from an API client on n1:

1. latency: ``--latency`` requests one at a time.  Each hop's latency is
   read from the nodes' own records: a message's ``recorded_at`` on the
   node that accepted it against its ``recorded_at`` on the node it
   arrived at (both from the same machine clock), so HTTP is not in the
   figure.  Request hops (n1 -> n2) and reply hops (n2 -> n1) are
   reported together and apart.
2. throughput: ``--messages`` requests sent by ``--clients`` concurrent
   HTTP clients; the rate is requests whose reply reached n1's mailbox
   per second (two remote hops each, plus the API on n1).
3. drain: n2 killed (SIGKILL), ``--queued`` requests accepted by n1 and
   queued in its outbox, n2 restarted on the same data directory; the
   time from n2's API being up to the last reply in n1's mailbox.
4. relocation: a third node n3 hosts a relocatable echo; once n1 and n2
   keep copies, n3 is killed (SIGKILL) and n1 invokes the agent every
   50 ms: the time from the kill to the first answer (failure detection
   with the default profile, the choice of a new home, the start).

    python bench/remote_routing.py [--latency 500] [--messages 5000] [--clients 16] [--queued 10000]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import _common  # noqa: F401
from _common import CpuSteal, emit, percentile
from cluster_nodes import Cluster, Node

import wasmtime

ECHO = os.path.join(_common.REPO, "examples", "agents", "wat", "echo.wat")


def request(port: int, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"content-type": "application/json"})
        response = conn.getresponse()
        text = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {text[:300]!r}")
        return json.loads(text) if text else None
    finally:
        conn.close()


def send(port: int, client: str, i: int) -> str:
    body = {"performative": "request", "sender": client, "receiver": "echo", "content": {"i": i}}
    return request(port, "POST", "/api/v1/messages", body)["conversation_id"]


def mailbox_count(port: int, client: str, want: int, timeout: float) -> Optional[float]:
    """
    Read C{client}'s mailbox until it holds C{want} messages; when.
    """
    deadline = time.monotonic() + timeout
    after, count = 0, 0
    while time.monotonic() < deadline:
        body = request(port, "GET", f"/api/v1/mailboxes/{client}?after={after}&limit=1000&wait=2s")
        count += len(body["messages"])
        after = body["next_after"]
        if count >= want:
            return time.monotonic()
    return None


def conversation(port: int, conversation_id: str) -> List[Dict[str, Any]]:
    return request(port, "GET", f"/api/v1/conversations/{conversation_id}")["messages"]


def hops(n1: Node, n2: Node, conversation_id: str) -> List[tuple]:
    """
    (direction, seconds) for the request and the reply of one conversation.
    """
    first = {m["message"]["message_id"]: m for m in conversation(n1.port, conversation_id)}
    second = {m["message"]["message_id"]: m for m in conversation(n2.port, conversation_id)}
    found = []
    for message_id, there in second.items():
        here = first.get(message_id)
        if here is None:
            continue
        if there["message"]["performative"] == "request":
            found.append(("request", there["recorded_at"] - here["recorded_at"]))
        else:
            found.append(("reply", here["recorded_at"] - there["recorded_at"]))
    return found


def ms(values: List[float]) -> Dict[str, float]:
    values = sorted(values)
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 3),
        "p90_ms": round(percentile(values, 90) * 1000, 3),
        "p99_ms": round(percentile(values, 99) * 1000, 3),
        "max_ms": round(values[-1] * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=int, default=500)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queued", type=int, default=10000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="caxton-remote-")
    cluster = Cluster(tmp)
    steal = CpuSteal()
    try:
        n1, n2 = Node(cluster, "n1"), Node(cluster, "n2")
        cluster.nodes += [n1, n2]
        n1.spawn(None)
        cluster.wait_ports([n1])
        seed = cluster.gossip_address(n1)
        n2.spawn(seed)
        cluster.wait_ports([n2])
        if cluster.wait([n1, n2], cluster.all_alive([n1, n2]), 60) is None:
            raise RuntimeError("the two nodes did not see each other")
        wasm = wasmtime.wat2wasm(open(ECHO).read())
        request(n2.port, "POST", "/api/v1/agents",
                {"name": "echo", "wasm": base64.b64encode(wasm).decode()})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = request(n1.port, "GET", "/api/v1/agents?node=n2")["agents"]
            if listed:
                break
            time.sleep(0.05)

        # 1. Latency, one request at a time.
        ids = []
        for i in range(args.latency):
            ids.append(send(n1.port, "client:latency", i))
            time.sleep(0.002)
        mailbox_count(n1.port, "client:latency", args.latency, 60)
        found = [h for cid in ids for h in hops(n1, n2, cid)]
        latency = {
            "both": ms([s for _, s in found]),
            "request": ms([s for d, s in found if d == "request"]),
            "reply": ms([s for d, s in found if d == "reply"]),
        }
        print("remote hop latency:", json.dumps(latency))

        # 2. Throughput with concurrent clients.
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.clients)
        start = time.monotonic()
        list(pool.map(lambda i: send(n1.port, "client:rate", i), range(args.messages)))
        accepted = time.monotonic()
        done = mailbox_count(n1.port, "client:rate", args.messages, 300)
        rate = {
            "messages": args.messages,
            "accepted_per_s": round(args.messages / (accepted - start), 1),
            "round_trips_per_s": round(args.messages / (done - start), 1) if done else None,
        }
        print("throughput:", json.dumps(rate))

        # 3. Drain a queue after the receiver comes back.
        n2.kill()
        if cluster.wait([n1], lambda views: views[0] and views[0].get("n2") == "dead", 60) is None:
            raise RuntimeError("n1 never saw n2 dead")
        start = time.monotonic()
        list(pool.map(lambda i: send(n1.port, "client:drain", i), range(args.queued)))
        queued_in = time.monotonic() - start
        status = request(n1.port, "GET", "/api/v1/cluster/status")
        waiting = status.get("queues", {}).get("n2", 0)
        n2.spawn(seed)
        cluster.wait_ports([n2])
        up = time.monotonic()
        done = mailbox_count(n1.port, "client:drain", args.queued, 600)
        drain = {
            "queued": args.queued,
            "waiting_in_outbox": waiting,
            "seconds_to_queue": round(queued_in, 2),
            "drain_s": round(done - up, 2) if done else None,
            "drain_per_s": round(args.queued / (done - up), 1) if done else None,
        }
        print("drain:", json.dumps(drain))
        pool.shutdown()

        # 4. Relocation after a kill -9.
        if cluster.wait([n1, n2], cluster.all_alive([n1, n2]), 60) is None:
            raise RuntimeError("n2 did not come back")
        n3 = Node(cluster, "n3")
        cluster.nodes.append(n3)
        n3.spawn(seed)
        cluster.wait_ports([n3])
        if cluster.wait([n1, n2, n3], cluster.all_alive([n1, n2, n3]), 60) is None:
            raise RuntimeError("n3 did not join")
        request(n3.port, "POST", "/api/v1/agents",
                {"name": "mover", "wasm": base64.b64encode(wasm).decode(), "relocatable": True})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all("mover" in request(n.port, "GET", "/api/v1/cluster/status")["replicas"] for n in (n1, n2)):
                break
            time.sleep(0.1)
        n3.kill()
        killed = time.monotonic()
        answered = None
        while time.monotonic() < killed + 120:
            try:
                reply = request(n1.port, "POST", "/api/v1/agents/mover/invoke", {"content": 1, "timeout": "5s"})
                if reply["reply"]["performative"] == "inform":
                    answered = time.monotonic() - killed
                    break
            except RuntimeError:
                pass
            time.sleep(0.05)
        home = request(n1.port, "GET", "/api/v1/agents/mover").get("node")
        relocation = {"kill_to_answer_s": round(answered, 2) if answered else None, "new_home": home}
        print("relocation:", json.dumps(relocation))
        emit(
            "remote_routing",
            {"latency": args.latency, "messages": args.messages, "clients": args.clients,
             "queued": args.queued, "profile": "lan"},
            {"latency": latency, "throughput": rate, "drain": drain, "relocation": relocation},
            steal.stop(),
        )
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
