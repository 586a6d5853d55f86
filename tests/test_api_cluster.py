"""
Tests for the API's cluster routes and the cluster-wide agent list, with
the node alone (L{Standalone}) and with a fake cluster (L{FakeCluster},
checked against L{ICluster}).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from zope.interface import implementer
from zope.interface.verify import verifyObject

from caxton.api.app import CaxtonAPI
from caxton.cluster.interfaces import ICluster
from caxton.cluster.standalone import Standalone
from caxton.errors import Unreachable
from tests.test_api import APITestCase
from treq.testing import StubTreq


@implementer(ICluster)
class FakeCluster:
    """
    A cluster of this node and a node C{n2} hosting C{remote-echo}.
    """

    node_id = "n1"

    def __init__(self) -> None:
        self.joined: List[Sequence[Tuple[str, int]]] = []
        self.left = 0
        self.reachable = True
        self.mode = "majority"

    def members(self) -> List[Dict[str, Any]]:
        return [
            {"id": "n1", "address": "127.0.0.1:7946", "state": "alive", "incarnation": 3, "agents": 1, "self": True},
            {"id": "n2", "address": "127.0.0.1:7947", "state": "suspect", "incarnation": 9, "agents": 1, "self": False},
        ]

    def status(self) -> Dict[str, Any]:
        return {"node_id": "n1", "partition": "majority", "members": {"alive": 1, "suspect": 1, "dead": 0, "left": 0}}

    def gossip_health(self) -> Dict[str, Any]:
        return {"status": "healthy", "peer_count": 1, "last_sync": None, "agent_count": 2, "partition": "majority"}

    def partition(self) -> str:
        return self.mode

    def hosting(self, name: str) -> Optional[str]:
        return "n2" if name == "remote-echo" else None

    def remote_agents(self, node: Optional[str] = None) -> List[Dict[str, Any]]:
        views = [{"name": "remote-echo", "node": "n2", "version": 4, "status": "running",
                  "capabilities": ["echo"], "remote": True}]
        return [v for v in views if node is None or v["node"] == node]

    async def join(self, seeds: Sequence[Tuple[str, int]]) -> int:
        if not self.reachable:
            raise Unreachable("no seed answered")
        self.joined.append(seeds)
        return len(seeds)

    async def leave(self) -> None:
        self.left += 1


class StandaloneTests(APITestCase):
    """
    A node without a bind address is a cluster of one.
    """

    def test_interface(self) -> None:
        """
        L{Standalone} provides L{ICluster}, as the fake does.
        """
        verifyObject(ICluster, Standalone(self.node.agents))
        verifyObject(ICluster, FakeCluster())

    def test_members_and_health(self) -> None:
        """
        Its only member is itself, alive; gossip health is healthy with no
        peers and counts its agents.
        """
        self.deploy_echo()
        code, body = self.call("GET", "/api/v1/cluster/members")
        self.assertEqual(code, 200)
        [member] = body["members"]
        self.assertEqual((member["id"], member["state"], member["agents"], member["self"]),
                         (self.node.agents.node_id, "alive", 1, True))
        code, body = self.call("GET", "/health/gossip")
        self.assertEqual((code, body["status"], body["peer_count"], body["agent_count"], body["partition"]),
                         (200, "healthy", 0, 1, "majority"))

    def test_join_refused(self) -> None:
        """
        Join and leave say how to form a cluster instead.
        """
        code, body = self.call("POST", "/api/v1/cluster/join", {"seeds": ["127.0.0.1:7946"]})
        self.assertEqual((code, body["error"]["code"]), (400, "INVALID_REQUEST"))
        self.assertIn("--bind", body["error"]["message"])
        code, body = self.call("POST", "/api/v1/cluster/leave")
        self.assertEqual(code, 400)


class ClusterRouteTests(APITestCase):
    """
    The routes show what the cluster says, and the agent list is
    cluster-wide.
    """

    def setUp(self) -> None:
        super().setUp()
        self.cluster = FakeCluster()
        api = CaxtonAPI(self.node.clock, self.node.agents, self.node.router, self.node.store,
                        cluster=self.cluster)
        self.http = StubTreq(api.resource())

    def test_members_status(self) -> None:
        """
        Members and status are the cluster's views.
        """
        code, body = self.call("GET", "/api/v1/cluster/members")
        self.assertEqual([m["id"] for m in body["members"]], ["n1", "n2"])
        code, body = self.call("GET", "/api/v1/cluster/status")
        self.assertEqual(body["partition"], "majority")

    def test_join(self) -> None:
        """
        Seeds are parsed (default port 7946) and handed to the cluster.
        """
        code, body = self.call("POST", "/api/v1/cluster/join", {"seeds": ["10.0.0.1:7000", "seed.example"]})
        self.assertEqual((code, body["joined"]), (200, 2))
        self.assertEqual(self.cluster.joined, [[("10.0.0.1", 7000), ("seed.example", 7946)]])

    def test_join_errors(self) -> None:
        """
        Bad seeds are a 400; seeds that never answer a 503 UNREACHABLE.
        """
        for body in ({}, {"seeds": []}, {"seeds": ["a:99999"]}, {"seeds": [1]}, ["x"]):
            code, answer = self.call("POST", "/api/v1/cluster/join", body)
            self.assertEqual((code, answer["error"]["code"]), (400, "INVALID_REQUEST"), body)
        self.cluster.reachable = False
        code, answer = self.call("POST", "/api/v1/cluster/join", {"seeds": ["10.0.0.1"]})
        self.assertEqual((code, answer["error"]["code"]), (503, "UNREACHABLE"))

    def test_leave(self) -> None:
        """
        Leave asks the cluster to leave.
        """
        code, body = self.call("POST", "/api/v1/cluster/leave")
        self.assertEqual((code, body, self.cluster.left), (200, {"left": True}, 1))

    def test_agents_cluster_wide(self) -> None:
        """
        The agent list has this node's agents and the registry's, sorted by
        name, filtered by node and capability, paged across both.
        """
        self.deploy_echo("echo")
        self.deploy_echo("zulu")
        code, body = self.call("GET", "/api/v1/agents")
        self.assertEqual([(a["name"], a["node"]) for a in body["agents"]],
                         [("echo", self.node.agents.node_id), ("remote-echo", "n2"), ("zulu", self.node.agents.node_id)])
        code, body = self.call("GET", "/api/v1/agents?node=n2")
        self.assertEqual([a["name"] for a in body["agents"]], ["remote-echo"])
        code, body = self.call("GET", "/api/v1/agents?capability=echo")
        self.assertEqual([a["name"] for a in body["agents"]], ["remote-echo"])
        code, first = self.call("GET", "/api/v1/agents?limit=2")
        code, second = self.call("GET", f"/api/v1/agents?limit=2&cursor={first['next_cursor']}")
        self.assertEqual([a["name"] for a in first["agents"] + second["agents"]], ["echo", "remote-echo", "zulu"])
        self.assertIsNone(second["next_cursor"])

    def test_partitioned(self) -> None:
        """
        Outside the majority, deploys, updates and removals are refused
        with 503 PARTITIONED; reads and messages go on.
        """
        self.deploy_echo("echo")
        for mode in ("minority", "isolated"):
            self.cluster.mode = mode
            code, body = self.call("POST", "/api/v1/agents", {"name": "other", "wasm": "AGFzbQEAAAA="})
            self.assertEqual((code, body["error"]["code"]), (503, "PARTITIONED"))
            self.assertIn(mode, body["error"]["message"])
            code, body = self.call("PUT", "/api/v1/agents/echo", {"config": {"a": 1}})
            self.assertEqual((code, body["error"]["code"]), (503, "PARTITIONED"))
            code, body = self.call("DELETE", "/api/v1/agents/echo")
            self.assertEqual((code, body["error"]["code"]), (503, "PARTITIONED"))
            code, body = self.call("GET", "/api/v1/agents/echo")
            self.assertEqual(code, 200)
            code, body = self.call("POST", "/api/v1/messages",
                                   {"performative": "inform", "sender": "client:a", "receiver": "echo"})
            self.assertEqual(code, 202)
        self.cluster.mode = "majority"
        code, _ = self.call("DELETE", "/api/v1/agents/echo")
        self.assertEqual(code, 204)

    def test_name_taken_elsewhere(self) -> None:
        """
        A name another node hosts cannot be deployed here: names are unique
        in the cluster.
        """
        code, body = self.call("POST", "/api/v1/agents", {"name": "remote-echo", "wasm": "AGFzbQEAAAA="})
        self.assertEqual((code, body["error"]["code"]), (409, "AGENT_ALREADY_EXISTS"))
        self.assertIn("n2", body["error"]["message"])

    def test_show_remote_agent(self) -> None:
        """
        An agent hosted elsewhere is shown as the registry knows it.
        """
        code, body = self.call("GET", "/api/v1/agents/remote-echo")
        self.assertEqual((code, body["node"], body["version"]), (200, "n2", 4))
        code, body = self.call("GET", "/api/v1/agents/nowhere")
        self.assertEqual(code, 404)
