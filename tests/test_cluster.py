"""
Integration tests of a cluster: real C{twist caxton} processes on
127.0.0.1 gossiping over real UDP and mutual-TLS node streams, driven and
checked through their REST APIs as an operator would.

Each node gets a certificate from a CA the test makes, an ephemeral SWIM
port (C{--bind 127.0.0.1:0}; the node reports the port it got in
C{/api/v1/cluster/status}) and faster-than-default SWIM timings so the
suite stays short; the timings of the real profiles are measured by
C{bench/}.  Every wait is a poll bounded in count and time; every process
is killed in cleanup.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from caxton.cluster import pki
from caxton.swim.keyring import generate_key
from tests.nodes import Client, NodeProcess
from tests.wasmbuild import example, wat_module

#: SWIM timings for the tests: a probe every 200 ms, suspicion of a few
#: hundred ms.  Failure detection and convergence at the real profiles'
#: timings are measured in bench/, not asserted here.
FAST = {
    "CAXTON_GOSSIP_PROFILE": "local",
    "CAXTON_GOSSIP_PROBE_INTERVAL": "200ms",
    "CAXTON_GOSSIP_PROBE_TIMEOUT": "100ms",
    "CAXTON_GOSSIP_GOSSIP_INTERVAL": "50ms",
    "CAXTON_GOSSIP_SUSPICION_MULT": "3",
    "CAXTON_GOSSIP_PUSH_PULL_INTERVAL": "2s",
    # Dead and left members stay listed (before they are reaped) for longer
    # than the slowest check here takes on a busy machine.
    "CAXTON_GOSSIP_GOSSIP_TO_THE_DEAD_TIME": "5m",
}

#: The longest a cluster-wide change may take to be seen, in seconds.
WAIT = 30.0


class ClusterTestCase(unittest.TestCase):
    """
    Starts cluster nodes for a test; all killed at its end.
    """

    timeout = 240

    def setUp(self) -> None:
        self.pki_dir = os.path.abspath(self.mktemp())
        self.ca_dir = os.path.join(self.pki_dir, "ca")
        pki.init_ca(self.ca_dir, cluster_name="caxton")
        self.key_file = os.path.join(self.pki_dir, "gossip.key")
        with open(self.key_file, "w") as f:
            f.write(generate_key() + "\n")

    def certificate(self, node_id: str, ca_dir: Optional[str] = None) -> str:
        """
        A TLS directory for C{node_id} issued by the test's CA (or another).
        """
        out = os.path.join(self.pki_dir, f"{node_id}-{len(os.listdir(self.pki_dir))}")
        pki.issue(ca_dir or self.ca_dir, node_id, out)
        return out

    async def node(
        self,
        node_id: str,
        join: Tuple[str, ...] = (),
        tls_dir: Optional[str] = None,
        data_dir: Optional[str] = None,
        ready: bool = True,
    ) -> Tuple[NodeProcess, Client]:
        """
        Start node C{node_id}, joining through C{join}; killed at the end
        of the test.
        """
        args = [
            "--node-id",
            node_id,
            "--bind",
            "127.0.0.1:0",
            "--tls-dir",
            tls_dir or self.certificate(node_id),
            "--gossip-key-file",
            self.key_file,
        ]
        if join:
            args += ["--join", ",".join(join)]
        process = NodeProcess(data_dir or self.mktemp(), args, env=FAST)
        self.addCleanup(process.stop, signal.SIGKILL)
        await process.start()
        return process, Client(process.url)

    async def gossip_address(self, client: Client) -> str:
        """
        The SWIM address a node listens on.
        """
        status, body = await client.get("/api/v1/cluster/status")
        self.assertEqual(status, 200, body)
        return body["address"]

    async def members(self, client: Client) -> Dict[str, Dict[str, Any]]:
        """
        A node's members by id.
        """
        status, body = await client.get("/api/v1/cluster/members")
        self.assertEqual(status, 200, body)
        return {m["id"]: m for m in body["members"]}

    async def eventually(self, what: str, check: Callable[[], Any], timeout: float = WAIT) -> None:
        """
        Poll the coroutine function C{check} until it returns true, for at
        most C{timeout} seconds and 600 tries.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        for _ in range(600):
            last = await check()
            if last is True or (last and not isinstance(last, str)):
                return
            if time.monotonic() > deadline:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.fail(f"{what}: not seen within {timeout}s (last: {last!r})")

    async def all_see(
        self, clients: List[Client], node_id: str, state: str, address: Optional[str] = None
    ) -> None:
        """
        Wait until every client lists C{node_id} in C{state}.
        """
        for client in clients:

            async def check(client: Client = client) -> Any:
                member = (await self.members(client)).get(node_id)
                if member is None:
                    return f"{node_id} unknown"
                if member["state"] != state:
                    return f"{node_id} is {member['state']}"
                if address is not None and member["address"] != address:
                    return f"{node_id} at {member['address']}"
                return True

            await self.eventually(f"{client.url} sees {node_id} {state}", check)


class MembershipTests(ClusterTestCase):
    """
    Five real nodes join, fail, come back and leave.
    """

    async def test_lifecycle(self) -> None:
        """
        Five nodes join through one seed and all list five members; a kill
        -9 is marked dead by the others; the node restarted with the same id
        on a new port is alive again at its new address; a SIGTERM'd node is
        seen as left.  An agent deployed on one node appears in every node's
        agent list and disappears when its node dies.
        """
        seed, seed_client = await self.node("n1")
        seed_address = await self.gossip_address(seed_client)
        nodes = {"n1": (seed, seed_client)}
        for i in range(2, 6):
            nodes[f"n{i}"] = await self.node(f"n{i}", join=(seed_address,))
        clients = {name: client for name, (_, client) in nodes.items()}

        for name in clients:
            await self.all_see(list(clients.values()), name, "alive")

        # An agent on n2 is listed everywhere, with its node.
        status, body = await clients["n2"].deploy("echo", wat_module(example("wat", "echo.wat")))
        self.assertEqual(status, 201, body)
        for client in clients.values():

            async def listed(client: Client = client) -> Any:
                _, body = await client.get("/api/v1/agents?node=n2")
                return [(a["name"], a["node"]) for a in body["agents"]] == [("echo", "n2")] or body

            await self.eventually(f"{client.url} lists echo on n2", listed)

        # kill -9 n2: marked dead by all, and its agent disappears.
        n2_process, _ = nodes.pop("n2")
        del clients["n2"]
        await n2_process.stop(signal.SIGKILL)
        await self.all_see(list(clients.values()), "n2", "dead")
        for client in clients.values():
            _, body = await client.get("/api/v1/agents")
            self.assertEqual([a for a in body["agents"] if a["node"] == "n2"], [])

        # Restarted with the same id on a new port: alive again there.
        nodes["n2"] = await self.node("n2", join=(seed_address,), tls_dir=n2_process.args[5],
                                      data_dir=n2_process.data_dir)
        clients["n2"] = nodes["n2"][1]
        new_address = await self.gossip_address(clients["n2"])
        await self.all_see(list(clients.values()), "n2", "alive", address=new_address)

        # SIGTERM n4: the rest see it left, and it exits 0.
        n4_process, _ = nodes.pop("n4")
        del clients["n4"]
        self.assertEqual(await n4_process.stop(signal.SIGTERM), 0)
        await self.all_see(list(clients.values()), "n4", "left")


class IdentityTests(ClusterTestCase):
    """
    Mutual TLS keeps strangers and impostors out.
    """

    async def refused(self, node_id: str, tls_dir: str) -> None:
        """
        Start C{node_id} with C{tls_dir} joining a one-node cluster, and
        check that neither side ever lists the other.
        """
        seed, seed_client = await self.node("n1")
        address = await self.gossip_address(seed_client)
        _, stranger = await self.node(node_id, join=(address,), tls_dir=tls_dir)
        # Join is retried with back-off: give it several rounds.
        await deferLater(reactor, 3.0, lambda: None)
        self.assertEqual(set(await self.members(seed_client)), {"n1"})
        self.assertNotIn("n1", await self.members(stranger))

    async def test_rogue_ca(self) -> None:
        """
        A node whose certificate comes from another CA cannot join.
        """
        rogue = os.path.join(self.pki_dir, "rogue-ca")
        pki.init_ca(rogue, cluster_name="caxton")
        await self.refused("n6", self.certificate("n6", ca_dir=rogue))

    async def test_other_name(self) -> None:
        """
        A node given a certificate that names another node refuses to start
        (exit 1, one line saying so), so it can never claim one id in gossip
        while its streams prove another; the stream layer's own check of a
        peer that tries is in tests.test_node_stream.
        """
        seed, seed_client = await self.node("n1")
        address = await self.gossip_address(seed_client)
        with self.assertRaises(AssertionError) as refused:
            await self.node("n6", join=(address,), tls_dir=self.certificate("n7"))
        self.assertIn("configuration error: the certificate in", str(refused.exception))
        self.assertIn("is for node n7, not n6", str(refused.exception))
        self.assertEqual(set(await self.members(seed_client)), {"n1"})
