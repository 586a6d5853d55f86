"""
Tests for the C{caxton} commands' API client (L{caxton.cli.http}): the
node options before and after the command, the environment, and the one
line each failure becomes; in memory (L{StubTreq}, L{Clock}) and, for the
token, through a child process against a fake node in the test.
"""

from __future__ import annotations

import io
import json
import signal
from typing import Any, Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from treq.testing import StubTreq

from caxton.cli.errors import CommandError, UsageError
from caxton.cli.http import APIError, NodeClient, Settings, describe_error, settings
from caxton.cli.main import build_parser, main
from tests.clirunner import caxton, start
from tests.wasmbuild import example


class FakeNode(Resource):
    """
    Answers every request with C{status}, C{headers} and C{body}, and
    keeps the requests' headers.
    """

    isLeaf = True

    def __init__(self, status: int = 200, body: bytes = b"{}", headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.headers = headers or {"content-type": "application/json"}
        self.seen: List[Dict[str, Any]] = []

    def render(self, request: Any) -> bytes:
        self.seen.append(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "authorization": request.getHeader("authorization"),
                "accept": request.getHeader("accept"),
                "body": request.content.read(),
            }
        )
        request.setResponseCode(self.status)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return self.body


class _Failing:
    """
    An HTTP client whose requests fail with C{error} (or never answer).
    """

    def __init__(self, error: Optional[Exception] = None) -> None:
        self.error = error
        self.pending: List[Deferred] = []

    def request(self, *args: Any, **kwargs: Any) -> Deferred:
        if self.error is not None:
            return fail(self.error)
        d: Deferred = Deferred()
        self.pending.append(d)
        return d


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class ClientTests(SynchronousTestCase):
    """
    L{NodeClient} sends JSON with the token and turns every failure into
    one line.
    """

    def client(self, node: Any, token: Optional[str] = None, url: str = "http://node.test:8080") -> NodeClient:
        self.clock = Clock()
        http = StubTreq(node) if isinstance(node, Resource) else node
        self.stub = http
        return NodeClient(self.clock, Settings(url, token, False, None), http=http)

    def call(self, client: NodeClient, coroutine: Any) -> Deferred:
        d = Deferred.fromCoroutine(coroutine)
        if isinstance(self.stub, StubTreq):
            self.stub.flush()
        return d

    def test_json_and_token(self) -> None:
        """
        A JSON answer is decoded; the token goes as C{Authorization:
        Bearer}, the query leaves out parameters that are L{None}; a body
        goes as JSON.
        """
        node = FakeNode(body=b'{"agents": []}')
        client = self.client(node, token="s3cret")
        result = self.successResultOf(self.call(client, client.get("/api/v1/agents", [("node", None), ("limit", 5)])))
        self.assertEqual(result, {"agents": []})
        self.assertEqual(node.seen[0]["uri"], "/api/v1/agents?limit=5")
        self.assertEqual(node.seen[0]["authorization"], "Bearer s3cret")
        self.assertEqual(node.seen[0]["accept"], "application/json")
        self.successResultOf(self.call(client, client.post("/api/v1/cluster/join", {"seeds": ["a:1"]})))
        self.assertEqual((node.seen[1]["method"], json.loads(node.seen[1]["body"])), ("POST", {"seeds": ["a:1"]}))

    def test_no_token(self) -> None:
        """
        Without a token no C{Authorization} header is sent; 204 is
        L{None}.
        """
        node = FakeNode(status=204, body=b"")
        client = self.client(node)
        self.assertIsNone(self.successResultOf(self.call(client, client.request("DELETE", "/api/v1/agents/x"))))
        self.assertIsNone(node.seen[0]["authorization"])

    def assertLine(self, node: FakeNode, line: str, token: Optional[str] = None) -> APIError:
        client = self.client(node, token=token)
        error = self.failureResultOf(self.call(client, client.get("/api/v1/agents")), APIError).value
        self.assertEqual(str(error), line)
        return error

    def test_error_body(self) -> None:
        """
        An error in the SPEC 6 shape is C{CODE: message}, with the status
        and code kept for the command to look at.
        """
        error = self.assertLine(
            FakeNode(404, _error("AGENT_NOT_FOUND", "no agent named 'x'")), "AGENT_NOT_FOUND: no agent named 'x'"
        )
        self.assertEqual((error.status, error.code, error.detail), (404, "AGENT_NOT_FOUND", "no agent named 'x'"))
        # Line breaks in a message do not break the one line.
        self.assertLine(FakeNode(400, _error("INVALID_WASM", "does not\ncompile")), "INVALID_WASM: does not compile")

    def test_unauthorized(self) -> None:
        """
        401 says whether a token was sent and where it comes from.
        """
        node = FakeNode(401, _error("UNAUTHORIZED", "unknown API key"))
        self.assertLine(node, "the node refused the token (--token / CAXTON_TOKEN) [UNAUTHORIZED: unknown API key]", "x")
        self.assertLine(
            node,
            "the node requires an API token: pass --token or set CAXTON_TOKEN [UNAUTHORIZED: unknown API key]",
        )

    def test_forbidden(self) -> None:
        """
        403 names the role as the problem.
        """
        self.assertLine(
            FakeNode(403, _error("FORBIDDEN", "operator role needed")),
            "FORBIDDEN: operator role needed — the token's role is not allowed to do this (--token / CAXTON_TOKEN)",
            "x",
        )

    def test_rate_limited(self) -> None:
        """
        429 says when to try again, from C{Retry-After}.
        """
        self.assertLine(
            FakeNode(429, _error("RATE_LIMITED", "slow down"), {"retry-after": "7", "content-type": "application/json"}),
            "RATE_LIMITED: slow down; retry after 7s",
        )
        self.assertLine(FakeNode(429, b""), "RATE_LIMITED: too many requests; retry later")

    def test_not_json(self) -> None:
        """
        An error answer without the SPEC 6 body shows its status and the
        start of its text; a success that is not JSON is an error too.
        """
        self.assertLine(
            FakeNode(502, b"upstream\nis down", {"content-type": "text/plain"}), "the node answered 502 Bad Gateway: upstream is down"
        )
        self.assertLine(
            FakeNode(404, b"", {}), "the node answered 404 Not Found — is (--url / CAXTON_URL) a Caxton node of this version?"
        )
        client = self.client(FakeNode(200, b"<html>hello</html>", {"content-type": "text/html"}))
        error = self.failureResultOf(self.call(client, client.get("/api/v1/agents")), CommandError).value
        self.assertIn("answered 200 with something that is not JSON", str(error))

    def test_unreachable(self) -> None:
        """
        A request that gets no answer says which URL, why, and which
        option sets the URL.
        """
        client = self.client(_Failing(ConnectionRefusedError()), url="http://127.0.0.1:8080")
        error = self.failureResultOf(self.call(client, client.get("/health")), CommandError).value
        self.assertEqual(
            str(error),
            "cannot reach the node at http://127.0.0.1:8080: connection refused — is it running? (--url / CAXTON_URL)",
        )
        client = self.client(_Failing(DNSLookupError("nowhere.test")), url="http://nowhere.test")
        error = self.failureResultOf(self.call(client, client.get("/health")), CommandError).value
        self.assertEqual(
            str(error), "cannot reach the node at http://nowhere.test: no such host — check the address (--url / CAXTON_URL)"
        )

    def test_timeout(self) -> None:
        """
        A node that does not answer within the time limit is an error
        that says so; the request is cancelled.
        """
        http = _Failing()
        client = self.client(http)
        d = self.call(client, client.get("/health", timeout=5))
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        error = self.failureResultOf(d, CommandError).value
        self.assertEqual(
            str(error), "the node at http://node.test:8080 did not answer within 5s (a longer --timeout may help)"
        )
        self.assertTrue(http.pending[0].called)

    def test_interrupted(self) -> None:
        """
        Cancelling a request (what Ctrl-C does) is L{CancelledError}, not
        an error line.
        """
        client = self.client(_Failing())
        d = self.call(client, client.get("/health"))
        client.interrupted = True
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_describe_error_is_one_line(self) -> None:
        """
        Whatever the body, the line has no line breaks.
        """
        error = describe_error(500, "Internal Server Error", b"a\r\nb\n" * 100, {}, None)
        self.assertNotIn("\n", str(error))
        self.assertTrue(str(error).startswith("the node answered 500 Internal Server Error: a b a b"))


class OptionTests(SynchronousTestCase):
    """
    C{--url}, C{--token}, C{--json} and C{--timeout} go before or after
    the command; the environment fills in what is not given.
    """

    def parse(self, *argv: str) -> Any:
        return build_parser().parse_args(list(argv))

    def test_before_and_after(self) -> None:
        """
        Before the command, after it, or both (the later wins).
        """
        for argv in (
            ["--url", "http://a:1", "--token", "t", "--json", "agents", "list"],
            ["agents", "list", "--url", "http://a:1", "--token", "t", "--json"],
            ["--url", "http://b:2", "--token", "u", "agents", "list", "--url", "http://a:1/", "--token", "t", "--json"],
        ):
            got = settings(self.parse(*argv), {})
            self.assertEqual((got.url, got.token, got.json), ("http://a:1", "t", True), argv)
        got = settings(self.parse("--timeout", "2m", "cluster", "status"), {})
        self.assertEqual(got.timeout, 120.0)

    def test_environment(self) -> None:
        """
        C{CAXTON_URL} and C{CAXTON_TOKEN} when the options are not given;
        the default URL when neither is.
        """
        args = self.parse("agents", "list")
        got = settings(args, {"CAXTON_URL": "https://node.example:8443/", "CAXTON_TOKEN": "env-token"})
        self.assertEqual((got.url, got.token, got.json, got.timeout), ("https://node.example:8443", "env-token", False, None))
        got = settings(args, {})
        self.assertEqual((got.url, got.token), ("http://127.0.0.1:8080", None))
        got = settings(self.parse("agents", "list", "--url", "http://x:1"), {"CAXTON_URL": "http://y:2"})
        self.assertEqual(got.url, "http://x:1")
        self.assertRaises(UsageError, settings, args, {"CAXTON_URL": "ftp://x"})
        self.assertRaises(UsageError, settings, self.parse("agents", "list", "--token", " "), {})

    def caxton(self, *argv: str) -> tuple:
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def test_misuse(self) -> None:
        """
        A bad URL, content that is not JSON, a performative that is not
        FIPA's, a bad duration: exit 2 with argparse's message, nothing
        sent (no reactor runs: these fail while parsing).
        """
        for argv, message in (
            (["--url", "localhost:8080", "agents", "list"], "argument --url: 'localhost:8080' is not an http:// or https:// URL"),
            (["send", "--to", "a", "-p", "inform", "-c", "{x"], "argument --content/-c: not valid JSON"),
            (["send", "--to", "a", "-p", "shout", "-c", "1"], "'shout' is not a FIPA performative"),
            (["send", "--to", "a", "-p", "inform", "-c", "1", "--wait", "soon"], "argument --wait: 'soon' is not a duration"),
            (["send", "--to", "a", "-p", "inform", "-c", "1", "--sender", "bob"], "'bob' is not a client name"),
            (["agents", "deploy", "x.wasm", "--name", "x", "--memory", "lots"], "argument --memory: 'lots' is not a size"),
            (["events", "--types", "a b"], "give event types separated by commas"),
        ):
            status, out, err = self.caxton(*argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertIn(message, err)


class _Unauthorized(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.tokens: List[Optional[str]] = []

    def render(self, request: Any) -> bytes:
        self.tokens.append(request.getHeader("authorization"))
        request.setResponseCode(401)
        request.setHeader("content-type", "application/json")
        return _error("UNAUTHORIZED", "unknown API key")


class _Hanging(Resource):
    """
    Takes a request and never answers it.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.arrived: Deferred = Deferred()
        self.requests: List[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        body = request.content.read()
        if not self.arrived.called:
            self.arrived.callback(body)
        return NOT_DONE_YET


class FakeNodeCommandTests(TestCase):
    """
    Commands against fake nodes in the test: one that refuses the token
    (exit 1 and the line, the token taken from C{--token} or
    C{CAXTON_TOKEN}), one that never answers a deploy (Ctrl-C ends it
    cleanly).
    """

    timeout = 60

    async def test_refused_token(self) -> None:
        """
        The fake node answers 401: the command says the token was refused
        and where it came from; the token reached the node as a bearer
        token.
        """
        fake = _Unauthorized()
        port = reactor.listenTCP(0, Site(fake), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        status, out, err = await caxton("agents", "list", "--url", url, env={"CAXTON_TOKEN": "from-env"})
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err, "caxton: the node refused the token (--token / CAXTON_TOKEN) [UNAUTHORIZED: unknown API key]\n"
        )
        status, out, err = await caxton("--url", url, "cluster", "status")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err, "caxton: the node requires an API token: pass --token or set CAXTON_TOKEN [UNAUTHORIZED: unknown API key]\n"
        )
        self.assertEqual(fake.tokens, ["Bearer from-env", None])

    async def test_interrupted_deploy(self) -> None:
        """
        Ctrl-C while the node compiles: exit 1 and a line saying the node
        carries on and how to look; no traceback.
        """
        fake = _Hanging()
        port = reactor.listenTCP(0, Site(fake), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [r.channel.transport.loseConnection() for r in fake.requests if r.channel])
        url = f"http://127.0.0.1:{port.getHost().port}"
        command = start(self, ["agents", "deploy", example("wat", "echo.wat"), "--name", "echo", "--url", url])
        body = await fake.arrived
        self.assertIn(b'{"name": "echo"}', body)
        self.assertIn(b"\0asm", body)
        self.assertEqual(await command.signal(signal.SIGINT), 1)
        self.assertEqual(
            (command.out, command.err),
            ("", "caxton: interrupted; the node finishes the deploy anyway: see 'caxton agents show echo'\n"),
        )
