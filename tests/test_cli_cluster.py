"""
C{caxton cluster status|members|join|leave} run as a user runs them (a
child process) against two real clustered node processes.
"""

from __future__ import annotations

import json
import signal
from typing import Tuple

from twisted.internet.defer import ensureDeferred

from tests.clirunner import caxton, fields, table
from tests.nodes import Client, NodeProcess
from tests.test_cluster import ClusterTestCase


class ClusterCommandTests(ClusterTestCase):
    """
    Two nodes that start apart: one joins the other with C{caxton cluster
    join}, both are listed, then it leaves with C{caxton cluster leave}.

    The nodes keep the default (C{lan}) SWIM timings: nothing here waits
    for gossip to converge (a join is one push-pull, answered before the
    command returns), and slower probes are less likely to suspect a
    member of a busy machine.
    """

    async def started(self, node_id: str) -> Tuple[NodeProcess, Client]:
        """
        Start clustered node C{node_id}; killed when the test ends.
        """
        args = ["--node-id", node_id, "--bind", "127.0.0.1:0", "--tls-dir", self.certificate(node_id),
                "--gossip-key-file", self.key_file]
        process = NodeProcess(self.mktemp(), args)
        self.addCleanup(lambda: ensureDeferred(process.stop(signal.SIGKILL)))
        await process.start()
        return process, Client(process.url)

    async def test_join_members_status_leave(self) -> None:
        """
        join prints how many seeds answered and members are known;
        members and status show the cluster as a table and as the API's
        JSON; leave prints that the node left, and status says so.
        """
        _, one = await self.started("n1")
        _, two = await self.started("n2")
        address = await self.gossip_address(one)

        status, out, err = await caxton("cluster", "join", address, "--url", two.url)
        self.assertEqual((status, err), (0, ""), out)
        self.assertEqual(out, "joined through 1 of 1 seed; this node knows 2 members\n")

        rows = table((await caxton("--url", two.url, "cluster", "members"))[1])
        self.assertEqual([(r["id"], r["address"]) for r in rows],
                         [("n1", address), ("n2 *", await self.gossip_address(two))])
        # n1 may be suspected for a moment on a busy machine.
        self.assertIn(rows[0]["state"], ("alive", "suspect"))
        self.assertEqual(rows[1]["state"], "alive")
        self.assertRegex(rows[0]["since"], r"^\d[0-9a-z.]* ago$")
        status, out, err = await caxton("cluster", "members", "--json", "--url", two.url)
        members = json.loads(out)["members"]
        self.assertEqual([(m["id"], m["self"]) for m in members], [("n1", False), ("n2", True)])

        shown = fields((await caxton("cluster", "status", "--url", two.url))[1])
        self.assertEqual(
            (shown["node"], shown["clustered"], shown["cluster"], shown["address"], shown["encrypted"], shown["left"]),
            ("n2", "yes", "caxton", await self.gossip_address(two), "yes", "no"),
        )
        self.assertRegex(shown["members"], r"^(2 alive, 0 suspect|1 alive, 1 suspect), 0 dead, 0 left$")

        status, out, err = await caxton("cluster", "leave", "--url", two.url)
        self.assertEqual((status, out, err), (0, "left the cluster; the node runs alone until it joins again\n", ""))
        status, out, err = await caxton("--json", "cluster", "status", "--url", two.url)
        answer = json.loads(out)
        self.assertEqual((answer["left"], answer["partition"]), (True, "isolated"))
        self.assertIn("swim", answer["counters"])
