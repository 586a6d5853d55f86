"""
Hot update under load (SPEC 3.1), on a real node process: a new module
replaces the old while messages stream in; none is lost, the in-flight
ones finish on the old version, the rest run on the new.
"""

from __future__ import annotations

import base64
import os

import wasmtime
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.nodes import Client, NodeProcess

MESSAGES = 300


def versioned_echo(version: int) -> bytes:
    """
    An agent that answers inform {"version": N, "message": <the message>}.
    """
    prefix = '{"version":%d,"message":' % version
    return wasmtime.wat2wasm(
        r"""
(module
  (import "caxton" "reply" (func $reply (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "inform")
  (data (i32.const 32) "%s")
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 65536)
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    (memory.copy (i32.const %d) (local.get $ptr) (local.get $len))
    (i32.store8 (i32.add (i32.const %d) (local.get $len)) (i32.const 125))
    (drop (call $reply (i32.const 16) (i32.const 6) (i32.const 32)
                       (i32.add (local.get $len) (i32.const %d))))
    i32.const 0))
"""
        % (prefix.replace('"', '\\"'), 32 + len(prefix), 32 + len(prefix), len(prefix) + 1)
    )


class HotUpdateTests(unittest.TestCase):
    """
    One node, one agent updated while messages stream to it.
    """

    timeout = 120

    async def test_update_under_load(self) -> None:
        """
        300 requests stream in while a PUT replaces version 1 with version
        2: every request gets its inform, in order, the versions in the
        replies go 1...1 then 2...2 (never back), both appear, and the API
        shows version 2.
        """
        node = NodeProcess(os.path.abspath(self.mktemp()))
        self.addCleanup(node.kill)
        self.addCleanup(node.stop)
        client = Client(await node.start())
        code, body = await client.deploy("worker", versioned_echo(1))
        self.assertEqual(code, 201, body)

        update: object = None
        for i in range(MESSAGES):
            if i == MESSAGES // 3:
                # Not awaited: the update lands while messages keep coming.
                update = Deferred.fromCoroutine(
                    client.request(
                        "PUT",
                        "/api/v1/agents/worker",
                        {"wasm": base64.b64encode(versioned_echo(2)).decode()},
                    )
                )
            if i == 2 * MESSAGES // 3:
                # The third in between was sent while the update ran; the
                # last third is sent after it.
                code, view = await update
                self.assertEqual((code, view["version"]), (200, 2), view)
            code, _ = await client.post(
                "/api/v1/messages",
                {"performative": "request", "sender": "client:load", "receiver": "worker", "content": i},
            )
            self.assertEqual(code, 202)

        replies = await client.poll(
            "/api/v1/mailboxes/client:load", lambda read: len(read) >= MESSAGES, timeout=60
        )
        self.assertEqual(len(replies), MESSAGES, node.output[-2000:])
        contents = [message["content"] for message in replies]
        self.assertEqual([c["message"]["content"] for c in contents], list(range(MESSAGES)))
        versions = [c["version"] for c in contents]
        self.assertEqual(versions, sorted(versions))
        self.assertEqual(set(versions), {1, 2})
        code, view = await client.get("/api/v1/agents/worker")
        self.assertEqual(view["version"], 2)
        code, letters = await client.get("/api/v1/dead-letters")
        self.assertEqual(letters["dead_letters"], [])
