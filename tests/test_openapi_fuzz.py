"""
A bounded fuzz run of the whole management API from its OpenAPI document.

A real node process (no API keys, so its loopback clients may do anything)
is fuzzed by schemathesis, reading the document the node serves at
C{/api/v1/openapi.json}: the document's examples first, then the boundary
values of every parameter and body (its coverage phase), then a few
generated requests per operation, half of them aimed at an agent, a
mailbox and a conversation that exist.  Every answer must be no 5xx and
must match the document (status, content type, headers, schema), and
afterwards the node must still run, answer C{/health} and go quiet (no
traffic that goes on by itself, such as an agent and the node answering
each other without end).

The run is kept short and repeatable: a fixed seed, a few examples per
operation, one worker, no example database, a per-request timeout, and a
hard deadline on the whole run.  The node's long polls are cut to one
second (C{http.max_wait}) and so is C{invoke}'s wait, so no generated
C{wait} or C{timeout} can hold a request for long; the event stream, which
never ends by design, is left out, and so are the operations that create
and revoke API keys (the first key would end the loopback-only mode the
run relies on).  When schemathesis finds a problem the test fails with
its report, which names the request and how to replay it.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import sys
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from caxton.api.app import CaxtonAPI
from caxton.api.openapi import OPERATIONS
from tests.nodes import REPO, Client, NodeProcess
from tests.wasmbuild import example, wat_module

#: The seed of the run: the same requests every time (for one version of
#: the document and of schemathesis).
SEED = 20251122

#: Generated test cases per operation and phase.
EXAMPLES = 10

#: The longest the whole schemathesis run may take, in seconds.
DEADLINE = 150.0

#: What every answer is checked for.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)

#: Operations left out of the run, and why.
LEFT_OUT = {
    ("GET", "/api/v1/events"): "a stream that stays open by design",
    ("POST", "/api/v1/keys"): "a key would end the loopback-only mode the run relies on",
    ("DELETE", "/api/v1/keys/<key_id>"): "goes with creating keys",
}


#: schemathesis' configuration (read from its working directory): half
#: the agent names, clients and conversation ids it makes up are ones that
#: exist, so generated requests reach a real agent, mailbox and
#: conversation and not only their 404s.  Stopping and removal are left to
#: the names it makes up (the document's examples for them name another
#: agent), so the agent runs for the whole run and answers every invoke at
#: once instead of after its timeout.
CONFIG = """
# No names learnt from answers: the agent's would reach DELETE.
[phases.examples.extra-data-sources]
responses = false

[phases.coverage.extra-data-sources]
responses = false

[phases.fuzzing.extra-data-sources]
responses = false

[dictionaries.agents]
values = ["echo"]

[dictionaries.clients]
values = ["client:alice"]

[dictionaries.conversations]
values = ["hello-1"]

[dictionaries.timeouts]
values = ["100ms", "1s", 0.5]

[dictionaries.protocols]
values = ["fipa-request", "fipa-query", "fipa-contract-net"]

[[operations]]
include-operation-id = ["showAgent", "updateAgent", "startAgent"]
parameters = { "path.name" = { dictionary = "agents", probability = 0.5 } }

# invoke's timeout is cut to a second on this node: mostly within it.
[[operations]]
include-operation-id = "invokeAgent"
parameters = { "path.name" = { dictionary = "agents", probability = 0.5 }, "body.timeout" = { dictionary = "timeouts", probability = 0.8 } }

# Messages to the agent, under the protocols the node polices.
[[operations]]
include-operation-id = "sendMessage"
parameters = { "body.receiver" = { dictionary = "agents", probability = 0.5 }, "body.protocol" = { dictionary = "protocols", probability = 0.5 } }

[[operations]]
include-operation-id = "mailbox"
parameters = { "path.client" = { dictionary = "clients", probability = 0.5 } }

[[operations]]
include-operation-id = "showConversation"
parameters = { "path.conversation_id" = { dictionary = "conversations", probability = 0.5 } }
"""


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


def _served() -> set:
    routes = set()
    for rule in CaxtonAPI.app.url_map.iter_rules():
        for method in rule.methods or ():
            routes.add((method, rule.rule))
    return routes


class FuzzTests(unittest.TestCase):
    """
    schemathesis against a real node.
    """

    timeout = DEADLINE + 90

    async def test_fuzz(self) -> None:
        """
        A bounded schemathesis run from the served document finds no 5xx
        and no answer that disagrees with the document, and the node
        survives it.
        """
        node = NodeProcess(
            os.path.abspath(self.mktemp()),
            env={
                "CAXTON_HTTP_MAX_WAIT": "1s",
                "CAXTON_HTTP_INVOKE_TIMEOUT": "1s",
                "CAXTON_HTTP_MAX_BODY": "1MiB",
                "CAXTON_MCP_SERVERS": "down=http://127.0.0.1:1/mcp",
            },
        )
        self.addCleanup(lambda: ensureDeferred(node.stop(signal.SIGKILL)))
        url = await node.start()
        client = Client(url)
        # The document's examples name the agent echo, the client
        # client:alice and the conversation hello-1: make them exist, so
        # the examples reach a real agent, mailbox and conversation.
        wasm = base64.b64encode(wat_module(example("wat", "echo.wat"))).decode("ascii")
        status, body = await client.post("/api/v1/agents", {"name": "echo", "wasm": wasm})
        self.assertEqual(status, 201, body)
        status, body = await client.post(
            "/api/v1/messages",
            {"performative": "request", "sender": "client:alice", "receiver": "echo", "conversation_id": "hello-1"},
        )
        self.assertEqual(status, 202, body)

        served = _served()
        left_out: List[str] = []
        fuzzed = 0
        for key, operation in OPERATIONS.items():
            if key in LEFT_OUT or key not in served:
                left_out += ["--exclude-operation-id", operation["operationId"]]
            else:
                fuzzed += 1
        argv = [
            sys.executable, "-m", "schemathesis.cli", "run", url + "/api/v1/openapi.json",
            "--checks", ",".join(CHECKS),
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(EXAMPLES),
            "--seed", str(SEED),
            "--workers", "1",
            "--request-timeout", "10",
            "--generation-database", "none",
            "--no-color",
            # Fuzz the API, not the key check: no made-up Authorization.
            "--generation-with-security-parameters", "false",
            *left_out,
        ]
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        with open(os.path.join(work, "schemathesis.toml"), "w") as f:
            f.write(CONFIG)
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["COLUMNS"] = "120"
        fuzz = _Output()
        process = reactor.spawnProcess(fuzz, sys.executable, argv, env=env, path=work)
        timer = reactor.callLater(DEADLINE, process.signalProcess, "KILL")
        ended = await fuzz.ended
        report = bytes(fuzz.output).decode("utf-8", "replace")
        if timer.active():
            timer.cancel()
        else:
            self.fail(f"the fuzz run did not end within {DEADLINE:g}s:\n{report[-20000:]}")
        if not isinstance(ended, ProcessDone):
            code = ended.exitCode if isinstance(ended, ProcessTerminated) else ended
            self.fail(f"schemathesis found problems (exit {code}):\n{report[-20000:]}")
        # A run that tested nothing would pass too: it tested every
        # operation it was given (schemathesis leaves out the route it read
        # the document from).
        tested = re.search(r"Tested: (\d+)", report)
        self.assertIn(int(tested.group(1)) if tested else None, (fuzzed - 1, fuzzed), report)

        # The node survived: still running, still answering, and the
        # agent the run was aimed at is still there.
        self.assertFalse(node._output.ended.called, node.output[-5000:])
        self.assertEqual((await client.get("/health"))[0], 200)
        self.assertEqual((await client.get("/api/v1/agents/echo"))[0], 200)
        # And it went quiet: nothing the run started (an agent and the
        # node answering each other, say) goes on by itself.
        recorded = []
        for _ in range(3):
            await deferLater(reactor, 1.0, lambda: None)
            status, body = await client.get("/api/v1/conversations?limit=1000")
            self.assertEqual(status, 200, body)
            recorded.append(sum(c["message_count"] for c in body["conversations"]))
        self.assertEqual(recorded[1], recorded[2], f"messages keep being recorded: {recorded}")
        self.assertNotIn("unhandled error", node.output)
