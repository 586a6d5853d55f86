"""
Integration tests of messages between nodes (SPEC 4.2, 5.2-5.4): real
C{twist caxton} processes on 127.0.0.1, messages over the mutual-TLS node
streams, kill -9 and restarts, checked through the nodes' REST APIs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from typing import Any, Dict, List, Tuple
from unittest import SkipTest

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from caxton.auth.keys import KeyFile
from tests.nodes import Client, NodeProcess
from tests.test_cluster import FAST, ClusterTestCase
from tests.wasmbuild import example, wat_module

ECHO = wat_module(example("wat", "echo.wat"))


class RoutingTestCase(ClusterTestCase):
    """
    Three nodes, n1 the seed.
    """

    async def cluster(self, count: int = 3) -> List[Any]:
        seed, seed_client = await self.node("n1")
        self.seed_address = await self.gossip_address(seed_client)
        nodes = [(seed, seed_client)]
        for i in range(2, count + 1):
            nodes.append(await self.node(f"n{i}", join=(self.seed_address,)))
        clients = [client for _, client in nodes]
        for i in range(1, count + 1):
            await self.all_see(clients, f"n{i}", "alive")
        return nodes

    async def listed_everywhere(self, clients: List[Client], name: str, node: str) -> None:
        for client in clients:

            async def listed(client: Client = client) -> Any:
                _, body = await client.get(f"/api/v1/agents?node={node}")
                return name in [a["name"] for a in body["agents"]] or body

            await self.eventually(f"{client.url} lists {name} on {node}", listed)


class RemoteRoutingTests(RoutingTestCase):
    async def test_across_nodes(self) -> None:
        """
        An agent on n1 (a contract-net manager) asks the bidders on n3 for
        proposals and hears back; an API client on n2 invokes an agent on
        n3 and has the answer; a name nobody hosts fails AGENT_NOT_FOUND
        after the cluster was asked.
        """
        (_, c1), (_, c2), (_, c3) = await self.cluster()
        status, body = await c3.deploy("echo", ECHO, capabilities=["echo"])
        self.assertEqual(status, 201, body)
        for name in ("bidder-a", "bidder-b"):
            status, body = await c3.deploy(
                name, wat_module(example("wat", "cnp_bidder.wat")), capabilities=["bid"]
            )
            self.assertEqual(status, 201, body)
        status, body = await c1.deploy(
            "manager",
            wat_module(example("wat", "cnp_manager.wat")),
            config={"bidders": 2, "deadline_ms": 5000},
        )
        self.assertEqual(status, 201, body)
        await self.listed_everywhere([c1, c2], "echo", "n3")
        await self.listed_everywhere([c1], "bidder-b", "n3")

        # Agent to agent across nodes: manager on n1, bidders on n3.
        status, sent = await c1.post(
            "/api/v1/messages",
            {"performative": "request", "sender": "client:alice", "receiver": "manager",
             "protocol": "fipa-request", "content": {"job": 1}},
        )
        self.assertEqual(status, 202, sent)
        seen = await c1.poll(
            "/api/v1/mailboxes/client:alice",
            lambda messages: any(m["performative"] in ("inform", "failure") for m in messages),
        )
        answer = [m for m in seen if m["performative"] in ("inform", "failure")][0]
        self.assertEqual(answer["performative"], "inform", answer)
        self.assertIn(answer["content"]["winner"], ("bidder-a", "bidder-b"))

        # An API client on n2 invokes the agent on n3.
        status, body = await c2.post(
            "/api/v1/agents/echo/invoke", {"content": {"hello": "n3"}, "sender": "client:bob"}
        )
        self.assertEqual(status, 200, body)
        self.assertEqual(body["reply"]["performative"], "inform")
        self.assertEqual(body["reply"]["sender"], "echo")

        # By capability, from n1: nobody on n1 offers "echo", n3 does.
        status, sent = await c1.post(
            "/api/v1/messages",
            {"performative": "request", "sender": "client:carol",
             "receiver": {"capability": "echo"}, "content": 7},
        )
        self.assertEqual(status, 202, sent)
        seen = await c1.poll("/api/v1/mailboxes/client:carol", lambda messages: len(messages) >= 1)
        self.assertEqual((seen[0]["performative"], seen[0]["sender"]), ("inform", "echo"))

        # Nobody hosts "ghost": AGENT_NOT_FOUND, after asking the cluster.
        status, sent = await c2.post(
            "/api/v1/messages",
            {"performative": "request", "sender": "client:dave", "receiver": "ghost"},
        )
        self.assertEqual(status, 202, sent)
        seen = await c2.poll("/api/v1/mailboxes/client:dave", lambda messages: len(messages) >= 1)
        self.assertEqual(seen[0]["performative"], "failure")
        self.assertEqual(seen[0]["content"]["reason"], "AGENT_NOT_FOUND")


class CrashTests(RoutingTestCase):
    timeout = 400

    async def test_kill_receiver_during_stream(self) -> None:
        """
        1,000 requests from a client on n1 to echo on n3; n3 is killed with
        SIGKILL part way and restarted on the same data directory.  Every
        request ends in exactly one answer in the client's mailbox: the
        echo's inform, or a failure naming the reason.  None is lost,
        none answered twice.
        """
        nodes = await self.cluster()
        (_, c1), _, (p3, c3) = nodes
        status, body = await c3.deploy("echo", ECHO)
        self.assertEqual(status, 201, body)
        await self.listed_everywhere([c1], "echo", "n3")

        total, burst = 1000, 25
        ids: List[str] = [""] * total

        async def send(i: int) -> None:
            status, sent = await c1.post(
                "/api/v1/messages",
                {"performative": "request", "sender": "client:counter", "receiver": "echo",
                 "content": {"i": i}, "reply_with": f"r{i}"},
            )
            self.assertEqual(status, 202, sent)
            ids[i] = sent["message_id"]

        for start in range(0, total, burst):
            # Bursts in flight at once, so the kill lands among messages
            # on the wire, in n3's journal and in its agent's inbox.
            if start == 350:
                killed = p3.stop(signal.SIGKILL)
            await gatherResults([Deferred.fromCoroutine(send(i)) for i in range(start, start + burst)])
        await killed
        await self.all_see([c1], "n3", "dead")
        restarted, c3 = await self.node("n3", join=(self.seed_address,), tls_dir=p3.args[5],
                                        data_dir=p3.data_dir)

        def settled(messages: List[Dict[str, Any]]) -> bool:
            return len(messages) >= total

        seen = await c1.poll("/api/v1/mailboxes/client:counter", settled, timeout=180.0)
        outcomes: Counter = Counter()
        answered: Counter = Counter()
        for message in seen:
            if message["performative"] == "inform":
                answered[message["in_reply_to"]] += 1
                outcomes["delivered"] += 1
            else:
                self.assertEqual(message["performative"], "failure", message)
                answered["r" + str(_index(message, ids))] += 1
                outcomes["failed:" + message["content"]["reason"]] += 1
        self.assertEqual(
            sorted(answered), sorted(f"r{i}" for i in range(total)), "every request answered"
        )
        self.assertEqual(set(answered.values()), {1}, "no request answered twice")
        # Nothing more trickles in afterwards.
        await deferLater(reactor, 2.0, lambda: None)
        again = await c1.poll("/api/v1/mailboxes/client:counter", settled)
        self.assertEqual(len(again), len(seen))
        print(f"\n1,000 across a kill -9: {dict(outcomes)}")


def _index(failure: Dict[str, Any], ids: List[str]) -> int:
    return ids.index(failure["content"]["message_id"])


class SameNameTests(RoutingTestCase):
    async def test_one_name_on_two_nodes(self) -> None:
        """
        Two clusters that each deployed "echo" join: every node sends
        messages for "echo" to the agent on the node whose id sorts first
        (n2), the loser's own node included; the other agent gets none.
        """
        _, c1 = await self.node("n1")
        address = await self.gossip_address(c1)
        _, c3 = await self.node("n3", join=(address,))
        _, c2 = await self.node("n2")
        await self.all_see([c1, c3], "n3", "alive")
        for client in (c2, c3):
            status, body = await client.deploy("echo", ECHO)
            self.assertEqual(status, 201, body)
        status, body = await c2.post("/api/v1/cluster/join", {"seeds": [address]})
        self.assertEqual(status, 200, body)
        for node in ("n2", "n3"):
            await self.listed_everywhere([c1, c2, c3], "echo", node)

        for i, client in enumerate((c1, c3, c2)):
            status, body = await client.post(
                "/api/v1/agents/echo/invoke", {"content": i, "sender": f"client:c{i}"}
            )
            self.assertEqual(status, 200, body)
            self.assertEqual(body["reply"]["performative"], "inform", body)
        _, winner = await c2.get("/api/v1/agents/echo")
        _, loser = await c3.get("/api/v1/agents/echo")
        self.assertEqual((winner["node"], loser["node"]), ("n2", "n3"))
        self.assertEqual(winner["counters"]["handled"], 3)
        self.assertEqual(loser["counters"]["handled"], 0)


class _Namespace:
    """
    A network namespace the test makes, joined to this one by two veth
    pairs: the cluster link (C{gossip_net}.1 here, .2 there), which the
    test cuts, and the management link (C{api_net}.x) the test reaches
    the node's API over.  The subnets come from the process id, in ranges
    no other test uses, so parallel test workers never share one.  Cutting takes the namespace's end of the cluster
    link down: packets both ways are lost, silently, as in a real
    partition.
    """

    def __init__(self, name: str, n: int) -> None:
        self.name = name
        self.gossip_net = f"192.168.{n % 250}"
        self.api_net = f"172.30.{n % 250}"

    def _ip(self, *args: str, inside: bool = False) -> None:
        argv = (["ip", "netns", "exec", self.name] if inside else []) + ["ip", *args]
        subprocess.run(argv, check=True, capture_output=True, timeout=10)

    def create(self) -> None:
        self._ip("netns", "add", self.name)
        for link, net in (("g", self.gossip_net), ("m", self.api_net)):
            here, there = f"{self.name}{link}0", f"{self.name}{link}1"
            self._ip("link", "add", here, "type", "veth", "peer", "name", there)
            self._ip("link", "set", there, "netns", self.name)
            self._ip("addr", "add", f"{net}.1/24", "dev", here)
            self._ip("link", "set", here, "up")
            self._ip("addr", "add", f"{net}.2/24", "dev", there, inside=True)
            self._ip("link", "set", there, "up", inside=True)
        self._ip("link", "set", "lo", "up", inside=True)

    def cut(self, down: bool = True) -> None:
        self._ip("link", "set", f"{self.name}g1", "down" if down else "up", inside=True)

    def destroy(self) -> None:
        for link in ("g", "m"):
            subprocess.run(["ip", "link", "del", f"{self.name}{link}0"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


class PartitionTests(RoutingTestCase):
    timeout = 400

    def setUp(self) -> None:
        super().setUp()
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise SkipTest("a partition needs a network namespace: root and iproute2's ip")
        self.netns = _Namespace(f"cx{os.getpid() % 100000}", os.getpid())
        try:
            self.netns.create()
        except (subprocess.CalledProcessError, OSError) as e:
            self.netns.destroy()
            raise SkipTest(f"cannot make a network namespace here: {e}")
        self.addCleanup(self.netns.destroy)

    async def start(self, node_id: str, host: str, join: Tuple[str, ...] = (), inside: bool = False) -> Tuple[NodeProcess, Client]:
        data_dir = self.mktemp()
        token = None
        wrapper: List[str] = []
        api_host = "127.0.0.1"
        if inside:
            # Reached from outside its host: protected mode needs a key.
            _, token = KeyFile.in_data_dir(data_dir).create("test", "admin", time.time())
            wrapper = ["ip", "netns", "exec", self.netns.name]
            api_host = f"{self.netns.api_net}.2"
        args = ["--node-id", node_id, "--bind", f"{host}:0", "--tls-dir", self.certificate(node_id),
                "--gossip-key-file", self.key_file]
        if join:
            args += ["--join", ",".join(join)]
        process = NodeProcess(data_dir, args, env=FAST, api_host=api_host, wrapper=wrapper, token=token)
        self.addCleanup(process.stop, signal.SIGKILL)
        await process.start()
        return process, Client(process.url, token=token)

    async def mode(self, client: Client) -> str:
        _, body = await client.get("/health/gossip")
        return body["partition"]

    async def test_partition_and_heal(self) -> None:
        """
        n3, cut off from n1 and n2: it is isolated and refuses a deploy with
        PARTITIONED while the majority deploys; a client on n1 keeps
        sending to echo on n3, the messages wait; after the heal they are
        delivered, each once, and every registry agrees.
        """
        here, there = f"{self.netns.gossip_net}.1", f"{self.netns.gossip_net}.2"
        p1, c1 = await self.start("n1", here)
        seed = await self.gossip_address(c1)
        _, c2 = await self.start("n2", here, join=(seed,))
        _, c3 = await self.start("n3", there, join=(seed,), inside=True)
        clients = [c1, c2, c3]
        for node in ("n1", "n2", "n3"):
            await self.all_see(clients, node, "alive")
        status, body = await c3.deploy("echo", ECHO)
        self.assertEqual(status, 201, body)
        await self.listed_everywhere([c1, c2], "echo", "n3")

        self.netns.cut()
        await self.all_see([c1, c2], "n3", "dead")
        await self.eventually("n3 isolated", lambda: _equals(self.mode(c3), "isolated"))
        self.assertEqual(await self.mode(c1), "majority")
        status, body = await c3.deploy("late", ECHO)
        self.assertEqual((status, body["error"]["code"]), (503, "PARTITIONED"), body)
        status, body = await c1.deploy("majority-side", ECHO)
        self.assertEqual(status, 201, body)

        total = 50
        for i in range(total):
            status, sent = await c1.post(
                "/api/v1/messages",
                {"performative": "request", "sender": "client:across", "receiver": "echo",
                 "content": {"i": i}, "reply_with": f"r{i}"},
            )
            self.assertEqual(status, 202, sent)
        _, status_body = await c1.get("/api/v1/cluster/status")
        _, early = await c1.get("/api/v1/mailboxes/client:across")
        if status_body["queues"].get("n3") != total:
            print("\n===== n1\n" + "\n".join(l for l in p1.output.splitlines() if "n3" in l or "echo" in l)[-5000:])
        self.assertEqual(status_body["queues"].get("n3"), total, (status_body, early))

        self.netns.cut(down=False)
        for node in ("n1", "n2", "n3"):
            await self.all_see(clients, node, "alive")
        seen = await c1.poll("/api/v1/mailboxes/client:across", lambda m: len(m) >= total, timeout=120.0)
        self.assertEqual(sorted(m["in_reply_to"] for m in seen), sorted(f"r{i}" for i in range(total)))
        self.assertEqual({m["performative"] for m in seen}, {"inform"})
        await self.listed_everywhere([c3], "majority-side", "n1")


        async def agree() -> Any:
            # Polled: the fast test timings can flap a member on a busy
            # machine, hiding its agents for a moment.
            views = []
            for client in clients:
                _, body = await client.get("/api/v1/agents")
                views.append(sorted((a["name"], a["node"]) for a in body["agents"]))
            expected = [("echo", "n3"), ("majority-side", "n1")]
            return all(view == expected for view in views) or views

        await self.eventually("every registry agrees", agree)


async def _equals(value: Any, expected: Any) -> bool:
    return (await value) == expected


class RelocationTests(RoutingTestCase):
    timeout = 400

    async def test_relocate_on_death(self) -> None:
        """
        A relocatable agent on n3 is copied to n1 and n2; n3 is killed; the
        survivors agree on one new home (by rendezvous hashing), the agent
        answers from there, messages sent while it moved reach it, and the
        old node, restarted, hands the name over.
        """
        nodes = await self.cluster()
        (_, c1), (_, c2), (p3, c3) = nodes
        status, body = await c3.deploy("mover", ECHO, relocatable=True)
        self.assertEqual(status, 201, body)
        for client in (c1, c2):

            async def copied(client: Client = client) -> Any:
                _, body = await client.get("/api/v1/cluster/status")
                return "mover" in body["replicas"] or body["replicas"]

            await self.eventually(f"{client.url} keeps a copy", copied)

        await p3.stop(signal.SIGKILL)
        killed = time.monotonic()
        # Sent while the agent has no home: they wait, then follow it.
        for i in range(5):
            status, sent = await c1.post(
                "/api/v1/messages",
                {"performative": "request", "sender": "client:early", "receiver": "mover",
                 "content": i, "reply_with": f"e{i}"},
            )
            self.assertEqual(status, 202, sent)
        homes = {}
        for client in (c1, c2):

            async def moved(client: Client = client) -> Any:
                _, body = await client.get("/api/v1/agents/mover")
                return body.get("node") in ("n1", "n2") and body.get("status") == "running" or body

            await self.eventually(f"{client.url} sees mover moved", moved)
            _, body = await client.get("/api/v1/agents/mover")
            homes[client.url] = body["node"]
        self.assertEqual(len(set(homes.values())), 1, homes)

        async def answers() -> Any:
            # Polled: on a busy machine the fast test timings can make a
            # member look dead for a moment, and its agents with it.
            status, body = await c2.post("/api/v1/agents/mover/invoke", {"content": "where", "sender": "client:x"})
            return (status == 200 and body["reply"]["performative"] == "inform") or body

        await self.eventually("the relocated agent answers", answers)
        print(f"\nkill -9 to a relocated agent answering: {time.monotonic() - killed:.2f}s")
        seen = await c1.poll("/api/v1/mailboxes/client:early", lambda m: len(m) >= 5)
        self.assertEqual(sorted(m["in_reply_to"] for m in seen), [f"e{i}" for i in range(5)])
        self.assertEqual({m["performative"] for m in seen}, {"inform"})

        # The old home comes back: it removes its copy; the name stays put.
        _, c3 = await self.node("n3", join=(self.seed_address,), tls_dir=p3.args[5], data_dir=p3.data_dir)
        home = list(homes.values())[0]

        async def handed_over() -> Any:
            _, body = await c3.get("/api/v1/agents?node=n3")
            return [a["name"] for a in body["agents"]] == [] or body

        await self.eventually("n3 hands mover over", handed_over)
        for client in (c1, c2, c3):

            async def stays(client: Client = client) -> Any:
                _, body = await client.get("/api/v1/agents/mover")
                return body.get("node") == home or body

            await self.eventually(f"{client.url} lists mover on {home}", stays)
