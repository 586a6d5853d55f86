"""
Tests for the REST API, L{caxton.api.app}, through C{StubTreq}: real
requests against the real app on a deterministic L{LocalNode}.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from caxton.api.app import CaxtonAPI
from caxton.testing import LocalNode
from tests.wasmbuild import example, testing_agent, wat_module

BASE = "http://node"


def b64(wasm: bytes) -> str:
    return base64.b64encode(wasm).decode("ascii")


class APITestCase(SynchronousTestCase):
    """
    A node and its API behind C{StubTreq}.
    """

    def setUp(self) -> None:
        self.node = LocalNode(self.mktemp(), time.time())
        self.successResultOf(self.node.open())
        self.addCleanup(lambda: self.successResultOf(self.node.store.close()))
        self.api = CaxtonAPI(self.node.clock, self.node.agents, self.node.router, self.node.store)
        self.http = StubTreq(self.api.resource())

    def call(self, method: str, path: str, body: Any = None, raw: bytes = None, **kwargs: Any) -> tuple:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        d = self.http.request(method, BASE + path, data=data, **kwargs)
        for _ in range(100):
            self.node.pump()
            self.http.flush()
            if d.called:
                break
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        return response.code, (json.loads(content) if content else None)

    def deploy_echo(self, name: str = "echo") -> dict:
        code, body = self.call(
            "POST", "/api/v1/agents", {"name": name, "wasm": b64(wat_module(example("wat", "echo.wat")))}
        )
        self.assertEqual(code, 201, body)
        return body


class HealthTests(APITestCase):
    """
    Liveness and readiness.
    """

    def test_health(self) -> None:
        """
        /health answers 200 ok.
        """
        self.assertEqual(self.call("GET", "/health"), (200, {"status": "ok"}))

    def test_ready_follows_node(self) -> None:
        """
        /ready answers 503 until the node says it is ready.
        """
        ready = [False]
        api = CaxtonAPI(self.node.clock, self.node.agents, self.node.router, self.node.store, ready=lambda: ready[0])
        self.http = StubTreq(api.resource())
        self.assertEqual(self.call("GET", "/ready")[0], 503)
        ready[0] = True
        self.assertEqual(self.call("GET", "/ready")[0], 200)


class AgentRouteTests(APITestCase):
    """
    Deploying and managing agents.
    """

    def test_deploy_json(self) -> None:
        """
        A JSON deploy with base64 answers 201 with the agent's view.
        """
        view = self.deploy_echo()
        self.assertEqual((view["name"], view["version"], view["status"]), ("echo", 1, "running"))
        self.assertEqual(view["limits"]["memory"], 16 * 1024 * 1024)

    def test_deploy_multipart(self) -> None:
        """
        A multipart deploy (wasm file + spec JSON) works like the JSON one.
        """
        boundary = b"caxton-test-boundary"
        wasm = wat_module(example("wat", "echo.wat"))
        spec = json.dumps({"name": "echo", "capabilities": ["echo"]}).encode()
        body = b"".join(
            [
                b"--" + boundary + b"\r\n",
                b'Content-Disposition: form-data; name="wasm"; filename="echo.wasm"\r\n',
                b"Content-Type: application/wasm\r\n\r\n",
                wasm,
                b"\r\n--" + boundary + b"\r\n",
                b'Content-Disposition: form-data; name="spec"\r\n\r\n',
                spec,
                b"\r\n--" + boundary + b"--\r\n",
            ]
        )
        d = self.http.request(
            "POST",
            BASE + "/api/v1/agents",
            data=body,
            headers={b"content-type": [b"multipart/form-data; boundary=" + boundary]},
        )
        self.node.pump()
        self.http.flush()
        response = self.successResultOf(d)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(response.code, 201, body)
        self.assertEqual(body["capabilities"], ["echo"])

    def test_invalid_wasm(self) -> None:
        """
        Garbage, a foreign import and a missing export are each refused
        400 INVALID_WASM with the reason.
        """
        cases = [
            (b"not wasm at all", "not a WebAssembly module"),
            (wat_module(testing_agent("bad_import.wat")), "wasi_snapshot_preview1"),
            (wat_module(testing_agent("no_handle.wat")), "caxton_handle"),
        ]
        for wasm, reason in cases:
            code, body = self.call("POST", "/api/v1/agents", {"name": "x", "wasm": b64(wasm)})
            self.assertEqual((code, body["error"]["code"]), (400, "INVALID_WASM"))
            self.assertIn(reason, body["error"]["message"])

    def test_bad_requests(self) -> None:
        """
        Bad JSON, bad base64, a bad name, an unknown spec field and a taken
        name each get their error code.
        """
        wasm = b64(wat_module(example("wat", "echo.wat")))
        self.deploy_echo()
        cases = [
            (None, b"{oops", "INVALID_REQUEST", 400),
            ({"name": "x", "wasm": "%%%"}, None, "INVALID_REQUEST", 400),
            ({"name": "Not Valid", "wasm": wasm}, None, "INVALID_REQUEST", 400),
            ({"name": "x", "wasm": wasm, "colour": 1}, None, "INVALID_REQUEST", 400),
            ({"name": "x", "wasm": wasm, "limits": {"wall_clock": "soon"}}, None, "INVALID_REQUEST", 400),
            ({"name": "echo", "wasm": wasm}, None, "AGENT_ALREADY_EXISTS", 409),
        ]
        for body, raw, error, status in cases:
            code, answer = self.call("POST", "/api/v1/agents", body, raw=raw)
            self.assertEqual((code, answer["error"]["code"]), (status, error), (body, answer))

    def test_lifecycle(self) -> None:
        """
        Show, list with filters, stop, start, update (version 2) and remove.
        """
        self.deploy_echo()
        self.assertEqual(self.call("GET", "/api/v1/agents/echo")[1]["name"], "echo")
        self.assertEqual(self.call("POST", "/api/v1/agents/echo/stop")[1]["status"], "stopped")
        listed = self.call("GET", "/api/v1/agents?status=stopped")[1]["agents"]
        self.assertEqual([a["name"] for a in listed], ["echo"])
        self.assertEqual(self.call("POST", "/api/v1/agents/echo/start")[1]["status"], "running")
        code, view = self.call("PUT", "/api/v1/agents/echo", {"capabilities": ["talk"]})
        self.assertEqual((code, view["version"], view["capabilities"]), (200, 2, ["talk"]))
        self.assertEqual(self.call("DELETE", "/api/v1/agents/echo")[0], 204)
        self.assertEqual(self.call("GET", "/api/v1/agents/echo")[1]["error"]["code"], "AGENT_NOT_FOUND")

    def test_list_pages(self) -> None:
        """
        limit and cursor page through agents by name.
        """
        for name in ("a1", "a2", "a3"):
            self.deploy_echo(name)
        first = self.call("GET", "/api/v1/agents?limit=2")[1]
        self.assertEqual([a["name"] for a in first["agents"]], ["a1", "a2"])
        second = self.call("GET", f"/api/v1/agents?limit=2&cursor={first['next_cursor']}")[1]
        self.assertEqual([a["name"] for a in second["agents"]], ["a3"])
        self.assertIsNone(second["next_cursor"])


class MessageRouteTests(APITestCase):
    """
    Sending messages, conversations, mailboxes, dead letters and invoke.
    """

    def test_send_and_long_poll(self) -> None:
        """
        202 with ids; the conversation, read after the request's message id,
        holds the inform.
        """
        self.deploy_echo()
        code, ids = self.call(
            "POST",
            "/api/v1/messages",
            {"performative": "request", "sender": "client:alice", "receiver": "echo", "content": 1},
        )
        self.assertEqual(code, 202)
        code, body = self.call(
            "GET", f"/api/v1/conversations/{ids['conversation_id']}?after={ids['message_id']}&wait=1s"
        )
        self.assertEqual(code, 200)
        self.assertEqual([m["message"]["performative"] for m in body["messages"]], ["inform"])

    def test_long_poll_waits(self) -> None:
        """
        A long poll with nothing new waits, then answers with what arrives.
        """
        self.call("POST", "/api/v1/messages", {"performative": "inform", "sender": "client:a", "receiver": "client:b", "conversation_id": "c9"})
        d = self.http.get(BASE + "/api/v1/mailboxes/client:b?after=1&wait=30s")
        self.http.flush()
        self.assertNoResult(d)
        self.call("POST", "/api/v1/messages", {"performative": "inform", "sender": "client:a", "receiver": "client:b", "conversation_id": "c9", "content": "second"})
        self.http.flush()
        body = json.loads(self.successResultOf(self.successResultOf(d).content()))
        self.assertEqual([m["message"]["content"] for m in body["messages"]], ["second"])

    def test_long_poll_times_out(self) -> None:
        """
        A long poll with nothing new answers empty when its wait passes.
        """
        d = self.http.get(BASE + "/api/v1/mailboxes/client:nobody?wait=2s")
        self.http.flush()
        self.assertNoResult(d)
        self.node.clock.advance(2)
        self.http.flush()
        body = json.loads(self.successResultOf(self.successResultOf(d).content()))
        self.assertEqual(body["messages"], [])

    def test_invalid_messages(self) -> None:
        """
        Malformed JSON, an unknown performative, no receiver and an agent's
        name as sender are refused 400 INVALID_MESSAGE.
        """
        cases = [
            (None, b"{nope"),
            ({"performative": "shout", "receiver": "x"}, None),
            ({"performative": "inform"}, None),
            ({"performative": "inform", "receiver": "x", "sender": "echo"}, None),
            (None, b'{"performative": "inform", "receiver": "x", "content": NaN}'),
            (None, b'{"performative": "inform", "receiver": "x", "content": 1e400}'),
        ]
        for body, raw in cases:
            code, answer = self.call("POST", "/api/v1/messages", body, raw=raw)
            self.assertEqual((code, answer["error"]["code"]), (400, "INVALID_MESSAGE"), answer)

    def test_unknown_agent_dead_letter(self) -> None:
        """
        A message to an unknown agent is accepted, then fails: the failure is
        in the client's mailbox and a dead letter is listed.
        """
        self.call("POST", "/api/v1/messages", {"performative": "request", "sender": "client:alice", "receiver": "ghost"})
        mailbox = self.call("GET", "/api/v1/mailboxes/client:alice")[1]["messages"]
        self.assertEqual(mailbox[0]["message"]["content"]["reason"], "AGENT_NOT_FOUND")
        letters = self.call("GET", "/api/v1/dead-letters")[1]["dead_letters"]
        self.assertEqual((letters[0]["reason"], letters[0]["receiver"]), ("AGENT_NOT_FOUND", "ghost"))

    def test_invoke(self) -> None:
        """
        invoke sends a request and answers with the reply in one call.
        """
        self.deploy_echo()
        code, body = self.call("POST", "/api/v1/agents/echo/invoke", {"content": {"q": 1}})
        self.assertEqual(code, 200, body)
        self.assertEqual(body["reply"]["performative"], "inform")
        self.assertEqual(body["reply"]["content"]["content"], {"q": 1})

    def test_invoke_timeout(self) -> None:
        """
        invoke on an agent that never answers returns the node's failure
        TIMEOUT once the timeout passes.
        """
        wasm = b64(wat_module(testing_agent("silent.wat")))
        self.assertEqual(self.call("POST", "/api/v1/agents", {"name": "silent", "wasm": wasm})[0], 201)
        d = self.http.request("POST", BASE + "/api/v1/agents/silent/invoke", data=b'{"timeout": "3s"}')
        self.node.pump()
        self.http.flush()
        self.assertNoResult(d)
        self.node.clock.advance(3.5)
        self.http.flush()
        body = json.loads(self.successResultOf(self.successResultOf(d).content()))
        self.assertEqual(body["reply"]["content"]["reason"], "TIMEOUT")

    def test_invoke_unknown(self) -> None:
        """
        invoke on an unknown agent is 404 AGENT_NOT_FOUND.
        """
        code, body = self.call("POST", "/api/v1/agents/ghost/invoke", {})
        self.assertEqual((code, body["error"]["code"]), (404, "AGENT_NOT_FOUND"))

    def test_conversations_list(self) -> None:
        """
        Conversations are listed newest first and filter by participant.
        """
        self.call("POST", "/api/v1/messages", {"performative": "inform", "sender": "client:a", "receiver": "client:b", "conversation_id": "one"})
        self.node.clock.advance(1)
        self.call("POST", "/api/v1/messages", {"performative": "inform", "sender": "client:a", "receiver": "client:c", "conversation_id": "two"})
        listed = self.call("GET", "/api/v1/conversations")[1]["conversations"]
        self.assertEqual([c["conversation_id"] for c in listed], ["two", "one"])
        only = self.call("GET", "/api/v1/conversations?participant=client:b")[1]["conversations"]
        self.assertEqual([c["conversation_id"] for c in only], ["one"])
        self.assertEqual(self.call("GET", "/api/v1/conversations/zzz")[0], 404)

    def test_unknown_route(self) -> None:
        """
        Unknown routes and methods answer in the error shape.
        """
        code, body = self.call("GET", "/api/v1/nothing")
        self.assertEqual((code, body["error"]["code"]), (404, "INVALID_REQUEST"))
        code, body = self.call("PATCH", "/api/v1/agents")
        self.assertEqual(code, 405)
        response = self.successResultOf(self.http.request("PATCH", BASE + "/api/v1/agents"))
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD, POST"])


class InvokeRuleTests(APITestCase):
    """
    invoke only opens conversations the node can time out.
    """

    def test_invoke_refuses_untracked(self) -> None:
        """
        An invoke with a performative that opens no tracked protocol, or a
        timeout past the longest wait, is refused rather than left hanging.
        """
        self.deploy_echo()
        code, body = self.call("POST", "/api/v1/agents/echo/invoke", {"performative": "inform"})
        self.assertEqual((code, body["error"]["code"]), (400, "INVALID_MESSAGE"))
        code, body = self.call("POST", "/api/v1/agents/echo/invoke", {"timeout": "1h"})
        self.assertEqual((code, body["error"]["code"]), (400, "INVALID_REQUEST"))

    def test_invoke_query(self) -> None:
        """
        query-ref opens fipa-query and is answered like a request.
        """
        self.deploy_echo()
        code, body = self.call("POST", "/api/v1/agents/echo/invoke", {"performative": "query-ref"})
        self.assertEqual(code, 200)
        self.assertEqual(body["reply"]["protocol"], "fipa-query")


class ReviewAPITests(APITestCase):
    """
    Hostile or unlucky requests leave nothing behind.
    """

    def test_refused_invoke_leaves_no_waiter(self) -> None:
        """
        An invoke refused at send (a non-client sender) leaves no reply
        waiter behind.
        """
        self.deploy_echo()
        code, _ = self.call("POST", "/api/v1/agents/echo/invoke", {"sender": "echo"})
        self.assertEqual(code, 400)
        self.assertNotIn(("echo", None), self.node.router._replies)
        self.assertEqual(len(self.node.router._replies._waiting), 0)

    def test_invokes_have_their_own_senders(self) -> None:
        """
        Two invokes without a sender reply to two different client names.
        """
        self.deploy_echo()
        first = self.call("POST", "/api/v1/agents/echo/invoke", {})[1]["reply"]["receiver"]
        second = self.call("POST", "/api/v1/agents/echo/invoke", {})[1]["reply"]["receiver"]
        self.assertNotEqual(first, second)

    def multipart(self, method: str, path: str, fields: dict) -> tuple:
        boundary = b"b0undary"
        chunks = []
        for name, value in fields.items():
            chunks += [b"--" + boundary + b"\r\n", b'Content-Disposition: form-data; name="%s"\r\n\r\n' % name.encode(), value, b"\r\n"]
        body = b"".join(chunks) + b"--" + boundary + b"--\r\n"
        return self.call(method, path, raw=body, headers={b"content-type": [b"multipart/form-data; boundary=" + boundary]})

    def test_multipart_update(self) -> None:
        """
        PUT takes a multipart body too: a new module bumps the version.
        """
        self.deploy_echo()
        code, view = self.multipart("PUT", "/api/v1/agents/echo", {"wasm": wat_module(testing_agent("silent.wat"))})
        self.assertEqual((code, view["version"]), (200, 2), view)

    def test_multipart_bad_spec(self) -> None:
        """
        A spec part that is not strict JSON is 400, not 500.
        """
        wasm = wat_module(example("wat", "echo.wat"))
        for spec in (b'{"name": "x", "config": NaN}', b"[" * 100000):
            code, body = self.multipart("POST", "/api/v1/agents", {"wasm": wasm, "spec": spec})
            self.assertEqual((code, body["error"]["code"]), (400, "INVALID_REQUEST"))


class DeployingTests(APITestCase):
    """
    A deploy in progress is visible.
    """

    def test_deploying_state(self) -> None:
        """
        While its instance is still starting, a deploy shows as deploying
        in show and list; then as running.
        """
        body = json.dumps({"name": "slow", "wasm": b64(wat_module(example("wat", "echo.wat")))}).encode()
        d = self.http.request("POST", BASE + "/api/v1/agents", data=body)
        self.http.flush()
        self.assertNoResult(d)
        shown = json.loads(self.successResultOf(self.successResultOf(self.http.get(BASE + "/api/v1/agents/slow")).content()))
        self.assertEqual(shown["status"], "deploying")
        listed = json.loads(self.successResultOf(self.successResultOf(self.http.get(BASE + "/api/v1/agents?status=deploying")).content()))
        self.assertEqual([a["name"] for a in listed["agents"]], ["slow"])
        self.node.pump()
        self.http.flush()
        self.assertEqual(self.successResultOf(d).code, 201)
        self.assertEqual(self.call("GET", "/api/v1/agents/slow")[1]["status"], "running")


class ConversationPagingTests(APITestCase):
    """
    Paging through conversations skips none.
    """

    def test_ties_at_a_page_edge(self) -> None:
        """
        Five conversations updated at the same instant come back across
        pages of two, each once, using next_before and next_before_id.
        """
        for i in range(5):
            self.call("POST", "/api/v1/messages", {"performative": "inform", "sender": "client:a", "receiver": "client:b", "conversation_id": f"same-{i}"})
        seen, query = [], "/api/v1/conversations?limit=2"
        for _ in range(5):
            body = self.call("GET", query)[1]
            seen += [c["conversation_id"] for c in body["conversations"]]
            if body["next_before"] is None:
                break
            query = f"/api/v1/conversations?limit=2&before={body['next_before']!r}&before_id={body['next_before_id']}"
        self.assertEqual(sorted(seen), [f"same-{i}" for i in range(5)])
        self.assertEqual(len(seen), 5)
