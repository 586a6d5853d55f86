"""
Tests for L{caxton.api.openapi}: the OpenAPI document is valid OpenAPI
3.1, describes exactly the routes of L{caxton.api.routes.POLICY} (and so
every route the app serves) with the roles that table gives, and what a
real node answers matches it.

The last part drives a real node process (L{tests.nodes}) through a
realistic sequence (deploy, list, send, long-poll, invoke, mailbox, dead
letters, stop and start, update, remove, and the errors on the way) and
checks every answer against the document's schema for its route and
status with C{jsonschema}, C{$ref}s resolved within the document.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import time
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple
from unittest import SkipTest

import treq
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool

from caxton.acl.message import _ALIASES, PERFORMATIVES
from caxton.api import openapi
from caxton.api.app import CaxtonAPI
from caxton.api.routes import POLICY, Role, match
from caxton.cluster import pki
from caxton.testing import LocalNode
from tests.nodes import NodeProcess
from tests.test_integration import _raw_http
from tests.wasmbuild import example, wat_module

#: The error codes SPEC 6 names.
SPEC_ERROR_CODES = {
    "INVALID_MESSAGE", "INVALID_WASM", "INVALID_REQUEST", "AGENT_NOT_FOUND", "AGENT_ALREADY_EXISTS",
    "UNAUTHORIZED", "FORBIDDEN", "RATE_LIMITED", "PAYLOAD_TOO_LARGE", "PARTITIONED", "INTERNAL_ERROR",
}

#: The longest any single wait here may take, in seconds.
WAIT = 15.0


def served() -> Set[Tuple[str, str]]:
    """
    Every (method, Klein template) the API's app serves.
    """
    routes = set()
    for rule in CaxtonAPI.app.url_map.iter_rules():
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method, rule.rule))
    return routes


def described(document: Dict[str, Any]) -> Set[Tuple[str, str]]:
    """
    Every (method, Klein template) the document describes.
    """
    return {
        (method.upper(), path.replace("{", "<").replace("}", ">"))
        for path, item in document["paths"].items()
        for method in item
    }


def _pointer(*parts: str) -> str:
    return "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


class Described:
    """
    The OpenAPI document, for checking answers against it.

    @ivar document: the document.
    """

    _URI = "urn:caxton:openapi"

    def __init__(self, document: Dict[str, Any]) -> None:
        self.document = document
        self._registry = Registry().with_resource(self._URI, DRAFT202012.create_resource(document))

    def validator(self, pointer: str) -> Draft202012Validator:
        """
        A validator for the schema at C{pointer} (a JSON pointer into the
        document), its C{$ref}s resolved within the document.
        """
        return Draft202012Validator(
            {"$ref": f"{self._URI}#{pointer}"},
            registry=self._registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )

    def problems(
        self, method: str, path: str, status: int, headers: Dict[str, str], body: bytes
    ) -> Tuple[Optional[str], List[str]]:
        """
        What is wrong with an answer to C{method} C{path}, by the document.

        @param headers: the answer's headers, names in lower case.
        @return: the route's template (C{None} for no route) and the
            problems found (none if the answer matches).
        """
        route = match(CaxtonAPI.app.url_map, method.encode("ascii"), path.encode("utf-8"))
        if route is None:
            # No route (404), or not with this method (405): the shared
            # error answers.
            name = "MethodNotAllowed" if status == 405 else "NoSuchRoute"
            pointer = _pointer("components", "responses", name)
            response = self.document["components"]["responses"][name]
            template = None
            if status not in (404, 405):
                return None, [f"{method} {path}: no route, but {status}"]
        else:
            template = openapi.openapi_path(route.template)
            operation = self.document["paths"].get(template, {}).get(method.lower())
            if operation is None:
                return template, [f"{method} {template} is not described"]
            response = operation["responses"].get(str(status))
            if response is None:
                return template, [
                    f"{method} {template}: status {status} is not described "
                    f"({', '.join(operation['responses'])}): {body[:300]!r}"
                ]
            pointer = _pointer("paths", template, method.lower(), "responses", str(status))
        problems = []
        for name, header in response.get("headers", {}).items():
            if header.get("required") and name.lower() not in headers:
                problems.append(f"{method} {template} {status}: no {name} header")
        content = response.get("content")
        if not content:
            if body:
                problems.append(f"{method} {template} {status}: a body where none is described: {body[:300]!r}")
            return template, problems
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in content:
            problems.append(f"{method} {template} {status}: content-type {media_type!r}, not {sorted(content)}")
            return template, problems
        if media_type == "application/json":
            try:
                value = json.loads(body)
            except ValueError as e:
                return template, problems + [f"{method} {template} {status}: not JSON ({e}): {body[:300]!r}"]
        else:
            value = body.decode("utf-8")
        validator = self.validator(pointer + _pointer("content", media_type, "schema"))
        for error in validator.iter_errors(value):
            problems.append(
                f"{method} {template} {status}: {error.message} at {'/'.join(map(str, error.absolute_path))}"
            )
        return template, problems


class DocumentTests(SynchronousTestCase):
    """
    The document itself.
    """

    def setUp(self) -> None:
        self.document = openapi.document()

    def test_valid_openapi_31(self) -> None:
        """
        The document is valid OpenAPI 3.1, by openapi-spec-validator: the
        official 3.1 schema, its schemas in the 3.1 dialect, and what that
        schema cannot say (path parameters declared, C{$ref}s resolve).
        """
        validate(self.document, cls=OpenAPIV31SpecValidator)
        self.assertEqual(self.document["openapi"], "3.1.0")

    def test_validator_is_not_blind(self) -> None:
        """
        The validator refuses broken copies of the document.
        """
        breakings = {
            "parameter without in": lambda d: d["paths"]["/api/v1/agents"]["get"]["parameters"][0].pop("in"),
            "unknown schema type": lambda d: d["components"]["schemas"]["Health"].update(type="thing"),
            "dangling $ref": lambda d: d["components"]["schemas"]["Health"]["properties"].update(
                status={"$ref": "#/components/schemas/Nope"}
            ),
            "undeclared path parameter": lambda d: d["paths"]["/api/v1/agents/{name}"]["get"].pop("parameters"),
            "bad status": lambda d: d["paths"]["/health"]["get"]["responses"].update({"2000": {"description": "?"}}),
        }
        for name, breaking in breakings.items():
            broken = copy.deepcopy(self.document)
            breaking(broken)
            try:
                validate(broken, cls=OpenAPIV31SpecValidator)
            except Exception:
                continue
            self.fail(f"a document with a {name} passed")

    def test_schemas_are_json_schema(self) -> None:
        """
        Every component schema is a valid JSON Schema 2020-12, and every
        C{$ref} in the document resolves.
        """
        for name, schema in self.document["components"]["schemas"].items():
            Draft202012Validator.check_schema(schema)
        checked = Described(self.document)
        resolver = checked._registry.resolver(base_uri=Described._URI)
        for ref in set(_refs(self.document)):
            self.assertTrue(ref.startswith("#/"), ref)
            resolver.lookup(Described._URI + ref)

    def test_policy_described(self) -> None:
        """
        The document describes exactly the routes of the policy table.
        """
        self.assertEqual(described(self.document), set(POLICY))

    def test_served_described(self) -> None:
        """
        Every route the app serves is described; routes described but not
        served (yet) are all in the policy table.
        """
        self.assertEqual(served() - described(self.document), set())
        self.assertEqual((described(self.document) - served()) - set(POLICY), set())

    def test_roles(self) -> None:
        """
        Each operation states the role the policy gives its route; public
        ones need no key, the others the bearer scheme and may answer 401,
        403 and 429 (with C{Retry-After}).
        """
        self.assertEqual(
            self.document["components"]["securitySchemes"]["bearer"], {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key's token: Authorization: Bearer <token>.",
            },
        )
        for (method, template), role in POLICY.items():
            operation = self.document["paths"][openapi.openapi_path(template)][method.lower()]
            self.assertEqual(operation["x-caxton-role"], role.name.lower())
            guards = {"401", "403", "429"} & set(operation["responses"])
            if role is Role.PUBLIC:
                self.assertEqual((operation["security"], guards), ([], set()), template)
            else:
                self.assertEqual((operation["security"], guards), ([{"bearer": []}], {"401", "403", "429"}))
                self.assertTrue(operation["responses"]["429"]["headers"]["Retry-After"]["required"])

    def test_error_codes(self) -> None:
        """
        The error schema names every code of SPEC 6.
        """
        codes = self.document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
        self.assertEqual(SPEC_ERROR_CODES - set(codes), set())

    def test_partitioned(self) -> None:
        """
        Deploy, update and remove may be refused with 503 C{PARTITIONED}.
        """
        for method, path in (("post", "/api/v1/agents"), ("put", "/api/v1/agents/{name}"), ("delete", "/api/v1/agents/{name}")):
            response = self.document["paths"][path][method]["responses"]["503"]
            schema = response["content"]["application/json"]["schema"]
            self.assertIn("PARTITIONED", json.dumps(schema))

    def test_message_matches_codec(self) -> None:
        """
        The message schemas name the codec's performatives and FIPA
        spellings, refuse unknown fields and a sender that is no client,
        and invoke's refuses C{reply_to}.
        """
        schemas = self.document["components"]["schemas"]
        self.assertEqual(set(schemas["AclMessageIn"]["properties"]["performative"]["enum"]), PERFORMATIVES)
        self.assertEqual(schemas["AclMessageIn"]["x-caxton-aliases"], _ALIASES)
        messages = Described(self.document).validator("/components/schemas/AclMessageIn")
        self.assertTrue(messages.is_valid({"performative": "inform", "receiver": "echo", "conversation_id": "c", "X-Trace": 1}))
        self.assertFalse(messages.is_valid({"performative": "inform", "receiver": "echo", "colour": "red"}))
        self.assertFalse(messages.is_valid({"performative": "shout", "receiver": "echo"}))
        self.assertFalse(messages.is_valid({"performative": "inform", "receiver": "echo", "sender": "echo"}))
        invoke = Described(self.document).validator("/components/schemas/InvokeRequest")
        self.assertTrue(invoke.is_valid({"content": 1, "timeout": "5s", "conversation_id": "c"}))
        self.assertFalse(invoke.is_valid({"reply_to": "client:elsewhere"}))
        self.assertNotIn("reply-to", schemas["InvokeRequest"]["x-caxton-aliases"])

    def test_examples_valid(self) -> None:
        """
        Every request body example is valid by its own schema.
        """
        checker = Described(self.document)
        count = 0
        for path, item in self.document["paths"].items():
            for method, operation in item.items():
                for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
                    if "example" in content:
                        pointer = _pointer("paths", path, method, "requestBody", "content", media_type, "schema")
                        errors = [e.message for e in checker.validator(pointer).iter_errors(content["example"])]
                        self.assertEqual(errors, [], f"{method} {path}")
                        count += 1
        self.assertGreater(count, 3)

    def test_checker_finds_problems(self) -> None:
        """
        The answer checker the integration tests use finds an answer with a
        missing field, an undescribed status and a wrong content type.
        """
        checker = Described(self.document)
        json_type = {"content-type": "application/json"}
        self.assertEqual(checker.problems("GET", "/health", 200, json_type, b'{"status": "ok"}'), ("/health", []))
        self.assertTrue(checker.problems("GET", "/health", 200, json_type, b'{"status": "fine"}')[1])
        self.assertTrue(checker.problems("GET", "/health", 500, json_type, b'{"status": "ok"}')[1])
        self.assertTrue(checker.problems("GET", "/health", 200, {"content-type": "text/html"}, b"ok")[1])
        self.assertTrue(checker.problems("GET", "/api/v1/agents/x", 404, json_type, b'{"error": {"code": "NOPE", "message": "m"}}')[1])
        self.assertEqual(
            checker.problems("GET", "/api/v1/agents/x", 404, json_type, b'{"error": {"code": "AGENT_NOT_FOUND", "message": "m"}}'),
            ("/api/v1/agents/{name}", []),
        )


class ServedTests(SynchronousTestCase):
    """
    The app serves the document.
    """

    def test_served(self) -> None:
        """
        C{GET /api/v1/openapi.json} answers the document as JSON, the same
        bytes each time; C{/ready}'s 503 matches it too.
        """
        node = LocalNode(self.mktemp(), time.time())
        self.successResultOf(node.open())
        self.addCleanup(lambda: self.successResultOf(node.store.close()))
        api = CaxtonAPI(node.clock, node.agents, node.router, node.store, ready=lambda: False)
        http = StubTreq(api.resource())
        answers = []
        for _ in range(2):
            response = self.successResultOf(http.get("http://node/api/v1/openapi.json"))
            self.assertEqual(response.code, 200)
            self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
            answers.append(self.successResultOf(response.content()))
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(json.loads(answers[0]), openapi.document())
        response = self.successResultOf(http.get("http://node/ready"))
        body = self.successResultOf(response.content())
        self.assertEqual(
            Described(openapi.document()).problems("GET", "/ready", response.code, {"content-type": "application/json"}, body),
            ("/ready", []),
        )
        self.assertEqual(response.code, 503)


def _multipart(parts: List[Tuple[str, Optional[str], str, bytes]]) -> Tuple[bytes, str]:
    """
    A C{multipart/form-data} body of C{(name, filename, content type,
    bytes)} parts, and its content type.
    """
    boundary = "caxton-openapi-test-boundary"
    out = bytearray()
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class _CheckedClient:
    """
    An HTTP client for one node that checks every answer against the
    document and remembers which (method, template, status) it saw.

    @ivar seen: the (method, template, status) of every answer.
    """

    def __init__(self, test: unittest.TestCase, url: str, checker: Described) -> None:
        self.test = test
        self.url = url
        self.checker = checker
        self.seen: Set[Tuple[str, Optional[str], int]] = set()
        self.token: Optional[str] = None
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._http = treq.client.HTTPClient(Agent(reactor, pool=pool))

    def check(self, method: str, path: str, status: int, headers: Dict[str, str], body: bytes) -> None:
        template, problems = self.checker.problems(method, path, status, headers, body)
        self.test.assertEqual(problems, [])
        self.seen.add((method, template, status))

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: Optional[bytes] = None,
        content_type: str = "application/json",
        expect: Optional[int] = None,
        code: Optional[str] = None,
        token: Optional[str] = None,
    ) -> Any:
        """
        Send a request, check the answer against the document, and return
        its decoded JSON body (or its text).

        @param expect: the status the test expects.
        @param code: the error code the test expects.
        """
        data = raw if raw is not None else (json.dumps(body).encode("utf-8") if body is not None else None)
        headers = {"content-type": content_type}
        if token or self.token:
            headers["authorization"] = f"Bearer {token or self.token}"
        response = await self._http.request(method, self.url + path, data=data, headers=headers)
        content = await response.content()
        got = {
            name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        self.check(method, path.split("?")[0], response.code, got, content)
        if expect is not None:
            self.test.assertEqual(response.code, expect, content[:500])
        decoded: Any = content.decode("utf-8") if content else None
        if got.get("content-type", "").startswith("application/json") and content:
            decoded = json.loads(content)
        if code is not None:
            self.test.assertEqual(decoded["error"]["code"], code, decoded)
        return decoded

    async def poll(self, path: str, until: Any, timeout: float = WAIT) -> List[Dict[str, Any]]:
        """
        Long-poll C{path} (a conversation or mailbox) until the messages
        read satisfy C{until}; those messages.
        """
        deadline = time.monotonic() + timeout
        after = 0
        seen: List[Dict[str, Any]] = []
        for _ in range(100):
            if time.monotonic() > deadline:
                break
            body = await self.call("GET", f"{path}?after={after}&wait=2s", expect=200)
            seen.extend(item["message"] for item in body["messages"])
            if until(seen):
                return seen
            after = body["next_after"]
        self.test.fail(f"{path}: nothing satisfied the wait: {seen}")


class _NodeTestCase(unittest.TestCase):
    timeout = 120

    async def node(self, args: List[str] = (), env: Optional[Dict[str, str]] = None) -> Tuple[NodeProcess, _CheckedClient]:
        process = NodeProcess(os.path.abspath(self.mktemp()), args=list(args), env=env)
        self.addCleanup(lambda: ensureDeferred(process.stop(signal.SIGKILL)))
        url = await process.start()
        return process, _CheckedClient(self, url, Described(openapi.document()))


class ResponseTests(_NodeTestCase):
    """
    A real node's answers match the document.
    """

    async def test_sequence(self) -> None:
        """
        A realistic sequence against a real node: every answer matches the
        document's schema for its route and status, and the sequence
        reaches every route the node serves (bar the cluster routes that
        need a cluster, in L{test_clustered}).
        """
        _, api = await self.node(
            env={
                "CAXTON_HTTP_MAX_BODY": "1MiB",
                "CAXTON_MCP_SERVERS": "down=http://127.0.0.1:1/mcp",
            }
        )
        echo = wat_module(example("wat", "echo.wat"))
        wasm = base64.b64encode(echo).decode("ascii")

        # Health and the document itself.
        await api.call("GET", "/health", expect=200)
        await api.call("GET", "/ready", expect=200)
        await api.call("GET", "/health/gossip", expect=200)
        self.assertEqual(await api.call("GET", "/api/v1/openapi.json", expect=200), openapi.document())

        # Deploy, both forms, and the refusals.
        agent = await api.call(
            "POST", "/api/v1/agents", {"name": "echo", "wasm": wasm, "capabilities": ["echo"], "config": {"a": 1}}, expect=201
        )
        self.assertEqual((agent["name"], agent["status"]), ("echo", "running"))
        await api.call("POST", "/api/v1/agents", {"name": "echo", "wasm": wasm}, expect=409, code="AGENT_ALREADY_EXISTS")
        await api.call(
            "POST", "/api/v1/agents", {"name": "junk", "wasm": base64.b64encode(b"\0not wasm").decode()},
            expect=400, code="INVALID_WASM",
        )
        await api.call("POST", "/api/v1/agents", {"name": "Bad Name", "wasm": wasm}, expect=400, code="INVALID_REQUEST")
        await api.call("POST", "/api/v1/agents", raw=b"{not json", expect=400, code="INVALID_REQUEST")
        body, content_type = _multipart(
            [
                ("wasm", "echo.wasm", "application/wasm", echo),
                ("spec", None, "application/json", json.dumps({"name": "mirror", "limits": {"memory": "2MiB"}}).encode()),
            ]
        )
        mirror = await api.call("POST", "/api/v1/agents", raw=body, content_type=content_type, expect=201)
        self.assertEqual(mirror["limits"]["memory"], 2 * 1024**2)

        # List and show.
        page = await api.call("GET", "/api/v1/agents?limit=1", expect=200)
        self.assertEqual(([a["name"] for a in page["agents"]], page["next_cursor"] is not None), (["echo"], True))
        page = await api.call("GET", f"/api/v1/agents?limit=1&cursor={page['next_cursor']}", expect=200)
        self.assertEqual([a["name"] for a in page["agents"]], ["mirror"])
        await api.call("GET", "/api/v1/agents?capability=echo&status=running", expect=200)
        await api.call("GET", "/api/v1/agents?limit=0", expect=400, code="INVALID_REQUEST")
        await api.call("GET", "/api/v1/agents/echo", expect=200)
        await api.call("GET", "/api/v1/agents/ghost", expect=404, code="AGENT_NOT_FOUND")

        # Messages, conversations, the long poll, the mailbox.
        accepted = await api.call(
            "POST", "/api/v1/messages",
            {"performative": "request", "sender": "client:alice", "receiver": "echo", "conversation-id": "talk-1",
             "reply-with": "r1", "content": {"text": "hi"}, "X-Trace": "t"},
            expect=202,
        )
        self.assertEqual(accepted["conversation_id"], "talk-1")
        await api.call("POST", "/api/v1/messages", {"performative": "shout", "receiver": "echo"}, expect=400, code="INVALID_MESSAGE")
        await api.call("POST", "/api/v1/messages", [], expect=400, code="INVALID_MESSAGE")
        # JSON deep enough to be parsed but not encoded again deeper in the
        # node's stack was a 500; it is refused at the door.
        deep = '{"performative": "inform", "receiver": "client:b", "content": %s}' % ("[" * 950 + "]" * 950,)
        await api.call("POST", "/api/v1/messages", raw=deep.encode(), expect=400, code="INVALID_MESSAGE")
        await api.poll("/api/v1/conversations/talk-1", lambda seen: len(seen) >= 2)
        await api.poll("/api/v1/mailboxes/client:alice", lambda seen: any(m["sender"] == "echo" for m in seen))
        await api.call("GET", "/api/v1/conversations/talk-1?after=nothing-like-it", expect=400, code="INVALID_REQUEST")
        await api.call("GET", "/api/v1/conversations/talk-1?wait=soon", expect=400, code="INVALID_REQUEST")
        await api.call("GET", "/api/v1/conversations/no-such-talk", expect=404, code="INVALID_REQUEST")
        await api.call("GET", "/api/v1/conversations", expect=200)
        await api.call("GET", "/api/v1/conversations?participant=client:alice&limit=1", expect=200)
        await api.call("GET", "/api/v1/conversations?before=yesterday", expect=400, code="INVALID_REQUEST")
        await api.call("GET", "/api/v1/mailboxes/alice", expect=400, code="INVALID_REQUEST")

        # Invoke.
        result = await api.call(
            "POST", "/api/v1/agents/echo/invoke", {"content": {"text": "ping"}, "timeout": "10s"}, expect=200
        )
        self.assertEqual((result["reply"]["sender"], result["reply"]["performative"]), ("echo", "inform"))
        await api.call("POST", "/api/v1/agents/echo/invoke", {"performative": "inform"}, expect=400, code="INVALID_MESSAGE")
        await api.call("POST", "/api/v1/agents/echo/invoke", {"timeout": "1d"}, expect=400, code="INVALID_REQUEST")
        await api.call("POST", "/api/v1/agents/ghost/invoke", {}, expect=404, code="AGENT_NOT_FOUND")
        # Found by hand while fuzzing (each was a 500): a null sender, a
        # reply_to that sends the reply elsewhere, the FIPA spellings of
        # what the node sets.
        result = await api.call("POST", "/api/v1/agents/echo/invoke", {"sender": None, "timeout": "10s"}, expect=200)
        self.assertEqual(result["reply"]["sender"], "echo")
        await api.call(
            "POST", "/api/v1/agents/echo/invoke", {"reply_to": "client:elsewhere"}, expect=400, code="INVALID_MESSAGE"
        )
        result = await api.call(
            "POST", "/api/v1/agents/echo/invoke",
            {"reply-with": "mine", "reply-by": "2030-01-01T00:00:00Z", "timeout": "10s"},
            expect=200,
        )
        self.assertEqual(result["reply"]["sender"], "echo")

        # A message for nobody: a dead letter.
        await api.call("POST", "/api/v1/messages", {"performative": "inform", "sender": "client:bob", "receiver": "ghost"}, expect=202)
        for _ in range(50):
            letters = await api.call("GET", "/api/v1/dead-letters?limit=10", expect=200)
            if letters["dead_letters"]:
                break
            await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(letters["dead_letters"][0]["reason"], "AGENT_NOT_FOUND")
        await api.call("GET", "/api/v1/dead-letters?before=0", expect=400, code="INVALID_REQUEST")

        # Lifecycle and updates.
        self.assertEqual((await api.call("POST", "/api/v1/agents/echo/stop", expect=200))["status"], "stopped")
        self.assertEqual((await api.call("POST", "/api/v1/agents/echo/start", expect=200))["status"], "running")
        await api.call("POST", "/api/v1/agents/ghost/stop", expect=404, code="AGENT_NOT_FOUND")
        await api.call("POST", "/api/v1/agents/ghost/start", expect=404, code="AGENT_NOT_FOUND")
        updated = await api.call("PUT", "/api/v1/agents/echo", {"capabilities": ["echo", "mirror"]}, expect=200)
        self.assertEqual(updated["version"], 2)
        body, content_type = _multipart([("wasm", "echo.wasm", "application/wasm", echo)])
        self.assertEqual((await api.call("PUT", "/api/v1/agents/echo", raw=body, content_type=content_type, expect=200))["version"], 3)
        await api.call("PUT", "/api/v1/agents/echo", {}, expect=400, code="INVALID_REQUEST")
        await api.call("PUT", "/api/v1/agents/echo", {"wasm": base64.b64encode(b"junk").decode()}, expect=400, code="INVALID_WASM")
        await api.call("PUT", "/api/v1/agents/ghost", {"capabilities": []}, expect=404, code="AGENT_NOT_FOUND")

        # Tools, and the cluster routes of a node that runs alone.
        tools = await api.call("GET", "/api/v1/tools", expect=200)
        self.assertEqual([(s["name"], s["status"]) for s in tools["servers"]], [("down", "unreachable")])
        await api.call("GET", "/api/v1/cluster/members", expect=200)
        await api.call("GET", "/api/v1/cluster/status", expect=200)
        await api.call("POST", "/api/v1/cluster/join", {"seeds": ["127.0.0.1:7946"]}, expect=400, code="INVALID_REQUEST")
        await api.call("POST", "/api/v1/cluster/join", {"seeds": []}, expect=400, code="INVALID_REQUEST")
        await api.call("POST", "/api/v1/cluster/leave", expect=400, code="INVALID_REQUEST")

        # No route, no such method, a body over the cap.
        await api.call("GET", "/api/v2/nothing", expect=404, code="INVALID_REQUEST")
        await api.call("PATCH", "/api/v1/agents", expect=405, code="INVALID_REQUEST")
        raw = await _raw_http(
            api.url,
            b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (2 * 1024**2,),
        )
        head, _, content = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        api.check("POST", "/api/v1/messages", int(lines[0].split()[1]), headers, content)
        self.assertIn(("POST", "/api/v1/messages", 413), api.seen)

        # Remove.
        self.assertIsNone(await api.call("DELETE", "/api/v1/agents/mirror", expect=204))
        await api.call("DELETE", "/api/v1/agents/mirror", expect=404, code="AGENT_NOT_FOUND")

        reached = {(method, template.replace("{", "<").replace("}", ">")) for method, template, _ in api.seen if template}
        self.assertEqual(served() - reached - {("POST", "/api/v1/cluster/join")} - _LATER, set())

    async def test_clustered(self) -> None:
        """
        The cluster routes of a clustered node match the document: members,
        status and gossip health in full, a join no seed answers (503),
        a leave, and a second leave refused.
        """
        tls_dir = os.path.abspath(self.mktemp())
        ca_dir = os.path.join(tls_dir, "ca")
        pki.init_ca(ca_dir, cluster_name="caxton")
        pki.issue(ca_dir, "n1", os.path.join(tls_dir, "n1"))
        _, api = await self.node(
            ["--node-id", "n1", "--bind", "127.0.0.1:0", "--tls-dir", os.path.join(tls_dir, "n1")],
            env={"CAXTON_GOSSIP_PROFILE": "local", "CAXTON_GOSSIP_TCP_TIMEOUT": "2s"},
        )
        status = await api.call("GET", "/api/v1/cluster/status", expect=200)
        self.assertEqual((status["clustered"], status["left"]), (True, False))
        members = await api.call("GET", "/api/v1/cluster/members", expect=200)
        self.assertEqual([m["id"] for m in members["members"]], ["n1"])
        self.assertIn("local_health", await api.call("GET", "/health/gossip", expect=200))
        await api.call("POST", "/api/v1/cluster/join", {"seeds": "127.0.0.1:1"}, expect=503, code="UNREACHABLE")
        await api.call("POST", "/api/v1/cluster/join", {"seeds": ["not an address"]}, expect=400, code="INVALID_REQUEST")
        self.assertEqual(await api.call("POST", "/api/v1/cluster/leave", expect=200), {"left": True})
        self.assertTrue((await api.call("GET", "/api/v1/cluster/status", expect=200))["left"])
        await api.call("POST", "/api/v1/cluster/leave", expect=400, code="INVALID_REQUEST")


#: Routes other parts of the API add (observability, authentication), whose
#: answers are checked by L{LaterRouteTests} once the node serves them.
_LATER = {
    ("GET", "/metrics"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/keys"),
    ("POST", "/api/v1/keys"),
    ("DELETE", "/api/v1/keys/<key_id>"),
    ("GET", "/api/v1/audit"),
}


class _Stream(Protocol):
    """
    Sends a request and keeps every byte of the answer.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = bytearray()
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(None)


class _StreamFactory(ClientFactory):
    def __init__(self, stream: _Stream) -> None:
        self.stream = stream

    def buildProtocol(self, addr: Any) -> _Stream:
        return self.stream


def _needs(*routes: Tuple[str, str]) -> None:
    missing = set(routes) - served()
    if missing:
        raise SkipTest(f"this build does not serve {sorted(missing)} yet")


class LaterRouteTests(_NodeTestCase):
    """
    The routes of metrics, events and keys match the document once the
    node serves them.
    """

    async def test_metrics(self) -> None:
        """
        C{GET /metrics} answers Prometheus text.
        """
        _needs(("GET", "/metrics"))
        _, api = await self.node()
        text = await api.call("GET", "/metrics", expect=200)
        self.assertIn("# TYPE", text)

    async def test_events(self) -> None:
        """
        C{GET /api/v1/events} streams events whose data match the Event
        schema; the deploy shows as C{agent.deployed}.
        """
        _needs(("GET", "/api/v1/events"))
        _, api = await self.node()
        await api.call(
            "POST", "/api/v1/agents",
            {"name": "echo", "wasm": base64.b64encode(wat_module(example("wat", "echo.wat"))).decode()},
            expect=201,
        )
        # HTTP/1.0, so the stream comes without chunked framing and ends
        # when this side closes it.
        stream = _Stream(b"GET /api/v1/events?after=0 HTTP/1.0\r\nHost: localhost\r\n\r\n")
        host, port = api.url.split("//", 1)[1].split(":")
        await TCP4ClientEndpoint(reactor, host, int(port), timeout=5).connect(_StreamFactory(stream))
        try:
            for _ in range(int(WAIT * 10)):
                if b"agent.deployed" in stream.received:
                    break
                await deferLater(reactor, 0.1, lambda: None)
        finally:
            stream.transport.loseConnection()
            await stream.done
        head, _, body = bytes(stream.received).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.assertEqual(lines[0].split()[1], "200", head)
        self.assertEqual(headers["content-type"].split(";")[0].strip(), "text/event-stream")
        events = [
            json.loads(line[5:])
            for line in body.decode("utf-8").splitlines()
            if line.startswith("data:")
        ]
        validator = api.checker.validator("/components/schemas/Event")
        for event in events:
            self.assertEqual(list(validator.iter_errors(event)), [])
        self.assertIn("echo", [e.get("agent") for e in events if e["type"] == "agent.deployed"])

    async def test_keys_and_audit(self) -> None:
        """
        Keys are created, listed and revoked, the audit log is listed, and
        the refusals (no token, too low a role) are the documented 401 and
        403.
        """
        _needs(("GET", "/api/v1/keys"), ("POST", "/api/v1/keys"), ("DELETE", "/api/v1/keys/<key_id>"), ("GET", "/api/v1/audit"))
        _, api = await self.node()
        admin = await api.call("POST", "/api/v1/keys", {"name": "openapi-admin", "role": "admin"}, expect=201)
        api.token = admin["token"]
        viewer = await api.call("POST", "/api/v1/keys", {"name": "openapi-viewer", "role": "viewer"}, expect=201)
        await api.call("POST", "/api/v1/keys", {"name": "x", "role": "root"}, expect=400, code="INVALID_REQUEST")
        await api.call("GET", "/api/v1/keys", expect=200)
        await api.call("GET", "/api/v1/audit?limit=10", expect=200)
        api.token = None
        await api.call("GET", "/api/v1/agents", expect=401, code="UNAUTHORIZED")
        await api.call("GET", "/api/v1/agents", expect=200, token=viewer["token"])
        await api.call("POST", "/api/v1/messages", {"performative": "inform", "receiver": "x"}, expect=403,
                       code="FORBIDDEN", token=viewer["token"])
        api.token = admin["token"]
        await api.call("DELETE", f"/api/v1/keys/{viewer['key']['id']}", expect=200)
        await api.call("GET", "/api/v1/agents", expect=401, code="UNAUTHORIZED", token=viewer["token"])
