"""
C{caxton cluster status|members|join|leave} run as a user runs them (a
child process) against two real clustered node processes.
"""

from __future__ import annotations

import json

from tests.clirunner import caxton, fields, table
from tests.test_cluster import ClusterTestCase


class ClusterCommandTests(ClusterTestCase):
    """
    Two nodes that start apart: one joins the other with C{caxton cluster
    join}, both are listed, then it leaves with C{caxton cluster leave}.
    """

    async def test_join_members_status_leave(self) -> None:
        """
        join prints how many seeds answered and members are known;
        members and status show the cluster as a table and as the API's
        JSON; leave prints that the node left, and status says so.
        """
        _, one = await self.node("n1")
        _, two = await self.node("n2")
        address = await self.gossip_address(one)

        status, out, err = await caxton("cluster", "join", address, "--url", two.url)
        self.assertEqual((status, err), (0, ""), out)
        self.assertEqual(out, "joined through 1 of 1 seed; this node knows 2 members\n")

        rows = table((await caxton("--url", two.url, "cluster", "members"))[1])
        self.assertEqual([(r["id"], r["address"], r["state"]) for r in rows],
                         [("n1", address, "alive"), ("n2 *", await self.gossip_address(two), "alive")])
        self.assertRegex(rows[0]["since"], r"^\d+(\.\d)?(ms|s) ago$")
        status, out, err = await caxton("cluster", "members", "--json", "--url", two.url)
        members = json.loads(out)["members"]
        self.assertEqual([(m["id"], m["self"]) for m in members], [("n1", False), ("n2", True)])

        shown = fields((await caxton("cluster", "status", "--url", two.url))[1])
        self.assertEqual(
            (shown["node"], shown["clustered"], shown["cluster"], shown["address"], shown["encrypted"], shown["left"]),
            ("n2", "yes", "caxton", await self.gossip_address(two), "yes", "no"),
        )
        self.assertTrue(shown["members"].startswith("2 alive"), shown)

        status, out, err = await caxton("cluster", "leave", "--url", two.url)
        self.assertEqual((status, out, err), (0, "left the cluster; the node runs alone until it joins again\n", ""))
        status, out, err = await caxton("--json", "cluster", "status", "--url", two.url)
        answer = json.loads(out)
        self.assertEqual((answer["left"], answer["partition"]), (True, "isolated"))
        self.assertIn("swim", answer["counters"])
