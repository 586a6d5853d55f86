"""
Integration tests of messages between nodes (SPEC 4.2, 5.2-5.4): real
C{twist caxton} processes on 127.0.0.1, messages over the mutual-TLS node
streams, kill -9 and restarts, checked through the nodes' REST APIs.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any, Dict, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from tests.nodes import Client
from tests.test_cluster import ClusterTestCase
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
