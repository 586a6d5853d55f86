"""
Integration tests: real C{twist caxton} processes driven through the REST
API, the way a user (curl, treq) drives them.

Every test starts its own node on an ephemeral loopback port with a data
directory from C{self.mktemp()}, and SIGKILLs it in cleanup (the restart
test stops it with SIGTERM first and checks the exit code).  Waiting is done
with the API's long polls (C{wait=...}) in loops bounded by a count and a
deadline, never with open-ended sleeps.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Optional

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from tests.nodes import Client, NodeProcess
from tests.wasmbuild import BuildError, c_module, example, testing_agent, wat_module, zig_available

#: The longest any single wait in these tests may take, in seconds.
WAIT = 15.0

NODE = "caxton"


def _reply_by(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def _echo() -> bytes:
    return wat_module(example("wat", "echo.wat"))


class _NodeTestCase(unittest.TestCase):
    """
    Starts nodes for a test and waits for what they answer.
    """

    timeout = 90

    async def node(self, data_dir: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> tuple:
        """
        Start a node (on C{data_dir}, a fresh one by default); it is killed
        when the test ends.

        @return: C{(NodeProcess, Client)}.
        """
        process = NodeProcess(os.path.abspath(data_dir or self.mktemp()), env=env)
        self.addCleanup(lambda: ensureDeferred(process.stop(signal.SIGKILL)))
        url = await process.start()
        return process, Client(url)

    async def deploy(self, client: Client, name: str, wasm: bytes, **spec: Any) -> Dict[str, Any]:
        status, body = await client.deploy(name, wasm, **spec)
        self.assertEqual(status, 201, body)
        self.assertEqual(body["name"], name)
        self.assertEqual(body["status"], "running", body)
        return body

    async def send(self, client: Client, **message: Any) -> Dict[str, Any]:
        status, body = await client.post("/api/v1/messages", message)
        self.assertEqual(status, 202, body)
        self.assertIn("message_id", body)
        self.assertIn("conversation_id", body)
        return body

    async def mailbox_until(
        self,
        client: Client,
        who: str,
        match: Callable[[Dict[str, Any]], bool],
        after: int = 0,
        timeout: float = WAIT,
    ) -> tuple:
        """
        Long-poll C{who}'s mailbox until a message satisfies C{match}.

        @return: C{(message, seen)}: the message, and every message read.
        """
        seen = await client.poll(
            f"/api/v1/mailboxes/{who}", lambda read: any(match(m) for m in read), after, timeout
        )
        index = next(i for i, m in enumerate(seen) if match(m))
        return seen[index], seen[: index + 1]

    async def conversation_until(
        self,
        client: Client,
        conversation_id: str,
        match: Callable[[List[Dict[str, Any]]], bool],
        after: Any = 0,
        timeout: float = WAIT,
    ) -> List[Dict[str, Any]]:
        """
        Long-poll a conversation (from C{after}, a seq or a message id)
        until the messages read so far satisfy C{match}; those messages.
        """
        return await client.poll(f"/api/v1/conversations/{conversation_id}", match, after, timeout)

    async def agent(self, client: Client, name: str) -> Dict[str, Any]:
        status, body = await client.get(f"/api/v1/agents/{name}")
        self.assertEqual(status, 200, body)
        return body

    def assertError(self, response: tuple, status: int, code: str) -> str:
        """
        C{response} is the SPEC's error shape with C{status} and C{code};
        its message.
        """
        got_status, body = response
        self.assertEqual((got_status, body and body.get("error", {}).get("code")), (status, code), body)
        message = body["error"]["message"]
        self.assertIsInstance(message, str)
        self.assertTrue(message)
        return message


def _from_node(perf: str, reason: Optional[str] = None) -> Callable[[Dict[str, Any]], bool]:
    def match(m: Dict[str, Any]) -> bool:
        if m.get("sender") != NODE or m.get("performative") != perf:
            return False
        return reason is None or (isinstance(m.get("content"), dict) and m["content"].get("reason") == reason)

    return match


def _perf(performative: str, sender: Optional[str] = None) -> Callable[[Dict[str, Any]], bool]:
    return lambda m: m.get("performative") == performative and (sender is None or m.get("sender") == sender)


def _names(receiver: Any) -> List[str]:
    if isinstance(receiver, str):
        return [receiver]
    return list(receiver or [])


class ReadmeFlowTests(_NodeTestCase):
    """
    The README's "five minutes with a node", step by step.
    """

    async def test_multipart_deploy_request_long_poll_and_invoke(self) -> None:
        """
        The echo agent deployed with a multipart form (as C{curl -F} sends
        it) answers a C{request} from C{client:alice} with an C{inform}
        that the conversation's long poll (C{after=<message_id>&wait=5s})
        returns, and C{invoke} gets the same reply in one call.
        """
        _, client = await self.node()
        http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = await http.post(
            client.url + "/api/v1/agents",
            data={"spec": json.dumps({"name": "echo", "capabilities": ["echo"]})},
            files={"wasm": ("echo.wasm", "application/octet-stream", io.BytesIO(_echo()))},
        )
        body = json.loads(await response.content())
        self.assertEqual(response.code, 201, body)
        self.assertEqual((body["name"], body["version"], body["status"]), ("echo", 1, "running"))
        self.assertEqual(body["capabilities"], ["echo"])

        sent = await self.send(
            client,
            performative="request",
            sender="client:alice",
            receiver="echo",
            conversation_id="hello-1",
            content={"text": "hi"},
        )
        self.assertEqual(sent["conversation_id"], "hello-1")
        status, body = await client.get(f"/api/v1/conversations/hello-1?after={sent['message_id']}&wait=5s")
        self.assertEqual(status, 200, body)
        messages = [item["message"] for item in body["messages"]]
        self.assertTrue(messages, "the long poll returned without the reply")
        reply = messages[0]
        self.assertEqual(
            (reply["performative"], reply["sender"], _names(reply["receiver"])),
            ("inform", "echo", ["client:alice"]),
        )
        self.assertEqual(reply["conversation_id"], "hello-1")
        # echo's content is the whole message it received
        self.assertEqual(reply["content"]["content"], {"text": "hi"})
        self.assertEqual(reply["content"]["message_id"], sent["message_id"])
        self.assertEqual(body["conversation"]["participants"], ["client:alice", "echo"])

        status, body = await client.post("/api/v1/agents/echo/invoke", {"content": {"text": "hi"}})
        self.assertEqual(status, 200, body)
        reply = body["reply"]
        self.assertEqual((reply["performative"], reply["sender"]), ("inform", "echo"))
        self.assertEqual(reply["content"]["content"], {"text": "hi"})
        self.assertEqual(reply["content"]["performative"], "request")


class ContractNetTests(_NodeTestCase):
    """
    FIPA contract-net between WASM agents, and the node's deadline rules.
    """

    async def test_manager_awards_cheapest_bidder(self) -> None:
        """
        A WAT manager runs a contract-net over three bidders offering
        capability C{bid} (two WAT, one C built with zig): the requester
        learns the cheapest one won at its price, and the cfp conversation
        shows the cheapest got C{accept-proposal}, the others
        C{reject-proposal}, and the winner's C{inform}.
        """
        if not zig_available():
            raise unittest.SkipTest("zig (python -m ziglang) is not available to build bidder.c")
        try:
            c_bidder = c_module(example("c", "bidder.c"))
        except BuildError as e:
            self.fail(str(e))
        _, client = await self.node()
        wat_bidder = wat_module(example("wat", "cnp_bidder.wat"))
        await self.deploy(client, "bidder-a", wat_bidder, capabilities=["bid"], config={"price": 30})
        await self.deploy(client, "bidder-b", c_bidder, capabilities=["bid"], config={"price": 10})
        await self.deploy(client, "bidder-c", wat_bidder, capabilities=["bid"], config={"price": 20})
        await self.deploy(
            client,
            "manager",
            wat_module(example("wat", "cnp_manager.wat")),
            config={"bidders": 3, "deadline_ms": 2000},
        )
        sent = await self.send(
            client,
            performative="request",
            sender="client:alice",
            receiver="manager",
            conversation_id="buy-1",
            reply_with="order-1",
            content={"item": "widget"},
        )
        result, _ = await self.mailbox_until(client, "client:alice", _perf("inform", "manager"))
        self.assertEqual(result["content"], {"winner": "bidder-b", "price": 10})
        self.assertEqual(result["conversation_id"], "buy-1")
        self.assertEqual(result["in_reply_to"], "order-1")

        status, body = await client.get("/api/v1/conversations?participant=manager")
        self.assertEqual(status, 200, body)
        cfps = [c for c in body["conversations"] if c["protocol"] == "fipa-contract-net"]
        self.assertEqual(len(cfps), 1, body)
        cfp = cfps[0]
        self.assertEqual(cfp["initiator"], "manager")
        self.assertEqual(sorted(cfp["participants"]), ["bidder-a", "bidder-b", "bidder-c", "manager"])
        self.assertNotEqual(cfp["conversation_id"], sent["conversation_id"])

        def complete(messages: List[Dict[str, Any]]) -> bool:
            return any(_perf("inform", "bidder-b")(m) for m in messages)

        messages = await self.conversation_until(client, cfp["conversation_id"], complete)
        by_perf: Dict[str, List[Dict[str, Any]]] = {}
        for m in messages:
            by_perf.setdefault(m["performative"], []).append(m)
        self.assertEqual([m["sender"] for m in by_perf["cfp"]], ["manager"])
        self.assertEqual(
            sorted((m["sender"], m["content"]["price"]) for m in by_perf["propose"]),
            [("bidder-a", 30), ("bidder-b", 10), ("bidder-c", 20)],
        )
        self.assertEqual([_names(m["receiver"]) for m in by_perf["accept-proposal"]], [["bidder-b"]])
        self.assertEqual(
            sorted(_names(m["receiver"])[0] for m in by_perf["reject-proposal"]),
            ["bidder-a", "bidder-c"],
        )
        self.assertTrue(all(m["sender"] == "manager" for m in by_perf["reject-proposal"]))
        self.assertEqual(by_perf["inform"][0]["content"], {"done": True, "price": 10})
        self.assertNotIn("failure", by_perf)
        self.assertNotIn("not-understood", by_perf)

    async def test_late_proposal_is_rejected(self) -> None:
        """
        In a contract-net started by C{client:mgr} with C{reply_by} one
        second ahead, the participant that stayed silent is named in the
        initiator's C{failure} C{TIMEOUT}, and its proposal sent after the
        deadline is answered by the node with C{reject-proposal} reason
        C{late}, while the in-time bidder's proposal reached the initiator.
        """
        _, client = await self.node()
        await self.deploy(
            client, "bidder-a", wat_module(example("wat", "cnp_bidder.wat")),
            capabilities=["bid"], config={"price": 30},
        )
        await self.send(
            client,
            performative="cfp",
            protocol="fipa-contract-net",
            sender="client:mgr",
            receiver=["bidder-a", "client:late"],
            conversation_id="cnp-late",
            reply_by=_reply_by(1.0),
            content={"task": "paint"},
        )
        proposal, _ = await self.mailbox_until(client, "client:mgr", _perf("propose", "bidder-a"))
        self.assertEqual(proposal["content"], {"price": 30})
        timeout, _ = await self.mailbox_until(client, "client:mgr", _from_node("failure", "TIMEOUT"))
        self.assertEqual(timeout["content"]["missing"], ["client:late"])
        self.assertEqual(timeout["conversation_id"], "cnp-late")
        cfp, _ = await self.mailbox_until(client, "client:late", _perf("cfp", "client:mgr"))

        late = await self.send(
            client,
            performative="propose",
            protocol="fipa-contract-net",
            sender="client:late",
            receiver="client:mgr",
            conversation_id="cnp-late",
            in_reply_to=cfp.get("reply_with"),
            content={"price": 1},
        )
        answer, _ = await self.mailbox_until(client, "client:late", _from_node("reject-proposal"))
        self.assertEqual(answer["content"]["reason"], "late")
        self.assertEqual(answer["content"]["message_id"], late["message_id"])
        self.assertEqual(answer["conversation_id"], "cnp-late")
        # The late proposal never reached the initiator.
        status, body = await client.get("/api/v1/mailboxes/client:mgr")
        self.assertEqual(status, 200, body)
        self.assertNotIn(
            "client:late", [item["message"]["sender"] for item in body["messages"]]
        )


class DeliveryFailureTests(_NodeTestCase):
    """
    The delivery guarantee: every accepted message has an outcome.
    """

    async def test_request_timeout(self) -> None:
        """
        A C{fipa-request} with C{reply_by} one second ahead to an agent
        that never answers ends with a C{failure} C{TIMEOUT} from the node
        to the initiator, naming the silent agent.
        """
        _, client = await self.node()
        await self.deploy(client, "silent", wat_module(testing_agent("silent.wat")))
        sent = await self.send(
            client,
            performative="request",
            protocol="fipa-request",
            sender="client:x",
            receiver="silent",
            reply_with="q-1",
            reply_by=_reply_by(1.0),
            content={"question": 1},
        )
        failure, seen = await self.mailbox_until(client, "client:x", _from_node("failure"))
        self.assertEqual(failure["content"]["reason"], "TIMEOUT", failure)
        self.assertEqual(failure["content"]["missing"], ["silent"])
        self.assertEqual(failure["content"]["message_id"], sent["message_id"])
        self.assertEqual(failure["conversation_id"], sent["conversation_id"])
        self.assertEqual(failure["in_reply_to"], "q-1")
        self.assertEqual(len(seen), 1, seen)
        # The agent did get (and handle) the request.
        self.assertEqual((await self.agent(client, "silent"))["counters"]["handled"], 1)

    async def test_unknown_agent(self) -> None:
        """
        A message to a name that is no agent is accepted (202), then its
        sender gets a C{failure} C{AGENT_NOT_FOUND} and an operator finds
        it in C{GET /api/v1/dead-letters}.
        """
        _, client = await self.node()
        sent = await self.send(
            client, performative="request", sender="client:bob", receiver="nobody", content={"hello": True}
        )
        failure, _ = await self.mailbox_until(client, "client:bob", _from_node("failure"))
        self.assertEqual(failure["content"]["reason"], "AGENT_NOT_FOUND")
        self.assertEqual(failure["content"]["message_id"], sent["message_id"])
        self.assertIn("nobody", failure["content"]["message"])
        status, body = await client.get("/api/v1/dead-letters")
        self.assertEqual(status, 200, body)
        letters = [d for d in body["dead_letters"] if d["message_id"] == sent["message_id"]]
        self.assertEqual(len(letters), 1, body)
        self.assertEqual((letters[0]["reason"], letters[0]["receiver"]), ("AGENT_NOT_FOUND", "nobody"))
        self.assertEqual(letters[0]["sender"], "client:bob")
        self.assertEqual(letters[0]["message"]["content"], {"hello": True})


class BadMessageTests(_NodeTestCase):
    """
    Messages the API refuses with 400 C{INVALID_MESSAGE}.
    """

    async def test_malformed_json(self) -> None:
        """
        A body that is not JSON is refused with 400 C{INVALID_MESSAGE}.
        """
        _, client = await self.node()
        response = await client.post("/api/v1/messages", raw=b'{"performative": "request", "receiver": ')
        self.assertError(response, 400, "INVALID_MESSAGE")

    async def test_unknown_performative(self) -> None:
        """
        A performative outside FIPA's 22 is refused with 400
        C{INVALID_MESSAGE} naming it.
        """
        _, client = await self.node()
        response = await client.post(
            "/api/v1/messages", {"performative": "shout", "sender": "client:a", "receiver": "echo"}
        )
        self.assertIn("shout", self.assertError(response, 400, "INVALID_MESSAGE"))

    async def test_no_receiver(self) -> None:
        """
        A message without a receiver is refused with 400
        C{INVALID_MESSAGE}, and nothing is recorded for it.
        """
        _, client = await self.node()
        response = await client.post(
            "/api/v1/messages",
            {"performative": "inform", "sender": "client:a", "conversation_id": "nobody-1", "content": 1},
        )
        self.assertIn("receiver", self.assertError(response, 400, "INVALID_MESSAGE"))
        status, body = await client.get("/api/v1/conversations/nobody-1")
        self.assertEqual(status, 404, body)


class BadModuleTests(_NodeTestCase):
    """
    Deploys the node refuses with 400 C{INVALID_WASM} and the reason.
    """

    async def _refused(self, wasm: bytes, name: str) -> str:
        _, client = await self.node()
        message = self.assertError(await client.deploy(name, wasm), 400, "INVALID_WASM")
        status, body = await client.get(f"/api/v1/agents/{name}")
        self.assertEqual(status, 404, body)
        return message

    async def test_garbage_bytes(self) -> None:
        """
        Bytes that are not a WebAssembly module are refused with 400
        C{INVALID_WASM}, and no agent is created.
        """
        message = await self._refused(b"\x00not a wasm module at all" * 10, "garbage")
        self.assertTrue(any(word in message.lower() for word in ("compile", "magic", "wasm", "module")), message)

    async def test_import_outside_abi(self) -> None:
        """
        A module importing C{wasi_snapshot_preview1.fd_write} is refused
        with 400 C{INVALID_WASM} whose message names the import.
        """
        message = await self._refused(wat_module(testing_agent("bad_import.wat")), "bad-import")
        self.assertTrue("fd_write" in message or "wasi_snapshot_preview1" in message, message)

    async def test_missing_export(self) -> None:
        """
        A module without C{caxton_handle} is refused with 400
        C{INVALID_WASM} whose message names the missing export.
        """
        message = await self._refused(wat_module(testing_agent("no_handle.wat")), "no-handle")
        self.assertIn("caxton_handle", message)


class _RawHTTP(Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = bytearray()
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(bytes(self.received))


async def _raw_http(url: str, request: bytes) -> bytes:
    """
    Send C{request} on a fresh connection to C{url}'s host and port; every
    byte received until the server closes.
    """
    host, port = url.split("//", 1)[1].split(":")
    protocol = _RawHTTP(request)
    factory = ClientFactory.forProtocol(lambda: protocol)
    connector = reactor.connectTCP(host, int(port), factory, timeout=5)
    timer = reactor.callLater(WAIT, connector.disconnect)
    try:
        return await protocol.done
    finally:
        if timer.active():
            timer.cancel()


class OversizedBodyTests(_NodeTestCase):
    """
    Request bodies are capped (SPEC 6).
    """

    async def test_oversized_body(self) -> None:
        """
        With C{CAXTON_HTTP_MAX_BODY=64KiB}, a 1 MiB message is refused with
        413 C{PAYLOAD_TOO_LARGE}, and the node goes on answering.
        """
        _, client = await self.node(env={"CAXTON_HTTP_MAX_BODY": "64KiB"})
        big = json.dumps(
            {"performative": "inform", "sender": "client:a", "receiver": "client:b", "content": "x" * 1024**2}
        ).encode("ascii")
        try:
            response: Optional[tuple] = await client.post("/api/v1/messages", raw=big)
        except Exception:
            # The node closes the connection right after its 413, while the
            # client may still be writing the body: then the client never
            # sees the answer.  Ask again the way a careful client would,
            # headers first, and read what the node says.
            response = None
        if response is not None:
            self.assertIn("65536", self.assertError(response, 413, "PAYLOAD_TOO_LARGE"))
        raw = await _raw_http(
            client.url,
            b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (len(big),),
        )
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 413"), raw[:300])
        self.assertEqual(json.loads(body)["error"]["code"], "PAYLOAD_TOO_LARGE")
        # unharmed: small messages still go through
        self.assertEqual((await client.get("/health"))[0], 200)
        await self.send(client, performative="inform", sender="client:a", receiver="client:b", content="small")


class HostileAgentTests(_NodeTestCase):
    """
    A hostile agent costs only its own budget (SPEC 3.2).
    """

    async def test_infinite_loop(self) -> None:
        """
        An agent looping forever is stopped by its 500ms wall-clock limit:
        its sender gets C{failure} C{AGENT_FAILED} mentioning the
        wall-clock limit, and C{/health} answers while the loop runs
        (before that failure arrives).
        """
        _, client = await self.node()
        await self.deploy(client, "spin", wat_module(testing_agent("spin.wat")), limits={"wall_clock": "500ms"})
        sent = await self.send(client, performative="request", sender="client:s", receiver="spin", content={})
        answered_while_spinning = 0
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            status, body = await client.get("/health")
            latencies.append(time.monotonic() - started)
            self.assertEqual((status, body), (200, {"status": "ok"}))
            status, box = await client.get("/api/v1/mailboxes/client:s")
            self.assertEqual(status, 200, box)
            if box["messages"]:
                break
            answered_while_spinning += 1
        self.assertGreaterEqual(
            answered_while_spinning, 1,
            f"/health never answered before the spinning message failed (latencies {latencies})",
        )
        failure, _ = await self.mailbox_until(client, "client:s", _from_node("failure"))
        self.assertEqual(failure["content"]["reason"], "AGENT_FAILED")
        self.assertEqual(failure["content"]["message_id"], sent["message_id"])
        self.assertIn("wall", failure["content"]["message"].lower())
        view = await self.agent(client, "spin")
        self.assertEqual((view["status"], view["counters"]["traps"]), ("running", 1))

    async def test_memory_bomb(self) -> None:
        """
        An agent growing memory past its 1 MiB cap fails only the message
        it handles: each of two messages gets C{failure} C{AGENT_FAILED},
        each runs on a fresh instance (two traps counted, the agent still
        C{running}), and another agent keeps answering.
        """
        _, client = await self.node()
        await self.deploy(client, "echo", _echo())
        await self.deploy(client, "membomb", wat_module(testing_agent("membomb.wat")), limits={"memory": "1MiB"})
        first = await self.send(client, performative="request", sender="client:m", receiver="membomb", content=1)
        second = await self.send(client, performative="request", sender="client:m", receiver="membomb", content=2)
        failures: Dict[str, Dict[str, Any]] = {}

        def both(m: Dict[str, Any]) -> bool:
            if _from_node("failure")(m):
                failures[m["content"]["message_id"]] = m
            return len(failures) == 2

        await self.mailbox_until(client, "client:m", both)
        self.assertEqual(sorted(failures), sorted([first["message_id"], second["message_id"]]))
        for failure in failures.values():
            self.assertEqual(failure["content"]["reason"], "AGENT_FAILED", failure)
        view = await self.agent(client, "membomb")
        self.assertEqual(view["status"], "running", view)
        self.assertEqual((view["counters"]["traps"], view["counters"]["failed"]), (2, 2), view)
        self.assertLessEqual(view["limits"]["memory"], 1024**2)
        self.assertEqual((await client.get("/health"))[0], 200)
        status, body = await client.post("/api/v1/agents/echo/invoke", {"content": "still here", "timeout": "5s"})
        self.assertEqual(status, 200, body)
        self.assertEqual((body["reply"]["performative"], body["reply"]["content"]["content"]), ("inform", "still here"))

    async def test_malformed_send(self) -> None:
        """
        An agent that sends malformed JSON receives C{not-understood} from
        the node (recorded in the conversation it was handling), and is
        not failed for it.
        """
        _, client = await self.node()
        await self.deploy(client, "badsend", wat_module(testing_agent("badsend.wat")))
        sent = await self.send(
            client, performative="request", sender="client:b", receiver="badsend",
            conversation_id="bad-1", content={},
        )
        messages = await self.conversation_until(
            client, "bad-1", lambda ms: any(_from_node("not-understood")(m) for m in ms), after=sent["message_id"]
        )
        refusal = [m for m in messages if _from_node("not-understood")(m)][0]
        self.assertEqual(_names(refusal["receiver"]), ["badsend"])
        self.assertEqual(refusal["content"]["reason"], "INVALID_MESSAGE")
        view = await self.agent(client, "badsend")
        self.assertEqual(view["status"], "running", view)
        self.assertEqual(view["counters"]["failed"], 0, view)
        self.assertEqual(view["counters"]["traps"], 0, view)
        # the requester got no failure: the agent handled its message
        status, box = await client.get("/api/v1/mailboxes/client:b")
        self.assertEqual((status, box["messages"]), (200, []))


class RestartTests(_NodeTestCase):
    """
    State survives a graceful restart (SPEC 2, 3.1, 4.3).
    """

    async def test_graceful_restart(self) -> None:
        """
        After SIGTERM (exit code 0) and a new process on the same data
        dir, both agents are listed C{running} with their versions (1, and
        2 for the updated one), the earlier conversation is still listed
        and readable, and both agents answer again, the updated one with
        its new module.
        """
        data_dir = os.path.abspath(self.mktemp())
        node, client = await self.node(data_dir)
        await self.deploy(client, "echo", _echo())
        # "clock" starts as an echo agent (version 1) and is updated to the
        # clock module (version 2), so its answers show which one runs.
        await self.deploy(client, "clock", _echo())
        status, body = await client.request(
            "PUT", "/api/v1/agents/clock",
            {"wasm": base64.b64encode(wat_module(example("wat", "clock.wat"))).decode("ascii")},
        )
        self.assertEqual(status, 200, body)
        self.assertEqual(body["version"], 2)
        sent = await self.send(
            client, performative="request", sender="client:alice", receiver="echo",
            conversation_id="before-restart", content={"n": 1},
        )
        await self.conversation_until(
            client, "before-restart", lambda ms: any(_perf("inform", "echo")(m) for m in ms)
        )
        self.assertEqual(await node.stop(signal.SIGTERM), 0, node.output)

        _, client = await self.node(data_dir)
        status, body = await client.get("/api/v1/agents")
        self.assertEqual(status, 200, body)
        self.assertEqual(
            sorted((a["name"], a["status"], a["version"]) for a in body["agents"]),
            [("clock", "running", 2), ("echo", "running", 1)],
        )
        status, body = await client.get("/api/v1/conversations")
        self.assertEqual(status, 200, body)
        self.assertIn("before-restart", [c["conversation_id"] for c in body["conversations"]])
        status, body = await client.get("/api/v1/conversations/before-restart")
        self.assertEqual(status, 200, body)
        messages = [item["message"] for item in body["messages"]]
        self.assertEqual([m["performative"] for m in messages], ["request", "inform"])
        self.assertEqual(messages[0]["message_id"], sent["message_id"])
        self.assertEqual(messages[1]["content"]["content"], {"n": 1})

        status, body = await client.post("/api/v1/agents/echo/invoke", {"content": {"n": 2}, "timeout": "5s"})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["reply"]["content"]["content"], {"n": 2})
        status, body = await client.post("/api/v1/agents/clock/invoke", {"content": {}, "timeout": "5s"})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["reply"]["performative"], "inform")
        self.assertIsInstance(body["reply"]["content"]["now_ms"], int)


class LifecycleTests(_NodeTestCase):
    """
    Stop, start and remove through the API (SPEC 3.1, 6).
    """

    async def test_stop_start_remove(self) -> None:
        """
        A stopped agent keeps messages queued (sent ones and an
        C{invoke} waiting on it) and answers them once started; a
        removed agent is gone (404, its name free again) and messages to
        it fail C{AGENT_NOT_FOUND}.
        """
        _, client = await self.node()
        await self.deploy(client, "echo", _echo())
        self.assertError(await client.deploy("echo", _echo()), 409, "AGENT_ALREADY_EXISTS")

        status, body = await client.post("/api/v1/agents/echo/stop")
        self.assertEqual((status, body["status"]), (200, "stopped"), body)
        status, body = await client.get("/api/v1/agents?status=stopped")
        self.assertEqual([a["name"] for a in body["agents"]], ["echo"])

        queued = await self.send(
            client, performative="request", sender="client:q", receiver="echo",
            conversation_id="queued-1", content={"n": 1},
        )
        invoked = ensureDeferred(
            client.post("/api/v1/agents/echo/invoke", {"content": {"n": 2}, "timeout": "10s"})
        )
        # Nothing is answered while stopped (a bounded long poll).
        status, body = await client.get(f"/api/v1/conversations/queued-1?after={queued['message_id']}&wait=1s")
        self.assertEqual((status, body["messages"]), (200, []))
        self.assertFalse(invoked.called)
        self.assertEqual((await self.agent(client, "echo"))["usage"]["queue_depth"], 2)

        status, body = await client.post("/api/v1/agents/echo/start")
        self.assertEqual((status, body["status"]), (200, "running"), body)
        status, body = await invoked
        self.assertEqual(status, 200, body)
        self.assertEqual((body["reply"]["performative"], body["reply"]["content"]["content"]), ("inform", {"n": 2}))
        await self.conversation_until(
            client, "queued-1", lambda ms: any(_perf("inform", "echo")(m) for m in ms), after=queued["message_id"]
        )

        status, body = await client.request("DELETE", "/api/v1/agents/echo")
        self.assertEqual(status, 204, body)
        self.assertError(await client.get("/api/v1/agents/echo"), 404, "AGENT_NOT_FOUND")
        self.assertError(await client.post("/api/v1/agents/echo/start"), 404, "AGENT_NOT_FOUND")
        status, body = await client.get("/api/v1/agents")
        self.assertEqual(body["agents"], [])
        sent = await self.send(client, performative="request", sender="client:r", receiver="echo", content={})
        failure, _ = await self.mailbox_until(client, "client:r", _from_node("failure"))
        self.assertEqual(
            (failure["content"]["reason"], failure["content"]["message_id"]), ("AGENT_NOT_FOUND", sent["message_id"])
        )
        await self.deploy(client, "echo", _echo())


class StartFailureTests(unittest.TestCase):
    """
    A node that cannot start says why and exits non-zero.
    """

    timeout = 90

    async def test_port_in_use(self) -> None:
        """
        With its API port already taken, the node logs that it failed to
        start and exits with status 1, rather than running without an API
        or exiting 0.
        """
        import sys

        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory, ProcessProtocol

        taken = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port

        class Ended(ProcessProtocol):
            def __init__(self) -> None:
                self.output = b""
                self.ended: Deferred = Deferred()

            def outReceived(self, data: bytes) -> None:
                self.output += data

            errReceived = outReceived

            def processEnded(self, reason: Any) -> None:
                self.ended.callback(reason.value)

        ended = Ended()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        process = reactor.spawnProcess(
            ended,
            sys.executable,
            [sys.executable, "-m", "twisted", "caxton", "--data-dir", os.path.abspath(self.mktemp()),
             "--api", f"tcp:{port}:interface=127.0.0.1"],
            env=env,
        )
        timer = reactor.callLater(60, process.signalProcess, "KILL")
        reason = await ended.ended
        if timer.active():
            timer.cancel()
        self.assertEqual(getattr(reason, "exitCode", None), 1, ended.output)
        self.assertIn(b"caxton node failed to start", ended.output)
