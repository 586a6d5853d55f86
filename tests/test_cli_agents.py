"""
The C{caxton} commands that talk to a node, run as a user runs them (a
child process, C{python -m caxton.cli}) against a real node process:
C{agents}, C{send}, C{conversations} and C{cluster} on a standalone node,
in tables and in JSON.

Child processes cost most of a second each, so each test runs one node
and checks a whole story on it.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Tuple

from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from tests.clirunner import caxton, fields, table
from tests.nodes import Client, NodeProcess
from tests.wasmbuild import example, wat_module

ECHO_WAT = example("wat", "echo.wat")


class AgentCommandTests(unittest.TestCase):
    """
    A node's agents, messages and conversations through C{caxton}.
    """

    timeout = 240

    async def node(self) -> Tuple[NodeProcess, Client]:
        process = NodeProcess(os.path.abspath(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(process.stop(signal.SIGKILL)))
        url = await process.start()
        return process, Client(url)

    async def run_ok(self, *argv: str) -> str:
        status, out, err = await caxton(*argv, "--url", self.url)
        self.assertEqual((status, err), (0, ""), f"caxton {' '.join(argv)}:\n{out}")
        return out

    async def run_json(self, *argv: str) -> Any:
        out = await self.run_ok(*argv, "--json")
        return json.loads(out)

    async def test_commands(self) -> None:
        """
        The agents, then messages, conversations and the cluster, on one
        node (see the two stories below).
        """
        _, client = await self.node()
        self.url = client.url
        await self.agent_lifecycle(client)
        await self.messages_and_cluster(client)

    async def agent_lifecycle(self, client: Client) -> None:
        """
        deploy (from WAT), list, show, stop, start, update (from a .wasm
        file), remove: each prints what the node did, as a table or line
        and as the API's JSON, and the node agrees.
        """
        out = await self.run_ok("agents", "deploy", ECHO_WAT, "--name", "echo", "--capability", "echo",
                                "--memory", "2MiB", "--config", '{"greeting": "hi"}')
        self.assertEqual(out.strip(), f"deployed agent echo version 1 on node {await self.node_id(client)}: running")
        status, body = await client.get("/api/v1/agents/echo")
        self.assertEqual((status, body["capabilities"], body["limits"]["memory"], body["config"]),
                         (200, ["echo"], 2 * 1024 * 1024, {"greeting": "hi"}))

        # A second agent from JSON form of the spec, deployed with --json.
        spec = os.path.abspath(self.mktemp())
        with open(spec, "w") as f:
            json.dump({"name": "mirror", "capabilities": ["a", "b"], "limits": {"fuel": 5000000}}, f)
        view = await self.run_json("agents", "deploy", ECHO_WAT, "--spec-file", spec, "--max-sends", "7")
        self.assertEqual((view["name"], view["version"], view["capabilities"], view["limits"]["fuel"],
                          view["limits"]["max_sends"]), ("mirror", 1, ["a", "b"], 5000000, 7))

        rows = table(await self.run_ok("agents", "list"))
        self.assertEqual([(r["name"], r["status"], r["version"], r["capabilities"]) for r in rows],
                         [("echo", "running", "1", "echo"), ("mirror", "running", "1", "a,b")])
        listing = await self.run_json("agents", "list", "--capability", "b")
        self.assertEqual([a["name"] for a in listing["agents"]], ["mirror"])
        self.assertEqual(listing, {"agents": [(await client.get("/api/v1/agents/mirror"))[1]], "next_cursor": None})

        shown = fields(await self.run_ok("agents", "show", "echo"))
        self.assertEqual((shown["name"], shown["status"], shown["version"], shown["capabilities"], shown["config"]),
                         ("echo", "running", "1", "echo", '{"greeting": "hi"}'))
        self.assertIn("memory 2 MiB", shown["limits"])
        self.assertRegex(shown["created"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d[0-9a-z.]* ago\)$")

        out = await self.run_ok("agents", "stop", "echo")
        self.assertEqual(out.strip(), "agent echo: stopped")
        self.assertEqual((await client.get("/api/v1/agents/echo"))[1]["status"], "stopped")
        view = await self.run_json("agents", "start", "echo")
        self.assertEqual((view["name"], view["status"]), ("echo", "running"))

        wasm = os.path.abspath(self.mktemp()) + ".wasm"
        with open(wasm, "wb") as f:
            f.write(wat_module(ECHO_WAT))
        out = await self.run_ok("agents", "update", "echo", wasm, "--capability", "echo", "--capability", "mirror")
        self.assertEqual(out.strip(), "updated agent echo to version 2: running")
        view = await self.run_json("agents", "update", "echo", "--max-sends", "3")
        self.assertEqual((view["version"], view["capabilities"], view["limits"]["max_sends"]),
                         (3, ["echo", "mirror"], 3))

        out = await self.run_ok("agents", "remove", "mirror")
        self.assertEqual(out.strip(), "removed agent mirror")
        self.assertEqual(await self.run_json("agents", "remove", "echo"), {"name": "echo", "removed": True})

        # What the node refuses: exit 1 and its error in one line.
        status, out, err = await caxton("agents", "show", "echo", "--url", self.url)
        self.assertEqual((status, out, err), (1, "", "caxton: AGENT_NOT_FOUND: no agent named 'echo'\n"))

    async def node_id(self, client: Client) -> str:
        status, body = await client.get("/api/v1/cluster/status")
        return body["node_id"]

    async def messages_and_cluster(self, client: Client) -> None:
        """
        send (with --wait, as a table and as JSON), conversations show and
        list, and the cluster commands on a node that runs alone.
        """
        status, _ = await client.deploy("echo", wat_module(ECHO_WAT), capabilities=["echo"])
        self.assertEqual(status, 201)

        # Accepted, not waited for: the ids.
        out = await self.run_ok("send", "--to", "echo", "--performative", "inform", "--content", '{"n": 1}',
                                "--conversation", "c-1", "--sender", "client:alice")
        ids = fields(out)
        self.assertEqual(set(ids), {"message_id", "conversation_id"})
        self.assertEqual(ids["conversation_id"], "c-1")
        self.assertRegex(ids["message_id"], r"^[0-9a-f]{32}$")

        # Waited for: the echo's inform, in the same conversation.
        out = await self.run_ok("send", "--to", "capability:echo", "-p", "request", "-c", '{"text": "hi"}',
                                "--conversation", "c-1", "--sender", "client:alice", "--reply-by", "30s", "--wait", "20")
        shown = fields(out)
        self.assertEqual((shown["conversation_id"], shown["reply"], shown["receiver"]),
                         ("c-1", "inform from echo", "client:alice"))
        self.assertIn('"text": "hi"', out)
        answer = await self.run_json("send", "--to", "echo", "-p", "request", "-c", "[1, 2]", "--wait")
        self.assertEqual((answer["reply"]["performative"], answer["reply"]["sender"],
                          answer["reply"]["conversation_id"], answer["reply"]["content"]["content"]),
                         ("inform", "echo", answer["conversation_id"], [1, 2]))

        # The node's failure is a reply too, and exit 1 with its reason.
        status, out, err = await caxton("send", "--to", "ghost", "-p", "request", "-c", "{}", "--wait", "20",
                                        "--url", self.url)
        self.assertEqual(status, 1, out + err)
        self.assertEqual(fields(out)["reply"], "failure from caxton")
        self.assertEqual(err, "caxton: the node reports a failure: AGENT_NOT_FOUND: no agent named 'ghost'\n")
        # No reply at all within the wait: exit 1, and say where to look.
        status, out, err = await caxton("send", "--to", "client:bob", "-p", "inform", "-c", "{}", "--wait", "1",
                                        "--conversation", "quiet", "--url", self.url)
        self.assertEqual(status, 1, out + err)
        self.assertIn("no reply within 1s in conversation quiet", err)
        self.assertIn("caxton conversations show quiet", err)

        out = await self.run_ok("conversations", "show", "c-1")
        head, _, messages = out.partition("\n\n")
        self.assertEqual(fields(head)["participants"], "client:alice, echo")
        rows = table(messages)
        # The echo answers both messages: its first answer may come in
        # before or after the second message.
        self.assertEqual(sorted((r["performative"], r["from"], r["to"]) for r in rows),
                         [("inform", "client:alice", "echo"), ("inform", "echo", "client:alice"),
                          ("inform", "echo", "client:alice"), ("request", "client:alice", "capability:echo")])
        self.assertEqual((rows[0]["performative"], rows[0]["content"]), ("inform", '{"n":1}'))
        whole = await self.run_json("conversations", "show", "c-1")
        self.assertEqual(whole, (await client.get("/api/v1/conversations/c-1"))[1])
        rows = table(await self.run_ok("conversations", "list", "--participant", "client:alice"))
        self.assertEqual([(r["conversation"], r["messages"]) for r in rows], [("c-1", "4")])

        # A node that runs alone is a cluster of one.
        shown = fields(await self.run_ok("cluster", "status"))
        self.assertEqual((shown["clustered"], shown["partition"], shown["agents"]), ("no", "majority", "1"))
        rows = table(await self.run_ok("cluster", "members"))
        self.assertEqual(len(rows), 1)
        self.assertTrue(rows[0]["id"].endswith(" *"))
        self.assertEqual((rows[0]["state"], rows[0]["agents"]), ("alive", "1"))


class MisuseTests(unittest.TestCase):
    """
    A command line that is wrong is refused before anything is sent
    (exit 2); a node that cannot be reached is exit 1 with a hint.
    """

    timeout = 60

    async def test_refused_locally(self) -> None:
        """
        A missing module file and WAT that does not compile are exit 2,
        with a line saying what is wrong (content that is not JSON too:
        see L{tests.test_cli_http.OptionTests.test_misuse}); the options
        work before and after the command; a closed port is exit 1 naming
        the URL and how to change it.
        """
        closed = "http://127.0.0.1:9"
        status, out, err = await caxton("agents", "deploy", "/nonexistent/echo.wasm", "--name", "x", "--url", closed)
        self.assertEqual((status, out, err), (2, "", "caxton: cannot read /nonexistent/echo.wasm: No such file or directory\n"))
        bad = os.path.abspath(self.mktemp()) + ".wat"
        with open(bad, "w") as f:
            f.write("(module (fnc))")
        status, out, err = await caxton("--url", closed, "agents", "deploy", bad, "--name", "x")
        self.assertEqual((status, out), (2, ""))
        self.assertTrue(err.startswith(f"caxton: {bad} is not valid WAT: "), err)
        status, out, err = await caxton("--url", "http://127.0.0.1:1", "agents", "list", "--url", closed)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            "caxton: cannot reach the node at http://127.0.0.1:9: connection refused — is it running? (--url / CAXTON_URL)\n",
        )
