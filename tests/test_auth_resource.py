"""
Tests for L{caxton.auth.resource}: every rule of the door in front of the
API, with C{DummyRequest}s and a L{Clock}, then the key and audit routes
through C{StubTreq} against the real app.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from caxton.api.app import CaxtonAPI
from caxton.auth.audit import AuditLog
from caxton.auth.keys import KeyFile, KeyStore, format_token, parse_token
from caxton.auth.ratelimit import REFUSED_BURST, RateLimiter
from caxton.auth.resource import (
    LOOPBACK,
    PROTECTED_MESSAGE,
    AuthResource,
    Caller,
    Gatekeeper,
    bearer,
    path_info,
)
from caxton.auth.threads import InlineExecutor
from caxton.api.routes import Role
from caxton.testing import LocalNode

LOCAL = IPv4Address("TCP", "127.0.0.1", 50000)
REMOTE = IPv4Address("TCP", "10.0.0.1", 50000)
OTHER = IPv4Address("TCP", "10.0.0.2", 50000)


class _Request(DummyRequest):
    """
    A C{DummyRequest} with what the resource reads of a real request:
    C{path}, C{code}, and a client.
    """

    def __init__(self, method: bytes, path: bytes, client: Any = LOCAL, token: Optional[str] = None) -> None:
        super().__init__([segment for segment in path[1:].split(b"/")])
        self.client = client
        self.method = method
        self.path = path
        if token is not None:
            self.requestHeaders.addRawHeader(b"authorization", b"Bearer " + token.encode("ascii"))

    @property
    def code(self) -> Optional[int]:
        return self.responseCode

    def header(self, name: str) -> Optional[str]:
        values = self.responseHeaders.getRawHeaders(name)
        return values[0] if values else None


class _Inner(Resource):
    """
    Stands for the API: records what reached it, answers later.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: List[Any] = []

    def render(self, request: Any) -> Any:
        self.seen.append(request)
        return NOT_DONE_YET


class _Door:
    """
    A gatekeeper and resource over a key file and audit log in a temporary
    directory, on a L{Clock}.
    """

    def __init__(self, directory: str, trust_loopback: bool = True, rate: float = 1.0, burst: int = 3) -> None:
        self.clock = Clock()
        self.clock.advance(10_000)
        self.file = KeyFile.in_data_dir(directory)
        self.keys = KeyStore(self.file, self.clock, InlineExecutor())
        self.audit = AuditLog(os.path.join(directory, "audit.log"), 10**6, self.clock, InlineExecutor())
        self.limiter = RateLimiter(self.clock, rate, burst)
        self.refused = RateLimiter(self.clock, 1.0, REFUSED_BURST)
        self.gate = Gatekeeper(
            CaxtonAPI.app.url_map, self.keys, self.limiter, self.refused, self.audit, trust_loopback
        )
        self.inner = _Inner()
        self.resource = AuthResource(self.inner, self.gate, self.audit)

    def key(self, role: str, name: Optional[str] = None) -> str:
        _, token = self.file.create(name or role, role, 1.0)
        self.keys.reload(force=True)
        return token

    def call(self, method: bytes, path: bytes, client: Any = LOCAL, token: Optional[str] = None,
             headers: Optional[Dict[bytes, bytes]] = None) -> _Request:
        request = _Request(method, path, client, token)
        for name, value in (headers or {}).items():
            request.requestHeaders.addRawHeader(name, value)
        result = self.resource.render(request)
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()
        return request

    def answer(self, request: _Request, code: int) -> None:
        """
        The API answers C{request} with C{code}.
        """
        request.setResponseCode(code)
        request.finish()

    def audited(self) -> List[Dict[str, Any]]:
        path = self.audit.path
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f]


def _error(request: _Request) -> Dict[str, Any]:
    return json.loads(b"".join(request.written))["error"]


class PathTests(SynchronousTestCase):
    def test_path_info_decodes_like_twisted_web(self) -> None:
        """
        Segments are percent-decoded one by one, as C{request.postpath}
        has them and as Klein joins them.
        """
        self.assertEqual(path_info(b"/api/v1/%6beys"), b"/api/v1/keys")
        self.assertEqual(path_info(b"/api/v1/agents/a%2Fb"), b"/api/v1/agents/a/b")
        self.assertEqual(path_info(b"/"), b"/")
        self.assertEqual(path_info(b"/health"), b"/health")

    def test_bearer(self) -> None:
        self.assertEqual(bearer([]), (None, None))
        self.assertEqual(bearer([b"Bearer abc"]), ("abc", None))
        self.assertEqual(bearer([b"bearer   abc  "]), ("abc", None))
        self.assertEqual(bearer([b"Basic abc"])[1], "Authorization is not a Bearer token")
        self.assertEqual(bearer([b"Bearer "])[1], "empty Bearer token")
        self.assertEqual(bearer([b"Bearer a", b"Bearer b"])[1], "more than one Authorization header")
        self.assertEqual(bearer([b"Bearer \xff"])[1], "Authorization header is not ASCII")


class ProtectedModeTests(SynchronousTestCase):
    """
    No active key: only the node's own host.
    """

    def setUp(self) -> None:
        self.door = _Door(self.mktemp())

    def test_provides_iresource(self) -> None:
        verifyObject(IResource, self.door.resource)

    def test_local_clients_may_do_anything(self) -> None:
        """
        Loopback (any of 127/8, ::1, IPv4-mapped) and Unix-socket clients
        reach every route, as C{loopback}, and are not rate limited.
        """
        for client in (
            LOCAL,
            IPv4Address("TCP", "127.8.9.10", 1),
            IPv6Address("TCP", "::1", 1),
            IPv6Address("TCP", "::ffff:127.0.0.1", 1),
            UNIXAddress(b"/run/caxton.sock"),
        ):
            for _ in range(5):
                request = self.door.call(b"POST", b"/api/v1/cluster/leave", client)
                self.assertIs(request.caxton_key, LOOPBACK)
                self.assertIsNone(request.header("x-ratelimit-limit"))
        self.assertEqual(len(self.door.inner.seen), 25)

    def test_remote_client_refused(self) -> None:
        """
        A client from 10.0.0.1 gets 403 FORBIDDEN telling the operator to
        make a key, whatever X-Forwarded-For claims; it is audited.
        """
        request = self.door.call(
            b"GET", b"/api/v1/agents", REMOTE, headers={b"x-forwarded-for": b"127.0.0.1"}
        )
        self.assertEqual(request.responseCode, 403)
        self.assertEqual(_error(request), {"code": "FORBIDDEN", "message": PROTECTED_MESSAGE})
        self.assertIn("caxton keys create", PROTECTED_MESSAGE)
        self.assertEqual(self.door.inner.seen, [])
        [line] = self.door.audited()
        self.assertEqual(
            (line["event"], line["client"], line["route"], line["status"]),
            ("refused", "10.0.0.1", "/api/v1/agents", 403),
        )

    def test_remote_may_use_public_routes(self) -> None:
        request = self.door.call(b"GET", b"/health", REMOTE)
        self.assertIsNone(request.responseCode)
        self.assertEqual(len(self.door.inner.seen), 1)
        self.assertEqual(self.door.audited(), [])

    def test_behind_local_proxy(self) -> None:
        """
        On an onion endpoint loopback means Tor, not the node's host: even
        127.0.0.1 is refused in protected mode.
        """
        door = _Door(self.mktemp(), trust_loopback=False)
        self.assertEqual(door.call(b"GET", b"/api/v1/agents", LOCAL).responseCode, 403)
        self.assertEqual(door.inner.seen, [])

    def test_change_audited_as_loopback(self) -> None:
        """
        A change by a local client is audited once answered, as
        C{loopback}, with its route template and arguments.
        """
        request = self.door.call(b"DELETE", b"/api/v1/agents/echo")
        self.assertEqual(self.door.audited(), [])
        self.door.answer(request, 204)
        [line] = self.door.audited()
        self.assertEqual(line["key_id"], "loopback")
        self.assertEqual(line["route"], "/api/v1/agents/<name>")
        self.assertEqual(line["arguments"], {"name": "echo"})
        self.assertEqual((line["method"], line["status"], line["event"]), ("DELETE", 204, "change"))

    def test_reads_not_audited(self) -> None:
        self.door.answer(self.door.call(b"GET", b"/api/v1/agents"), 200)
        self.assertEqual(self.door.audited(), [])

    def test_unknown_route_passes(self) -> None:
        """
        A path the app does not route goes through (it answers 404/405).
        """
        self.door.key("admin")
        self.door.call(b"GET", b"/nowhere", REMOTE)
        self.door.call(b"PATCH", b"/api/v1/agents", REMOTE)
        self.assertEqual(len(self.door.inner.seen), 2)


class KeyModeTests(SynchronousTestCase):
    """
    Active keys: a valid Bearer token with a high enough role.
    """

    def setUp(self) -> None:
        self.door = _Door(self.mktemp())
        self.admin = self.door.key("admin")
        self.viewer = self.door.key("viewer")
        self.operator = self.door.key("operator")

    def test_no_token(self) -> None:
        """
        No Authorization header: 401 with C{WWW-Authenticate: Bearer}, also
        from loopback; not audited (no login was tried).
        """
        for client in (LOCAL, REMOTE):
            request = self.door.call(b"GET", b"/api/v1/agents", client)
            self.assertEqual(request.responseCode, 401)
            self.assertEqual(_error(request)["code"], "UNAUTHORIZED")
            self.assertEqual(request.header("www-authenticate"), 'Bearer realm="caxton"')
            self.assertIsNone(request.caxton_key)
        self.assertEqual(self.door.inner.seen, [])
        self.assertEqual(self.door.audited(), [])

    def test_bad_tokens_refused_and_audited(self) -> None:
        """
        Malformed, unknown, wrong-secret and revoked tokens, and non-Bearer
        credentials, all get the same 401; the audit log has each with its
        reason and the id it claimed, and never the token.
        """
        key_id, secret = parse_token(self.viewer)
        wrong = format_token(key_id, "x" * 43)
        unknown = format_token("0123456789ab", secret)
        revoked_token = self.door.key("viewer", "old")
        self.door.file.revoke(parse_token(revoked_token)[0], 2.0)
        self.door.keys.reload(force=True)
        tried = ["garbage", wrong, unknown, revoked_token]
        bodies = []
        for token in tried:
            request = self.door.call(b"GET", b"/api/v1/agents", REMOTE, token)
            self.assertEqual(request.responseCode, 401)
            self.assertIn("invalid_token", request.header("www-authenticate"))
            bodies.append(_error(request))
        basic = self.door.call(b"GET", b"/api/v1/agents", REMOTE, headers={b"authorization": b"Basic eDp5"})
        self.assertEqual(basic.responseCode, 401)
        self.assertEqual(len({json.dumps(b) for b in bodies}), 1)
        self.assertEqual(self.door.inner.seen, [])
        lines = self.door.audited()
        self.assertEqual(
            [(line["reason"], line["key_id"]) for line in lines],
            [
                ("malformed token", None),
                ("wrong secret", key_id),
                ("unknown key", "0123456789ab"),
                ("revoked key", parse_token(revoked_token)[0]),
                ("Authorization is not a Bearer token", None),
            ],
        )
        with open(self.door.audit.path) as f:
            text = f.read()
        for token in tried + [self.viewer]:
            self.assertNotIn(parse_token(token)[1] if parse_token(token) else token, text)

    def test_role_too_low(self) -> None:
        """
        A viewer deploying gets 403 FORBIDDEN (audited, with its key), and
        the rate-limit headers.
        """
        request = self.door.call(b"POST", b"/api/v1/agents", REMOTE, self.viewer)
        self.assertEqual(request.responseCode, 403)
        self.assertEqual(_error(request)["code"], "FORBIDDEN")
        self.assertIn("operator", _error(request)["message"])
        self.assertIsNotNone(request.header("x-ratelimit-remaining"))
        [line] = self.door.audited()
        self.assertEqual((line["event"], line["key_id"], line["key_name"], line["status"]),
                         ("refused", parse_token(self.viewer)[0], "viewer", 403))
        self.assertEqual(self.door.inner.seen, [])

    def test_roles_in_order(self) -> None:
        """
        Each role may call its routes and those below; admin may do all.
        """
        routes = [
            (b"GET", b"/api/v1/agents", Role.VIEWER),
            (b"POST", b"/api/v1/agents/echo/invoke", Role.OPERATOR),
            (b"POST", b"/api/v1/cluster/join", Role.ADMIN),
            (b"GET", b"/api/v1/audit", Role.ADMIN),
        ]
        for token, role in ((self.viewer, Role.VIEWER), (self.operator, Role.OPERATOR), (self.admin, Role.ADMIN)):
            for method, path, needed in routes:
                self.door.clock.advance(10)
                request = self.door.call(method, path, REMOTE, token)
                if role >= needed:
                    self.assertIsNone(request.responseCode, (role, path))
                    self.assertEqual(request.caxton_key.role, role)
                else:
                    self.assertEqual(request.responseCode, 403, (role, path))

    def test_granted(self) -> None:
        """
        A good key reaches the API, named on the request, with the
        C{X-RateLimit-*} headers; its change is audited with its status.
        """
        request = self.door.call(b"POST", b"/api/v1/agents", REMOTE, self.operator)
        key_id = parse_token(self.operator)[0]
        self.assertEqual(request.caxton_key, Caller(key_id, "operator", Role.OPERATOR))
        self.assertEqual(request.header("x-ratelimit-limit"), "3")
        self.assertEqual(request.header("x-ratelimit-remaining"), "2")
        self.assertEqual(request.header("x-ratelimit-reset"), "1")
        request.caxton_audit_detail = {"note": "x"}
        self.door.answer(request, 201)
        [line] = self.door.audited()
        self.assertEqual(
            (line["event"], line["key_id"], line["key_name"], line["client"], line["status"]),
            ("change", key_id, "operator", "10.0.0.1", 201),
        )
        self.assertEqual(line["detail"], {"note": "x"})

    def test_client_left(self) -> None:
        """
        A change whose client left before the answer is audited with no
        status.
        """
        request = self.door.call(b"DELETE", b"/api/v1/agents/echo", REMOTE, self.operator)
        request.processingFailed(Failure(ConnectionError("gone")))
        [line] = self.door.audited()
        self.assertIsNone(line["status"])
        self.assertEqual(line["reason"], "the client left before the answer")

    def test_rate_limited(self) -> None:
        """
        Past its burst a key gets 429 RATE_LIMITED with C{Retry-After};
        another key is unaffected; after a while the first works again.
        """
        for _ in range(3):
            self.assertIsNone(self.door.call(b"GET", b"/api/v1/agents", REMOTE, self.viewer).responseCode)
        limited = self.door.call(b"GET", b"/api/v1/agents", REMOTE, self.viewer)
        self.assertEqual(limited.responseCode, 429)
        self.assertEqual(_error(limited)["code"], "RATE_LIMITED")
        self.assertEqual(limited.header("retry-after"), "1")
        self.assertEqual(limited.header("x-ratelimit-remaining"), "0")
        self.assertIsNone(self.door.call(b"GET", b"/api/v1/agents", REMOTE, self.operator).responseCode)
        self.door.clock.advance(1)
        self.assertIsNone(self.door.call(b"GET", b"/api/v1/agents", REMOTE, self.viewer).responseCode)

    def test_public_routes_not_limited(self) -> None:
        for _ in range(10):
            request = self.door.call(b"GET", b"/health", REMOTE, self.viewer)
            self.assertIsNone(request.responseCode)
            self.assertIsNone(request.header("x-ratelimit-limit"))

    def test_refusals_per_address_limited(self) -> None:
        """
        Past L{REFUSED_BURST} refused logins, an address gets 429 and no
        more audit lines; another address is still heard.
        """
        for _ in range(REFUSED_BURST):
            self.assertEqual(self.door.call(b"GET", b"/api/v1/agents", REMOTE, "bad").responseCode, 401)
        throttled = self.door.call(b"GET", b"/api/v1/agents", REMOTE, "bad")
        self.assertEqual(throttled.responseCode, 429)
        self.assertEqual(throttled.header("retry-after"), "1")
        self.assertEqual(self.door.call(b"GET", b"/api/v1/agents", OTHER, "bad").responseCode, 401)
        self.assertEqual(len(self.door.audited()), REFUSED_BURST + 1)
        # A valid key from the throttled address is not held back.
        self.assertIsNone(self.door.call(b"GET", b"/api/v1/agents", REMOTE, self.viewer).responseCode)

    def test_percent_encoded_path_is_the_same_route(self) -> None:
        """
        C{/api/v1/%6Beys} is the admin-only key list, as the app will
        route it: a viewer is refused.
        """
        self.assertEqual(self.door.call(b"GET", b"/api/v1/%6Beys", REMOTE, self.viewer).responseCode, 403)

    def test_revoking_all_keys_returns_to_protected_mode(self) -> None:
        for record in self.door.file.read().records:
            self.door.file.revoke(record.key_id, 3.0)
        self.door.keys.reload(force=True)
        self.assertEqual(self.door.call(b"GET", b"/api/v1/agents", REMOTE).responseCode, 403)
        self.assertIs(self.door.call(b"GET", b"/api/v1/agents", LOCAL).caxton_key, LOOPBACK)

    def test_early(self) -> None:
        """
        Before the body: missing or bad credentials are refused with a
        whole response; a good key, a public route, or loopback in
        protected mode go on to be decided later; no rate token is taken.
        """
        def early(path: bytes, client: Any, token: Optional[str] = None) -> Optional[bytes]:
            headers = Headers()
            if token is not None:
                headers.addRawHeader(b"authorization", b"Bearer " + token.encode())
            return self.door.gate.early(b"POST", path + b"?x=1", headers, client)

        missing = early(b"/api/v1/agents", LOCAL)
        self.assertTrue(missing.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), missing)
        self.assertIn(b"WWW-Authenticate: Bearer", missing)
        self.assertIn(b"Connection: close", missing)
        self.assertTrue(early(b"/api/v1/agents", REMOTE, "bad").startswith(b"HTTP/1.1 401 "))
        for _ in range(5):
            self.assertIsNone(early(b"/api/v1/agents", REMOTE, self.viewer))
        self.assertEqual(self.door.limiter.take(parse_token(self.viewer)[0]).remaining, 2)
        self.assertIsNone(early(b"/nowhere", REMOTE))
        protected = _Door(self.mktemp())
        headers = Headers()
        self.assertIsNone(protected.gate.early(b"POST", b"/api/v1/agents", headers, LOCAL))
        self.assertTrue(protected.gate.early(b"POST", b"/api/v1/agents", headers, REMOTE).startswith(
            b"HTTP/1.1 403 Forbidden"))

    def test_key_file_broken_fails_closed(self) -> None:
        """
        An unreadable key file refuses every token, and loopback is not
        let in as if there were no keys.
        """
        with open(self.door.file.path, "w") as f:
            f.write("{")
        self.door.keys.reload(force=True)
        self.flushLoggedErrors()
        self.assertEqual(self.door.call(b"GET", b"/api/v1/agents", LOCAL, self.admin).responseCode, 401)
        self.assertEqual(self.door.call(b"GET", b"/api/v1/agents", LOCAL).responseCode, 401)
        self.assertEqual(self.door.audited()[-1]["reason"], "key file unreadable")


class _Remote(Resource):
    """
    Makes every request come from C{client}, in front of a resource.
    """

    isLeaf = True

    def __init__(self, wrapped: Any, client: Any) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.client = client

    def render(self, request: Any) -> Any:
        request.client = self.client
        return self.wrapped.render(request)


class RouteTests(SynchronousTestCase):
    """
    C{/api/v1/keys} and C{/api/v1/audit} on the real app, behind the door.
    """

    def setUp(self) -> None:
        self.node = LocalNode(self.mktemp(), time.time())
        self.successResultOf(self.node.open())
        self.addCleanup(lambda: self.successResultOf(self.node.store.close()))
        self.door = _Door(self.mktemp(), burst=100)
        self.api = CaxtonAPI(self.node.clock, self.node.agents, self.node.router, self.node.store,
                             keys=self.door.keys, audit=self.door.audit)
        self.door.resource = AuthResource(self.api.resource(), self.door.gate, self.door.audit)
        self.local = StubTreq(self.door.resource)
        self.remote = StubTreq(_Remote(self.door.resource, REMOTE))

    def call(self, method: str, path: str, body: Any = None, token: Optional[str] = None,
             http: Optional[StubTreq] = None) -> tuple:
        http = http or self.local
        headers = {"authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        d = http.request(method, "http://node" + path, data=data, headers=headers)
        for _ in range(50):
            self.node.pump()
            http.flush()
            if d.called:
                break
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        return response.code, (json.loads(content) if content else None)

    def test_first_key_from_loopback_then_keys(self) -> None:
        """
        In protected mode a local client makes the first admin key; from
        then on the API needs it, lists keys without secrets, and a
        revoked key is refused at its next request.
        """
        code, body = self.call("POST", "/api/v1/keys", {"name": "root", "role": "admin"})
        self.assertEqual(code, 201, body)
        admin = body["token"]
        self.assertEqual(parse_token(admin)[0], body["key"]["id"])
        self.assertEqual(self.call("GET", "/api/v1/keys")[0], 401)
        code, body = self.call("POST", "/api/v1/keys", {"name": "ci", "role": "operator"}, admin)
        self.assertEqual(code, 201)
        operator, operator_id = body["token"], body["key"]["id"]
        code, body = self.call("GET", "/api/v1/keys", token=admin)
        self.assertEqual([k["name"] for k in body["keys"]], ["ci", "root"])
        self.assertNotIn(admin, json.dumps(body))
        self.assertEqual(set(body["keys"][0]), {"id", "name", "role", "created_at", "hint", "revoked", "revoked_at"})
        self.assertEqual(self.call("GET", "/api/v1/agents", token=operator)[0], 200)
        code, body = self.call("DELETE", f"/api/v1/keys/{operator_id}", token=admin)
        self.assertEqual((code, body["key"]["revoked"]), (200, True))
        self.assertEqual(self.call("GET", "/api/v1/agents", token=operator)[0], 401)
        code, body = self.call("GET", "/api/v1/audit?limit=10", token=admin)
        self.assertEqual(code, 200)
        changes = [(e["method"], e["route"], e["key_id"], e["status"]) for e in body["entries"] if e["event"] == "change"]
        self.assertEqual(changes, [
            ("DELETE", "/api/v1/keys/<key_id>", parse_token(admin)[0], 200),
            ("POST", "/api/v1/keys", parse_token(admin)[0], 201),
            ("POST", "/api/v1/keys", "loopback", 201),
        ])
        created = [e for e in body["entries"] if e["event"] == "change" and e["method"] == "POST"][0]
        self.assertEqual(created["detail"], {"created_key_id": operator_id, "role": "operator"})
        with open(self.door.audit.path) as f:
            text = f.read()
        self.assertNotIn(parse_token(admin)[1], text)
        self.assertNotIn(parse_token(operator)[1], text)

    def test_spellings_of_a_route_are_that_route(self) -> None:
        """
        Paths the app serves as C{/api/v1/keys} (percent-encoded, with a
        leading double slash) need what C{/api/v1/keys} needs.
        """
        admin = self.call("POST", "/api/v1/keys", {"name": "root", "role": "admin"})[1]["token"]
        viewer = self.call("POST", "/api/v1/keys", {"name": "v", "role": "viewer"}, admin)[1]["token"]
        for path in ("/api/v1/%6beys", "/api/v1/%6B%65ys", "//api/v1/keys"):
            self.assertEqual(self.call("GET", path, token=viewer)[0], 403, path)
            code, body = self.call("GET", path, token=admin)
            self.assertEqual((code, len(body["keys"])), (200, 2), path)

    def test_remote_refused_in_protected_mode(self) -> None:
        code, body = self.call("POST", "/api/v1/keys", {"name": "x", "role": "admin"}, http=self.remote)
        self.assertEqual((code, body["error"]["code"]), (403, "FORBIDDEN"))
        self.assertEqual(self.door.file.read().records, ())

    def test_bad_key_requests(self) -> None:
        """
        Bad names, roles and bodies are 400 INVALID_REQUEST; an unknown id
        is 404; none is a 500.
        """
        for body in ({"name": "x", "role": "root"}, {"name": "", "role": "admin"},
                     {"name": "x"}, ["x"], {"name": 5, "role": "admin"}):
            code, answer = self.call("POST", "/api/v1/keys", body)
            self.assertEqual((code, answer["error"]["code"]), (400, "INVALID_REQUEST"), body)
        code, answer = self.call("DELETE", "/api/v1/keys/0123456789ab")
        self.assertEqual((code, answer["error"]["code"]), (404, "INVALID_REQUEST"))
        self.assertEqual(self.call("DELETE", "/api/v1/keys/nothex")[0], 404)
        self.assertEqual(self.call("GET", "/api/v1/audit?limit=0")[0], 400)
        self.assertEqual(self.call("GET", "/api/v1/audit?before=x")[0], 400)

    def test_paging_audit(self) -> None:
        for i in range(5):
            self.call("DELETE", f"/api/v1/agents/ghost{i}")
        code, body = self.call("GET", "/api/v1/audit?limit=2")
        self.assertEqual([e["arguments"]["name"] for e in body["entries"]], ["ghost4", "ghost3"])
        self.assertEqual([e["status"] for e in body["entries"]], [404, 404])
        code, body = self.call("GET", f"/api/v1/audit?limit=10&before={body['next_before']}")
        self.assertEqual([e["arguments"]["name"] for e in body["entries"]], ["ghost2", "ghost1", "ghost0"])
        self.assertIsNone(body["next_before"])

    def test_without_keys_or_audit(self) -> None:
        """
        An API built without a key store or audit log answers 404 with a
        reason on their routes.
        """
        api = CaxtonAPI(self.node.clock, self.node.agents, self.node.router, self.node.store)
        self.local = StubTreq(api.resource())
        for method, path, body in (("GET", "/api/v1/keys", None), ("POST", "/api/v1/keys", {"name": "a", "role": "admin"}),
                                   ("DELETE", "/api/v1/keys/0123456789ab", None), ("GET", "/api/v1/audit", None)):
            code, answer = self.call(method, path, body)
            self.assertEqual((code, answer["error"]["code"]), (404, "INVALID_REQUEST"), path)
            self.assertIn("keeps no", answer["error"]["message"])


class DocsTests(SynchronousTestCase):
    def test_security_doc_lists_every_route_with_its_role(self) -> None:
        """
        The table of routes and roles in docs/security.md is POLICY, line
        for line.
        """
        import re

        from caxton.api.routes import POLICY

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "security.md")
        with open(path) as f:
            text = f.read()
        rows = re.findall(r"^\| `(GET|POST|PUT|DELETE) (/[^`]*)` \| (\w+) \|$", text, re.MULTILINE)
        documented = {(method, template): role for method, template, role in rows}
        self.assertEqual(len(rows), len(documented))
        self.assertEqual(documented, {key: role.name.lower() for key, role in POLICY.items()})


class GuardTests(SynchronousTestCase):
    """
    The node's wiring: configuration to limiter, audit log and sites.
    """

    def test_from_config(self) -> None:
        """
        The C{auth.*}, C{audit.*} and C{http.*} keys reach the parts they
        name; an onion endpoint's site does not trust loopback.
        """
        from twisted.internet.testing import MemoryReactorClock

        from caxton.auth.resource import Guard
        from caxton.config import ConfigError, load

        data_dir = self.mktemp()
        config = load({"data_dir": data_dir}, {
            "CAXTON_AUTH_RATE_LIMIT": "0.5", "CAXTON_AUTH_BURST": "7", "CAXTON_AUDIT_MAX_SIZE": "1MiB",
            "CAXTON_HTTP_REQUEST_TIMEOUT": "5s", "CAXTON_HTTP_MIN_BODY_RATE": "1KiB",
            "CAXTON_HTTP_MAX_CONNECTIONS_PER_CLIENT": "4",
        })
        guard = Guard(config, MemoryReactorClock(), CaxtonAPI.app.url_map)
        self.assertEqual(guard.audit.path, os.path.join(data_dir, "audit.log"))
        self.assertEqual(guard.audit.max_size, 1024**2)
        self.assertEqual(guard.keys.file.path, os.path.join(data_dir, "keys.json"))
        self.assertEqual(guard.service.name, "audit")
        tcp = guard.site(Resource(), "tcp:8080")
        onion = guard.site(Resource(), "onion:80")
        self.assertEqual((tcp.request_timeout, tcp.min_body_rate, tcp.max_connections_per_client), (5.0, 1024, 4))
        self.assertIs(tcp.connections, onion.connections)
        tcp_gate, onion_gate = tcp.resource._gatekeeper, onion.resource._gatekeeper
        self.assertTrue(tcp_gate.trust_loopback)
        self.assertFalse(onion_gate.trust_loopback)
        self.assertIs(tcp_gate.limiter, onion_gate.limiter)
        self.assertEqual((tcp_gate.limiter.rate, tcp_gate.limiter.burst), (0.5, 7))
        for bad in ("0", "-1", "fast", "nan", "inf"):
            with self.assertRaises(ConfigError) as caught:
                load({}, {"CAXTON_AUTH_RATE_LIMIT": bad})
            self.assertIn("auth.rate_limit", str(caught.exception))
        self.assertRaises(ConfigError, load, {}, {"CAXTON_AUTH_BURST": "0"})
