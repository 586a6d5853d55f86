"""
Tests for what the C{caxton} node commands print and build, as pure
functions: tables, fields, times, sizes, the renderings of agents,
conversations and the cluster, the deploy body (read back with the node's
own multipart parser), the messages C{send} builds and which messages are
replies, and the deploy progress line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from datetime import datetime, timezone
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from caxton.api.app import parse_multipart
from caxton.cli import output
from caxton.cli.agents import Progress, multipart, read_module, render_agent, render_list, spec_from_args
from caxton.cli.cluster import render_members, render_status
from caxton.cli.errors import UsageError
from caxton.cli.main import build_parser
from caxton.cli.messages import is_reply, message_from_args, receiver, render_conversation
from tests.wasmbuild import example

NOW = 1_900_000_000.0


class UTC(SynchronousTestCase):
    """
    Runs with C{TZ=UTC}, so local times are predictable.
    """

    def setUp(self) -> None:
        old = os.environ.get("TZ")
        os.environ["TZ"] = "UTC"
        time.tzset()

        def restore() -> None:
            if old is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = old
            time.tzset()

        self.addCleanup(restore)


class FormatTests(UTC):
    """
    The building blocks: tables, fields, times, sizes, durations.
    """

    def test_table(self) -> None:
        """
        Columns as wide as their widest cell, numbers to the right, no
        trailing spaces, C{-} for nothing, lists joined with commas.
        """
        rows = [{"name": "echo", "n": 7, "caps": ["a", "b"]}, {"name": "a-much-longer-name", "n": 1234, "caps": []}]
        columns = [output.Column("name", "name"), output.Column("n", "n", right=True), output.Column("caps", "caps")]
        self.assertEqual(
            output.table(rows, columns, "none"),
            "NAME                   N  CAPS\n"
            "echo                   7  a,b\n"
            "a-much-longer-name  1234  -",
        )
        self.assertEqual(output.table([], columns, "no agents"), "no agents")

    def test_fields(self) -> None:
        """
        Names in a column, values aligned; several lines indented under
        the first; a least width lines blocks up.
        """
        self.assertEqual(output.fields([("a", 1), ("long name", "x\ny"), ("b", None), ("c", True)]),
                         "a          1\nlong name  x\n           y\nb          -\nc          yes")
        self.assertEqual(output.fields([("a", "v")], 4), "a     v")

    def test_times_sizes_durations(self) -> None:
        """
        Local time, ages, binary sizes, short durations.
        """
        self.assertEqual(output.when(NOW), "2030-03-17 17:46:40")
        self.assertEqual(output.when(None), "-")
        self.assertEqual(output.when_rfc3339("2030-03-17T18:46:40+01:00"), "2030-03-17 17:46:40")
        self.assertEqual(output.when_rfc3339("not a time"), "not a time")
        self.assertEqual(output.age(NOW - 75, NOW), "1m15s ago")
        self.assertEqual(output.when_and_age(NOW - 3.5, NOW), "2030-03-17 17:46:36 (3.5s ago)")
        self.assertEqual([output.size(n) for n in (314, 2048, 1536 * 1024, 16 * 2**20, 3 * 2**30)],
                         ["314 B", "2 KiB", "1.5 MiB", "16 MiB", "3 GiB"])
        self.assertEqual([output.duration(s) for s in (0.25, 1.0, 2.5, 59, 61, 3 * 3600 + 120, 2 * 86400 + 4 * 3600)],
                         ["250ms", "1s", "2.5s", "59s", "1m01s", "3h02m", "2d04h"])

    def test_json(self) -> None:
        """
        C{--json} prints indented JSON with sorted keys, not ASCII-escaped.
        """
        out = io.StringIO()
        output.print_json({"b": 1, "a": ["é"]}, out)
        self.assertEqual(out.getvalue(), '{\n  "a": [\n    "é"\n  ],\n  "b": 1\n}\n')
        self.assertEqual(output.json_line({"b": 1, "a": 2}), '{"a":2,"b":1}')


AGENT = {
    "name": "echo", "version": 2, "status": "running", "reason": None, "node": "n1",
    "capabilities": ["echo"], "tools": [], "module": {"hash": "ab" * 32, "size": 314},
    "limits": {"memory": 16777216, "fuel": 1000000000, "wall_clock": 1.0, "max_message": 262144, "max_sends": 1000},
    "config": {"k": 1}, "created_at": NOW - 120, "updated_at": NOW - 60,
    "usage": {"memory_bytes": 131072, "queue_depth": 3},
    "counters": {"handled": 10, "failed": 1, "traps": 0, "last_error": None},
}
REMOTE = {"name": "bidder", "node": "n2", "version": 4, "status": "running", "capabilities": ["bid"], "remote": True}


class RenderTests(UTC):
    """
    The tables and fields of the commands, from the API's answers.
    """

    def test_agent_list(self) -> None:
        """
        A remote agent has no usage or counters; C{--by-node} makes one
        table per node.
        """
        self.assertEqual(
            render_list([REMOTE, AGENT]),
            "NAME    NODE  STATUS   VERSION  QUEUE  HANDLED  FAILED  CAPABILITIES\n"
            "bidder  n2    running        4      -        -       -  bid\n"
            "echo    n1    running        2      3       10       1  echo",
        )
        self.assertEqual(
            render_list([REMOTE, AGENT], by_node=True),
            "node n1: 1 agent\n"
            "NAME  STATUS   VERSION  QUEUE  HANDLED  FAILED  CAPABILITIES\n"
            "echo  running        2      3       10       1  echo\n\n"
            "node n2: 1 agent\n"
            "NAME    STATUS   VERSION  QUEUE  HANDLED  FAILED  CAPABILITIES\n"
            "bidder  running        4      -        -       -  bid",
        )
        self.assertEqual(render_list([], filtered=True), "no agents match")

    def test_agent(self) -> None:
        """
        One agent, limits in units, times with their age; a remote one
        says where its details are; a deploy in progress its start.
        """
        self.assertEqual(
            render_agent(AGENT, NOW),
            "name          echo\n"
            "node          n1\n"
            "status        running\n"
            "version       2\n"
            "capabilities  echo\n"
            "tools         -\n"
            f"module        314 B, sha256 {'ab' * 32}\n"
            "limits        memory 16 MiB, fuel 1,000,000,000, wall clock 1s, max message 256 KiB, max sends 1000\n"
            'config        {"k": 1}\n'
            "created       2030-03-17 17:44:40 (2m00s ago)\n"
            "updated       2030-03-17 17:45:40 (1m00s ago)\n"
            "memory        128 KiB\n"
            "queue         3\n"
            "handled       10\n"
            "failed        1\n"
            "traps         0\n"
            "last error    -",
        )
        self.assertIn("remote        yes: its limits, usage and counters are on node n2", render_agent(REMOTE))
        deploying = {"name": "big", "node": "n1", "status": "deploying", "since": NOW - 12, "module": {"size": 18 * 2**20}}
        self.assertEqual(
            render_agent(deploying, NOW),
            "name    big\nnode    n1\nstatus  deploying\nsince   2030-03-17 17:46:28 (12s ago)\nmodule  18 MiB",
        )

    def test_conversation(self) -> None:
        """
        A conversation's fields, then its messages; receivers of every
        form; long content cut with an ellipsis.
        """
        answer = {
            "conversation": {"conversation_id": "c1", "protocol": "fipa-request", "initiator": "client:a",
                             "participants": ["client:a", "echo"], "state": "done", "created_at": NOW,
                             "updated_at": NOW + 1, "message_count": 2},
            "messages": [
                {"seq": 1, "recorded_at": NOW, "message": {"performative": "request", "sender": "client:a",
                                                           "receiver": {"capability": "echo", "all": True},
                                                           "content": {"text": "x" * 100}}},
                {"seq": 12, "recorded_at": NOW + 1, "message": {"performative": "inform", "sender": "echo",
                                                                "receiver": ["client:a", "client:b"]}},
            ],
        }
        self.assertEqual(
            render_conversation(answer),
            "conversation  c1\nprotocol      fipa-request\nstate         done\ninitiator     client:a\n"
            "participants  client:a, echo\ncreated       2030-03-17 17:46:40\nupdated       2030-03-17 17:46:41\n"
            "messages      2\n\n"
            "SEQ  TIME                 PERFORMATIVE  FROM      TO                     CONTENT\n"
            '  1  2030-03-17 17:46:40  request       client:a  capability:echo (all)  {"text":"' + "x" * 50 + "…\n"
            " 12  2030-03-17 17:46:41  inform        echo      client:a,client:b      -",
        )

    def test_cluster(self) -> None:
        """
        Members with this node marked; status of a clustered node and of
        one that runs alone.
        """
        members = [
            {"id": "n1", "address": "127.0.0.1:7946", "state": "alive", "incarnation": 3, "since": NOW - 5,
             "agents": 1, "self": True},
            {"id": "n2", "address": "127.0.0.1:7947", "state": "dead", "incarnation": 12, "since": NOW - 300,
             "agents": 0, "self": False},
        ]
        self.assertEqual(
            render_members(members, NOW),
            "ID    ADDRESS         STATE  SINCE      INCARNATION  AGENTS\n"
            "n1 *  127.0.0.1:7946  alive  5s ago               3       1\n"
            "n2    127.0.0.1:7947  dead   5m00s ago           12       0",
        )
        alone = {"node_id": "n1", "clustered": False, "partition": "majority",
                 "members": {"alive": 1, "suspect": 0, "dead": 0, "left": 0}, "local_health": 0, "agents": 2}
        self.assertEqual(
            render_status(alone),
            "node          n1\nclustered     no\npartition     majority\n"
            "members       1 alive, 0 suspect, 0 dead, 0 left\nlocal health  0\nagents        2",
        )
        clustered = dict(alone, clustered=True, cluster="prod", address="10.0.0.1:7946", profile="lan",
                         encrypted=True, left=False, expected=3, incarnation=9, last_sync=None, streams=["n3"])
        shown = render_status(clustered, NOW)
        self.assertIn("cluster       prod\n", shown)
        self.assertIn("last sync     never\n", shown)
        self.assertIn("streams       n3", shown)


def _args(**given: Any) -> argparse.Namespace:
    defaults = dict(name=None, capability=None, tool=None, config=None, memory=None, fuel=None, wall_clock=None,
                    max_message=None, max_sends=None, spec_file=None, relocatable=False)
    defaults.update(given)
    return argparse.Namespace(**defaults)


class DeployBodyTests(SynchronousTestCase):
    """
    What C{agents deploy} and C{update} send.
    """

    def test_spec(self) -> None:
        """
        The options win over the spec file, field by field; limits given
        as options join the file's.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"name": "a", "capabilities": ["x"], "limits": {"fuel": 5, "memory": "1MiB"}, "config": 1}, f)
        spec = spec_from_args(_args(spec_file=path, capability=["y", "z"], memory="2MiB", relocatable=True))
        self.assertEqual(spec, {"name": "a", "capabilities": ["y", "z"], "limits": {"fuel": 5, "memory": "2MiB"},
                                "config": 1, "relocatable": True})
        with open(path, "w") as f:
            f.write("[1]")
        self.assertRaises(UsageError, spec_from_args, _args(spec_file=path))
        self.assertRaises(UsageError, spec_from_args, _args(spec_file=path + ".missing"))

    def test_multipart(self) -> None:
        """
        The node's own multipart parser reads back the spec and the
        module's exact bytes.
        """
        module = bytes(range(256)) * 64 + b"\r\n--\r\n"
        body, content_type = multipart({"name": "echo", "config": "é"}, (module, "echo.wasm"))
        parts = parse_multipart(body, content_type)
        self.assertEqual(parts["wasm"], [module])
        self.assertEqual(json.loads(parts["spec"][0]), {"name": "echo", "config": "é"})
        body, content_type = multipart({"capabilities": ["a"]}, None)
        self.assertEqual(set(parse_multipart(body, content_type)), {"spec"})

    def test_read_module(self) -> None:
        """
        WAT is compiled to a module (and named .wasm); a module is sent as
        it is.
        """
        data, name = read_module(example("wat", "echo.wat"))
        self.assertEqual((data[:4], name), (b"\0asm", "echo.wasm"))
        path = self.mktemp() + ".bin"
        with open(path, "wb") as f:
            f.write(data)
        self.assertEqual(read_module(path), (data, os.path.basename(path)))


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class ProgressTests(SynchronousTestCase):
    """
    The deploy progress line: only on a terminal, the upload then the
    seconds spent waiting, cleared at the end.
    """

    def test_terminal(self) -> None:
        """
        Upload percentages, then a line a second while the node compiles,
        then nothing left on the line and no timer left behind.
        """
        clock, stream = Clock(), _TTY()
        progress = Progress(stream, clock)
        progress.start("big.wasm", 4 * 2**20)
        clock.advance(0.2)
        progress.sent(2**20)
        clock.advance(0.2)
        progress.sent(3 * 2**20)
        clock.advance(1)
        clock.advance(1)
        shown = [line.rstrip() for line in stream.getvalue().split("\r")]
        self.assertEqual(
            shown[1:6],
            [
                "big.wasm: uploading 0 B of 4 MiB",
                "big.wasm: uploading 1 MiB of 4 MiB (25%)",
                "big.wasm: uploaded 4 MiB; the node is compiling… 0s",
                "big.wasm: uploaded 4 MiB; the node is compiling… 1s",
                "big.wasm: uploaded 4 MiB; the node is compiling… 2s",
            ],
        )
        progress.finish()
        self.assertTrue(stream.getvalue().endswith("\r"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_not_a_terminal(self) -> None:
        """
        Piped or redirected stderr shows nothing.
        """
        clock, stream = Clock(), io.StringIO()
        progress = Progress(stream, clock)
        progress.start("big.wasm", 10)
        progress.sent(10)
        clock.advance(5)
        progress.finish()
        self.assertEqual((stream.getvalue(), clock.getDelayedCalls()), ("", []))


class SendTests(SynchronousTestCase):
    """
    The message C{send} builds, and how C{--wait} tells a reply.
    """

    def test_message(self) -> None:
        """
        The options make the message; C{--reply-by} is now plus the
        duration, in UTC with milliseconds.
        """
        args = build_parser().parse_args(
            ["send", "--to", "echo", "-p", "REQUEST", "-c", '{"a": 1}', "--sender", "client:al",
             "--conversation", "c", "--protocol", "fipa-request", "--reply-by", "90s"]
        )
        message = message_from_args(args, now=datetime(2030, 1, 1, tzinfo=timezone.utc))
        self.assertEqual(message, {"performative": "request", "receiver": "echo", "content": {"a": 1},
                                   "sender": "client:al", "conversation_id": "c", "protocol": "fipa-request",
                                   "reply_by": "2030-01-01T00:01:30.000Z"})
        self.assertIsNone(args.wait)
        args = build_parser().parse_args(["send", "--to", "a", "-p", "cancel"])
        self.assertEqual(message_from_args(args), {"performative": "cancel", "receiver": "a"})
        args = build_parser().parse_args(["send", "--to", "a", "-p", "inform", "-c", "null"])
        self.assertEqual(message_from_args(args), {"performative": "inform", "receiver": "a", "content": None})
        self.assertEqual(build_parser().parse_args(["send", "--to", "a", "-p", "inform", "-c", "1", "--wait"]).wait, 30.0)

    def test_receiver(self) -> None:
        """
        One name, several, or a capability (for one or all).
        """
        self.assertEqual(receiver(["a"], False), "a")
        self.assertEqual(receiver(["a", "b", "a"], False), ["a", "b"])
        self.assertEqual(receiver(["capability:bid"], False), {"capability": "bid"})
        self.assertEqual(receiver(["capability:bid"], True), {"capability": "bid", "all": True})
        for targets, everyone in ((["capability:bid", "a"], False), (["a"], True), (["capability:"], False)):
            self.assertRaises(argparse.ArgumentTypeError, receiver, targets, everyone)

    def test_is_reply(self) -> None:
        """
        A later message to the sender (or its reply_to), or answering its
        reply_with, from someone else.
        """
        sent = {"sender": "client:a", "receiver": "echo", "reply_with": "r1"}
        self.assertTrue(is_reply({"sender": "echo", "receiver": "client:a"}, sent))
        self.assertTrue(is_reply({"sender": "echo", "receiver": ["x", "client:a"]}, sent))
        self.assertTrue(is_reply({"sender": "echo", "receiver": "y", "in_reply_to": "r1"}, sent))
        self.assertFalse(is_reply({"sender": "client:a", "receiver": "client:a"}, sent))
        self.assertFalse(is_reply({"sender": "echo", "receiver": "client:b"}, sent))
        self.assertTrue(is_reply({"sender": "echo", "receiver": "client:z"}, dict(sent, reply_to=["client:z"])))
